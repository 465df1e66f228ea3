"""Waiting out a full disk: a bounded back-off between attempts at work that needs space.

When closing a round (checkpoint, published objects, journal row) or a journal write in the
driver fails because the disk is full, the aggregator does not die and does not lose the round:
the work stays pending, the server keeps answering (uploads are refused with
RESOURCE_EXHAUSTED meanwhile), and the driver tries again after a back-off that doubles from
`initial_s` up to `max_s`, on the monotonic clock. Only disk-space errors are retried; anything
else still ends the driver.
"""

from __future__ import annotations

from dataclasses import dataclass

from aggregator.clocks import Clock
from photon.diskspace import as_disk_full
from photon.logs import get_logger

log = get_logger("aggregator.closeout")


@dataclass(slots=True)
class DiskFullBackoff:
    """When the next attempt may run; reset by a success."""

    clock: Clock
    initial_s: float = 1.0
    max_s: float = 30.0
    failures: int = 0
    not_before: float = 0.0

    def ready(self) -> bool:
        return self.failures == 0 or self.clock() >= self.not_before

    def failed(self, exc: BaseException, doing: str, round_: int | None = None) -> None:
        """Record a disk-full failure of `doing` and schedule the next attempt."""
        self.failures += 1
        wait = min(self.max_s, self.initial_s * 2 ** (self.failures - 1))
        self.not_before = self.clock() + wait
        log.error(
            "disk_full_deferred",
            doing=doing,
            round=round_,
            attempt=self.failures,
            retry_in_s=wait,
            error=str(as_disk_full(exc, doing)),
        )

    def succeeded(self, doing: str) -> None:
        if self.failures:
            log.info("disk_full_recovered", doing=doing, attempts=self.failures + 1)
        self.failures = 0
