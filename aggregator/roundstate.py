"""The state the round engine's parts share: one lock, the open round, the aggregating flag.

`RoundEngine` (tasks, opening rounds), `UpdateIntake` (accepting updates) and `RoundCloser`
(aggregating) each hold the same `RoundState` and touch its fields only while holding its
condition variable; `notify_all` on it wakes every long-poll waiting for a change.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from aggregator.store import RoundRow


@dataclass(slots=True)
class OpenRound:
    row: RoundRow
    #: The round's deadline on the monotonic clock (the journal holds it as wall time).
    deadline_mono: float
    reported: set[str] = field(default_factory=set)


@dataclass(slots=True)
class RoundState:
    """Guarded by `cond`: the round open for updates, and whether it is being aggregated."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    open: OpenRound | None = None
    #: The open round is being closed: no task or update is handed out for it meanwhile.
    aggregating: bool = False
