"""A silo that dies for good: the aggregator marks it lost after heartbeat_timeout_s and, with
quorum 0.5, completes every round with the silo that is left."""

from __future__ import annotations

from pathlib import Path

from tests.faults._support import (
    assert_completed,
    events,
    faults_federation,
    run_to_end,
    start_aggregator,
    start_silo,
    wait_killed,
)

HEARTBEAT_TIMEOUT_S = 3


def test_silo_killed_for_good_is_marked_lost_and_rounds_complete_without_it(
    tmp_path: Path,
) -> None:
    fed = faults_federation(tmp_path)
    fed.aggregator.rounds.quorum = 0.5
    fed.aggregator.rounds.heartbeat_timeout_s = HEARTBEAT_TIMEOUT_S
    try:
        start_aggregator(fed)
        start_silo(fed, "silo-0")
        doomed = start_silo(fed, "silo-1", crash_at="silo.train_step@2")
        wait_killed(fed, "silo-1", doomed, "silo.train_step")
        del fed.procs["silo-1"]
        codes = run_to_end(fed)
    finally:
        fed.stop_all()
    summary = assert_completed(fed, codes, contributors={0: {"silo-0"}, 1: {"silo-0"}})
    assert summary["rounds"][0]["silos"].keys() == {"silo-0"}
    assert events(fed, "aggregator", "silo_lost") == 1
    assert events(fed, "aggregator", "round_closing_without") >= 1
