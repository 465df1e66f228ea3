"""Wire settings both daemons share: message limits, keepalive, the insecure identity header."""

from __future__ import annotations

#: Metadata key naming the silo on a plaintext (--insecure) connection, where no certificate
#: carries its identity. Ignored on TLS connections.
INSECURE_IDENTITY_KEY = "x-photon-silo"


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
