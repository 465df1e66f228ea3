"""The aggregator's durable journal: silos, rounds, transfers, accepted updates, evals, traffic.

One SQLite database in the state directory (WAL, synchronous=FULL), so that a killed aggregator
restarts with every update it had accepted. Checkpoints (safetensors files) are the commit point
for model versions; this journal is the commit point for everything inside an open round.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from photon.update import UpdateRecord, valid_transfer_id

#: Added after the first release; `Store._migrate` adds them to older journals, in this order.
ADDED_UPDATE_COLUMNS = (
    "signature BLOB NOT NULL DEFAULT x''",
    "transfer_id TEXT NOT NULL DEFAULT ''",
    "base_version INTEGER NOT NULL DEFAULT -1",
    "codec TEXT NOT NULL DEFAULT ''",
)
#: Column order is the one `_update_row` reads.
_INSERT_UPDATE = (
    "INSERT OR IGNORE INTO updates (round, silo_id, transfer_id, base_version, digest, size, "
    "num_tokens, train_loss, base_eval_loss, train_seconds, signature, codec, path, accepted_at, "
    "norm) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: Every update, or those of one round when both parameters name it.
_SELECT_UPDATES = (
    "SELECT round, silo_id, transfer_id, base_version, digest, size, num_tokens, train_loss, "
    "base_eval_loss, train_seconds, signature, codec, path, accepted_at, norm FROM updates "
    "WHERE ? IS NULL OR round = ? ORDER BY round, silo_id"
)
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS silos (
  silo_id TEXT PRIMARY KEY, joined_at REAL NOT NULL, last_seen REAL NOT NULL,
  state TEXT NOT NULL, num_train_tokens INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS rounds (
  round INTEGER PRIMARY KEY, base_version INTEGER NOT NULL, selected TEXT NOT NULL,
  opened_at REAL NOT NULL, deadline_at REAL NOT NULL, closed_at REAL, outcome TEXT);
CREATE TABLE IF NOT EXISTS updates (
  round INTEGER NOT NULL, silo_id TEXT NOT NULL, digest TEXT NOT NULL, path TEXT NOT NULL,
  size INTEGER NOT NULL, num_tokens INTEGER NOT NULL, train_loss REAL, base_eval_loss REAL,
  train_seconds REAL, accepted_at REAL NOT NULL, norm REAL, {", ".join(ADDED_UPDATE_COLUMNS)},
  PRIMARY KEY (round, silo_id));
CREATE TABLE IF NOT EXISTS evals (
  version INTEGER NOT NULL, source TEXT NOT NULL, loss REAL NOT NULL, tokens INTEGER NOT NULL,
  PRIMARY KEY (version, source));
CREATE TABLE IF NOT EXISTS traffic (
  round INTEGER NOT NULL, silo_id TEXT NOT NULL, direction TEXT NOT NULL,
  bytes INTEGER NOT NULL, PRIMARY KEY (round, silo_id, direction));
"""


@dataclass(frozen=True, slots=True)
class RoundRow:
    round: int
    base_version: int
    selected: tuple[str, ...]
    opened_at: float
    deadline_at: float
    closed_at: float | None
    outcome: str | None


@dataclass(frozen=True, slots=True)
class UpdateRow:
    """An accepted update: the silo's record and what the aggregator adds to it."""

    silo_id: str
    update: UpdateRecord
    #: Where the update's bytes lie in the spool.
    path: str
    accepted_at: float
    #: L2 norm of the decoded delta.
    norm: float | None = None


@dataclass(frozen=True, slots=True)
class SiloRow:
    silo_id: str
    joined_at: float
    last_seen: float
    state: str
    num_train_tokens: int


