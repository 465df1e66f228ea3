"""The numbers the report plots, computed from a RunSummary (pure functions, no matplotlib)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

from photon.report.summary import RoundRecord, RunSummary

_UNITS = (("B", 1.0), ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12))


@dataclass(frozen=True, slots=True)
class Series:
    """Points of one line: x and y of equal length."""

    x: list[float]
    y: list[float]


def round_tokens(r: RoundRecord) -> int:
    """Training tokens of one round: the round's count, else the sum over its silos."""
    return r.tokens if r.tokens is not None else sum(s.tokens for s in r.silos.values())


def cumulative(values: Iterable[float]) -> list[float]:
    return list(itertools.accumulate(values))


def eval_by_round(s: RunSummary) -> Series:
    """Global eval loss against rounds completed; the initial loss sits at 0."""
    points = [(float(r.version), r.eval_loss) for r in s.rounds if r.eval_loss is not None]
    return _with_initial(s.initial_eval_loss, points)


def eval_by_tokens(s: RunSummary) -> Series:
    """Global eval loss against cumulative training tokens; the initial loss sits at 0."""
    tokens = cumulative(round_tokens(r) for r in s.rounds)
    points = [
        (t, r.eval_loss) for t, r in zip(tokens, s.rounds, strict=True) if r.eval_loss is not None
    ]
    return _with_initial(s.initial_eval_loss, points)


def _with_initial(initial: float | None, points: list[tuple[float, float]]) -> Series:
    if initial is not None:
        points = [(0.0, initial), *points]
    return Series(x=[p[0] for p in points], y=[p[1] for p in points])


def train_loss_by_silo(s: RunSummary) -> dict[str, Series]:
    """Each silo's train loss per round; NaN where it sent nothing, so the line breaks."""
    out: dict[str, Series] = {}
    for name in s.silo_names:
        y = [_loss_or_nan(r, name) for r in s.rounds]
        out[name] = Series(x=[float(r.round) for r in s.rounds], y=y)
    return out


def _loss_or_nan(r: RoundRecord, silo: str) -> float:
    row = r.silos.get(silo)
    if row is None or row.train_loss is None:
        return math.nan
    return row.train_loss


def cumulative_traffic(s: RunSummary) -> Series:
    """Bytes up + down moved so far, against rounds completed."""
    return Series(
        x=[float(r.version) for r in s.rounds],
        y=cumulative(r.bytes_up + r.bytes_down for r in s.rounds),
    )


def cumulative_ddp(s: RunSummary) -> Series | None:
    """Bytes data-parallel training would have moved so far; None when never recorded."""
    if all(r.ddp_equivalent_bytes is None for r in s.rounds):
        return None
    return Series(
        x=[float(r.version) for r in s.rounds],
        y=cumulative(r.ddp_equivalent_bytes or 0 for r in s.rounds),
    )


def byte_unit(largest: float) -> tuple[str, float]:
    """A decimal unit (B, KB, MB, GB, TB) in which `largest` reads as a small number."""
    name, scale = _UNITS[0]
    for name_, scale_ in _UNITS:
        if abs(largest) >= scale_:
            name, scale = name_, scale_
    return name, scale
