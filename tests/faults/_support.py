"""Shared pieces of the fault-injection tests: processes started with a crash point armed,
silos routed through a link emulator, and the end-state checks every faulted run must pass.

Builds on tests/harness.py (a real federation of processes from the one launcher): a crash
point is armed by setting PHOTON_CRASH_AT in the environment of one process only (the launcher
never passes its own on), so the restarted process runs clean.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aggregator.audit import read_audit
from bandwidth.link import LinkEmulator
from photon.cli.localfed.launcher import Launcher
from photon.faults import ENV as CRASH_ENV
from tests.harness import make_federation

#: The configuration every deterministic faulted run shares with the fault-free reference:
#: 2 silos, 2 rounds of 3 local steps, fp32, and 64 KiB chunks so an upload has many chunks.
SILOS = 2
ROUNDS = 2
LOCAL_STEPS = 3
CHUNK_BYTES = 65536
RUN_TIMEOUT_S = 240.0


def faults_federation(root: Path, **overrides: Any) -> Launcher:
    """The shared configuration; `overrides` go to `make_federation`."""
    kwargs: dict[str, Any] = {"silos": SILOS, "rounds": ROUNDS, "local_steps": LOCAL_STEPS}
    kwargs.update(overrides)
    fed = make_federation(root, **kwargs)
    fed.aggregator.server.chunk_bytes = CHUNK_BYTES
    for cfg in fed.silos.values():
        cfg.transfer.chunk_bytes = CHUNK_BYTES
    fed.write_configs()
    return fed


def start_aggregator(
    fed: Launcher, crash_at: str | None = None, prefix: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """Start the aggregator (exits when done), optionally with a crash point armed."""
    return fed.start_aggregator(env=_crash_env(crash_at), prefix=prefix, timeout_s=60)


def start_silo(
    fed: Launcher, name: str, crash_at: str | None = None, prefix: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    return fed.start_silo(name, env=_crash_env(crash_at), prefix=prefix)


def _crash_env(crash_at: str | None) -> dict[str, str]:
    return {} if crash_at is None else {CRASH_ENV: crash_at}


def start_all(fed: Launcher, crash_aggregator: str | None = None) -> subprocess.Popen[bytes]:
    aggregator = start_aggregator(fed, crash_aggregator)
    for name in fed.silos:
        start_silo(fed, name)
    return aggregator


def wait_killed(fed: Launcher, name: str, proc: subprocess.Popen[bytes], point: str) -> None:
    """Wait until `proc` has SIGKILLed itself at crash point `point`."""
    try:
        code = proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{name} never reached {point}:\n{fed.log(name)}") from None
    assert code == -signal.SIGKILL, f"{name} exited {code}, not by kill -9:\n{fed.log(name)}"
    assert f'"point": "{point}' in fed.log(name), f"{name} died elsewhere:\n{fed.log(name)}"


def accepted_updates(fed: Launcher) -> Counter[tuple[str, int]]:
    entries, broken = read_audit(fed.state_dir / "audit.jsonl")
    assert broken is None, f"audit chain broken at entry {broken}"
    return Counter((e["silo"], e["round"]) for e in entries if e["verdict"] == "accepted")


def assert_completed(
    fed: Launcher,
    codes: Mapping[str, int],
    *,
    rounds: int = ROUNDS,
    contributors: Mapping[int, set[str]] | None = None,
) -> dict[str, Any]:
    """The end state of a run that survived its faults; returns summary.json.

    `contributors` (round -> silos whose update is in it) defaults to every silo every round.
    """
    logs = "\n".join(f"--- {n}\n{fed.log(n)}" for n in codes)
    assert set(codes.values()) == {0}, f"exit codes {codes}\n{logs}"
    summary = fed.summary()
    assert summary.get("version") == rounds and summary["done"] is True, logs
    assert [r["round"] for r in summary["rounds"]] == list(range(rounds))
    if contributors is None:
        contributors = {r: set(fed.silos) for r in range(rounds)}
    expected = Counter({(s, r): 1 for r, silos in contributors.items() for s in silos})
    assert accepted_updates(fed) == expected, "an update was lost or counted twice"
    for row in summary["rounds"]:
        assert set(row["silos"]) == contributors[row["round"]]
    leftovers = sorted(str(p) for p in fed.state_dir.rglob("*.partial"))
    assert not leftovers, f"stray partial files: {leftovers}"
    torn = sorted(str(p) for p in (fed.state_dir / "checkpoints").glob(".*tmp-*"))
    assert not torn, f"stray temporary checkpoint files: {torn}"
    return summary


def events(fed: Launcher, name: str, event: str) -> int:
    """How many times `name`'s log records `event` (the whole log, not its tail)."""
    text = fed.log(name, tail=None)
    return len(re.findall(rf'"event": "{re.escape(event)}"', text))


def event_times(fed: Launcher, name: str, event: str) -> list[datetime]:
    """When `name` logged `event`, in order (UTC, from the JSON log lines)."""
    times = []
    for line in fed.log(name, tail=None).splitlines():
        if f'"event": "{event}"' in line:
            stamp = json.loads(line)["timestamp"].replace("Z", "+00:00")
            times.append(datetime.fromisoformat(stamp))
    return times


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@contextmanager
def linked_silos(fed: Launcher, **link_kwargs: Any) -> Iterator[dict[str, LinkEmulator]]:
    """One LinkEmulator per silo between it and the aggregator's fixed port; each silo's
    config is pointed at its link."""
    links: dict[str, LinkEmulator] = {}
    try:
        for name, cfg in fed.silos.items():
            link = LinkEmulator(upstream=("127.0.0.1", fed.port), **link_kwargs).start()
            links[name] = link
            host, port = link.address
            cfg.silo.aggregator = f"{host}:{port}"
        yield links
    finally:
        for link in links.values():
            link.close()


def run_to_end(fed: Launcher) -> dict[str, int]:
    return fed.wait_all(timeout=RUN_TIMEOUT_S)


def fault_free_run(root: Path, **overrides: Any) -> dict[str, Any]:
    """Run the shared configuration (with `overrides`) with no faults; its checked summary."""
    fed = faults_federation(root, **overrides)
    try:
        start_all(fed)
        codes = run_to_end(fed)
    finally:
        fed.stop_all()
    return assert_completed(fed, codes)
