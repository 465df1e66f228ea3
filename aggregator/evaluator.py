"""Operator-side evaluation of each global version on held-out tokens it owns (optional)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from photon.data import TokenShards, eval_batches
from photon.evaluation import evaluate_loss
from photon.model import ModelConfig, build_model


class Evaluator:
    """Mean token loss of a parameter set on a prepared folder's held-out split."""

    def __init__(
        self,
        data_dir: Path,
        model_config: ModelConfig,
        *,
        seq_len: int,
        batch_size: int,
        batches: int,
        tokenizer_digest: str,
    ) -> None:
        self.shards = TokenShards(data_dir)
        self.shards.check_tokenizer(tokenizer_digest)
        self.model = build_model(model_config, seed=0)
        self.model.eval()
        self.seq_len, self.batch_size, self.batches = seq_len, batch_size, batches

    def loss(self, params: Mapping[str, torch.Tensor]) -> tuple[float, int]:
        """(mean loss, tokens evaluated)."""
        self.model.load_state_dict(dict(params))
        return evaluate_loss(
            self.model,
            eval_batches(
                self.shards,
                seq_len=self.seq_len,
                batch_size=self.batch_size,
                max_batches=self.batches,
            ),
        )
