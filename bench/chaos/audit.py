"""Did every update count exactly once? The audit log held against the journal's rounds.

For every closed round, each silo the round selected should have exactly one "accepted" line in
the audit log (the benchmark runs with quorum 1.0, so no round may close without one): a
selected silo without one is a lost update, and a second line for the same (silo, round), or a
line for a silo the round did not select, is a double count.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aggregator.audit import read_audit
from aggregator.store import Store


@dataclass(slots=True)
class Accounting:
    updates_expected: int = 0
    updates_lost: int = 0
    updates_double_counted: int = 0
    audit_chain_intact: bool = True
    lost: list[tuple[str, int]] = field(default_factory=list)
    doubled: list[tuple[str, int]] = field(default_factory=list)

    def record(self) -> dict[str, object]:
        return {
            "updates_expected": self.updates_expected,
            "updates_lost": self.updates_lost,
            "updates_double_counted": self.updates_double_counted,
            "audit_chain_intact": self.audit_chain_intact,
            "lost": [list(x) for x in self.lost],
            "doubled": [list(x) for x in self.doubled],
        }


def account(state_dir: Path) -> Accounting:
    """Compare the audit log's accepted lines with the closed rounds' selections."""
    entries, broken = read_audit(state_dir / "audit.jsonl")
    accepted = Counter(
        (str(e["silo"]), int(e["round"])) for e in entries if e.get("verdict") == "accepted"
    )
    store = Store(state_dir / "journal.sqlite")
    try:
        selected = {
            (silo, r.round)
            for r in store.rounds()
            if r.closed_at is not None
            for silo in r.selected
        }
        closed = {r.round for r in store.rounds() if r.closed_at is not None}
    finally:
        store.close()
    result = Accounting(updates_expected=len(selected), audit_chain_intact=broken is None)
    result.lost = sorted(k for k in selected if accepted[k] == 0)
    result.doubled = sorted(
        k for k, n in accepted.items() if k[1] in closed and (n > 1 or k not in selected)
    )
    result.updates_lost = len(result.lost)
    result.updates_double_counted = sum(
        accepted[k] - 1 if k in selected else accepted[k] for k in result.doubled
    )
    return result
