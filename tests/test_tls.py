"""mTLS over a real gRPC server on loopback: who gets in, who is refused, who the server sees."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from photon import pki
from photon.cli.certs import certs
from photon.errors import PKIError
from photon.tls import (
    TLSFiles,
    channel_credentials,
    peer_certificate_pem,
    peer_identity,
    server_credentials,
)

RPC_TIMEOUT = 20.0  # a safety net against hangs, not an assertion about speed


class RecordingHealth(health.HealthServicer):
    """The standard health service, remembering who called it."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: list[tuple[str | None, bytes | None]] = []

    def Check(self, request, context):  # gRPC method name
        self.peers.append((peer_identity(context), peer_certificate_pem(context)))
        return super().Check(request, context)


@dataclass
class Server:
    port: int
    health: RecordingHealth
    certs: Path
    target: str = field(init=False)

    def __post_init__(self) -> None:
        self.target = f"127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> pki.FederationPaths:
    return pki.init_federation(tmp_path_factory.mktemp("fed"), silos=2)


@pytest.fixture(scope="module")
def server(federation: pki.FederationPaths) -> Iterator[Server]:
    servicer = RecordingHealth()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, srv)
    port = srv.add_secure_port(
        "127.0.0.1:0", server_credentials(TLSFiles.for_aggregator(federation.root))
    )
    srv.start()
    yield Server(port=port, health=servicer, certs=federation.root)
    srv.stop(grace=None)


def check(target: str, creds: grpc.ChannelCredentials | None, **options: str) -> int:
    opts = list(options.items())
    with (
        grpc.secure_channel(target, creds, options=opts)
        if creds is not None
        else grpc.insecure_channel(target)
    ) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT)
        return int(reply.status)


def assert_refused(target: str, creds: grpc.ChannelCredentials | None) -> None:
    with pytest.raises(grpc.RpcError) as info:
        check(target, creds)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_federation_silo_connects_and_server_sees_its_name(server: Server) -> None:
    before = len(server.health.peers)
    creds = channel_credentials(TLSFiles.for_silo(server.certs, "silo-1"))
    assert check(server.target, creds) == health_pb2.HealthCheckResponse.SERVING
    name, pem = server.health.peers[before]
    assert name == "silo-1"
    assert pem is not None
    cert = x509.load_pem_x509_certificate(pem)
    expected = pki.load_certificate(pki.silo_paths(server.certs, "silo-1")[0])
    assert cert.serial_number == expected.serial_number
    assert pki.RevocationList(server.certs / "revoked.txt").is_revoked(pem) is False


def test_connecting_by_dns_name_checks_the_dns_san(server: Server) -> None:
    creds = channel_credentials(TLSFiles.for_silo(server.certs, "silo-0"))
    assert check(f"localhost:{server.port}", creds) == health_pb2.HealthCheckResponse.SERVING


def test_target_name_override_must_match_a_san(server: Server) -> None:
    creds = channel_credentials(TLSFiles.for_silo(server.certs, "silo-0"))
    ok = {"grpc.ssl_target_name_override": "localhost"}
    assert check(server.target, creds, **ok) == health_pb2.HealthCheckResponse.SERVING
    wrong = {"grpc.ssl_target_name_override": "evil.example.org"}
    with pytest.raises(grpc.RpcError) as info:
        check(server.target, creds, **wrong)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_client_is_refused(server: Server) -> None:
    assert_refused(server.target, None)


def test_client_without_certificate_is_refused(server: Server) -> None:
    ca = (server.certs / "ca.crt").read_bytes()
    assert_refused(server.target, grpc.ssl_channel_credentials(root_certificates=ca))


def test_client_from_another_federation_is_refused(server: Server, tmp_path: Path) -> None:
    other = pki.init_federation(tmp_path / "other", silos=["silo-1"])
    cert, key = other.silos["silo-1"]
    creds = grpc.ssl_channel_credentials(
        root_certificates=(server.certs / "ca.crt").read_bytes(),  # trusts the real server
        private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes(),
    )
    assert_refused(server.target, creds)


