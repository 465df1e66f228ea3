"""Sample text from a global checkpoint: a quick look at what the federation has learned.

Plain autoregressive sampling without a KV cache (the context is re-read every token), which
is plenty for a few hundred tokens from the small presets. Temperature 0 is greedy decoding;
otherwise tokens are drawn from softmax(logits / temperature) with a seeded generator, so the
same seed gives the same text.
"""

from __future__ import annotations

from pathlib import Path

import torch

from photon.errors import ConfigError
from photon.export import load_model, resolve_checkpoint
from photon.model import LlamaModel
from photon.tokenizer import Tokenizer, load_tokenizer


@torch.no_grad()
def sample(
    model: LlamaModel,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    temperature: float = 0.8,
    seed: int = 0,
) -> list[int]:
    """`max_new_tokens` token ids continuing `prompt_ids` (which are not included)."""
    if max_new_tokens < 0:
        raise ConfigError("generate: the number of tokens must be >= 0")
    if temperature < 0:
        raise ConfigError("generate: temperature must be >= 0 (0 is greedy)")
    if not prompt_ids:
        raise ConfigError("generate: the prompt is empty; pass some text with --prompt")
    generator = torch.Generator().manual_seed(seed)
    window = model.config.max_seq_len
    ids = list(prompt_ids)
    for _ in range(max_new_tokens):
        context = torch.tensor([ids[-window:]], dtype=torch.long)
        logits = model(context)[0, -1].float()
        ids.append(_pick(logits, temperature, generator))
    return ids[len(prompt_ids) :]


def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> int:
    if temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def generate_text(
    checkpoint: Path,
    prompt: str,
    *,
    tokens: int = 200,
    temperature: float = 0.8,
    seed: int = 0,
    tokenizer: str | Tokenizer = "byte",
) -> str:
    """The prompt followed by `tokens` sampled tokens, decoded."""
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    model = load_model(resolve_checkpoint(checkpoint))
    if model.config.vocab_size != tok.vocab_size:
        raise ConfigError(
            f"tokenizer {tok.name!r} has {tok.vocab_size} tokens but the model's vocabulary "
            f"is {model.config.vocab_size}; pass the federation's tokenizer"
        )
    prompt_ids = tok.encode(prompt)
    new = sample(model, prompt_ids, max_new_tokens=tokens, temperature=temperature, seed=seed)
    return tok.decode(prompt_ids + new)
