"""The Llama decoder: Hugging Face names and logits, deterministic init, presets, config."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from photon.errors import ConfigError
from photon.model import PRESETS, LlamaModel, ModelConfig, build_model, preset
from photon.tokenizer import ByteTokenizer

TINY = preset("tiny", ByteTokenizer.vocab_size)
GQA = ModelConfig(
    vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96, max_seq_len=64
)
TIED = ModelConfig(
    vocab_size=97,
    dim=64,
    n_layers=2,
    n_heads=4,
    n_kv_heads=4,
    ffn_hidden=96,
    max_seq_len=64,
    tie_embeddings=True,
    rope_theta=5000.0,
    norm_eps=1e-6,
)
CONFIGS = pytest.mark.parametrize("cfg", [TINY, GQA, TIED], ids=["tiny", "gqa", "tied"])


def hf_model(cfg: ModelConfig) -> Any:
    transformers = pytest.importorskip("transformers")
    hc = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.ffn_hidden,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        num_hidden_layers=cfg.n_layers,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_seq_len,
        tie_word_embeddings=cfg.tie_embeddings,
    )
    return transformers.LlamaForCausalLM(hc).eval()


@CONFIGS
def test_parameter_names_and_shapes_match_hugging_face(cfg: ModelConfig) -> None:
    ours = build_model(cfg, seed=0)
    theirs = hf_model(cfg)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert ours_shapes == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}


@CONFIGS
def test_logits_equal_hugging_face_after_strict_load(cfg: ModelConfig) -> None:
    ours = build_model(cfg, seed=3).eval()
    theirs = hf_model(cfg)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ids = torch.randint(0, cfg.vocab_size, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours(ids) - theirs(ids).logits).abs().max().item()
    assert diff < 1e-4


def test_tied_embeddings_share_one_tensor() -> None:
    model = build_model(TIED, seed=0)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_build_model_is_deterministic_per_seed() -> None:
    a, b, c = (build_model(GQA, seed=s).state_dict() for s in (7, 7, 8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("proj.weight"))


@pytest.mark.parametrize("cfg", [TINY, GQA, TIED, preset("small", 1000)], ids=str)
def test_num_params_equals_the_real_count(cfg: ModelConfig) -> None:
    with torch.device("meta"):
        model = LlamaModel(cfg)
    assert cfg.num_params() == sum(p.numel() for p in model.parameters())


def test_unknown_preset_lists_the_names() -> None:
    with pytest.raises(ConfigError, match="unknown model preset 'huge'") as info:
        preset("huge", 258)
    for name in PRESETS:
        assert name in str(info.value)


def test_from_dict_round_trips_and_rejects_unknown_keys() -> None:
    assert ModelConfig.from_dict(GQA.to_dict()) == GQA
    with pytest.raises(ConfigError, match=r"unknown key 'model\.n_expert'"):
        ModelConfig.from_dict({**GQA.to_dict(), "n_expert": 8})


def test_invalid_shapes_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="n_kv_heads"):
        ModelConfig(**{**GQA.to_dict(), "n_kv_heads": 3})
    with pytest.raises(ConfigError, match=r"model\.dim must be > 0"):
        ModelConfig(**{**GQA.to_dict(), "dim": 0})


def test_sequence_longer_than_max_seq_len_is_refused() -> None:
    model = build_model(GQA, seed=0)
    with pytest.raises(ValueError, match="exceeds max_seq_len 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_causal_prefix_logits_do_not_depend_on_later_tokens() -> None:
    model = build_model(GQA, seed=0).eval()
    ids = torch.randint(0, GQA.vocab_size, (1, 20), generator=torch.Generator().manual_seed(2))
    changed = ids.clone()
    changed[0, 15:] = (changed[0, 15:] + 1) % GQA.vocab_size
    with torch.no_grad():
        assert torch.allclose(model(ids)[0, :15], model(changed)[0, :15], atol=1e-6)
