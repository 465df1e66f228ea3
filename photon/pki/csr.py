"""The CSR flow: a silo makes its key and a request (`request`); the operator signs it (`sign`).

The silo's key never leaves the silo; only the .csr and the signed .crt travel.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from photon.errors import PKIError
from photon.fsutil import atomic_write_bytes
from photon.pki.build import check_days, cn_name, leaf_certificate
from photon.pki.inspect import common_name, read_file
from photon.pki.issuing import load_ca, new_key, write_cert, write_key
from photon.pki.layout import SILO_SAN_SUFFIX, Kind, refuse_overwrite, silo_paths, target_paths


def request(name: str, out_dir: Path, *, force: bool = False) -> tuple[Path, Path]:
    """On a silo: make its key and a CSR for it under `out_dir`/silos/; return (key, csr).

    The key never leaves the silo; send the .csr to the operator, who runs `sign`.
    """
    _, key_path = silo_paths(Path(out_dir), name)
    csr_path = key_path.with_suffix(".csr")
    refuse_overwrite((key_path, csr_path), force)
    key = new_key()
    san = x509.SubjectAlternativeName([x509.DNSName(name + SILO_SAN_SUFFIX)])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(cn_name(name))
        .add_extension(san, critical=False)
        .sign(key, hashes.SHA256())
    )
    write_key(key_path, key)
    atomic_write_bytes(csr_path, csr.public_bytes(serialization.Encoding.PEM))
    return key_path, csr_path


def _load_csr(path: Path) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(read_file(path, "CSR"))
    except ValueError as exc:
        raise PKIError(f"{path} is not a PEM certificate signing request: {exc}") from exc
    if not csr.is_signature_valid:
        raise PKIError(f"{path}: the CSR's signature is invalid (corrupted or tampered with)")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        strong = key.curve.name in ("secp256r1", "secp384r1")
    else:
        strong = isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048
    if not strong:
        raise PKIError(f"{path}: the CSR's key must be ECDSA P-256/P-384 or RSA >= 2048 bits")
    return csr


def _csr_hosts(csr: x509.CertificateSigningRequest, path: Path) -> list[str]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PKIError(
            f"{path}: an aggregator CSR must carry DNS/IP subjectAltNames; "
            "or use `photon certs issue aggregator NAME --host H`"
        ) from None
    dns = san.get_values_for_type(x509.DNSName)
    return [*dns, *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def sign(
    ca_dir: Path,
    csr_path: Path,
    *,
    kind: Kind = "silo",
    days: int = 365,
    out: Path | None = None,
    force: bool = False,
    now: datetime | None = None,
) -> Path:
    """On the operator's machine: sign a CSR with the federation CA; return the certificate.

    The CSR's signature, key and common name are checked; the certificate's extensions are
    ours, not the CSR's (an aggregator CSR contributes only its DNS/IP SANs). The default
    `out` is the certificate's place in `ca_dir`'s layout.
    """
    csr_path = Path(csr_path)
    csr = _load_csr(csr_path)
    name = common_name(csr.subject)
    if name is None:
        raise PKIError(f"{csr_path}: the CSR has no common name (CN)")
    try:
        target = target_paths(Path(ca_dir), kind, name)[0]
    except PKIError as exc:
        raise PKIError(f"{csr_path}: {exc}") from None
    out = Path(out) if out is not None else target
    check_days(days)
    refuse_overwrite((out,), force)
    ca = load_ca(Path(ca_dir))
    hosts = _csr_hosts(csr, csr_path) if kind == "aggregator" else []
    cert = leaf_certificate(kind, name, csr.public_key(), ca, hosts=hosts, days=days, now=now)
    write_cert(out, cert)
    return out
