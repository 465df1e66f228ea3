"""The token-weighted average outer optimizers consume: one fp32 accumulator per tensor.

acc = Accumulator()
for silo in sorted(silos):                       # fixed order -> bit-identical results
    for name, delta in silo.deltas():
        acc.add(name, delta, weight=silo.tokens)
average = acc.pop(name)                          # divides once, frees the buffer
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check_weight(weight: float) -> None:
    if isinstance(weight, bool) or not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"aggregation weight must be a finite number > 0, got {weight!r}")


class Accumulator:
    """Streaming token-weighted sum: one fp32 buffer per tensor name.

    `add` folds weight·tensor into the name's buffer (non-fp32 inputs are first copied into
    a reused fp32 scratch). The result depends only on the order of the calls, so callers
    add silos in a fixed order (sorted silo id). Weights are applied as fp32 scalars.
    """

    def __init__(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._totals: dict[str, float] = {}
        self._done: set[str] = set()
        self._scratch: dict[torch.device, Tensor] = {}

    def add(self, name: str, tensor: Tensor, weight: float) -> None:
        """Accumulate weight·tensor under `name`."""
        _check_weight(weight)
        if name in self._done:
            raise ValueError(f"{name!r} was already averaged; start a new Accumulator")
        if not tensor.is_floating_point():
            raise ValueError(f"{name}: cannot average a {tensor.dtype} tensor")
        buf = self._sums.get(name)
        if buf is None:
            buf = self._sums[name] = torch.zeros(
                tensor.shape, dtype=torch.float32, device=tensor.device
            )
            self._totals[name] = 0.0
        elif buf.shape != tensor.shape:
            raise ValueError(f"{name}: shape {tuple(tensor.shape)} != {tuple(buf.shape)}")
        with torch.no_grad():
            buf.add_(self._as_fp32(tensor), alpha=weight)
        self._totals[name] += weight

    def _as_fp32(self, tensor: Tensor) -> Tensor:
        if tensor.dtype == torch.float32:
            return tensor
        scratch = self._scratch.get(tensor.device)
        if scratch is None or scratch.numel() < tensor.numel():
            scratch = torch.empty(tensor.numel(), dtype=torch.float32, device=tensor.device)
            self._scratch[tensor.device] = scratch
        view = scratch[: tensor.numel()].view(tensor.shape)
        view.copy_(tensor)
        return view

    def names(self) -> list[str]:
        """Names seen, in first-added order."""
        return list(self._sums)

    def average(self, name: str) -> Tensor:
        """Σ w·Δ / Σ w for `name`; divides the buffer in place (once) and returns it."""
        buf = self._sums[name]
        if name not in self._done:
            buf.div_(self._totals[name])
            self._done.add(name)
        return buf

    def pop(self, name: str) -> Tensor:
        """`average(name)`, then forget the buffer so its memory can go (no more adds)."""
        avg = self.average(name)
        del self._sums[name], self._totals[name]
        return avg
