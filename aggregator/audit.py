"""The append-only audit trail of updates: who sent what, for which round, and the verdict.

One JSON object per line in `audit.jsonl`, each carrying the SHA-256 of the previous line
(`prev`), so deleting or editing a line breaks the chain and `photon audit --verify` says where.
Lines are fsynced as they are written.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
#: Journal meta key holding the hash of the audit log's last line.
AUDIT_HEAD = "audit_head"


class AuditLog:
    """Appends entries; `anchor` (e.g. the journal) is told the new head hash after each one,
    so that cutting lines off the end is detected too (`read_audit(..., head=...)`)."""

    def __init__(self, path: Path, anchor: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.anchor = anchor
        self._lock = threading.Lock()
        self._prev = GENESIS
        for line in _lines(path):
            self._prev = _hash(line)
        if anchor is not None:
            anchor(self._prev)  # after a crash between an append and its anchoring

    def record(
        self,
        *,
        silo: str,
        round: int,
        digest: str,
        signature: bytes,
        verdict: str,
        reason: str = "",
        codec: str = "",
    ) -> None:
        entry = {
            "time": round_time(),
            "silo": silo,
            "round": round,
            "digest": digest,
            "signature": signature.hex(),
            "verdict": verdict,
            "reason": reason,
        }
        if codec:  # the update's declared codec (silos older than the field do not say)
            entry["codec"] = codec
        with self._lock:
            entry["prev"] = self._prev
            line = json.dumps(entry, sort_keys=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                _append_whole(fd, (line + "\n").encode(), self.path)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._prev = _hash(line)
            if self.anchor is not None:
                self.anchor(self._prev)


def _append_whole(fd: int, data: bytes, path: Path) -> None:
    """Append all of `data` or nothing: a short write (a full disk fits part of a line) is cut
    off again, so a torn line never breaks the chain for the lines after it."""
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        written = os.write(fd, data)
    except OSError:
        os.ftruncate(fd, start)
        raise
    if written != len(data):
        os.ftruncate(fd, start)
        raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)", str(path))


def round_time() -> float:
    return round(time.time(), 3)


def _hash(line: str) -> str:
    return hashlib.sha256(line.encode()).hexdigest()


def _lines(path: Path) -> Iterator[str]:
    if not path.exists():
        return
    with path.open() as fh:
        for line in fh:
            if line.strip():
                yield line.rstrip("\n")


def read_audit(path: Path, head: str | None = None) -> tuple[list[dict[str, Any]], int | None]:
    """(entries, index of the first entry whose chain is broken, or None if intact). With the
    anchored `head`, a log whose last line is not that head (cut or rebuilt) is broken at its
    end."""
    entries: list[dict[str, Any]] = []
    prev, broken = GENESIS, None
    for i, line in enumerate(_lines(path)):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = {"verdict": "unreadable", "raw": line[:80]}
        if broken is None and entry.get("prev") != prev:
            broken = i
        entries.append(entry)
        prev = _hash(line)
    if broken is None and head is not None and head != prev:
        broken = len(entries)
    return entries, broken
