"""Training speed: the silo's step loop against a bare torch loop, interleaved in one run.

    python bench/trainer.py --json OUT.json [--quick] [--device cpu|cuda] [--threads N]

For each preset, the silo's loop (`bench.trainer.loops.SiloLoop`: the agent's backend, trainer,
token loader, accounting, heartbeat, metrics and progress) and a bare torch loop on the same
initial model, batches, AdamW, clip and schedule run in alternating blocks of steps (the order
flips every block; one warm-up block each, at least 2 steps, is not counted). Each block gives
a ratio of the two loops' tokens/s; the reported ratio is the median over blocks.

Reported per preset: `tokens_per_s_over_bare_loop` (target >= 0.95 on CPU); the same ratio
measured in CPU time of this process, `tokens_per_cpu_s_over_bare_loop`, which other jobs on
a shared machine disturb far less (with `--threads 1`, the default, torch computes in the
calling thread, so CPU time is the work done; on CUDA it counts only the host side); and
`peak_rss_over_estimate`: the peak RSS of real training steps of the preset at the same batch,
measured in a fresh process (`photon.peakmem`), over `photon.plan`'s fp32 estimate without
allowances. With `--device cuda`, `peak_cuda_allocated_over_estimate` instead: torch's peak
allocated CUDA bytes during the silo loop over the bf16-mixed estimate without allowances.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.trainer.loops import BareLoop, SiloLoop, Timed
from photon.data import TokenShards
from photon.federation import FederationSpec, TrainingSpec
from photon.fsutil import atomic_write_bytes
from photon.logs import configure
from photon.peakmem import PeakCase, measure_training_peak, synthetic_shards
from photon.plan import PlanShape, estimate
from photon.trainer import TrainerConfig


@dataclass(frozen=True, slots=True)
class Block:
    """One preset's schedule: `reps` timed blocks of `steps` steps per loop."""

    preset: str
    steps: int
    reps: int


#: the federation's default micro-batch (TrainingSpec: 8 sequences of 128 tokens)
BATCH, SEQ = TrainingSpec().batch_size, TrainingSpec().seq_len
QUICK = (Block("tiny", 5, 9), Block("small", 1, 7))
FULL = (Block("tiny", 20, 11), Block("small", 3, 7), Block("125m", 1, 5))


def echo(line: str) -> None:
    print(line, flush=True)


def speed(block: Block, shards: TokenShards, device: str, threads: int) -> dict[str, Any]:
    """Interleaved blocks of both loops; per-block ratios and their median."""
    spec = FederationSpec(preset=block.preset, training=TrainingSpec(batch_size=BATCH, seq_len=SEQ))
    tcfg = TrainerConfig.from_spec(
        spec.training, total_steps=spec.total_steps, device=device, seed=spec.seed, threads=threads
    )
    # the warm-up block: the silo loop alone first (its CUDA peak, AdamW state included, is
    # measured before the bare loop's model exists), then the bare loop over the same steps
    warm = max(2, block.steps)
    cuda_base = _reset_cuda_peak() if device == "cuda" else 0
    silo = SiloLoop(spec, tcfg, shards)
    blocks = [{"silo": silo.run(warm, 0)}]
    peak = torch.cuda.max_memory_allocated() - cuda_base if device == "cuda" else None
    bare = BareLoop(spec, tcfg, shards)
    blocks[0]["bare"] = bare.run(warm, 0)
    step = warm
    for rep in range(1, block.reps + 1):
        loops: list[tuple[str, SiloLoop | BareLoop]] = [("silo", silo), ("bare", bare)]
        if rep % 2:
            loops.reverse()
        blocks.append({name: loop.run(block.steps, step) for name, loop in loops})
        step += block.steps
    out = summarize(blocks, block.steps * BATCH * SEQ)
    if peak is not None:
        out["peak_cuda_allocated_bytes"] = peak
    return out


