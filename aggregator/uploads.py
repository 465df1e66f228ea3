"""Receiving updates: resumable spool sessions.

An update's bytes land in `spool/r<round>/<silo>/<transfer_id>.upd.partial` and are renamed to
`.upd` when the digest checks out. A session survives broken streams (the next stream resumes at
the committed offset) and restarts of the aggregator (the `.partial` file is the state). When a
silo opens a second stream for the same transfer — a retry while the first is still draining on
the server — the newer stream wins and the older one stops at its next chunk.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from aggregator.limits import UploadQuota
from bandwidth.chunking import PartialFile, sha256_file
from photon.diskspace import as_disk_full, is_disk_full
from photon.errors import ChunkIntegrityError, NotAuthorized, ResumeMismatch, UpdateRejected
from photon.logs import get_logger
from photon.names import PathEscape, path_inside, silo_name_problem
from photon.update import UpdateRecord, valid_transfer_id

log = get_logger("aggregator.uploads")


def _check_names(silo: str, transfer_id: str) -> None:
    """Only checked names become spool paths (silo: photon.names; transfer id: its pattern)."""
    problem = silo_name_problem(silo)
    if problem is not None:
        raise NotAuthorized(problem, silo=silo[:80])
    if not valid_transfer_id(transfer_id):
        raise UpdateRejected(f"transfer_id {transfer_id[:40]!r} is not a valid transfer id")


class UploadSession:
    """One transfer being received; shared by successive streams of the same transfer."""

    def __init__(self, silo: str, update: UpdateRecord, final: Path) -> None:
        self.silo = silo
        self.update = update
        self.final = final
        #: Set after an error dropped the in-memory state; the registry then replaces it.
        self.broken = False
        # Received completely before a crash, but not yet recorded: nothing left to receive.
        partial = final.with_name(final.name + ".partial")
        self.complete = (
            final.exists() and not partial.exists() and sha256_file(final) == update.digest
        )
        self.partial = (
            None
            if self.complete
            else PartialFile(
                final, size=update.size, digest=update.digest, transfer_id=update.transfer_id
            )
        )
        self._lock = threading.Lock()
        self._generation = 0
        self._streams = 0  # streams between claim() and release(); the file is open while > 0

    @contextmanager
    def _consistent(self, *errors: type[BaseException]) -> Iterator[None]:
        """On `errors` (raised again), drop the in-memory state: a failed write or fsync may
        have left fewer bytes on disk than were counted, and a digest mismatch deletes the
        partial. The session is then `broken`: it reports the file's size, refuses writes,
        and the registry's next `open` rebuilds the transfer from the spool."""
        try:
            yield
        except errors:
            if self.partial is not None:
                with suppress(OSError):
                    self.partial.close()
            self.partial, self.broken = None, True
            log.info("upload_state_dropped", transfer_id=self.update.transfer_id, at=self.committed)
            raise

    def _check_usable(self) -> None:
        if self.broken:
            raise ResumeMismatch(
                "this transfer was reset after an error; ask UploadStatus and resume from there",
                transfer_id=self.update.transfer_id,
                offset=self.committed,
            )

    def claim(self) -> int:
        """Start a new stream on this session (reopening its file); older streams are
        superseded. Pair with `release()`."""
        with self._lock:
            p = self.partial
            if self._streams == 0 and p is not None and p.closed and p.path.exists():
                self.partial = self._reopen()  # finalized or deleted partials stay as they are
            self._generation += 1
            self._streams += 1
            return self._generation

    def _reopen(self) -> PartialFile:
        update = self.update
        return PartialFile(
            self.final, size=update.size, digest=update.digest, transfer_id=update.transfer_id
        )

    def release(self) -> None:
        """A stream ended: sync, and close the file when no stream is left, so an abandoned
        transfer holds no descriptor (the `.partial` stays for a resume)."""
        with self._lock:
            self._streams = max(0, self._streams - 1)
            if self.partial is None:
                return
            with self._consistent(OSError):
                if self._streams == 0:
                    self.partial.close()
                else:
                    self.partial.sync()

    def close_if_idle(self) -> None:
        """Close the file unless a stream holds it (a header was refused before any stream)."""
        with self._lock:
            if self._streams == 0 and self.partial is not None:
                self.partial.close()

    @property
    def committed(self) -> int:
        """The next offset this transfer expects (bytes written; synced at stream end); after an
        error, the size of the partial file on disk."""
        if self.broken:
            partial = self.final.with_name(self.final.name + ".partial")
            return partial.stat().st_size if partial.exists() else 0
        return self.update.size if self.partial is None else int(self.partial.received)

    def write(self, generation: int, offset: int, data: bytes, crc32: int) -> bool:
        with self._lock:
            if generation != self._generation:
                raise ResumeMismatch(
                    "a newer stream for this transfer took over",
                    transfer_id=self.update.transfer_id,
                    offset=offset,
                )
            self._check_usable()
            if self.partial is None:
                return False
            with self._consistent(OSError), self._disk_full_resumes():
                return bool(self.partial.write_chunk(offset, data, crc32))

    def sync(self) -> None:
        with self._lock:
            if self.partial is not None:
                with self._consistent(OSError), self._disk_full_resumes():
                    self.partial.sync()

    def finalize(self) -> Path:
        with self._lock:
            self._check_usable()
            if self.partial is None:
                return self.final
            with self._consistent(OSError, ChunkIntegrityError), self._disk_full_resumes():
                return Path(self.partial.finalize())

    @contextmanager
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
                size=self.update.size,
                digest=self.update.digest,
                transfer_id=self.update.transfer_id,
            )
            log.warning(
                "upload_refused_disk_full",
                silo=self.silo,
                round=self.update.round,
                transfer_id=self.update.transfer_id,
                committed=self.partial.received,
            )
            raise as_disk_full(
                exc, "receiving an update", silo=self.silo, round=self.update.round
            ) from exc


