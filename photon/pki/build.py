"""Building X.509 certificates in memory: validity windows, extensions, CA-signed leaves.

Nothing here touches the disk; `photon.pki.issuing` and `photon.pki.csr` write the results.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from photon.errors import PKIError
from photon.pki.layout import SILO_SAN_SUFFIX, CAKey, Kind

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_RE = re.compile(rf"(\*\.)?({_LABEL}\.)*{_LABEL}")
_BACKDATE = timedelta(hours=1)  # tolerate clocks that lag the issuer's


def utc_now(now: datetime | None) -> datetime:
    """`now` as an aware UTC time (naive means UTC); the current time when None."""
    if now is None:
        return datetime.now(timezone.utc)
    return now if now.tzinfo is not None else now.replace(tzinfo=timezone.utc)


def check_days(days: int) -> None:
    if days < 1:
        raise PKIError(f"days must be at least 1, got {days}")


def cn_name(value: str) -> x509.Name:
    """An X.509 name holding only the common name `value`."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, value)])


def base_builder(
    subject: x509.Name, public_key: CertificatePublicKeyTypes, days: int, now: datetime | None
) -> x509.CertificateBuilder:
    """Subject, key, random serial, a validity window of `days` and the subject key id."""
    start = utc_now(now)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _BACKDATE)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def parse_hosts(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses as subjectAltName entries; PKIError on anything else."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not _DNS_RE.fullmatch(host) or len(host) > 253:
            raise PKIError(f"invalid host {host!r}: give a DNS name or an IP address (--host)")
        names.append(x509.DNSName(host.lower()))
    if not names:
        raise PKIError("an aggregator certificate needs at least one host name or IP (--host)")
    return names


def leaf_certificate(
    kind: Kind,
    name: str,
    public_key: CertificatePublicKeyTypes,
    ca: tuple[x509.Certificate, CAKey],
    *,
    hosts: Iterable[str],
    days: int,
    now: datetime | None,
) -> x509.Certificate:
    """A certificate for the aggregator (serverAuth, `hosts` as SANs) or a silo (clientAuth)."""
    ca_cert, ca_key = ca
    sans: list[x509.GeneralName] = [x509.DNSName(name + SILO_SAN_SUFFIX)]
    eku = ExtendedKeyUsageOID.CLIENT_AUTH
    if kind == "aggregator":
        eku, sans = ExtendedKeyUsageOID.SERVER_AUTH, parse_hosts(hosts)
    builder = (
        base_builder(cn_name(name), public_key, days, now)
        .issuer_name(ca_cert.subject)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    return builder.sign(ca_key, hashes.SHA256())
