"""Per-GPU memory of a silo's training: will a preset fit on G GPUs of M GiB each?

    rows = plan(PlanShape(preset="1.3b", vocab_size=32000, gpus=8, gpu_mem_gib=80))

Each row is one way of training (DDP or FSDP, with or without activation checkpointing) and
gives the bytes one GPU holds at the peak of a training step. P is the parameter count
(`ModelConfig.num_params`), G the GPUs, b × s the micro-batch (sequences × tokens), d the hidden
size, f the SwiGLU hidden size, V the vocabulary, L the layers.

Parameters, gradients, optimizer (bytes per parameter, as the trainer keeps them):
    params 4 (fp32 master weights; bf16-mixed is torch autocast, which keeps fp32 weights)
    grads 4 (fp32), AdamW moments 8 (exp_avg + exp_avg_sq, fp32)
    DDP, G > 1: everything replicated on each GPU, plus gradient buckets of 4 bytes/param
        (`DistributedDataParallel`'s default copies gradients into flat buckets)
    bf16-mixed under DDP: autocast caches a bf16 cast of every weight during forward and
        backward, 2 bytes/param (counted in `buffers`)
    FSDP: params, grads and moments sharded: (4 + 4 + 8) × P / G, plus the gathered block:
        the largest FSDP unit (one decoder layer, or embeddings + head) gathered twice (the
        block computing and the one prefetched) in the gather dtype (2 bytes in bf16-mixed,
        assuming FSDP's mixed-precision policy rather than autocast; 4 in fp32) and its
        unsharded fp32 gradient once before the reduce-scatter.

Activations, saved for backward (bytes; counted from what autograd keeps in `photon.model`):
    per layer, fp32:        44·b·s·d + 16·b·s·f
        two RMSNorms keep input, normalized and output (3 × 4 × bsd each), attention keeps
        q, k, v, its output and the o_proj input (5 × 4 × bsd), the MLP keeps gate, silu(gate),
        up and their product (4 × 4 × bsf); attention's log-sum-exp (b·h·s) is negligible
    per layer, bf16-mixed:  30·b·s·d + 8·b·s·f
        the residual stream and norms stay fp32 (2 × (4 + 4 + 2) bsd), the rest is bf16
    head: final norm (12 or 10 × bsd) + logits and log-probabilities (fp32: 12·b·s·V, with
        the logits' gradient; bf16-mixed: 14·b·s·V, the logits are cast up to fp32 for the loss)
    backward: while it runs through a layer, the gradients of that layer's saved tensors
        exist too: one more layer's worth, so L + 1 layers + head in all
    with activation checkpointing (per decoder layer): each layer keeps only its input
        (4·b·s·d, the fp32 residual stream) and one layer's activations exist at a time while
        it is recomputed, plus backward's gradients: L × 4·b·s·d + 2 layers + head.

Allowance: `overhead_gib` fixed (CUDA context, cuBLAS and NCCL workspaces; default 1 GiB)
plus `fragmentation` (default 10%) of everything above, for the caching allocator and the
temporaries of backward. A row fits when its total is at most `gpu_mem_gib`.

The sums are a conservative peak: they assume every part is live at once, while gradients
grow as activations are freed. Measured on CPU (fp32, `photon.peakmem`), the estimate
without the fixed allowance is within the factor documented in docs/institutions.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from photon.errors import ConfigError
from photon.model import PRESETS, ModelConfig, preset

Precision = Literal["fp32", "bf16-mixed"]
Strategy = Literal["ddp", "fsdp"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16-mixed")
STRATEGIES: tuple[Strategy, ...] = ("ddp", "fsdp")
GIB = 1 << 30

#: Bytes per parameter of fp32 master weights, fp32 gradients and the two AdamW moments.
PARAM_BYTES, GRAD_BYTES, ADAMW_BYTES = 4, 4, 8
#: Bytes saved per layer for each (b·s·d) and each (b·s·f) element, by precision.
_LAYER_BYTES: dict[Precision, tuple[int, int]] = {"fp32": (44, 16), "bf16-mixed": (30, 8)}
#: Bytes of the head for each (b·s·d) and each (b·s·V) element, by precision.
_HEAD_BYTES: dict[Precision, tuple[int, int]] = {"fp32": (12, 12), "bf16-mixed": (10, 14)}
#: Bytes per element of a checkpointed layer's kept input (the fp32 residual stream).
_CKPT_INPUT_BYTES = 4


@dataclass(kw_only=True, frozen=True, slots=True)
class PlanShape:
    """What to plan for: the model, the micro-batch, the GPUs."""

    #: Model preset (tiny ... 7b).
    preset: str
    #: Vocabulary of the federation's tokenizer (258 for the built-in byte tokenizer).
    vocab_size: int = 258
    #: Sequences per micro-batch on each GPU (the federation's `training.batch_size`).
    batch_size: int = 8
    #: Tokens per sequence; 0 means the preset's max_seq_len.
    seq_len: int = 0
    #: GPUs of the silo.
    gpus: int = 1
    #: Memory of one GPU, GiB.
    gpu_mem_gib: float = 80.0
    #: "bf16-mixed" (CUDA: autocast) or "fp32" (what the trainer does on CPU).
    precision: Precision = "bf16-mixed"
    #: Fixed per-GPU allowance, GiB (CUDA context, library workspaces).
    overhead_gib: float = 1.0
    #: Allowance for allocator fragmentation and backward temporaries, fraction of the sum.
    fragmentation: float = 0.10

    def __post_init__(self) -> None:
        if self.vocab_size <= 0 or self.batch_size <= 0 or self.seq_len < 0 or self.gpus <= 0:
            raise ConfigError("plan: vocab_size, batch_size and gpus must be > 0, seq_len >= 0")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"plan: precision must be one of {', '.join(PRECISIONS)}")
        if self.gpu_mem_gib <= 0 or self.overhead_gib < 0 or self.fragmentation < 0:
            raise ConfigError("plan: gpu_mem_gib must be > 0, overhead_gib/fragmentation >= 0")
        longest = self.model().max_seq_len
        if self.seq_len > longest:
            raise ConfigError(
                f"plan: seq_len {self.seq_len} exceeds the {self.preset} preset's max_seq_len "
                f"{longest}"
            )

    def model(self) -> ModelConfig:
        return preset(self.preset, self.vocab_size)

    def tokens(self) -> int:
        """b × s of one micro-batch."""
        return self.batch_size * (self.seq_len or self.model().max_seq_len)


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    """Bytes on one GPU at the peak of a step, by part."""

    strategy: Strategy
    checkpointing: bool
    params: int
    grads: int
    optimizer: int
    activations: int
    #: DDP gradient buckets and autocast's bf16 weights, or FSDP's gathered block.
    buffers: int
    overhead: int
    total: int
    fits: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def layer_params(cfg: ModelConfig) -> int:
    """Parameters of one decoder layer."""
    kv = cfg.n_kv_heads * cfg.head_dim
    return 2 * cfg.dim * cfg.dim + 2 * cfg.dim * kv + 3 * cfg.dim * cfg.ffn_hidden + 2 * cfg.dim


def largest_unit(cfg: ModelConfig) -> int:
    """Parameters of the largest FSDP unit: a decoder layer, or embeddings + head + norm."""
    return max(layer_params(cfg), cfg.num_params() - cfg.n_layers * layer_params(cfg))


def activation_bytes(
    cfg: ModelConfig, tokens: int, precision: Precision, checkpointing: bool
) -> int:
    """Bytes autograd saves for one micro-batch of `tokens` (= b × s) on one GPU."""
    per_d, per_f = _LAYER_BYTES[precision]
    layer = tokens * (per_d * cfg.dim + per_f * cfg.ffn_hidden)
    head_d, head_v = _HEAD_BYTES[precision]
    head = tokens * (head_d * cfg.dim + head_v * cfg.vocab_size)
    # backward holds the gradients of one layer's saved tensors while it runs through it
    if checkpointing:
        return cfg.n_layers * tokens * _CKPT_INPUT_BYTES * cfg.dim + 2 * layer + head
    return cfg.n_layers * layer + layer + head


def _state_bytes(
    cfg: ModelConfig, shape: PlanShape, strategy: Strategy
) -> tuple[int, int, int, int]:
    """(params, grads, optimizer, buffers) on one GPU."""
    p, g = cfg.num_params(), shape.gpus
    if strategy == "fsdp":
        gather = 2 if shape.precision == "bf16-mixed" else PARAM_BYTES
        unit = largest_unit(cfg)
        buffers = 2 * unit * gather + unit * GRAD_BYTES
        return (
            _ceil(p * PARAM_BYTES, g),
            _ceil(p * GRAD_BYTES, g),
            _ceil(p * ADAMW_BYTES, g),
            buffers,
        )
    buckets = p * GRAD_BYTES if g > 1 else 0
    casts = p * 2 if shape.precision == "bf16-mixed" else 0
    return p * PARAM_BYTES, p * GRAD_BYTES, p * ADAMW_BYTES, buckets + casts


def estimate(shape: PlanShape, strategy: Strategy, checkpointing: bool) -> MemoryEstimate:
    """One GPU's peak bytes for training `shape` with `strategy`."""
    cfg = shape.model()
    params, grads, optimizer, buffers = _state_bytes(cfg, shape, strategy)
    activations = activation_bytes(cfg, shape.tokens(), shape.precision, checkpointing)
    subtotal = params + grads + optimizer + buffers + activations
    overhead = int(shape.overhead_gib * GIB) + int(subtotal * shape.fragmentation)
    total = subtotal + overhead
    return MemoryEstimate(
        strategy=strategy,
        checkpointing=checkpointing,
        params=params,
        grads=grads,
        optimizer=optimizer,
        activations=activations,
        buffers=buffers,
        overhead=overhead,
        total=total,
        fits=total <= shape.gpu_mem_gib * GIB,
    )


