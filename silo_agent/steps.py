"""A round's local steps as the silo runs them: the trainer, reporting every step to the
heartbeat, the Prometheus metrics and a progress bar (or periodic log lines).

The agent calls it for every round; `bench/trainer.py` calls it to measure what this loop costs
against a bare torch loop.
"""

from __future__ import annotations

from typing import Protocol

from photon.trainer import TrainStats
from silo_agent.backend import RoundTrainer
from silo_agent.metrics import SiloMetrics
from silo_agent.progress import Progress


class StepListener(Protocol):
    """Told the global step and loss after each inner step (the heartbeat)."""

    def progress(self, step: int, loss: float) -> None: ...


def run_local_steps(
    trainer: RoundTrainer,
    steps: int,
    global_step: int,
    listener: StepListener,
    metrics: SiloMetrics,
) -> TrainStats:
    """Train `steps` steps from `global_step`, reporting each; the round's throughput at the end."""
    bar = Progress("train", steps, "step")

    def on_step(step: int, loss: float) -> None:
        listener.progress(step, loss)
        metrics.step.set(step)
        metrics.loss.set(loss)
        bar.update(1, loss=loss)

    try:
        stats = trainer.train(steps, global_step, on_step=on_step)
    finally:
        bar.close()
    metrics.tokens_per_s.set(stats.tokens_per_s)
    return stats
