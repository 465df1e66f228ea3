"""The time arithmetic of one direction of an emulated link, free of sockets and threads.

A chunk read at `now` first passes a token bucket (the rate stage, like a router's egress
queue) and is released at `release_at`; it then crosses the wire and may be written to the
far side at `deliver_at = release_at + latency + jitter sample`. Delivery times never
decrease, so jitter delays bytes but never reorders them within a connection. The pump reads
nothing more until `release_at`, which turns the rate into TCP back-pressure on the sender.

    shaper = Shaper(rng=random.Random(profile.seed))
    slot = shaper.admit(len(chunk), now, profile)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bandwidth.link_profile import LinkProfile

MAX_READ_BYTES = 256 * 1024
"""Largest recv per chunk: large enough for >= 300 MB/s on loopback from Python."""
MIN_READ_BYTES = 4 * 1024
CHUNK_SECONDS = 0.01
"""On a rate-limited link a chunk carries about this much time of traffic, so bytes arrive
smoothly instead of in lumps of MAX_READ_BYTES."""
BURST_SECONDS = 0.005
"""The token bucket holds this much time of traffic (at least MIN_READ_BYTES)."""


def read_size(profile: LinkProfile) -> int:
    """Bytes to read per chunk under `profile`."""
    rate = profile.rate_bytes_per_s
    if rate is None:
        return MAX_READ_BYTES
    return int(min(MAX_READ_BYTES, max(MIN_READ_BYTES, rate * CHUNK_SECONDS)))


def burst_bytes(rate_bytes_per_s: float) -> float:
    """Capacity of the token bucket at this rate."""
    return max(float(MIN_READ_BYTES), rate_bytes_per_s * BURST_SECONDS)


@dataclass(frozen=True, slots=True)
class Slot:
    """When a chunk has passed the rate stage, and when it may reach the far side."""

    release_at: float
    """The rate stage has passed the chunk; the next chunk may be read from now on."""
    deliver_at: float
    """The chunk may be written to the far side from now on (>= every earlier deliver_at)."""


class Shaper:
    """Token bucket + delay line for one direction of one connection. Not thread-safe: one
    pump owns it. The profile is passed on each call, so a live change applies to the next
    chunk."""

    def __init__(self, *, rng: random.Random) -> None:
        self._rng = rng
        self._tokens: float | None = None  # None: full bucket, filled on first use
        self._stamp = 0.0
        self._rate = 0.0
        self._last_delivery = float("-inf")

    def admit(self, n: int, now: float, profile: LinkProfile) -> Slot:
        """Schedule `n` bytes read at `now`."""
        release = now + self._rate_wait(n, now, profile.rate_bytes_per_s)
        delay = profile.latency_s
        if profile.jitter_s > 0:
            delay += self._rng.uniform(-profile.jitter_s, profile.jitter_s)
        deliver = max(release + max(0.0, delay), self._last_delivery)
        self._last_delivery = deliver
        return Slot(release_at=release, deliver_at=deliver)

    def _rate_wait(self, n: int, now: float, rate: float | None) -> float:
        """Take n tokens; seconds until the bucket is out of debt again (0 if unlimited).
        The bucket refills at the rate in force since the previous chunk."""
        if rate is None:
            self._tokens = None
            return 0.0
        burst = burst_bytes(rate)
        if self._tokens is None:
            tokens = burst
        else:
            tokens = min(burst, self._tokens + max(0.0, now - self._stamp) * self._rate)
        self._stamp, self._rate = now, rate
        self._tokens = tokens - n
        return max(0.0, -self._tokens / rate)
