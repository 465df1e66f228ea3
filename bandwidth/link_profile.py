"""What a WAN link looks like to the link emulator: rate, latency, jitter — and their parsers.

    profile = LinkProfile.parse(rate="50mbit", latency="80ms", jitter="10ms")
    profile.rate_bps   # 50e6 bits per second

Rates are read by `bandwidth.ratelimit.parse_rate` ('50mbit', '1gbit', '10MB/s', 'unlimited');
durations by `parse_duration` ('80ms', '1.5s', '2m').
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from bandwidth.ratelimit import parse_rate
from photon.errors import ConfigError

_DURATION = re.compile(r"(?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*(?P<unit>[a-z]*)", re.I)
_SECONDS_PER_UNIT = {"": 1.0, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, *, key: str = "duration") -> float:
    """Seconds from '80ms', '1.5s', '2m', '1h', '250us' or a bare number of seconds."""
    match = _DURATION.fullmatch(text.strip())
    fix = f"write e.g. {key} = '80ms', '1.5s' or '2m'"
    if match is None:
        raise ConfigError(f"{key}: cannot read duration {text!r}; {fix}")
    scale = _SECONDS_PER_UNIT.get(match["unit"].lower())
    if scale is None:
        raise ConfigError(f"{key}: unknown unit {match['unit']!r} in {text!r}; {fix}")
    seconds = float(match["num"]) * scale
    if not math.isfinite(seconds):
        raise ConfigError(f"{key}: duration must be finite, got {text!r}; {fix}")
    return seconds


def _format_seconds(seconds: float) -> str:
    return f"{seconds * 1e3:g}ms" if seconds < 1 else f"{seconds:g}s"


@dataclass(kw_only=True, slots=True)
class LinkProfile:
    """One direction's shape; the emulator applies it to each direction independently."""

    rate_bps: float | None = None
    """Bits per second each direction may carry; None means unlimited."""
    latency_s: float = 0.0
    """One-way delay added to every byte, in seconds."""
    jitter_s: float = 0.0
    """Each chunk's delay varies uniformly within latency ± jitter (never below 0, never
    reordering bytes), in seconds."""
    seed: int = 0
    """Seeds the jitter samples (random.Random), so a run can be replayed."""

    def __post_init__(self) -> None:
        if self.rate_bps is not None and not 0 < self.rate_bps < math.inf:
            raise ConfigError(
                f"rate_bps must be positive and finite, got {self.rate_bps}; "
                "use None (or rate = 'unlimited') for an unlimited link"
            )
        for key in ("latency_s", "jitter_s"):
            value = getattr(self, key)
            if not 0 <= value < math.inf:
                raise ConfigError(f"{key} must be a finite number of seconds >= 0, got {value}")

    @classmethod
    def parse(
        cls,
        *,
        rate: str | None = None,
        latency: str = "0",
        jitter: str = "0",
        seed: int = 0,
    ) -> LinkProfile:
        """A profile from strings: rate '50mbit' / '10MB/s' / 'unlimited' (None is unlimited),
        latency and jitter '80ms' / '1.5s'."""
        rate_bytes = None if rate is None else parse_rate(rate, key="rate")
        return cls(
            rate_bps=None if rate_bytes is None else rate_bytes * 8,
            latency_s=parse_duration(latency, key="latency"),
            jitter_s=parse_duration(jitter, key="jitter"),
            seed=seed,
        )

    @property
    def rate_bytes_per_s(self) -> float | None:
        return None if self.rate_bps is None else self.rate_bps / 8

    def describe(self) -> str:
        """'50mbit, 80ms ± 10ms' — for log lines and the CLI."""
        rate = "unlimited" if self.rate_bps is None else f"{self.rate_bps / 1e6:g}mbit"
        delay = _format_seconds(self.latency_s)
        if self.jitter_s:
            delay += f" ± {_format_seconds(self.jitter_s)}"
        return f"{rate}, {delay}"
