"""Read a run's `summary.json` into a typed, tolerant view for reports.

The file is written by `aggregator.summary` and only ever gains keys, so everything here is
optional: a missing key or a null becomes None (numbers) or 0 (byte and token counters), and
a NaN is treated as missing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from photon.errors import DataError

SUMMARY_NAME = "summary.json"


@dataclass(frozen=True, slots=True)
class SiloRound:
    """One silo's contribution to one round."""

    train_loss: float | None
    tokens: int
    bytes_up: int
    bytes_down: int


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """One closed round: its global eval loss, traffic, duration and per-silo rows."""

    round: int
    version: int
    eval_loss: float | None
    bytes_up: int
    bytes_down: int
    seconds: float | None
    tokens: int | None
    ddp_equivalent_bytes: int | None
    silos: dict[str, SiloRound] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunSummary:
    """The whole run as recorded in summary.json."""

    path: Path
    federation: str | None
    preset: str | None
    model_params: int | None
    codec: str | None
    rounds_planned: int | None
    local_steps: int | None
    version: int | None
    done: bool | None
    initial_eval_loss: float | None
    final_eval_loss: float | None
    checkpoint: str | None
    bytes_up_total: int | None
    bytes_down_total: int | None
    ddp_equivalent_bytes_total: int | None
    comm_reduction_vs_ddp: float | None
    rounds: tuple[RoundRecord, ...]

    @property
    def wall_seconds(self) -> float | None:
        """Sum of the rounds' durations; None when no round recorded one."""
        secs = [r.seconds for r in self.rounds if r.seconds is not None]
        return sum(secs) if secs else None

    @property
    def silo_names(self) -> list[str]:
        return sorted({name for r in self.rounds for name in r.silos})


def summary_candidates(path: Path) -> list[Path]:
    """Where a run's summary may be: the file itself, DIR/summary.json, or
    DIR/aggregator-state/summary.json (what `photon local --workdir DIR` makes)."""
    path = Path(path)
    if path.is_file():
        return [path]
    return [path / SUMMARY_NAME, path / "aggregator-state" / SUMMARY_NAME]


def find_summary(path: Path) -> Path:
    """The first existing candidate; DataError naming every path tried otherwise."""
    tried = summary_candidates(path)
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise DataError(
        f"no {SUMMARY_NAME} for run {path}; tried: {', '.join(str(p) for p in tried)}. "
        "Pass a run directory (photon local --workdir DIR, or an aggregator state_dir) "
        "or the summary.json file itself"
    )


def load_summary(path: Path) -> RunSummary:
    """Find and parse the summary of the run at `path` (a directory or the file)."""
    found = find_summary(path)
    try:
        raw = json.loads(found.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{found} is not valid JSON: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise DataError(f"{found} must hold a JSON object, got {type(raw).__name__}")
    return parse_summary(raw, found)


def parse_summary(raw: Mapping[str, Any], path: Path) -> RunSummary:
    rows = raw.get("rounds") or []
    if not isinstance(rows, list):
        raise DataError(f"{path}: 'rounds' must be a list, got {type(rows).__name__}")
    rounds = sorted((_round(r, i, path) for i, r in enumerate(rows)), key=lambda r: r.round)
    return RunSummary(
        path=path,
        federation=_str(raw, "federation"),
        preset=_str(raw, "preset"),
        model_params=_int(raw, "model_params"),
        codec=_str(raw, "codec"),
        rounds_planned=_int(raw, "rounds_planned"),
        local_steps=_int(raw, "local_steps"),
        version=_int(raw, "version"),
        done=raw.get("done") if isinstance(raw.get("done"), bool) else None,
        initial_eval_loss=_float(raw, "initial_eval_loss"),
        final_eval_loss=_float(raw, "final_eval_loss"),
        checkpoint=_str(raw, "checkpoint"),
        bytes_up_total=_int(raw, "bytes_up_total"),
        bytes_down_total=_int(raw, "bytes_down_total"),
        ddp_equivalent_bytes_total=_int(raw, "ddp_equivalent_bytes_total"),
        comm_reduction_vs_ddp=_float(raw, "comm_reduction_vs_ddp"),
        rounds=tuple(rounds),
    )


def _round(row: Any, index: int, path: Path) -> RoundRecord:
    if not isinstance(row, Mapping):
        raise DataError(f"{path}: rounds[{index}] must be an object, got {type(row).__name__}")
    number = _int(row, "round")
    number = index if number is None else number
    version = _int(row, "version")
    return RoundRecord(
        round=number,
        version=number + 1 if version is None else version,
        eval_loss=_float(row, "eval_loss"),
        bytes_up=_int(row, "bytes_up") or 0,
        bytes_down=_int(row, "bytes_down") or 0,
        seconds=_float(row, "seconds"),
        tokens=_int(row, "tokens"),
        ddp_equivalent_bytes=_int(row, "ddp_equivalent_bytes"),
        silos=_silos(row.get("silos")),
    )


def _silos(raw: Any) -> dict[str, SiloRound]:
    if not isinstance(raw, Mapping):
        return {}
    return {str(name): _silo(s) for name, s in sorted(raw.items()) if isinstance(s, Mapping)}


def _silo(row: Mapping[str, Any]) -> SiloRound:
    return SiloRound(
        train_loss=_float(row, "train_loss"),
        tokens=_int(row, "tokens") or 0,
        bytes_up=_int(row, "bytes_up") or 0,
        bytes_down=_int(row, "bytes_down") or 0,
    )


def _float(obj: Mapping[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(obj: Mapping[str, Any], key: str) -> int | None:
    value = _float(obj, key)
    return None if value is None else int(value)


def _str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return None if value is None else str(value)
