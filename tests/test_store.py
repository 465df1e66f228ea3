"""The journal keeps what a restart needs, and opens journals written by older versions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from aggregator.store import SCHEMA, Store, UpdateRow


def _row(round_: int, silo: str, signature: bytes = b"") -> UpdateRow:
    return UpdateRow(
        round=round_,
        silo_id=silo,
        digest="ab" * 32,
        path=f"/spool/{silo}",
        size=10,
        num_tokens=100,
        train_loss=2.0,
        base_eval_loss=None,
        train_seconds=1.5,
        accepted_at=123.0,
        norm=0.5,
        signature=signature,
    )


def test_updates_round_trip_with_their_signature(tmp_path: Path) -> None:
    store = Store(tmp_path / "j.sqlite")
    assert store.add_update(_row(0, "silo-0", b"\x30\x45sig"))
    assert not store.add_update(_row(0, "silo-0", b"other")), "one update per (round, silo)"
    store.close()
    again = Store(tmp_path / "j.sqlite")
    assert again.all_updates() == [_row(0, "silo-0", b"\x30\x45sig")]


def test_a_journal_from_before_signatures_opens_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old_schema = SCHEMA.replace(", signature BLOB NOT NULL DEFAULT x''", "")
    assert old_schema != SCHEMA
    db = sqlite3.connect(path)
    db.executescript(old_schema)
    db.execute(
        "INSERT INTO updates VALUES (0, 'silo-0', ?, '/spool/silo-0', 10, 100, 2.0, NULL, 1.5, "
        "123.0, 0.5)",
        ("ab" * 32,),
    )
    db.commit()
    db.close()
    store = Store(path)
    assert store.all_updates() == [_row(0, "silo-0")]
    assert store.add_update(_row(1, "silo-0", b"sig"))
    assert store.updates(1) == [_row(1, "silo-0", b"sig")]
