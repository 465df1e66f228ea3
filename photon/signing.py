"""Signed updates: a silo signs each update's digest with its certificate's private key.

The aggregator verifies the signature against the client certificate of the connection that
delivered the update, and records it in the audit log: proof of which silo sent which bytes,
independent of the transport.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from photon.errors import PKIError
from photon.pki import parse_certificate

#: Domain separation: a signature over an update digest can mean nothing else.
CONTEXT = b"photon/v1/update-digest:"


def _message(digest_hex: str, round_: int) -> bytes:
    return CONTEXT + f"{round_}:".encode() + bytes.fromhex(digest_hex)


def sign_digest(key_path: Path, digest_hex: str, round_: int) -> bytes:
    """ECDSA-SHA256 signature binding an update's digest to its round."""
    try:
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise PKIError(f"cannot load signing key {key_path}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{key_path} is not an EC private key")
    return key.sign(_message(digest_hex, round_), ec.ECDSA(hashes.SHA256()))


def verify_digest(cert_pem: bytes, digest_hex: str, round_: int, signature: bytes) -> bool:
    """True when `signature` is the certificate holder's signature of (digest, round)."""
    public = parse_certificate(cert_pem).public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not signature:
        return False
    try:
        public.verify(signature, _message(digest_hex, round_), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True
