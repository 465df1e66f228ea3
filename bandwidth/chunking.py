"""Objects on the wire: chunks with offsets and CRC32s, digests, resumable receiving files.

Sending side: `iter_file_chunks(path, start=offset)` yields `ChunkData` from a spool file,
starting wherever the receiver says it has committed.

Receiving side: a `PartialFile` (disk, `<final>.partial`, survives restarts). It accepts
chunks only in order, verifies each CRC, ignores exact re-sends of bytes it already holds,
hashes as it goes, and on `finalize()` checks the size and the SHA-256 digest of the object:

    with PartialFile(dest, size=n, digest=d, transfer_id=tid) as part:
        try:                                  # resumes at part.received after a restart
            for c in chunks:
                part.write_chunk(c.offset, c.data, c.crc32)
        finally:
            part.sync()
        path = part.finalize()
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from photon.errors import ChunkIntegrityError, TransferError
from photon.fsutil import fsync_dir
from photon.logs import get_logger
from photon.wire import DEFAULT_CHUNK_BYTES

SYNC_EVERY = 32 * 1024 * 1024
"""A `PartialFile` fsyncs after this many new bytes, and at `sync()`/`close()`/`finalize()`."""
_READ_SIZE = 1024 * 1024
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

Buffer = bytes | bytearray | memoryview

log = get_logger(__name__)


def crc32(data: Buffer) -> int:
    """CRC-32 (zlib's polynomial) as an unsigned int."""
    return zlib.crc32(data) & 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class ChunkData:
    """A piece of an object: where it goes, its bytes, their CRC-32."""

    offset: int
    data: bytes | memoryview
    crc32: int

    @classmethod
    def of(cls, offset: int, data: bytes | memoryview) -> ChunkData:
        return cls(offset=offset, data=data, crc32=crc32(data))


class Digest:
    """Incremental SHA-256 of a byte stream that also counts the bytes."""

    __slots__ = ("_hash", "size")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, data: Buffer) -> None:
        self._hash.update(data)
        self.size += memoryview(data).nbytes

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def update_from_file(self, path: Path, limit: int | None = None) -> None:
        """Hash a file's bytes (its first `limit` bytes, when given) in 1 MiB reads."""
        buf = bytearray(_READ_SIZE)
        view = memoryview(buf)
        remaining = limit
        with Path(path).open("rb", buffering=0) as fh:
            while remaining is None or remaining > 0:
                want = _READ_SIZE if remaining is None else min(_READ_SIZE, remaining)
                n = fh.readinto(view[:want])
                if not n:
                    break
                self.update(view[:n])
                if remaining is not None:
                    remaining -= n


