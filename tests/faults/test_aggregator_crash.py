"""kill -9 of the aggregator at each of its crash points, then a restart on the same state dir.

Each run must end exactly as a fault-free one: every process exits 0, every round once, one
accepted update per (silo, round), no partial files, and the same final parameters, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

from aggregator.audit import read_audit
from photon.signing import verify_digest
from tests.faults._support import (
    assert_completed,
    events,
    faults_federation,
    run_to_end,
    start_aggregator,
    start_all,
    wait_killed,
)

CHECKPOINT_V1 = "fsutil.before_rename:v000001.safetensors"


def _crash_and_restart(tmp_path: Path, crash_at: str, point: str) -> tuple[dict[str, object], Path]:
    fed = faults_federation(tmp_path)
    try:
        aggregator = start_all(fed, crash_aggregator=crash_at)
        wait_killed(fed, "aggregator", aggregator, point)
        checkpoints = sorted(p.name for p in (fed.state_dir / "checkpoints").iterdir())
        start_aggregator(fed)
        codes = run_to_end(fed)
    finally:
        fed.stop_all()
    summary = assert_completed(fed, codes)
    assert events(fed, "aggregator", "checkpoint_loaded") == 1, "the restart resumed"
    (fed.root / "checkpoints-at-crash.txt").write_text("\n".join(checkpoints))
    return summary, fed.root


def test_kill9_during_upload_then_restart_silos_resume(
    tmp_path: Path, reference_digest: str
) -> None:
    summary, root = _crash_and_restart(
        tmp_path, "aggregator.upload_chunk@2", "aggregator.upload_chunk"
    )
    assert summary["param_digest"] == reference_digest
    silo_logs = "".join((root / f"silo-{i}.log").read_text() for i in range(2))
    assert '"event": "upload_resuming"' in silo_logs, "an upload resumed at its committed offset"


def test_kill9_between_accepting_an_update_and_aggregating(
    tmp_path: Path, reference_digest: str
) -> None:
    summary, root = _crash_and_restart(
        tmp_path, "aggregator.update_recorded", "aggregator.update_recorded"
    )
    assert summary["param_digest"] == reference_digest
    assert '"event": "round_resumed"' in (root / "aggregator.log").read_text()
    # The crash fell between the journal row and its audit line: the restart rebuilt the line,
    # with the silo's own signature (kept in the journal), which still verifies.
    entries, broken = read_audit(root / "aggregator-state" / "audit.jsonl")
    assert broken is None
    rebuilt = [e for e in entries if e["reason"] == "recorded before a restart"]
    assert rebuilt, "the crash point left no update without its audit line"
    for entry in rebuilt:
        cert = (root / "certs" / "silos" / f"{entry['silo']}.crt").read_bytes()
        signature = bytes.fromhex(str(entry["signature"]))
        assert verify_digest(cert, str(entry["digest"]), int(entry["round"]), signature)


def test_kill9_after_aggregating_before_the_checkpoint(
    tmp_path: Path, reference_digest: str
) -> None:
    summary, root = _crash_and_restart(tmp_path, "aggregator.aggregated", "aggregator.aggregated")
    assert summary["param_digest"] == reference_digest
    at_crash = (root / "checkpoints-at-crash.txt").read_text().split()
    assert at_crash == ["v000000.safetensors"], "version 1 was not committed before the crash"


def test_kill9_while_writing_a_checkpoint_leaves_no_torn_checkpoint(
    tmp_path: Path, reference_digest: str
) -> None:
    summary, root = _crash_and_restart(tmp_path, CHECKPOINT_V1, CHECKPOINT_V1)
    assert summary["param_digest"] == reference_digest
    at_crash = (root / "checkpoints-at-crash.txt").read_text().split()
    assert "v000001.safetensors" not in at_crash, "no torn version 1 under its final name"
    assert '"event": "checkpoint_skipped"' not in (root / "aggregator.log").read_text()


def test_kill9_after_the_last_checkpoint_silos_still_get_their_final_task(
    tmp_path: Path, reference_digest: str
) -> None:
    """Killed after the final version's checkpoint, while publishing it: the restarted
    aggregator must serve the final eval and DONE to the silos, not exit before they call."""
    point = "fsutil.before_rename:v000002.full.obj"
    summary, _ = _crash_and_restart(tmp_path, point, point)
    assert summary["param_digest"] == reference_digest
    assert summary["final_eval_loss"] is not None
