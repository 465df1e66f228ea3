"""An upload's in-memory state matches its `.partial` file after every error path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from aggregator.uploads import UploadRegistry, UploadSession
from bandwidth.chunking import crc32
from photon.errors import ChunkIntegrityError, ResumeMismatch
from photon.update import UpdateRecord

GOOD = bytes(range(256)) * 40
BAD = bytes(reversed(GOOD))  # same size, other bytes: CRCs fine, digest wrong


UPDATE = UpdateRecord(
    transfer_id="t1",
    round=0,
    base_version=0,
    digest=hashlib.sha256(GOOD).hexdigest(),
    size=len(GOOD),
    num_tokens=1,
    train_loss=None,
    base_eval_loss=None,
    train_seconds=0.0,
)


def _send(registry: UploadRegistry, data: bytes, chunk: int = 4096) -> UploadSession:
    session = registry.open("silo-0", UPDATE, 0)
    generation = session.claim()
    for off in range(0, len(data), chunk):
        piece = data[off : off + chunk]
        session.write(generation, off, piece, crc32(piece))
    session.sync()
    return session


def test_a_resend_after_a_digest_mismatch_completes(tmp_path: Path) -> None:
    registry = UploadRegistry(tmp_path / "spool")
    session = _send(registry, BAD)
    with pytest.raises(ChunkIntegrityError, match="digest"):
        session.finalize()
    assert not list((tmp_path / "spool").rglob("*.upd*"))  # the bad bytes are gone...
    assert session.committed == 0  # ...and memory says so
    assert registry.committed("silo-0", "t1") == (0, False)
    session = _send(registry, GOOD)  # the silo's retry, same transfer id, from offset 0
    final = session.finalize()
    assert final.read_bytes() == GOOD
    assert registry.committed("silo-0", "t1") == (len(GOOD), True)


def test_a_failed_write_leaves_memory_at_the_bytes_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = UploadRegistry(tmp_path / "spool")
    session = registry.open("silo-0", UPDATE, 0)
    generation = session.claim()
    first = GOOD[:4096]
    session.write(generation, 0, first, crc32(first))
    session.sync()
    assert session.partial is not None
    fh = session.partial._fh

    def io_error(
        _data: object,
    ) -> int:  # a full disk is its own path (tests/faults/test_disk_full.py)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fh, "write", io_error, raising=False)
    second = GOOD[4096:8192]
    with pytest.raises(OSError):
        session.write(generation, 4096, second, crc32(second))
    on_disk = next((tmp_path / "spool").rglob("*.partial")).stat().st_size
    assert session.committed == on_disk == 4096
    with pytest.raises(ResumeMismatch):
        registry.open("silo-0", UPDATE, 8192)
    with pytest.raises(ResumeMismatch):  # a stream still on the old state cannot go on
        session.write(generation, 4096, second, crc32(second))
    session = registry.open("silo-0", UPDATE, 4096)
    rest = GOOD[4096:]
    session.write(session.claim(), 4096, rest, crc32(rest))
    assert session.finalize().read_bytes() == GOOD
