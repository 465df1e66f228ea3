"""Reading certificates back: parsing, the fields a person checks, and validity checks."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from photon.errors import PKIError
from photon.pki.build import utc_now

_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
}


def read_file(path: Path, what: str) -> bytes:
    """The bytes of `path`; PKIError naming `what` when it is missing or unreadable."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise PKIError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise PKIError(f"cannot read {what} {path}: {exc.strerror}") from exc


def parse_certificate(pem: bytes, what: str = "certificate") -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise PKIError(f"{what} is not a PEM X.509 certificate: {exc}") from exc


def load_certificate(path: Path) -> x509.Certificate:
    return parse_certificate(read_file(path, "certificate"), f"certificate {path}")


def common_name(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def same_public_key(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    """Whether private `key` belongs to `cert`."""
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    mine = key.public_key().public_bytes(der, spki)
    return bool(mine == cert.public_key().public_bytes(der, spki))


def _sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    dns = [f"DNS:{v}" for v in san.get_values_for_type(x509.DNSName)]
    return dns + [f"IP:{v}" for v in san.get_values_for_type(x509.IPAddress)]


def _ekus(cert: x509.Certificate) -> list[str]:
    try:
        ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return []
    return [_EKU_NAMES.get(oid, oid.dotted_string) for oid in ekus]


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def describe(cert: x509.Certificate) -> dict[str, object]:
    """The fields a person checks: subject CN, issuer, serial, validity, SANs, EKU, SHA-256."""
    return {
        "subject_cn": common_name(cert.subject),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sans": _sans(cert),
        "eku": _ekus(cert),
        "is_ca": _is_ca(cert),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(":").upper(),
    }


def show(cert_path: Path) -> dict[str, object]:
    """`describe` the certificate stored at `cert_path`."""
    return describe(load_certificate(Path(cert_path)))


def _check_window(cert: x509.Certificate, label: str, when: datetime) -> None:
    if when > cert.not_valid_after_utc:
        raise PKIError(
            f"expired: {label} was valid until {cert.not_valid_after_utc.isoformat()}; "
            "issue a new one (`photon certs issue ...` or `photon certs sign ...`)"
        )
    if when < cert.not_valid_before_utc:
        raise PKIError(
            f"not yet valid: {label} is valid from {cert.not_valid_before_utc.isoformat()}; "
            "check this machine's clock"
        )


def check_certificate(cert_pem: bytes, ca_pem: bytes, *, now: datetime | None = None) -> str:
    """The CN of `cert_pem` after checking that the CA signed it and both are within validity."""
    cert = parse_certificate(cert_pem)
    ca = parse_certificate(ca_pem, "CA certificate")
    cn = common_name(cert.subject)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise PKIError(
            f"not signed by the federation CA: certificate CN={cn} was issued by "
            f"{cert.issuer.rfc4514_string()!r}, the federation CA is "
            f"{ca.subject.rfc4514_string()!r} (or its signature does not verify)"
        ) from exc
    when = utc_now(now)
    _check_window(cert, f"certificate CN={cn}", when)
    _check_window(ca, "the federation CA certificate", when)
    if cn is None:
        raise PKIError("certificate has no common name (CN), so it names no peer")
    return cn
