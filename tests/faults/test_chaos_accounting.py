"""The chaos benchmark's bookkeeping: its seeded schedule and its lost/double-count accounting
(bench/chaos/schedule.py, bench/chaos/audit.py). Fast; no processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.audit import AuditLog
from aggregator.store import RoundRow, Store
from bench.chaos.audit import account
from bench.chaos.schedule import WEIGHTS, ScheduleConfig, make_schedule

SILOS = ["silo-0", "silo-1", "silo-2"]


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32), count=st.integers(0, 60))
def test_schedule_is_a_pure_function_of_its_seed_and_stays_in_bounds(seed: int, count: int) -> None:
    cfg = ScheduleConfig(count=count, seed=seed)
    schedule = make_schedule(cfg, SILOS)
    assert schedule == make_schedule(cfg, SILOS)
    assert len(schedule) == count
    for fault in schedule:
        assert fault.kind in WEIGHTS and fault.silo in SILOS
        assert cfg.gap_s[0] <= fault.gap_s <= cfg.gap_s[1]
        assert cfg.down_s[0] <= fault.duration_s <= cfg.down_s[1]
        assert cfg.cut_bytes[0] <= fault.cut_bytes <= cfg.cut_bytes[1]


def test_schedule_draws_every_kind_and_differs_by_seed() -> None:
    a = make_schedule(ScheduleConfig(count=40, seed=1), SILOS)
    b = make_schedule(ScheduleConfig(count=40, seed=2), SILOS)
    assert {f.kind for f in a} == set(WEIGHTS)
    assert a != b


def test_schedule_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError, match="gap_s"):
        ScheduleConfig(count=1, gap_s=(3.0, 1.0))
    with pytest.raises(ValueError, match="silo"):
        make_schedule(ScheduleConfig(count=1), [])


def _state(tmp_path: Path, rounds: dict[int, tuple[str, ...]], open_round: int | None) -> Path:
    store = Store(tmp_path / "journal.sqlite")
    for r, selected in rounds.items():
        store.open_round(RoundRow(r, r, selected, 0.0, 100.0, None, None))
        if r != open_round:
            store.close_round(r, 1.0, "aggregated")
    store.close()
    return tmp_path


def _accept(log: AuditLog, silo: str, round_: int, verdict: str = "accepted") -> None:
    log.record(silo=silo, round=round_, digest="d" * 64, signature=b"", verdict=verdict)


def test_accounting_counts_lost_and_double_counted_updates(tmp_path: Path) -> None:
    state = _state(tmp_path, {0: ("silo-0", "silo-1"), 1: ("silo-0",), 2: ("silo-0",)}, 2)
    log = AuditLog(state / "audit.jsonl")
    _accept(log, "silo-0", 0)
    _accept(log, "silo-1", 0, verdict="rejected")  # rejected: round 0 lost silo-1's update
    _accept(log, "silo-0", 1)
    _accept(log, "silo-0", 1)  # counted twice
    _accept(log, "silo-1", 1)  # not selected for round 1
    _accept(log, "silo-0", 2)  # round 2 is still open: not judged
    result = account(state)
    assert result.updates_expected == 3
    assert result.lost == [("silo-1", 0)] and result.updates_lost == 1
    assert result.doubled == [("silo-0", 1), ("silo-1", 1)]
    assert result.updates_double_counted == 2
    assert result.audit_chain_intact


def test_accounting_of_a_clean_run_is_zero(tmp_path: Path) -> None:
    state = _state(tmp_path, {0: ("silo-0", "silo-1"), 1: ("silo-0", "silo-1")}, None)
    log = AuditLog(state / "audit.jsonl")
    for r in (0, 1):
        for silo in ("silo-1", "silo-0"):
            _accept(log, silo, r)
    result = account(state)
    assert (result.updates_lost, result.updates_double_counted) == (0, 0)
    assert result.record()["updates_expected"] == 4
