"""Serve a Prometheus registry over HTTP (both daemons)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from photon.errors import ConfigError
from photon.logs import get_logger

log = get_logger("photon.metrics")


def serve_metrics(listen: str, registry: CollectorRegistry) -> tuple[Any, int] | None:
    """Start the /metrics endpoint on `listen` (host:port; port 0 picks one); "" disables.
    Returns (server, bound port)."""
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    try:
        server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"metrics_listen = {listen!r}: cannot listen ({exc})") from exc
    bound = int(server.server_address[1])
    log.info("metrics_listening", address=f"{host}:{bound}")
    return server, bound
