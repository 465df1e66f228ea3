"""The silo's connection to the aggregator: one channel, unary RPCs with deadlines and retries.

Transient failures (unreachable, reset, deadline) are retried with jittered back-off under the
configured policy and logged; domain refusals (PERMISSION_DENIED, FAILED_PRECONDITION, ...)
propagate to the agent, which decides what they mean.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import grpc

from photon.logs import get_logger
from photon.retry import Retrier
from photon.tls import TLSFiles, channel_credentials
from photon.v1 import federation_pb2 as pb
from photon.v1 import federation_pb2_grpc as pb_grpc
from photon.wire import INSECURE_IDENTITY_KEY, grpc_options
from silo_agent.config import SiloConfig

log = get_logger("silo_agent.client")
T = TypeVar("T")

TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
    }
)


def is_transient(exc: Exception) -> bool:
    return isinstance(exc, grpc.RpcError) and exc.code() in TRANSIENT


def status_of(exc: Exception) -> grpc.StatusCode | None:
    return exc.code() if isinstance(exc, grpc.RpcError) else None


class AggregatorClient:
    def __init__(self, cfg: SiloConfig, retrier: Retrier | None = None) -> None:
        self.cfg = cfg
        s = cfg.silo
        options = grpc_options(cfg.transfer.chunk_bytes)
        if s.insecure:
            log.warning("insecure_mode", detail="plaintext gRPC; never across a real network")
            self.channel = grpc.insecure_channel(s.aggregator, options=options)
            self.metadata: tuple[tuple[str, str], ...] = ((INSECURE_IDENTITY_KEY, s.name),)
        else:
            assert s.certs_dir is not None
            creds = channel_credentials(TLSFiles.for_silo(s.certs_dir, s.name))
            self.channel = grpc.secure_channel(s.aggregator, creds, options=options)
            self.metadata = ()
        self.stub = pb_grpc.FederationStub(self.channel)
        self.retrier = retrier or Retrier(policy=cfg.retry)
        self.timeout = cfg.transfer.rpc_timeout_s

    def close(self) -> None:
        self.channel.close()

    def retry(self, fn: Callable[[], T], what: str) -> T:
        return self.retrier.call(fn, retryable=is_transient, what=what)

    def join(self, tokenizer_digest: str, num_train_tokens: int) -> pb.JoinReply:
        from photon import __version__

        req = pb.JoinRequest(
            agent_version=__version__,
            tokenizer_digest=tokenizer_digest,
            num_train_tokens=num_train_tokens,
        )
        return self.retry(
            lambda: self.stub.Join(req, timeout=self.timeout, metadata=self.metadata), "Join"
        )

    def get_task(self, held_version: int, long_poll_s: float = 15.0) -> pb.Task:
        req = pb.GetTaskRequest(held_version=held_version)
        return self.retry(
            lambda: self.stub.GetTask(
                req, timeout=long_poll_s + self.timeout, metadata=self.metadata
            ),
            "GetTask",
        )

    def heartbeat(self, round_: int, step: int, loss: float, phase: str) -> pb.HeartbeatReply:
        """One attempt, no retry: a missed heartbeat is not worth waiting for."""
        req = pb.HeartbeatRequest(round=round_, step=step, loss=loss, phase=phase)
        return self.stub.Heartbeat(req, timeout=self.timeout, metadata=self.metadata)

    def report_eval(self, version: int, loss: float, tokens: int) -> None:
        req = pb.EvalReport(version=version, loss=loss, tokens=tokens)
        self.retry(
            lambda: self.stub.ReportEval(req, timeout=self.timeout, metadata=self.metadata),
            "ReportEval",
        )

    def upload_status(self, transfer_id: str) -> pb.UploadStatusReply:
        req = pb.UploadStatusRequest(transfer_id=transfer_id)
        return self.retry(
            lambda: self.stub.UploadStatus(req, timeout=self.timeout, metadata=self.metadata),
            "UploadStatus",
        )

    def leave(self, reason: str) -> None:
        try:
            self.stub.Leave(
                pb.LeaveRequest(reason=reason), timeout=self.timeout, metadata=self.metadata
            )
        except grpc.RpcError as exc:
            log.warning("leave_failed", error=str(exc.code()))
