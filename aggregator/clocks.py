"""The aggregator's two clocks: wall time for records, monotonic time for every timeout.

The journal keeps wall-clock timestamps (when a round opened, when an update was accepted,
when a round's deadline falls) because a person reads them. Nothing decides on them while the
process runs: liveness, round deadlines and waits use the monotonic clock, so setting the
system clock forwards or backwards neither marks a live silo lost nor expires or extends a
deadline. Only at a restart, when the old process's monotonic clock is gone, is a round's
remaining time read once from its journaled wall-clock deadline (`remaining_from_record`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Clocks:
    """Injected into the round engine and membership; tests pass fakes that move apart."""

    #: Seconds since the epoch; for journal records only.
    wall: Clock = time.time
    #: Seconds on a clock that never jumps; for every timeout and liveness decision.
    mono: Clock = time.monotonic

    @classmethod
    def single(cls, clock: Clock) -> Clocks:
        """One (fake) clock serving as both: a test clock that only moves forwards."""
        return cls(wall=clock, mono=clock)

    def mono_to_wall(self, mono_at: float) -> float:
        """The wall-clock time of a monotonic instant, for the journal."""
        return self.wall() + (mono_at - self.mono())


def remaining_from_record(deadline_at_wall: float, now_wall: float, limit_s: float) -> float:
    """Seconds left until a journaled wall-clock deadline, clamped to [0, limit_s].

    The clamp bounds what a wall-clock jump across a restart can do: a clock set back a day
    extends the round by at most one `deadline_s`, a clock set forwards closes it at once
    (with the quorum) rather than never.
    """
    return min(max(0.0, deadline_at_wall - now_wall), max(0.0, limit_s))
