"""Our real gRPC server (`FederationServicer` over mTLS) around a minimal `FederationHandler`.

The stand-in serves exactly what the transfer RPCs (Upload, UploadStatus, Download, Heartbeat)
need: `begin_upload` returns a real `UploadRegistry(...).open(...)` session (so every byte is
CRC-checked, hashed, written to the spool `.partial`, fsynced every 32 MiB and the SHA-256
verified at `finalize`), `complete_upload` deletes the verified file and says True, `download`
serves one file, and `record_traffic` appends each stream's byte count to `traffic.jsonl` so the
benchmark can count bytes the server received. Membership and rounds are not part of the
benchmark: Join, GetTask, ReportEval and Leave are refused. The server gets the daemon's auth
interceptor and default `Limits` (transfer slots, request rate, idle watchdog), and no metrics.
"""

from __future__ import annotations

import json
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from aggregator.auth import FederationAuth
from aggregator.config import RoundsConfig, ServerConfig
from aggregator.globalmodel import Published
from aggregator.handler import Admission, Direction, TaskDecision, UploadState
from aggregator.limits import Limits
from aggregator.servicer import FederationServicer
from aggregator.uploads import UploadRegistry, UploadSession
from photon.errors import NotAuthorized
from photon.fsutil import atomic_write_bytes
from photon.tls import TLSFiles, server_credentials
from photon.update import UpdateRecord
from photon.v1 import federation_pb2_grpc as pb_grpc
from photon.wire import grpc_options

TRAFFIC_FILE = "traffic.jsonl"


class TrafficLog:
    """One JSON line per finished stream (round, silo, direction, bytes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def add(self, round_: int, silo: str, direction: str, n_bytes: int) -> None:
        line = json.dumps({"round": round_, "silo": silo, "dir": direction, "bytes": n_bytes})
        with self._lock, self.path.open("a") as fh:
            fh.write(line + "\n")


def read_traffic(path: Path, round_: int, direction: str = "up") -> list[int]:
    """Bytes of each stream the server logged for `round_` in `direction`."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [int(r["bytes"]) for r in rows if r["round"] == round_ and r["dir"] == direction]


class StandInHandler:
    """A `FederationHandler` for transfers only: version 1, downloadable as one file."""

    version = 1

    def __init__(self, state_dir: Path, published: Published | None) -> None:
        self.traffic = TrafficLog(state_dir / TRAFFIC_FILE)
        self.uploads = UploadRegistry(state_dir / "spool")
        self.published = published

    def join(
        self, silo: str, num_train_tokens: int, tokenizer_digest: str, agent_version: str = ""
    ) -> Admission:
        raise _not_benchmarked("Join")

    def heartbeat(self, silo: str) -> int:
        return self.version

    def get_task(self, silo: str, wait_s: float) -> TaskDecision:
        raise _not_benchmarked("GetTask")

    def download(self, version: int, have_version: int) -> Published | None:
        pub = self.published
        return pub if pub is not None and version == pub.version else None

    def begin_upload(self, silo: str, update: UpdateRecord, offset: int) -> UploadSession:
        return self.uploads.open(silo, update, offset)

    def complete_upload(
        self, silo: str, update: UpdateRecord, path: Path, peer_cert: bytes | None = None
    ) -> bool:
        self.uploads.discard(update.transfer_id, path)  # verified; the disk is not a bench
        return True

    def upload_status(self, silo: str, transfer_id: str) -> UploadState:
        committed, complete = self.uploads.committed(silo, transfer_id)
        return UploadState(committed, complete, accepted=False)  # nothing is journaled

    def record_traffic(self, round_: int, silo: str, direction: Direction, n_bytes: int) -> None:
        self.traffic.add(round_, silo, direction, n_bytes)

    def report_eval(self, silo: str, version: int, loss: float, tokens: int) -> None:
        raise _not_benchmarked("ReportEval")

    def leave(self, silo: str, reason: str) -> None:
        raise _not_benchmarked("Leave")

    def status(self) -> dict[str, Any]:
        return {"stand_in": True}


def _not_benchmarked(method: str) -> NotAuthorized:
    return NotAuthorized(f"the transfer benchmark's stand-in serves transfers only, not {method}")


def serve(
    *,
    certs: Path,
    state_dir: Path,
    listen_host: str,
    port_file: Path,
    chunk_bytes: int,
    download: Published | None,
    stop: threading.Event,
) -> None:
    """Serve the stand-in over mTLS until `stop` is set; the bound port goes to `port_file`."""
    state_dir.mkdir(parents=True, exist_ok=True)
    defaults = ServerConfig(certs_dir=certs)  # the daemon's default limits, as in production
    limits = Limits.from_config(
        per_silo=defaults.max_transfers_per_silo,
        total=defaults.max_transfers_total,
        requests_per_s=defaults.max_requests_per_s,
        idle_s=defaults.stream_idle_timeout_s,
        calls_per_silo=defaults.max_concurrent_per_silo,
        long_polls=RoundsConfig().max_long_polls,
        min_bytes_per_s=defaults.min_stream_bytes_per_s,
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        options=grpc_options(chunk_bytes),
        interceptors=[FederationAuth(insecure=False, limits=limits)],
    )
    servicer = FederationServicer(
        StandInHandler(state_dir, download),
        chunk_bytes=chunk_bytes,
        long_poll_s=1.0,
        limits=limits,
    )
    pb_grpc.add_FederationServicer_to_server(servicer, server)
    creds = server_credentials(TLSFiles.for_aggregator(certs))
    port = server.add_secure_port(f"{listen_host}:0", creds)
    server.start()
    atomic_write_bytes(port_file, str(port).encode())
    try:
        stop.wait()
    finally:
        server.stop(2.0).wait(5.0)
