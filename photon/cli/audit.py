"""`photon audit`: print (and verify) the aggregator's append-only audit log of updates."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("state_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def audit(state_dir: Path, as_json: bool) -> None:
    """Every update the aggregator received: silo, round, digest, signature, verdict and why.
    Exits 1 when the hash chain is broken (a line was edited or removed).

    \b
    Example:
      photon audit runs/first/aggregator-state
    """
    from aggregator.audit import read_audit

    entries, broken = read_audit(state_dir / "audit.jsonl", head=_anchored_head(state_dir))
    for e in entries:
        if as_json:
            click.echo(json.dumps(e, sort_keys=True))
            continue
        sig = "signed" if e.get("signature") else "unsigned"
        click.echo(
            f"{e.get('time', 0):.3f} round {e.get('round', '?'):>4} "
            f"{e.get('silo', '?'):<16} {str(e.get('digest', ''))[:16]} {sig:<8} "
            f"{e.get('verdict', '?'):<9} {e.get('reason', '')}"
        )
    if broken is not None:
        raise click.ClickException(f"audit chain broken at entry {broken}: the log was altered")
    click.echo(f"{len(entries)} entries; hash chain intact", err=True)


def _anchored_head(state_dir: Path) -> str | None:
    """The head hash the aggregator anchored in its journal (read-only), if any."""
    import sqlite3

    from aggregator.audit import AUDIT_HEAD

    journal = state_dir / "journal.sqlite"
    if not journal.exists():
        return None
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (AUDIT_HEAD,)).fetchone()
    return None if row is None else str(row[0])