def _reset_cuda_peak() -> int:
    """Bytes CUDA holds before a preset's loops are built (normally 0)."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return int(torch.cuda.memory_allocated())


def summarize(blocks: list[dict[str, Timed]], tokens: int) -> dict[str, Any]:
    """Median per-block ratios (wall clock and CPU time) of the counted blocks."""
    counted = blocks[1:]
    wall = [b["bare"].seconds / b["silo"].seconds for b in counted]
    cpu = [b["bare"].cpu_seconds / b["silo"].cpu_seconds for b in counted]
    losses = [(b["silo"].mean_loss, b["bare"].mean_loss) for b in blocks]
    silo_s = statistics.median(b["silo"].seconds for b in counted)
    bare_s = statistics.median(b["bare"].seconds for b in counted)
    return {
        "tokens_per_s_over_bare_loop": round(statistics.median(wall), 3),
        "ratio_per_block": [round(r, 3) for r in wall],
        "cpu_time_ratio": round(statistics.median(cpu), 3),
        "silo_tokens_per_s": round(tokens / silo_s, 1),
        "bare_tokens_per_s": round(tokens / bare_s, 1),
        "same_losses": all(a == b for a, b in losses),
        "max_loss_difference": max(abs(a - b) for a, b in losses),
    }


def peak_over_estimate(preset: str, threads: int) -> dict[str, Any]:
    """Peak RSS of real CPU training steps (fresh process) over the plan's estimate."""
    m = measure_training_peak(
        PeakCase(preset=preset, batch_size=BATCH, seq_len=SEQ, steps=2, threads=threads)
    )
    return {"peak_rss_over_estimate": round(m.ratio, 3), "peak": m.to_dict()}


def cuda_estimate(preset: str) -> int:
    shape = PlanShape(preset=preset, batch_size=BATCH, seq_len=SEQ, overhead_gib=0, fragmentation=0)
    row = estimate(shape, "ddp", checkpointing=False)
    return row.params + row.grads + row.optimizer + row.activations + row.buffers


def run(args: argparse.Namespace) -> dict[str, Any]:
    blocks = QUICK if args.quick else FULL
    started = time.monotonic()
    result: dict[str, Any] = {
        "tokens_per_s_over_bare_loop": {},
        "tokens_per_cpu_s_over_bare_loop": {},
    }
    key = "peak_cuda_allocated_over_estimate" if args.device == "cuda" else "peak_rss_over_estimate"
    result[key] = {}
    detail: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="photon-bench-trainer-") as tmp:
        shards = TokenShards(synthetic_shards(Path(tmp), n_bytes=2_000_000))
        for block in blocks:
            echo(f"{block.preset}: {block.reps} x {block.steps} steps per loop, interleaved")
            one = speed(block, shards, args.device, args.threads)
            result["tokens_per_s_over_bare_loop"][block.preset] = one.pop(
                "tokens_per_s_over_bare_loop"
            )
            result["tokens_per_cpu_s_over_bare_loop"][block.preset] = one.pop("cpu_time_ratio")
            if args.device == "cuda":
                ratio = one["peak_cuda_allocated_bytes"] / cuda_estimate(block.preset)
                result[key][block.preset] = round(ratio, 3)
            else:
                peak = peak_over_estimate(block.preset, args.threads)
                result[key][block.preset] = peak.pop("peak_rss_over_estimate")
                one.update(peak)
            detail[block.preset] = one
            echo(f"  {json.dumps(one)}")
    result["detail"] = {
        "presets": detail,
        "mode": "quick" if args.quick else "full",
        "device": args.device,
        "threads": args.threads,
        "batch_size": BATCH,
        "seq_len": SEQ,
        "torch": torch.__version__,
        "command": " ".join(["python", *sys.argv]),
        "wall_seconds_total": round(time.monotonic() - started, 1),
        "cpu_count": os.cpu_count(),
    }
    return result


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="Where to write the results.")
    parser.add_argument("--quick", action="store_true", help="tiny and small, ~3 min on 2 cores.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        echo(json.dumps({"error": "--device cuda but torch sees no CUDA device"}))
        return 2
    configure(level="info")  # as the agent runs: progress lines at info, every 10 s
    result = run(args)
    atomic_write_bytes(args.json, json.dumps(result, indent=2).encode())
    echo(json.dumps({k: v for k, v in result.items() if k != "detail"}, indent=2))
    return 0