class UploadRegistry:
    """The spool directory and the sessions currently known in memory."""

    def __init__(self, spool: Path, quota: UploadQuota | None = None) -> None:
        self.spool = spool
        self.quota = quota
        self.spool.mkdir(parents=True, exist_ok=True)
        self._sessions: dict[tuple[str, str], UploadSession] = {}
        self._lock = threading.Lock()

    def path_for(self, silo: str, round_: int, transfer_id: str) -> Path:
        """The spool path of an update: built from checked names, and inside the spool."""
        _check_names(silo, transfer_id)
        try:
            return path_inside(self.spool, f"r{round_:06d}", silo, f"{transfer_id}.upd")
        except PathEscape as exc:
            raise NotAuthorized(str(exc), silo=silo) from None

    def open(self, silo: str, update: UpdateRecord, offset: int) -> UploadSession:
        """The receive session of `update`, for a stream that starts at byte `offset`."""
        key = (silo, update.transfer_id)
        with self._lock:
            session = self._sessions.get(key)
            if session is not None and session.broken:
                session = None  # its state could not be rebuilt: start again from the spool
            if session is not None and (session.update.digest, session.update.size) != (
                update.digest,
                update.size,
            ):
                raise ResumeMismatch(
                    "transfer id reused with a different digest or size; use a new transfer id",
                    transfer_id=update.transfer_id,
                )
            if session is None:
                self._admit(silo, update)
                final = self.path_for(silo, update.round, update.transfer_id)
                final.parent.mkdir(parents=True, exist_ok=True)
                session = UploadSession(silo, update, final)
                self._sessions[key] = session
        if offset != session.committed:
            session.close_if_idle()
            raise ResumeMismatch(
                f"stream starts at offset {offset} but {session.committed} bytes are "
                "committed; ask UploadStatus and resume from there",
                transfer_id=update.transfer_id,
                offset=session.committed,
            )
        return session

    def _admit(self, silo: str, update: UpdateRecord) -> None:
        """The silo's upload quota, before a new transfer opens a file (lock held)."""
        if self.quota is not None:
            mine = [s.update.size for (who, _), s in self._sessions.items() if who == silo]
            self.quota.admit(silo, update.transfer_id, update.size, mine)

    def committed(self, silo: str, transfer_id: str) -> tuple[int, bool]:
        """(committed bytes, complete) of a transfer, from memory or from the spool."""
        with self._lock:
            session = self._sessions.get((silo, transfer_id))
        if session is not None:
            return session.committed, session.final.exists()
        if not valid_transfer_id(transfer_id):
            return 0, False
        _check_names(silo, transfer_id)
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
                if s.update.round < before:
                    del self._sessions[key]
