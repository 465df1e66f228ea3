"""The CUDA path end to end, for a machine with GPUs (CI has none): run by tools/gpu_check.sh.

    python tools/gpu_check.py [--out DIR] [--skip STEP ...]

Steps, each reported as {"status": "ok" | "failed" | "skipped", ...numbers}:
    autocast  a few trainer steps on CUDA: bf16 autocast active, losses finite and falling
    ddp       a federation (aggregator + one silo under torchrun, one process per GPU, NCCL)
    fsdp      the same with `[silo] parallelism = "fsdp"`
    bench     `python bench/trainer.py --quick --device cuda`
    local     a short `photon local` with every silo forced onto CUDA

Prints one JSON summary on stdout: {"gpu": {...}, "steps": {...}, "ok": bool}. Exit status 0
when no step failed, 1 otherwise, 1 as well (with "gpu": {"available": false}) without a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

Step = Callable[[Path, int], dict[str, Any]]
STEP_TIMEOUT_S = 600


def gpu_info() -> dict[str, Any]:
    """What this machine offers: nvidia-smi's view and torch's."""
    info: dict[str, Any] = {"nvidia_smi": shutil.which("nvidia-smi") is not None}
    if info["nvidia_smi"]:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        info["nvidia_smi_gpus"] = [line.strip() for line in smi.stdout.splitlines() if line]
    import torch

    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    info["available"] = bool(torch.cuda.is_available())
    info["count"] = torch.cuda.device_count() if info["available"] else 0
    if info["available"]:
        info["bf16_supported"] = bool(torch.cuda.is_bf16_supported())
    return info


# -- steps ------------------------------------------------------------------------------------
def step_autocast(work: Path, gpus: int) -> dict[str, Any]:
    import torch

    from photon.data import TokenLoader, TokenShards
    from photon.model import build_model, preset
    from photon.peakmem import synthetic_shards
    from photon.trainer import Trainer, TrainerConfig

    shards = TokenShards(synthetic_shards(work / "autocast", n_bytes=400_000))
    tcfg = TrainerConfig(batch_size=8, seq_len=128, device="cuda", warmup_steps=2, total_steps=50)
    loader = TokenLoader(shards, batch_size=8, seq_len=128, seed=0)
    trainer = Trainer(build_model(preset("small", 258), seed=0), tcfg, loader)
    dtypes: set[torch.dtype] = set()
    hook = trainer.model.lm_head.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    losses: list[float] = []
    stats = trainer.train(20, 0, on_step=lambda step, loss: losses.append(loss))
    hook.remove()
    ok = dtypes == {torch.bfloat16} and all(map(math.isfinite, losses))
    ok = ok and losses[-1] < losses[0]
    return {
        "status": "ok" if ok else "failed",
        "lm_head_dtypes": sorted(str(d) for d in dtypes),
        "first_loss": round(losses[0], 4),
        "last_loss": round(losses[-1], 4),
        "tokens_per_s": round(stats.tokens_per_s, 1),
        "peak_cuda_allocated_bytes": torch.cuda.max_memory_allocated(),
    }


def _torchrun_federation(work: Path, gpus: int, parallelism: str) -> dict[str, Any]:
    """An aggregator and one CUDA silo under torchrun with `gpus` processes, two rounds."""
    from tests.harness import make_federation

    fed = make_federation(work, silos=1, rounds=2)
    silo = fed.silos["silo-0"].silo
    silo.device, silo.parallelism = "cuda", parallelism  # type: ignore[assignment]
    fed.write_configs()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    args = ["silo", "run", "--config", str(fed.config_path("silo-0"))]
    started = time.monotonic()
    try:
        fed.start_aggregator()
        fed.spawn("silo-0", args, python=[*torchrun, "--nproc_per_node", str(gpus)])
        codes = fed.wait_all(timeout=STEP_TIMEOUT_S - 60)
    finally:
        fed.stop_all()
    summary = fed.summary()
    tokens = [r["silos"]["silo-0"]["tokens"] for r in summary.get("rounds", [])]
    single = 3 * 4 * 32  # the harness's local_steps x batch_size x seq_len
    ok = set(codes.values()) == {0} and summary.get("done") is True
    ok = ok and tokens == [gpus * single] * 2
    out: dict[str, Any] = {"status": "ok" if ok else "failed", "exit_codes": codes}
    out.update(processes=gpus, tokens_per_round=tokens, seconds=round(time.monotonic() - started))
    if not ok:
        out["silo_log_tail"] = fed.log("silo-0", tail=3000)
    return out


def step_ddp(work: Path, gpus: int) -> dict[str, Any]:
    return _torchrun_federation(work / "ddp", gpus, "ddp")


def step_fsdp(work: Path, gpus: int) -> dict[str, Any]:
    return _torchrun_federation(work / "fsdp", gpus, "fsdp")


def step_bench(work: Path, gpus: int) -> dict[str, Any]:
    out = work / "bench-trainer-cuda.json"
    cmd = [sys.executable, str(ROOT / "bench" / "trainer.py"), "--quick", "--device", "cuda"]
    done = _run([*cmd, "--json", str(out)], work)
    if done.returncode != 0:
        return {"status": "failed", "exit_code": done.returncode, "tail": done.stdout[-3000:]}
    result = json.loads(out.read_text())
    return {"status": "ok", **{k: v for k, v in result.items() if k != "detail"}}


def step_local(work: Path, gpus: int) -> dict[str, Any]:
    workdir = work / "local"
    cmd = [sys.executable, "-m", "photon", "local", "--rounds", "2", "--local-steps", "20"]
    env = {"PHOTON__SILO__DEVICE": "cuda"}  # a silo without CUDA fails instead of using the CPU
    done = _run([*cmd, "--workdir", str(workdir), "--timeout", "500"], work, env)
    summary_path = workdir / "summary.json"
    if done.returncode != 0 or not summary_path.exists():
        return {"status": "failed", "exit_code": done.returncode, "tail": done.stdout[-3000:]}
    summary = json.loads(summary_path.read_text())
    rounds = summary.get("rounds", [])
    return {
        "status": "ok" if summary.get("done") else "failed",
        "rounds": len(rounds),
        "final_eval_loss": rounds[-1].get("eval_loss") if rounds else None,
        "wall_seconds": summary.get("wall_seconds"),
    }


def _run(
    cmd: list[str], cwd: Path, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=env,
        capture_output=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=STEP_TIMEOUT_S,
        check=False,
    )


STEPS: dict[str, Step] = {
    "autocast": step_autocast,
    "ddp": step_ddp,
    "fsdp": step_fsdp,
    "bench": step_bench,
    "local": step_local,
}


def run_steps(work: Path, gpus: int, skip: set[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, step in STEPS.items():
        if name in skip:
            results[name] = {"status": "skipped", "reason": "--skip"}
            continue
        started = time.monotonic()
        try:
            results[name] = step(work, gpus)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, the others still run
            tail = traceback.format_exc()[-2000:]
            results[name] = {"status": "failed", "error": repr(exc), "traceback": tail}
        results[name]["step_seconds"] = round(time.monotonic() - started, 1)
        print(f"{name}: {results[name]['status']}", file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The CUDA path end to end; one JSON summary.")
    parser.add_argument("--out", type=Path, default=None, help="Work folder (default: a temp).")
    parser.add_argument("--skip", action="append", default=[], choices=sorted(STEPS))
    args = parser.parse_args(argv)
    gpu = gpu_info()
    if not gpu["available"]:
        steps = {name: {"status": "skipped", "reason": "no GPU"} for name in STEPS}
        print(json.dumps({"gpu": gpu, "steps": steps, "ok": False, "error": "no GPU"}, indent=2))
        return 1
    work = args.out or Path(tempfile.mkdtemp(prefix="photon-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    steps = run_steps(work, int(gpu["count"]), set(args.skip))
    ok = all(s["status"] != "failed" for s in steps.values())
    print(json.dumps({"gpu": gpu, "steps": steps, "ok": ok, "workdir": str(work)}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
