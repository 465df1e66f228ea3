"""Chaos: a federation under a seeded random schedule of faults, then the same without faults.

    python bench/chaos.py --json OUT.json [--quick] [--seed N] [--workdir DIR]

Three silos (four in the full run), each behind its own link emulator, train the `tiny` preset
(fp32 deltas, quorum 1.0, every silo every round) while the schedule kills silos (SIGKILL, then a
restart on the same state), kills the aggregator (SIGKILL + restart), cuts connections
(cut_after), partitions links (black hole on, then off) and stalls them (2 mbit for a while).
The same federation then runs without faults.

Reported: faults_injected, rounds_planned, rounds_completed, updates_lost and
updates_double_counted (the audit log held against each closed round's selected silos),
digest_matches_fault_free (bit-identical final parameters), wall_time_ratio_vs_fault_free,
and per-run details (every fault with its time, exit codes, digests).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.chaos.fed import ChaosRun, FedShape, RunResult
from bench.chaos.schedule import ScheduleConfig, make_schedule
from photon.fsutil import atomic_write_bytes
from photon.logs import configure

#: quick: minutes on 2 cores; full: at least 20 faults.
QUICK = (FedShape(silos=3, rounds=12, local_steps=5, timeout_s=360.0), 16)
FULL = (FedShape(silos=4, rounds=30, local_steps=5, timeout_s=1800.0), 48)


def echo(line: str) -> None:
    print(line, flush=True)


def metrics(chaos: RunResult, clean: RunResult, planned: int) -> dict[str, Any]:
    digest = chaos.summary.get("param_digest")
    return {
        "faults_injected": len(chaos.injected),
        "rounds_planned": chaos.summary.get("rounds_planned"),
        "rounds_completed": len(chaos.summary.get("rounds", [])),
        "updates_lost": chaos.accounting.updates_lost,
        "updates_double_counted": chaos.accounting.updates_double_counted,
        "digest_matches_fault_free": digest is not None
        and digest == clean.summary.get("param_digest"),
        "wall_time_ratio_vs_fault_free": round(chaos.wall_s / clean.wall_s, 2),
        "all_processes_exit_0": set(chaos.exit_codes.values()) == {0}
        and set(clean.exit_codes.values()) == {0},
        "faults_planned": planned,
        "faults_by_kind": dict(Counter(f["kind"] for f in chaos.injected)),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    shape, count = QUICK if args.quick else FULL
    work = args.workdir or Path(tempfile.mkdtemp(prefix="photon-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    schedule = make_schedule(
        ScheduleConfig(count=count, seed=args.seed), [f"silo-{i}" for i in range(shape.silos)]
    )
    started = time.monotonic()
    echo(f"chaos ({'quick' if args.quick else 'full'}): {count} faults planned, in {work}")
    chaos = ChaosRun(work / "chaos", shape, echo).run("chaos", schedule)
    echo(f"  with faults: {chaos.wall_s:.1f}s, exit codes {chaos.exit_codes}")
    clean = ChaosRun(work / "fault-free", shape, echo).run("fault-free", [])
    echo(f"  fault-free: {clean.wall_s:.1f}s, exit codes {clean.exit_codes}")
    result = metrics(chaos, clean, count)
    result["detail"] = {
        "mode": "quick" if args.quick else "full",
        "seed": args.seed,
        "federation": dataclasses.asdict(shape),
        "runs": {"chaos": chaos.record(), "fault_free": clean.record()},
        "command": " ".join(["python", *sys.argv]),
        "wall_seconds_total": round(time.monotonic() - started, 1),
        "cpu_count": os.cpu_count(),
        "workdir": str(work),
    }
    return result


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="Where to write the results.")
    parser.add_argument("--quick", action="store_true", help="Under 10 minutes on 2 cores.")
    parser.add_argument("--seed", type=int, default=0, help="Seeds the fault schedule.")
    parser.add_argument("--workdir", type=Path, default=None, help="Default: a temporary folder.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    configure(level="warning")  # the link emulators' own lines; the daemons log to files
    result = run(args)
    atomic_write_bytes(args.json, json.dumps(result, indent=2).encode())
    echo(json.dumps({k: v for k, v in result.items() if k != "detail"}, indent=2))
    return 0
