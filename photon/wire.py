"""Wire settings both daemons share: chunk-size bounds, message limits, keepalive, the insecure
identity header."""

from __future__ import annotations

from photon.errors import ConfigError

MIN_CHUNK_BYTES = 64 * 1024
"""The smallest transfer chunk a config may set."""
MAX_CHUNK_BYTES = 8 * 1024 * 1024
"""The largest transfer chunk a config may set (gRPC messages are allowed 1 MiB more)."""
DEFAULT_CHUNK_BYTES = 2 * 1024 * 1024
"""The transfer chunk both daemons use unless configured otherwise."""

#: Metadata key naming the silo on a plaintext (--insecure) connection, where no certificate
#: carries its identity. Ignored on TLS connections.
INSECURE_IDENTITY_KEY = "x-photon-silo"


def check_chunk_bytes(chunk_bytes: int, key: str) -> None:
    """ConfigError naming `key` when `chunk_bytes` is outside the bounds above."""
    if not MIN_CHUNK_BYTES <= chunk_bytes <= MAX_CHUNK_BYTES:
        raise ConfigError(
            f"{key} must be within [{MIN_CHUNK_BYTES}, {MAX_CHUNK_BYTES}] "
            f"(try {DEFAULT_CHUNK_BYTES})"
        )


def grpc_options(chunk_bytes: int) -> list[tuple[str, int]]:
    """Message limits a little above the chunk size; keepalive that tolerates a 30-minute
    local training phase (pings keep an idle connection alive, they do not time it out)."""
    limit = chunk_bytes + (1 << 20)
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_connection_options(
    *, max_connections: int, handshake_timeout_s: float
) -> list[tuple[str, int]]:
    """Bounds on unauthenticated connections, honoured by grpcio's core (checked by
    tests/test_exhaustion.py): at most `max_connections` held at once (more are closed on
    accept), and each must finish its TLS handshake within `handshake_timeout_s`."""
    return [
        ("grpc.max_allowed_incoming_connections", max_connections),
        ("grpc.server_handshake_timeout_ms", int(handshake_timeout_s * 1000)),
    ]
