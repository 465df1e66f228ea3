"""Which training recipe closes the federated/centralized gap? An in-process sweep.

    python bench/convergence_sweep.py --json sweep.json [--rounds 8] [--variants a,b,...]

The convergence benchmark (bench/convergence.py) runs the real federation: processes, mTLS,
codecs, checkpoints. That costs ~17 minutes per federated run on 2 cores, too slow to compare
recipes. This sweep runs the same arithmetic in one process per variant and nothing else: the
same corpus (bench/convergence/data.py), model, inner loop (photon.trainer.Trainer),
equal-token mean of the silos' deltas and outer optimizers (aggregator.strategies), and the
same data-parallel-equivalent centralized baseline (batch 4 x b, rounds x H steps). Nothing
goes over a network, so its numbers say which recipe to run, not what the system achieves;
the benchmark says that.

Each variant is one line of VARIANTS; `iid` gives every silo the union of all four corpora
(how much of the gap is the heterogeneity of the text); `batch_size` changes the batch per silo
(rounds scale to keep the tokens equal) and is compared with the centralized run of the same
per-silo batch (4 x b). Prints a table of final eval loss and
fed/central perplexity ratio; writes every eval curve to the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from aggregator.strategies import OuterConfig, OuterOptimizer, StrategyName, make_outer
from bench.convergence.data import build_corpus
from bench.convergence.runs import FULL
from photon.centralized import HeldOut, UnionLoader
from photon.data import TokenLoader, TokenShards
from photon.fsutil import atomic_write_bytes
from photon.model import LlamaModel, build_model, preset
from photon.trainer import Trainer, TrainerConfig

Loader = TokenLoader | UnionLoader


@dataclass(frozen=True, slots=True)
class Variant:
    """One recipe. Defaults are the benchmark's full plan with FedAvg (Photon's recipe)."""

    central: bool = False
    outer: StrategyName = "fedavg"
    outer_lr: float | None = None
    momentum: float | None = None
    lr: float = FULL.lr
    reset_optimizer: bool = False
    iid: bool = False
    #: Sequences per silo step; the rounds scale so that tokens stay equal to the plan's.
    batch_size: int = FULL.batch_size


VARIANTS: dict[str, Variant] = {
    "central": Variant(central=True),
    "fedavg": Variant(),
    "fedavg-outer-lr-2": Variant(outer_lr=2.0),
    "nesterov-0.7-0.9": Variant(outer="nesterov", outer_lr=0.7, momentum=0.9),
    "fedadam-0.02": Variant(outer="fedadam", outer_lr=0.02),
    "fedavg-reset-inner-state": Variant(reset_optimizer=True),
    "fedavg-inner-lr-1.5e-3": Variant(lr=1.5e-3),
    "nesterov-inner-lr-1.5e-3": Variant(outer="nesterov", outer_lr=0.7, momentum=0.9, lr=1.5e-3),
    "fedavg-inner-lr-7.5e-4": Variant(lr=7.5e-4),
    "fedavg-iid": Variant(iid=True),
    "central-batch-2": Variant(central=True, batch_size=2),
    "fedavg-batch-2": Variant(batch_size=2),
}


def central_twin(variant: Variant) -> str:
    """The centralized variant a variant is compared with: the same batch per silo."""
    return next(n for n, v in VARIANTS.items() if v.central and v.batch_size == variant.batch_size)


def run_variant(name: str, variant: Variant, data: dict[str, Any], rounds: int) -> dict[str, Any]:
    """Train one variant in this process; its eval loss after each round(-equivalent)."""
    torch.set_num_threads(1)
    plan = replace(FULL, batch_size=variant.batch_size)
    rounds = rounds * FULL.batch_size // variant.batch_size
    silos = [TokenShards(Path(d)) for d in data["silo_dirs"]]
    held_out = HeldOut(
        [TokenShards(Path(data["eval_dir"]))],
        seq_len=FULL.seq_len,
        batch_size=FULL.batch_size,
        batches=FULL.eval_batches,
    )
    shape = preset("tiny", vocab_size=int(silos[0].meta["vocab_size"]))

    def trainer(model: LlamaModel, loader: Loader, batch: int) -> Trainer:
        cfg = TrainerConfig.from_spec(
            replace(plan, lr=variant.lr).training(batch),
            total_steps=rounds * plan.local_steps,
            device="cpu",
            reset_optimizer=variant.reset_optimizer,
        )
        return Trainer(model, cfg, loader)  # type: ignore[arg-type]

    started, model = time.monotonic(), build_model(shape, seed=0)
    curve = [held_out.loss(model)]
    if variant.central:
        batch = len(silos) * plan.batch_size
        loader = UnionLoader(silos, batch_size=batch, seq_len=plan.seq_len, seed=0)
        central = trainer(model, loader, batch)
        for r in range(rounds):
            central.train(plan.local_steps, r * plan.local_steps)
            curve.append(held_out.loss(model))
    else:
        loaders: list[Loader] = [
            UnionLoader(silos, batch_size=plan.batch_size, seq_len=plan.seq_len, seed=100 + i)
            if variant.iid
            else TokenLoader(s, batch_size=plan.batch_size, seq_len=plan.seq_len, seed=i)
            for i, s in enumerate(silos)
        ]
        trainers = [trainer(build_model(shape, seed=0), ld, plan.batch_size) for ld in loaders]
        outer = make_outer(
            OuterConfig(name=variant.outer, lr=variant.outer_lr, momentum=variant.momentum)
        )
        for r in range(rounds):
            federated_round(model, trainers, outer, r, plan.local_steps, variant.reset_optimizer)
            curve.append(held_out.loss(model))
    print(f"{name}: eval loss {curve[-1]:.4f} ({time.monotonic() - started:.0f} s)", flush=True)
    return {
        "variant": asdict(variant),
        "eval_curve": [round(x, 5) for x in curve],
        "final_eval_loss": round(curve[-1], 5),
        "seconds": round(time.monotonic() - started, 1),
    }


def federated_round(
    model: LlamaModel,
    trainers: list[Trainer],
    outer: OuterOptimizer,
    round_: int,
    local_steps: int,
    reset_optimizer: bool,
) -> None:
    """Every silo trains H steps from the global model; the outer step applies their mean."""
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    deltas = []
    for t in trainers:
        t.model.load_state_dict(start)
        if reset_optimizer:
            t.begin_round()
        t.train(local_steps, round_ * local_steps)
        deltas.append({k: v.detach() - start[k] for k, v in t.model.state_dict().items()})
    with torch.no_grad():
        for key, param in model.named_parameters():
            mean = torch.stack([d[key] for d in deltas]).mean(dim=0)
            outer.step(key, param.data, mean, round_ + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="Where to write the results.")
    parser.add_argument("--rounds", type=int, default=8, help="Rounds of H=64 (default 8).")
    parser.add_argument(
        "--variants", default="all", help=f"Comma-separated: {', '.join(VARIANTS)}."
    )
    parser.add_argument("--jobs", type=int, default=2, help="Variants trained at once.")
    parser.add_argument("--workdir", type=Path, default=None, help="Default: a temporary folder.")
    args = parser.parse_args(argv)
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or args.rounds < 1 or args.jobs < 1:
        parser.error(
            f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}"
            if unknown
            else "--rounds and --jobs must be >= 1"
        )
    for name in list(names):
        twin = central_twin(VARIANTS[name])
        if twin not in names:
            names.insert(0, twin)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="photon-sweep-"))
    corpus = build_corpus(
        work,
        max_bytes=FULL.max_bytes,
        seq_len=FULL.seq_len,
        eval_windows=FULL.eval_windows_per_silo,
    )
    data = {"silo_dirs": [str(d) for d in corpus.silo_dirs], "eval_dir": str(corpus.eval_dir)}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {n: pool.submit(run_variant, n, VARIANTS[n], data, args.rounds) for n in names}
        results = {n: f.result() for n, f in futures.items()}
    for r in results.values():
        twin = central_twin(Variant(**r["variant"]))
        central = results[twin]["final_eval_loss"]
        r["fed_over_central_ppl"] = round(math.exp(r["final_eval_loss"] - central), 4)
        r["compared_with"] = twin
    print(f"\n{'variant':<28} {'eval loss':>9} {'ppl / central':>13}")
    for name, r in results.items():
        print(f"{name:<28} {r['final_eval_loss']:>9.4f} {r['fed_over_central_ppl']:>13.3f}")
    record = {
        "rounds": args.rounds,
        "plan": asdict(replace(FULL, rounds=args.rounds)),
        "corpus": corpus.record(),
        "variants": results,
        "command": " ".join(["python", *sys.argv]),
    }
    atomic_write_bytes(args.json, json.dumps(record, indent=2).encode())
    return 0
