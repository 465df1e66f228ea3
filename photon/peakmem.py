"""Measured peak memory of real training steps on CPU, held against `photon.plan`'s estimate.

    m = measure_training_peak(PeakCase(preset="tiny"))    # runs a fresh Python process
    m.ratio                                               # measured / estimated

The measurement runs in a child process so nothing else lives in its heap. The child builds
the preset's model, the trainer (`photon.trainer.Trainer`, AdamW, fp32 on CPU) and a token
loader over synthetic prepared data, runs one warm-up step on a throw-away one-layer model
(torch loads its kernels and thread pools), then resets the kernel's peak-RSS mark
(`/proc/self/clear_refs`), records the RSS, and trains `steps` steps. The measured bytes are
the peak RSS (VmHWM) minus that RSS. RSS, not an allocator statistic, because torch keeps no
statistics for CPU tensors and RSS is what the machine must provide; it includes glibc's
retained free memory, which is part of the real cost. Where the peak mark cannot be reset
(not Linux), the lifetime peak `ru_maxrss` is used instead, which can only read higher.

The estimate is `photon.plan.estimate` for one device, fp32, without the fixed (CUDA) allowance
and without the fragmentation share: parameters + gradients + AdamW moments + activations.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import random
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from photon.errors import PhotonError
from photon.plan import PlanShape, estimate

_WORDS = ("federated", "training", "shares", "model", "deltas", "silo", "aggregator", "round")


@dataclass(kw_only=True, frozen=True, slots=True)
class PeakCase:
    """One measurement: a preset trained at a micro-batch for a few steps."""

    preset: str
    batch_size: int = 8
    #: Tokens per sequence; 0 means the preset's max_seq_len.
    seq_len: int = 0
    steps: int = 3
    threads: int = 1

    def shape(self) -> PlanShape:
        return PlanShape(
            preset=self.preset,
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            precision="fp32",
            overhead_gib=0.0,
            fragmentation=0.0,
        )


@dataclass(frozen=True, slots=True)
class PeakMeasurement:
    case: PeakCase
    measured_bytes: int
    estimate_bytes: int
    #: RSS when the measurement started (runtime, data, model-free heap).
    baseline_rss_bytes: int
    #: "clear_refs" (peak mark reset) or "ru_maxrss" (lifetime peak).
    method: str

    @property
    def ratio(self) -> float:
        return self.measured_bytes / self.estimate_bytes

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["ratio"] = round(self.ratio, 3)
        return out


def estimate_bytes(case: PeakCase) -> int:
    """The plan's fp32 single-device estimate without allowances."""
    row = estimate(case.shape(), "ddp", checkpointing=False)
    return row.params + row.grads + row.optimizer + row.activations + row.buffers


def measure_training_peak(case: PeakCase, timeout_s: float = 600.0) -> PeakMeasurement:
    """Run the case in a fresh Python process and hold its peak against the estimate."""
    args = [sys.executable, "-m", "photon.peakmem", "--case", json.dumps(dataclasses.asdict(case))]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise PhotonError(f"peak-memory child failed ({done.returncode}): {done.stderr[-2000:]}")
    child = json.loads(done.stdout.strip().splitlines()[-1])
    return PeakMeasurement(
        case=case,
        measured_bytes=int(child["measured_bytes"]),
        estimate_bytes=estimate_bytes(case),
        baseline_rss_bytes=int(child["baseline_rss_bytes"]),
        method=str(child["method"]),
    )


def synthetic_shards(out_dir: Path, n_bytes: int, seed: int = 0) -> Path:
    """A prepared data folder of random words, tokenized by the byte tokenizer."""
    from photon.data import prepare
    from photon.tokenizer import ByteTokenizer

    rng = random.Random(seed)  # noqa: S311 - text for a measurement, not a secret
    text_dir = out_dir / "text"
    text_dir.mkdir(parents=True, exist_ok=True)
    words = " ".join(rng.choice(_WORDS) for _ in range(n_bytes // 7))
    (text_dir / "corpus.txt").write_text(words)
    (text_dir / "other.txt").write_text(words[: len(words) // 8])
    prepare(text_dir, out_dir / "prepared", ByteTokenizer(), heldout_fraction=0.0)
    return out_dir / "prepared"


# -- the child process ------------------------------------------------------------------------
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _reset_peak() -> str:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "clear_refs"
    except OSError:
        return "ru_maxrss"


def _warm_up(threads: int) -> None:
    """One step of a one-layer model, so kernel and thread-pool set-up is not measured."""
    import torch

    from photon.model import ModelConfig, build_model

    torch.set_num_threads(threads)
    cfg = ModelConfig(
        vocab_size=258, dim=64, n_layers=1, n_heads=2, n_kv_heads=2, ffn_hidden=128, max_seq_len=32
    )
    model = build_model(cfg, seed=0)
    opt = torch.optim.AdamW(model.parameters())
    ids = torch.randint(0, 258, (2, 32))
    model.loss(ids, ids).backward()
    opt.step()
    del model, opt
    gc.collect()


def _child(case: PeakCase) -> dict[str, Any]:
    from photon.data import TokenLoader, TokenShards
    from photon.model import build_model
    from photon.trainer import Trainer, TrainerConfig

    shape = case.shape()
    seq = shape.tokens() // shape.batch_size
    with tempfile.TemporaryDirectory(prefix="photon-peakmem-") as tmp:
        data = synthetic_shards(Path(tmp), n_bytes=max(200_000, 4 * case.batch_size * seq))
        loader = TokenLoader(TokenShards(data), batch_size=case.batch_size, seq_len=seq, seed=0)
        _warm_up(case.threads)
        method = _reset_peak()
        baseline = _rss_kib("VmRSS")
        model = build_model(shape.model(), seed=0)
        tcfg = TrainerConfig(
            batch_size=case.batch_size, seq_len=seq, device="cpu", threads=case.threads
        )
        Trainer(model, tcfg, loader).train(case.steps, global_step=0)
        peak = _rss_kib("VmHWM") if method == "clear_refs" else _maxrss_kib()
    return {
        "measured_bytes": (peak - baseline) * 1024,
        "baseline_rss_bytes": baseline * 1024,
        "method": method,
    }


def _maxrss_kib() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="(internal) measure one PeakCase")
    parser.add_argument("--case", required=True, help="PeakCase as JSON")
    args = parser.parse_args(argv)
    case = PeakCase(**json.loads(args.case))
    sys.stdout.write(json.dumps(_child(case)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
