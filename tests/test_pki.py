"""Certificate provisioning: layout, extensions, the CSR flow, checks, revocation, the CLI."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from photon import pki
from photon.cli.certs import certs
from photon.errors import PKIError
from photon.names import RESERVED_NAMES

NOW = datetime.now(timezone.utc)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def fed(tmp_path: Path) -> pki.FederationPaths:
    return pki.init_federation(tmp_path / "fed", silos=3)


# --- layout and extensions ----------------------------------------------------------------


def test_init_federation_writes_the_documented_layout(fed: pki.FederationPaths) -> None:
    root = fed.root
    assert (fed.ca_cert, fed.ca_key) == (root / "ca.crt", root / "ca.key")
    assert (fed.aggregator_cert, fed.aggregator_key) == pki.aggregator_paths(root)
    assert sorted(fed.silos) == ["silo-0", "silo-1", "silo-2"]
    assert fed.silos["silo-2"] == (root / "silos/silo-2.crt", root / "silos/silo-2.key")
    keys = [fed.ca_key, fed.aggregator_key, *(k for _, k in fed.silos.values())]
    assert all(mode(k) == 0o600 for k in keys)


def test_silo_certificate_is_a_client_cert_named_after_the_silo(
    fed: pki.FederationPaths,
) -> None:
    info = pki.show(fed.silos["silo-1"][0])
    assert info["subject_cn"] == "silo-1"
    assert info["eku"] == ["clientAuth"]
    assert info["sans"] == ["DNS:silo-1.silo.photon"]
    assert info["is_ca"] is False
    assert info["issuer"] == "CN=Photon Federation CA"
    ca_pem = fed.ca_cert.read_bytes()
    assert pki.check_certificate(fed.silos["silo-1"][0].read_bytes(), ca_pem) == "silo-1"


def test_aggregator_certificate_is_a_server_cert_with_host_sans(tmp_path: Path) -> None:
    fed = pki.init_federation(tmp_path, silos=0, hosts=("agg.example.org", "10.0.0.7"))
    info = pki.show(fed.aggregator_cert)
    assert info["eku"] == ["serverAuth"]
    assert info["sans"] == ["DNS:agg.example.org", "IP:10.0.0.7"]
    assert pki.show(pki.aggregator_paths(tmp_path)[0])["subject_cn"] == "aggregator"
    assert fed.silos == {}


def test_show_reports_serial_validity_and_fingerprint(fed: pki.FederationPaths) -> None:
    cert = pki.load_certificate(fed.ca_cert)
    info = pki.show(fed.ca_cert)
    assert info["is_ca"] is True
    assert int(str(info["serial"]), 16) == cert.serial_number
    assert datetime.fromisoformat(str(info["not_after"])) - NOW > timedelta(days=3640)
    assert datetime.fromisoformat(str(info["not_before"])) < NOW
    digest = cert.fingerprint(hashes.SHA256())
    assert str(info["sha256"]).replace(":", "").lower() == digest.hex()


def test_default_hosts_cover_loopback(fed: pki.FederationPaths) -> None:
    sans = pki.show(fed.aggregator_cert)["sans"]
    assert sans == ["DNS:localhost", "IP:127.0.0.1", "IP:::1"]


def test_named_silos_and_bad_silo_lists(tmp_path: Path) -> None:
    fed = pki.init_federation(tmp_path / "a", silos=["uni-a", "lab-7"])
    assert sorted(fed.silos) == ["lab-7", "uni-a"]
    for bad, match in [
        (["a", "a"], "unique"),
        (["Uni_A"], "invalid silo name"),
        ("uni-a", "count or a list"),
        (True, "count or a list"),
        (-1, ">= 0"),
    ]:
        with pytest.raises(PKIError, match=match):
            pki.init_federation(tmp_path / "b", silos=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("host", ["", "bad host", "-x.org", "a..b", "é.org"])
def test_invalid_hosts_are_rejected_before_anything_is_written(tmp_path: Path, host: str) -> None:
    with pytest.raises(PKIError, match="host"):
        pki.init_federation(tmp_path, silos=1, hosts=(host,))
    assert not (tmp_path / "ca.key").exists()


def test_an_aggregator_needs_a_host(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="at least one host"):
        pki.init_federation(tmp_path, silos=1, hosts=())


# --- overwrite protection -----------------------------------------------------------------


def test_nothing_is_overwritten_without_force(fed: pki.FederationPaths) -> None:
    before = {p: p.read_bytes() for p in fed.root.rglob("*") if p.is_file()}
    with pytest.raises(PKIError, match=r"ca\.crt already exists.*--force"):
        pki.init_federation(fed.root, silos=3)
    with pytest.raises(PKIError, match=r"silo-0\.crt already exists.*--force"):
        pki.issue(fed.root, "silo", "silo-0")
    with pytest.raises(PKIError, match="--force"):
        pki.init_ca(fed.root)
    assert {p: p.read_bytes() for p in fed.root.rglob("*") if p.is_file()} == before
    pki.issue(fed.root, "silo", "silo-0", force=True)
    assert fed.silos["silo-0"][0].read_bytes() != before[fed.silos["silo-0"][0]]
    assert mode(fed.silos["silo-0"][1]) == 0o600


def test_a_refused_init_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "silos").mkdir()
    (tmp_path / "silos/silo-1.key").write_text("someone's key")
    with pytest.raises(PKIError, match=r"silo-1\.key"):
        pki.init_federation(tmp_path, silos=2)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["silo-1.key", "silos"]


def test_issue_into_another_folder_ships_ca_cert_but_not_ca_key(
    fed: pki.FederationPaths, tmp_path: Path
) -> None:
    out = tmp_path / "for-uni-a"
    cert, key = pki.issue(fed.root, "silo", "uni-a", out_dir=out)
    assert (cert, key) == pki.silo_paths(out, "uni-a")
    assert (out / "ca.crt").read_bytes() == fed.ca_cert.read_bytes()
    assert not (out / "ca.key").exists()
    pki.issue(fed.root, "silo", "uni-b", out_dir=out)  # same CA: fine
    other = pki.init_federation(tmp_path / "other", silos=0)
    with pytest.raises(PKIError, match=r"ca\.crt already exists"):
        pki.issue(other.root, "silo", "uni-c", out_dir=out)
    assert not pki.silo_paths(out, "uni-c")[0].exists()


def test_issue_without_the_ca_key_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="init-ca"):
        pki.issue(tmp_path, "silo", "uni-a")


def test_issue_checks_kind_name_and_days(fed: pki.FederationPaths) -> None:
    with pytest.raises(PKIError, match="invalid silo name"):
        pki.issue(fed.root, "silo", "UNI")
    with pytest.raises(PKIError, match="kind"):
        pki.issue(fed.root, "router", "r1")  # type: ignore[arg-type]
    with pytest.raises(PKIError, match="days"):
        pki.issue(fed.root, "silo", "uni-z", days=0)


# --- CSR flow -----------------------------------------------------------------------------


def test_request_then_sign(fed: pki.FederationPaths, tmp_path: Path) -> None:
    key_path, csr_path = pki.request("uni-a", tmp_path / "silo")
    assert key_path == pki.silo_paths(tmp_path / "silo", "uni-a")[1]
    assert mode(key_path) == 0o600
    cert_path = pki.sign(fed.root, csr_path)
    assert cert_path == pki.silo_paths(fed.root, "uni-a")[0]
    cert = pki.load_certificate(cert_path)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert pki.same_public_key(cert, key)
    assert pki.check_certificate(cert_path.read_bytes(), fed.ca_cert.read_bytes()) == "uni-a"
    assert pki.show(cert_path)["eku"] == ["clientAuth"]
    with pytest.raises(PKIError, match="--force"):
        pki.sign(fed.root, csr_path)
    with pytest.raises(PKIError, match="--force"):
        pki.request("uni-a", tmp_path / "silo")


def _csr(cn: str | None, *, sans: list[x509.GeneralName] | None = None) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("pem", "match"),
    [
        (_csr("Not_A_Silo"), "invalid silo name"),
        (_csr("../../x"), "invalid silo name"),
        (_csr("aggregator"), "reserved"),
        (_csr(None), "no common name"),
        (b"not a csr", "not a PEM certificate signing request"),
    ],
)
def test_sign_rejects_bad_csrs(
    fed: pki.FederationPaths, tmp_path: Path, pem: bytes, match: str
) -> None:
    csr = tmp_path / "x.csr"
    csr.write_bytes(pem)
    with pytest.raises(PKIError, match=match):
        pki.sign(fed.root, csr)


def test_sign_rejects_a_tampered_csr(fed: pki.FederationPaths, tmp_path: Path) -> None:
    _, csr_path = pki.request("uni-a", tmp_path)
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    at = der.find(b"uni-a")
    der[at : at + 5] = b"uni-b"  # same length: the structure parses, the signature breaks
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    csr_path.write_bytes(tampered)
    with pytest.raises(PKIError, match="signature is invalid"):
        pki.sign(fed.root, csr_path)


def test_sign_aggregator_csr_takes_only_its_sans(fed: pki.FederationPaths, tmp_path: Path) -> None:
    csr = tmp_path / "agg.csr"
    csr.write_bytes(_csr("agg.example.org", sans=[x509.DNSName("agg.example.org")]))
    out = pki.sign(fed.root, csr, kind="aggregator", out=tmp_path / "agg.crt", days=30)
    info = pki.show(out)
    assert (info["eku"], info["sans"]) == (["serverAuth"], ["DNS:agg.example.org"])
    csr.write_bytes(_csr("agg.example.org"))
    with pytest.raises(PKIError, match="subjectAltNames"):
        pki.sign(fed.root, csr, kind="aggregator", out=tmp_path / "agg2.crt")


# --- checks -------------------------------------------------------------------------------


def test_check_certificate_refuses_a_foreign_ca(fed: pki.FederationPaths, tmp_path: Path) -> None:
    other = pki.init_federation(tmp_path / "other", silos=1)
    foreign = other.silos["silo-0"][0].read_bytes()
    with pytest.raises(PKIError, match=r"^not signed by the federation CA"):
        pki.check_certificate(foreign, fed.ca_cert.read_bytes())


def test_check_certificate_validity_window(fed: pki.FederationPaths, tmp_path: Path) -> None:
    cert = fed.silos["silo-0"][0].read_bytes()
    ca = fed.ca_cert.read_bytes()
    with pytest.raises(PKIError, match=r"^expired"):
        pki.check_certificate(cert, ca, now=NOW + timedelta(days=366))
    with pytest.raises(PKIError, match=r"^not yet valid.*clock"):
        pki.check_certificate(cert, ca, now=NOW - timedelta(days=1))

    past = NOW - timedelta(days=10)
    old = pki.init_federation(tmp_path / "old", silos=1, days=2, now=past)
    old_ca = old.ca_cert.read_bytes()
    old_cert = old.silos["silo-0"][0].read_bytes()
    with pytest.raises(PKIError, match=r"^expired: certificate CN=silo-0"):
        pki.check_certificate(old_cert, old_ca)
    assert pki.check_certificate(old_cert, old_ca, now=past + timedelta(days=1)) == "silo-0"
    young_ca = pki.init_federation(tmp_path / "young", silos=0).ca_cert.read_bytes()
    with pytest.raises(PKIError, match=r"^not yet valid: the federation CA"):
        pki.check_certificate(
            pki.issue(tmp_path / "young", "silo", "s", now=past)[0].read_bytes(),
            young_ca,
            now=past,
        )


def test_check_certificate_refuses_garbage(fed: pki.FederationPaths) -> None:
    with pytest.raises(PKIError, match=r"not a PEM X.509 certificate"):
        pki.check_certificate(b"garbage", fed.ca_cert.read_bytes())


# --- revocation ---------------------------------------------------------------------------


def test_revocation_by_serial_and_by_name_takes_effect_without_restart(
    fed: pki.FederationPaths,
) -> None:
    path = pki.revocation_path(fed.root)
    revoked = pki.RevocationList(path)
    cert0 = pki.load_certificate(fed.silos["silo-0"][0])
    pem1 = fed.silos["silo-1"][0].read_bytes()
    assert not revoked.is_revoked(cert0)  # no file: nothing revoked
    path.write_text(f"# revoked by the operator\n{cert0.serial_number:X}  # lost laptop\n\n")
    assert revoked.is_revoked(cert0)
    assert revoked.is_revoked(cert0.serial_number)
    assert revoked.is_revoked(format(cert0.serial_number, "x"))
    assert not revoked.is_revoked(pem1)
    path.write_text("silo-1\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse-grained file systems
    assert revoked.is_revoked(pem1)
    assert revoked.is_revoked("silo-1")
    assert not revoked.is_revoked(cert0)
    path.unlink()
    assert not revoked.is_revoked(pem1)


@settings(max_examples=50)
@given(
    serial=st.integers(min_value=1, max_value=2**159 - 1),
    upper=st.booleans(),
    style=st.sampled_from(["plain", "0x", "colons"]),
)
def test_parse_serial_reads_every_common_spelling(serial: int, upper: bool, style: str) -> None:
    text = format(serial, "x")
    if style == "0x":
        text = "0x" + text
    elif style == "colons":
        text = bytes.fromhex(text.zfill(len(text) + len(text) % 2)).hex(":")
    assert pki.parse_serial(text.upper() if upper else text) == serial


def test_parse_serial_rejects_non_hex() -> None:
    assert pki.parse_serial("silo-1") is None
    assert pki.parse_serial("") is None


# --- names (properties) -------------------------------------------------------------------


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.from_regex(pki.SILO_NAME_RE, fullmatch=True).filter(lambda n: n not in RESERVED_NAMES)
)
def test_any_valid_silo_name_round_trips_through_issue_and_show(
    fed: pki.FederationPaths, name: str
) -> None:
    cert, _ = pki.issue(fed.root, "silo", name, force=True)
    info = pki.show(cert)
    assert info["subject_cn"] == name
    assert info["sans"] == [f"DNS:{name}.silo.photon"]


@settings(max_examples=50)
@given(name=st.text(max_size=70))
def test_names_outside_the_pattern_are_rejected(name: str) -> None:
    if name in RESERVED_NAMES:
        with pytest.raises(PKIError, match="reserved"):
            pki.validate_silo_name(name)
    elif pki.SILO_NAME_RE.fullmatch(name):
        assert pki.validate_silo_name(name) == name
    else:
        with pytest.raises(PKIError, match="invalid silo name"):
            pki.validate_silo_name(name)


# --- CLI ----------------------------------------------------------------------------------


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(certs, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_cli_init_issue_show(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    code, text = run("init", "--silos", "2", "--out", str(out), "--host", "agg.local")
    assert code == 0, text
    assert "silo silo-1" in text
    assert pki.show(out / "aggregator.crt")["sans"] == ["DNS:agg.local"]
    code, text = run("issue", "silo", "uni-a", "--ca", str(out), "--out", str(tmp_path / "a"))
    assert code == 0, text
    assert mode(tmp_path / "a/silos/uni-a.key") == 0o600
    code, text = run("show", str(out / "silos/silo-0.crt"), "--ca", str(out))
    assert code == 0, text
    assert "subject_cn:  silo-0" in text
    assert "eku:         clientAuth" in text
    assert "verified:    yes" in text
    code, text = run("show", str(out / "silos/silo-0.crt"), "--json")
    assert json.loads(text) == pki.show(out / "silos/silo-0.crt")


@pytest.mark.parametrize(("name", "match"), [("aggregator", "reserved"), ("../../x", "invalid")])
def test_cli_issue_refuses_reserved_and_path_like_silo_names(
    tmp_path: Path, name: str, match: str
) -> None:
    out = tmp_path / "certs"
    assert run("init", "--silos", "1", "--out", str(out))[0] == 0
    code, text = run("issue", "silo", name, "--ca", str(out), "--out", str(tmp_path / "o"))
    assert code != 0
    assert match in text
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.crt"))
    assert not (tmp_path / "x.crt").exists()


def test_cli_init_with_names_and_init_ca(tmp_path: Path) -> None:
    code, text = run("init", "--silos", "uni-a,uni-b", "--out", str(tmp_path / "f"))
    assert code == 0, text
    assert sorted(p.name for p in (tmp_path / "f/silos").iterdir()) == [
        "uni-a.crt",
        "uni-a.key",
        "uni-b.crt",
        "uni-b.key",
    ]
    code, text = run("init-ca", "--out", str(tmp_path / "ca"), "--name", "Test CA")
    assert code == 0, text
    assert pki.show(tmp_path / "ca/ca.crt")["issuer"] == "CN=Test CA"
    assert mode(tmp_path / "ca/ca.key") == 0o600


def test_cli_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = str(tmp_path)
    assert run("init", "--silos", "1", "--out", out)[0] == 0
    key = tmp_path / "silos/silo-0.key"
    before = key.read_bytes()
    code, text = run("init", "--silos", "1", "--out", out)
    assert code == 1
    assert "--force" in text and "ca.crt" in text
    assert "Traceback" not in text
    assert key.read_bytes() == before
    code, text = run("init", "--silos", "1", "--out", out, "--force")
    assert code == 0, text
    assert key.read_bytes() != before
    assert mode(key) == 0o600


def test_cli_csr_flow_and_sign_errors(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    assert run("init", "--silos", "0", "--out", str(ca))[0] == 0
    code, text = run("request", "uni-a", "--out", str(tmp_path / "silo"))
    assert code == 0, text
    assert "stays on this machine" in text
    csr = tmp_path / "silo/silos/uni-a.csr"
    code, text = run("sign", str(csr), "--ca", str(ca), "--out", str(tmp_path / "uni-a.crt"))
    assert code == 0, text
    assert pki.show(tmp_path / "uni-a.crt")["subject_cn"] == "uni-a"
    code, text = run("sign", str(csr), "--ca", str(tmp_path / "silo"))
    assert code == 1
    assert "CA key not found" in text


def test_cli_show_fails_for_a_foreign_certificate(tmp_path: Path) -> None:
    a = pki.init_federation(tmp_path / "a", silos=1)
    b = pki.init_federation(tmp_path / "b", silos=0)
    code, text = run("show", str(a.silos["silo-0"][0]), "--ca", str(b.ca_cert))
    assert code == 1
    assert "subject_cn:  silo-0" in text  # still shows what it is
    assert "not signed by the federation CA" in text


def test_cli_bad_input_is_a_clean_error(tmp_path: Path) -> None:
    code, text = run("issue", "silo", "Bad Name", "--ca", str(tmp_path))
    assert code == 1
    assert "invalid silo name" in text
    assert run("show", str(tmp_path / "none.crt"))[0] == 1


@pytest.mark.parametrize("command", ["init", "init-ca", "issue", "request", "sign", "show"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    code, text = run(command, "--help")
    assert code == 0
    assert "Example" in text
