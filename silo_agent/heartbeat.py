"""Liveness while the silo works: a background thread reporting phase, step and loss."""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc

from photon.faults import crash_point
from photon.logs import get_logger
from silo_agent.client import AggregatorClient

log = get_logger("silo_agent.heartbeat")


class Heartbeat:
    """Reports the silo's progress; keeps the aggregator's global version each reply names
    (`global_version`, -1 until a reply came) and passes it to `on_version`."""

    def __init__(
        self, client: AggregatorClient, on_version: Callable[[int], None] | None = None
    ) -> None:
        self.client = client
        self.on_version = on_version
        self.global_version = -1
        self.round = 0
        self.step = 0
        self.loss = 0.0
        self.phase = "idle"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set(self, *, round_: int | None = None, phase: str | None = None) -> None:
        if round_ is not None:
            self.round = round_
        if phase is not None:
            self.phase = phase

    def progress(self, step: int, loss: float) -> None:
        """Trainer callback after each inner step."""
        self.step, self.loss = step, loss
        crash_point("silo.train_step")

    def start(self, interval_s: float) -> None:
        interval = max(0.5, interval_s)
        self._thread = threading.Thread(
            target=self._run, args=(interval,), daemon=True, name="heartbeat"
        )
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.beat()

    def beat(self) -> None:
        """One heartbeat: report, and keep the global version the reply names."""
        try:
            reply = self.client.heartbeat(self.round, self.step, self.loss, self.phase)
        except grpc.RpcError as exc:
            log.debug("heartbeat_missed", code=exc.code().name)
            return
        self.global_version = int(reply.open_round)
        if self.on_version is not None:
            self.on_version(self.global_version)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
