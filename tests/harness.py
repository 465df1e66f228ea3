"""A real federation for tests: certificates, small generated data, daemons as processes.

The processes come from the one launcher (photon.cli.localfed.launcher), as in `photon local`;
what is specific to tests is here: a small generated corpus, a fixed free port (so a restarted
aggregator and link emulators keep one address), short deadlines and single-threaded torch.
Tests talk to the processes only through their files, their port and signals.
"""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path
from typing import Any

from aggregator.config import RoundsConfig
from photon.cli.localfed.launcher import Launcher, aggregator_config, silo_config
from photon.data import prepare
from photon.federation import Codec, FederationSpec, TrainingSpec
from photon.pki import init_federation
from photon.retry import RetryPolicy
from photon.tokenizer import ByteTokenizer

WORDS = [
    "federated",
    "training",
    "shares",
    "model",
    "deltas",
    "never",
    "data",
    "silo",
    "aggregator",
    "round",
    "token",
    "weight",
    "gradient",
    "optimizer",
    "checkpoint",
    "stream",
    "chunk",
    "digest",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_corpus(folder: Path, seed: int, docs: int = 30) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(docs):
        text = " ".join(rng.choice(WORDS) for _ in range(300)) + "\n"
        (folder / f"doc{i:03d}.txt").write_text(text)


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def make_federation(
    root: Path, *, silos: int = 2, rounds: int = 2, local_steps: int = 3, codec: Codec = "fp32"
) -> Launcher:
    """Certificates, data and configs (written) for `silos` silos; change the configs on the
    returned launcher (each is rewritten when its process starts)."""
    names = [f"silo-{i}" for i in range(silos)]
    init_federation(root / "certs", silos=names)
    for i, name in enumerate(names):
        write_corpus(root / "text" / name, seed=i)
        prepare(
            root / "text" / name,
            root / "data" / name,
            ByteTokenizer(),
            heldout_fraction=0.2,
            seed=0,
        )
    port = free_port()
    agg = aggregator_config(root, listen=f"127.0.0.1:{port}")
    agg.rounds = RoundsConfig(
        min_silos=silos, deadline_s=300.0, heartbeat_timeout_s=20.0, long_poll_s=2.0
    )
    training = TrainingSpec(batch_size=4, seq_len=32, warmup_steps=2)
    agg.federation = FederationSpec(
        rounds=rounds, local_steps=local_steps, codec=codec, eval_batches=2, training=training
    )
    silo_cfgs = {}
    for name in names:
        cfg = silo_config(root, name, root / "data" / name, aggregator=f"localhost:{port}")
        cfg.retry = RetryPolicy(initial_s=0.2, max_s=1.0, give_up_after_s=120.0)
        silo_cfgs[name] = cfg
    fed = Launcher(root=root, aggregator=agg, silos=silo_cfgs, env={"OMP_NUM_THREADS": "1"})
    fed.write_configs()
    return fed
