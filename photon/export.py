"""Export a global checkpoint as a Hugging Face Llama folder.

The folder holds `config.json` (LlamaConfig fields) and `model.safetensors` (model parameters
only; the outer optimizer state stays behind), which `transformers.LlamaForCausalLM
.from_pretrained(folder)` loads as is: our parameter names are Hugging Face Llama's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from photon.checkpoint import Checkpoint, latest_checkpoint, load_checkpoint
from photon.errors import CheckpointError
from photon.fsutil import atomic_write_bytes, atomic_write_with
from photon.model import LlamaModel, ModelConfig
from photon.tokenizer import ByteTokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def resolve_checkpoint(path: Path) -> Checkpoint:
    """Load a checkpoint file, or the newest clean one in a folder (`checkpoints/` or an
    aggregator state directory holding one)."""
    path = Path(path)
    if path.is_file():
        return load_checkpoint(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} does not exist; pass a v<version>.safetensors file")
    for folder in (path, path / "checkpoints"):
        ckpt = latest_checkpoint(folder)
        if ckpt is not None:
            return ckpt
    raise CheckpointError(f"no loadable checkpoint (v<version>.safetensors) in {path}")


def checkpoint_model_config(ckpt: Checkpoint) -> ModelConfig:
    """The model shape recorded in the checkpoint's `model_config` metadata."""
    raw = ckpt.meta.get("model_config")
    if raw is None:
        raise CheckpointError(f"{ckpt.path}: no model_config in its metadata; not a global model")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{ckpt.path}: model_config metadata is not JSON: {exc}") from exc
    return ModelConfig.from_dict(data)


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = LlamaModel(cfg)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def model_params(ckpt: Checkpoint, cfg: ModelConfig) -> dict[str, Tensor]:
    """The checkpoint's parameters, checked name by name and shape by shape against `cfg`."""
    expected = _expected_shapes(cfg)
    missing = sorted(set(expected) - set(ckpt.params))
    extra = sorted(set(ckpt.params) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{ckpt.path}: parameters do not match its model_config "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for name, shape in expected.items():
        if tuple(ckpt.params[name].shape) != shape:
            raise CheckpointError(
                f"{ckpt.path}: {name} has shape {tuple(ckpt.params[name].shape)}, "
                f"model_config implies {shape}"
            )
    return {name: ckpt.params[name] for name in expected}


def load_model(ckpt: Checkpoint) -> LlamaModel:
    """Our decoder with the checkpoint's weights, in eval mode on the CPU."""
    cfg = checkpoint_model_config(ckpt)
    model = LlamaModel(cfg)
    model.load_state_dict(model_params(ckpt, cfg), strict=True)
    return model.eval()


def hf_config(
    cfg: ModelConfig, *, bos_token_id: int | None = None, eos_token_id: int | None = None
) -> dict[str, Any]:
    """`config.json` for `transformers.LlamaConfig` (fields for transformers 4 and 5)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_hidden,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "num_hidden_layers": cfg.n_layers,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_seq_len,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
    }


def export_hf(
    checkpoint_path: Path,
    out_dir: Path,
    *,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> Path:
    """Write `config.json` and `model.safetensors` for the checkpoint into `out_dir`.

    `checkpoint_path` is a checkpoint file or a folder holding checkpoints (the newest clean
    one is used). BOS/EOS default to the byte tokenizer's ids when the vocabulary is its size.
    Returns `out_dir`.
    """
    ckpt = resolve_checkpoint(checkpoint_path)
    cfg = checkpoint_model_config(ckpt)
    params = model_params(ckpt, cfg)
    if cfg.tie_embeddings:
        params.pop("lm_head.weight")  # transformers re-ties it to embed_tokens on load
    if cfg.vocab_size == ByteTokenizer.vocab_size:
        bos_token_id = ByteTokenizer.bos_id if bos_token_id is None else bos_token_id
        eos_token_id = ByteTokenizer.eos_id if eos_token_id is None else eos_token_id
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in params.items()}
    out_dir = Path(out_dir)
    meta = {"format": "pt", "photon_checkpoint_version": ckpt.meta.get("version", "")}
    atomic_write_with(
        out_dir / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata=meta)
    )
    config = hf_config(cfg, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    atomic_write_bytes(out_dir / CONFIG_FILE, json.dumps(config, indent=2).encode() + b"\n")
    return out_dir
