"""Receiving updates: validated upload headers and resumable spool sessions.

An update's bytes land in `spool/r<round>/<silo>/<transfer_id>.upd.partial` and are renamed to
`.upd` when the digest checks out. A session survives broken streams (the next stream resumes at
the committed offset) and restarts of the aggregator (the `.partial` file is the state). When a
silo opens a second stream for the same transfer — a retry while the first is still draining on
the server — the newer stream wins and the older one stops at its next chunk.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bandwidth.chunking import PartialFile, sha256_file
from photon.diskspace import as_disk_full, is_disk_full
from photon.errors import ResumeMismatch, UpdateRejected
from photon.logs import get_logger

log = get_logger("aggregator.uploads")

_TRANSFER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: Counts from the network (tokens) must fit the journal's signed 64-bit integers.
MAX_COUNT = 2**62
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class UploadHeaderInfo:
    """The fields of an UploadHeader, checked."""

    transfer_id: str
    round: int
    base_version: int
    digest: str
    size: int
    offset: int
    num_tokens: int
    train_loss: float | None
    base_eval_loss: float | None
    train_seconds: float
    signature: bytes = b""

    def __post_init__(self) -> None:
        if not _TRANSFER_ID.fullmatch(self.transfer_id):
            raise UpdateRejected(
                f"transfer_id {self.transfer_id[:40]!r} must match {_TRANSFER_ID.pattern}"
            )
        if not _DIGEST.fullmatch(self.digest):
            raise UpdateRejected("digest must be 64 lowercase hex characters (SHA-256)")
        if self.size <= 0 or not 0 <= self.offset <= self.size:
            raise UpdateRejected(f"offset {self.offset} / size {self.size} are inconsistent")
        if not 0 < self.num_tokens < MAX_COUNT:
            raise UpdateRejected("num_tokens must be in (0, 2**62): it is the update's weight")
        for name in ("train_loss", "base_eval_loss"):
            value = getattr(self, name)
            if value is not None and math.isinf(value):
                raise UpdateRejected(f"{name} must be finite")


class UploadSession:
    """One transfer being received; shared by successive streams of the same transfer."""

    def __init__(self, silo: str, info: UploadHeaderInfo, final: Path) -> None:
        self.silo = silo
        self.info = info
        self.final = final
        # Received completely before a crash, but not yet recorded: nothing left to receive.
        partial = final.with_name(final.name + ".partial")
        self.complete = (
            final.exists() and not partial.exists() and sha256_file(final) == info.digest
        )
        self.partial = (
            None
            if self.complete
            else PartialFile(
                final, size=info.size, digest=info.digest, transfer_id=info.transfer_id
            )
        )
        self._lock = threading.Lock()
        self._generation = 0

    def claim(self) -> int:
        """Start a new stream on this session; older streams are superseded."""
        with self._lock:
            self._generation += 1
            return self._generation

    @property
    def committed(self) -> int:
        """The next offset this transfer expects (bytes written; synced at stream end)."""
        return self.info.size if self.partial is None else int(self.partial.received)

    def write(self, generation: int, offset: int, data: bytes, crc32: int) -> bool:
        with self._lock:
            if generation != self._generation:
                raise ResumeMismatch(
                    "a newer stream for this transfer took over",
                    transfer_id=self.info.transfer_id,
                    offset=offset,
                )
            if self.partial is None:
                return False
            with self._disk_full_resumes():
                return bool(self.partial.write_chunk(offset, data, crc32))

    def sync(self) -> None:
        with self._lock:
            if self.partial is not None:
                with self._disk_full_resumes():
                    self.partial.sync()

    def finalize(self) -> Path:
        with self._lock:
            if self.partial is None:
                return self.final
            with self._disk_full_resumes():
                return Path(self.partial.finalize())

    @contextlib.contextmanager
    def _disk_full_resumes(self) -> Iterator[None]:
        """A full disk refuses the write (DiskFull); the session restarts from what is on
        disk, so the silo's next stream resumes at a consistent committed offset."""
        try:
            yield
        except OSError as exc:
            if not is_disk_full(exc) or self.partial is None:
                raise
            self.partial.abandon()
            self.partial = PartialFile(
                self.final,
                size=self.info.size,
                digest=self.info.digest,
                transfer_id=self.info.transfer_id,
            )
            log.warning(
                "upload_refused_disk_full",
                silo=self.silo,
                round=self.info.round,
                transfer_id=self.info.transfer_id,
                committed=self.partial.received,
            )
            raise as_disk_full(
                exc, "receiving an update", silo=self.silo, round=self.info.round
            ) from exc


class UploadRegistry:
    """The spool directory and the sessions currently known in memory."""

    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self.spool.mkdir(parents=True, exist_ok=True)
        self._sessions: dict[tuple[str, str], UploadSession] = {}
        self._lock = threading.Lock()

    def path_for(self, silo: str, round_: int, transfer_id: str) -> Path:
        return self.spool / f"r{round_:06d}" / silo / f"{transfer_id}.upd"

    def open(self, silo: str, info: UploadHeaderInfo) -> UploadSession:
        key = (silo, info.transfer_id)
        with self._lock:
            session = self._sessions.get(key)
            if session is not None and (session.info.digest, session.info.size) != (
                info.digest,
                info.size,
            ):
                raise ResumeMismatch(
                    "transfer id reused with a different digest or size; use a new transfer id",
                    transfer_id=info.transfer_id,
                )
            if session is None:
                final = self.path_for(silo, info.round, info.transfer_id)
                final.parent.mkdir(parents=True, exist_ok=True)
                session = UploadSession(silo, info, final)
                self._sessions[key] = session
        if info.offset != session.committed:
            raise ResumeMismatch(
                f"stream starts at offset {info.offset} but {session.committed} bytes are "
                "committed; ask UploadStatus and resume from there",
                transfer_id=info.transfer_id,
                offset=session.committed,
            )
        return session

    def committed(self, silo: str, transfer_id: str) -> tuple[int, bool]:
        """(committed bytes, complete) of a transfer, from memory or from the spool."""
        with self._lock:
            session = self._sessions.get((silo, transfer_id))
        if session is not None:
            return session.committed, session.final.exists()
        if not _TRANSFER_ID.fullmatch(transfer_id):
            return 0, False
        for final in sorted(self.spool.glob(f"r*/{silo}/{transfer_id}.upd")):
            return final.stat().st_size, True
        for partial in sorted(self.spool.glob(f"r*/{silo}/{transfer_id}.upd.partial")):
            return partial.stat().st_size, False
        return 0, False

    def finish(self, transfer_id: str) -> None:
        with self._lock:
            for key in [k for k in self._sessions if k[1] == transfer_id]:
                del self._sessions[key]

    def discard(self, transfer_id: str, path: Path) -> None:
        """Forget a rejected transfer and delete its bytes: it leaves no trace."""
        self.finish(transfer_id)
        path.unlink(missing_ok=True)

    def clean_closed_rounds(self, before: int) -> None:
        """Delete spool folders of rounds that were aggregated (and their stray partials)."""
        for folder in sorted(self.spool.glob("r*")):
            try:
                round_ = int(folder.name[1:])
            except ValueError:
                continue
            if round_ < before:
                shutil.rmtree(folder, ignore_errors=True)
                log.debug("spool_cleaned", round=round_)
        with self._lock:
            for key, s in list(self._sessions.items()):
                if s.info.round < before:
                    del self._sessions[key]
