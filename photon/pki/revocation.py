"""Revocation by serial or peer name, from a text file the operator edits (revoked.txt)."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from cryptography import x509

from photon.errors import PKIError
from photon.logs import get_logger
from photon.pki.inspect import common_name, parse_certificate

log = get_logger(__name__)


def parse_serial(text: str) -> int | None:
    """A serial written in hex ('3f2a', '0x3F2A', '3f:2a'), or None when `text` is not hex."""
    digits = text.strip().lower().removeprefix("0x").replace(":", "")
    return int(digits, 16) if re.fullmatch(r"[0-9a-f]+", digits) else None


class RevocationList:
    """Serials and names listed in a text file, re-read whenever the file changes.

    One entry per line; '#' starts a comment. An entry revokes the serial it spells in hex
    and the peer name it spells (a 40-digit serial is no one's name; a short hex-looking name
    revokes both, which errs on the safe side). A missing file revokes nothing; an unreadable
    one raises PKIError rather than letting everyone in.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._serials: frozenset[int] = frozenset()
        self._names: frozenset[str] = frozenset()

    def is_revoked(self, item: x509.Certificate | bytes | int | str) -> bool:
        """Whether a certificate (object or PEM), a serial or a name is revoked."""
        serials, names = self._current()
        if isinstance(item, (x509.Certificate, bytes)):
            cert = item if isinstance(item, x509.Certificate) else parse_certificate(item)
            return cert.serial_number in serials or common_name(cert.subject) in names
        if isinstance(item, str):
            return item in names or parse_serial(item) in serials
        return item in serials

    def _current(self) -> tuple[frozenset[int], frozenset[str]]:
        try:
            st = self.path.stat()
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._load(stamp)
            return self._serials, self._names

    def _load(self, stamp: tuple[int, int, int] | None) -> None:
        text = "" if stamp is None else self._read_text()
        entries = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        entries = [e for e in entries if e]
        self._names = frozenset(entries)
        self._serials = frozenset(s for s in map(parse_serial, entries) if s is not None)
        self._stamp = stamp
        log.info("pki.revocations_loaded", path=str(self.path), entries=len(entries))

    def _read_text(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""
        except (OSError, UnicodeDecodeError) as exc:
            raise PKIError(f"cannot read revocation list {self.path}: {exc}") from exc
