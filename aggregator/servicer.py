"""gRPC servicer: translates messages to `FederationHandler` calls and domain errors to status
codes.

This is the only place that knows both gRPC and Photon's errors. Each status carries a message
a person can act on. Who the caller is was settled before a method runs, by the interceptor in
`aggregator.auth`; methods read it with `caller()`.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import grpc

from aggregator.auth import caller
from aggregator.handler import FederationHandler
from aggregator.limits import Limits
from aggregator.metrics import AggregatorMetrics
from bandwidth.chunking import iter_file_chunks
from photon import errors
from photon.diskspace import as_disk_full, is_disk_full
from photon.faults import crash_point
from photon.logs import get_logger
from photon.update import UpdateRecord
from photon.v1 import federation_pb2 as pb
from photon.v1 import federation_pb2_grpc as pb_grpc

log = get_logger("aggregator.servicer")


_CODES: tuple[tuple[type[errors.PhotonError], grpc.StatusCode], ...] = (
    (errors.NotAuthorized, grpc.StatusCode.PERMISSION_DENIED),
    (errors.RoundClosed, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.AlreadyAccepted, grpc.StatusCode.ALREADY_EXISTS),
    (errors.ResumeMismatch, grpc.StatusCode.ABORTED),
    (errors.ChunkIntegrityError, grpc.StatusCode.DATA_LOSS),
    (errors.UpdateRejected, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.CodecError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.TransferError, grpc.StatusCode.UNAVAILABLE),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
)

F = TypeVar("F", bound=Callable[..., Any])


def status_for(exc: errors.PhotonError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> NoReturn:
    if not isinstance(exc, errors.PhotonError) and is_disk_full(exc):
        exc = as_disk_full(exc, f"serving {method}")  # RESOURCE_EXHAUSTED, not INTERNAL
    if isinstance(exc, errors.PhotonError):
        code = status_for(exc)
        log.warning("rpc_refused", method=method, code=code.name, error=str(exc), **exc.context())
        context.abort(code, str(exc))
        raise AssertionError("unreachable: abort raises")
    log.exception("rpc_failed", method=method)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see aggregator log")
    raise AssertionError("unreachable: abort raises")


def translated(fn: F) -> F:
    """Map PhotonErrors raised by a unary or client-streaming handler to status codes."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except grpc.RpcError:
            raise
        except Exception as exc:
            if context.code() is not None:  # already aborted inside
                raise
            _abort(context, exc, fn.__name__)

    return wrapper  # type: ignore[return-value]


class FederationServicer(pb_grpc.FederationServicer):
    def __init__(
        self,
        handler: FederationHandler,
        *,
        chunk_bytes: int,
        long_poll_s: float,
        status: Callable[[], dict[str, Any]] | None = None,
        limits: Limits | None = None,
        metrics: AggregatorMetrics | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.metrics = metrics
        self.status = status or handler.status
        self.chunk_bytes = chunk_bytes
        self.long_poll_s = long_poll_s

    @translated
    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        silo = caller().silo
        admitted = self.handler.join(
            silo, request.num_train_tokens, request.tokenizer_digest, request.agent_version
        )
        return pb.JoinReply(
            silo_id=silo,
            federation_spec_json=admitted.spec_json,
            heartbeat_interval_s=admitted.heartbeat_interval_s,
        )

    @translated
    def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.HeartbeatReply:
        silo = caller().silo
        log.debug(
            "heartbeat",
            silo=silo,
            round=request.round,
            step=request.step,
            loss=request.loss,
            phase=request.phase,
        )
        return pb.HeartbeatReply(open_round=self.handler.heartbeat(silo))

    @translated
    def GetTask(self, request: pb.GetTaskRequest, context: grpc.ServicerContext) -> pb.Task:
        silo = caller().silo
        remaining = context.time_remaining()
        wait = self.long_poll_s if remaining is None else min(self.long_poll_s, remaining - 1)
        with self._long_poll(silo) as may_park:  # without a slot: answer now, park no thread
            d = self.handler.get_task(silo, wait if may_park else 0.0)
        kind = {
            "train": pb.Task.TRAIN,
            "eval": pb.Task.EVAL,
            "wait": pb.Task.WAIT,
            "done": pb.Task.DONE,
        }[d.kind]
        return pb.Task(
            kind=kind,
            round=d.round,
            base_version=d.base_version,
            local_steps=d.local_steps,
            global_step=d.global_step,
            deadline_s=d.deadline_s,
            retry_after_s=d.retry_after_s,
            message=d.message,
        )

    def Download(
        self, request: pb.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.DownloadChunk]:
        try:
            silo = caller().silo
            current = self.handler.heartbeat(silo)
            pub = self.handler.download(request.version, request.have_version)
        except errors.PhotonError as exc:
            _abort(context, exc, "Download")
        if pub is None:
            _not_found(context, request.version, current)
        if request.offset > pub.size:
            context.abort(
                grpc.StatusCode.OUT_OF_RANGE,
                f"offset {request.offset} is past the object's size {pub.size}",
            )
        yield pb.DownloadChunk(
            header=pb.ObjectHeader(
                digest=pub.digest,
                size=pub.size,
                encoding="full" if pub.base < 0 else "delta",
                version=pub.version,
                base_version=pub.base,
            )
        )
        sent = 0
        with self._timed("down"):
            try:
                for c in iter_file_chunks(
                    pub.path, start=request.offset, chunk_size=self.chunk_bytes
                ):
                    yield pb.DownloadChunk(
                        chunk=pb.Chunk(offset=c.offset, data=bytes(c.data), crc32=c.crc32)
                    )
                    sent += len(c.data)
            finally:
                self.handler.record_traffic(pub.version, silo, "down", sent)

    @translated
    def Upload(
        self, request_iterator: Iterator[pb.UploadChunk], context: grpc.ServicerContext
    ) -> pb.UploadReply:
        silo = caller().silo
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("body") != "header":
            raise errors.UpdateRejected("the first Upload message must be a header")
        update, offset = UpdateRecord.from_header(first.header)
        session = self.handler.begin_upload(silo, update, offset)
        generation = session.claim()
        received = 0
        with self._timed("up"):
            try:
                for msg in request_iterator:
                    if msg.WhichOneof("body") != "chunk":
                        raise errors.UpdateRejected("only chunks may follow the Upload header")
                    c = msg.chunk
                    data = c.data  # each read of a bytes field copies it: read once
                    session.write(generation, c.offset, data, c.crc32)
                    received += len(data)
                    crash_point("aggregator.upload_chunk")
            finally:
                session.release()  # synced and closed: an abandoned transfer holds no descriptor
                self.handler.record_traffic(update.round, silo, "up", received)
        if session.committed < update.size:
            return pb.UploadReply(
                status=pb.UploadReply.INCOMPLETE,
                committed_offset=session.committed,
                message="stream ended before the object was complete",
            )
        self.handler.complete_upload(silo, update, session.finalize(), caller().certificate)
        return pb.UploadReply(status=pb.UploadReply.ACCEPTED, committed_offset=update.size)

    @contextmanager
    def _timed(self, direction: str) -> Iterator[None]:
        """Observe how long a transfer ran. Its slots and the idle watchdog are held by the
        auth interceptor for the whole call (`aggregator.calls`)."""
        started = time.monotonic()
        try:
            yield
        finally:
            if self.metrics is not None:
                self.metrics.transfer_seconds.labels(direction).observe(time.monotonic() - started)

    @contextmanager
    def _long_poll(self, silo: str) -> Iterator[bool]:
        """Whether this GetTask may park its thread: a bounded pool, one per silo."""
        if self.limits is None:
            yield True
            return
        with self.limits.long_polls.try_hold(silo) as may_park:
            yield may_park

    @translated
    def UploadStatus(
        self, request: pb.UploadStatusRequest, context: grpc.ServicerContext
    ) -> pb.UploadStatusReply:
        state = self.handler.upload_status(caller().silo, request.transfer_id)
        return pb.UploadStatusReply(
            committed_offset=state.committed, complete=state.complete, accepted=state.accepted
        )

    @translated
    def ReportEval(self, request: pb.EvalReport, context: grpc.ServicerContext) -> pb.EvalAck:
        silo = caller().silo
        self.handler.report_eval(silo, request.version, request.loss, request.tokens)
        return pb.EvalAck()

    @translated
    def Leave(self, request: pb.LeaveRequest, context: grpc.ServicerContext) -> pb.LeaveReply:
        self.handler.leave(caller().silo, request.reason[:200])
        return pb.LeaveReply()

    @translated
    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusReply:
        caller()  # any federation certificate may look
        return pb.StatusReply(status_json=json.dumps(self.status()).encode())


def _not_found(context: grpc.ServicerContext, version: int, current: int) -> NoReturn:
    context.abort(
        grpc.StatusCode.NOT_FOUND,
        f"version {version} is not available; the current version is {current} (call GetTask)",
    )
    raise AssertionError("unreachable: abort raises")
