"""The round driver: calls the daemon's periodic steps until stopped or done.

An exception escaping a step (EMFILE, ENOMEM, ENOSPC, a bug) ends the driver with
`round_driver_failed` and DaemonFailed, so the daemon stops serving and the process exits
non-zero for its supervisor to restart, instead of lingering alive with nothing driving rounds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from photon.errors import DaemonFailed
from photon.faults import fault_point
from photon.logs import get_logger

log = get_logger("aggregator.driver")

#: Seconds between two passes over the steps.
TICK_S = 0.25


def drive(
    steps: Sequence[Callable[[], object]],
    stop: threading.Event,
    *,
    done: Callable[[], bool] = lambda: False,
    tick_s: float = TICK_S,
) -> bool:
    """Run every step each `tick_s` until `stop` is set (False) or `done()` (True); raise
    DaemonFailed if a step raises."""
    while not stop.wait(tick_s):
        try:
            fault_point("aggregator.tick")
            for step in steps:
                step()
        except Exception as exc:
            log.error(
                "round_driver_failed",
                error=f"{type(exc).__name__}: {exc}",
                errno=getattr(exc, "errno", None),
                action="stopping the daemon; exit non-zero so a supervisor restarts it",
                exc_info=True,
            )
            raise DaemonFailed(f"round driver failed: {type(exc).__name__}: {exc}") from exc
        if done():
            return True
    return False
