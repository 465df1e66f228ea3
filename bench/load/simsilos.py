"""Simulated honest silos for the load benchmark: real mTLS identities, no training, no torch.

One worker process hosts many silos, each a thread with its own certificate, channel and key.
A silo joins, heartbeats, long-polls for tasks, and when selected uploads a prepared update
object signed for the round; it records the latency of every unary RPC it makes and the
outcome of every task it was given. Run as
`python -m bench.load.simsilos --certs DIR --target HOST:PORT --object FILE --names a,b --out F`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import signal
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from photon.signing import sign_digest
from photon.tls import TLSFiles, channel_credentials
from photon.v1 import federation_pb2 as pb
from photon.v1 import federation_pb2_grpc as pb_grpc

CHUNK = 1024 * 1024
#: Join attempts before a simulated silo gives up (a real one retries for minutes).
JOIN_TRIES = 30
R = TypeVar("R")


@dataclass(slots=True)
class SiloRecord:
    """What one simulated silo saw: unary latencies (ms) and its tasks' outcomes."""

    name: str
    latencies_ms: list[float] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)
    trained: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


class SimSilo:
    """One honest member that does everything but train."""

    def __init__(
        self, name: str, certs: Path, target: str, blob: bytes, tokens: int, stop: threading.Event
    ) -> None:
        self.record = SiloRecord(name)
        self.key = certs / "silos" / f"{name}.key"
        creds = channel_credentials(TLSFiles.for_silo(certs, name))
        self.channel = grpc.secure_channel(target, creds)
        self.stub = pb_grpc.FederationStub(self.channel)
        self.blob, self.digest = blob, hashlib.sha256(blob).hexdigest()
        self.tokens, self.stop = tokens, stop
        self.next_heartbeat = 0.0
        self.interval = 5.0

    def unary(self, method: str, call: Callable[[], R]) -> R | None:
        """Make one unary RPC, timing it; a refusal is counted, not raised."""
        started = time.perf_counter()
        try:
            return call()
        except grpc.RpcError as exc:
            key = f"{method}:{exc.code().name}"
            self.record.refusals[key] = self.record.refusals.get(key, 0) + 1
            return None
        finally:
            self.record.latencies_ms.append((time.perf_counter() - started) * 1000)

    def run(self) -> None:
        joined = self._join()
        if joined is None:
            return
        self.interval = max(1.0, joined.heartbeat_interval_s)
        while not self.stop.is_set():
            self._heartbeat_if_due()
            task = self._get_task()
            if task is None:
                self.stop.wait(1.0)
            elif task.kind == pb.Task.TRAIN:
                self._train(task)
            elif task.kind == pb.Task.EVAL:
                self._report_eval(task)
            elif task.kind == pb.Task.DONE:
                break
            else:
                self.stop.wait(min(task.retry_after_s or 1.0, 1.0))
        self.unary("Leave", lambda: self.stub.Leave(pb.LeaveRequest(reason="bench"), timeout=30))
        self.channel.close()

    def _join(self) -> Any:
        """Join, retrying a refusal for now (UNAVAILABLE, RESOURCE_EXHAUSTED …) as a silo does."""
        request = pb.JoinRequest(num_train_tokens=self.tokens)
        for attempt in range(JOIN_TRIES):
            joined = self.unary("Join", lambda: self.stub.Join(request, timeout=30))
            if joined is not None or self.stop.wait(min(2.0 * (attempt + 1), 10.0)):
                return joined
        return None

    def _report_eval(self, task: Any) -> None:
        report = pb.EvalReport(version=task.base_version, loss=2.0, tokens=100)
        self.unary("ReportEval", lambda: self.stub.ReportEval(report, timeout=30))

    def _heartbeat_if_due(self) -> None:
        now = time.monotonic()
        if now < self.next_heartbeat:
            return
        self.next_heartbeat = now + self.interval
        self.unary("Heartbeat", lambda: self.stub.Heartbeat(pb.HeartbeatRequest(), timeout=30))

    def _get_task(self) -> Any:
        try:
            return self.stub.GetTask(pb.GetTaskRequest(), timeout=min(self.interval, 30.0))
        except grpc.RpcError as exc:
            key = f"GetTask:{exc.code().name}"
            self.record.refusals[key] = self.record.refusals.get(key, 0) + 1
            return None

    def _train(self, task: Any) -> None:
        round_ = int(task.round)
        if round_ in self.record.accepted:
            return
        if round_ not in self.record.trained:
            self.record.trained.append(round_)
        signature = sign_digest(self.key, self.digest, round_)
        error = ""
        for attempt in range(5):
            self._heartbeat_if_due()
            outcome = self._upload_once(task, signature, f"{self.record.name}-r{round_}")
            if outcome == "accepted":
                self.record.accepted.append(round_)
                self.record.failed.pop(round_, None)
                return
            error = outcome
            self.stop.wait(0.5 * (attempt + 1))
        self.record.failed[round_] = error

    def _upload_once(self, task: Any, signature: bytes, transfer: str) -> str:
        header = pb.UploadHeader(
            transfer_id=transfer,
            round=task.round,
            base_version=task.base_version,
            digest=self.digest,
            size=len(self.blob),
            num_tokens=self.tokens,
            train_loss=2.0,
            train_seconds=1.0,
            signature=signature,
        )
        try:
            reply = self.stub.Upload(_messages(header, self.blob), timeout=120)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS or "already accepted" in (
                exc.details() or ""
            ):
                return "accepted"
            return exc.code().name
        return "accepted" if reply.status == pb.UploadReply.ACCEPTED else "incomplete"


def _messages(header: pb.UploadHeader, blob: bytes) -> Iterator[pb.UploadChunk]:
    yield pb.UploadChunk(header=header)
    for offset in range(0, len(blob), CHUNK):
        data = blob[offset : offset + CHUNK]
        yield pb.UploadChunk(chunk=pb.Chunk(offset=offset, data=data, crc32=zlib.crc32(data)))


def run_silos(args: argparse.Namespace, stop: threading.Event) -> list[SiloRecord]:
    """Run every named silo on its own thread until they finish, `stop` or the time is up."""
    blob = Path(args.object).read_bytes()
    silos = [
        SimSilo(name, Path(args.certs), args.target, blob, args.tokens, stop)
        for name in args.names.split(",")
    ]
    threads = [threading.Thread(target=s.run, daemon=True) for s in silos]
    for i, thread in enumerate(threads):
        thread.start()
        if i % 10 == 9:
            time.sleep(0.05)  # a gentle ramp: joins spread over a second or two
    deadline = time.monotonic() + args.seconds
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    return [s.record for s in silos]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--certs", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--object", required=True)
    p.add_argument("--names", required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    records = run_silos(args, stop)
    Path(args.out).write_text(json.dumps([dataclasses.asdict(r) for r in records]))


if __name__ == "__main__":
    main()
