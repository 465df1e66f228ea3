"""A Llama-style decoder whose parameter names are Hugging Face Llama's.

RMSNorm, rotary position embeddings (the `rotate_half` convention of `transformers`), SwiGLU
MLP and grouped-query attention through `scaled_dot_product_attention`. An export is a config
file plus the state dict as safetensors, which `transformers.LlamaForCausalLM` loads as is.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from photon.errors import ConfigError


@dataclass(kw_only=True, frozen=True)
class ModelConfig:
    """Shape of a decoder."""

    #: Tokens in the vocabulary (set from the tokenizer).
    vocab_size: int
    #: Hidden size.
    dim: int
    n_layers: int
    n_heads: int
    #: Key/value heads (grouped-query attention); equal to n_heads for plain multi-head.
    n_kv_heads: int
    #: SwiGLU hidden size.
    ffn_hidden: int
    max_seq_len: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "dim",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "ffn_hidden",
            "max_seq_len",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be > 0")
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ConfigError("model: dim must divide by n_heads and n_heads by n_kv_heads")
        if (self.dim // self.n_heads) % 2:
            raise ConfigError("model: the head dimension (dim / n_heads) must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        from photon.configload import from_mapping

        return from_mapping(cls, data, "model")

    def num_params(self) -> int:
        """Parameter count, computed without building the model."""
        kv = self.n_kv_heads * self.head_dim
        attn = self.dim * self.dim * 2 + self.dim * kv * 2
        mlp = 3 * self.dim * self.ffn_hidden
        per_layer = attn + mlp + 2 * self.dim
        head = 0 if self.tie_embeddings else self.vocab_size * self.dim
        return self.vocab_size * self.dim + self.n_layers * per_layer + self.dim + head


# name: (dim, n_layers, n_heads, n_kv_heads, ffn_hidden, max_seq_len)
_PRESETS: dict[str, tuple[int, int, int, int, int, int]] = {
    "tiny": (128, 4, 4, 4, 384, 256),
    "small": (512, 8, 8, 8, 1536, 512),
    "125m": (768, 12, 12, 12, 2048, 2048),
    "350m": (1024, 24, 16, 16, 2816, 2048),
    "1.3b": (2048, 24, 32, 32, 5504, 2048),
    "3b": (2560, 32, 32, 32, 6912, 2048),
    "7b": (4096, 32, 32, 32, 11008, 2048),
}
PRESETS = tuple(_PRESETS)


def preset(name: str, vocab_size: int) -> ModelConfig:
    """A named model shape for a tokenizer's vocabulary size."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    dim, layers, heads, kv, ffn, seq = _PRESETS[name]
    return ModelConfig(
        vocab_size=vocab_size,
        dim=dim,
        n_layers=layers,
        n_heads=heads,
        n_kv_heads=kv,
        ffn_hidden=ffn,
        max_seq_len=seq,
    )


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if self.n_kv != self.n_heads:
            repeat = self.n_heads // self.n_kv
            k = k.repeat_interleave(repeat, dim=1)
            v = v.repeat_interleave(repeat, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class _Body(nn.Module):
    """Holds `embed_tokens`, `layers`, `norm` so names read `model.layers.0...` as in HF."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """The rotary embedding's inverse frequencies (a buffer the state dict does not hold)."""
    steps = torch.arange(0, cfg.head_dim, 2, dtype=torch.float32)
    return 1.0 / (cfg.rope_theta ** (steps / cfg.head_dim))


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = _Body(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    def _rope(self, t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(t, device=device, dtype=torch.float32)
        inv_freq: torch.Tensor = self.inv_freq  # type: ignore[assignment]
        freqs = torch.outer(pos, inv_freq.to(device))
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos()[None, None], emb.sin()[None, None]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        if t > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {t} tokens exceeds max_seq_len {self.config.max_seq_len}"
            )
        x = self.model.embed_tokens(input_ids)
        cos, sin = self._rope(t, input_ids.device)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.model.norm(x))

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(input_ids)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))


def empty_model(cfg: ModelConfig) -> LlamaModel:
    """A LlamaModel whose parameters take no memory (they are on the meta device) until real
    tensors are lent to them (`load_state_dict(params, assign=True)`); its buffers are real."""
    with torch.device("meta"):
        model = LlamaModel(cfg)
    model.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
    return model


def build_model(cfg: ModelConfig, seed: int) -> LlamaModel:
    """A freshly initialised model; the same seed gives the same bytes."""
    generator = torch.Generator().manual_seed(seed)
    with torch.device("cpu"):
        model = LlamaModel(cfg)
    std = 0.02
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.fill_(1.0)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, std / math.sqrt(2 * cfg.n_layers), generator=generator)
            else:
                p.normal_(0.0, std, generator=generator)
    return model
