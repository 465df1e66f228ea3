"""The auth interceptor over a real mTLS server: every Federation method, present and future, is
refused to a caller without an identity or with a revoked one, and runs as the verified silo
otherwise — streaming replies included."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from aggregator.auth import SERVICE, FederationAuth
from aggregator.globalmodel import Published
from aggregator.handler import Admission, Direction, TaskDecision, UploadState
from aggregator.limits import RequestRate
from aggregator.servicer import FederationServicer
from aggregator.uploads import UploadRegistry, UploadSession
from photon import pki
from photon.pki.issuing import load_ca
from photon.tls import TLSFiles, channel_credentials, server_credentials
from photon.update import UpdateRecord
from photon.v1 import federation_pb2 as pb
from photon.v1 import federation_pb2_grpc as pb_grpc
from photon.wire import INSECURE_IDENTITY_KEY

RPC_TIMEOUT = 20.0  # a safety net against hangs, not an assertion about speed
METHODS = list(pb.DESCRIPTOR.services_by_name["Federation"].methods)


@dataclass
class RecordingHandler:
    """A `FederationHandler` that remembers which silo each call came from."""

    spool: Path
    published: Published
    calls: list[tuple[str, str]] = field(default_factory=list)

    def _saw(self, method: str, silo: str) -> None:
        self.calls.append((method, silo))

    def join(
        self, silo: str, num_train_tokens: int, tokenizer_digest: str, agent_version: str = ""
    ) -> Admission:
        self._saw("join", silo)
        return Admission(spec_json=b"{}", heartbeat_interval_s=1.0)

    def heartbeat(self, silo: str) -> int:
        self._saw("heartbeat", silo)
        return 0

    def get_task(self, silo: str, wait_s: float) -> TaskDecision:
        self._saw("get_task", silo)
        return TaskDecision(kind="wait", retry_after_s=1.0)

    def download(self, version: int, have_version: int) -> Published | None:
        return self.published if version == self.published.version else None

    def begin_upload(self, silo: str, update: UpdateRecord, offset: int) -> UploadSession:
        self._saw("begin_upload", silo)
        return UploadRegistry(self.spool).open(silo, update, offset)

    def complete_upload(
        self, silo: str, update: UpdateRecord, path: Path, peer_cert: bytes | None = None
    ) -> bool:
        self._saw("complete_upload", silo)
        return True

    def upload_status(self, silo: str, transfer_id: str) -> UploadState:
        self._saw("upload_status", silo)
        return UploadState(0, complete=False, accepted=False)

    def record_traffic(self, round_: int, silo: str, direction: Direction, n_bytes: int) -> None:
        self._saw(f"traffic_{direction}", silo)

    def report_eval(self, silo: str, version: int, loss: float, tokens: int) -> None:
        self._saw("report_eval", silo)

    def leave(self, silo: str, reason: str) -> None:
        self._saw("leave", silo)

    def status(self) -> dict[str, Any]:
        return {"ok": True}


def _nameless_certificate(root: Path, out: Path) -> TLSFiles:
    """A client certificate the federation CA signed, whose subject has no common name."""
    ca_cert, ca_key = load_ca(root)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nobody")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "nameless.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "nameless.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return TLSFiles(cert=out / "nameless.crt", key=out / "nameless.key", ca=root / "ca.crt")


@dataclass
class Served:
    target: str
    handler: RecordingHandler
    root: Path
    server: grpc.Server
    nameless: TLSFiles | None = None

    def channel(self, files: TLSFiles) -> grpc.Channel:
        return grpc.secure_channel(self.target, channel_credentials(files))


def _serve(
    tmp: Path, auth: FederationAuth | None, *, insecure: bool = False, root: Path | None = None
) -> Served:
    blob = bytes(range(256)) * 64
    obj = tmp / "v0.obj"
    obj.write_bytes(blob)
    published = Published(obj, hashlib.sha256(blob).hexdigest(), len(blob), 0, -1)
    handler = RecordingHandler(tmp / "spool", published)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), interceptors=[] if auth is None else [auth]
    )
    servicer = FederationServicer(handler, chunk_bytes=4096, long_poll_s=0.0)
    pb_grpc.add_FederationServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if insecure or root is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port(
            "127.0.0.1:0", server_credentials(TLSFiles.for_aggregator(root))
        )
    server.start()
    return Served(f"127.0.0.1:{port}", handler, root or tmp, server)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("auth")
    root = pki.init_federation(tmp / "certs", silos=3).root
    pki.revocation_path(root).write_text("silo-2\n")
    auth = FederationAuth(insecure=False, revocations=pki.RevocationList(pki.revocation_path(root)))
    s = _serve(tmp, auth, root=root)
    s.nameless = _nameless_certificate(root, tmp / "nameless")
    yield s
    s.server.stop(grace=None)


def _call(
    channel: grpc.Channel, m: MethodDescriptor, metadata: tuple[tuple[str, str], ...] = ()
) -> grpc.StatusCode:
    """Call method `m` with a default request; the status code it ends with."""
    request = getattr(pb, m.input_type.name)()
    reply = getattr(pb, m.output_type.name)
    path = f"/{SERVICE}/{m.name}"
    shape = (m.client_streaming, m.server_streaming)
    build: dict[tuple[bool, bool], Callable[..., Any]] = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }
    stub = build[shape](
        path,
        request_serializer=type(request).SerializeToString,
        response_deserializer=reply.FromString,
    )
    arg = iter([request]) if m.client_streaming else request
    try:
        result = stub(arg, timeout=RPC_TIMEOUT, metadata=metadata)
        if m.server_streaming:
            list(result)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _health(channel: grpc.Channel) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT
    )
    return reply.status


def test_the_service_has_every_rpc_shape_we_wrap() -> None:
    shapes = {(m.client_streaming, m.server_streaming) for m in METHODS}
    assert {(False, False), (False, True), (True, False)} <= shapes


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_every_method_refuses_a_caller_without_identity_or_revoked(
    served: Served, method: MethodDescriptor
) -> None:
    assert served.nameless is not None
    before = len(served.handler.calls)
    with served.channel(served.nameless) as channel:
        # the insecure header means nothing over mTLS
        assert _call(channel, method, ((INSECURE_IDENTITY_KEY, "silo-0"),)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    with served.channel(TLSFiles.for_silo(served.root, "silo-2")) as channel:
        assert _call(channel, method) == grpc.StatusCode.PERMISSION_DENIED
    assert len(served.handler.calls) == before, "a refused caller must never reach the handler"


def test_every_method_runs_as_the_verified_silo(served: Served) -> None:
    with served.channel(TLSFiles.for_silo(served.root, "silo-1")) as channel:
        codes = {m.name: _call(channel, m) for m in METHODS}
    calls = served.handler.calls
    refused = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
    assert not refused & set(codes.values()), codes
    assert codes["Download"] == grpc.StatusCode.OK
    assert {silo for _, silo in calls} == {"silo-1"}
    # Download's body runs while grpc pulls its replies, after the handler returned: the
    # caller is known there, to its last line (traffic is recorded in a `finally`).
    assert ("traffic_down", "silo-1") in calls


def test_health_checks_pass_the_interceptor_untouched(served: Served) -> None:
    assert served.nameless is not None
    serving = health_pb2.HealthCheckResponse.SERVING
    with served.channel(served.nameless) as channel:
        assert _health(channel) == serving
    with served.channel(TLSFiles.for_silo(served.root, "silo-2")) as channel:
        assert _health(channel) == serving


def test_without_the_interceptor_every_method_fails_closed(served: Served, tmp_path: Path) -> None:
    bare = _serve(tmp_path, None, root=served.root)
    try:
        with bare.channel(TLSFiles.for_silo(served.root, "silo-0")) as channel:
            codes = {m.name: _call(channel, m) for m in METHODS}
    finally:
        bare.server.stop(grace=None)
    assert set(codes.values()) == {grpc.StatusCode.PERMISSION_DENIED}, codes
    assert bare.handler.calls == []


def test_insecure_server_takes_the_header_and_needs_it(tmp_path: Path) -> None:
    s = _serve(tmp_path, FederationAuth(insecure=True), insecure=True)
    status = next(m for m in METHODS if m.name == "Status")
    join = next(m for m in METHODS if m.name == "Join")
    try:
        with grpc.insecure_channel(s.target) as channel:
            assert _call(channel, status) == grpc.StatusCode.UNAUTHENTICATED
            assert _call(channel, join, ((INSECURE_IDENTITY_KEY, "op"),)) == grpc.StatusCode.OK
    finally:
        s.server.stop(grace=None)
    assert s.handler.calls == [("join", "op")]


def test_request_rate_is_applied_per_silo_to_every_method(tmp_path: Path) -> None:
    now = [0.0]
    rate = RequestRate(1.0, burst=1, clock=lambda: now[0])
    s = _serve(tmp_path, FederationAuth(insecure=True, rate=rate), insecure=True)
    status = next(m for m in METHODS if m.name == "Status")
    as_a, as_b = ((INSECURE_IDENTITY_KEY, "a"),), ((INSECURE_IDENTITY_KEY, "b"),)
    try:
        with grpc.insecure_channel(s.target) as channel:
            assert _call(channel, status, as_a) == grpc.StatusCode.OK
            assert _call(channel, status, as_a) == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert _call(channel, status, as_b) == grpc.StatusCode.OK
            now[0] += 1.0
            assert _call(channel, status, as_a) == grpc.StatusCode.OK
    finally:
        s.server.stop(grace=None)
