"""Build the files of a local federation: certificates, per-silo data, TOML configs."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from photon.data import prepare
from photon.errors import ConfigError
from photon.federation import TrainingSpec
from photon.cli.localfed.corpus import split_stdlib
from photon.pki import init_federation
from photon.tokenizer import ByteTokenizer


@dataclass(kw_only=True, slots=True)
class LocalOptions:
    silos: int = 3
    rounds: int = 5
    local_steps: int = 50
    preset: str = "tiny"
    codec: str = "fp32"
    outer: str = "fedavg"
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


@dataclass(frozen=True, slots=True)
class LocalLayout:
    workdir: Path
    aggregator_config: Path
    silo_configs: tuple[Path, ...]
    port_file: Path
    summary: Path
    logs: Path


def build(workdir: Path, opts: LocalOptions) -> LocalLayout:
    """Create certificates, prepare each silo's data and the eval set, write configs."""
    certs = workdir / "certs"
    names = [f"silo-{i}" for i in range(opts.silos)]
    init_federation(certs, silos=names)
    if opts.data_dirs is None or opts.eval_dir is None:
        data_dirs, eval_dir = _stdlib_data(workdir, opts, names)
    else:
        data_dirs, eval_dir = [d.resolve() for d in opts.data_dirs], opts.eval_dir.resolve()
    agg = workdir / "aggregator.toml"
    agg.write_text(_aggregator_toml(opts, eval_dir))
    silo_cfgs = []
    for name, data_dir in zip(names, data_dirs, strict=True):
        path = workdir / f"{name}.toml"
        path.write_text(_silo_toml(name, data_dir))
        silo_cfgs.append(path)
    (workdir / "logs").mkdir(exist_ok=True)
    return LocalLayout(
        workdir=workdir,
        aggregator_config=agg,
        silo_configs=tuple(silo_cfgs),
        port_file=workdir / "aggregator.port",
        summary=workdir / "aggregator-state" / "summary.json",
        logs=workdir / "logs",
    )


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
    return [Path("data") / n for n in names], Path("data/eval")


def _toml_path(path: Path) -> str:
    return json.dumps(path.as_posix())


def _outer_toml(o: LocalOptions) -> str:
    lines = [f'name = "{o.outer}"']
    if o.outer_lr is not None:
        lines.append(f"lr = {o.outer_lr!r}")
    if o.outer_momentum is not None:
        lines.append(f"momentum = {o.outer_momentum!r}")
    return "\n".join(lines)


def _training_toml(o: LocalOptions) -> str:
    if o.training is None:
        return ""
    values = dataclasses.asdict(o.training)
    body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
    return f"\n[federation.training]\n{body}\n"


def _aggregator_toml(o: LocalOptions, eval_dir: Path) -> str:
    return f"""# Written by `photon local`: one aggregator on loopback, mTLS, port chosen by the OS.
[server]
listen = "127.0.0.1:0"
port_file = "aggregator.port"
state_dir = "aggregator-state"
certs_dir = "certs"
allowlist = [{", ".join(f'"silo-{i}"' for i in range(o.silos))}]

[rounds]
min_silos = {o.silos}
deadline_s = 600
heartbeat_timeout_s = 30
long_poll_s = 5

[outer]
{_outer_toml(o)}

[eval]
data_dir = {_toml_path(eval_dir)}
batches = {o.eval_batches}

[federation]
name = "photon-local"
preset = "{o.preset}"
rounds = {o.rounds}
local_steps = {o.local_steps}
codec = "{o.codec}"
seed = {o.seed}
eval_batches = 8
{_training_toml(o)}"""


def _silo_toml(name: str, data_dir: Path) -> str:
    return f"""# Written by `photon local`; the aggregator address is in PHOTON__SILO__AGGREGATOR.
[silo]
name = "{name}"
aggregator = "localhost:0"
data_dir = {_toml_path(data_dir)}
state_dir = "state/{name}"
certs_dir = "certs"
threads = 1

[retry]
initial_s = 0.2
max_s = 2.0
give_up_after_s = 120
"""
