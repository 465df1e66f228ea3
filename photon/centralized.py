"""The centralized baseline: one model trained on the union of the silos' data.

Federated results mean something only next to this number. `train_centralized` builds the
same initial model as a federation's version 0 (`build_model(preset, seed)`), trains it with
the silo's own inner loop (`photon.trainer.Trainer`: AdamW, cosine schedule, clip) on
batches whose rows are drawn round-robin from every silo's train split, evaluates every
`eval_every` steps, and writes a `summary.json` shaped like the aggregator's (one `rounds`
row per evaluation interval, zero bytes on the wire) plus `"mode": "centralized"`.

The data-parallel equivalent of a federation of N silos with batch b, R rounds and H local
steps is `batch_size = N * b`, `steps = R * H`, `eval_every = H`: the same tokens and the
same number of optimizer steps as each silo takes. With `batch_size` a multiple of N, every
silo's rows are exactly the windows its federated loader (same seed) would draw.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import save_file

from photon.data import TokenLoader, TokenShards, eval_batches
from photon.errors import ConfigError, DataError
from photon.evaluation import evaluate_loss
from photon.federation import TrainingSpec
from photon.fsutil import atomic_write_bytes, atomic_write_with
from photon.model import LlamaModel, build_model, preset
from photon.trainer import Trainer, TrainerConfig

Echo = Callable[[str], None]
SUMMARY = "summary.json"
CHECKPOINT = "model.safetensors"


@dataclass(kw_only=True, slots=True)
class CentralizedConfig:
    """One centralized training run (the federation's recipe, without the federation)."""

    preset: str = "tiny"
    """Model preset (tiny, small, 125m, ...), as the federation's `preset`."""
    steps: int = 250
    """Optimizer steps; also the cosine schedule's horizon (a federation's rounds x H)."""
    training: TrainingSpec = field(default_factory=TrainingSpec)
    """Inner-loop hyper-parameters: lr, schedule, batch_size (rows per step), seq_len, ..."""
    seed: int = 0
    """Model initialisation and data order (the federation's `seed`)."""
    eval_every: int = 50
    """Steps between evaluations (a federation's H, for one evaluation per round)."""
    eval_batches: int = 16
    """Held-out batches per evaluation (the aggregator's `[eval] batches`)."""
    eval_batch_size: int | None = None
    """Rows per evaluation batch; None -> training.batch_size. Set it to the federation's
    batch size to evaluate exactly the windows the aggregator evaluates."""
    device: str = "auto"
    """"auto" (CUDA when present), "cpu" or "cuda"."""
    threads: int | None = None
    """torch CPU threads; None leaves torch's default."""

    def __post_init__(self) -> None:
        for key in ("steps", "eval_every", "eval_batches"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"centralized.{key} must be > 0, got {getattr(self, key)!r}")
        if self.eval_batch_size is not None and self.eval_batch_size <= 0:
            raise ConfigError("centralized.eval_batch_size must be > 0 (or None for batch_size)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"centralized.device must be auto, cpu or cuda, not {self.device!r}")
        if self.threads is not None and self.threads <= 0:
            raise ConfigError("centralized.threads must be > 0 (or None for torch's default)")

    def trainer_config(self) -> TrainerConfig:
        """The silo trainer's settings for this run (no optimizer resets: one long run)."""
        return TrainerConfig.from_spec(
            self.training,
            total_steps=self.steps,
            device=self.device,
            seed=self.seed,
            threads=self.threads,
            reset_optimizer=False,
        )


class UnionLoader:
    """Batches whose rows come from several silos' train splits in turn.

    Row k of the i-th batch is drawn from silo `(i * batch_size + k) % len(silos)`, each silo
    through its own `TokenLoader` (seeded like a silo's), so the union is balanced per row,
    not by corpus size, as a federation's token-weighted average of equal-step silos is.
    """

    def __init__(
        self, shards: Sequence[TokenShards], *, batch_size: int, seq_len: int, seed: int
    ) -> None:
        if not shards:
            raise DataError("the union loader needs at least one data folder")
        self.batch_size, self.seq_len = batch_size, seq_len
        self.loaders = [
            TokenLoader(s, split="train", batch_size=1, seq_len=seq_len, seed=seed) for s in shards
        ]
        self.rows = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for _ in range(self.batch_size):
            x, y = self.loaders[self.rows % len(self.loaders)].next_batch()
            xs.append(x)
            ys.append(y)
            self.rows += 1
        return torch.cat(xs), torch.cat(ys)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "loaders": [ld.state_dict() for ld in self.loaders]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["loaders"]) != len(self.loaders):
            raise DataError("union loader state was saved with another number of folders")
        self.rows = int(state["rows"])
        for loader, sub in zip(self.loaders, state["loaders"], strict=True):
            loader.load_state_dict(sub)


def open_shards(dirs: Sequence[Path]) -> list[TokenShards]:
    """Memory-map prepared folders; DataError unless they share one tokenizer."""
    shards = [TokenShards(Path(d)) for d in dirs]
    if not shards:
        raise DataError("give at least one prepared data folder (--data DIR)")
    digest = str(shards[0].meta.get("tokenizer_digest", ""))
    for s in shards[1:]:
        s.check_tokenizer(digest)
    return shards


class HeldOut:
    """The evaluation set: an eval folder's held-out split, or (with none) every silo's
    held-out split, combined as the token-weighted mean the aggregator reports without one."""

    def __init__(
        self, shards: Sequence[TokenShards], *, seq_len: int, batch_size: int, batches: int
    ) -> None:
        self.shards = list(shards)
        self.seq_len, self.batch_size, self.batches = seq_len, batch_size, batches

    def loss(self, model: LlamaModel) -> float:
        total, tokens = 0.0, 0
        for shards in self.shards:
            loss, n = evaluate_loss(model, self._batches(shards))
            if n:
                total, tokens = total + loss * n, tokens + n
        return total / tokens if tokens else math.nan

    def _batches(self, shards: TokenShards) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return eval_batches(
            shards, seq_len=self.seq_len, batch_size=self.batch_size, max_batches=self.batches
        )


def _held_out(cfg: CentralizedConfig, silos: list[TokenShards], eval_dir: Path | None) -> HeldOut:
    if eval_dir is not None:
        own = TokenShards(eval_dir)
        own.check_tokenizer(str(silos[0].meta.get("tokenizer_digest", "")))
        sets = [own]
    else:
        sets = [s for s in silos if len(s.tokens("heldout")) > cfg.training.seq_len]
        if not sets:
            raise DataError(
                "no silo folder has a held-out split to evaluate on; prepare them with "
                "--heldout 0.05 or give an eval folder (--eval DIR)"
            )
    return HeldOut(
        sets,
        seq_len=cfg.training.seq_len,
        batch_size=cfg.eval_batch_size or cfg.training.batch_size,
        batches=cfg.eval_batches,
    )


def _model(cfg: CentralizedConfig, silos: list[TokenShards]) -> LlamaModel:
    model_cfg = preset(cfg.preset, vocab_size=int(silos[0].meta["vocab_size"]))
    if cfg.training.seq_len > model_cfg.max_seq_len:
        raise ConfigError(
            f"centralized.training.seq_len = {cfg.training.seq_len} exceeds the "
            f"{cfg.preset!r} preset's max_seq_len {model_cfg.max_seq_len}"
        )
    return build_model(model_cfg, seed=cfg.seed)


def _save_params(model: LlamaModel, path: Path) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp)))


def _round(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def _fmt(loss: float | None) -> str:
    return "n/a" if loss is None or math.isnan(loss) else f"{loss:.4f}"


def _ppl(loss: float | None) -> float | None:
    return None if loss is None else round(math.exp(min(loss, 50.0)), 4)


@dataclass(slots=True)
class _Record:
    """summary.json under construction."""

    path: Path
    head: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(
        self, step: int, eval_loss: float, train_loss: float, tokens: int, seconds: float
    ) -> dict[str, Any]:
        self.tokens += tokens
        row = {
            "round": len(self.rows),
            "step": step,
            "eval_loss": _round(eval_loss),
            "eval_perplexity": _ppl(_round(eval_loss)),
            "train_loss": _round(train_loss),
            "bytes_up": 0,
            "bytes_down": 0,
            "seconds": round(seconds, 3),
            "tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        }
        self.rows.append(row)
        return row

    def summary(self, *, done: bool) -> dict[str, Any]:
        final = self.rows[-1]["eval_loss"] if self.rows else self.head["initial_eval_loss"]
        return {
            **self.head,
            "done": done,
            "final_eval_loss": final,
            "final_eval_perplexity": _ppl(final),
            "tokens": self.tokens,
            "bytes_up_total": 0,
            "bytes_down_total": 0,
            "wall_seconds": round(time.monotonic() - self.started, 2),
            "rounds": self.rows,
        }

    def write(self, *, done: bool) -> dict[str, Any]:
        summary = self.summary(done=done)
        atomic_write_bytes(self.path, json.dumps(summary, indent=2).encode())
        return summary


def _head(
    cfg: CentralizedConfig,
    data_dirs: Sequence[Path],
    eval_dir: Path | None,
    model: LlamaModel,
    initial: float,
    checkpoint: Path,
) -> dict[str, Any]:
    return {
        "mode": "centralized",
        "preset": cfg.preset,
        "model_params": sum(p.numel() for p in model.parameters()),
        "data_dirs": [str(d) for d in data_dirs],
        "eval_dir": None if eval_dir is None else str(eval_dir),
        "steps": cfg.steps,
        "eval_every": cfg.eval_every,
        "seed": cfg.seed,
        "training": dataclasses.asdict(cfg.training),
        "initial_eval_loss": _round(initial),
        "checkpoint": str(checkpoint),
    }


def train_centralized(
    data_dirs: Sequence[Path],
    out_dir: Path,
    config: CentralizedConfig | None = None,
    *,
    eval_dir: Path | None = None,
    echo: Echo | None = None,
) -> dict[str, Any]:
    """Train one model on the union of the prepared `data_dirs`; write `out_dir/summary.json`
    (rewritten after every evaluation) and `out_dir/model.safetensors`; return the summary."""
    cfg = config or CentralizedConfig()
    say = echo or (lambda _line: None)
    silos = open_shards(data_dirs)
    model = _model(cfg, silos)
    held_out = _held_out(cfg, silos, eval_dir)
    t = cfg.training
    loader = UnionLoader(silos, batch_size=t.batch_size, seq_len=t.seq_len, seed=cfg.seed)
    # The trainer reads only next_batch/state_dict/load_state_dict of its loader.
    trainer = Trainer(model, cfg.trainer_config(), cast(TokenLoader, loader))
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / CHECKPOINT
    initial = held_out.loss(trainer.model)
    record = _Record(out_dir / SUMMARY, _head(cfg, data_dirs, eval_dir, model, initial, checkpoint))
    say(
        f"centralized: {len(silos)} folders, {record.head['model_params']:,} parameters, "
        f"{cfg.steps} steps x {t.batch_size} x {t.seq_len} tokens; eval loss {_fmt(initial)}"
    )
    _run(trainer, cfg, held_out, record, say)
    _save_params(trainer.model, checkpoint)
    summary = record.write(done=True)
    say(f"final eval loss {_fmt(summary['final_eval_loss'])}; summary {record.path}")
    return summary


def _run(
    trainer: Trainer, cfg: CentralizedConfig, held_out: HeldOut, record: _Record, say: Echo
) -> None:
    step = 0
    while step < cfg.steps:
        n = min(cfg.eval_every, cfg.steps - step)
        started = time.monotonic()
        stats = trainer.train(n, step)
        step += n
        eval_loss = held_out.loss(trainer.model)
        record.add(step, eval_loss, stats.mean_loss, stats.tokens, time.monotonic() - started)
        say(
            f"step {step:>6}/{cfg.steps} train loss {stats.mean_loss:.4f} "
            f"eval loss {eval_loss:.4f} {stats.tokens_per_s:,.0f} tokens/s"
        )
        record.write(done=False)
