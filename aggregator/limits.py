"""Resource limits at the aggregator: concurrent transfers, request rates, idle streams.

A silo (or a stranger holding a stolen certificate) must not be able to exhaust the aggregator:
transfers are capped per silo and in total, unary requests per silo are rate-limited, and a
stream that stops moving bytes (slow-loris) is cancelled by a watchdog. Every refusal is a
`ResourceExhausted` error that tells the caller when to come back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from photon.errors import ResourceExhausted
from photon.logs import get_logger

log = get_logger("aggregator.limits")


class TransferSlots:
    """At most `per_silo` concurrent transfers per silo and `total` overall."""

    def __init__(self, *, per_silo: int, total: int) -> None:
        self.per_silo, self.total = per_silo, total
        self._lock = threading.Lock()
        self._by_silo: dict[str, int] = {}

    @contextmanager
    def hold(self, silo: str) -> Iterator[None]:
        with self._lock:
            mine = self._by_silo.get(silo, 0)
            if mine >= self.per_silo:
                raise ResourceExhausted(
                    f"silo {silo!r} already has {mine} transfers in flight (limit "
                    f"{self.per_silo}); retry when one finishes",
                    silo=silo,
                )
            if sum(self._by_silo.values()) >= self.total:
                raise ResourceExhausted(
                    f"the aggregator has {self.total} transfers in flight; retry shortly", silo=silo
                )
            self._by_silo[silo] = mine + 1
        try:
            yield
        finally:
            with self._lock:
                self._by_silo[silo] -= 1


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class RequestRate:
    """A token bucket per silo: `rate` requests per second with bursts of `burst`."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self.clock = rate, float(burst), clock
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}

    def check(self, silo: str) -> None:
        if self.rate <= 0:
            return
        now = self.clock()
        with self._lock:
            b = self._buckets.setdefault(silo, _Bucket(self.burst, now))
            b.tokens = min(self.burst, b.tokens + (now - b.stamp) * self.rate)
            b.stamp = now
            if b.tokens < 1.0:
                raise ResourceExhausted(
                    f"silo {silo!r} exceeds {self.rate:g} requests/s; back off and retry", silo=silo
                )
            b.tokens -= 1.0


@dataclass(slots=True)
class _Watched:
    cancel: Callable[[], object]
    silo: str
    last: float


@dataclass(slots=True)
class IdleWatchdog:
    """Cancels streams that made no progress for `idle_s` seconds."""

    idle_s: float
    clock: Callable[[], float] = time.monotonic
    _streams: dict[int, _Watched] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next: int = 0

    def watch(self, silo: str, cancel: Callable[[], object]) -> int:
        with self._lock:
            self._next += 1
            self._streams[self._next] = _Watched(cancel, silo, self.clock())
            return self._next

    def progress(self, token: int) -> None:
        watched = self._streams.get(token)
        if watched is not None:
            watched.last = self.clock()

    def release(self, token: int) -> None:
        with self._lock:
            self._streams.pop(token, None)

    def sweep(self) -> int:
        """Cancel idle streams; returns how many. Called periodically by the daemon."""
        limit = self.clock() - self.idle_s
        with self._lock:
            idle = [(t, w) for t, w in self._streams.items() if w.last < limit]
            for token, _ in idle:
                del self._streams[token]
        for _, w in idle:
            log.warning("idle_stream_cancelled", silo=w.silo, idle_s=self.idle_s)
            w.cancel()
        return len(idle)


@dataclass(slots=True)
class Limits:
    """The aggregator's limits, built from `[server]` settings."""

    slots: TransferSlots
    rate: RequestRate
    watchdog: IdleWatchdog

    @classmethod
    def from_config(
        cls, *, per_silo: int, total: int, requests_per_s: float, idle_s: float
    ) -> Limits:
        return cls(
            slots=TransferSlots(per_silo=per_silo, total=total),
            rate=RequestRate(requests_per_s, burst=max(4, int(4 * requests_per_s))),
            watchdog=IdleWatchdog(idle_s),
        )
