"""What one Federation RPC holds while it runs, and when it lets go.

Every call holds one of its silo's call slots (`server.max_concurrent_per_silo`) from the moment
its handler starts until it ends — a stream until its last message, a cancelled call too — so no
member can occupy more than that many worker threads. A call that streams (requests or replies)
also holds a transfer slot and is watched from its first moment, before any header arrives: each
message's bytes count as progress, and a stream that stalls or trickles is cancelled. An upload
stops being watched once its client has sent everything: verifying it is the server's work.
Taking any of these is checked before anything is held; a refusal is `ResourceExhausted`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from aggregator.limits import Limits, Slots

M = TypeVar("M")


class HeldCall:
    """The slots and the watchdog registration of one RPC; `close()` gives them back."""

    def __init__(
        self, limits: Limits, silo: str, *, stream: bool, cancel: Callable[[], object]
    ) -> None:
        self.silo = silo
        self._limits = limits
        self._held: list[Slots] = []
        self._token: int | None = None
        self._take(limits.calls)
        if stream:
            self._take(limits.slots)
            self._token = limits.watchdog.watch(silo, cancel)

    def _take(self, slots: Slots) -> None:
        try:
            slots.acquire(self.silo)
        except BaseException:
            self.close()
            raise
        self._held.append(slots)

    def moved(self, n_bytes: int) -> None:
        """One message of `n_bytes` went in or out: the stream is alive."""
        if self._token is not None:
            self._limits.watchdog.progress(self._token, n_bytes)

    def quiet(self) -> None:
        """The client owes nothing more: stop watching (slots stay held until `close`)."""
        if self._token is not None:
            self._limits.watchdog.release(self._token)
            self._token = None

    def close(self) -> None:
        """Give everything back; safe to call twice."""
        self.quiet()
        while self._held:
            self._held.pop().release(self.silo)


def metered(messages: Iterator[M], call: HeldCall, *, quiet_at_end: bool) -> Iterator[M]:
    """`messages`, counting each one's size as the stream's progress."""
    for message in messages:
        call.moved(_size(message))
        yield message
    if quiet_at_end:
        call.quiet()


def _size(message: Any) -> int:
    size = getattr(message, "ByteSize", None)
    return int(size()) if callable(size) else 0
