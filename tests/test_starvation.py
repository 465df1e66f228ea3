"""Worker starvation and spool exhaustion, piece by piece: what one RPC holds and when it gives
it back, the long-poll pool, the per-silo upload quota, abandoned uploads' descriptors and the
minimum stream rate (the real-daemon regressions are in test_starvation_live.py)."""

from __future__ import annotations

import hashlib
import threading
import zlib
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from aggregator.auth import FederationAuth
from aggregator.calls import HeldCall, metered
from aggregator.globalmodel import Published
from aggregator.handler import TaskDecision
from aggregator.limits import IdleWatchdog, Limits, UploadQuota
from aggregator.servicer import FederationServicer
from aggregator.uploads import UploadRegistry
from photon.errors import ResourceExhausted, ResumeMismatch
from photon.update import UpdateRecord
from photon.v1 import federation_pb2 as pb
from photon.v1 import federation_pb2_grpc as pb_grpc
from photon.wire import INSECURE_IDENTITY_KEY
from tests.harness import wait_for
from tests.test_auth import METHODS, RecordingHandler, _call, _serve


def _limits(**kw: float) -> Limits:
    args = {"per_silo": 1, "total": 2, "requests_per_s": 0.0, "idle_s": 60.0}
    return Limits.from_config(**{**args, **kw})  # type: ignore[arg-type]


def test_watchdog_cancels_a_trickle_below_the_minimum_rate() -> None:
    now = [0.0]
    dog = IdleWatchdog(10.0, min_bytes_per_s=100.0, clock=lambda: now[0])
    cancelled: list[str] = []
    trickle = dog.watch("trickle", lambda: cancelled.append("trickle"))
    steady = dog.watch("steady", lambda: cancelled.append("steady"))
    for second in range(1, 12):  # never idle: both move a little every second
        now[0] = float(second)
        dog.progress(trickle, 1)
        dog.progress(steady, 150)
        assert dog.sweep() == 0  # judged once a whole window from the first message passed
    now[0] = 11.5
    assert dog.sweep() == 1 and cancelled == ["trickle"]
    for second in range(12, 24):  # the next window starts afresh for the steady one
        now[0] = float(second)
        dog.progress(steady, 150)
        assert dog.sweep() == 0
    assert dog.watching() == 1
    silent = dog.watch("silent", lambda: cancelled.append("silent"))  # never sends a byte
    now[0] += 10.5
    dog.progress(steady, 2000)
    assert dog.sweep() == 1 and cancelled == ["trickle", "silent"]
    dog.release(silent)


def test_a_call_holds_its_slots_until_closed_and_refusals_hold_nothing() -> None:
    limits = _limits(calls_per_silo=3)
    cancelled: list[int] = []
    stream = HeldCall(limits, "a", stream=True, cancel=lambda: cancelled.append(1))
    with pytest.raises(ResourceExhausted, match="'a' already has 1 transfers"):
        HeldCall(limits, "a", stream=True, cancel=lambda: None)
    assert limits.calls.held("a") == 1  # the refused stream gave its call slot back
    unary = [HeldCall(limits, "a", stream=False, cancel=lambda: None) for _ in range(2)]
    with pytest.raises(ResourceExhausted, match="'a' already has 3 calls in flight"):
        HeldCall(limits, "a", stream=False, cancel=lambda: None)
    HeldCall(limits, "b", stream=False, cancel=lambda: None).close()  # per silo
    assert limits.watchdog.watching() == 1  # watched from its first moment
    messages = list(metered(iter([pb.UploadChunk(), pb.UploadChunk()]), stream, quiet_at_end=True))
    assert len(messages) == 2 and limits.watchdog.watching() == 0  # the client sent everything
    for call in [stream, *unary, stream]:  # closing twice is harmless
        call.close()
    assert limits.calls.held("a") == 0 and limits.slots.held("a") == 0 and cancelled == []


def _info(transfer: str, size: int, digest: str = "0" * 64) -> UpdateRecord:
    return UpdateRecord(
        transfer_id=transfer, round=0, base_version=0, digest=digest, size=size, num_tokens=1
    )


def test_upload_quota_refuses_before_a_file_is_opened(tmp_path: Path) -> None:
    registry = UploadRegistry(tmp_path, UploadQuota(max_open=2, max_bytes=1000))
    registry.open("a", _info("t1", 400), 0)
    registry.open("a", _info("t2", 400), 0)
    with pytest.raises(ResourceExhausted, match="'a' has 2 unfinished uploads \\(limit 2\\)"):
        registry.open("a", _info("t3", 10), 0)
    registry.open("a", _info("t1", 400), 0)  # resuming one of its own is fine
    registry.open("b", _info("t1", 900), 0)  # another silo has its own quota
    with pytest.raises(ResourceExhausted, match="would pass its limit of 1000"):
        registry.open("b", _info("t2", 101), 0)
    assert not list(tmp_path.glob("r*/*/t3.*")) and not list(tmp_path.glob("r*/b/t2.*"))
    registry.finish("t2")  # a finished transfer frees its place
    registry.open("a", _info("t3", 10), 0)


