"""`photon silo run`: run a silo agent."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from photon.cli.common import daemon_options, load_daemon_config, setup_logs, stop_on_signals


@click.group()
def silo() -> None:
    """The silo agent (run by each institution, next to its data)."""


@silo.command()
@daemon_options("silo.toml")
def run(config_path: Path, insecure: bool, log_format: str, log_level: str) -> None:
    """Join the federation and train until it is done (exit 0). Safe to kill at any time:
    a restart continues from the durable state in silo.state_dir.

    \b
    Example:
      photon silo run --config silo.toml
    """
    setup_logs(log_format, log_level)
    from silo_agent.config import load_silo_config
    from silo_agent.launch import run_silo

    cfg = load_daemon_config(load_silo_config, config_path, "silo", insecure)
    stop = stop_on_signals(hard_exit=True)
    sys.exit(run_silo(cfg, stop))
