"""The inner loop: AdamW with a cosine schedule indexed by the global step.

Shared core: the silo trains its rounds with it, and the centralized baseline
(`photon.centralized`) runs it as one long run.

Photon's recipe (small local batches, high learning rates) is the default. The learning rate
continues across federated rounds because the schedule reads the global step the aggregator
hands out with each task. The optimizer moments, the data cursor and the RNG are the trainer's
state; `save_state`/`load_state` restore it exactly, so a silo killed mid-round redoes the round
from identical state and produces the identical delta.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from photon.data import TokenLoader
from photon.errors import ConfigError, DataError
from photon.federation import TrainingSpec
from photon.fsutil import atomic_write_bytes, atomic_write_with
from photon.model import LlamaModel

STATE_TENSORS = "trainer.safetensors"
STATE_JSON = "trainer.json"


@dataclass(kw_only=True, slots=True)
class TrainerConfig:
    """Inner-loop settings (the federation spec's `training` table plus local compute)."""

    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    #: Horizon of the cosine schedule, in global inner steps.
    total_steps: int = 1000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    batch_size: int = 8
    seq_len: int = 128
    grad_accum: int = 1
    #: Clear the AdamW moments at the start of every round.
    reset_optimizer: bool = False
    #: "auto" (CUDA when present), "cpu" or "cuda".
    device: str = "auto"
    #: torch.compile the model (5-10% on CPU after a cold compile of 25-35 s).
    compile: bool = False
    seed: int = 0
    #: torch CPU threads; None leaves torch's default.
    threads: int | None = None

    @classmethod
    def from_spec(
        cls,
        t: TrainingSpec,
        *,
        total_steps: int,
        device: str = "auto",
        seed: int = 0,
        threads: int | None = None,
        reset_optimizer: bool | None = None,
    ) -> TrainerConfig:
        """The federation's training table plus what is local to this machine."""
        return cls(
            lr=t.lr,
            min_lr_ratio=t.min_lr_ratio,
            warmup_steps=t.warmup_steps,
            total_steps=total_steps,
            weight_decay=t.weight_decay,
            grad_clip=t.grad_clip,
            batch_size=t.batch_size,
            seq_len=t.seq_len,
            grad_accum=t.grad_accum,
            reset_optimizer=t.reset_optimizer if reset_optimizer is None else reset_optimizer,
            device=device,
            seed=seed,
            threads=threads,
        )

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.total_steps <= 0 or self.batch_size <= 0 or self.seq_len <= 0:
            raise ConfigError("trainer: lr, total_steps, batch_size and seq_len must be > 0")
        if self.grad_accum < 1 or self.warmup_steps < 0:
            raise ConfigError("trainer: grad_accum must be >= 1 and warmup_steps >= 0")


def lr_at(cfg: TrainerConfig, step: int) -> float:
    """Linear warm-up to `lr`, then cosine decay to `min_lr_ratio * lr` at `total_steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True, slots=True)
class TrainStats:
    mean_loss: float
    last_loss: float
    tokens: int
    seconds: float
    tokens_per_s: float


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda' but no CUDA device is available")
    return torch.device(name)


class Trainer:
    def __init__(self, model: LlamaModel, cfg: TrainerConfig, loader: TokenLoader) -> None:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg, self.loader = cfg, loader
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        self.names: dict[torch.Tensor, str] = {p: n for n, p in model.named_parameters()}
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
        )
        self.forward: Callable[..., torch.Tensor] = (
            torch.compile(model.loss) if cfg.compile else model.loss
        )

    def begin_round(self) -> None:
        """Forget the AdamW moments (the `reset_optimizer` switch)."""
        self.optimizer.state.clear()

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train(
        self, steps: int, global_step: int, on_step: Callable[[int, float], None] | None = None
    ) -> TrainStats:
        self.model.train()
        started, losses = time.monotonic(), []
        for i in range(steps):
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(self.cfg, global_step + i)
            loss = self._step()
            losses.append(loss)
            if on_step is not None:
                on_step(global_step + i + 1, loss)
        seconds = time.monotonic() - started
        tokens = steps * self.cfg.grad_accum * self.cfg.batch_size * self.cfg.seq_len
        return TrainStats(
            mean_loss=sum(losses) / max(1, len(losses)),
            last_loss=losses[-1] if losses else math.nan,
            tokens=tokens,
            seconds=seconds,
            tokens_per_s=tokens / seconds if seconds else 0.0,
        )

    def _step(self) -> float:
        total = 0.0
        for _ in range(self.cfg.grad_accum):
            x, y = self.loader.next_batch()
            with self._autocast():
                loss = self.forward(x.to(self.device), y.to(self.device)) / self.cfg.grad_accum
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    # -- durable state --------------------------------------------------------------------
    def save_state(self, directory: Path) -> None:
        tensors: dict[str, torch.Tensor] = {"rng/torch": torch.get_rng_state()}
        for param, state in self.optimizer.state.items():
            name = self.names[param]
            for key, value in state.items():
                tensors[f"{key}/{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
        atomic_write_with(directory / STATE_TENSORS, lambda tmp: save_file(tensors, str(tmp)))
        meta = {"loader": self.loader.state_dict(), "format": 1}
        atomic_write_bytes(directory / STATE_JSON, json.dumps(meta).encode())

    def load_state(self, directory: Path) -> None:
        try:
            tensors = load_file(str(directory / STATE_TENSORS))
            meta = json.loads((directory / STATE_JSON).read_bytes())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"trainer state in {directory} is unreadable: {exc}") from exc
        torch.set_rng_state(tensors.pop("rng/torch"))
        by_name = {n: p for p, n in self.names.items()}
        self.optimizer.state.clear()
        for key, value in tensors.items():
            kind, name = key.split("/", 1)
            param = by_name[name]
            # AdamW hosts `step` on the CPU unless fused/capturable (as its load_state_dict does)
            self.optimizer.state[param][kind] = value if kind == "step" else value.to(param.device)
        self.loader.load_state_dict(meta["loader"])
