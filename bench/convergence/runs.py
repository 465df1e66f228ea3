"""The convergence benchmark's runs: the real federation (photon.cli.localfed: an aggregator and
one process per silo over mTLS) and its data-parallel-equivalent centralized baseline.

Equal tokens: N silos with batch b, R rounds of H local steps move N*b*R*H*seq_len tokens
through the federation; the centralized run takes R*H steps (as many optimizer steps as each
silo) with batch N*b (so the same tokens), evaluating every H steps (once per round) on the
same eval windows the aggregator evaluates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from aggregator.strategies import StrategyName
from bench.convergence.data import Corpus
from photon.centralized import CentralizedConfig, train_centralized
from photon.cli.localfed.run import LocalFederation, prepare_workdir
from photon.cli.localfed.setup import LocalOptions
from photon.federation import Codec, TrainingSpec

Echo = Callable[[str], None]
OUTERS: dict[str, tuple[float, float | None]] = {"fedavg": (1.0, None), "nesterov": (0.7, 0.9)}


@dataclass(kw_only=True, frozen=True, slots=True)
class Plan:
    """Sizes of one benchmark run: `--quick` (minutes on 2 cores) or full."""

    name: str
    """"quick" or "full"."""
    rounds: int
    """Federated rounds R."""
    local_steps: int
    """Inner steps per round H (Photon: >= 64)."""
    batch_size: int
    """Sequences per silo step b (the centralized batch is silos x b)."""
    seq_len: int
    """Tokens per sequence."""
    lr: float
    """Peak inner learning rate (AdamW)."""
    warmup_steps: int
    """Linear warm-up, in inner steps."""
    min_lr_ratio: float
    """Cosine floor as a fraction of lr."""
    eval_batches: int
    """Evaluation batches of b sequences (the eval set is eval_batches x b windows)."""
    max_bytes: int
    """Text per silo."""
    silos: int = 4
    """Silos (the four corpora)."""
    timeout_s: float = 3 * 3600.0
    """Give up on one federation after this long."""
    central_threads: int = 1
    """torch threads of the centralized run (1: robust on a small, shared CPU; each silo
    process of the federation also trains with 1 thread)."""

    def training(self, batch_size: int | None = None) -> TrainingSpec:
        return TrainingSpec(
            lr=self.lr,
            min_lr_ratio=self.min_lr_ratio,
            warmup_steps=self.warmup_steps,
            batch_size=batch_size or self.batch_size,
            seq_len=self.seq_len,
        )

    @property
    def tokens(self) -> int:
        return self.silos * self.batch_size * self.seq_len * self.rounds * self.local_steps

    @property
    def eval_windows_per_silo(self) -> int:
        return math.ceil(self.eval_batches * self.batch_size / self.silos)


QUICK = Plan(
    name="quick",
    rounds=3,
    local_steps=64,
    batch_size=4,
    seq_len=128,
    lr=3e-3,
    warmup_steps=16,
    min_lr_ratio=0.1,
    eval_batches=32,
    max_bytes=800_000,
)
FULL = Plan(
    name="full",
    rounds=16,
    local_steps=64,
    batch_size=8,
    seq_len=128,
    lr=3e-3,
    warmup_steps=32,
    min_lr_ratio=0.1,
    eval_batches=64,
    max_bytes=3_000_000,
)


@dataclass(slots=True)
class RunResult:
    """One training run, reduced to what the benchmark reports."""

    name: str
    mode: str
    outer: str | None
    codec: str | None
    initial_eval_loss: float
    final_eval_loss: float
    tokens: int
    wall_seconds: float
    curve: list[tuple[int, float]]
    summary_path: str
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "outer": self.outer,
            "codec": self.codec,
            "initial_eval_loss": self.initial_eval_loss,
            "final_eval_loss": self.final_eval_loss,
            "final_eval_perplexity": round(math.exp(self.final_eval_loss), 4),
            "tokens": self.tokens,
            "wall_seconds": round(self.wall_seconds, 1),
            "eval_curve": [{"tokens": t, "eval_loss": loss} for t, loss in self.curve],
            "summary": self.summary_path,
            **self.extra,
        }


def _curve(summary: dict[str, Any]) -> list[tuple[int, float]]:
    points, tokens = [(0, float(summary["initial_eval_loss"]))], 0
    for row in summary["rounds"]:
        tokens += int(row["tokens"])
        points.append((tokens, float(row["eval_loss"])))
    return points


def run_federated(
    corpus: Corpus, plan: Plan, work: Path, *, outer: str, codec: str, echo: Echo
) -> RunResult:
    """The real federation: certificates, aggregator and one process per silo, mTLS."""
    outer_lr, momentum = OUTERS[outer]
    opts = LocalOptions(
        silos=plan.silos,
        rounds=plan.rounds,
        local_steps=plan.local_steps,
        preset="tiny",
        codec=cast(Codec, codec),
        outer=cast(StrategyName, outer),
        outer_lr=outer_lr,
        outer_momentum=momentum,
        data_dirs=tuple(corpus.silo_dirs),
        eval_dir=corpus.eval_dir,
        training=plan.training(),
        eval_batches=plan.eval_batches,
    )
    name = f"federated-{outer}-{codec}-{plan.name}"
    echo(f"== {name}: {plan.silos} silos x {plan.rounds} rounds x H={plan.local_steps}")
    fed = LocalFederation(prepare_workdir(work / name), opts, echo=echo, timeout_s=plan.timeout_s)
    summary = fed.run()
    up, down = int(summary["bytes_up_total"]), int(summary["bytes_down_total"])
    ddp = int(summary["ddp_equivalent_bytes_total"])
    return RunResult(
        name=name,
        mode="federated",
        outer=outer,
        codec=codec,
        initial_eval_loss=float(summary["initial_eval_loss"]),
        final_eval_loss=float(summary["final_eval_loss"]),
        tokens=sum(int(r["tokens"]) for r in summary["rounds"]),
        wall_seconds=float(summary["wall_seconds"]),
        curve=_curve(summary),
        summary_path=str(Path(summary["workdir"]) / "summary.json"),
        extra={
            "outer_lr": outer_lr,
            "outer_momentum": momentum or 0.0,
            "bytes_up_total": up,
            "bytes_down_total": down,
            "ddp_equivalent_bytes_total": ddp,
            "comm_reduction_vs_ddp": ddp / (up + down),
            "model_params": int(summary["model_params"]),
        },
    )


def run_centralized(corpus: Corpus, plan: Plan, work: Path, *, echo: Echo) -> RunResult:
    """train_centralized at equal tokens: batch silos x b, R x H steps, eval every H."""
    cfg = CentralizedConfig(
        preset="tiny",
        steps=plan.rounds * plan.local_steps,
        training=plan.training(batch_size=plan.silos * plan.batch_size),
        seed=0,
        eval_every=plan.local_steps,
        eval_batches=plan.eval_batches,
        eval_batch_size=plan.batch_size,
        threads=plan.central_threads,
    )
    name = f"centralized-{plan.name}"
    echo(f"== {name}: {cfg.steps} steps x batch {cfg.training.batch_size} (equal tokens)")
    started = time.monotonic()
    summary = train_centralized(
        corpus.silo_dirs, work / name, cfg, eval_dir=corpus.eval_dir, echo=echo
    )
    return RunResult(
        name=name,
        mode="centralized",
        outer=None,
        codec=None,
        initial_eval_loss=float(summary["initial_eval_loss"]),
        final_eval_loss=float(summary["final_eval_loss"]),
        tokens=int(summary["tokens"]),
        wall_seconds=time.monotonic() - started,
        curve=_curve(summary),
        summary_path=str(work / name / "summary.json"),
        extra={"batch_size": cfg.training.batch_size, "steps": cfg.steps},
    )
