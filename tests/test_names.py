"""Silo names: one strict pattern at issuance and at the aggregator; reserved names; paths."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aggregator.membership import Membership
from aggregator.uploads import UploadRegistry
from photon.errors import NotAuthorized
from photon.names import PathEscape, path_inside, silo_name_problem
from photon.tls import TLSFiles, channel_credentials
from photon.v1 import federation_pb2 as pb
from photon.v1 import federation_pb2_grpc as pb_grpc
from tests.harness import make_federation

ESCAPING = "../../../x"  # spool/r000000/<cn>/ -> outside the state directory


def forge(certs: Path, cn: str, out: Path) -> TLSFiles:
    """A client certificate for `cn` signed by the federation CA with the cryptography
    library directly, as a CA run with other tools would sign it (no Photon name check)."""
    ca_cert = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "c.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "c.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return TLSFiles(cert=out / "c.crt", key=out / "c.key", ca=certs / "ca.crt")


def _upload(stub: pb_grpc.FederationStub) -> None:
    header = pb.UploadHeader(
        transfer_id="t1", round=0, base_version=0, digest="0" * 64, size=10, num_tokens=1
    )
    chunks = [pb.UploadChunk(header=header), pb.UploadChunk(chunk=pb.Chunk(offset=0, data=b"x"))]
    stub.Upload(iter(chunks), timeout=10)


@pytest.mark.parametrize(
    ("cn", "match"), [(ESCAPING, "invalid silo name"), ("aggregator", "reserved")]
)
def test_invalid_or_reserved_identities_signed_by_the_ca_are_refused(
    tmp_path: Path, cn: str, match: str
) -> None:
    fed = make_federation(tmp_path, silos=1, rounds=1)
    files = forge(tmp_path / "certs", cn, tmp_path / "forged")
    before = {p for p in tmp_path.parent.rglob("*") if "aggregator-state" not in p.parts}
    calls = {
        "Join": lambda s: s.Join(pb.JoinRequest(tokenizer_digest=""), timeout=10),
        "GetTask": lambda s: s.GetTask(pb.GetTaskRequest(held_version=-1), timeout=10),
        "Upload": _upload,
        "ReportEval": lambda s: s.ReportEval(
            pb.EvalReport(version=0, loss=0.001, tokens=1), timeout=10
        ),
    }
    try:
        fed.start_aggregator(exit_when_done=False)
        with grpc.secure_channel(f"localhost:{fed.port}", channel_credentials(files)) as ch:
            stub = pb_grpc.FederationStub(ch)
            for name, call in calls.items():
                with pytest.raises(grpc.RpcError) as info:
                    call(stub)
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
                assert match in (info.value.details() or ""), name
    finally:
        fed.stop_all()
    after = {p for p in tmp_path.parent.rglob("*") if "aggregator-state" not in p.parts}
    assert not [p for p in after - before if p.suffix in (".partial", ".upd")]
    assert not (tmp_path / "x").exists()
    assert not list(fed.state_dir.rglob("*.partial"))
    summary = json.loads((fed.state_dir / "summary.json").read_bytes())
    assert 0.001 not in [r.get("eval_loss") for r in summary["rounds"]]
    assert summary.get("final_eval_loss") != 0.001


@pytest.mark.parametrize("name", ["aggregator", "ca", "../x", "a/b", "..", "A", "", "x" * 64])
def test_the_pattern_refuses_reserved_and_path_like_names(name: str) -> None:
    assert silo_name_problem(name) is not None


@pytest.mark.parametrize("name", ["silo-0", "uni-cambridge", "a", "0" * 63])
def test_the_pattern_accepts_ordinary_names(name: str) -> None:
    assert silo_name_problem(name) is None


def test_path_inside_refuses_an_escape(tmp_path: Path) -> None:
    assert path_inside(tmp_path, "r000000", "silo-0", "t.upd") == tmp_path / "r000000/silo-0/t.upd"
    with pytest.raises(PathEscape):
        path_inside(tmp_path, "r000000", "../../x", "t.upd")
    (tmp_path / "link").symlink_to(tmp_path.parent)
    with pytest.raises(PathEscape):
        path_inside(tmp_path, "link", "t.upd")


def test_spool_paths_are_built_from_valid_names_only(tmp_path: Path) -> None:
    registry = UploadRegistry(tmp_path / "spool")
    assert registry.path_for("silo-0", 0, "t1").is_relative_to(tmp_path / "spool")
    for silo in ("../../../x", "aggregator"):
        with pytest.raises(NotAuthorized):
            registry.path_for(silo, 0, "t1")
        with pytest.raises(NotAuthorized):
            registry.committed(silo, "t1")
    assert not (tmp_path / "x").exists()


def test_a_reserved_name_already_in_the_journal_cannot_act(tmp_path: Path) -> None:
    """A journal written before names were checked may list `aggregator` as a member."""
    from aggregator.clocks import Clocks
    from aggregator.config import ServerConfig
    from aggregator.store import Store

    store = Store(tmp_path / "journal.sqlite")
    store.upsert_silo("aggregator", 0.0, "online", 1)
    members = Membership(
        store, Clocks.single(lambda: 1.0), ServerConfig(state_dir=tmp_path, insecure=True)
    )
    with pytest.raises(NotAuthorized, match="reserved"):
        members.touch("aggregator")
    with pytest.raises(NotAuthorized, match="reserved"):
        members.authorize("aggregator")
    store.close()
