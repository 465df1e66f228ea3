"""`photon silo run`: run a silo agent."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from photon.cli.common import (
    insecure_environ,
    insecure_option,
    log_format_option,
    log_level_option,
    photon_errors_as_click,
    require_flag_for_insecure,
    setup_logs,
    stop_on_signals,
)


@click.group()
def silo() -> None:
    """The silo agent (run by each institution, next to its data)."""


@silo.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="silo.toml",
)
@insecure_option
@log_format_option
@log_level_option
@photon_errors_as_click
def run(config_path: Path, insecure: bool, log_format: str, log_level: str) -> None:
    """Join the federation and train until it is done (exit 0). Safe to kill at any time:
    a restart continues from the durable state in silo.state_dir.

    \b
    Example:
      photon silo run --config silo.toml
    """
    setup_logs(log_format, log_level)
    from silo_agent.agent import run_silo
    from silo_agent.config import load_silo_config

    cfg = load_silo_config(config_path, insecure_environ("silo", insecure))
    require_flag_for_insecure("silo", cfg.silo.insecure, insecure)
    stop = stop_on_signals(hard_exit=True)
    sys.exit(run_silo(cfg, stop))
