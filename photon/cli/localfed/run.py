"""`photon local`: run a real federation on this machine and print what happens.

One aggregator process and N silo processes on loopback with mTLS, exactly as they would run at
different institutions, supervised until the federation is done.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from photon.errors import PhotonError
from photon.cli.localfed.setup import LocalLayout, LocalOptions, build
from photon.cli.localfed.table import RoundTable

Echo = Callable[[str], None]


class LocalRunError(PhotonError):
    """A process of the local federation failed; the message names its log."""


@dataclass(slots=True)
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]


@dataclass(slots=True)
class LocalFederation:
    workdir: Path
    opts: LocalOptions
    echo: Echo = print
    timeout_s: float = 1800.0
    procs: list[_Proc] = field(default_factory=list)

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        self.echo(f"photon local: work directory {self.workdir}")
        layout = build(self.workdir, self.opts)
        self.echo(
            f"  certificates, {self.opts.silos} silos' data and configs ready "
            f"({time.monotonic() - started:.1f}s)"
        )
        try:
            port = self._start_aggregator(layout)
            for cfg in layout.silo_configs:
                self._start(
                    cfg.stem,
                    ["silo", "run", "--config", str(cfg)],
                    layout,
                    {"PHOTON__SILO__AGGREGATOR": f'"localhost:{port}"'},
                )
            self.echo(
                f"  aggregator on localhost:{port} (mTLS); silos started; logs in {layout.logs}"
            )
            self._supervise(layout)
        finally:
            self._stop_all()
        return self._finish(layout, time.monotonic() - started)

    def _start(
        self, name: str, args: list[str], layout: LocalLayout, env: dict[str, str] | None = None
    ) -> None:
        log = (layout.logs / f"{name}.log").open("ab")
        cmd = [sys.executable, "-m", "photon", *args, "--log-format", "json"]
        popen = subprocess.Popen(
            cmd,
            cwd=layout.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.procs.append(_Proc(name, popen, log))

    def _start_aggregator(self, layout: LocalLayout) -> int:
        self._start(
            "aggregator",
            ["aggregator", "serve", "--config", str(layout.aggregator_config), "--exit-when-done"],
            layout,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if layout.port_file.exists():
                return int(layout.port_file.read_text())
            self._check_alive(layout)
            time.sleep(0.1)
        raise LocalRunError(
            "the aggregator did not start listening within 120 s; see "
            f"{layout.logs / 'aggregator.log'}"
        )

    def _supervise(self, layout: LocalLayout) -> None:
        table = RoundTable(self.echo, silos=[c.stem for c in layout.silo_configs])
        deadline = time.monotonic() + self.timeout_s
        while any(p.popen.poll() is None for p in self.procs):
            self._check_alive(layout)
            table.update(_read_json(layout.summary))
            if time.monotonic() > deadline:
                raise LocalRunError(f"the federation did not finish within {self.timeout_s}s")
            time.sleep(0.25)
        self._check_alive(layout)
        table.update(_read_json(layout.summary))

    def _check_alive(self, layout: LocalLayout) -> None:
        for p in self.procs:
            code = p.popen.poll()
            if code not in (None, 0):
                tail = _tail(layout.logs / f"{p.name}.log")
                raise LocalRunError(f"{p.name} exited with code {code}; last log lines:\n{tail}")

    def _stop_all(self) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
            p.log.close()

    def _finish(self, layout: LocalLayout, seconds: float) -> dict[str, Any]:
        summary = _read_json(layout.summary)
        if summary is None:
            raise LocalRunError("the aggregator wrote no summary.json")
        summary["workdir"] = str(self.workdir)
        summary["wall_seconds"] = round(seconds, 2)
        summary["silos"] = self.opts.silos
        out = self.workdir / "summary.json"
        out.write_text(json.dumps(summary, indent=2))
        first, last = summary.get("initial_eval_loss"), summary.get("final_eval_loss")
        ratio = (last / first) if first and last else float("nan")
        self.echo(
            f"done in {seconds:.1f}s: eval loss {first:.4f} -> {last:.4f} "
            f"(ratio {ratio:.3f}); checkpoint {summary['checkpoint']}"
        )
        self.echo(f"summary: {out}")
        return summary


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_bytes()))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def prepare_workdir(workdir: Path | None) -> Path:
    """A fresh directory: the given one if empty or absent, else a new temporary one."""
    if workdir is None:
        import tempfile

        return Path(tempfile.mkdtemp(prefix="photon-local-"))
    if workdir.exists() and any(workdir.iterdir()):
        raise LocalRunError(
            f"work directory {workdir} is not empty; choose another --workdir or remove it"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir
