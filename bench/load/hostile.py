"""The hostile member of the load benchmark: a legitimate certificate, every attack at once.

Each attack is one thread, bounded in count and in time (it stops when the benchmark says so):
plain TCP connections that never start TLS, Upload streams that never send a header, a flood
of GetTask long-polls inside the per-silo rate limit, and — whenever the aggregator selects
this member — abandoned uploads under fresh transfer ids, a stream that trickles one byte at a
time, an update claiming 2^62 tokens and one whose values overflow fp32 sums. Run as
`python -m bench.load.hostile --certs DIR --name N --target HOST:PORT --object F
--overflow-object F --seconds S --out F`.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import resource
import signal
import socket
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from photon.signing import sign_digest
from photon.tls import TLSFiles, channel_credentials
from photon.v1 import federation_pb2 as pb
from photon.v1 import federation_pb2_grpc as pb_grpc

TCP_CONNECTIONS = 1100
HEADERLESS_STREAMS = 40
LONG_POLLS_PER_S = 6.0
ABANDONED_UPLOADS = 1000
POISON_TRIES = 40


@dataclass(slots=True)
class Tally:
    """Outcomes per attack: how many tries and what came back."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, attack: str, outcome: str) -> None:
        with self.lock:
            row = self.counts.setdefault(attack, {})
            row[outcome] = row.get(outcome, 0) + 1


class Hostile:
    def __init__(self, args: argparse.Namespace, stop: threading.Event) -> None:
        self.args, self.stop, self.tally = args, stop, Tally()
        self.name = args.name
        self.key = Path(args.certs) / "silos" / f"{args.name}.key"
        creds = channel_credentials(TLSFiles.for_silo(Path(args.certs), args.name))
        self.channel = grpc.secure_channel(args.target, creds)
        self.stub = pb_grpc.FederationStub(self.channel)
        self.blob = Path(args.object).read_bytes()
        self.overflow = Path(args.overflow_object).read_bytes()
        self.selected: set[int] = set()

    # -- attacks that need no selection ------------------------------------------------------
    def tcp_flood(self) -> None:
        host, port = self.args.target.rsplit(":", 1)
        socks: list[socket.socket] = []
        for _ in range(TCP_CONNECTIONS):
            if self.stop.is_set():
                break
            try:
                socks.append(socket.create_connection((host, int(port)), timeout=2))
                self.tally.add("tcp_flood", "open")
            except OSError as exc:
                self.tally.add("tcp_flood", type(exc).__name__)
        self.stop.wait()
        for s in socks:
            s.close()

    def headerless_streams(self) -> None:
        def never() -> Iterator[pb.UploadChunk]:
            self.stop.wait()
            return
            yield  # a generator that sends nothing until the attack ends

        calls = [self.stub.Upload.future(never()) for _ in range(HEADERLESS_STREAMS)]
        self.stop.wait()
        for call in calls:
            call.cancel()
            self.tally.add("headerless_streams", _code_of(call))

    def long_poll_flood(self) -> None:
        """GetTask long-polls at a steady rate inside the rate limit; notes selections."""
        inflight: list[Any] = []
        while not self.stop.wait(1.0 / LONG_POLLS_PER_S):
            inflight = [c for c in inflight if not self._settle(c)]
            if len(inflight) < 256:
                inflight.append(self.stub.GetTask.future(pb.GetTaskRequest(), timeout=30))
        for call in inflight:
            call.cancel()

    def _settle(self, call: Any) -> bool:
        if not call.done():
            return False
        code = _code_of(call)
        self.tally.add("long_poll_flood", code)
        if code == "OK":
            task = call.result()
            if task.kind == pb.Task.TRAIN and task.round not in self.selected:
                self.selected.add(task.round)
                threading.Thread(target=self.when_selected, args=(task,), daemon=True).start()
        return True

    # -- attacks for a round this member was selected for --------------------------------------
    def when_selected(self, task: Any) -> None:
        """Every attack that needs a selection, at once."""
        attacks: list[tuple[Callable[..., None], tuple[Any, ...]]] = [
            (self.poison, ("poison_weight", task, self.blob, 2**62 - 1)),
            (self.poison, ("poison_overflow", task, self.overflow, 100)),
            (self.trickle, (task,)),
            (self.abandon, (task,)),
        ]
        for target, args in attacks:
            threading.Thread(target=target, args=args, daemon=True).start()

    def abandon(self, task: Any) -> None:
        """Uploads under fresh transfer ids, each abandoned after its first kilobyte."""
        for i in range(ABANDONED_UPLOADS):
            if self.stop.is_set():
                break
            header = self._header(task, self.blob, f"abandon-{task.round}-{i}", tokens=100)
            self._try(
                "abandoned_uploads", functools.partial(self._send, header, [self.blob[:1024]])
            )

    def poison(self, attack: str, task: Any, blob: bytes, tokens: int) -> None:
        """Send a poisoned update, retrying while this member's own slots are taken (by its
        other attacks) until the aggregator actually judges it."""
        header = self._header(task, blob, f"{attack}-{task.round}", tokens=tokens)
        chunks = [blob[i : i + 1024 * 1024] for i in range(0, len(blob), 1024 * 1024)]
        for _ in range(POISON_TRIES):
            try:
                self.tally.add(attack, str(self._send(header, chunks)))
                return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    self.tally.add(attack, exc.code().name)
                    return
            if self.stop.wait(5.0):
                break
        self.tally.add(attack, "never_judged")

    def trickle(self, task: Any) -> None:
        """Header, then one byte every ten seconds (a slow-loris that is never idle long)."""
        header = self._header(task, self.blob, f"trickle-{task.round}", tokens=100)

        def messages() -> Iterator[pb.UploadChunk]:
            yield pb.UploadChunk(header=header)
            for offset in range(len(self.blob)):
                if self.stop.wait(10.0):
                    return
                byte = self.blob[offset : offset + 1]
                yield pb.UploadChunk(
                    chunk=pb.Chunk(offset=offset, data=byte, crc32=zlib.crc32(byte))
                )

        self._try("trickle", lambda: self.stub.Upload(messages(), timeout=3600).status)

    def _header(self, task: Any, blob: bytes, transfer: str, *, tokens: int) -> pb.UploadHeader:
        digest = hashlib.sha256(blob).hexdigest()
        return pb.UploadHeader(
            transfer_id=transfer,
            round=task.round,
            base_version=task.base_version,
            digest=digest,
            size=len(blob),
            num_tokens=tokens,
            train_loss=1.0,
            train_seconds=1.0,
            signature=sign_digest(self.key, digest, task.round),
        )

    def _send(self, header: pb.UploadHeader, chunks: list[bytes]) -> Any:
        def messages() -> Iterator[pb.UploadChunk]:
            yield pb.UploadChunk(header=header)
            offset = 0
            for data in chunks:
                yield pb.UploadChunk(
                    chunk=pb.Chunk(offset=offset, data=data, crc32=zlib.crc32(data))
                )
                offset += len(data)

        reply = self.stub.Upload(messages(), timeout=60)
        return pb.UploadReply.Status.Name(reply.status)

    def _try(self, attack: str, call: Callable[[], Any]) -> None:
        try:
            self.tally.add(attack, str(call()))
        except grpc.RpcError as exc:
            self.tally.add(attack, exc.code().name)

    def run(self) -> dict[str, Any]:
        self.stub.Join(pb.JoinRequest(num_train_tokens=100), timeout=30)
        attacks = [self.tcp_flood, self.headerless_streams, self.long_poll_flood]
        threads = [threading.Thread(target=a, daemon=True) for a in attacks]
        for thread in threads:
            thread.start()
        self.stop.wait(self.args.seconds)
        self.stop.set()
        for thread in threads:
            thread.join(timeout=30)
        self.channel.close()
        return {"selected_rounds": sorted(self.selected), "attacks": self.tally.counts}


def _code_of(call: Any) -> str:
    try:
        code = call.code()
    except grpc.RpcError as exc:  # pragma: no cover - code() does not raise for done calls
        code = exc.code()
    return "PENDING" if code is None else str(code.name)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    for name in ("--certs", "--name", "--target", "--object", "--overflow-object", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--seconds", type=float, required=True)
    args = p.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    result = Hostile(args, stop).run()
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
