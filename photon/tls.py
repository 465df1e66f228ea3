"""gRPC mTLS credentials from a federation's certificate folder, and who is on the other end.

The aggregator serves with `server_credentials` (a client certificate signed by the federation
CA is required); a silo connects with `channel_credentials`. In a servicer, `peer_identity`
gives the verified client's common name (the silo name) and `peer_certificate_pem` its
certificate, so the aggregator can check revocation by serial (`photon.pki.RevocationList`).
The folder layout is described in `photon.pki`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
from cryptography.hazmat.primitives import serialization

from photon import pki
from photon.errors import PKIError

_CA_HINT = "copy ca.crt from the federation operator (it is made by `photon certs init-ca`)"
_AGGREGATOR_HINT = (
    "make it with `photon certs init --silos N --out {dir}` or "
    "`photon certs issue aggregator aggregator --ca {dir} --host HOST`"
)
_SILO_KEY_HINT = (
    "make it on this machine with `photon certs request {name} --out {dir}` "
    "(or the operator runs `photon certs issue silo {name} --ca CA_DIR --out {dir}`)"
)
_SILO_CERT_HINT = (
    "send {dir}/silos/{name}.csr to the operator, who runs "
    "`photon certs sign {name}.csr --ca CA_DIR` and returns the .crt to put here "
    "(or runs `photon certs issue silo {name} --ca CA_DIR --out {dir}`)"
)


class _HasAuthContext(Protocol):
    def auth_context(self) -> Mapping[str, Sequence[bytes]]: ...


def _require(path: Path, what: str, hint: str) -> Path:
    if not path.is_file():
        raise PKIError(f"{what} not found: {path}; {hint}")
    return path


@dataclass(kw_only=True, slots=True)
class TLSFiles:
    """The three PEM files one peer needs for mTLS."""

    cert: Path
    """This peer's certificate, signed by the federation CA."""
    key: Path
    """This peer's private key (mode 0600)."""
    ca: Path
    """The federation CA certificate that every peer's certificate must chain to."""

    def __post_init__(self) -> None:
        self.cert, self.key, self.ca = Path(self.cert), Path(self.key), Path(self.ca)

    @classmethod
    def for_aggregator(cls, certs_dir: Path | str) -> TLSFiles:
        """The aggregator's files in `certs_dir`; PKIError says which is missing and how to
        make it."""
        root = Path(certs_dir)
        cert, key = pki.aggregator_paths(root)
        hint = _AGGREGATOR_HINT.format(dir=root)
        return cls(
            cert=_require(cert, "aggregator certificate", hint),
            key=_require(key, "aggregator key", hint),
            ca=_require(pki.ca_paths(root)[0], "federation CA certificate", _CA_HINT),
        )

    @classmethod
    def for_silo(cls, certs_dir: Path | str, name: str) -> TLSFiles:
        """Silo `name`'s files in `certs_dir`; PKIError says which is missing and how to
        make it."""
        root = Path(certs_dir)
        cert, key = pki.silo_paths(root, name)
        return cls(
            cert=_require(
                cert, f"certificate of silo {name!r}", _SILO_CERT_HINT.format(dir=root, name=name)
            ),
            key=_require(key, f"key of silo {name!r}", _SILO_KEY_HINT.format(dir=root, name=name)),
            ca=_require(pki.ca_paths(root)[0], "federation CA certificate", _CA_HINT),
        )

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(certificate, key, CA) as PEM bytes, after checking the key belongs to the
        certificate."""
        cert = _read(self.cert, "certificate")
        key = _read(self.key, "private key")
        ca = _read(self.ca, "CA certificate")
        try:
            private = serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError) as exc:
            raise PKIError(f"{self.key} is not an unencrypted PEM private key: {exc}") from exc
        if not pki.same_public_key(pki.parse_certificate(cert, str(self.cert)), private):
            raise PKIError(f"{self.key} is not the key of {self.cert}; issue them again together")
        pki.parse_certificate(ca, str(self.ca))
        return cert, key, ca


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PKIError(f"cannot read {what} {path}: {exc.strerror}") from exc


def server_credentials(files: TLSFiles) -> grpc.ServerCredentials:
    """Server side of mTLS: present `files.cert`, require a client certificate from the CA."""
    cert, key, ca = files.read()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def channel_credentials(files: TLSFiles) -> grpc.ChannelCredentials:
    """Client side of mTLS: trust only the federation CA, present `files.cert`."""
    cert, key, ca = files.read()
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def _auth_value(context: _HasAuthContext, key: str) -> bytes | None:
    auth = context.auth_context()
    if auth.get("transport_security_type") != [b"ssl"]:
        return None
    values = auth.get(key) or []
    return values[0] if values else None


def peer_identity(context: _HasAuthContext) -> str | None:
    """The common name of the client's verified certificate, or None when unauthenticated.

    Works with `grpc.ServicerContext` and `grpc.aio.ServicerContext`.
    """
    value = _auth_value(context, "x509_common_name")
    return value.decode("utf-8", errors="replace") if value else None


def peer_certificate_pem(context: _HasAuthContext) -> bytes | None:
    """The client's verified certificate as PEM (for revocation by serial), or None."""
    return _auth_value(context, "x509_pem_cert")
