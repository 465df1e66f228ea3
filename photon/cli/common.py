"""Helpers shared by the CLI commands: log setup, error reporting, signal handling."""

from __future__ import annotations

import functools
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from photon import logs
from photon.errors import PhotonError

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C")

log_format_option = click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "console"]),
    default="auto",
    show_default=True,
    help="JSON lines for daemons and files; console for a person.",
)
log_level_option = click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)


insecure_option = click.option(
    "--insecure",
    is_flag=True,
    help="Plaintext gRPC without certificates: experiments on a trusted host only (logs a "
    "warning). Required as well when the config file says insecure = true.",
)


def load_daemon_config(
    loader: Callable[[Path, dict[str, str]], C], path: Path, section: str, insecure: bool
) -> C:
    """Load a daemon's config; `--insecure` sets `<section>.insecure`, and a config that asks
    for plaintext without the flag is refused."""
    env = dict(os.environ)
    if insecure:
        env[f"PHOTON__{section.upper()}__INSECURE"] = "true"
    cfg = loader(path, env)
    if getattr(getattr(cfg, section), "insecure", False) and not insecure:
        raise PhotonError(
            f"{section}.insecure = true in the config: plaintext is never a "
            "default; pass --insecure on the command line to confirm"
        )
    return cfg


def daemon_options(config_name: str) -> Callable[[F], F]:
    """--config, --insecure, --log-format, --log-level, and PhotonErrors shown as messages."""

    def decorate(fn: F) -> F:
        fn = photon_errors_as_click(fn)
        for option in (log_level_option, log_format_option, insecure_option):
            fn = option(fn)
        config = click.option(
            "--config",
            "config_path",
            required=True,
            help=config_name,
            type=click.Path(path_type=Path, dir_okay=False),
        )
        return config(fn)

    return decorate


def photon_errors_as_click(fn: F) -> F:
    """Show a PhotonError as `Error: message` (exit 1) instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PhotonError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def setup_logs(log_format: str, log_level: str) -> None:
    logs.configure(log_format, log_level)  # type: ignore[arg-type]


def stop_on_signals(*, hard_exit: bool = False) -> threading.Event:
    """An event set by SIGTERM/SIGINT. With `hard_exit`, the signal also raises SystemExit
    in the main thread (for work that only stops between steps, whose state is durable)."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        stop.set()
        if hard_exit:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop
