"""The state an emulated link shares between its control methods and its pump threads:
the live profile, partition switches, byte and connection counters, and an armed cut.

Everything here is safe to call from any thread. Pumps read `profile` and `blackholed` on
every chunk without a lock (each is one reference, replaced whole).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from bandwidth.link_profile import LinkProfile

Direction = Literal["up", "down"]
"""'up' is client -> upstream (silo -> aggregator); 'down' is upstream -> client."""
CutDirection = Literal["up", "down", "both"]


@dataclass(slots=True)
class _Cut:
    directions: frozenset[str]
    remaining: int
    fired: bool = False


class LinkState:
    """Flags, counters and the one-shot cut budget of one link emulator."""

    def __init__(self, profile: LinkProfile, *, on_cut: Callable[[], None]) -> None:
        self.profile = profile
        self.manual_blackhole = False
        self.flap_blackhole = False
        self.refusing = False
        self._on_cut = on_cut
        self._lock = threading.Lock()
        self._bytes = {"up": 0, "down": 0}
        self._connections_total = 0
        self._connections_active = 0
        self._faults = 0
        self._cut: _Cut | None = None

    @property
    def blackholed(self) -> bool:
        return self.manual_blackhole or self.flap_blackhole

    def bytes_forwarded(self, direction: Direction) -> int:
        with self._lock:
            return self._bytes[direction]

    def counts(self) -> tuple[int, int, int]:
        """(connections_total, connections_active, faults_injected)."""
        with self._lock:
            return self._connections_total, self._connections_active, self._faults

    def connection_opened(self) -> int:
        """Count a new connection; its number (0, 1, ...)."""
        with self._lock:
            self._connections_total += 1
            self._connections_active += 1
            return self._connections_total - 1

    def connection_closed(self) -> None:
        with self._lock:
            self._connections_active -= 1

    def count_faults(self, n: int = 1) -> None:
        with self._lock:
            self._faults += n

    def arm_cut(self, n_bytes: int, direction: CutDirection) -> None:
        """Fire `on_cut` once `n_bytes` more have been forwarded in `direction`."""
        dirs = frozenset(("up", "down") if direction == "both" else (direction,))
        with self._lock:
            self._cut = _Cut(directions=dirs, remaining=n_bytes)
        if n_bytes == 0:
            self._fire_cut()

    def allowance(self, direction: Direction, n: int) -> int:
        """How many of `n` bytes may be forwarded before the armed cut fires."""
        cut = self._cut
        if cut is None or direction not in cut.directions:
            return n
        with self._lock:
            return min(n, max(0, cut.remaining))

    def forwarded(self, direction: Direction, n: int) -> None:
        """Count `n` forwarded bytes; fire the cut when its budget is spent."""
        with self._lock:
            self._bytes[direction] += n
            cut = self._cut
            if cut is None or direction not in cut.directions:
                return
            cut.remaining -= n
            fire = cut.remaining <= 0
        if fire:
            self._fire_cut()

    def _fire_cut(self) -> None:
        with self._lock:
            cut = self._cut
            if cut is None or cut.fired:
                return
            cut.fired = True
            cut.remaining = 0  # allowance() is 0 until the connections are reset
        self._on_cut()
        with self._lock:
            if self._cut is cut:
                self._cut = None
