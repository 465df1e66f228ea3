"""`photon link`: run the WAN link emulator between a silo and the aggregator."""

from __future__ import annotations

import click

from photon.cli.common import (
    log_format_option,
    log_level_option,
    photon_errors_as_click,
    setup_logs,
    stop_on_signals,
)
from photon.errors import ConfigError


def parse_address(text: str, *, key: str) -> tuple[str, int]:
    """('host', port) from 'host:port' or '[v6addr]:port'."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{key}: cannot read {text!r}; write HOST:PORT, e.g. 127.0.0.1:7000")
    return host, int(port)


def parse_flap(text: str) -> tuple[float, float]:
    """(period_s, down_s) from 'PERIOD:DOWN', e.g. '120s:5s'."""
    from bandwidth.link_profile import parse_duration

    period, sep, down = text.partition(":")
    if not sep:
        raise ConfigError(f"flap: cannot read {text!r}; write PERIOD:DOWN, e.g. --flap 120s:5s")
    return parse_duration(period, key="flap period"), parse_duration(down, key="flap down")


@click.command()
@click.option("--listen", required=True, help="HOST:PORT to accept silo connections on.")
@click.option("--upstream", required=True, help="HOST:PORT of the aggregator.")
@click.option(
    "--rate",
    default="unlimited",
    show_default=True,
    help="Per direction: '50mbit', '1gbit', '10MB/s' or 'unlimited'.",
)
@click.option("--latency", default="0ms", show_default=True, help="One-way delay, e.g. 80ms.")
@click.option(
    "--jitter",
    default="0ms",
    show_default=True,
    help="Delay varies within latency ± jitter (never reordering bytes).",
)
@click.option(
    "--flap",
    default=None,
    metavar="PERIOD:DOWN",
    help="Black-hole the link for DOWN at the end of every PERIOD, e.g. 120s:5s.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the jitter.")
@log_format_option
@log_level_option
@photon_errors_as_click
def link(
    listen: str,
    upstream: str,
    rate: str,
    latency: str,
    jitter: str,
    flap: str | None,
    seed: int,
    log_format: str,
    log_level: str,
) -> None:
    """Forward TCP from --listen to --upstream through an emulated WAN link, until
    SIGTERM/SIGINT. gRPC over TLS passes through as opaque bytes.

    \b
    Example (a hospital uplink across an ocean that drops now and then):
      photon link --listen 0.0.0.0:7000 --upstream aggregator:50051 \\
        --rate 50mbit --latency 80ms --jitter 10ms --flap 120s:5s
    """
    setup_logs(log_format, log_level)
    from bandwidth.link import LinkEmulator, LinkProfile

    profile = LinkProfile.parse(rate=rate, latency=latency, jitter=jitter, seed=seed)
    flap_spec = None if flap is None else parse_flap(flap)
    emulator = LinkEmulator(
        parse_address(listen, key="listen"), parse_address(upstream, key="upstream"), profile
    )
    stop = stop_on_signals()
    with emulator:
        if flap_spec is not None:
            emulator.flap(*flap_spec)
        stop.wait()
