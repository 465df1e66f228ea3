"""The chaos benchmark's fault schedule: a bounded list of faults drawn from a seeded RNG.

A schedule is a value: the same seed, count and silos give the same faults, in the same order,
with the same gaps and parameters, so a surprising run can be replayed. What a fault does to a
particular round still depends on timing (the machine's speed), which is the point of chaos.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Literal

FaultKind = Literal["silo_kill", "aggregator_kill", "cut", "partition", "stall"]

#: Relative frequency of each fault kind.
WEIGHTS: dict[FaultKind, int] = {
    "silo_kill": 3,
    "aggregator_kill": 2,
    "cut": 3,
    "partition": 2,
    "stall": 2,
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault: what, on which silo's side, after how long, and for how long."""

    kind: FaultKind
    """silo_kill: SIGKILL + restart; aggregator_kill: SIGKILL + restart; cut: reset the silo's
    connections after `cut_bytes` more bytes; partition: black-hole the silo's link; stall:
    throttle the silo's link to `stall_rate`."""
    silo: str
    """The silo whose process or link is hit (ignored by aggregator_kill)."""
    gap_s: float
    """Seconds after the previous fault ends before this one starts."""
    duration_s: float
    """How long a partition or stall lasts; how long a killed process stays down."""
    cut_bytes: int = 0
    """cut: bytes (both directions) forwarded before the reset."""
    stall_rate: str = "2mbit"
    """stall: the link's rate while it lasts."""

    def record(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """Bounds of a random schedule."""

    count: int
    """Faults in the schedule."""
    seed: int = 0
    """Seeds the RNG that draws every fault."""
    gap_s: tuple[float, float] = (0.5, 2.5)
    """Pause between faults, uniform in this range."""
    down_s: tuple[float, float] = (1.0, 3.0)
    """Partition/stall length and process downtime, uniform in this range."""
    cut_bytes: tuple[int, int] = (20_000, 1_000_000)
    """cut_after budget, uniform in this range."""

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")
        for name in ("gap_s", "down_s", "cut_bytes"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be 0 <= low <= high, got {(low, high)}")


def make_schedule(cfg: ScheduleConfig, silos: list[str]) -> list[Fault]:
    """`cfg.count` faults drawn from `random.Random(cfg.seed)`."""
    if not silos:
        raise ValueError("a schedule needs at least one silo")
    rng = random.Random(cfg.seed)
    kinds = list(WEIGHTS)
    weights = [WEIGHTS[k] for k in kinds]
    faults = []
    for _ in range(cfg.count):
        faults.append(
            Fault(
                kind=rng.choices(kinds, weights)[0],
                silo=rng.choice(silos),
                gap_s=round(rng.uniform(*cfg.gap_s), 2),
                duration_s=round(rng.uniform(*cfg.down_s), 2),
                cut_bytes=rng.randint(*cfg.cut_bytes),
            )
        )
    return faults
