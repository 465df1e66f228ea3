"""Resource limits: transfer slots, request rates, idle streams, outlier norms."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
import torch

from aggregator.audit import AuditLog
from aggregator.config import ServerConfig
from aggregator.limits import IdleWatchdog, RequestRate, TransferSlots
from aggregator.store import Store
from aggregator.verify import UpdateVerifier
from bandwidth.codec import write_object
from photon.errors import ResourceExhausted, UpdateRejected
from photon.federation import FederationSpec
from photon.tls import TLSFiles, channel_credentials
from photon.update import UpdateRecord
from photon.v1 import federation_pb2 as pb
from photon.v1 import federation_pb2_grpc as pb_grpc
from tests.harness import make_federation


def test_transfer_slots_cap_per_silo_and_in_total() -> None:
    slots = TransferSlots(per_silo=1, total=2)
    with slots.hold("a"):
        with pytest.raises(ResourceExhausted, match="'a' already has 1 transfers"), slots.hold("a"):
            pass
        with (
            slots.hold("b"),
            pytest.raises(ResourceExhausted, match="2 transfers in flight"),
            slots.hold("c"),
        ):
            pass
    with slots.hold("a"):  # released on exit
        pass


def test_request_rate_refuses_floods_and_refills_with_time() -> None:
    now = [0.0]
    rate = RequestRate(2.0, burst=3, clock=lambda: now[0])
    for _ in range(3):
        rate.check("s")
    with pytest.raises(ResourceExhausted, match="exceeds 2 requests/s"):
        rate.check("s")
    rate.check("other")  # buckets are per silo
    now[0] += 0.5
    rate.check("s")


def test_idle_watchdog_cancels_only_streams_without_progress() -> None:
    now = [0.0]
    dog = IdleWatchdog(10.0, clock=lambda: now[0])
    cancelled: list[str] = []
    slow = dog.watch("slow", lambda: cancelled.append("slow"))
    busy = dog.watch("busy", lambda: cancelled.append("busy"))
    now[0] = 8.0
    dog.progress(busy)
    now[0] = 12.0
    assert dog.sweep() == 1 and cancelled == ["slow"]
    dog.release(busy)
    dog.release(slow)
    now[0] = 100.0
    assert dog.sweep() == 0


class _Shapes:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {"w": (4,)}


def test_outlier_norm_is_rejected_and_audited(tmp_path: Path) -> None:
    # The absolute bound (test_poison.py) would refuse norm 20 on 4 parameters first.
    server = ServerConfig(
        state_dir=tmp_path, insecure=True, max_norm_ratio=3.0, update_norm_bound=0.0
    )
    audit = AuditLog(tmp_path / "audit.jsonl")
    verifier = UpdateVerifier(server, FederationSpec(), _Shapes(), Store(tmp_path / "j.db"), audit)
    verifier.recent.extend([1.0, 1.2, 0.9])

    def update(value: float) -> tuple[UpdateRecord, Path]:
        path = tmp_path / f"{value}.upd"
        info = write_object(path, {"w": torch.full((4,), value)}, "fp32")
        return UpdateRecord(
            transfer_id="t",
            round=0,
            base_version=0,
            digest=info.digest,
            size=info.size,
            num_tokens=1,
            train_loss=None,
            base_eval_loss=None,
            train_seconds=0.0,
        ), path

    header, path = update(0.5)  # norm 1.0: fine
    assert verifier.verify("s", header, path, None) == pytest.approx(1.0)
    header, path = update(10.0)  # norm 20 > 3 x median 1.0
    with pytest.raises(UpdateRejected, match="exceeds 3x the median"):
        verifier.verify("s", header, path, None)
    assert '"verdict": "rejected"' in (tmp_path / "audit.jsonl").read_text()


def test_slow_loris_upload_stream_is_cancelled(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, silos=1, rounds=1)
    fed.aggregator.server.stream_idle_timeout_s = 1.0
    try:
        fed.start_aggregator(exit_when_done=False)
        creds = channel_credentials(TLSFiles.for_silo(tmp_path / "certs", "silo-0"))
        with grpc.secure_channel(f"localhost:{fed.port}", creds) as channel:
            stub = pb_grpc.FederationStub(channel)
            stub.Join(pb.JoinRequest(tokenizer_digest=""), timeout=10)
            task = stub.GetTask(pb.GetTaskRequest(held_version=-1), timeout=30)
            assert task.kind == pb.Task.TRAIN
            stop = threading.Event()

            def stalled() -> object:
                yield pb.UploadChunk(
                    header=pb.UploadHeader(
                        transfer_id="stall",
                        round=0,
                        base_version=0,
                        digest="0" * 64,
                        size=1000,
                        num_tokens=1,
                    )
                )
                stop.wait(30)  # never send a chunk

            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                stub.Upload(stalled(), timeout=30)
            stop.set()
            assert info.value.code() == grpc.StatusCode.CANCELLED
            assert time.monotonic() - started < 20
    finally:
        fed.stop_all()
    assert "idle_stream_cancelled" in fed.log("aggregator")
