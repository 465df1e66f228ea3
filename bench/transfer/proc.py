"""Entry point of the benchmark's helper processes: `python -m bench.transfer.proc CMD ...`.

    standin   our gRPC server (FederationServicer + stand-in handler) over mTLS
    rawtls    the raw TLS baseline server
    upload    one upload with the real silo client; writes {"seconds", "outcome"} as JSON

Servers run until SIGTERM. Started by bench/transfer.py, also inside network namespaces.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path

from aggregator.globalmodel import Published
from photon import logs
from photon.fsutil import atomic_write_bytes
from photon.update import UpdateRecord
from photon.wire import DEFAULT_CHUNK_BYTES
from silo_agent.transfers import PendingUpdate, upload


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: stop.set())
    return stop


def _standin(a: argparse.Namespace) -> None:
    from bench.transfer.standin import serve

    pub = None
    if a.download:
        path = Path(a.download)
        pub = Published(path, a.download_digest, path.stat().st_size, 1, -1)
    serve(
        certs=Path(a.certs),
        state_dir=Path(a.state),
        listen_host=a.listen,
        port_file=Path(a.port_file),
        chunk_bytes=a.chunk_bytes,
        download=pub,
        stop=_stop_event(),
    )


def _rawtls(a: argparse.Namespace) -> None:
    from bench.transfer.rawtls import serve

    serve(
        certs=Path(a.certs),
        listen_host=a.listen,
        port_file=Path(a.port_file),
        out_dir=Path(a.state),
        source=Path(a.download) if a.download else None,
        chunk_bytes=a.chunk_bytes,
        stop=_stop_event(),
    )


def _upload(a: argparse.Namespace) -> None:
    from bench.transfer.env import silo_client

    path = Path(a.file)
    pending = PendingUpdate(
        update=UpdateRecord(
            round=1,
            base_version=0,
            transfer_id=f"netns-{int(time.time())}",
            digest=a.digest,
            size=path.stat().st_size,
            num_tokens=1,
            train_loss=0.0,
            base_eval_loss=0.0,
            train_seconds=0.0,
        ),
        path=str(path),
    )
    client = silo_client(Path(a.certs), "silo-0", a.target, a.chunk_bytes)
    try:
        started = time.perf_counter()
        outcome = upload(client, pending, chunk_bytes=a.chunk_bytes)
        seconds = time.perf_counter() - started
    finally:
        client.close()
    result = {"seconds": seconds, "outcome": outcome.value, "bytes": pending.update.size}
    atomic_write_bytes(Path(a.result), json.dumps(result).encode())


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.transfer.proc")
    p.add_argument("cmd", choices=("standin", "rawtls", "upload"))
    p.add_argument("--certs", required=True)
    p.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES)
    p.add_argument("--state", help="server state/spool folder")
    p.add_argument("--listen", default="127.0.0.1")
    p.add_argument("--port-file")
    p.add_argument("--download", help="file the server offers for download")
    p.add_argument("--download-digest", default="")
    p.add_argument("--target", help="upload: host:port of the server")
    p.add_argument("--file", help="upload: the object to send")
    p.add_argument("--digest", help="upload: its SHA-256")
    p.add_argument("--result", help="upload: where to write the result JSON")
    a = p.parse_args()
    logs.configure("json", "warning")
    {"standin": _standin, "rawtls": _rawtls, "upload": _upload}[a.cmd](a)


if __name__ == "__main__":
    main()
