"""The silo's reporting step loop, and the benchmark's bare loop doing exactly the silo's work."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bench.trainer.loops import BareLoop, SiloLoop
from photon.data import TokenShards
from photon.federation import FederationSpec, TrainingSpec
from photon.peakmem import synthetic_shards
from photon.trainer import TrainerConfig, TrainStats
from silo_agent.metrics import SiloMetrics
from silo_agent.steps import run_local_steps


class _Listener:
    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []

    def progress(self, step: int, loss: float) -> None:
        self.seen.append((step, loss))


class _Trainer:
    """Three steps from `global_step` with losses 3, 2, 1."""

    def train(
        self, steps: int, global_step: int, on_step: Callable[[int, float], None] | None = None
    ) -> TrainStats:
        for i in range(steps):
            assert on_step is not None
            on_step(global_step + i + 1, float(steps - i))
        return TrainStats(mean_loss=2.0, last_loss=1.0, tokens=300, seconds=2.0, tokens_per_s=150)

    def save_state(self, directory: Path) -> None:
        raise AssertionError("not called")


def test_each_step_reaches_the_heartbeat_and_the_metrics() -> None:
    listener, metrics = _Listener(), SiloMetrics()
    stats = run_local_steps(_Trainer(), 3, 10, listener, metrics)
    assert listener.seen == [(11, 3.0), (12, 2.0), (13, 1.0)]
    assert stats.tokens == 300
    value = metrics.registry.get_sample_value
    assert value("photon_silo_global_step") == 13
    assert value("photon_silo_train_loss") == 1.0
    assert value("photon_silo_tokens_per_second") == 150


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> TokenShards:
    return TokenShards(synthetic_shards(tmp_path_factory.mktemp("shards"), n_bytes=60_000))


def test_the_bare_loop_does_the_silo_loops_work(shards: TokenShards) -> None:
    spec = FederationSpec(preset="tiny", training=TrainingSpec(batch_size=2, seq_len=32))
    tcfg = TrainerConfig.from_spec(spec.training, total_steps=spec.total_steps, device="cpu")
    silo, bare = SiloLoop(spec, tcfg, shards), BareLoop(spec, tcfg, shards)
    for start in (0, 3):  # blocks continue: the same batches, schedule and optimizer state
        ran_silo, ran_bare = silo.run(3, start), bare.run(3, start)
        assert ran_silo.mean_loss == ran_bare.mean_loss
    assert silo.heartbeat.step == 6
    for name, param in silo.trainer.model.named_parameters():
        assert param.equal(dict(bare.model.named_parameters())[name]), name
