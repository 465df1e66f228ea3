"""Bits flipped on the aggregator's disk while it is down: the newest checkpoint, or a recorded
update in the spool. Each is caught by its digest at the restart; the aggregator falls back to
what is still good and gets the rest again from the silos, and the run completes.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

from aggregator.audit import read_audit
from photon.cli.localfed.launcher import Launcher
from tests.faults._hostile import flip_bit
from tests.faults._support import (
    ROUNDS,
    events,
    faults_federation,
    run_to_end,
    start_aggregator,
    start_all,
    wait_killed,
)
from tests.test_engine import join_all, make_engine, send_update

#: The summary is written at start-up, then after each round: the 2nd write follows round 0's
#: close (version 1 checkpointed, round 0 journaled closed, round 1 opened).
AFTER_ROUND_0 = "fsutil.before_rename:summary.json@2"


def net_accepted(fed: Launcher) -> Counter[tuple[str, int]]:
    """Accepted minus dropped audit lines per (silo, round); the chain must be intact."""
    entries, broken = read_audit(fed.state_dir / "audit.jsonl")
    assert broken is None, f"audit chain broken at entry {broken}"
    net: Counter[tuple[str, int]] = Counter()
    for e in entries:
        sign = {"accepted": 1, "dropped": -1}.get(e["verdict"], 0)
        net[(e["silo"], e["round"])] += sign
    return +net


def assert_finished(fed: Launcher, codes: dict[str, int]) -> dict[str, object]:
    logs = "\n".join(f"--- {n}\n{fed.log(n)}" for n in codes)
    assert set(codes.values()) == {0}, f"exit codes {codes}\n{logs}"
    summary = fed.summary()
    assert summary.get("version") == ROUNDS and summary["done"] is True, logs
    assert [r["round"] for r in summary["rounds"]] == list(range(ROUNDS))
    expected = Counter({(s, r): 1 for r in range(ROUNDS) for s in fed.silos})
    assert net_accepted(fed) == expected, "an update was lost or counted twice"
    assert not list(fed.state_dir.rglob("*.partial")), "stray partial files"
    return summary


def journal(fed: Launcher, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(fed.state_dir / "journal.sqlite") as db:
        return list(db.execute(sql).fetchall())


def test_flipped_bit_in_the_newest_checkpoint_falls_back_and_reopens_its_round(
    tmp_path: Path,
) -> None:
    fed = faults_federation(tmp_path)
    try:
        aggregator = start_all(fed, crash_aggregator=AFTER_ROUND_0)
        wait_killed(fed, "aggregator", aggregator, AFTER_ROUND_0.split("@")[0])
        closed = journal(fed, "SELECT round FROM rounds WHERE closed_at IS NOT NULL")
        assert closed == [(0,)], "round 0 was journaled closed on version 1"
        flip_bit(fed.state_dir / "checkpoints" / "v000001.safetensors", -100, bit=3)
        start_aggregator(fed)
        codes = run_to_end(fed)
    finally:
        fed.stop_all()
    assert_finished(fed, codes)
    assert events(fed, "aggregator", "checkpoint_skipped") == 1, "the flip was caught"
    assert events(fed, "aggregator", "round_reopened") == 1, "round 0 was not assumed closed"
    assert events(fed, "aggregator", "round_forgotten") == 1, "round 1 of version 1 is gone"
    loaded = [
        line
        for line in fed.log("aggregator", tail=None).splitlines()
        if '"event": "checkpoint_loaded"' in line
    ]
    assert '"version": 0' in loaded[-1], "the restart fell back to version 0"


def test_flipped_bit_in_a_recorded_update_is_dropped_and_resent(
    tmp_path: Path, reference_digest: str
) -> None:
    fed = faults_federation(tmp_path)
    point = "aggregator.update_recorded"
    try:
        aggregator = start_all(fed, crash_aggregator=point)
        wait_killed(fed, "aggregator", aggregator, point)
        [(silo, path)] = journal(fed, "SELECT silo_id, path FROM updates")
        flip_bit(Path(str(path)), -10)
        start_aggregator(fed)
        codes = run_to_end(fed)
    finally:
        fed.stop_all()
    summary = assert_finished(fed, codes)
    assert events(fed, "aggregator", "update_dropped") == 1
    entries, _ = read_audit(fed.state_dir / "audit.jsonl")
    assert [(e["silo"], e["round"]) for e in entries if e["verdict"] == "dropped"] == [(silo, 0)]
    # The silo's upload had been cut by the crash, so it still held the update and sent the
    # same bytes again: the model is the fault-free one.
    assert summary["param_digest"] == reference_digest


def test_a_spool_update_rotting_before_aggregation_is_dropped_and_asked_again(
    tmp_path: Path,
) -> None:
    """The same check while the aggregator runs: the round is not aggregated with bad bytes."""
    engine, model, _, store = make_engine(tmp_path)
    join_all(engine, 2)
    engine.tick()
    assert send_update(engine, tmp_path, "s0", 0, 1.0)
    [row] = store.updates(0)
    flip_bit(Path(row.path), -3)
    assert send_update(engine, tmp_path, "s1", 0, 3.0)
    engine.tick()
    assert model.advanced == [], "not aggregated with a corrupt update"
    assert [u.silo_id for u in store.updates(0)] == ["s1"]
    assert engine.get_task("s0", 0).kind == "train", "s0 is asked again"
    assert send_update(engine, tmp_path, "s0", 0, 1.0)
    engine.tick()
    assert model.advanced == [(0, ["s0", "s1"])]
    entries, broken = read_audit(engine.audit.path)
    assert broken is None
    assert [(e["silo"], e["verdict"]) for e in entries] == [
        ("s0", "accepted"),
        ("s1", "accepted"),
        ("s0", "dropped"),
        ("s0", "accepted"),
    ]
