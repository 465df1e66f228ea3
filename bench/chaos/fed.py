"""One federation run of the chaos benchmark: an aggregator and N silo processes, each silo
behind its own link emulator, with a fault schedule played against it while it runs.

The processes and links come from the fault-injection tests (tests/harness.py,
tests/faults/_support.py), so the benchmark exercises exactly what the tests do, at scale.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bandwidth.link import LinkEmulator, LinkProfile
from bench.chaos.audit import Accounting, account
from bench.chaos.schedule import Fault
from photon.cli.localfed.launcher import Launcher
from tests.faults._support import faults_federation, linked_silos, start_aggregator, start_silo

CUT_WAIT_S = 20.0
"""How long an armed cut may wait for its bytes before it is counted as not injected (it stays
armed; if it fires later it shows in `link_level_faults`)."""


@dataclass(frozen=True, slots=True)
class FedShape:
    """Size of the federation every run of one benchmark shares."""

    silos: int
    rounds: int
    local_steps: int
    timeout_s: float
    """Bound on one run, faults included."""


@dataclass(slots=True)
class RunResult:
    name: str
    wall_s: float
    exit_codes: dict[str, int]
    summary: dict[str, Any]
    accounting: Accounting
    injected: list[dict[str, Any]] = field(default_factory=list)
    link_faults: int = 0

    def record(self) -> dict[str, Any]:
        return {
            "wall_s": round(self.wall_s, 1),
            "exit_codes": self.exit_codes,
            "version": self.summary.get("version"),
            "param_digest": self.summary.get("param_digest"),
            "final_eval_loss": self.summary.get("final_eval_loss"),
            "faults": self.injected,
            "link_level_faults": self.link_faults,
            **self.accounting.record(),
        }


class ChaosRun:
    """Start the federation, play `schedule` until it ends or the federation is done, wait."""

    def __init__(self, root: Path, shape: FedShape, echo: Callable[[str], None]) -> None:
        self.shape = shape
        self.echo = echo
        self.fed: Launcher = faults_federation(
            root, silos=shape.silos, rounds=shape.rounds, local_steps=shape.local_steps
        )
        self.links: dict[str, LinkEmulator] = {}
        self._started = 0.0

    def run(self, name: str, schedule: list[Fault]) -> RunResult:
        with linked_silos(self.fed) as links:
            self.links = links
            self._started = time.monotonic()
            injected: list[dict[str, Any]] = []
            try:
                start_aggregator(self.fed)
                for silo in self.fed.silos:
                    start_silo(self.fed, silo)
                self._play(schedule, injected)
                remaining = self.shape.timeout_s - (time.monotonic() - self._started)
                codes = self.fed.wait_all(timeout=max(1.0, remaining))
            finally:
                self.fed.stop_all()
            wall = time.monotonic() - self._started
            link_faults = sum(link.faults_injected for link in links.values())
        return RunResult(
            name=name,
            wall_s=wall,
            exit_codes=codes,
            summary=self.fed.summary(),
            accounting=account(self.fed.state_dir),
            injected=injected,
            link_faults=link_faults,
        )

    # -- the schedule ------------------------------------------------------------------------

    def _play(self, schedule: list[Fault], injected: list[dict[str, Any]]) -> None:
        for fault in schedule:
            if self._wait(fault.gap_s):
                self.echo(f"  federation done; {len(schedule) - len(injected)} faults unplayed")
                return
            at = round(time.monotonic() - self._started, 1)
            if self._inject(fault):
                injected.append({"at_s": at, **fault.record()})
                target = "-" if fault.kind == "aggregator_kill" else fault.silo
                self.echo(f"  {at:7.1f}s  {fault.kind:<16} {target}")

    def _done(self) -> bool:
        aggregator = self.fed.procs["aggregator"]
        return bool(self.fed.summary().get("done")) or aggregator.poll() is not None

    def _wait(self, seconds: float) -> bool:
        """Sleep `seconds`; True as soon as the federation is done (or its time is up)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self._done() or time.monotonic() - self._started > self.shape.timeout_s:
                return True
            time.sleep(0.1)
        return self._done()

    def _inject(self, fault: Fault) -> bool:
        if fault.kind == "silo_kill":
            return self._kill(fault.silo, fault.duration_s)
        if fault.kind == "aggregator_kill":
            return self._kill("aggregator", fault.duration_s)
        link = self.links[fault.silo]
        if fault.kind == "cut":
            return self._cut(link, fault.cut_bytes)
        if fault.kind == "partition":
            link.blackhole(True)
            self._wait(fault.duration_s)
            link.blackhole(False)
        else:  # stall
            link.set_profile(LinkProfile.parse(rate=fault.stall_rate))
            self._wait(fault.duration_s)
            link.set_profile(LinkProfile())
        return True

    def _cut(self, link: LinkEmulator, n_bytes: int) -> bool:
        """Arm a cut; it counts once it has reset a connection (within CUT_WAIT_S)."""
        before = link.faults_injected
        link.cut_after(n_bytes, direction="both")
        end = time.monotonic() + CUT_WAIT_S
        while time.monotonic() < end and not self._done():
            if link.faults_injected > before:
                return True
            time.sleep(0.1)
        return link.faults_injected > before

    def _kill(self, name: str, down_s: float) -> bool:
        """kill -9 `name`, leave it down for `down_s`, start it again on the same state."""
        proc = self.fed.procs[name]
        if proc.poll() is not None:
            return False  # it finished its work: nothing left to interrupt
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        time.sleep(down_s)
        if name == "aggregator":
            start_aggregator(self.fed)
        else:
            start_silo(self.fed, name)
        return True
