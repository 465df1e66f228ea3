"""`photon local`: run a real federation on this machine and print what happens.

One aggregator process and N silo processes on loopback with mTLS, exactly as they would run at
different institutions, supervised until the federation is done.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from photon.cli.localfed.launcher import Launcher, LaunchError
from photon.cli.localfed.setup import LocalOptions, build
from photon.cli.localfed.table import RoundTable

Echo = Callable[[str], None]


@dataclass(slots=True)
class LocalFederation:
    workdir: Path
    opts: LocalOptions
    echo: Echo = print
    timeout_s: float = 1800.0

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        self.echo(f"photon local: work directory {self.workdir}")
        fed = build(self.workdir, self.opts)
        self.echo(
            f"  certificates, {self.opts.silos} silos' data and configs ready "
            f"({time.monotonic() - started:.1f}s)"
        )
        try:
            fed.start_aggregator()
            for name, cfg in fed.silos.items():
                cfg.silo.aggregator = f"localhost:{fed.port}"
                fed.start_silo(name)
            self.echo(
                f"  aggregator on localhost:{fed.port} (mTLS); silos started; logs in {fed.log_dir}"
            )
            self._supervise(fed)
        finally:
            fed.stop_all(grace_s=30)
        return self._finish(fed, time.monotonic() - started)

    def _supervise(self, fed: Launcher) -> None:
        table = RoundTable(self.echo, silos=list(fed.silos))
        deadline = time.monotonic() + self.timeout_s
        while fed.running():
            fed.check_alive()
            table.update(fed.summary())
            if time.monotonic() > deadline:
                raise LaunchError(f"the federation did not finish within {self.timeout_s}s")
            time.sleep(0.25)
        fed.check_alive()
        table.update(fed.summary())

    def _finish(self, fed: Launcher, seconds: float) -> dict[str, Any]:
        summary = fed.summary()
        if not summary:
            raise LaunchError("the aggregator wrote no summary.json")
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


def prepare_workdir(workdir: Path | None) -> Path:
    """A fresh directory: the given one if empty or absent, else a new temporary one."""
    if workdir is None:
        import tempfile

        return Path(tempfile.mkdtemp(prefix="photon-local-"))
    if workdir.exists() and any(workdir.iterdir()):
        raise LaunchError(
            f"work directory {workdir} is not empty; choose another --workdir or remove it"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir
