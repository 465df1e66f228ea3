"""Start a federation of real processes from typed configs: the one launcher behind
`photon local`, the integration tests and the fault-injection tests.

The configs are `AggregatorConfig` and `SiloConfig` objects; each is written as TOML (from the
dataclasses, by `photon.cli.configwrite`) just before its process starts, so what a caller changes
on the objects is what the process reads. Every process runs `python -m photon ...` exactly as
an operator would, in `root`, its output in `<log_dir>/<name>.log`. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregator.config import AggregatorConfig, ServerConfig
from photon.cli.configwrite import to_toml
from photon.errors import PhotonError
from photon.faults import ENV as CRASH_ENV
from silo_agent.config import SiloConfig, SiloSection

AGGREGATOR = "aggregator"


class LaunchError(PhotonError):
    """A process of the federation failed or did not get ready in time; names its log."""


def aggregator_config(root: Path, *, listen: str = "127.0.0.1:0") -> AggregatorConfig:
    """An aggregator with its state, certificates and port file under `root` (mTLS)."""
    server = ServerConfig(
        listen=listen,
        port_file=root / "aggregator.port",
        state_dir=root / "aggregator-state",
        certs_dir=root / "certs",
    )
    return AggregatorConfig(server=server)


def silo_config(root: Path, name: str, data_dir: Path, *, aggregator: str) -> SiloConfig:
    """Silo `name` with its state under `root/state/<name>`, one torch thread, mTLS."""
    section = SiloSection(
        name=name,
        aggregator=aggregator,
        data_dir=data_dir,
        state_dir=root / "state" / name,
        certs_dir=root / "certs",
        threads=1,
    )
    return SiloConfig(silo=section)


@dataclass(slots=True)
class Launcher:
    """An aggregator and silos, started, watched and stopped as processes."""

    root: Path
    aggregator: AggregatorConfig
    silos: dict[str, SiloConfig]
    #: Where `<name>.log` files go (default: `root`).
    log_dir: Path | None = None
    #: Extra environment for every process.
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: The aggregator's port: the one in its `listen`, or the bound one once it listens.
    port: int = 0

    def __post_init__(self) -> None:
        self.port = int(self.aggregator.server.listen.rsplit(":", 1)[1])

    @property
    def state_dir(self) -> Path:
        return self.aggregator.server.state_dir

    def config_path(self, name: str) -> Path:
        return self.root / f"{name}.toml"

    def log_path(self, name: str) -> Path:
        return (self.log_dir or self.root) / f"{name}.log"

    def write_configs(self) -> None:
        """Write every config as `<root>/<name>.toml`."""
        self._write(AGGREGATOR, self.aggregator)
        for name, cfg in self.silos.items():
            self._write(name, cfg)

    def _write(self, name: str, cfg: AggregatorConfig | SiloConfig) -> Path:
        path = self.config_path(name)
        path.write_text(to_toml(cfg, f"{name}: written by photon.cli.localfed.launcher"))
        return path

    def start_aggregator(
        self,
        *,
        exit_when_done: bool = True,
        env: Mapping[str, str] | None = None,
        prefix: Sequence[str] = (),
        timeout_s: float = 120.0,
    ) -> subprocess.Popen[bytes]:
        """Write its config, start it, and wait until it listens (its port file appears)."""
        port_file = self.aggregator.server.port_file
        assert port_file is not None, "the launcher learns the port from server.port_file"
        port_file.unlink(missing_ok=True)
        args = ["aggregator", "serve", "--config", str(self._write(AGGREGATOR, self.aggregator))]
        if exit_when_done:
            args.append("--exit-when-done")
        proc = self.spawn(AGGREGATOR, args, env, prefix)
        deadline = time.monotonic() + timeout_s
        while not port_file.exists():
            if proc.poll() is not None:
                raise LaunchError(self._failure(AGGREGATOR, f"exited with code {proc.returncode}"))
            if time.monotonic() > deadline:
                raise LaunchError(self._failure(AGGREGATOR, f"not listening after {timeout_s}s"))
            time.sleep(0.1)
        self.port = int(port_file.read_text())
        return proc

    def start_silo(
        self, name: str, *, env: Mapping[str, str] | None = None, prefix: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        """Write silo `name`'s config and start it."""
        path = self._write(name, self.silos[name])
        return self.spawn(name, ["silo", "run", "--config", str(path)], env, prefix)

    def spawn(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        prefix: Sequence[str] = (),
        python: Sequence[str] = (sys.executable,),
    ) -> subprocess.Popen[bytes]:
        """`PREFIX PYTHON -m photon ARGS --log-format json`, `env` for this process only.

        `prefix` wraps the process (e.g. `ip netns exec NS`); `python` is what runs the module
        (e.g. `python -m torch.distributed.run --nproc_per_node 2`)."""
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        full_env.pop(CRASH_ENV, None)
        full_env.update(env or {})
        self.log_path(name).parent.mkdir(parents=True, exist_ok=True)
        with self.log_path(name).open("ab") as log:
            proc = subprocess.Popen(
                [*prefix, *python, "-m", "photon", *args, "--log-format", "json"],
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
            )
        self.procs[name] = proc
        return proc

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs.values())

    def check_alive(self) -> None:
        """Raise LaunchError naming the first process that exited with an error."""
        for name, proc in self.procs.items():
            code = proc.poll()
            if code not in (None, 0):
                raise LaunchError(self._failure(name, f"exited with code {code}"))

    def wait_all(self, timeout: float) -> dict[str, int]:
        """Every process's exit code; LaunchError if one still runs after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise LaunchError(self._failure(name, f"still running after {timeout}s")) from None
        return codes

    def stop_all(self, grace_s: float = 20.0) -> None:
        """SIGTERM every running process; SIGKILL those still running after `grace_s`."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log(self, name: str, tail: int | None = 4000) -> str:
        """The process's log (its last `tail` characters; None for all of it)."""
        path = self.log_path(name)
        if not path.exists():
            return "(no log)"
        text = path.read_text(errors="replace")
        return text if tail is None else text[-tail:]

    def summary(self) -> dict[str, Any]:
        """The aggregator's summary.json; empty while there is none (or it is being replaced)."""
        try:
            return dict(json.loads((self.state_dir / "summary.json").read_bytes()))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _failure(self, name: str, what: str) -> str:
        tail = "\n".join(self.log(name, tail=None).splitlines()[-15:])
        return f"{name} {what}; see {self.log_path(name)}; last log lines:\n{tail}"
