"""Where a federation's certificates live, and what names they may carry.

See `photon.pki` for the folder layout. Every path helper validates the name it is given.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

from cryptography.hazmat.primitives.asymmetric import ec

from photon.errors import PKIError
from photon.names import silo_name_problem

Kind = Literal["aggregator", "silo"]
CAKey: TypeAlias = ec.EllipticCurvePrivateKey

DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
SILO_SAN_SUFFIX = ".silo.photon"
_AGGREGATOR_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def validate_silo_name(name: str) -> str:
    """Return `name` if it may be a silo's identity (`photon.names`), else PKIError."""
    problem = silo_name_problem(name)
    if problem is not None:
        raise PKIError(problem)
    return name


def check_name(kind: Kind, name: str) -> None:
    """PKIError unless `name` is valid for a certificate of `kind`."""
    if kind == "silo":
        validate_silo_name(name)
    elif kind == "aggregator":
        if not _AGGREGATOR_NAME_RE.fullmatch(name):
            raise PKIError(f"invalid aggregator name {name!r}: use letters, digits, '.', '_', '-'")
    else:
        raise PKIError(f"unknown certificate kind {kind!r}: use 'aggregator' or 'silo'")


def ca_paths(certs_dir: Path) -> tuple[Path, Path]:
    """(certificate, key) of the federation CA inside `certs_dir`."""
    return Path(certs_dir) / "ca.crt", Path(certs_dir) / "ca.key"


def aggregator_paths(certs_dir: Path) -> tuple[Path, Path]:
    """(certificate, key) of the aggregator inside `certs_dir`."""
    return Path(certs_dir) / "aggregator.crt", Path(certs_dir) / "aggregator.key"


def silo_paths(certs_dir: Path, name: str) -> tuple[Path, Path]:
    """(certificate, key) of silo `name` inside `certs_dir`; the name is validated."""
    folder = Path(certs_dir) / "silos"
    validate_silo_name(name)
    return folder / f"{name}.crt", folder / f"{name}.key"


def target_paths(certs_dir: Path, kind: Kind, name: str) -> tuple[Path, Path]:
    """(certificate, key) of the `kind` peer `name` inside `certs_dir`; the name is validated."""
    check_name(kind, name)
    return aggregator_paths(certs_dir) if kind == "aggregator" else silo_paths(certs_dir, name)


def revocation_path(certs_dir: Path) -> Path:
    return Path(certs_dir) / "revoked.txt"


def refuse_overwrite(paths: Iterable[Path], force: bool) -> None:
    """PKIError naming the first of `paths` that exists, unless `force`."""
    if force:
        return
    for path in paths:
        if path.exists():
            raise PKIError(f"{path} already exists; pass --force (force=True) to overwrite it")


@dataclass(frozen=True, slots=True, kw_only=True)
class FederationPaths:
    """Where `init_federation` put everything."""

    root: Path
    """The certificate folder."""
    ca_cert: Path
    """The federation CA's certificate (public; every peer needs it)."""
    ca_key: Path
    """The federation CA's key (stays with the operator)."""
    aggregator_cert: Path
    """The aggregator's server certificate."""
    aggregator_key: Path
    """The aggregator's key."""
    silos: dict[str, tuple[Path, Path]]
    """Silo name -> (certificate, key)."""
