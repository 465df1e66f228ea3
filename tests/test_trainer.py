"""The inner loop: learning-rate schedule, exact resume, optimizer reset, learning."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from photon.data import TokenLoader, TokenShards, prepare
from photon.errors import ConfigError, DataError
from photon.model import LlamaModel, ModelConfig, build_model
from photon.tokenizer import ByteTokenizer
from photon.trainer import Trainer, TrainerConfig, lr_at

MODEL = ModelConfig(
    vocab_size=ByteTokenizer.vocab_size,
    dim=32,
    n_layers=2,
    n_heads=2,
    n_kv_heads=1,
    ffn_hidden=64,
    max_seq_len=64,
)
SCHEDULE = TrainerConfig(lr=1e-2, min_lr_ratio=0.1, warmup_steps=10, total_steps=100)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Bit-identical runs need a fixed reduction order: one CPU thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> TokenShards:
    text = tmp_path_factory.mktemp("text")
    for i in range(6):
        (text / f"doc{i}.txt").write_text("abcabcabd hello federated world. " * 40)
    out = tmp_path_factory.mktemp("shards")
    prepare(text, out, ByteTokenizer(), heldout_fraction=0.0)
    return TokenShards(out)


def make_trainer(
    shards: TokenShards, model: LlamaModel | None = None, **overrides: object
) -> Trainer:
    cfg = TrainerConfig(
        **{  # type: ignore[arg-type]
            "lr": 3e-3,
            "warmup_steps": 3,
            "total_steps": 40,
            "batch_size": 4,
            "seq_len": 32,
            "device": "cpu",
            **overrides,
        }
    )
    loader = TokenLoader(shards, batch_size=cfg.batch_size, seq_len=cfg.seq_len, seed=cfg.seed)
    return Trainer(model if model is not None else build_model(MODEL, seed=0), cfg, loader)


# -- schedule -----------------------------------------------------------------------------------
def test_warmup_is_linear_up_to_the_peak() -> None:
    warm = [lr_at(SCHEDULE, s) for s in range(SCHEDULE.warmup_steps)]
    assert warm == pytest.approx([SCHEDULE.lr * (s + 1) / 10 for s in range(10)])
    assert lr_at(SCHEDULE, SCHEDULE.warmup_steps) == pytest.approx(SCHEDULE.lr)


def test_cosine_decays_monotonically_to_the_floor() -> None:
    after = [lr_at(SCHEDULE, s) for s in range(SCHEDULE.warmup_steps, SCHEDULE.total_steps + 1)]
    assert all(a >= b for a, b in itertools.pairwise(after))
    floor = SCHEDULE.lr * SCHEDULE.min_lr_ratio
    assert lr_at(SCHEDULE, SCHEDULE.total_steps) == pytest.approx(floor)
    assert lr_at(SCHEDULE, SCHEDULE.total_steps + 500) == pytest.approx(floor)
    halfway = SCHEDULE.warmup_steps + (SCHEDULE.total_steps - SCHEDULE.warmup_steps) // 2
    assert lr_at(SCHEDULE, halfway) == pytest.approx((SCHEDULE.lr + floor) / 2)


def test_schedule_continues_across_rounds_by_global_step(shards: TokenShards) -> None:
    trainer = make_trainer(shards)
    seen: list[tuple[int, float]] = []

    def record(step: int, _loss: float) -> None:
        seen.append((step, trainer.optimizer.param_groups[0]["lr"]))

    trainer.train(4, global_step=0, on_step=record)
    trainer.begin_round()
    trainer.train(4, global_step=4, on_step=record)
    assert [s for s, _ in seen] == list(range(1, 9))
    assert [lr for _, lr in seen] == pytest.approx([lr_at(trainer.cfg, s) for s in range(8)])


def test_invalid_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="lr"):
        TrainerConfig(lr=0)
    with pytest.raises(ConfigError, match="grad_accum"):
        TrainerConfig(grad_accum=0)


# -- exact resume -------------------------------------------------------------------------------
def params_of(model: LlamaModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_is_bit_identical(shards: TokenShards, tmp_path: Path, grad_accum: int) -> None:
    n, m = 5, 4
    straight = make_trainer(shards, grad_accum=grad_accum)
    straight.train(n + m, global_step=0)
    want = params_of(straight.model)

    first = make_trainer(shards, grad_accum=grad_accum)
    first.train(n, global_step=0)
    first.save_state(tmp_path)
    saved = params_of(first.model)
    first.train(3, global_step=n)  # work lost in the "crash"

    model = build_model(MODEL, seed=123)
    model.load_state_dict(saved)
    resumed = make_trainer(shards, model, grad_accum=grad_accum)
    resumed.load_state(tmp_path)
    resumed.train(m, global_step=n)
    got = params_of(resumed.model)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resume_on_cuda_keeps_adamw_step_on_the_cpu(shards: TokenShards, tmp_path: Path) -> None:
    first = make_trainer(shards, device="cuda")
    first.train(2, global_step=0)
    first.save_state(tmp_path)
    model = build_model(MODEL, seed=0)
    model.load_state_dict({k: v.cpu() for k, v in first.model.state_dict().items()})
    resumed = make_trainer(shards, model, device="cuda")
    resumed.load_state(tmp_path)
    for state in resumed.optimizer.state.values():
        assert state["step"].device.type == "cpu" and state["exp_avg"].device.type == "cuda"
    assert resumed.train(2, global_step=2).last_loss > 0


def test_load_state_from_an_empty_folder(shards: TokenShards, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unreadable"):
        make_trainer(shards).load_state(tmp_path)


def test_begin_round_clears_the_moments(shards: TokenShards) -> None:
    trainer = make_trainer(shards)
    trainer.train(2, global_step=0)
    assert trainer.optimizer.state
    assert all("exp_avg" in s for s in trainer.optimizer.state.values())
    trainer.begin_round()
    assert not trainer.optimizer.state
    trainer.train(1, global_step=2)
    steps = {float(s["step"]) for s in trainer.optimizer.state.values()}
    assert steps == {1.0}, "a reset optimizer starts counting again"


# -- learning -----------------------------------------------------------------------------------
def test_loss_decreases_on_a_repetitive_corpus(shards: TokenShards) -> None:
    trainer = make_trainer(shards, lr=1e-2, warmup_steps=3, total_steps=30)
    losses: list[float] = []
    stats = trainer.train(30, global_step=0, on_step=lambda _s, loss: losses.append(loss))
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:3]) / 3
    assert stats.tokens == 30 * 4 * 32 and stats.last_loss == losses[-1]
    assert stats.mean_loss == pytest.approx(sum(losses) / 30)
