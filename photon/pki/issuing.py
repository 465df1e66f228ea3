"""Keys on disk, the federation CA, and the certificates it issues (`init_federation`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from photon.errors import PKIError
from photon.fsutil import atomic_write_bytes
from photon.pki.build import (
    base_builder,
    check_days,
    cn_name,
    key_usage,
    leaf_certificate,
    parse_hosts,
)
from photon.pki.inspect import load_certificate, read_file, same_public_key
from photon.pki.layout import (
    DEFAULT_HOSTS,
    CAKey,
    FederationPaths,
    Kind,
    aggregator_paths,
    ca_paths,
    refuse_overwrite,
    silo_paths,
    target_paths,
    validate_silo_name,
)


def new_key() -> CAKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def write_key(path: Path, key: CAKey) -> None:
    """`key` as unencrypted PKCS#8 PEM, mode 0600."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write_bytes(path, pem, mode=0o600)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    atomic_write_bytes(path, cert.public_bytes(serialization.Encoding.PEM))


def load_ca(ca_dir: Path) -> tuple[x509.Certificate, CAKey]:
    """The federation CA's certificate and key from `ca_dir`, checked to belong together."""
    cert_path, key_path = ca_paths(ca_dir)
    if not key_path.exists():
        raise PKIError(
            f"CA key not found: {key_path}; signing needs the federation CA key, which stays on "
            "the operator's machine (make one with `photon certs init-ca --out DIR`)"
        )
    cert = load_certificate(cert_path)
    try:
        key = serialization.load_pem_private_key(read_file(key_path, "CA key"), password=None)
    except (ValueError, TypeError) as exc:
        raise PKIError(f"{key_path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not same_public_key(cert, key):
        raise PKIError(f"{key_path} is not the key of {cert_path}")
    return cert, key


def init_ca(
    out_dir: Path,
    *,
    name: str = "Photon Federation CA",
    days: int = 3650,
    force: bool = False,
    now: datetime | None = None,
) -> Path:
    """Create the federation CA (ca.crt, ca.key) in `out_dir`; return the certificate's path."""
    cert_path, key_path = ca_paths(Path(out_dir))
    check_days(days)
    refuse_overwrite((cert_path, key_path), force)
    key = new_key()
    cert = (
        base_builder(cn_name(name), key.public_key(), days, now)
        .issuer_name(cn_name(name))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    write_key(key_path, key)
    write_cert(cert_path, cert)
    return cert_path


def _share_ca_cert(out_dir: Path, ca_cert: x509.Certificate, force: bool) -> Path | None:
    """Where to copy ca.crt so `out_dir` is a complete folder for its peer (None: in place)."""
    target = ca_paths(out_dir)[0]
    if target.exists() and target.read_bytes() == ca_cert.public_bytes(serialization.Encoding.PEM):
        return None
    refuse_overwrite((target,), force)
    return target


def issue(
    ca_dir: Path,
    kind: Kind,
    name: str,
    *,
    out_dir: Path | None = None,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 365,
    force: bool = False,
    now: datetime | None = None,
) -> tuple[Path, Path]:
    """Make a key and a CA-signed certificate for the aggregator or a silo: (cert, key).

    They go into `out_dir` (default `ca_dir`) following the layout; when `out_dir` is another
    folder it also gets a copy of ca.crt (never ca.key).
    """
    ca_dir = Path(ca_dir)
    out = Path(out_dir) if out_dir is not None else ca_dir
    cert_path, key_path = target_paths(out, kind, name)
    check_days(days)
    refuse_overwrite((cert_path, key_path), force)
    ca = load_ca(ca_dir)
    share = None if out.resolve() == ca_dir.resolve() else _share_ca_cert(out, ca[0], force)
    key = new_key()
    cert = leaf_certificate(kind, name, key.public_key(), ca, hosts=hosts, days=days, now=now)
    if share is not None:
        write_cert(share, ca[0])
    write_key(key_path, key)
    write_cert(cert_path, cert)
    return cert_path, key_path


def _silo_names(silos: int | Sequence[str]) -> list[str]:
    if isinstance(silos, (bool, str)):
        raise PKIError(f"silos must be a count or a list of names, got {silos!r}")
    if isinstance(silos, int):
        if silos < 0:
            raise PKIError(f"silos must be >= 0, got {silos}")
        return [f"silo-{i}" for i in range(silos)]
    names = [validate_silo_name(n) for n in silos]
    if len(set(names)) != len(names):
        raise PKIError(f"silo names must be unique, got {names}")
    return names


def init_federation(
    out_dir: Path,
    *,
    silos: int | Sequence[str],
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 365,
    force: bool = False,
    now: datetime | None = None,
) -> FederationPaths:
    """A CA, the aggregator's certificate and one per silo (silo-0.. when `silos` is a count)."""
    root = Path(out_dir)
    names = _silo_names(silos)
    parse_hosts(hosts)
    check_days(days)
    silo_files = {n: silo_paths(root, n) for n in names}
    targets = [
        *ca_paths(root),
        *aggregator_paths(root),
        *(p for f in silo_files.values() for p in f),
    ]
    refuse_overwrite(targets, force)
    init_ca(root, days=max(days, 3650), force=True, now=now)
    issue(root, "aggregator", "aggregator", hosts=hosts, days=days, force=True, now=now)
    for n in names:
        issue(root, "silo", n, days=days, force=True, now=now)
    ca_cert, ca_key = ca_paths(root)
    agg_cert, agg_key = aggregator_paths(root)
    return FederationPaths(
        root=root,
        ca_cert=ca_cert,
        ca_key=ca_key,
        aggregator_cert=agg_cert,
        aggregator_key=agg_key,
        silos=silo_files,
    )
