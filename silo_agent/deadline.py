"""The round's deadline as the silo sees it: `Task.deadline_s`, the seconds the aggregator
still gives the round when it hands out the task."""

from __future__ import annotations

from photon.logs import get_logger
from photon.v1 import federation_pb2 as pb

log = get_logger("silo_agent.deadline")


def deadline_tight(last_train_s: float | None, deadline_s: float) -> bool:
    """Whether training alone, if it takes as long as the last round's (`last_train_s`; None
    before the first round), would outlast the `deadline_s` seconds left of this round."""
    return last_train_s is not None and last_train_s > deadline_s


def log_train_task(task: pb.Task, last_train_s: float | None) -> None:
    """The task line, with the round's remaining deadline; a warning when it looks too short."""
    log.info(
        "train_task",
        round=task.round,
        base_version=task.base_version,
        local_steps=task.local_steps,
        deadline_s=round(task.deadline_s, 1),
    )
    if deadline_tight(last_train_s, task.deadline_s):
        log.warning(
            "round_deadline_tight",
            round=task.round,
            deadline_s=round(task.deadline_s, 1),
            last_train_s=round(last_train_s or 0.0, 1),
            hint="the update may miss the round; fewer local_steps or a faster device would help",
        )
