"""The premise of every digest comparison in this folder: two fault-free runs of the same
configuration (CPU, fixed seeds, one thread, fixed aggregation order) end bit-identical — and
so does a faulted run with a lossy codec, whose error feedback is part of the committed state."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults._support import (
    assert_completed,
    fault_free_run,
    faults_federation,
    run_to_end,
    start_aggregator,
    start_silo,
    wait_killed,
)


def test_two_fault_free_runs_end_with_bit_identical_models(
    tmp_path: Path, reference_digest: str
) -> None:
    summary = fault_free_run(tmp_path)
    assert summary["param_digest"] == reference_digest
    assert summary["final_eval_loss"] < summary["initial_eval_loss"], "the runs did train"


@pytest.mark.slow  # two federations; keeps the default faults suite under ~6 minutes
def test_int8_with_error_feedback_survives_a_silo_kill_bit_identically(tmp_path: Path) -> None:
    clean = fault_free_run(tmp_path / "clean", codec="int8")
    fed = faults_federation(tmp_path / "faulted", codec="int8")
    try:
        start_aggregator(fed)
        victim = start_silo(fed, "silo-0", crash_at="silo.train_step@5")  # round 1, step 2
        start_silo(fed, "silo-1")
        wait_killed(fed, "silo-0", victim, "silo.train_step")
        start_silo(fed, "silo-0")
        codes = run_to_end(fed)
    finally:
        fed.stop_all()
    faulted = assert_completed(fed, codes)
    assert faulted["codec"] == "int8"
    assert faulted["param_digest"] == clean["param_digest"]
