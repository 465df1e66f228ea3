"""Certificates for a federation: a CA, the aggregator's server certificate, one per silo.

Layout of a federation's certificate folder::

    ca.crt, ca.key                  the federation CA (ca.key stays with the operator)
    aggregator.crt, aggregator.key  the aggregator's server certificate (serverAuth, DNS/IP SANs)
    silos/<name>.crt, <name>.key    one per silo (clientAuth; CN = silo name,
                                    SAN DNS <name>.silo.photon)
    silos/<name>.csr                a silo's certificate signing request (CSR flow)
    revoked.txt                     optional revocation list: one serial (hex) or name per line

A silo's own folder has the same shape with only ca.crt and its silos/<name>.{crt,key}.

Two ways to give a silo its certificate:

- the operator runs `issue` (or `init_federation`) and ships the .crt and .key to the silo;
- the CSR flow: the silo runs `request` (its key never leaves it) and sends the .csr; the
  operator runs `sign` and sends back the .crt together with ca.crt.

Keys are ECDSA P-256, written with mode 0600. Nothing is overwritten unless `force=True`.
Every `now` parameter moves the validity window (tests use it to make expired certificates).

Modules: `layout` (names, paths), `build` (certificates in memory), `issuing` (CA, keys,
`issue`, `init_federation`), `csr` (`request`, `sign`), `inspect` (parsing, `show`,
`check_certificate`), `revocation` (`RevocationList`). Import from `photon.pki` itself.
"""

from __future__ import annotations

from photon.names import SILO_NAME_RE
from photon.pki.build import parse_hosts
from photon.pki.csr import request, sign
from photon.pki.inspect import (
    check_certificate,
    common_name,
    describe,
    load_certificate,
    parse_certificate,
    same_public_key,
    show,
)
from photon.pki.issuing import init_ca, init_federation, issue
from photon.pki.layout import (
    DEFAULT_HOSTS,
    SILO_SAN_SUFFIX,
    CAKey,
    FederationPaths,
    Kind,
    aggregator_paths,
    ca_paths,
    revocation_path,
    silo_paths,
    validate_silo_name,
)
from photon.pki.revocation import RevocationList, parse_serial

__all__ = [
    "DEFAULT_HOSTS",
    "SILO_NAME_RE",
    "SILO_SAN_SUFFIX",
    "CAKey",
    "FederationPaths",
    "Kind",
    "RevocationList",
    "aggregator_paths",
    "ca_paths",
    "check_certificate",
    "common_name",
    "describe",
    "init_ca",
    "init_federation",
    "issue",
    "load_certificate",
    "parse_certificate",
    "parse_hosts",
    "parse_serial",
    "request",
    "revocation_path",
    "same_public_key",
    "show",
    "sign",
    "silo_paths",
    "validate_silo_name",
]