class Store:
    """Thread-safe access to the journal. Every write is its own committed transaction."""

    def __init__(self, path: Path | str) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Bring a journal written by an older version up to SCHEMA (columns added since).
        Rows from before transfer ids were journaled get the id Photon's silos give an
        update, and the base version of their round."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(updates)")}
        for column in ADDED_UPDATE_COLUMNS:
            name = column.split()[0]
            if name not in columns:
                self._db.execute(f"ALTER TABLE updates ADD COLUMN {column}")
        unnamed = "SELECT rowid, silo_id, round, digest FROM updates WHERE transfer_id = ''"
        for rowid, silo, round_, digest in self._db.execute(unnamed).fetchall():
            self._db.execute(
                "UPDATE updates SET transfer_id = ? WHERE rowid = ?",
                (_legacy_transfer_id(silo, round_, digest), rowid),
            )
        self._db.execute(
            "UPDATE updates SET base_version = coalesce((SELECT r.base_version FROM rounds r "
            "WHERE r.round = updates.round), base_version) WHERE base_version < 0"
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    # -- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- silos --------------------------------------------------------------------------------
    def upsert_silo(self, silo_id: str, now: float, state: str, num_train_tokens: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO silos VALUES (?, ?, ?, ?, ?) ON CONFLICT(silo_id) DO UPDATE SET "
                "last_seen = excluded.last_seen, state = excluded.state, "
                "num_train_tokens = excluded.num_train_tokens",
                (silo_id, now, now, state, num_train_tokens),
            )

    def set_silo_state(self, silo_id: str, state: str, last_seen: float | None = None) -> None:
        with self._tx() as db:
            if last_seen is None:
                db.execute("UPDATE silos SET state = ? WHERE silo_id = ?", (state, silo_id))
            else:
                db.execute(
                    "UPDATE silos SET state = ?, last_seen = ? WHERE silo_id = ?",
                    (state, last_seen, silo_id),
                )

    def silos(self) -> list[SiloRow]:
        rows = self._query("SELECT * FROM silos ORDER BY silo_id")
        return [SiloRow(*row) for row in rows]  # type: ignore[arg-type]

    # -- rounds -------------------------------------------------------------------------------
    def open_round(self, row: RoundRow) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO rounds VALUES (?, ?, ?, ?, ?, NULL, NULL)",
                (
                    row.round,
                    row.base_version,
                    json.dumps(list(row.selected)),
                    row.opened_at,
                    row.deadline_at,
                ),
            )

    def extend_deadline(self, round_: int, deadline_at: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE rounds SET deadline_at = ? WHERE round = ?", (deadline_at, round_))

    def close_round(self, round_: int, closed_at: float, outcome: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE rounds SET closed_at = ?, outcome = ? "
                "WHERE round = ? AND closed_at IS NULL",
                (closed_at, outcome, round_),
            )

    def reopen_round(self, round_: int) -> None:
        """Mark a closed round open again (its version's checkpoint was found corrupt)."""
        with self._tx() as db:
            db.execute(
                "UPDATE rounds SET closed_at = NULL, outcome = NULL WHERE round = ?", (round_,)
            )

    def delete_round(self, round_: int) -> None:
        """Forget a round opened on a version that no longer exists (and its updates)."""
        with self._tx() as db:
            db.execute("DELETE FROM updates WHERE round = ?", (round_,))
            db.execute("DELETE FROM rounds WHERE round = ?", (round_,))

    def get_round(self, round_: int) -> RoundRow | None:
        rows = self._query("SELECT * FROM rounds WHERE round = ?", (round_,))
        return _round_row(rows[0]) if rows else None

    def rounds(self) -> list[RoundRow]:
        return [_round_row(r) for r in self._query("SELECT * FROM rounds ORDER BY round")]

    # -- updates ------------------------------------------------------------------------------
    def add_update(self, row: UpdateRow) -> bool:
        """Record an accepted update; False if (round, silo) already has one (idempotent)."""
        u = row.update
        values = (
            *(u.round, row.silo_id, u.transfer_id, u.base_version, u.digest, u.size),
            *(u.num_tokens, u.train_loss, u.base_eval_loss, u.train_seconds, u.signature, u.codec),
            *(row.path, row.accepted_at, row.norm),
        )
        with self._tx() as db:
            cur = db.execute(_INSERT_UPDATE, values)
            return cur.rowcount == 1

    def drop_update(self, round_: int, silo_id: str) -> None:
        """Remove an accepted update whose bytes were lost or corrupted; the silo may resend."""
        with self._tx() as db:
            db.execute("DELETE FROM updates WHERE round = ? AND silo_id = ?", (round_, silo_id))

    def updates(self, round_: int) -> list[UpdateRow]:
        return [_update_row(r) for r in self._query(_SELECT_UPDATES, (round_, round_))]

    def all_updates(self) -> list[UpdateRow]:
        return [_update_row(r) for r in self._query(_SELECT_UPDATES, (None, None))]

    def accepted(self, silo_id: str, transfer_id: str) -> bool:
        """Whether the journal holds an accepted update of `silo_id` sent as `transfer_id`."""
        rows = self._query(
            "SELECT 1 FROM updates WHERE silo_id = ? AND transfer_id = ? LIMIT 1",
            (silo_id, transfer_id),
        )
        return bool(rows)

    # -- evals and traffic --------------------------------------------------------------------
    def add_eval(self, version: int, source: str, loss: float, tokens: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO evals VALUES (?, ?, ?, ?)", (version, source, loss, tokens)
            )

    def evals(self) -> list[tuple[int, str, float, int]]:
        return self._query("SELECT * FROM evals ORDER BY version, source")  # type: ignore[return-value]

    def add_traffic(self, round_: int, silo_id: str, direction: str, nbytes: int) -> None:
        if nbytes <= 0:
            return
        with self._tx() as db:
            db.execute(
                "INSERT INTO traffic VALUES (?, ?, ?, ?) ON CONFLICT(round, silo_id, direction) "
                "DO UPDATE SET bytes = bytes + excluded.bytes",
                (round_, silo_id, direction, nbytes),
            )

    def traffic(self) -> list[tuple[int, str, str, int]]:
        return self._query("SELECT * FROM traffic ORDER BY round, silo_id, direction")  # type: ignore[return-value]


def _legacy_transfer_id(silo: str, round_: int, digest: str) -> str:
    """The id a Photon silo gives its update (silo_agent), or one in the journal's name."""
    named = f"{silo}-r{round_}-{digest[:16]}"
    return named if valid_transfer_id(named) else f"journal-r{round_}-{digest[:16]}"


def _update_row(row: tuple[Any, ...]) -> UpdateRow:
    r, silo, tid, base, digest, size, tokens, loss, base_loss, seconds, sig, codec, *rest = row
    path, accepted_at, norm = rest
    update = UpdateRecord(
        round=r,
        transfer_id=tid,
        base_version=base,
        digest=digest,
        size=size,
        num_tokens=tokens,
        train_loss=loss,
        base_eval_loss=base_loss,
        train_seconds=seconds,
        signature=bytes(sig),
        codec=str(codec),
    )
    return UpdateRow(silo_id=silo, update=update, path=path, accepted_at=accepted_at, norm=norm)


def _round_row(row: tuple[object, ...]) -> RoundRow:
    r, base, selected, opened, deadline, closed, outcome = row
    return RoundRow(
        round=int(r),  # type: ignore[call-overload]
        base_version=int(base),  # type: ignore[call-overload]
        selected=tuple(json.loads(str(selected))),
        opened_at=float(opened),  # type: ignore[arg-type]
        deadline_at=float(deadline),  # type: ignore[arg-type]
        closed_at=None if closed is None else float(closed),  # type: ignore[arg-type]
        outcome=None if outcome is None else str(outcome),
    )
