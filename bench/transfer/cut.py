"""Bytes sent twice when an upload's connection is cut half-way and the real client resumes.

The client talks to our stand-in server through `bandwidth.link.LinkEmulator` (unshaped), which
resets the connection once half the object has gone up. `silo_agent.transfers.upload` then
retries as in production: UploadStatus, then a new stream from the committed offset.

    server-received re-sends = Σ bytes the servicer took in over all streams − object size
                               (the brief's `resent_bytes_after_cut`)
    client re-sends          = Σ bytes the client handed to gRPC − object size (adds what was
                               in flight in socket buffers when the link was cut)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bandwidth.link import LinkEmulator
from bench.transfer.env import Plan, median, random_file, silo_client, wait_for
from bench.transfer.loopback import Servers, our_upload
from bench.transfer.standin import TRAFFIC_FILE, read_traffic

CUT_ROUND = 7000
"""Rounds from here on tag the cut runs in the server's traffic log."""


class ChunkCounter:
    """`on_chunk` hook of `upload`: counts the bytes the client hands to gRPC."""

    def __init__(self) -> None:
        self.total = 0

    def __call__(self, n: int) -> None:
        self.total += n


def _one_cut(
    certs: Path, srv: Servers, path: Path, digest: str, plan: Plan, run: int
) -> dict[str, int]:
    size = path.stat().st_size
    round_ = CUT_ROUND + run
    counter = ChunkCounter()
    with LinkEmulator(upstream=("127.0.0.1", srv.ours_port)) as link:
        client = silo_client(certs, "silo-1", f"localhost:{link.address[1]}", plan.chunk_bytes)
        try:
            link.cut_after(size // 2, direction="up")
            our_upload(client, path, digest, f"cut-{run}", round_, plan.chunk_bytes, counter)
        finally:
            client.close()
        wire_up = link.bytes_up
    traffic = srv.ours_state / TRAFFIC_FILE
    wait_for(lambda: len(read_traffic(traffic, round_)) >= 2, 30, "the cut stream's tally")
    streams = read_traffic(traffic, round_)
    return {
        "server_received": sum(streams),
        "resent_server": sum(streams) - size,
        "resent_client": counter.total - size,
        "streams": len(streams),
        "wire_bytes_up": wire_up,
    }


def measure(work: Path, certs: Path, plan: Plan, srv: Servers) -> dict[str, Any]:
    path = work / "cut.bin"
    digest = random_file(path, plan.cut_bytes, seed=2)
    runs = [_one_cut(certs, srv, path, digest, plan, run) for run in range(plan.repeats)]
    path.unlink()
    return {
        "resent_bytes_after_cut": int(median([r["resent_server"] for r in runs])),
        "chunk_bytes": plan.chunk_bytes,
        "cut_detail": {
            "object_bytes": plan.cut_bytes,
            "cut_after_bytes": plan.cut_bytes // 2,
            "runs": runs,
            "client_resent_median": int(median([r["resent_client"] for r in runs])),
        },
    }
