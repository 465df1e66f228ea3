"""What every part of the transfer benchmark shares: sizes, certificates, files, child processes.

Child processes run `python -m bench.transfer.proc ...` from the repository root, each with its
own log file; every wait on them is bounded and `Child.stop` always ends them.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from bandwidth.chunking import sha256_file
from photon.fsutil import atomic_open
from photon.pki import DEFAULT_HOSTS, init_federation
from photon.retry import RetryPolicy
from silo_agent.client import AggregatorClient
from silo_agent.config import SiloConfig, SiloSection, TransferSection

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
MB = 1_000_000
NETNS_SERVER_IP = "10.213.77.1"
NETNS_CLIENT_IP = "10.213.77.2"
SILOS = tuple(f"silo-{i}" for i in range(8))


@dataclass(kw_only=True, slots=True)
class Plan:
    """Sizes and repetitions of one run: `--quick` (minutes on 2 cores) or full."""

    quick: bool
    """True for the quick run; every number it reports says so in the JSON (`mode`)."""
    transfer_bytes: int
    """Object size moved by each upload/download leg (quick 256 MiB, full 1 GiB)."""
    repeats: int = 3
    """Runs per leg; the reported figure is the median."""
    chunk_bytes: int = 2 * MiB
    """Chunk size of our path and send size of the raw TLS path."""
    cut_bytes: int
    """Object size of the cut-and-resume measurement."""
    train_steps: int
    """Local training steps that make the real delta of the codec measurement."""
    rss_preset: str
    """Model preset of the aggregator-RSS measurement (its fp32 size is the denominator)."""
    rss_distinct_deltas: bool
    """Eight different synthetic deltas (full), or one shared by the silos (quick: encoding
    a 125m fp32 delta takes ~10 s on 2 cores). Each silo signs its upload either way."""
    netns_bytes: int = 30 * MB
    """Object uploaded across the shaped veth link."""
    netns_rate_mbit: int = 50
    """tbf rate of the shaped link."""

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.transfer_bytes < self.chunk_bytes:
            raise ValueError("plan: need repeats >= 1 and transfer_bytes >= chunk_bytes")

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(
                quick=True,
                transfer_bytes=256 * MiB,
                cut_bytes=64 * MiB,
                train_steps=8,
                rss_preset="125m",
                rss_distinct_deltas=False,
            )
        return cls(
            quick=False,
            transfer_bytes=1024 * MiB,
            cut_bytes=256 * MiB,
            train_steps=20,
            rss_preset="125m",
            rss_distinct_deltas=True,
        )


def make_certs(root: Path) -> Path:
    """A federation CA, the aggregator's certificate (also valid for the netns address) and
    eight silo certificates; returns the folder."""
    certs = root / "certs"
    init_federation(certs, silos=list(SILOS), hosts=(*DEFAULT_HOSTS, NETNS_SERVER_IP))
    return certs


def silo_client(certs: Path, name: str, target: str, chunk_bytes: int) -> AggregatorClient:
    """A real silo client (mTLS with silo `name`'s certificate) with a fast retry policy."""
    cfg = SiloConfig(
        silo=SiloSection(name=name, aggregator=target, data_dir=Path("unused"), certs_dir=certs),
        retry=RetryPolicy(initial_s=0.2, max_s=1.0, give_up_after_s=120.0),
        transfer=TransferSection(chunk_bytes=chunk_bytes, rpc_timeout_s=60.0),
    )
    return AggregatorClient(cfg)


def random_file(path: Path, size: int, seed: int) -> str:
    """Write `size` incompressible bytes durably; return their SHA-256."""
    rng = np.random.default_rng(seed)
    piece = 64 * MiB
    with atomic_open(path) as fh:
        left = size
        while left:
            n = min(piece, left)
            fh.write(rng.bytes(n))
            left -= n
    return sha256_file(path)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def mb_s(n_bytes: int, seconds: float) -> float:
    """Throughput in MB/s (10^6 bytes per second)."""
    return round(n_bytes / MB / seconds, 1) if seconds > 0 else 0.0


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


class Child:
    """A process `[*prefix] python -m MODULE ARGS` run from the repository root, ended by
    `stop()`; `module` defaults to the benchmark's helper entry point."""

    def __init__(
        self,
        args: Sequence[str],
        log: Path,
        *,
        module: str = "bench.transfer.proc",
        prefix: Sequence[str] = (),
    ) -> None:
        self.log = log
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", module, *args],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def wait_file(self, path: Path, timeout: float) -> str:
        """The contents of `path` once the child wrote it (it dies: its log is raised)."""
        wait_for(lambda: path.exists() or self.proc.poll() is not None, timeout, str(path))
        if not path.exists():
            raise RuntimeError(f"helper exited with {self.proc.returncode}:\n{self.tail()}")
        return path.read_text()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=timeout)

    def __enter__(self) -> Child:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
