"""A real federation for tests: certificates, small generated data, daemons as processes.

Every process runs `python -m photon ...` exactly as an operator would; tests talk to it only
through its files, its port and signals. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from photon.data import prepare
from photon.pki import init_federation
from photon.tokenizer import ByteTokenizer

WORDS = [
    "federated",
    "training",
    "shares",
    "model",
    "deltas",
    "never",
    "data",
    "silo",
    "aggregator",
    "round",
    "token",
    "weight",
    "gradient",
    "optimizer",
    "checkpoint",
    "stream",
    "chunk",
    "digest",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_corpus(folder: Path, seed: int, docs: int = 30) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(docs):
        text = " ".join(rng.choice(WORDS) for _ in range(300)) + "\n"
        (folder / f"doc{i:03d}.txt").write_text(text)


@dataclass
class Federation:
    root: Path
    silos: list[str]
    port: int
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.root / "aggregator-state"

    def start_aggregator(self, *, exit_when_done: bool = True) -> subprocess.Popen[bytes]:
        args = ["aggregator", "serve", "--config", str(self.root / "aggregator.toml")]
        if exit_when_done:
            args.append("--exit-when-done")
        (self.root / "aggregator.port").unlink(missing_ok=True)
        proc = self._spawn("aggregator", args)
        wait_for(
            lambda: (self.root / "aggregator.port").exists() or proc.poll() is not None,
            60,
            "aggregator to listen",
        )
        assert proc.poll() is None, self.log("aggregator")
        return proc

    def start_silo(self, name: str) -> subprocess.Popen[bytes]:
        return self._spawn(name, ["silo", "run", "--config", str(self.root / f"{name}.toml")])

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "photon", *args, "--log-format", "json"],
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str, tail: int | None = 4000) -> str:
        """The process's log (its last `tail` characters; None for all of it)."""
        path = self.root / f"{name}.log"
        if not path.exists():
            return "(no log)"
        text = path.read_text(errors="replace")
        return text if tail is None else text[-tail:]

    def summary(self) -> dict[str, Any]:
        path = self.state_dir / "summary.json"
        try:
            return dict(json.loads(path.read_bytes()))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def wait_all(self, timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"{name} still running after {timeout}s:\n{self.log(name)}"
                ) from None
        return codes

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def make_federation(
    root: Path,
    *,
    silos: int = 2,
    rounds: int = 2,
    local_steps: int = 3,
    codec: str = "fp32",
    extra_rounds: str = "",
    extra_server: str = "",
    extra_federation: str = "",
    long_poll_s: float = 2,
) -> Federation:
    names = [f"silo-{i}" for i in range(silos)]
    init_federation(root / "certs", silos=names)
    for i, name in enumerate(names):
        write_corpus(root / "text" / name, seed=i)
        prepare(
            root / "text" / name,
            root / "data" / name,
            ByteTokenizer(),
            heldout_fraction=0.2,
            seed=0,
        )
    port = free_port()
    (root / "aggregator.toml").write_text(f"""
[server]
listen = "127.0.0.1:{port}"
port_file = "aggregator.port"
state_dir = "aggregator-state"
certs_dir = "certs"
{extra_server}
[rounds]
min_silos = {silos}
deadline_s = 300
heartbeat_timeout_s = 20
long_poll_s = {long_poll_s}
{extra_rounds}
[federation]
rounds = {rounds}
local_steps = {local_steps}
codec = "{codec}"
eval_batches = 2
{extra_federation}
[federation.training]
batch_size = 4
seq_len = 32
warmup_steps = 2
""")
    for name in names:
        (root / f"{name}.toml").write_text(f"""
[silo]
name = "{name}"
aggregator = "localhost:{port}"
data_dir = "data/{name}"
state_dir = "state/{name}"
certs_dir = "certs"
threads = 1
[retry]
initial_s = 0.2
max_s = 1.0
give_up_after_s = 120
""")
    return Federation(root=root, silos=names, port=port)
