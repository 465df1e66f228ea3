"""Chunks, receiving files and resume: every way a stream can go wrong."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bandwidth.chunking import (
    ChunkData,
    Digest,
    PartialFile,
    iter_file_chunks,
    sha256_file,
)
from photon.errors import ChunkIntegrityError, TransferError
from photon.wire import DEFAULT_CHUNK_BYTES

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_file(path: Path, size: int, seed: int = 0) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


def partial_for(tmp: Path, data: bytes, **kw: int) -> PartialFile:
    return PartialFile(tmp / "out.obj", size=len(data), digest=sha(data), transfer_id="t1", **kw)


def receive_chunks(part: PartialFile, chunks: Iterable[ChunkData]) -> int:
    """Feed chunks in order into `part`, syncing it at the end also when the stream breaks
    (as the aggregator's and the silo's receiving loops do); how many added bytes."""
    added = 0
    try:
        for c in chunks:
            added += part.write_chunk(c.offset, c.data, c.crc32)
    finally:
        part.sync()
    return added


@st.composite
def size_and_chunk(draw: st.DrawFn) -> tuple[int, int]:
    chunk = draw(st.integers(1, 64))
    kind = draw(st.sampled_from(["zero", "below", "multiple", "many"]))
    size = {
        "zero": 0,
        "below": draw(st.integers(1, chunk)),
        "multiple": chunk * draw(st.integers(1, 20)),
        "many": draw(st.integers(chunk + 1, 2000)),
    }[kind]
    return size, chunk


@SETTINGS
@given(sc=size_and_chunk(), seed=st.integers(0, 1000))
def test_round_trip_through_partial_file(tmp_path: Path, sc: tuple[int, int], seed: int):
    size, chunk = sc
    src = tmp_path / f"src-{seed}-{size}-{chunk}"
    data = make_file(src, size, seed)
    chunks = list(iter_file_chunks(src, chunk_size=chunk))
    assert sum(len(c.data) for c in chunks) == size
    assert all(len(c.data) == chunk for c in chunks[:-1])
    dest = tmp_path / f"out-{seed}-{size}-{chunk}.obj"
    with PartialFile(dest, size=size, digest=sha(data), transfer_id="t") as part:
        assert receive_chunks(part, chunks) == len(chunks)
        assert part.committed == size
        assert part.finalize() == dest
    assert dest.read_bytes() == data
    assert not part.path.exists()


def test_chunk_offsets_and_crcs(tmp_path: Path):
    data = make_file(tmp_path / "src", 10)
    chunks = list(iter_file_chunks(tmp_path / "src", start=3, chunk_size=4))
    assert [(c.offset, bytes(c.data)) for c in chunks] == [(3, data[3:7]), (7, data[7:])]
    assert chunks[0] == ChunkData.of(3, data[3:7])
    assert list(iter_file_chunks(tmp_path / "src", start=10)) == []
    with pytest.raises(TransferError, match="start at byte 11"):
        list(iter_file_chunks(tmp_path / "src", start=11))


@pytest.fixture
def src(tmp_path: Path) -> tuple[bytes, list[ChunkData]]:
    data = make_file(tmp_path / "src", 1000)
    return data, list(iter_file_chunks(tmp_path / "src", chunk_size=100))


def test_corrupt_crc_is_rejected_with_transfer_id_and_offset(tmp_path: Path, src):
    data, chunks = src
    recv = partial_for(tmp_path, data)
    recv.add(chunks[0])
    bad = ChunkData(offset=100, data=b"X" + chunks[1].data[1:], crc32=chunks[1].crc32)
    with pytest.raises(ChunkIntegrityError, match=r"t1: CRC mismatch.*offset 100") as exc:
        recv.add(bad)
    assert (exc.value.transfer_id, exc.value.offset) == ("t1", 100)
    assert recv.received == 100  # nothing of the bad chunk landed


def test_gap_and_reorder_are_rejected(tmp_path: Path, src):
    data, chunks = src
    part = partial_for(tmp_path, data)
    with pytest.raises(ChunkIntegrityError, match="gap: chunk at 100, expected 0"):
        part.add(chunks[1])
    part.add(chunks[0])
    with pytest.raises(ChunkIntegrityError, match="gap: chunk at 200, expected 100"):
        part.add(chunks[2])
    receive_chunks(part, chunks[1:])
    assert part.finalize().read_bytes() == data


def test_duplicates_are_ignored_and_overlaps_trimmed(tmp_path: Path, src):
    data, chunks = src
    part = partial_for(tmp_path, data)
    assert part.add(chunks[0]) and part.add(chunks[1])
    assert part.add(chunks[0]) is False  # wholly below: idempotent
    assert part.add(chunks[1]) is False
    assert part.add(ChunkData.of(150, data[150:300])) is True  # overlap: only the new 100 bytes
    assert part.received == 300
    receive_chunks(part, chunks[3:])
    assert part.finalize().read_bytes() == data


def test_chunk_past_the_declared_size_is_rejected(tmp_path: Path, src):
    data, chunks = src
    part = partial_for(tmp_path, data[:950])
    receive_chunks(part, chunks[:9])
    with pytest.raises(ChunkIntegrityError, match=r"\[900, 1000\) lies outside \[0, 950\)"):
        part.add(chunks[9])


def test_truncated_stream_cannot_finalize_and_stays_resumable(tmp_path: Path, src):
    data, chunks = src
    part = partial_for(tmp_path, data)
    receive_chunks(part, chunks[:7])
    with pytest.raises(TransferError, match="incomplete, 700 of 1000 bytes") as exc:
        part.finalize()
    assert not isinstance(exc.value, ChunkIntegrityError) and exc.value.offset == 700
    assert part.path.stat().st_size == 700


def test_wrong_digest_deletes_the_partial(tmp_path: Path, src):
    _, chunks = src
    part = PartialFile(tmp_path / "out.obj", size=1000, digest=sha(b"other"), transfer_id="t1")
    receive_chunks(part, chunks)
    with pytest.raises(ChunkIntegrityError, match="t1: digest"):
        part.finalize()
    assert not part.path.exists() and not (tmp_path / "out.obj").exists()


def test_bad_declarations_are_refused(tmp_path: Path):
    with pytest.raises(TransferError, match="not a SHA-256"):
        PartialFile(tmp_path / "o", size=1, digest="abc", transfer_id="t")
    with pytest.raises(TransferError, match="negative"):
        PartialFile(tmp_path / "o", size=-1, digest=sha(b""), transfer_id="t")


@SETTINGS
@given(cut=st.integers(0, 10), sync_every=st.sampled_from([1, 250, 10**9]))
def test_resume_after_close_gives_the_same_bytes(tmp_path: Path, src, cut: int, sync_every: int):
    data, chunks = src
    dest = tmp_path / f"r-{cut}-{sync_every}.obj"
    with PartialFile(
        dest, size=1000, digest=sha(data), transfer_id="t", sync_every=sync_every
    ) as p:
        receive_chunks(p, chunks[:cut])
    again = PartialFile(dest, size=1000, digest=sha(data), transfer_id="t")
    assert again.received == again.committed == 100 * cut
    receive_chunks(again, iter_file_chunks(tmp_path / "src", start=again.received, chunk_size=64))
    assert again.finalize().read_bytes() == data


def test_resume_after_a_crash_mid_chunk(tmp_path: Path, src):
    """A partial whose size is not on a chunk boundary resumes at that size."""
    data, _ = src
    dest = tmp_path / "out.obj"
    (tmp_path / "out.obj.partial").write_bytes(data[:333])
    part = PartialFile(dest, size=1000, digest=sha(data), transfer_id="t")
    assert part.received == 333
    receive_chunks(part, iter_file_chunks(tmp_path / "src", start=333, chunk_size=100))
    assert part.finalize().read_bytes() == data


def test_a_partial_longer_than_the_object_is_reset(tmp_path: Path, src):
    data, chunks = src
    (tmp_path / "out.obj.partial").write_bytes(b"x" * 2000)
    part = partial_for(tmp_path, data)
    assert part.received == 0
    receive_chunks(part, chunks)
    assert part.finalize().read_bytes() == data


def test_sync_every_bounds_uncommitted_bytes(tmp_path: Path, src):
    data, chunks = src
    part = partial_for(tmp_path, data, sync_every=250)
    for chunk in chunks[:6]:
        part.add(chunk)
        assert part.received - part.committed < 250
    part.sync()
    assert part.committed == 600


def test_sync_after_a_broken_stream_commits_what_arrived(tmp_path: Path, src):
    data, chunks = src

    def broken():
        yield from chunks[:4]
        raise ConnectionError("link dropped")

    part = partial_for(tmp_path, data)
    with pytest.raises(ConnectionError):
        receive_chunks(part, broken())
    assert part.committed == 400


def test_finalize_is_idempotent_and_writes_after_close_fail(tmp_path: Path, src):
    data, chunks = src
    part = partial_for(tmp_path, data)
    receive_chunks(part, chunks)
    final = part.finalize()
    assert final == part.path_final and final.read_bytes() == data
    assert not part.path.exists(), "the partial was renamed into place"
    before = final.stat()
    assert part.finalize() == final, "a second finalize names the same file"
    after = final.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert final.read_bytes() == data
    with pytest.raises(TransferError, match="closed"):
        part.add(chunks[0])


def test_digest_helpers(tmp_path: Path):
    data = make_file(tmp_path / "f", 3 * 1024 * 1024 + 5)
    assert sha256_file(tmp_path / "f") == sha(data)
    d = Digest()
    d.update(data[:10])
    d.update(memoryview(data)[10:])
    assert (d.hexdigest(), d.size) == (sha(data), len(data))
    head = Digest()
    head.update_from_file(tmp_path / "f", limit=1_500_000)
    assert head.hexdigest() == sha(data[:1_500_000])


@pytest.mark.slow
def test_streams_a_sparse_2_2_gib_object(tmp_path: Path):
    size = int(2.2 * 1024**3)
    src = tmp_path / "big.obj"
    with src.open("wb") as fh:
        fh.truncate(size)
        for offset in (0, 2**31 - 3, size - 7):  # marks across the 2 GiB line
            fh.seek(offset)
            fh.write(os.urandom(7))
    digest = sha256_file(src)
    dest = tmp_path / "recv.obj"
    with PartialFile(dest, size=size, digest=digest, transfer_id="big") as part:
        receive_chunks(part, iter_file_chunks(src, chunk_size=DEFAULT_CHUNK_BYTES))
        part.finalize()
    assert dest.stat().st_size == size
    with src.open("rb") as a, dest.open("rb") as b:
        for offset in (0, 2**31 - 3, size - 7):
            a.seek(offset)
            b.seek(offset)
            assert a.read(7) == b.read(7)
