"""kill -9 of a silo at its crash points, then a restart on the same silo state dir.

A silo killed while training restarts from the round's committed start state and produces the
identical delta, so the final model is bit-identical to a fault-free run's. A silo killed while
uploading resumes the transfer of the update it had already committed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from photon.cli.localfed.launcher import Launcher
from tests.faults._support import (
    assert_completed,
    events,
    faults_federation,
    run_to_end,
    start_aggregator,
    start_silo,
    wait_killed,
)


def _kill_silo_and_restart(tmp_path: Path, crash_at: str) -> tuple[dict[str, object], Launcher]:
    fed = faults_federation(tmp_path)
    point = crash_at.partition("@")[0]
    try:
        start_aggregator(fed)
        victim = start_silo(fed, "silo-0", crash_at=crash_at)
        start_silo(fed, "silo-1")
        wait_killed(fed, "silo-0", victim, point)
        start_silo(fed, "silo-0")
        codes = run_to_end(fed)
    finally:
        fed.stop_all()
    return assert_completed(fed, codes), fed


@pytest.mark.parametrize(
    "crash_at",
    ["silo.train_step@2", "silo.train_step@5"],
    ids=["round0-step2", "round1-step2"],
)
def test_kill9_during_training_redoes_the_round_identically(
    tmp_path: Path, reference_digest: str, crash_at: str
) -> None:
    summary, _ = _kill_silo_and_restart(tmp_path, crash_at)
    assert summary["param_digest"] == reference_digest


def test_kill9_after_committing_a_round_uploads_the_committed_update(
    tmp_path: Path, reference_digest: str
) -> None:
    summary, fed = _kill_silo_and_restart(tmp_path, "silo.round_committed")
    assert summary["param_digest"] == reference_digest
    assert events(fed, "silo-0", "local_training_done") == 2, "round 0 was not trained twice"


def test_kill9_during_upload_resumes_the_transfer(tmp_path: Path, reference_digest: str) -> None:
    summary, fed = _kill_silo_and_restart(tmp_path, "silo.upload_chunk@20")
    assert summary["param_digest"] == reference_digest
    assert events(fed, "silo-0", "local_training_done") == 2, "round 0 was not trained twice"
    assert events(fed, "silo-0", "upload_resuming") == 1, "the upload resumed mid-way"
