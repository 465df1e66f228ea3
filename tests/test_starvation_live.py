"""No member can hold the aggregator's workers, descriptors or spool without a bound: each attack
from the hardening issue (rows 4, 5, 6 and 10) against a real aggregator daemon over mTLS, with
the honest silo's calls answered while it runs. Timeouts here are safety nets, not assertions
about speed."""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from photon.cli.localfed.launcher import Launcher
from photon.pki import issue
from photon.v1 import federation_pb2 as pb
from tests.harness import make_federation, wait_for
from tests.test_security import Silo, _good_blob

HONEST_TIMEOUT = 10.0  # generous: an honest unary call is answered well within it


# Few workers, so that the attacks below would take them all without the limits.
def _small(fed: Launcher, *, rate_limit: bool = True) -> Launcher:
    """A small worker pool, so that a hostile member could take all of it without the caps."""
    srv = fed.aggregator.server
    srv.max_workers, srv.max_transfers_total = 8, 2
    srv.max_transfers_per_silo, srv.max_concurrent_per_silo = 1, 3
    if not rate_limit:
        srv.max_requests_per_s = 0.0
    fed.aggregator.rounds.max_long_polls, fed.aggregator.rounds.long_poll_s = 2, 8.0
    fed.write_configs()
    return fed


def _header(transfer: str, size: int = 100_000, round_: int = 0) -> pb.UploadChunk:
    return pb.UploadChunk(
        header=pb.UploadHeader(
            transfer_id=transfer,
            round=round_,
            base_version=0,
            digest="ab" * 32,
            size=size,
            offset=0,
            num_tokens=1,
        )
    )


def _answered(silo: Silo) -> None:
    """The honest silo's unary calls are answered."""
    silo.stub.Heartbeat(pb.HeartbeatRequest(), timeout=HONEST_TIMEOUT)
    reply = silo.stub.Status(pb.StatusRequest(), timeout=HONEST_TIMEOUT)
    states = {s["silo"]: s["state"] for s in json.loads(reply.status_json)["silos"]}
    assert states[silo.name] == "online", states


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Launcher]:
    fed = _small(make_federation(tmp_path, silos=2, rounds=1))
    try:
        fed.start_aggregator(exit_when_done=False)
        yield fed
    finally:
        fed.stop_all()


