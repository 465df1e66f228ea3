"""The audit log's hash chain: editing, deleting, swapping, inserting or flipping a byte of any
line that has a successor breaks the chain there; a cut tail is caught by the anchored head."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import assume, given
from hypothesis import strategies as st

from aggregator.audit import GENESIS, AuditLog, read_audit
from tests.fuzz._support import cases


@dataclass(frozen=True)
class Tamper:
    lines: int
    kind: str  # edit | delete | swap | insert | flip
    at: int  # a line that has a successor
    other: int
    field: str
    byte: int


TAMPERING = st.builds(
    Tamper,
    lines=st.integers(2, 8),
    kind=st.sampled_from(["edit", "delete", "swap", "insert", "flip"]),
    at=st.integers(0, 100),
    other=st.integers(0, 100),
    field=st.sampled_from(["silo", "round", "digest", "verdict", "reason", "signature", "time"]),
    byte=st.integers(0, 10_000),
)


def _forged(line: str, field: str) -> str:
    entry = json.loads(line)
    value = entry[field]
    entry[field] = value + 1 if isinstance(value, int | float) else f"{value}x"
    return json.dumps(entry, sort_keys=True)


def _tamper(t: Tamper) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        log = AuditLog(path)
        for i in range(t.lines):
            verdict = "accepted" if i % 2 else "rejected"
            log.record(
                silo=f"silo-{i % 3}", round=i, digest=f"{i:064x}", signature=b"s", verdict=verdict
            )
        lines = path.read_text().splitlines()
        i = t.at % (t.lines - 1)  # never the last: see test_a_cut_audit_tail_...
        if t.kind == "edit":
            lines[i] = _forged(lines[i], t.field)
        elif t.kind == "delete":
            del lines[i]
        elif t.kind == "swap":
            j = (i + 1 + t.other % (t.lines - 1)) % t.lines
            lines[i], lines[j] = lines[j], lines[i]
        elif t.kind == "insert":  # a forged entry chained correctly to its predecessor
            prev = hashlib.sha256(lines[i - 1].encode()).hexdigest() if i else GENESIS
            lines.insert(
                i,
                json.dumps(dict(json.loads(_forged(lines[i], t.field)), prev=prev), sort_keys=True),
            )
        else:
            raw = bytearray(lines[i].encode())
            raw[t.byte % len(raw)] ^= 0x01
            lines[i] = raw.decode(errors="replace")
        assume(lines != path.read_text().splitlines())
        path.write_text("\n".join(lines) + "\n")
        _, broken = read_audit(path)
        assert broken is not None and broken <= i + 1, f"{t.kind} at line {i} went unnoticed"


@cases(25, long=500)
@given(t=TAMPERING)
def test_editing_any_audit_line_but_the_last_breaks_the_chain(t: Tamper) -> None:
    _tamper(t)


def test_a_cut_audit_tail_is_detected_against_the_anchored_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    heads: list[str] = []
    log = AuditLog(path, anchor=heads.append)
    for i in range(3):
        log.record(silo="silo-0", round=i, digest=f"{i:064x}", signature=b"", verdict="accepted")
    assert read_audit(path, head=heads[-1])[1] is None
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    assert read_audit(path, head=heads[-1])[1] == 2
