"""Build the files of a local federation: certificates, per-silo data, TOML configs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from photon.data import prepare
from photon.localfed.corpus import split_stdlib
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
    text_dirs, eval_text = split_stdlib(
        workdir / "text", opts.silos, bytes_per_silo=opts.bytes_per_silo, eval_bytes=opts.eval_bytes
    )
    tokenizer = ByteTokenizer()
    for name, text in zip(names, text_dirs, strict=True):
        prepare(text, workdir / "data" / name, tokenizer, heldout_fraction=0.05, seed=opts.seed)
    prepare(eval_text, workdir / "data" / "eval", tokenizer, heldout_fraction=1.0, seed=opts.seed)
    agg = workdir / "aggregator.toml"
    agg.write_text(_aggregator_toml(opts))
    silo_cfgs = []
    for name in names:
        path = workdir / f"{name}.toml"
        path.write_text(_silo_toml(name))
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


def _aggregator_toml(o: LocalOptions) -> str:
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
name = "{o.outer}"

[eval]
data_dir = "data/eval"
batches = 16

[federation]
name = "photon-local"
preset = "{o.preset}"
rounds = {o.rounds}
local_steps = {o.local_steps}
codec = "{o.codec}"
seed = {o.seed}
eval_batches = 8
"""


def _silo_toml(name: str) -> str:
    return f"""# Written by `photon local`; the aggregator address is in PHOTON__SILO__AGGREGATOR.
[silo]
name = "{name}"
aggregator = "localhost:0"
data_dir = "data/{name}"
state_dir = "state/{name}"
certs_dir = "certs"
threads = 1

[retry]
initial_s = 0.2
max_s = 2.0
give_up_after_s = 120
"""
