"""What the silo does with the fields the aggregator sends it: the global version in heartbeat
replies, the round's deadline in a task, `complete` in an upload status."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
import structlog
from structlog.testing import capture_logs

from photon.update import UpdateRecord
from photon.v1 import federation_pb2 as pb
from silo_agent.client import AggregatorClient
from silo_agent.deadline import deadline_tight, log_train_task
from silo_agent.heartbeat import Heartbeat
from silo_agent.metrics import SiloMetrics
from silo_agent.transfers import PendingUpdate, UploadOutcome, upload


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


class _HeartbeatClient:
    def __init__(self, replies: list[pb.HeartbeatReply | None]) -> None:
        self.replies = replies

    def heartbeat(self, round_: int, step: int, loss: float, phase: str) -> pb.HeartbeatReply:
        reply = self.replies.pop(0)
        if reply is None:
            raise _Unavailable()
        return reply


@pytest.fixture(autouse=True)
def _all_levels_logged() -> Iterator[None]:
    """capture_logs sees only what the configured level lets through, and another test in this
    process may have configured the daemons' logging with a higher level."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**saved)


def test_heartbeat_keeps_the_global_version_as_a_gauge() -> None:
    metrics = SiloMetrics()
    client = _HeartbeatClient(
        [pb.HeartbeatReply(open_round=3), None, pb.HeartbeatReply(open_round=4)]
    )
    beat = Heartbeat(cast(AggregatorClient, client), on_version=metrics.global_version.set)
    assert beat.global_version == -1

    def gauge() -> float | None:
        return metrics.registry.get_sample_value("photon_silo_global_version")

    beat.beat()
    assert (beat.global_version, gauge()) == (3, 3.0)
    beat.beat()  # a missed heartbeat keeps what the last reply said
    assert (beat.global_version, gauge()) == (3, 3.0)
    beat.beat()
    assert (beat.global_version, gauge()) == (4, 4.0)


@pytest.mark.parametrize(
    ("last_train_s", "deadline_s", "tight"),
    [
        (None, 0.0, False),
        (None, 10.0, False),
        (5.0, 10.0, False),
        (10.0, 10.0, False),
        (10.5, 10.0, True),
        (1.0, 0.0, True),
    ],
)
def test_deadline_is_tight_when_the_last_training_outlasts_it(
    last_train_s: float | None, deadline_s: float, tight: bool
) -> None:
    assert deadline_tight(last_train_s, deadline_s) is tight


def test_train_task_line_names_the_deadline_and_warns_when_tight() -> None:
    task = pb.Task(kind=pb.Task.TRAIN, round=2, base_version=1, local_steps=8, deadline_s=30.04)
    with capture_logs() as relaxed:
        log_train_task(task, last_train_s=12.0)
    with capture_logs() as tight:
        log_train_task(task, last_train_s=45.0)
    assert [(e["event"], e["deadline_s"]) for e in relaxed] == [("train_task", 30.0)]
    assert [e["event"] for e in tight] == ["train_task", "round_deadline_tight"]
    assert (tight[1]["log_level"], tight[1]["last_train_s"]) == ("warning", 45.0)


class _Once:
    def call(self, fn: Callable[[], Any], retryable: object, what: str) -> Any:
        return fn()


class _UploadClient:
    """UploadStatus answers `status`; Upload keeps the messages of the stream."""

    def __init__(self, status: pb.UploadStatusReply) -> None:
        self.status = status
        self.sent: list[pb.UploadChunk] = []
        self.metadata = ()
        self.retrier = _Once()
        self.stub = self

    def upload_status(self, transfer_id: str) -> pb.UploadStatusReply:
        return self.status

    def Upload(self, messages: Iterator[pb.UploadChunk], **_: object) -> pb.UploadReply:
        self.sent = list(messages)
        return pb.UploadReply(status=pb.UploadReply.ACCEPTED)


def _pending(tmp_path: Path, size: int) -> PendingUpdate:
    blob = bytes(range(256)) * (size // 256)
    path = tmp_path / "r0.upd"
    path.write_bytes(blob)
    update = UpdateRecord(
        round=0,
        transfer_id="silo-0-r0",
        base_version=0,
        digest=hashlib.sha256(blob).hexdigest(),
        size=len(blob),
        num_tokens=10,
    )
    return PendingUpdate(update=update, path=str(path))


@pytest.mark.parametrize("complete", [True, False])
def test_upload_sends_only_a_header_when_the_aggregator_holds_every_byte(
    tmp_path: Path, complete: bool
) -> None:
    pending = _pending(tmp_path, 4096)
    size = pending.update.size
    held = size if complete else 1024
    reply = pb.UploadStatusReply(committed_offset=held, complete=complete, accepted=False)
    client = _UploadClient(reply)
    with capture_logs() as logs:
        outcome = upload(cast(AggregatorClient, client), pending, chunk_bytes=1000)
    assert outcome is UploadOutcome.ACCEPTED
    assert client.sent[0].header.offset == held
    chunks = [m.chunk for m in client.sent[1:]]
    assert sum(len(c.data) for c in chunks) == size - held
    assert ("upload_bytes_all_held" in [e["event"] for e in logs]) is complete
