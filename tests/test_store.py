"""The journal keeps what a restart needs, and opens journals written by older versions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from aggregator.store import Store, UpdateRow
from photon.update import UpdateRecord

DIGEST = "ab" * 32

#: The `rounds` and `updates` tables as the first release wrote them (no signature column).
FIRST_RELEASE_SCHEMA = """
CREATE TABLE rounds (
  round INTEGER PRIMARY KEY, base_version INTEGER NOT NULL, selected TEXT NOT NULL,
  opened_at REAL NOT NULL, deadline_at REAL NOT NULL, closed_at REAL, outcome TEXT);
CREATE TABLE updates (
  round INTEGER NOT NULL, silo_id TEXT NOT NULL, digest TEXT NOT NULL, path TEXT NOT NULL,
  size INTEGER NOT NULL, num_tokens INTEGER NOT NULL, train_loss REAL, base_eval_loss REAL,
  train_seconds REAL, accepted_at REAL NOT NULL, norm REAL,
  PRIMARY KEY (round, silo_id));
"""
#: The same tables once signatures were journaled, before transfer ids and base versions were.
SIGNATURE_RELEASE_SCHEMA = FIRST_RELEASE_SCHEMA.replace(
    "norm REAL,", "norm REAL, signature BLOB NOT NULL DEFAULT x'',"
)


def _row(round_: int, silo: str, signature: bytes = b"", transfer_id: str = "") -> UpdateRow:
    update = UpdateRecord(
        round=round_,
        transfer_id=transfer_id or f"{silo}-r{round_}-{DIGEST[:16]}",
        base_version=round_,
        digest=DIGEST,
        size=10,
        num_tokens=100,
        train_loss=2.0,
        base_eval_loss=None,
        train_seconds=1.5,
        signature=signature,
    )
    return UpdateRow(
        silo_id=silo, update=update, path=f"/spool/{silo}", accepted_at=123.0, norm=0.5
    )


def test_updates_round_trip_with_their_record(tmp_path: Path) -> None:
    store = Store(tmp_path / "j.sqlite")
    assert store.add_update(_row(0, "silo-0", b"\x30\x45sig", transfer_id="t-0"))
    assert not store.add_update(_row(0, "silo-0", b"other")), "one update per (round, silo)"
    store.close()
    again = Store(tmp_path / "j.sqlite")
    assert again.all_updates() == [_row(0, "silo-0", b"\x30\x45sig", transfer_id="t-0")]
    assert again.accepted("silo-0", "t-0")
    assert not again.accepted("silo-1", "t-0"), "another silo's transfer of the same name"
    assert not again.accepted("silo-0", "t-1")


def _old_journal(path: Path, schema: str, row: tuple[object, ...]) -> None:
    db = sqlite3.connect(path)
    db.executescript(schema)
    db.execute("INSERT INTO rounds VALUES (0, 0, '[\"silo-0\"]', 1.0, 2.0, NULL, NULL)")
    db.execute(f"INSERT INTO updates VALUES ({', '.join('?' * len(row))})", row)
    db.commit()
    db.close()


@pytest.mark.parametrize(
    ("schema", "signature"),
    [(FIRST_RELEASE_SCHEMA, None), (SIGNATURE_RELEASE_SCHEMA, b"sig")],
    ids=["first-release", "with-signatures"],
)
def test_an_old_journal_opens_and_its_rows_read_back_as_records(
    tmp_path: Path, schema: str, signature: bytes | None
) -> None:
    path = tmp_path / "old.sqlite"
    row = (0, "silo-0", DIGEST, "/spool/silo-0", 10, 100, 2.0, None, 1.5, 123.0, 0.5)
    _old_journal(path, schema, row if signature is None else (*row, signature))
    store = Store(path)
    # The row gets the transfer id the silo gave it and the base version of its round.
    assert store.all_updates() == [_row(0, "silo-0", signature or b"")]
    assert store.accepted("silo-0", f"silo-0-r0-{DIGEST[:16]}")
    assert store.add_update(_row(1, "silo-0", b"sig", transfer_id="next"))
    assert store.updates(1) == [_row(1, "silo-0", b"sig", transfer_id="next")]
    store.close()
    assert Store(path).all_updates()[0] == _row(0, "silo-0", signature or b""), "migrated once"
