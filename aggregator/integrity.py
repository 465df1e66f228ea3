"""Accepted updates whose bytes on disk no longer match the journal: found, dropped, re-asked.

An update is journaled with the SHA-256 of its spool file. Before a round is aggregated, and
when a restart resumes a round, each file is hashed again: a file that is missing, cut short or
bit-flipped is dropped (journal row deleted, `dropped` audit line, file removed). The silo is
then no longer "reported", so it is asked again: a silo whose upload was cut by the crash still
holds the update and re-sends the same bytes; one that was already told "accepted" trains the
round again. If it never does, the round closes without it under the usual quorum rules.

After a restart that had to fall back to an older checkpoint (the newest failed its digest),
the journal can be ahead of the model: `rewind` reopens the round of the loaded version and
forgets the rounds above it, so none is assumed closed on a model that no longer exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from aggregator.audit import AuditLog
from aggregator.store import Store, UpdateRow
from bandwidth.chunking import sha256_file
from photon.logs import get_logger

log = get_logger("aggregator.integrity")

SPOOL_CORRUPT = "spool file missing or fails its digest; asked again"


def update_intact(u: UpdateRow) -> bool:
    """The update's spool file exists with the journaled size and digest."""
    path = Path(u.path)
    try:
        return path.stat().st_size == u.update.size and sha256_file(path) == u.update.digest
    except OSError:
        return False


def drop_updates(store: Store, audit: AuditLog, rows: Iterable[UpdateRow], reason: str) -> None:
    """Forget accepted updates (journal first, then the audit line, then the bytes)."""
    for u in rows:
        store.drop_update(u.update.round, u.silo_id)
        audit.record(
            silo=u.silo_id,
            round=u.update.round,
            digest=u.update.digest,
            signature=u.update.signature,
            verdict="dropped",
            reason=reason,
        )
        Path(u.path).unlink(missing_ok=True)
        log.warning("update_dropped", silo=u.silo_id, round=u.update.round, reason=reason)


def corrupt(rows: Iterable[UpdateRow]) -> list[UpdateRow]:
    """The updates among `rows` whose spool file is missing or fails its digest."""
    return [u for u in rows if not update_intact(u)]


def rewind(store: Store, audit: AuditLog, version: int) -> None:
    """Bring the journal back to the loaded model `version`: round `version` open with its
    intact updates, rounds above it forgotten."""
    for row in store.rounds():
        if row.round > version:
            drop_updates(
                store, audit, store.updates(row.round), f"version {version} is the newest good one"
            )
            store.delete_round(row.round)
            log.warning("round_forgotten", round=row.round, version=version)
        elif row.round == version:
            drop_updates(store, audit, corrupt(store.updates(row.round)), SPOOL_CORRUPT)
            if row.closed_at is not None:
                store.reopen_round(row.round)
                log.warning("round_reopened", round=row.round, version=version)
