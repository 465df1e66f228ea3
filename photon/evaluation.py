"""Mean token loss of a model over batches: the one evaluation both daemons use."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from photon.model import LlamaModel


@torch.no_grad()
def evaluate_loss(
    model: LlamaModel, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[float, int]:
    """(mean loss per token, tokens evaluated); NaN when there were no batches."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    try:
        for x, y in batches:
            loss = model.loss(x.to(device), y.to(device))
            total += float(loss) * y.numel()
            tokens += y.numel()
    finally:
        model.train(was_training)
    return (total / tokens if tokens else float("nan")), tokens