def test_expired_silo_certificate_is_refused(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "expired"
    past = datetime.now(timezone.utc) - timedelta(days=30)
    pki.issue(server.certs, "silo", "old-silo", out_dir=out, days=1, now=past)
    files = TLSFiles.for_silo(out, "old-silo")
    with pytest.raises(PKIError, match=r"^expired"):
        pki.check_certificate(files.cert.read_bytes(), files.ca.read_bytes())
    assert_refused(server.target, channel_credentials(files))


def test_silo_refuses_an_aggregator_from_another_federation(server: Server, tmp_path: Path) -> None:
    other = pki.init_federation(tmp_path / "other", silos=1)
    assert_refused(server.target, channel_credentials(TLSFiles.for_silo(other.root, "silo-0")))


def test_csr_flow_end_to_end_over_mtls(server: Server, tmp_path: Path) -> None:
    """request on the silo -> sign on the operator -> the silo's own key works."""
    silo_dir = tmp_path / "silo"
    runner = CliRunner()
    result = runner.invoke(certs, ["request", "uni-a", "--out", str(silo_dir)])
    assert result.exit_code == 0, result.output
    csr = silo_dir / "silos" / "uni-a.csr"
    signed = tmp_path / "inbox" / "uni-a.crt"
    args = ["sign", str(csr), "--ca", str(server.certs), "--out", str(signed)]
    result = runner.invoke(certs, args)
    assert result.exit_code == 0, result.output
    # The operator sends back the certificate and ca.crt; nothing else crosses.
    (silo_dir / "silos" / "uni-a.crt").write_bytes(signed.read_bytes())
    (silo_dir / "ca.crt").write_bytes((server.certs / "ca.crt").read_bytes())
    before = len(server.health.peers)
    creds = channel_credentials(TLSFiles.for_silo(silo_dir, "uni-a"))
    assert check(server.target, creds) == health_pb2.HealthCheckResponse.SERVING
    assert server.health.peers[before][0] == "uni-a"


def test_for_aggregator_names_the_missing_file_and_the_command(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match=r"aggregator\.crt.*photon certs"):
        TLSFiles.for_aggregator(tmp_path)


def test_for_silo_explains_each_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match=r"silos/uni-a\.crt.*photon certs sign"):
        TLSFiles.for_silo(tmp_path, "uni-a")
    pki.request("uni-a", tmp_path)
    (tmp_path / "silos" / "uni-a.key").unlink()
    (tmp_path / "silos" / "uni-a.crt").write_text("placeholder")
    with pytest.raises(PKIError, match=r"uni-a\.key.*photon certs request uni-a"):
        TLSFiles.for_silo(tmp_path, "uni-a")
    with pytest.raises(PKIError, match="invalid silo name"):
        TLSFiles.for_silo(tmp_path, "../etc")


def test_for_silo_without_ca_says_where_to_get_it(tmp_path: Path) -> None:
    fed = pki.init_federation(tmp_path, silos=1)
    fed.ca_cert.unlink()
    with pytest.raises(PKIError, match=r"ca\.crt.*operator"):
        TLSFiles.for_silo(tmp_path, "silo-0")


def test_mismatched_key_is_caught_before_grpc_sees_it(tmp_path: Path) -> None:
    fed = pki.init_federation(tmp_path, silos=2)
    files = TLSFiles.for_silo(tmp_path, "silo-0")
    files.key = fed.silos["silo-1"][1]
    with pytest.raises(PKIError, match="is not the key of"):
        channel_credentials(files)


def test_peer_identity_is_none_without_tls() -> None:
    class Plain:
        def auth_context(self) -> dict[str, list[bytes]]:
            return {"transport_security_type": [b"insecure"]}

    assert peer_identity(Plain()) is None
    assert peer_certificate_pem(Plain()) is None