def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB pieces."""
    digest = Digest()
    digest.update_from_file(path)
    return digest.hexdigest()


def iter_file_chunks(
    path: Path, *, start: int = 0, chunk_size: int = DEFAULT_CHUNK_BYTES
) -> Iterator[ChunkData]:
    """Chunks of a file from byte `start` to its end, each with its offset and CRC-32.

    Each chunk is a fresh `bytes` from one `read` (the consumer may keep it, e.g. in a
    protobuf message), so no buffer is shared between chunks.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    with Path(path).open("rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        if not 0 <= start <= size:
            raise TransferError(f"cannot start at byte {start} of a {size}-byte file {path}")
        fh.seek(start)
        offset = start
        while data := fh.read(chunk_size):
            yield ChunkData.of(offset, data)
            offset += len(data)


class _Verifier:
    """The checks every receiving side shares: CRC, order, bounds, size, digest."""

    def __init__(self, *, size: int, digest: str, transfer_id: str) -> None:
        if size < 0:
            raise TransferError(f"object size {size} is negative", transfer_id=transfer_id)
        if not _SHA256_HEX.fullmatch(digest.lower()):
            raise TransferError(
                f"digest {digest!r} is not a SHA-256 hex string", transfer_id=transfer_id
            )
        self.size = size
        self.digest = digest.lower()
        self.transfer_id = transfer_id
        self.hash = Digest()

    @property
    def received(self) -> int:
        return self.hash.size

    def _error(self, message: str, offset: int) -> ChunkIntegrityError:
        return ChunkIntegrityError(
            f"transfer {self.transfer_id}: {message}", transfer_id=self.transfer_id, offset=offset
        )

    def accept(self, offset: int, data: Buffer, crc: int) -> memoryview:
        """The bytes of a valid chunk that extend the object (empty for a re-send)."""
        view = memoryview(data).cast("B")
        if crc32(view) != crc:
            raise self._error(f"CRC mismatch in the chunk at offset {offset}", offset)
        end = offset + len(view)
        if offset < 0 or end > self.size:
            raise self._error(f"chunk [{offset}, {end}) lies outside [0, {self.size})", offset)
        if offset > self.received:
            raise self._error(f"gap: chunk at {offset}, expected {self.received}", offset)
        new = view[self.received - offset :]
        self.hash.update(new)
        return new

    def check_complete(self) -> None:
        if self.received != self.size:
            raise TransferError(
                f"transfer {self.transfer_id}: incomplete, {self.received} of {self.size} bytes",
                transfer_id=self.transfer_id,
                offset=self.received,
            )

    def check_digest(self) -> None:
        actual = self.hash.hexdigest()
        if actual != self.digest:
            raise self._error(f"digest {actual} != declared {self.digest}", self.received)


class PartialFile:
    """Receives an object into `<final>.partial`, resumable across restarts of either side.

    `received` is the next offset expected; `committed` the bytes known durable (fsynced).
    Reopening an existing `.partial` resumes at its size (after an fsync) and re-hashes
    that prefix once. A partial longer than the object cannot belong to it and is emptied.
    """

    def __init__(
        self,
        path_final: Path,
        *,
        size: int,
        digest: str,
        transfer_id: str,
        sync_every: int = SYNC_EVERY,
    ) -> None:
        self._verify = _Verifier(size=size, digest=digest, transfer_id=transfer_id)
        self.path_final = Path(path_final)
        self.path = self.path_final.with_name(self.path_final.name + ".partial")
        self._sync_every = sync_every
        self._finalized = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("ab")
        try:
            os.fsync(self._fh.fileno())
            fsync_dir(self.path.parent)
            self.committed = self._resume()
        except BaseException:
            self._fh.close()
            raise

    def _resume(self) -> int:
        existing = os.fstat(self._fh.fileno()).st_size
        if existing > self._verify.size:
            log.warning("partial_reset", path=str(self.path), held=existing, size=self._verify.size)
            self._fh.truncate(0)
            os.fsync(self._fh.fileno())
            existing = 0
        if existing:
            self._verify.hash.update_from_file(self.path, limit=existing)
            log.info("partial_resumed", transfer_id=self.transfer_id, offset=existing)
        return existing

    @property
    def transfer_id(self) -> str:
        return self._verify.transfer_id

    @property
    def size(self) -> int:
        return self._verify.size

    @property
    def received(self) -> int:
        return self._verify.received

    @property
    def closed(self) -> bool:
        """Whether the file descriptor is closed (by `close()` or `finalize()`)."""
        return bool(self._fh.closed)

    def write_chunk(self, offset: int, data: Buffer, crc32: int) -> bool:
        """Append a verified chunk; False for a harmless re-send of bytes already held.

        Raises ChunkIntegrityError on a bad CRC, a gap, or bytes past the object's size.
        """
        if self._fh.closed:
            raise TransferError(f"transfer {self.transfer_id}: {self.path} is closed")
        new = self._verify.accept(offset, data, crc32)
        if not new:
            return False
        self._fh.write(new)
        if self.received - self.committed >= self._sync_every:
            self.sync()
        return True

    def add(self, chunk: ChunkData) -> bool:
        return self.write_chunk(chunk.offset, chunk.data, chunk.crc32)

    def sync(self) -> None:
        """Make every received byte durable; `committed` becomes `received`."""
        if self._fh.closed:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.committed = self.received

    def close(self) -> None:
        """Sync and close without finalizing; a later `PartialFile` resumes from here."""
        if not self._fh.closed:
            self.sync()
            self._fh.close()

    def abandon(self) -> None:
        """Close after a failed write (a full disk), without syncing and ignoring errors.

        What reached the file is a prefix of the object (chunks are appended in order), so a
        new `PartialFile` on the same path resumes from exactly what is on disk; this one's
        counters, which may include bytes that never got there, are dropped with it.
        """
        with contextlib.suppress(OSError):
            self._fh.close()

    def finalize(self) -> Path:
        """Check size and digest, then atomically rename the partial to the final path.

        An incomplete object raises TransferError and stays resumable; a digest mismatch
        deletes the partial (its bytes are wrong somewhere) and raises ChunkIntegrityError.
        """
        if self._finalized:
            return self.path_final
        self._verify.check_complete()
        self.close()
        try:
            self._verify.check_digest()
        except ChunkIntegrityError:
            self.path.unlink(missing_ok=True)
            raise
        self.path.replace(self.path_final)
        fsync_dir(self.path_final.parent)
        self._finalized = True
        return self.path_final

    def __enter__(self) -> PartialFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
