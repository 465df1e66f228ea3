"""The aggregator's typed configuration, loaded from `aggregator.toml`.

[server]      where to listen, state directory, certificates
[rounds]      selection, quorum, deadlines, liveness
[outer]       the outer optimizer (see aggregator.strategies.OuterConfig)
[eval]        optional operator-held evaluation data
[federation]  the federation spec every silo receives (photon.federation.FederationSpec)
[privacy]     optional central differential privacy (aggregator.privacy.PrivacyConfig)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregator.privacy import PrivacyConfig
from aggregator.strategies import OuterConfig
from photon.configload import apply_env_overrides, from_mapping, read_toml
from photon.errors import ConfigError
from photon.federation import FederationSpec
from photon.wire import DEFAULT_CHUNK_BYTES, check_chunk_bytes

_UNARY_WORKERS = 4
"""Workers that streams and long-polls can never take: short calls always find one."""


@dataclass(kw_only=True, slots=True)
class ServerConfig:
    """Network endpoint, storage and identity of the aggregator."""

    #: host:port to listen on; port 0 picks a free port (written to `port_file`).
    listen: str = "127.0.0.1:50051"
    #: Durable state: SQLite journal, spool of received updates, checkpoints.
    state_dir: Path = Path("aggregator-state")
    #: Federation certificate folder from `photon certs init` (ca.crt, aggregator.crt/.key).
    certs_dir: Path | None = None
    #: Plaintext gRPC. Only for experiments on a trusted host; logs a warning.
    insecure: bool = False
    #: Silo names allowed to join; empty means any silo holding a federation certificate.
    allowlist: list[str] = field(default_factory=list)
    #: Where to write the bound port once listening (useful with port 0).
    port_file: Path | None = None
    #: Transfer chunk size in bytes.
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    #: Worker threads serving RPCs. Must exceed max_transfers_total + rounds.max_long_polls
    #: by at least 4, so that short (unary) calls always find a free worker.
    max_workers: int = 128
    #: Checkpoints to keep on disk (older ones are pruned); 0 keeps all.
    keep_checkpoints: int = 0
    #: Refuse updates whose digest is not signed with the sending silo's certificate key.
    require_signatures: bool = True
    #: Concurrent Upload/Download streams allowed per silo.
    max_transfers_per_silo: int = 2
    #: Concurrent Upload/Download streams allowed in total.
    max_transfers_total: int = 64
    #: Unary requests per second per silo (bursts of 4x); 0 disables the limit.
    max_requests_per_s: float = 20.0
    #: Cancel a stream that moves no bytes for this many seconds (slow-loris defence).
    stream_idle_timeout_s: float = 120.0
    #: Cancel a stream that averages fewer bytes per second over a window of
    #: stream_idle_timeout_s (a trickle); a silo's max_upload_rate must exceed it. 0 disables.
    min_stream_bytes_per_s: float = 1024.0
    #: Concurrent RPCs of any method per silo, streams included (each holds a worker thread);
    #: must be >= max_transfers_per_silo + 2.
    max_concurrent_per_silo: int = 4
    #: Unfinished uploads (distinct transfer ids) a silo may have open at once.
    max_open_uploads_per_silo: int = 4
    #: Spool bytes (declared sizes) a silo's unfinished uploads may claim; 0 means twice the
    #: largest update the model allows.
    max_spool_bytes_per_silo: int = 0
    #: host:port of the Prometheus /metrics endpoint ("" disables it).
    metrics_listen: str = ""
    #: Reject an update whose L2 norm exceeds this multiple of the median of recently
    #: accepted updates (needs 3 of them first); 0 disables outlier rejection.
    max_norm_ratio: float = 0.0
    #: Close a connection that has not finished its TLS handshake within this many seconds
    #: (bounds half-open and silent connections from unauthenticated peers).
    handshake_timeout_s: float = 10.0
    #: Most incoming connections held at once, handshaking or not; further ones are closed at
    #: once. Lowered at start to fit the process's file-descriptor limit.
    max_connections: int = 512
    #: Reject an update whose L2 norm exceeds this multiple of lr × local_steps × √parameters
    #: (every parameter moving by the peak learning rate at every local step; honest AdamW
    #: deltas stay far below). Keeps one member from swamping or overflowing the aggregate;
    #: 0 disables it (not recommended).
    update_norm_bound: float = 10.0
    #: Training processes (torchrun ranks) one silo may run. An update's num_tokens, its
    #: aggregation weight, may be at most local_steps × grad_accum × batch_size × seq_len ×
    #: this (batch_size is per process); a larger claim is rejected.
    max_silo_processes: int = 8

    def __post_init__(self) -> None:
        if ":" not in self.listen:
            raise ConfigError(
                f"server.listen = {self.listen!r} must be host:port (e.g. 0.0.0.0:50051)"
            )
        if not self.insecure and self.certs_dir is None:
            raise ConfigError(
                "server.certs_dir is required (make one with `photon certs init`), "
                "or set server.insecure = true for a plaintext experiment"
            )
        if self.max_transfers_per_silo < 1 or self.max_transfers_total < 1:
            raise ConfigError("server.max_transfers_per_silo and max_transfers_total must be >= 1")
        if self.stream_idle_timeout_s <= 0 or self.max_norm_ratio < 0:
            raise ConfigError("server.stream_idle_timeout_s must be > 0, max_norm_ratio >= 0")
        self._check_quotas()
        check_chunk_bytes(self.chunk_bytes, "server.chunk_bytes")
        if self.handshake_timeout_s <= 0 or self.max_connections < 1:
            raise ConfigError(
                "server.handshake_timeout_s must be > 0 and server.max_connections >= 1 "
                "(try 10.0 and 512)"
            )
        if not self.update_norm_bound >= 0 or self.max_silo_processes < 1:
            raise ConfigError(
                "server.update_norm_bound must be >= 0 (try 10) and max_silo_processes >= 1"
            )

    def _check_quotas(self) -> None:
        if self.max_concurrent_per_silo < self.max_transfers_per_silo + 2:
            raise ConfigError(
                f"server.max_concurrent_per_silo = {self.max_concurrent_per_silo} must be >= "
                "server.max_transfers_per_silo + 2, so that a silo at its transfer limit can "
                "still send a heartbeat and ask for a task"
            )
        if self.max_open_uploads_per_silo < 1:
            raise ConfigError("server.max_open_uploads_per_silo must be >= 1")
        if self.min_stream_bytes_per_s < 0 or self.max_spool_bytes_per_silo < 0:
            raise ConfigError(
                "server.min_stream_bytes_per_s and server.max_spool_bytes_per_silo must be >= 0"
            )


@dataclass(kw_only=True, slots=True)
class RoundsConfig:
    """How a round selects silos and when it closes."""

    #: Silos that must have joined before the first round opens.
    min_silos: int = 1
    #: Silos sampled per round (seeded, uniform without replacement); 0 means all joined.
    silos_per_round: int = 0
    #: Updates needed to close a round at its deadline, as a fraction of the selected silos.
    quorum: float = 1.0
    #: Seconds a round stays open for updates before it closes with the quorum it has.
    deadline_s: float = 600.0
    #: A silo with no RPC for this long is marked lost and is not waited for.
    heartbeat_timeout_s: float = 30.0
    #: Longest a GetTask long-poll waits before answering WAIT.
    long_poll_s: float = 10.0
    #: GetTask calls that may wait (each parks a worker thread) at once, at most one per
    #: silo; others answer WAIT at once with a retry_after.
    max_long_polls: int = 32

    def __post_init__(self) -> None:
        if self.min_silos < 1:
            raise ConfigError("rounds.min_silos must be >= 1")
        if self.silos_per_round < 0:
            raise ConfigError("rounds.silos_per_round must be >= 0 (0 = all)")
        if not 0.0 < self.quorum <= 1.0:
            raise ConfigError("rounds.quorum must be within (0, 1]")
        for name in ("deadline_s", "heartbeat_timeout_s", "long_poll_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"rounds.{name} must be > 0")
        if self.max_long_polls < 1:
            raise ConfigError("rounds.max_long_polls must be >= 1")


@dataclass(kw_only=True, slots=True)
class EvalConfig:
    """Operator-held evaluation data (a `photon data prepare` folder); optional."""

    #: Prepared token folder whose held-out split evaluates every global version.
    data_dir: Path | None = None
    #: Batches per evaluation.
    batches: int = 16


@dataclass(kw_only=True, slots=True)
class AggregatorConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    outer: OuterConfig = field(default_factory=OuterConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    federation: FederationSpec = field(default_factory=FederationSpec)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    def __post_init__(self) -> None:
        if self.rounds.silos_per_round and self.rounds.silos_per_round < self.rounds.min_silos:
            raise ConfigError(
                "rounds.silos_per_round is smaller than rounds.min_silos; "
                "raise silos_per_round or lower min_silos"
            )
        srv, spare = self.server, _UNARY_WORKERS
        if srv.max_workers - srv.max_transfers_total - self.rounds.max_long_polls < spare:
            raise ConfigError(
                f"server.max_workers = {srv.max_workers} must be at least "
                f"server.max_transfers_total ({srv.max_transfers_total}) + "
                f"rounds.max_long_polls ({self.rounds.max_long_polls}) + {spare}: streams and "
                "long-polls must leave workers for short calls; raise max_workers or lower "
                "the others"
            )


def load_aggregator_config(path: Path, environ: dict[str, str] | None = None) -> AggregatorConfig:
    """Read `aggregator.toml`, apply PHOTON__* environment overrides, validate."""
    data: dict[str, Any] = read_toml(path)
    apply_env_overrides(data, environ)
    config = from_mapping(AggregatorConfig, data)
    _resolve_relative_paths(config, Path(path).parent)
    return config


def _resolve_relative_paths(config: AggregatorConfig, base: Path) -> None:
    srv = config.server
    srv.state_dir = base / srv.state_dir
    if srv.certs_dir is not None:
        srv.certs_dir = base / srv.certs_dir
    if srv.port_file is not None:
        srv.port_file = base / srv.port_file
    if config.eval.data_dir is not None:
        config.eval.data_dir = base / config.eval.data_dir
