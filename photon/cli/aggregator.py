"""`photon aggregator serve`: run the aggregator daemon."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import click

from photon.cli.common import daemon_options, load_daemon_config, setup_logs, stop_on_signals


@click.group()
def aggregator() -> None:
    """The aggregator daemon (run by the federation's operator)."""


@aggregator.command()
@click.option(
    "--exit-when-done",
    is_flag=True,
    help="Exit once the last round is aggregated and every silo has left.",
)
@daemon_options("aggregator.toml")
def serve(
    exit_when_done: bool, config_path: Path, insecure: bool, log_format: str, log_level: str
) -> None:
    """Serve a federation until SIGTERM/SIGINT (graceful: finishes the step in progress).

    \b
    Example:
      photon aggregator serve --config aggregator.toml
    """
    setup_logs(log_format, log_level)
    from aggregator.config import load_aggregator_config
    from aggregator.server import AggregatorDaemon

    cfg = load_daemon_config(load_aggregator_config, config_path, "server", insecure)
    stop = stop_on_signals()
    daemon = AggregatorDaemon(cfg)
    daemon.start()
    try:
        daemon.serve(stop, exit_when_done=exit_when_done)
    except Exception:
        _exit_hard_after(30.0)  # a stuck non-daemon thread must not keep a dead daemon alive
        raise


def _exit_hard_after(seconds: float) -> None:
    """End the process with status 1 after `seconds` if it has not exited by then."""
    timer = threading.Timer(seconds, os._exit, args=(1,))
    timer.daemon = True
    timer.start()
