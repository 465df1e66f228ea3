"""A token bucket that caps bytes per second, and the parser for rates in config files.

    bucket = TokenBucket(parse_rate("50mbit"))
    for chunk in chunks:
        bucket.acquire(len(chunk.data))
        send(chunk)

The clock and the sleep are injected, so tests run on a fake clock and never wait.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable

from photon.errors import ConfigError

MIN_BURST_BYTES = 64 * 1024
DEFAULT_BURST_SECONDS = 0.1
"""Without an explicit burst, a bucket holds this many seconds of traffic (at least 64 KiB)."""

_BYTE_UNITS = {"": 1, "b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_BINARY_UNITS = {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_RATE = re.compile(
    r"(?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*(?P<unit>[a-z]*?)\s*(?P<per>/s|/sec|ps)?",
    re.IGNORECASE,
)
_UNLIMITED = ("unlimited", "inf", "none")


def _unit_factor(unit: str) -> float | None:
    """Bytes per unit for 'MB', 'MiB', 'mbit', 'Kibit', ...; None when unknown."""
    u = unit.lower()
    if u.endswith("bit"):
        prefix = u[: -len("bit")]
        scale = _BINARY_UNITS.get(prefix) or _BYTE_UNITS.get(prefix)
        return None if scale is None or prefix == "b" else scale / 8
    if u.endswith("ib"):
        return _BINARY_UNITS.get(u[:-1])
    if u.endswith("b"):
        u = u[:-1]
        return None if u == "b" else _BYTE_UNITS.get(u)
    return 1.0 if u == "" else None


def parse_rate(text: str, *, key: str = "rate") -> float | None:
    """Bytes per second from '50MB/s', '10MiB/s', '50mbit', '1e6', or None for 'unlimited'.

    Decimal prefixes (k, M, G, T) are powers of 1000, binary ones (Ki, Mi, Gi, Ti) of 1024;
    'bit' units are divided by 8. 'Mbps'-style spellings are refused: tools disagree on
    whether they mean bits or bytes.
    """
    spec = text.strip()
    if spec.lower() in _UNLIMITED:
        return None
    match = _RATE.fullmatch(spec)
    fix = f"write e.g. {key} = '50MB/s', '10MiB/s', '100mbit' or 'unlimited'"
    if match is None:
        raise ConfigError(f"{key}: cannot read rate {text!r}; {fix}")
    if (match["per"] or "").lower() == "ps":
        raise ConfigError(f"{key}: {text!r} is ambiguous (bits or bytes?); {fix}")
    factor = _unit_factor(match["unit"])
    if factor is None:
        raise ConfigError(f"{key}: unknown unit {match['unit']!r} in {text!r}; {fix}")
    rate = float(match["num"]) * factor
    if not 0 < rate < math.inf:
        raise ConfigError(f"{key}: rate must be positive and finite, got {text!r}; {fix}")
    return rate


class TokenBucket:
    """Allows `rate_bytes_per_s` on average and up to `burst_bytes` at once after idling.

    `acquire(n)` takes n tokens at once and, when that leaves the bucket in debt, sleeps until
    the debt is repaid: requests larger than the burst (a 4 MiB chunk through a 1 MiB bucket)
    still pass, at the right average rate. Safe to share between threads: each caller
    reserves its tokens under a lock and sleeps outside it.
    """

    def __init__(
        self,
        rate_bytes_per_s: float,
        burst_bytes: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 0 < rate_bytes_per_s < math.inf:
            raise ConfigError(
                f"rate_bytes_per_s must be positive and finite, got {rate_bytes_per_s}; "
                "use no limiter for an unlimited link"
            )
        if burst_bytes is None:
            burst_bytes = max(MIN_BURST_BYTES, int(rate_bytes_per_s * DEFAULT_BURST_SECONDS))
        if burst_bytes <= 0:
            raise ConfigError(f"burst_bytes must be positive, got {burst_bytes}")
        self.rate = float(rate_bytes_per_s)
        self.burst = burst_bytes
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(burst_bytes)
        self._stamp = clock()

    def _reserve(self, n: int) -> float:
        """Take n tokens now; the seconds to wait before using them."""
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._stamp)
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
            self._stamp = now
            self._tokens -= n
            return max(0.0, -self._tokens / self.rate)

    def acquire(self, n: int) -> None:
        """Block (via the injected sleep) until `n` more bytes are within the rate."""
        if n < 0:
            raise ValueError(f"cannot acquire {n} bytes")
        wait = self._reserve(n)
        if wait > 0:
            self._sleep(wait)