def test_row4_headerless_upload_streams_cannot_take_every_worker(small: Launcher) -> None:
    honest = Silo(small, "silo-0")
    honest.stub.Join(pb.JoinRequest(), timeout=HONEST_TIMEOUT)
    issue(small.root / "certs", "silo", "intruder")  # a certificate, never allowlisted
    intruder = Silo(small, "intruder")
    stop = threading.Event()

    def silent() -> Iterator[pb.UploadChunk]:
        stop.wait(60)  # never sends the header
        return
        yield

    streams = [intruder.stub.Upload.future(silent(), timeout=90) for _ in range(40)]
    try:
        wait_for(lambda: sum(f.done() for f in streams) >= 40 - 3, 30, "the cap's refusals")
        refused = [f for f in streams if f.done()]
        assert {f.code() for f in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert any(not f.done() for f in streams)  # one is still held by the intruder
        _answered(honest)
    finally:
        stop.set()
        for f in streams:
            f.cancel()

    # Cancelled streams give their slots back: the intruder's next stream is admitted (and
    # refused for what it sends, not for what it holds).
    def admitted() -> bool:
        try:
            intruder.stub.Upload(iter([pb.UploadChunk()]), timeout=HONEST_TIMEOUT)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        return False

    wait_for(admitted, 30, "the cancelled streams' slots to be given back")
    for s in (honest, intruder):
        s.channel.close()


def test_row5_long_polls_of_one_member_cannot_take_every_worker(tmp_path: Path) -> None:
    # silo-2 never joins: no round opens, every GetTask would wait
    fed = _small(make_federation(tmp_path, silos=3, rounds=1), rate_limit=False)
    stop = threading.Event()
    codes: list[grpc.StatusCode] = []
    pollers: list[threading.Thread] = []

    def poll_forever(member: Silo) -> None:
        for _ in range(60):  # bounded in count and (with `stop`) in time
            if stop.is_set():
                return
            try:
                member.stub.GetTask(pb.GetTaskRequest(held_version=-1), timeout=30)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
            stop.wait(0.2)

    try:
        fed.start_aggregator(exit_when_done=False)
        honest, member = Silo(fed, "silo-0"), Silo(fed, "silo-1")
        for s in (honest, member):
            s.stub.Join(pb.JoinRequest(), timeout=HONEST_TIMEOUT)
        pollers += [threading.Thread(target=poll_forever, args=(member,)) for _ in range(16)]
        for t in pollers:
            t.start()
        wait_for(lambda: len(codes) >= 16, 30, "the member's long-polls to be under way")
        for _ in range(3):
            _answered(honest)
            time.sleep(0.5)
        # Its polls beyond the one that parks are answered WAIT at once (or refused by its
        # call cap); none fails otherwise. How many park is checked in test_starvation.py.
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    finally:
        stop.set()
        for t in pollers:
            t.join(timeout=40)
        fed.stop_all()


def _open_fds(fed: Launcher) -> int:
    return len(list(Path(f"/proc/{fed.procs['aggregator'].pid}/fd").iterdir()))


def test_row6_abandoned_uploads_are_capped_and_hold_no_descriptor(small: Launcher) -> None:
    honest, member = Silo(small, "silo-0"), Silo(small, "silo-1")
    for s in (honest, member):
        s.stub.Join(pb.JoinRequest(), timeout=HONEST_TIMEOUT)
    task = member.stub.GetTask(pb.GetTaskRequest(held_version=-1), timeout=30)
    assert task.kind == pb.Task.TRAIN
    before = _open_fds(small)
    refused: list[str] = []
    for i in range(50):
        data = b"x" * 1000
        chunk = pb.UploadChunk(chunk=pb.Chunk(offset=0, data=data, crc32=zlib.crc32(data)))
        try:
            reply = member.stub.Upload(iter([_header(f"abandon-{i}"), chunk]), timeout=30)
            assert reply.status == pb.UploadReply.INCOMPLETE
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
            refused.append(exc.details() or "")
    assert len(refused) == 50 - 4  # server.max_open_uploads_per_silo
    assert all("'silo-1' has 4 unfinished uploads" in d for d in refused), refused[0]
    assert _open_fds(small) <= before + 8  # not one descriptor per abandoned transfer
    assert honest.upload(_good_blob(), transfer="honest").status == pb.UploadReply.ACCEPTED
    for s in (honest, member):
        s.channel.close()


def test_row10_a_trickling_stream_is_cancelled(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, silos=1, rounds=1)
    fed.aggregator.server.stream_idle_timeout_s = 2.0
    fed.aggregator.server.min_stream_bytes_per_s = 1024
    fed.write_configs()
    stop = threading.Event()
    try:
        fed.start_aggregator(exit_when_done=False)
        silo = Silo(fed, "silo-0")
        silo.stub.Join(pb.JoinRequest(), timeout=HONEST_TIMEOUT)
        task = silo.stub.GetTask(pb.GetTaskRequest(held_version=-1), timeout=30)
        assert task.kind == pb.Task.TRAIN

        def trickle() -> Iterator[pb.UploadChunk]:
            yield _header("trickle", size=10_000)
            for offset in range(60):  # one byte every 0.3 s: never idle, far below the rate
                if stop.wait(0.3):
                    return
                data = b"x"
                yield pb.UploadChunk(
                    chunk=pb.Chunk(offset=offset, data=data, crc32=zlib.crc32(data))
                )

        with pytest.raises(grpc.RpcError) as info:
            silo.stub.Upload(trickle(), timeout=60)
        assert info.value.code() == grpc.StatusCode.CANCELLED
        silo.channel.close()
    finally:
        stop.set()
        fed.stop_all()
    assert "slow_stream_cancelled" in fed.log("aggregator", tail=None)
