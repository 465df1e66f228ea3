"""A full disk under the aggregator's state directory: a small tmpfs, filled by a filler file.

The aggregator refuses what needs space (RESOURCE_EXHAUSTED naming disk space, never INTERNAL),
keeps serving, keeps everything it accepted, defers a round's close-out and retries it after a
bounded back-off. When the filler goes, the federation finishes as if nothing had happened:
the same final parameters as a fault-free run, one accepted audit line per (silo, round).

The in-process cases drive the real round engine and journal on the tmpfs (with the engine
tests' stand-in model), which lets them fill the disk at an exact step: a journal commit, a
round's close, an audit line. The process cases run a real federation (`tests.harness`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from structlog.testing import capture_logs

from aggregator.audit import AuditLog, read_audit
from aggregator.engine import RoundEngine
from aggregator.servicer import status_for
from bandwidth.chunking import iter_file_chunks
from bandwidth.codec import write_object
from photon.cli.localfed.launcher import Launcher
from photon.diskspace import as_disk_full, is_disk_full
from photon.errors import DiskFull
from photon.update import UpdateRecord
from tests.faults._hostile import fill, small_tmpfs, unfill
from tests.faults._support import (
    assert_completed,
    events,
    faults_federation,
    run_to_end,
    start_aggregator,
    start_silo,
)
from tests.harness import wait_for
from tests.test_engine import join_all, make_engine

MiB = 1 << 20


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", "4m") as mount:
        yield mount


def receive(engine: RoundEngine, src_dir: Path, silo: str, value: float) -> UpdateRecord:
    """Stream one update for round 0 into the spool (not yet recorded); its header."""
    import torch

    src = src_dir / f"{silo}.upd"
    obj = write_object(src, {"w": torch.full((8,), value)}, "fp32")
    info = UpdateRecord(
        transfer_id=f"{silo}-r0",
        round=0,
        base_version=0,
        digest=obj.digest,
        size=obj.size,
        num_tokens=100,
        train_loss=1.0,
        train_seconds=1.0,
    )
    session = engine.begin_upload(silo, info, 0)
    generation = session.claim()
    for chunk in iter_file_chunks(src, chunk_size=64):
        session.write(generation, chunk.offset, bytes(chunk.data), chunk.crc32)
    session.finalize()
    return info


def complete(engine: RoundEngine, silo: str, info: UpdateRecord) -> bool:
    path = engine.uploads.path_for(silo, 0, info.transfer_id)
    return engine.complete_upload(silo, info, path)


def accepted_lines(engine: RoundEngine) -> list[tuple[str, int]]:
    entries, broken = read_audit(engine.audit.path)
    assert broken is None, f"audit chain broken at line {broken}"
    return [(e["silo"], e["round"]) for e in entries if e["verdict"] == "accepted"]


def test_a_full_disk_refuses_a_journal_commit_and_the_retry_is_accepted(
    tmp_path: Path, disk: Path
) -> None:
    engine, _, _, store = make_engine(disk)
    join_all(engine, 2)
    engine.tick()
    info = receive(engine, tmp_path, "s0", 1.0)
    fill(disk)
    with pytest.raises(Exception) as refused:
        complete(engine, "s0", info)
    assert is_disk_full(refused.value), repr(refused.value)
    typed = as_disk_full(refused.value, "recording the update")
    assert status_for(typed) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "disk space" in str(typed)
    assert store.updates(0) == [] and accepted_lines(engine) == [], "nothing half-recorded"
    unfill(disk)
    assert complete(engine, "s0", info), "the silo's retry is accepted"
    assert [u.silo_id for u in store.updates(0)] == ["s0"]
    assert accepted_lines(engine) == [("s0", 0)]


def test_a_full_disk_at_close_out_defers_the_round_and_retries_after_a_backoff(
    tmp_path: Path, disk: Path
) -> None:
    engine, model, clock, store = make_engine(disk)
    join_all(engine, 2)
    engine.tick()
    for silo, value in (("s0", 1.0), ("s1", 3.0)):
        assert complete(engine, silo, receive(engine, tmp_path, silo, value))
    fill(disk)
    with capture_logs() as logs:
        engine.tick()  # the journal refuses the closed round: deferred, not raised
    assert any(e["event"] == "disk_full_deferred" for e in logs), logs
    row = store.get_round(0)
    assert row is not None and row.closed_at is None, "the round is still open in the journal"
    assert engine.get_task("s0", 0).kind == "wait", "the aggregator keeps serving"
    unfill(disk)
    engine.tick()
    assert store.get_round(0).closed_at is None, "no retry before the back-off"  # type: ignore[union-attr]
    clock.t += 1.5
    engine.heartbeat("s0")
    engine.heartbeat("s1")
    engine.tick()
    row = store.get_round(0)
    assert row is not None and row.outcome == "aggregated"
    assert model.advanced == [(0, ["s0", "s1"])], "aggregated exactly once"
    assert engine.get_task("s0", 0).round == 1
    assert sorted(accepted_lines(engine)) == [("s0", 0), ("s1", 0)]


def test_an_audit_line_is_written_whole_or_not_at_all_on_a_full_disk(disk: Path) -> None:
    audit = AuditLog(disk / "audit.jsonl")
    for i in range(3):  # the file's last page is part-used, as in a running aggregator
        audit.record(silo=f"before{i}", round=0, digest="d" * 64, signature=b"", verdict="x")
    fill(disk)
    refused = 0
    for i in range(40):  # fills the file's last page, then needs a new one
        try:
            audit.record(silo=f"s{i}", round=0, digest="d" * 64, signature=b"", verdict="x")
        except OSError as exc:
            assert is_disk_full(exc)
            refused += 1
    assert refused, "the disk never refused a line"
    unfill(disk)
    audit.record(silo="after", round=0, digest="d" * 64, signature=b"", verdict="x")
    entries, broken = read_audit(disk / "audit.jsonl")
    assert broken is None, "a torn line broke the chain"
    assert entries[-1]["silo"] == "after"


def test_disk_full_is_typed_for_every_spelling() -> None:
    import errno
    import sqlite3

    from safetensors import SafetensorError

    for exc in (
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        sqlite3.OperationalError("database or disk is full"),
        SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        ),
    ):
        assert is_disk_full(exc), exc
        assert isinstance(as_disk_full(exc, "x"), DiskFull)
    assert not is_disk_full(OSError(errno.EIO, "I/O error"))
    assert not is_disk_full(ValueError("disk"))


# -- a real federation -------------------------------------------------------------------------
@pytest.fixture
def small_disk_federation(tmp_path: Path) -> Iterator[tuple[Launcher, Path]]:
    """A federation whose state dir is a 64 MiB tmpfs, its aggregator started (version 0
    checkpointed and published)."""
    fed = faults_federation(tmp_path)
    with small_tmpfs(fed.state_dir, "64m") as mount:
        try:
            start_aggregator(fed)
            yield fed, mount
        finally:
            fed.stop_all()
            unfill(mount)


def model_object_bytes(state_dir: Path) -> int:
    return (state_dir / "published" / "v000000.full.obj").stat().st_size


def _start_silos(fed: Launcher) -> None:
    for name in fed.silos:
        start_silo(fed, name)


def test_upload_onto_a_full_disk_is_refused_cleanly_then_resumes(
    small_disk_federation: tuple[Launcher, Path], reference_digest: str
) -> None:
    fed, mount = small_disk_federation
    fill(mount, leave=int(1.5 * model_object_bytes(mount)))  # room for one update, not two
    _start_silos(fed)
    wait_for(
        lambda: events(fed, "aggregator", "upload_refused_disk_full") > 0, 180, "a refused upload"
    )
    unfill(mount)
    codes = run_to_end(fed)
    summary = assert_completed(fed, codes)
    assert summary["param_digest"] == reference_digest
    log = fed.log("aggregator", tail=None)
    assert '"code": "RESOURCE_EXHAUSTED"' in log and "rpc_failed" not in log
    silo_logs = "".join(fed.log(n, tail=None) for n in fed.silos)
    assert re.search(r"RESOURCE_EXHAUSTED: no disk space left while", silo_logs)


def test_close_out_onto_a_full_disk_is_deferred_then_completes(
    small_disk_federation: tuple[Launcher, Path], reference_digest: str
) -> None:
    fed, mount = small_disk_federation
    # Room for both updates of round 0 and the journal, not for version 1's checkpoint.
    fill(mount, leave=2 * model_object_bytes(mount) + 3 * MiB // 2)
    _start_silos(fed)
    wait_for(
        lambda: events(fed, "aggregator", "disk_full_deferred") > 0, 180, "a deferred close-out"
    )
    assert events(fed, "aggregator", "round_closed") == 0
    unfill(mount)
    codes = run_to_end(fed)
    summary = assert_completed(fed, codes)
    assert summary["param_digest"] == reference_digest
    assert events(fed, "aggregator", "disk_full_recovered") >= 1
    assert events(fed, "aggregator", "upload_refused_disk_full") == 0, "uploads had room"
    assert "rpc_failed" not in fed.log("aggregator", tail=None)
