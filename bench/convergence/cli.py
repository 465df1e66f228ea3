"""Federated vs centralized convergence at equal tokens, on real heterogeneous text.

    python bench/convergence.py --json OUT.json [--quick] [--outer auto|fedavg|nesterov]

Four silos (English, German and Italian fortunes from Debian's fortunes packages, and
Python's standard-library source) train the `tiny` preset in a REAL local federation
(aggregator + 4 silo processes over mTLS, photon.cli.localfed), H >= 64 local steps per round,
fp32 deltas; then again with int8 deltas. The centralized baseline (photon.centralized)
trains the same initial model on the union of the four silos' train splits with batch
4 x the silos' batch for rounds x H steps: the data-parallel equivalent (same tokens, as many
optimizer steps as each silo). Both are evaluated once per round(-equivalent) on the same
windows: the union of the silos' held-out splits.

`--outer auto` (the default) runs the federation with fedavg (lr 1.0) and with nesterov
(lr 0.7, momentum 0.9) at the quick size and keeps the better one (both are reported).

Reported: fed_over_central_ppl (ppl_fed / ppl_central = exp(loss_fed - loss_central)),
comm_reduction_vs_ddp (from the federated summary.json), int8_vs_fp32_eval_loss_change
(relative change of the final eval loss), tokens, model_params, local_steps, and per-run eval
curves and wall times; a PNG of eval loss against tokens goes next to the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.convergence.data import Corpus, build_corpus
from bench.convergence.plot import plot_curves
from bench.convergence.runs import (
    FULL,
    OUTERS,
    QUICK,
    Plan,
    RunResult,
    run_centralized,
    run_federated,
)
from photon.fsutil import atomic_write_bytes

TARGETS = {"fed_over_central_ppl_max": 1.05, "comm_reduction_vs_ddp_min": 64.0}
INT8_TARGET = 0.005


def echo(line: str) -> None:
    print(line, flush=True)


def choose_outer(
    requested: str, corpus: Corpus, plan: Plan, work: Path
) -> tuple[str, list[RunResult]]:
    """The outer optimizer to use, and the quick-size probe runs that chose it."""
    if requested != "auto":
        return requested, []
    probe_plan = dataclasses.replace(QUICK, max_bytes=plan.max_bytes)
    probes = [
        run_federated(corpus, probe_plan, work / "probes", outer=o, codec="fp32", echo=echo)
        for o in OUTERS
    ]
    best = min(probes, key=lambda r: r.final_eval_loss)
    echo(
        "outer optimizer: "
        + ", ".join(f"{r.outer} {r.final_eval_loss:.4f}" for r in probes)
        + f" -> {best.outer}"
    )
    return str(best.outer), probes


def federated_fp32(
    outer: str, probes: list[RunResult], corpus: Corpus, plan: Plan, work: Path
) -> RunResult:
    """The quick probe of the chosen optimizer is the quick run itself; else run the plan."""
    if plan.name == QUICK.name:
        for probe in probes:
            if probe.outer == outer:
                return probe
    return run_federated(corpus, plan, work, outer=outer, codec="fp32", echo=echo)


def metrics(central: RunResult, fp32: RunResult, int8: RunResult, plan: Plan) -> dict[str, Any]:
    """The headline numbers, each from the runs' own summaries."""
    ratio = math.exp(fp32.final_eval_loss - central.final_eval_loss)
    comm = float(fp32.extra["comm_reduction_vs_ddp"])
    int8_change = (int8.final_eval_loss - fp32.final_eval_loss) / fp32.final_eval_loss
    return {
        "fed_over_central_ppl": round(ratio, 4),
        "comm_reduction_vs_ddp": round(comm, 2),
        "int8_vs_fp32_eval_loss_change": round(int8_change, 5),
        "tokens": fp32.tokens,
        "model_params": int(fp32.extra["model_params"]),
        "local_steps": plan.local_steps,
        "targets": {
            **TARGETS,
            "int8_vs_fp32_abs_change_max": INT8_TARGET,
            "met": {
                "fed_over_central_ppl": ratio <= TARGETS["fed_over_central_ppl_max"],
                "comm_reduction_vs_ddp": comm >= TARGETS["comm_reduction_vs_ddp_min"],
                "int8_vs_fp32_eval_loss_change": abs(int8_change) <= INT8_TARGET,
            },
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = QUICK if args.quick else FULL
    work = args.workdir or Path(tempfile.mkdtemp(prefix="photon-convergence-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    echo(f"convergence benchmark ({plan.name}) in {work}")
    corpus = build_corpus(
        work,
        max_bytes=plan.max_bytes,
        seq_len=plan.seq_len,
        eval_windows=plan.eval_windows_per_silo,
    )
    echo(f"corpus: {corpus.source}; " + "; ".join(corpus.notes))
    central = run_centralized(corpus, plan, work, echo=echo)
    outer, probes = choose_outer(args.outer, corpus, plan, work)
    fp32 = federated_fp32(outer, probes, corpus, plan, work)
    int8 = run_federated(corpus, plan, work, outer=outer, codec="int8", echo=echo)
    if fp32.tokens != central.tokens:
        raise SystemExit(f"unequal tokens: federated {fp32.tokens}, centralized {central.tokens}")
    result = metrics(central, fp32, int8, plan)
    png = args.json.with_suffix(".png")
    plot_curves([central, fp32, int8], png, _title(plan))
    result["detail"] = {
        "plan": dataclasses.asdict(plan),
        "outer_optimizer": outer,
        "outer_choice": "given" if args.outer != "auto" else "best of the quick probes",
        "equal_tokens": (
            f"centralized batch = {plan.silos} silos x {plan.batch_size} = "
            f"{plan.silos * plan.batch_size}, steps = {plan.rounds} rounds x H "
            f"{plan.local_steps} = {plan.rounds * plan.local_steps}: the data-parallel "
            "equivalent (same tokens, as many optimizer steps as each silo); eval every H steps"
        ),
        "runs": {r.name: r.record() for r in [central, fp32, int8]},
        "outer_probes": {r.name: r.record() for r in probes},
        "corpus": corpus.record(),
        "png": str(png),
        "command": " ".join(["python", *sys.argv]),
        "wall_seconds_total": round(time.monotonic() - started, 1),
        "cpu_count": os.cpu_count(),
        "workdir": str(work),
    }
    return result


def _title(plan: Plan) -> str:
    return (
        f"tiny preset, {plan.silos} silos x batch {plan.batch_size}, "
        f"{plan.rounds} rounds x H={plan.local_steps} ({plan.name})"
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="Where to write the results.")
    parser.add_argument("--quick", action="store_true", help="Minutes on 2 cores, not hours.")
    parser.add_argument("--outer", choices=["auto", *OUTERS], default="auto")
    parser.add_argument("--workdir", type=Path, default=None, help="Default: a temporary folder.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    result = run(args)
    atomic_write_bytes(args.json, json.dumps(result, indent=2).encode())
    headline = {k: result[k] for k in list(result)[:6]}
    echo(json.dumps(headline, indent=2))
    echo(f"targets met: {result['targets']['met']}; results in {args.json}")
    return 0
