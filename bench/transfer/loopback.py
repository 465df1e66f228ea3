"""Throughput of our mTLS gRPC Upload/Download against a raw TLS socket, on loopback.

Each server is its own process (as the aggregator is); the client side runs here. Per
repetition the legs run interleaved (raw up, ours up, raw down, ours down, raw up-discard) so
that drift of the machine hits every leg alike; each leg's figure is the median of its runs.
CPU seconds of the server process and of this (client) process are recorded per leg.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from bench.transfer import rawtls
from bench.transfer.env import MB, Child, Plan, mb_s, median, random_file, silo_client, timed
from photon.update import UpdateRecord
from silo_agent.client import AggregatorClient
from silo_agent.transfers import PendingUpdate, UploadOutcome, _download_once, upload


@dataclass(frozen=True, slots=True)
class Servers:
    """The two servers of one run, their ports and the source object both can serve."""

    ours: Child
    ours_port: int
    ours_state: Path
    raw: Child
    raw_port: int
    source: Path
    digest: str


@contextmanager
def servers(work: Path, certs: Path, plan: Plan) -> Iterator[Servers]:
    """Start our stand-in server and the raw TLS server (both offering one random object)."""
    source = work / "object.bin"
    digest = random_file(source, plan.transfer_bytes, seed=1)
    common = ["--certs", str(certs), "--chunk-bytes", str(plan.chunk_bytes)]
    ours_state, raw_state = work / "ours-server", work / "raw-server"
    ours = Child(
        [
            "standin",
            *common,
            "--state",
            str(ours_state),
            "--port-file",
            str(work / "ours.port"),
            "--download",
            str(source),
            "--download-digest",
            digest,
        ],
        work / "ours-server.log",
    )
    raw = Child(
        [
            "rawtls",
            *common,
            "--state",
            str(raw_state),
            "--port-file",
            str(work / "raw.port"),
            "--download",
            str(source),
        ],
        work / "raw-server.log",
    )
    try:
        ours_port = int(ours.wait_file(work / "ours.port", 120))
        raw_port = int(raw.wait_file(work / "raw.port", 120))
        yield Servers(ours, ours_port, ours_state, raw, raw_port, source, digest)
    finally:
        ours.stop()
        raw.stop()


def our_upload(
    client: AggregatorClient,
    path: Path,
    digest: str,
    transfer_id: str,
    round_: int,
    chunk_bytes: int,
    on_chunk: Callable[[int], None] | None = None,
) -> None:
    """One upload through silo_agent.transfers.upload; raises unless it was accepted."""
    pending = PendingUpdate(
        update=UpdateRecord(
            round=round_,
            base_version=0,
            transfer_id=transfer_id,
            digest=digest,
            size=path.stat().st_size,
            num_tokens=1,
            train_loss=0.0,
            base_eval_loss=0.0,
            train_seconds=0.0,
        ),
        path=str(path),
    )
    outcome = upload(client, pending, chunk_bytes=chunk_bytes, on_chunk=on_chunk)
    if outcome is not UploadOutcome.ACCEPTED:
        raise RuntimeError(f"upload {transfer_id} ended {outcome.value}")


def our_download(client: AggregatorClient, dest: Path) -> None:
    """One download as `silo_agent.transfers.download` does it, minus decoding the tensors:
    `_download_once` streams into a PartialFile, which checks CRCs and the SHA-256."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    path, _header = _download_once(client, 1, -1, dest, lambda n: None)
    path.unlink()


@dataclass(slots=True)
class _Leg:
    seconds: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)

    def summary(self, size: int) -> dict[str, Any]:
        gb = size / 1e9
        return {
            "mb_s": mb_s(size, median(self.seconds)),
            "runs_mb_s": [mb_s(size, s) for s in self.seconds],
            "server_cpu_s_per_gb": round(median(self.server_cpu) / gb, 2),
            "client_cpu_s_per_gb": round(median(self.client_cpu) / gb, 2),
        }


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def _run_leg(leg: _Leg, server: Child, fn: Callable[[], object]) -> None:
    srv, me = psutil.Process(server.proc.pid), psutil.Process()
    s0, c0 = _cpu(srv), _cpu(me)
    leg.seconds.append(timed(fn))
    leg.server_cpu.append(_cpu(srv) - s0)
    leg.client_cpu.append(_cpu(me) - c0)


def _repetition(
    legs: dict[str, _Leg],
    srv: Servers,
    client: AggregatorClient,
    certs: Path,
    plan: Plan,
    work: Path,
    rep: int,
) -> None:
    """One run of every leg, interleaved."""
    size, chunk, port = plan.transfer_bytes, plan.chunk_bytes, srv.raw_port
    raw_dest = work / "raw-download.bin"
    tid = f"bench-up-{rep}"
    _run_leg(legs["raw_up"], srv.raw, partial(rawtls.upload, certs, port, srv.source, chunk))
    _run_leg(
        legs["ours_up"],
        srv.ours,
        partial(our_upload, client, srv.source, srv.digest, tid, 1, chunk),
    )
    _run_leg(
        legs["raw_down"], srv.raw, partial(rawtls.download, certs, port, size, raw_dest, chunk)
    )
    raw_dest.unlink()
    _run_leg(legs["ours_down"], srv.ours, partial(our_download, client, work / "our-download"))
    up_discard = partial(rawtls.upload, certs, port, srv.source, chunk, discard=True)
    _run_leg(legs["raw_up_discard"], srv.raw, up_discard)


def measure(work: Path, certs: Path, plan: Plan, srv: Servers) -> dict[str, Any]:
    """Median throughput of each leg and the two ratios ours ÷ raw."""
    size, chunk = plan.transfer_bytes, plan.chunk_bytes
    legs = {k: _Leg() for k in ("ours_up", "raw_up", "ours_down", "raw_down", "raw_up_discard")}
    client = silo_client(certs, "silo-0", f"localhost:{srv.ours_port}", chunk)
    our_dest = work / "our-download"
    cipher = rawtls.upload(certs, srv.raw_port, srv.source, chunk, discard=True)  # warm-up
    our_download(client, our_dest)  # warm-up: connects the channel, fills the page cache
    try:
        for rep in range(plan.repeats):
            _repetition(legs, srv, client, certs, plan, work, rep)
    finally:
        client.close()
        shutil.rmtree(our_dest, ignore_errors=True)
    detail = {name: leg.summary(size) for name, leg in legs.items()}
    return {
        "upload_vs_raw_tls": round(detail["ours_up"]["mb_s"] / detail["raw_up"]["mb_s"], 3),
        "download_vs_raw_tls": round(detail["ours_down"]["mb_s"] / detail["raw_down"]["mb_s"], 3),
        "detail": {
            **detail,
            "object_mb": round(size / MB, 1),
            "chunk_bytes": chunk,
            "repeats": plan.repeats,
            "raw_tls_cipher": cipher,
            "raw_receiver": "writes to a file, fsync every 32 MiB and at the end (as the "
            "spool); raw_up_discard reads and discards",
        },
    }
