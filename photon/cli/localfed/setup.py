"""Build a local federation: certificates, per-silo data, and the daemons' typed configs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aggregator.config import AggregatorConfig, EvalConfig, RoundsConfig
from aggregator.strategies import OuterConfig, StrategyName
from photon.cli.localfed.corpus import split_stdlib
from photon.cli.localfed.launcher import Launcher, aggregator_config, silo_config
from photon.data import prepare
from photon.errors import ConfigError
from photon.federation import Codec, FederationSpec, TrainingSpec
from photon.pki import init_federation
from photon.retry import RetryPolicy
from photon.tokenizer import ByteTokenizer
from silo_agent.config import SiloConfig


@dataclass(kw_only=True, slots=True)
class LocalOptions:
    silos: int = 3
    rounds: int = 5
    local_steps: int = 50
    preset: str = "tiny"
    codec: Codec = "fp32"
    outer: StrategyName = "fedavg"
    bytes_per_silo: int = 1_500_000
    eval_bytes: int = 400_000
    seed: int = 0
    #: Prepared data folders, one per silo, used instead of the standard-library split.
    data_dirs: tuple[Path, ...] | None = None
    #: Prepared folder whose held-out split the aggregator evaluates (with data_dirs).
    eval_dir: Path | None = None
    #: Inner-loop hyper-parameters ([federation.training]); None keeps the defaults.
    training: TrainingSpec | None = None
    #: Outer learning rate and momentum; None keeps the strategy's defaults.
    outer_lr: float | None = None
    outer_momentum: float | None = None
    #: Batches per aggregator evaluation ([eval] batches).
    eval_batches: int = 16

    def __post_init__(self) -> None:
        if self.data_dirs is not None and len(self.data_dirs) != self.silos:
            raise ConfigError(
                f"local: {len(self.data_dirs)} data_dirs for {self.silos} silos; give one each"
            )
        if (self.data_dirs is None) != (self.eval_dir is None):
            raise ConfigError("local: data_dirs and eval_dir go together; give both or neither")


def build(workdir: Path, opts: LocalOptions) -> Launcher:
    """Create certificates, prepare each silo's data and the eval set, build the configs."""
    workdir = workdir.resolve()
    names = [f"silo-{i}" for i in range(opts.silos)]
    init_federation(workdir / "certs", silos=names)
    if opts.data_dirs is None or opts.eval_dir is None:
        data_dirs, eval_dir = _stdlib_data(workdir, opts, names)
    else:
        data_dirs, eval_dir = [d.resolve() for d in opts.data_dirs], opts.eval_dir.resolve()
    silos = {
        name: _silo_config(workdir, name, data_dir)
        for name, data_dir in zip(names, data_dirs, strict=True)
    }
    launcher = Launcher(
        root=workdir,
        aggregator=_aggregator_config(workdir, opts, names, eval_dir),
        silos=silos,
        log_dir=workdir / "logs",
    )
    launcher.write_configs()
    return launcher


def _stdlib_data(workdir: Path, opts: LocalOptions, names: list[str]) -> tuple[list[Path], Path]:
    """Split the standard library into the silos' and the eval set's prepared folders."""
    text_dirs, eval_text = split_stdlib(
        workdir / "text", opts.silos, bytes_per_silo=opts.bytes_per_silo, eval_bytes=opts.eval_bytes
    )
    tokenizer = ByteTokenizer()
    data = workdir / "data"
    for name, text in zip(names, text_dirs, strict=True):
        prepare(text, data / name, tokenizer, heldout_fraction=0.05, seed=opts.seed)
    prepare(eval_text, data / "eval", tokenizer, heldout_fraction=1.0, seed=opts.seed)
    return [data / n for n in names], data / "eval"


def _aggregator_config(
    workdir: Path, o: LocalOptions, names: list[str], eval_dir: Path
) -> AggregatorConfig:
    """One aggregator on loopback, mTLS, port chosen by the OS."""
    cfg = aggregator_config(workdir)
    cfg.server.allowlist = list(names)
    cfg.rounds = RoundsConfig(
        min_silos=o.silos, deadline_s=600.0, heartbeat_timeout_s=30.0, long_poll_s=5.0
    )
    cfg.outer = OuterConfig(name=o.outer, lr=o.outer_lr, momentum=o.outer_momentum)
    cfg.eval = EvalConfig(data_dir=eval_dir, batches=o.eval_batches)
    cfg.federation = FederationSpec(
        name="photon-local",
        preset=o.preset,
        rounds=o.rounds,
        local_steps=o.local_steps,
        codec=o.codec,
        seed=o.seed,
        eval_batches=8,
        training=o.training or TrainingSpec(),
    )
    return cfg


def _silo_config(workdir: Path, name: str, data_dir: Path) -> SiloConfig:
    """Its aggregator address is set once the aggregator listens."""
    cfg = silo_config(workdir, name, data_dir, aggregator="localhost:0")
    cfg.retry = RetryPolicy(initial_s=0.2, max_s=2.0, give_up_after_s=120.0)
    return cfg
