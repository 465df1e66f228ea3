"""Recognising a full disk, whichever layer reports it.

A full filesystem reaches Photon in three spellings: an `OSError` with errno ENOSPC or EDQUOT
(plain file writes), `sqlite3.OperationalError` "database or disk is full" (the journal), and
a `SafetensorError` whose message carries the OS error (checkpoints). `is_disk_full` knows all
three; `as_disk_full` turns one into the typed `DiskFull`, which the servicer answers with
RESOURCE_EXHAUSTED and the round engine meets by retrying later instead of dying.
"""

from __future__ import annotations

import errno
import os
import sqlite3

from photon.errors import DiskFull

_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_TEXTS = tuple(
    [f"os error {n})" for n in sorted(_ERRNOS)]
    + [os.strerror(n) for n in sorted(_ERRNOS)]
    + ["database or disk is full"]
)


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc` (or an exception it was raised `from`) reports a full disk or quota."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _says_full(current):
            return True
        current = current.__cause__
    return False


def _says_full(exc: BaseException) -> bool:
    if isinstance(exc, DiskFull):
        return True
    if isinstance(exc, OSError) and exc.errno in _ERRNOS:
        return True
    if (
        isinstance(exc, sqlite3.Error)
        and getattr(exc, "sqlite_errorcode", 0) == sqlite3.SQLITE_FULL
    ):
        return True
    return any(text in str(exc) for text in _TEXTS)


def as_disk_full(
    exc: BaseException, doing: str, *, silo: str | None = None, round: int | None = None
) -> DiskFull:
    """A `DiskFull` naming what failed (`doing`, e.g. "writing the update") and why."""
    if isinstance(exc, DiskFull):
        return exc
    return DiskFull(
        f"no disk space left while {doing} ({exc}); this is refused for now and what was "
        "accepted is kept: retry after space is freed",
        silo=silo,
        round=round,
    )
