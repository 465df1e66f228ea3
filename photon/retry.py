"""Retries with exponential back-off and full jitter, driven by a declared policy.

The clock, the sleep and the randomness are injectable so tests never wait for real.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from photon.errors import ConfigError
from photon.logs import get_logger

log = get_logger("photon.retry")
T = TypeVar("T")


@dataclass(kw_only=True, slots=True)
class RetryPolicy:
    """How a silo retries an RPC that failed for a transient reason."""

    #: First back-off in seconds.
    initial_s: float = 0.5
    #: Longest back-off in seconds.
    max_s: float = 15.0
    #: Growth factor per attempt.
    multiplier: float = 2.0
    #: Give up after this many seconds of consecutive failures; 0 retries forever.
    give_up_after_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s or self.multiplier < 1:
            raise ConfigError("retry: need 0 < initial_s <= max_s and multiplier >= 1")
        if self.give_up_after_s < 0:
            raise ConfigError("retry.give_up_after_s must be >= 0 (0 = forever)")

    def delays(self, rng: random.Random) -> Iterator[float]:
        """Full-jitter back-off: uniform in [0, min(max, initial * multiplier**n)]."""
        ceiling = self.initial_s
        while True:
            yield rng.uniform(ceiling / 2, ceiling)
            ceiling = min(self.max_s, ceiling * self.multiplier)


@dataclass(kw_only=True, slots=True)
class Retrier:
    policy: RetryPolicy
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)

    def call(self, fn: Callable[[], T], *, retryable: Callable[[Exception], bool], what: str) -> T:
        """Call `fn` until it succeeds, a non-retryable error occurs, or the policy gives up."""
        started = self.clock()
        delays = self.policy.delays(self.rng)
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                if not retryable(exc):
                    raise
                attempt += 1
                elapsed = self.clock() - started
                limit = self.policy.give_up_after_s
                if limit and elapsed >= limit:
                    log.error(
                        "retry_gave_up",
                        what=what,
                        attempts=attempt,
                        elapsed_s=round(elapsed, 1),
                        error=_short(exc),
                    )
                    raise
                delay = next(delays)
                log.warning(
                    "retrying",
                    what=what,
                    attempt=attempt,
                    backoff_s=round(delay, 2),
                    error=_short(exc),
                )
                self.sleep(delay)


def _short(exc: Exception) -> str:
    details = getattr(exc, "details", None)
    code = getattr(exc, "code", None)
    if callable(details) and callable(code):
        return f"{code().name}: {details()}"
    return f"{type(exc).__name__}: {exc}"[:300]
