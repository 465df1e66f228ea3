"""Helpers shared by the CLI commands: log setup, error reporting, signal handling."""

from __future__ import annotations

import functools
import os
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import click

from photon import logs
from photon.errors import PhotonError

F = TypeVar("F", bound=Callable[..., Any])

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


def insecure_environ(section: str, insecure: bool) -> dict[str, str]:
    """The environment to load a config with: --insecure sets `<section>.insecure`."""
    env = dict(os.environ)
    if insecure:
        env[f"PHOTON__{section.upper()}__INSECURE"] = "true"
    return env


def require_flag_for_insecure(section: str, configured: bool, flag: bool) -> None:
    if configured and not flag:
        raise PhotonError(
            f"{section}.insecure = true in the config: plaintext is never a "
            "default; pass --insecure on the command line to confirm"
        )


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
