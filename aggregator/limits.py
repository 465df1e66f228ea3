"""Resource limits at the aggregator: concurrent calls and transfers, long-polls, request rates,
idle and trickling streams.

A silo (or a stranger holding a stolen certificate) must not be able to exhaust the aggregator:
every RPC holds one of its silo's few call slots for its whole life, so no member can occupy more
than a handful of worker threads; streams also hold transfer slots (per silo and in total), only
a bounded number of GetTask calls may park a thread while waiting, requests per silo are
rate-limited, and a stream that stops moving bytes, or trickles them below a minimum rate
(slow-loris), is cancelled by a watchdog from its first moment. Every refusal is a
`ResourceExhausted` error that tells the caller when to come back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from photon.errors import ResourceExhausted
from photon.logs import get_logger

if TYPE_CHECKING:
    from aggregator.config import AggregatorConfig, ServerConfig

log = get_logger("aggregator.limits")


class Slots:
    """At most `per_silo` concurrent holders per silo and `total` (if set) overall."""

    noun = "calls"

    def __init__(self, *, per_silo: int, total: int | None = None) -> None:
        self.per_silo, self.total = per_silo, total
        self._lock = threading.Lock()
        self._by_silo: dict[str, int] = {}

    def acquire(self, silo: str) -> None:
        """Take one slot for `silo`, or raise ResourceExhausted before anything is held."""
        with self._lock:
            mine = self._by_silo.get(silo, 0)
            if mine >= self.per_silo:
                raise ResourceExhausted(
                    f"silo {silo!r} already has {mine} {self.noun} in flight (limit "
                    f"{self.per_silo}); retry when one finishes",
                    silo=silo,
                )
            if self.total is not None and sum(self._by_silo.values()) >= self.total:
                raise ResourceExhausted(
                    f"the aggregator has {self.total} {self.noun} in flight; retry shortly",
                    silo=silo,
                )
            self._by_silo[silo] = mine + 1

    def release(self, silo: str) -> None:
        with self._lock:
            left = self._by_silo.get(silo, 0) - 1
            if left > 0:
                self._by_silo[silo] = left
            else:
                self._by_silo.pop(silo, None)

    def held(self, silo: str) -> int:
        """How many slots `silo` holds now."""
        with self._lock:
            return self._by_silo.get(silo, 0)

    @contextmanager
    def hold(self, silo: str) -> Iterator[None]:
        self.acquire(silo)
        try:
            yield
        finally:
            self.release(silo)

    @contextmanager
    def try_hold(self, silo: str) -> Iterator[bool]:
        """Hold a slot if one is free; yields whether it got one (never raises for want)."""
        try:
            self.acquire(silo)
        except ResourceExhausted:
            yield False
            return
        try:
            yield True
        finally:
            self.release(silo)


class TransferSlots(Slots):
    """Concurrent Upload/Download streams: per silo and in total."""

    noun = "transfers"


class CallSlots(Slots):
    """Concurrent RPCs of any method per silo: what one member can make the server hold."""

    noun = "calls"


class LongPolls(Slots):
    """GetTask calls allowed to park a worker thread while the answer is WAIT."""

    noun = "long-polls"


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
    window_start: float | None = None  # from the first message on
    window_bytes: int = 0


@dataclass(slots=True)
class IdleWatchdog:
    """Cancels streams that made no progress for `idle_s` seconds (from the moment they are
    watched), or that moved fewer than `min_bytes_per_s` on average over a window of `idle_s`
    seconds (windows start at the first message: a trickle is a stall)."""

    idle_s: float
    min_bytes_per_s: float = 0.0
    clock: Callable[[], float] = time.monotonic
    _streams: dict[int, _Watched] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next: int = 0

    def watch(self, silo: str, cancel: Callable[[], object]) -> int:
        with self._lock:
            self._next += 1
            now = self.clock()
            self._streams[self._next] = _Watched(cancel, silo, now)
            return self._next

    def progress(self, token: int, n_bytes: int = 0) -> None:
        with self._lock:
            watched = self._streams.get(token)
            if watched is not None:
                watched.last = self.clock()
                watched.window_bytes += n_bytes
                if watched.window_start is None:
                    watched.window_start = watched.last

    def release(self, token: int) -> None:
        with self._lock:
            self._streams.pop(token, None)

    def watching(self) -> int:
        """How many streams are watched now."""
        with self._lock:
            return len(self._streams)

    def _verdict(self, w: _Watched, now: float) -> str | None:
        """Why `w` should be cancelled now, or None (closing a window it passed)."""
        if now - w.last > self.idle_s:
            return "idle"
        if w.window_start is None or now - w.window_start <= self.idle_s:
            return None
        elapsed = now - w.window_start
        if w.window_bytes < self.min_bytes_per_s * elapsed:
            return "too_slow"
        w.window_start, w.window_bytes = now, 0
        return None

    def sweep(self) -> int:
        """Cancel idle and trickling streams; returns how many. Called periodically by the
        daemon."""
        now = self.clock()
        with self._lock:
            doomed = [
                (t, w, why) for t, w in self._streams.items() if (why := self._verdict(w, now))
            ]
            for token, _, _ in doomed:
                del self._streams[token]
        for _, w, why in doomed:
            if why == "idle":
                log.warning("idle_stream_cancelled", silo=w.silo, idle_s=self.idle_s)
            else:
                log.warning(
                    "slow_stream_cancelled",
                    silo=w.silo,
                    bytes=w.window_bytes,
                    window_s=self.idle_s,
                    min_bytes_per_s=self.min_bytes_per_s,
                )
            w.cancel()
        return len(doomed)


@dataclass(slots=True)
class Limits:
    """The aggregator's limits, built from `[server]` (and `rounds.max_long_polls`) settings."""

    slots: TransferSlots
    rate: RequestRate
    watchdog: IdleWatchdog
    calls: CallSlots = field(default_factory=lambda: CallSlots(per_silo=4))
    long_polls: LongPolls = field(default_factory=lambda: LongPolls(per_silo=1, total=32))

    @classmethod
    def for_aggregator(cls, cfg: AggregatorConfig) -> Limits:
        """The limits `cfg` asks for."""
        srv = cfg.server
        return cls.from_config(
            per_silo=srv.max_transfers_per_silo,
            total=srv.max_transfers_total,
            requests_per_s=srv.max_requests_per_s,
            idle_s=srv.stream_idle_timeout_s,
            calls_per_silo=srv.max_concurrent_per_silo,
            long_polls=cfg.rounds.max_long_polls,
            min_bytes_per_s=srv.min_stream_bytes_per_s,
        )

    @classmethod
    def from_config(
        cls,
        *,
        per_silo: int,
        total: int,
        requests_per_s: float,
        idle_s: float,
        calls_per_silo: int = 4,
        long_polls: int = 32,
        min_bytes_per_s: float = 0.0,
    ) -> Limits:
        return cls(
            slots=TransferSlots(per_silo=per_silo, total=total),
            rate=RequestRate(requests_per_s, burst=max(4, int(4 * requests_per_s))),
            watchdog=IdleWatchdog(idle_s, min_bytes_per_s),
            calls=CallSlots(per_silo=calls_per_silo),
            long_polls=LongPolls(per_silo=1, total=long_polls),
        )


