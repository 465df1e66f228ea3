"""Who is calling, and whether they may: one gRPC server interceptor for the Federation service.

Every method of `photon.v1.Federation` — including ones added later — passes through
`FederationAuth` before its handler runs: it resolves the caller's identity (the verified client
certificate's CN, or the `x-photon-silo` header when the server is insecure), refuses revoked
certificates and names, applies the per-silo request rate, and holds what the call occupies —
its silo's call slot, and for a stream a transfer slot and the idle watchdog's eye — from the
first moment of the call to its end (`aggregator.calls`). Other services (grpc.health.v1) pass
untouched. Handlers read the verified caller with `caller()`; the allowlist and "has this
silo joined" stay with membership, which decides them per method.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc

from aggregator.calls import HeldCall, metered
from aggregator.limits import Limits, RequestRate
from photon.errors import NotAuthorized, ResourceExhausted
from photon.logs import get_logger
from photon.names import silo_name_problem
from photon.pki import RevocationList
from photon.tls import peer_certificate_pem, peer_identity
from photon.v1 import federation_pb2 as pb
from photon.wire import INSECURE_IDENTITY_KEY

log = get_logger("aggregator.auth")

SERVICE = pb.DESCRIPTOR.services_by_name["Federation"].full_name
_PREFIX = f"/{SERVICE}/"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Caller:
    """A verified caller: its silo id and, over mTLS, its certificate (PEM)."""

    silo: str
    certificate: bytes | None


_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("photon_caller")


def caller() -> Caller:
    """The caller `FederationAuth` verified for the RPC this thread is serving."""
    try:
        return _caller.get()
    except LookupError:
        raise NotAuthorized(
            "no verified caller: the server runs without its auth interceptor"
        ) from None


@contextmanager
def _as_caller(who: Caller) -> Iterator[None]:
    token = _caller.set(who)
    try:
        yield
    finally:
        _caller.reset(token)


def _refuse(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable: abort raises")


#: Methods any certificate of the federation may call, allowlisted or not.
OPEN_TO_ANY_MEMBER = frozenset({"Status"})


class FederationAuth(grpc.ServerInterceptor):
    """Identity, revocation, request rate and what a call may hold, for every Federation
    method. `limits` (when given) supplies the rate unless `rate` is passed too."""

    def __init__(
        self,
        *,
        insecure: bool,
        revocations: RevocationList | None = None,
        rate: RequestRate | None = None,
        limits: Limits | None = None,
        allowlist: Sequence[str] = (),
    ) -> None:
        self.insecure = insecure
        self.revocations = revocations
        #: Silos that may call (empty: any certificate of the federation); Status is open to
        #: every federation certificate, so an operator can look with any of them.
        self.allowlist = frozenset(allowlist)
        self.rate = rate if rate is not None or limits is None else limits.rate
        self.limits = limits

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(_PREFIX):
            return handler
        return _wrap(handler, self, method[len(_PREFIX) :])

    def verify(self, context: grpc.ServicerContext, method: str) -> Caller:
        """The caller of this RPC, or abort with UNAUTHENTICATED, RESOURCE_EXHAUSTED or
        PERMISSION_DENIED."""
        silo = peer_identity(context)
        if silo is None and self.insecure:
            silo = dict(context.invocation_metadata()).get(INSECURE_IDENTITY_KEY)
        if not silo:
            _refuse(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "no client certificate identity; connect with a federation silo "
                "certificate (photon certs issue silo NAME)",
            )
        problem = silo_name_problem(silo)
        if problem is not None:  # before the name reaches a rate bucket, the journal or a path
            log.warning("rpc_refused", method=method, code="PERMISSION_DENIED", reason=problem)
            _refuse(context, grpc.StatusCode.PERMISSION_DENIED, problem)
        if self.allowlist and silo not in self.allowlist and method not in OPEN_TO_ANY_MEMBER:
            log.warning("rpc_refused", method=method, code="PERMISSION_DENIED", silo=silo)
            _refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"silo {silo!r} is not in the aggregator's allowlist",
            )
        if self.rate is not None:
            try:
                self.rate.check(silo)
            except ResourceExhausted as exc:
                log.warning("rpc_refused", method=method, code="RESOURCE_EXHAUSTED", silo=silo)
                _refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        pem = peer_certificate_pem(context)
        if self._revoked(silo, pem):
            log.warning("revoked_certificate_refused", silo=silo, method=method)
            _refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate of {silo!r} is revoked by the federation operator",
            )
        return Caller(silo=silo, certificate=pem)

    @contextmanager
    def admitted(
        self, context: grpc.ServicerContext, method: str, stream: bool
    ) -> Iterator[tuple[Caller, HeldCall | None]]:
        """The verified caller and what its call holds, given back when the block ends."""
        who = self.verify(context, method)
        if self.limits is None:
            yield who, None
            return
        try:
            held = HeldCall(self.limits, who.silo, stream=stream, cancel=context.cancel)
        except ResourceExhausted as exc:
            log.warning("rpc_refused", method=method, code="RESOURCE_EXHAUSTED", silo=who.silo)
            _refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        try:
            yield who, held
        finally:
            held.close()

    def _revoked(self, silo: str, pem: bytes | None) -> bool:
        if self.revocations is None or pem is None:
            return False
        return self.revocations.is_revoked(pem) or self.revocations.is_revoked(silo)


def _wrap(
    handler: grpc.RpcMethodHandler, auth: FederationAuth, method: str
) -> grpc.RpcMethodHandler:
    """The same handler, its behaviour run as the verified caller, holding its slots."""
    streams_in = bool(handler.request_streaming)
    kinds = (
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler, _unary),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler, _streaming),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler, _unary),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler, _streaming),
    )
    for behaviour, build, guard in kinds:
        if behaviour is not None:
            return build(
                guard(behaviour, auth, method, streams_in),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    raise AssertionError(f"{method}: a method handler without a behaviour")


def _unary(
    behaviour: Callable[[Any, Any], T], auth: FederationAuth, method: str, streams_in: bool
) -> Callable[..., T]:
    """For handlers that return one reply (their request may be a stream, metered: the
    watchdog stops watching once the client has sent its last message)."""

    def guarded(request: Any, context: grpc.ServicerContext) -> T:
        with auth.admitted(context, method, stream=streams_in) as (who, held):
            if streams_in and held is not None:
                request = metered(request, held, quiet_at_end=True)
            with _as_caller(who):
                return behaviour(request, context)

    return guarded


def _streaming(
    behaviour: Callable[[Any, Any], Iterator[T]],
    auth: FederationAuth,
    method: str,
    streams_in: bool,
) -> Callable[..., Iterator[T]]:
    """For handlers that return a stream: grpc pulls each reply after the behaviour returned,
    so each pull runs as the caller, and nothing leaks into the thread between pulls. The
    call's slots are held until the last reply, or until grpc drops a stream cut short."""

    def guarded(request: Any, context: grpc.ServicerContext) -> Iterator[T]:
        with auth.admitted(context, method, stream=True) as (who, held):
            if streams_in and held is not None:
                request = metered(request, held, quiet_at_end=False)
            with _as_caller(who):
                replies = iter(behaviour(request, context))
            if held is not None:
                replies = metered(replies, held, quiet_at_end=True)
            try:
                while True:
                    with _as_caller(who):
                        reply = next(replies, _END)
                    if reply is _END:
                        return
                    yield reply
            finally:  # a stream cut short: the behaviour's own cleanup runs as the caller too
                close = getattr(replies, "close", None)
                if close is not None:
                    with _as_caller(who):
                        close()

    return guarded


_END: Any = object()
