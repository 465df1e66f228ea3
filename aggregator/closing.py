"""Whether an open round should close: a pure decision over the round's facts.

The engine gathers the facts under its lock, asks `decide_close`, and applies the answer:
aggregate (`Close`), do nothing (`KeepWaiting`), or journal a later deadline (`ExtendDeadline`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

CloseReason = Literal["all_reported", "lost", "deadline"]


@dataclass(frozen=True, slots=True)
class RoundFacts:
    """What the decision needs to know about one open round."""

    selected: frozenset[str]
    #: Selected silos whose update was accepted.
    reported: frozenset[str]
    #: Selected silos that have not reported and are still online.
    pending_online: frozenset[str]
    #: `rounds.quorum`: the fraction of `selected` that must report.
    quorum: float
    #: The current time on the monotonic clock (never wall time: a clock jump must not
    #: expire or extend a round).
    now: float
    #: The round's deadline on the same monotonic clock.
    deadline_at: float
    #: `rounds.deadline_s`: how long a round missing its quorum at the deadline is extended.
    deadline_s: float


@dataclass(frozen=True, slots=True)
class Close:
    reason: CloseReason
    #: Selected silos the round closes without.
    missing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KeepWaiting:
    pass


@dataclass(frozen=True, slots=True)
class ExtendDeadline:
    """The deadline passed below the quorum: wait until `until` for more updates."""

    until: float
    reported: int
    quorum: int


CloseDecision = Close | KeepWaiting | ExtendDeadline


def decide_close(facts: RoundFacts) -> CloseDecision:
    """Close once every selected silo reported, or with the quorum once the rest are lost or
    the deadline passed; a round past its deadline below the quorum gets a new deadline. A
    round nobody reported to waits, deadline or not."""
    reported = facts.reported & facts.selected
    if not reported:
        return KeepWaiting()
    if reported == facts.selected:
        return Close("all_reported")
    missing = tuple(sorted(facts.selected - reported))
    quorum = math.ceil(facts.quorum * len(facts.selected))
    if len(reported) >= quorum and not facts.pending_online:
        return Close("lost", missing)
    if facts.now < facts.deadline_at:
        return KeepWaiting()
    if len(reported) >= quorum:
        return Close("deadline", missing)
    return ExtendDeadline(facts.now + facts.deadline_s, reported=len(reported), quorum=quorum)
