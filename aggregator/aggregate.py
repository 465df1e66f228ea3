"""Streaming aggregation: fold verified updates into one fp32 accumulator, tensor by tensor.

Updates are read from the spool in sorted silo order (never arrival order), so a run with faults
and one without sum in the same order and produce bit-identical models. Memory stays at one
accumulator the size of the model plus one decoded tensor, whatever the number of silos.

With central differential privacy, each update is first scaled to L2 norm at most `clip_norm`
and every silo weighs the same (token weights would let one silo's share of the average, and so
the sensitivity, exceed C / n); the caller adds the noise to the average.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from aggregator.averaging import Accumulator
from aggregator.privacy import clip_factor
from aggregator.store import UpdateRow
from bandwidth.codec import iter_tensors, read_manifest


def accumulate(updates: Sequence[UpdateRow], *, clip_norm: float | None = None) -> Accumulator:
    """Token-weighted (or, when clipping, uniform) sum of the updates' deltas; `pop(name)`
    gives the average."""
    acc = Accumulator()
    for row in sorted(updates, key=lambda u: u.silo_id):
        weight, scale = float(row.update.num_tokens), 1.0
        if clip_norm is not None:
            weight, scale = 1.0, clip_factor(row.norm or 0.0, clip_norm)
        with Path(row.path).open("rb") as fh:
            manifest = read_manifest(fh)
            for name, tensor in iter_tensors(fh, manifest):
                if scale != 1.0:
                    tensor.mul_(scale)
                acc.add(name, tensor, weight)
    return acc