def plan(shape: PlanShape) -> list[MemoryEstimate]:
    """DDP and FSDP, each without and with activation checkpointing."""
    return [estimate(shape, s, c) for s in STRATEGIES for c in (False, True)]


def plan_presets(shape: PlanShape, presets: tuple[str, ...] = PRESETS) -> dict[str, Any]:
    """`plan` for each preset with the rest of `shape` unchanged, as JSON-ready data."""
    out: dict[str, Any] = {}
    for name in presets:
        one = dataclasses.replace(shape, preset=name)
        cfg = one.model()
        out[name] = {
            "params": cfg.num_params(),
            "batch_size": one.batch_size,
            "seq_len": one.tokens() // one.batch_size,
            "rows": [row.to_dict() for row in plan(one)],
        }
    return out


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def format_table(shape: PlanShape, planned: dict[str, Any]) -> str:
    """A plain-text table of `plan_presets`' result: GiB per GPU by part, and whether it fits."""
    head = (
        f"per-GPU memory, GiB: {shape.gpus} GPU(s) of {shape.gpu_mem_gib:g} GiB, "
        f"{shape.precision}, vocab {shape.vocab_size}, AdamW"
    )
    lines = [head, "  ".join(f"{c:>8}" for c in _COLUMNS)]
    for name, entry in planned.items():
        for row in entry["rows"]:
            cells = [name, _count(entry["params"]), f"{entry['batch_size']}x{entry['seq_len']}"]
            cells += [row["strategy"], "yes" if row["checkpointing"] else "no"]
            cells += [f"{row[k] / GIB:.2f}" for k in _PARTS]
            cells.append("yes" if row["fits"] else "NO")
            lines.append("  ".join(f"{c:>8}" for c in cells))
    return "\n".join(lines)


_COLUMNS: tuple[str, ...] = ("preset", "n_params", "b x s", "strategy", "ckpt", "params", "grads")
_COLUMNS += ("optim", "activ", "buffers", "overhead", "total", "fits")
_PARTS = ("params", "grads", "optimizer", "activations", "buffers", "overhead", "total")


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)
