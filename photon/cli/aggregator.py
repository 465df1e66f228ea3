"""`photon aggregator serve`: run the aggregator daemon."""

from __future__ import annotations

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
def aggregator() -> None:
    """The aggregator daemon (run by the federation's operator)."""


@aggregator.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="aggregator.toml",
)
@click.option(
    "--exit-when-done",
    is_flag=True,
    help="Exit once the last round is aggregated and every silo has left.",
)
@insecure_option
@log_format_option
@log_level_option
@photon_errors_as_click
def serve(
    config_path: Path, exit_when_done: bool, insecure: bool, log_format: str, log_level: str
) -> None:
    """Serve a federation until SIGTERM/SIGINT (graceful: finishes the step in progress).

    \b
    Example:
      photon aggregator serve --config aggregator.toml
    """
    setup_logs(log_format, log_level)
    from aggregator.config import load_aggregator_config
    from aggregator.server import AggregatorDaemon

    cfg = load_aggregator_config(config_path, insecure_environ("server", insecure))
    require_flag_for_insecure("server", cfg.server.insecure, insecure)
    stop = stop_on_signals()
    daemon = AggregatorDaemon(cfg)
    daemon.start()
    daemon.serve(stop, exit_when_done=exit_when_done)
