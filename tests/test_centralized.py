"""The centralized baseline: summary shape, learning, determinism, the union loader, the CLI."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from photon.centralized import CentralizedConfig, UnionLoader, open_shards, train_centralized
from photon.cli.train import train
from photon.data import TokenLoader, TokenShards, eval_batches, prepare
from photon.errors import ConfigError, DataError
from photon.evaluation import evaluate_loss
from photon.federation import TrainingSpec
from photon.model import build_model, preset
from photon.tokenizer import ByteTokenizer

WORDS = {
    "en": "the quick brown fox jumps over the lazy dog while a cat sleeps in the sun",
    "py": "def return import class self if else for in while None True lambda yield",
}
FEDERATED_KEYS = {"initial_eval_loss", "final_eval_loss", "checkpoint", "rounds", "model_params"}
ROW_KEYS = {"round", "eval_loss", "bytes_up", "bytes_down", "seconds", "tokens"}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Bit-identical runs need a fixed reduction order: one CPU thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _corpus(root: Path, kind: str, docs: int = 60) -> Path:
    rng = random.Random(kind)
    lines = [
        json.dumps({"text": " ".join(rng.choice(WORDS[kind].split()) for _ in range(60)) + "\n"})
        for _ in range(docs)
    ]
    root.mkdir(parents=True)
    (root / "docs.jsonl").write_text("\n".join(lines))
    return root


@pytest.fixture(scope="module")
def silos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    base = tmp_path_factory.mktemp("silos")
    out = []
    for kind in WORDS:
        text = _corpus(base / "text" / kind, kind)
        prepare(text, base / kind, ByteTokenizer(), heldout_fraction=0.2, seed=0)
        out.append(base / kind)
    return out


def _cfg(**overrides: object) -> CentralizedConfig:
    base: dict[str, object] = {
        "steps": 20,
        "training": TrainingSpec(lr=1e-2, warmup_steps=4, batch_size=4, seq_len=32),
        "eval_every": 5,
        "eval_batches": 4,
        "seed": 0,
    }
    return CentralizedConfig(**{**base, **overrides})  # type: ignore[arg-type]


def test_writes_a_federation_shaped_summary_and_learns(silos: list[Path], tmp_path: Path) -> None:
    result = train_centralized(silos, tmp_path, _cfg())
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == result
    assert result.keys() >= FEDERATED_KEYS
    assert result["mode"] == "centralized" and result["done"] is True
    assert [r["round"] for r in result["rounds"]] == [0, 1, 2, 3]
    assert [r["step"] for r in result["rounds"]] == [5, 10, 15, 20]
    for row in result["rounds"]:
        assert row.keys() >= ROW_KEYS
        assert row["bytes_up"] == row["bytes_down"] == 0
        assert row["tokens"] == 5 * 4 * 32
    assert result["tokens"] == 20 * 4 * 32
    assert result["final_eval_loss"] == result["rounds"][-1]["eval_loss"]
    assert result["final_eval_loss"] < result["initial_eval_loss"] - 0.5
    params = load_file(result["checkpoint"])
    model = build_model(preset("tiny", ByteTokenizer.vocab_size), seed=0)
    assert params.keys() == model.state_dict().keys()
    assert result["model_params"] == sum(p.numel() for p in model.parameters())


def test_same_seed_same_model_other_seed_another(silos: list[Path], tmp_path: Path) -> None:
    a = train_centralized(silos, tmp_path / "a", _cfg(steps=8, eval_every=8))
    b = train_centralized(silos, tmp_path / "b", _cfg(steps=8, eval_every=8))
    c = train_centralized(silos, tmp_path / "c", _cfg(steps=8, eval_every=8, seed=1))
    assert a["final_eval_loss"] == b["final_eval_loss"]
    pa, pb = load_file(a["checkpoint"]), load_file(b["checkpoint"])
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert c["final_eval_loss"] != a["final_eval_loss"]


def test_initial_loss_is_version_zero_on_the_eval_folder(silos: list[Path], tmp_path: Path) -> None:
    cfg = _cfg(steps=2, eval_every=2)
    result = train_centralized(silos, tmp_path, cfg, eval_dir=silos[1])
    model = build_model(preset("tiny", ByteTokenizer.vocab_size), seed=0)
    batches = eval_batches(TokenShards(silos[1]), seq_len=32, batch_size=4, max_batches=4)
    expected, _ = evaluate_loss(model, batches)
    assert result["initial_eval_loss"] == pytest.approx(expected, abs=1e-6)
    assert result["eval_dir"] == str(silos[1])


def test_union_rows_are_each_silos_own_loader_windows(silos: list[Path]) -> None:
    """Batch 2b over 2 silos = each silo's batch-b loader with the same seed (data parallel)."""
    shards = open_shards(silos)
    union = UnionLoader(shards, batch_size=6, seq_len=32, seed=3)
    own = [TokenLoader(s, batch_size=3, seq_len=32, seed=3) for s in shards]
    for _ in range(5):
        x, y = union.next_batch()
        assert x.shape == y.shape == (6, 32)
        for i, loader in enumerate(own):
            ox, oy = loader.next_batch()
            assert torch.equal(x[i::2], ox) and torch.equal(y[i::2], oy)


def test_union_loader_resumes_exactly(silos: list[Path]) -> None:
    shards = open_shards(silos)
    first = UnionLoader(shards, batch_size=3, seq_len=32, seed=0)
    for _ in range(7):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))
    second = UnionLoader(shards, batch_size=3, seq_len=32, seed=0)
    second.load_state_dict(state)
    for _ in range(4):
        (ax, ay), (bx, by) = first.next_batch(), second.next_batch()
        assert torch.equal(ax, bx) and torch.equal(ay, by)


def test_config_errors_name_the_key(silos: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"centralized\.steps"):
        CentralizedConfig(steps=0)
    with pytest.raises(ConfigError, match=r"eval_every"):
        CentralizedConfig(eval_every=0)
    too_long = _cfg(training=TrainingSpec(seq_len=4096))
    with pytest.raises(ConfigError, match=r"seq_len = 4096 exceeds"):
        train_centralized(silos, tmp_path, too_long)
    with pytest.raises(DataError, match="at least one"):
        train_centralized([], tmp_path, _cfg())


def test_cli_requires_centralized_and_prints_progress(silos: list[Path], tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["--data", str(silos[0]), "--data", str(silos[1]), "--out", str(tmp_path / "run")]
    refused = runner.invoke(train, args)
    assert refused.exit_code == 2 and "--centralized" in refused.output
    small = ["--steps", "4", "--batch-size", "2", "--seq-len", "32", "--eval-every", "2"]
    done = runner.invoke(train, ["--centralized", *args, *small, "--eval-batches", "2"])
    assert done.exit_code == 0, done.output
    assert "step      4/4" in done.output and "tokens/s" in done.output
    assert "final eval loss" in done.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 4