@dataclass(frozen=True, slots=True)
class UploadQuota:
    """What one silo's unfinished uploads may hold: `max_open` transfers and `max_bytes` of
    declared size in the spool (0: no byte bound). Checked before a transfer opens a file."""

    max_open: int
    max_bytes: int = 0

    def admit(self, silo: str, transfer_id: str, size: int, open_sizes: list[int]) -> None:
        """Refuse a new transfer of `size` bytes when the silo's open ones leave no room."""
        if len(open_sizes) >= self.max_open:
            raise ResourceExhausted(
                f"silo {silo!r} has {len(open_sizes)} unfinished uploads (limit "
                f"{self.max_open}); resume one of them (UploadStatus) instead of starting "
                f"{transfer_id!r}",
                silo=silo,
            )
        held = sum(open_sizes)
        if self.max_bytes and held + size > self.max_bytes:
            raise ResourceExhausted(
                f"silo {silo!r} has {held} bytes of unfinished uploads in the spool; "
                f"{transfer_id!r} ({size} bytes) would pass its limit of {self.max_bytes}",
                silo=silo,
            )


def upload_quota(srv: ServerConfig, max_update_bytes: int) -> UploadQuota:
    """The per-silo upload quota of `[server]`; its spool bound defaults to twice the largest
    update the model allows (one transfer and one restarted over it)."""
    return UploadQuota(
        max_open=srv.max_open_uploads_per_silo,
        max_bytes=srv.max_spool_bytes_per_silo or 2 * max_update_bytes,
    )
