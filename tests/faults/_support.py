"""Shared pieces of the fault-injection tests: processes started with a crash point armed,
silos routed through a link emulator, and the end-state checks every faulted run must pass.

Builds on tests/harness.py (a real federation of processes) without changing it: a crash point
is armed by setting PHOTON_CRASH_AT in the environment of one process only, so the restarted
process runs clean.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aggregator.audit import read_audit
from bandwidth.link import LinkEmulator
from photon.faults import ENV as CRASH_ENV
from tests.harness import Federation, make_federation, wait_for

#: The configuration every deterministic faulted run shares with the fault-free reference:
#: 2 silos, 2 rounds of 3 local steps, fp32, and 64 KiB chunks so an upload has many chunks.
SILOS = 2
ROUNDS = 2
LOCAL_STEPS = 3
CHUNK_BYTES = 65536
RUN_TIMEOUT_S = 240.0


def faults_federation(root: Path, **overrides: Any) -> Federation:
    """The shared configuration; `overrides` go to `make_federation`."""
    kwargs: dict[str, Any] = {
        "silos": SILOS,
        "rounds": ROUNDS,
        "local_steps": LOCAL_STEPS,
        "extra_server": f"chunk_bytes = {CHUNK_BYTES}",
    }
    kwargs.update(overrides)
    fed = make_federation(root, **kwargs)
    for name in fed.silos:
        with (root / f"{name}.toml").open("a") as fh:
            fh.write(f"[transfer]\nchunk_bytes = {CHUNK_BYTES}\n")
    return fed


def spawn(
    fed: Federation,
    name: str,
    args: list[str],
    env: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Like Federation._spawn, with extra environment variables for this process only and
    an optional command prefix (e.g. `ip netns exec NS`)."""
    log = (fed.root / f"{name}.log").open("ab")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    full_env.pop(CRASH_ENV, None)
    full_env.update(env or {})
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "photon", *args, "--log-format", "json"],
        cwd=fed.root,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=full_env,
    )
    log.close()
    fed.procs[name] = proc
    return proc


def start_aggregator(
    fed: Federation, crash_at: str | None = None, prefix: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """Start the aggregator (exits when done), optionally with a crash point armed."""
    args = ["aggregator", "serve", "--config", str(fed.root / "aggregator.toml")]
    (fed.root / "aggregator.port").unlink(missing_ok=True)
    proc = spawn(fed, "aggregator", [*args, "--exit-when-done"], _crash_env(crash_at), prefix)
    wait_for(
        lambda: (fed.root / "aggregator.port").exists() or proc.poll() is not None,
        60,
        "aggregator to listen",
    )
    assert proc.poll() is None, fed.log("aggregator")
    return proc


def start_silo(
    fed: Federation, name: str, crash_at: str | None = None, prefix: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    args = ["silo", "run", "--config", str(fed.root / f"{name}.toml")]
    return spawn(fed, name, args, _crash_env(crash_at), prefix)


def _crash_env(crash_at: str | None) -> dict[str, str]:
    return {} if crash_at is None else {CRASH_ENV: crash_at}


def start_all(fed: Federation, crash_aggregator: str | None = None) -> subprocess.Popen[bytes]:
    aggregator = start_aggregator(fed, crash_aggregator)
    for name in fed.silos:
        start_silo(fed, name)
    return aggregator


def wait_killed(fed: Federation, name: str, proc: subprocess.Popen[bytes], point: str) -> None:
    """Wait until `proc` has SIGKILLed itself at crash point `point`."""
    try:
        code = proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{name} never reached {point}:\n{fed.log(name)}") from None
    assert code == -signal.SIGKILL, f"{name} exited {code}, not by kill -9:\n{fed.log(name)}"
    assert f'"point": "{point}' in fed.log(name), f"{name} died elsewhere:\n{fed.log(name)}"


def accepted_updates(fed: Federation) -> Counter[tuple[str, int]]:
    entries, broken = read_audit(fed.state_dir / "audit.jsonl")
    assert broken is None, f"audit chain broken at entry {broken}"
    return Counter((e["silo"], e["round"]) for e in entries if e["verdict"] == "accepted")


def assert_completed(
    fed: Federation,
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


def events(fed: Federation, name: str, event: str) -> int:
    """How many times `name`'s log records `event` (the whole log, not its tail)."""
    text = (fed.root / f"{name}.log").read_text(errors="replace")
    return len(re.findall(rf'"event": "{re.escape(event)}"', text))


def event_times(fed: Federation, name: str, event: str) -> list[datetime]:
    """When `name` logged `event`, in order (UTC, from the JSON log lines)."""
    times = []
    for line in (fed.root / f"{name}.log").read_text(errors="replace").splitlines():
        if f'"event": "{event}"' in line:
            stamp = json.loads(line)["timestamp"].replace("Z", "+00:00")
            times.append(datetime.fromisoformat(stamp))
    return times


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@contextmanager
def linked_silos(fed: Federation, **link_kwargs: Any) -> Iterator[dict[str, LinkEmulator]]:
    """One LinkEmulator per silo between it and the aggregator's fixed port; each silo's
    config is pointed at its link."""
    links: dict[str, LinkEmulator] = {}
    try:
        for name in fed.silos:
            link = LinkEmulator(upstream=("127.0.0.1", fed.port), **link_kwargs).start()
            links[name] = link
            config = fed.root / f"{name}.toml"
            host, port = link.address
            text = config.read_text().replace(
                f'aggregator = "localhost:{fed.port}"', f'aggregator = "{host}:{port}"'
            )
            config.write_text(text)
        yield links
    finally:
        for link in links.values():
            link.close()


def run_to_end(fed: Federation) -> dict[str, int]:
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
