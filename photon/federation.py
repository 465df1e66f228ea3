"""The federation spec: what every member of one federation must agree on.

The operator writes it as the `[federation]` table of the aggregator's config; a silo receives
it as JSON in the Join reply and refuses to train when its tokenizer differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from photon.codecs import (
    DEFAULT_BLOCK_SIZE,
    MAX_FEDERATION_BLOCK_SIZE,
    MIN_FEDERATION_BLOCK_SIZE,
    Codec,
)
from photon.configload import from_mapping
from photon.errors import ConfigError


@dataclass(kw_only=True, slots=True)
class TrainingSpec:
    """Inner-loop hyper-parameters every silo uses (Photon's recipe: small batches, high LR)."""

    #: Peak learning rate of the inner AdamW.
    lr: float = 3e-3
    #: Floor of the cosine schedule as a fraction of `lr`.
    min_lr_ratio: float = 0.1
    #: Linear warm-up length in global inner steps.
    warmup_steps: int = 20
    #: Sequences per micro-batch.
    batch_size: int = 8
    #: Tokens per sequence (at most the model's max_seq_len).
    seq_len: int = 128
    #: Micro-batches accumulated per optimizer step.
    grad_accum: int = 1
    #: AdamW weight decay.
    weight_decay: float = 0.1
    #: Gradient-norm clip.
    grad_clip: float = 1.0
    #: Reset the inner optimizer state at the start of every round (default: keep it).
    reset_optimizer: bool = False

    def __post_init__(self) -> None:
        _positive(
            self, ("lr", "batch_size", "seq_len", "grad_accum", "grad_clip"), "federation.training"
        )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError("federation.training.min_lr_ratio must be within [0, 1]")
        if self.warmup_steps < 0:
            raise ConfigError("federation.training.warmup_steps must be >= 0")


@dataclass(kw_only=True, slots=True)
class FederationSpec:
    """The agreement of one federation."""

    #: A name for logs and reports.
    name: str = "photon"
    #: Model preset (tiny, small, 125m, 350m, 1.3b, 3b, 7b).
    preset: str = "tiny"
    #: "byte" for the built-in byte-level tokenizer, or a path to a `tokenizers` JSON file.
    tokenizer: str = "byte"
    #: Number of federated rounds.
    rounds: int = 5
    #: Local inner steps per round (H).
    local_steps: int = 50
    #: How deltas travel: fp32 (lossless), bf16, int8 or int4 (with error feedback).
    codec: Codec = "fp32"
    #: Quantization block size for int8/int4.
    block_size: int = DEFAULT_BLOCK_SIZE
    #: Seed for model initialisation, silo sampling and data order.
    seed: int = 0
    #: Held-out batches each evaluation uses.
    eval_batches: int = 8
    #: Inner-loop hyper-parameters.
    training: TrainingSpec = field(default_factory=TrainingSpec)
    #: Filled in by the aggregator: the model config (from the preset) and tokenizer digest.
    model: dict[str, Any] = field(default_factory=dict)
    tokenizer_digest: str = ""

    def __post_init__(self) -> None:
        _positive(self, ("rounds", "local_steps", "eval_batches"), "federation")
        low, high = MIN_FEDERATION_BLOCK_SIZE, MAX_FEDERATION_BLOCK_SIZE
        if not low <= self.block_size <= high:
            raise ConfigError(
                f"federation.block_size must be within [{low}, {high}] (try {DEFAULT_BLOCK_SIZE})"
            )

    @property
    def total_steps(self) -> int:
        """Inner steps a silo takes over the whole run: the cosine schedule's horizon."""
        return self.rounds * self.local_steps

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> FederationSpec:
        try:
            obj = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"federation spec is not valid JSON: {exc}") from exc
        return from_mapping(cls, obj, "federation")

    def digest(self) -> str:
        return hashlib.sha256(self.to_json()).hexdigest()

    def changes_since(self, stored_json: bytes) -> list[str]:
        """What differs from a spec stored earlier, as `key: old -> new` lines.

        The stored spec is read with today's defaults filled in, so a key added to the spec
        since it was stored is no change unless it is set away from its default.
        """
        try:
            old = _flatten(dataclasses.asdict(FederationSpec.from_json(stored_json)))
        except ConfigError:
            try:
                raw = json.loads(stored_json)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raw = {}
            old = _flatten(raw) if isinstance(raw, dict) else {}
        new = _flatten(dataclasses.asdict(self))
        return [
            f"{key}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}"
            for key in sorted(set(old) | set(new))
            if old.get(key, _ABSENT) != new.get(key, _ABSENT)
        ]


_ABSENT = object()


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _positive(obj: object, names: tuple[str, ...], section: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ConfigError(f"{section}.{name} must be > 0, got {value!r}")