def _fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def test_an_abandoned_upload_holds_no_descriptor_and_resumes(tmp_path: Path) -> None:
    blob = bytes(range(256)) * 40
    digest = hashlib.sha256(blob).hexdigest()
    registry = UploadRegistry(tmp_path)
    before = _fds()
    session = registry.open("a", _info("t", len(blob), digest=digest), 0)
    generation = session.claim()
    session.write(generation, 0, blob[:4000], zlib.crc32(blob[:4000]))
    session.release()  # the stream ended half-way
    assert _fds() == before and session.committed == 4000
    with pytest.raises(ResumeMismatch, match="4000 bytes are committed"):
        registry.open("a", _info("t", len(blob), digest=digest), 0)
    assert _fds() == before  # a refused resume opened nothing that stays open
    session = registry.open("a", _info("t", len(blob), digest=digest), 4000)
    generation = session.claim()
    assert _fds() == before + 1
    session.write(generation, 4000, blob[4000:], zlib.crc32(blob[4000:]))
    session.release()
    assert _fds() == before
    assert session.finalize().read_bytes() == blob


class ParkingHandler(RecordingHandler):
    """A handler whose GetTask parks its thread for as long as it is allowed to wait."""

    def __init__(self, spool: Path, published: Published) -> None:
        super().__init__(spool, published)
        self.waits: list[tuple[str, float]] = []
        self.release = threading.Event()

    def get_task(self, silo: str, wait_s: float) -> TaskDecision:
        self.waits.append((silo, wait_s))
        if wait_s > 0:
            self.release.wait(wait_s)
        return TaskDecision(kind="wait", retry_after_s=1.0)

    def parked(self, silo: str) -> int:
        return sum(1 for who, wait in self.waits if who == silo and wait > 0)


def _get_task(channel: grpc.Channel, silo: str) -> grpc.Future:
    stub = pb_grpc.FederationStub(channel)
    return stub.GetTask.future(
        pb.GetTaskRequest(), timeout=30, metadata=((INSECURE_IDENTITY_KEY, silo),)
    )


def test_one_member_parks_at_most_one_long_poll_and_the_pool_is_bounded(tmp_path: Path) -> None:
    limits = _limits(calls_per_silo=4, long_polls=2)
    handler = ParkingHandler(tmp_path / "spool", Published(tmp_path / "none", "", 0, 0, -1))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        interceptors=[FederationAuth(insecure=True, limits=limits)],
    )
    servicer = FederationServicer(handler, chunk_bytes=4096, long_poll_s=25.0, limits=limits)
    pb_grpc.add_FederationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            flood = [_get_task(channel, "a") for _ in range(8)]
            wait_for(lambda: sum(f.done() for f in flood) >= 7, 20, "all but one answered")
            for f in flood:
                if f.done() and f.exception() is not None:
                    assert f.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, f.details()
            assert handler.parked("a") == 1
            other = _get_task(channel, "b")  # the pool's second slot
            wait_for(lambda: handler.parked("b") == 1, 20, "b to park")
            third = _get_task(channel, "c")  # the pool is full: answered at once
            assert third.result(timeout=20).kind == pb.Task.WAIT
            assert handler.parked("c") == 0
            handler.release.set()
            assert other.result(timeout=20).kind == pb.Task.WAIT
            outcomes = {f.code() for f in flood if f.exception(timeout=20) is not None}
            assert outcomes <= {grpc.StatusCode.RESOURCE_EXHAUSTED}
    finally:
        handler.release.set()
        server.stop(grace=None)
    assert limits.long_polls.held("a") == 0 and limits.calls.held("a") == 0


def test_a_cancelled_download_gives_its_slots_back(tmp_path: Path) -> None:
    limits = _limits()  # one transfer per silo
    blob = tmp_path / "v0.obj"
    blob.write_bytes(bytes(32 << 20))  # larger than flow control lets through unread
    published = Published(blob, "0" * 64, 32 << 20, 0, -1)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        interceptors=[FederationAuth(insecure=True, limits=limits)],
    )
    servicer = FederationServicer(
        RecordingHandler(tmp_path / "spool", published),
        chunk_bytes=65536,
        long_poll_s=0.0,
        limits=limits,
    )
    pb_grpc.add_FederationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    as_a = ((INSECURE_IDENTITY_KEY, "a"),)
    request = pb.DownloadRequest(version=0, have_version=-1)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.FederationStub(channel)
            first = stub.Download(request, timeout=30, metadata=as_a)
            assert next(first).WhichOneof("body") == "header"
            with pytest.raises(grpc.RpcError) as refused:
                next(stub.Download(request, timeout=30, metadata=as_a))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            first.cancel()
            wait_for(
                lambda: limits.slots.held("a") == limits.calls.held("a") == 0,
                20,
                "the cancelled download's slots",
            )
            assert limits.watchdog.watching() == 0
            received = sum(len(m.chunk.data) for m in stub.Download(request, metadata=as_a))
            assert received == 32 << 20
    finally:
        server.stop(grace=None)


def test_every_method_holds_a_call_slot_of_its_silo(tmp_path: Path) -> None:
    limits = _limits(calls_per_silo=3)
    s = _serve(tmp_path, FederationAuth(insecure=True, limits=limits), insecure=True)
    for _ in range(3):  # silo "a" has every call slot taken (by long calls, say)
        limits.calls.acquire("a")
    as_a, as_b = ((INSECURE_IDENTITY_KEY, "a"),), ((INSECURE_IDENTITY_KEY, "b"),)
    try:
        with grpc.insecure_channel(s.target) as channel:
            refused = {m.name: _call(channel, m, as_a) for m in METHODS}
            others = {m.name: _call(channel, m, as_b) for m in METHODS}
    finally:
        s.server.stop(grace=None)
    assert set(refused.values()) == {grpc.StatusCode.RESOURCE_EXHAUSTED}, refused
    assert grpc.StatusCode.RESOURCE_EXHAUSTED not in others.values(), others
    assert all(silo == "b" for _, silo in s.handler.calls)
    assert limits.calls.held("a") == 3 and limits.calls.held("b") == 0
