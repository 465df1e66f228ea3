"""Streaming aggregation: fold verified updates into one fp32 accumulator, tensor by tensor.

Updates are read from the spool in sorted silo order (never arrival order), so a run with faults
and one without sum in the same order and produce bit-identical models. Memory stays at one
accumulator the size of the model plus one decoded tensor, whatever the number of silos.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from aggregator.store import UpdateRow
from aggregator.strategies import Accumulator
from bandwidth.codec import iter_tensors, read_manifest


def accumulate(updates: Sequence[UpdateRow]) -> Accumulator:
    """Token-weighted sum of the updates' deltas (call `average(name)` for the mean)."""
    acc = Accumulator()
    for update in sorted(updates, key=lambda u: u.silo_id):
        with Path(update.path).open("rb") as fh:
            manifest = read_manifest(fh)
            for name, tensor in iter_tensors(fh, manifest):
                acc.add(name, tensor, float(update.num_tokens))
    return acc
