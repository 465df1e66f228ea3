"""Hugging Face export of a global checkpoint, and `photon generate` sampling from one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from photon.checkpoint import save_checkpoint
from photon.cli.export import export as export_cli
from photon.cli.export import generate as generate_cli
from photon.errors import CheckpointError, ConfigError
from photon.export import export_hf, load_model, resolve_checkpoint
from photon.generate import generate_text, sample
from photon.model import ModelConfig, build_model, preset
from photon.tokenizer import ByteTokenizer

TINY = preset("tiny", ByteTokenizer.vocab_size)
SMALL_TIED = ModelConfig(
    vocab_size=ByteTokenizer.vocab_size,
    dim=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    ffn_hidden=64,
    max_seq_len=32,
    tie_embeddings=True,
    rope_theta=500.0,
)


def write_checkpoint(directory: Path, cfg: ModelConfig, seed: int = 0, version: int = 4) -> Path:
    model = build_model(cfg, seed=seed)
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    outer = {"momentum/model.norm.weight": torch.ones(cfg.dim)}
    meta = {"model_config": json.dumps(cfg.to_dict(), sort_keys=True), "round": str(version - 1)}
    return save_checkpoint(directory, version=version, params=params, outer_state=outer, meta=meta)


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt"), SMALL_TIED, seed=1)


@pytest.mark.parametrize("cfg", [TINY, SMALL_TIED], ids=["tiny", "gqa-tied"])
def test_transformers_loads_the_export_with_equal_logits(cfg: ModelConfig, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    path = write_checkpoint(tmp_path / "ckpt", cfg, seed=2)
    out = export_hf(path, tmp_path / "hf")
    theirs = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    ours = build_model(cfg, seed=2).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 29), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(ids) - theirs(ids).logits).abs().max().item()
    assert diff < 1e-4
    assert theirs.config.tie_word_embeddings == cfg.tie_embeddings


def test_export_writes_config_and_only_model_parameters(small_ckpt: Path, tmp_path: Path) -> None:
    out = export_hf(small_ckpt, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["hidden_size"], config["intermediate_size"]) == (32, 64)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert config["num_hidden_layers"] == 2 and config["vocab_size"] == 258
    assert config["max_position_embeddings"] == 32 and config["rope_theta"] == 500.0
    assert config["rms_norm_eps"] == 1e-5 and config["tie_word_embeddings"] is True
    assert config["torch_dtype"] == "float32"
    assert (config["bos_token_id"], config["eos_token_id"]) == (256, 257)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        dtypes = {f.get_tensor(k).dtype for k in names}
    expected = {k for k in build_model(SMALL_TIED, seed=0).state_dict() if k != "lm_head.weight"}
    assert names == expected and dtypes == {torch.float32}
    assert not any(k.startswith("outer/") for k in names)


def test_export_takes_the_newest_checkpoint_in_a_folder(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "state" / "checkpoints", SMALL_TIED, seed=1, version=1)
    newest = write_checkpoint(tmp_path / "state" / "checkpoints", SMALL_TIED, seed=2, version=2)
    assert resolve_checkpoint(tmp_path / "state").path == newest
    assert resolve_checkpoint(tmp_path / "state" / "checkpoints").path == newest
    with pytest.raises(CheckpointError, match="no loadable checkpoint"):
        resolve_checkpoint(tmp_path)


def test_export_refuses_checkpoints_without_or_with_wrong_model_config(tmp_path: Path) -> None:
    params = {k: v.detach() for k, v in build_model(SMALL_TIED, seed=0).state_dict().items()}
    bare = save_checkpoint(tmp_path / "a", version=1, params=params, outer_state={}, meta={})
    with pytest.raises(CheckpointError, match="no model_config"):
        export_hf(bare, tmp_path / "out")
    wrong = json.dumps({**SMALL_TIED.to_dict(), "ffn_hidden": 96})
    bad = save_checkpoint(
        tmp_path / "b", version=1, params=params, outer_state={}, meta={"model_config": wrong}
    )
    with pytest.raises(CheckpointError, match="model_config implies"):
        export_hf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_cli(small_ckpt: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(export_cli, [str(small_ckpt), str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "hf" / "config.json").is_file()
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    assert "photon export" in CliRunner().invoke(export_cli, ["--help"]).output


# -- generate -----------------------------------------------------------------------------------
def test_sample_length_greedy_and_seeded(small_ckpt: Path) -> None:
    model = load_model(resolve_checkpoint(small_ckpt))
    prompt = ByteTokenizer().encode("hello")
    a = sample(model, prompt, max_new_tokens=40, temperature=1.0, seed=3)
    assert len(a) == 40 and all(0 <= i < 258 for i in a)
    assert a == sample(model, prompt, max_new_tokens=40, temperature=1.0, seed=3)
    assert a != sample(model, prompt, max_new_tokens=40, temperature=1.0, seed=4)
    greedy = sample(model, prompt, max_new_tokens=5, temperature=0.0, seed=0)
    with torch.no_grad():
        first = int(torch.argmax(model(torch.tensor([prompt]))[0, -1]))
    assert greedy[0] == first
    assert greedy == sample(model, prompt, max_new_tokens=5, temperature=0.0, seed=9)


def test_sample_beyond_the_context_window(small_ckpt: Path) -> None:
    model = load_model(resolve_checkpoint(small_ckpt))
    assert len(sample(model, [1] * 30, max_new_tokens=10, temperature=0.5)) == 10


def test_sample_rejects_bad_arguments(small_ckpt: Path) -> None:
    model = load_model(resolve_checkpoint(small_ckpt))
    with pytest.raises(ConfigError, match="prompt is empty"):
        sample(model, [], max_new_tokens=3)
    with pytest.raises(ConfigError, match="temperature"):
        sample(model, [1], max_new_tokens=3, temperature=-1.0)


def test_generate_cli_prints_prompt_and_continuation(small_ckpt: Path) -> None:
    args = [str(small_ckpt), "--prompt", "federated ", "--tokens", "30", "--seed", "7"]
    first = CliRunner().invoke(generate_cli, args)
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(generate_cli, args)
    other = CliRunner().invoke(generate_cli, [*args[:-1], "8"])
    assert first.output == again.output != other.output
    assert first.output.startswith("federated ")
    model = load_model(resolve_checkpoint(small_ckpt))
    ids = sample(model, list(b"federated "), max_new_tokens=30, temperature=0.8, seed=7)
    assert len(ids) == 30
    assert first.output == ByteTokenizer().decode(list(b"federated ") + ids) + "\n"


def test_generate_with_a_mismatched_vocabulary(tmp_path: Path) -> None:
    cfg = ModelConfig(**{**SMALL_TIED.to_dict(), "vocab_size": 300})
    path = write_checkpoint(tmp_path, cfg)
    with pytest.raises(ConfigError, match="has 258 tokens but the model's vocabulary is 300"):
        generate_text(path, "x", tokens=1)
    result = CliRunner().invoke(generate_cli, [str(path), "--prompt", "x"])
    assert result.exit_code == 1 and "Error: tokenizer 'byte' has 258 tokens" in result.output
