"""The silo agent's typed configuration, loaded from `silo.toml`.

[silo]      identity, aggregator address, data and state folders, certificates, compute
[retry]     back-off when the aggregator is unreachable (photon.retry.RetryPolicy)
[transfer]  chunk size and bandwidth caps
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from photon.configload import apply_env_overrides, from_mapping, read_toml
from photon.errors import ConfigError
from photon.retry import RetryPolicy
from photon.wire import DEFAULT_CHUNK_BYTES, check_chunk_bytes


@dataclass(kw_only=True, slots=True)
class SiloSection:
    """Who this silo is and where its things are."""

    #: The silo's name: the common name of its certificate (certs_dir/silos/<name>.crt).
    name: str
    #: host:port of the aggregator.
    aggregator: str = "localhost:50051"
    #: Prepared token folder (`photon data prepare`); never leaves this machine.
    data_dir: Path
    #: Durable local state: cached global model, trainer state, pending update.
    state_dir: Path = Path("silo-state")
    #: Federation certificate folder holding ca.crt and silos/<name>.crt/.key.
    certs_dir: Path | None = None
    #: Plaintext gRPC; only for experiments on a trusted host; logs a warning.
    insecure: bool = False
    #: Torch CPU threads (0: torch's default).
    threads: int = 0
    #: "auto" (CUDA when present), "cpu" or "cuda".
    device: str = "auto"
    #: host:port of the Prometheus /metrics endpoint ("" disables it).
    metrics_listen: str = ""
    #: How the processes of a silo under torchrun share its training: "ddp" (every process
    #: holds the whole model; gradients averaged) or "fsdp" (FSDP2: parameters, gradients and
    #: optimizer moments sharded over the processes, for a model that outgrows one GPU).
    #: One process (no torchrun) trains the whole model either way.
    parallelism: Literal["ddp", "fsdp"] = "ddp"
    #: Recompute each transformer block's activations during the backward pass instead of
    #: keeping them (less GPU memory, about a third more compute); needs parallelism = "fsdp".
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if ":" not in self.aggregator:
            raise ConfigError(f"silo.aggregator = {self.aggregator!r} must be host:port")
        if not self.insecure and self.certs_dir is None:
            raise ConfigError(
                "silo.certs_dir is required (from `photon certs init` or "
                "`photon certs request`), or set silo.insecure = true"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError("silo.device must be one of auto, cpu, cuda")
        if self.threads < 0:
            raise ConfigError("silo.threads must be >= 0")
        if self.activation_checkpointing and self.parallelism != "fsdp":
            raise ConfigError(
                'silo.activation_checkpointing = true needs silo.parallelism = "fsdp" '
                "(under torchrun); set both, or turn activation_checkpointing off"
            )


@dataclass(kw_only=True, slots=True)
class TransferSection:
    """How bytes move."""

    #: Chunk size in bytes for uploads.
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    #: Upload cap, e.g. "50MB/s", "100mbit" or "unlimited". Keep it well above the
    #: aggregator's server.min_stream_bytes_per_s (1 KiB/s by default): slower streams are cut.
    max_upload_rate: str = "unlimited"
    #: Download cap, same syntax (and the same floor).
    max_download_rate: str = "unlimited"
    #: Per-RPC deadline for unary calls, seconds.
    rpc_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        check_chunk_bytes(self.chunk_bytes, "transfer.chunk_bytes")


@dataclass(kw_only=True, slots=True)
class SiloConfig:
    silo: SiloSection
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    transfer: TransferSection = field(default_factory=TransferSection)


def load_silo_config(path: Path, environ: dict[str, str] | None = None) -> SiloConfig:
    data: dict[str, Any] = read_toml(path)
    apply_env_overrides(data, environ)
    if "silo" not in data:
        raise ConfigError(f"{path}: missing the [silo] table (see `photon config example silo`)")
    cfg = from_mapping(SiloConfig, data)
    base = Path(path).parent
    s = cfg.silo
    s.data_dir, s.state_dir = base / s.data_dir, base / s.state_dir
    if s.certs_dir is not None:
        s.certs_dir = base / s.certs_dir
    return cfg
