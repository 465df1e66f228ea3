"""The load benchmark: one real aggregator, many simulated silos, one hostile member.

An aggregator process (mTLS, started at a 1,024 file-descriptor limit, its defaults otherwise)
runs R rounds of 32 silos sampled from 200 simulated honest silos (worker processes, one
thread, certificate and channel per silo, no training). One more member, holding a legitimate
certificate, runs every attack of the hardening issue at the same time (`hostile.py`). The
parent samples the aggregator's RSS and open descriptors and, at the end, reads the journal.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from aggregator.store import Store
from bandwidth.codec import encode_object
from photon.cli.localfed.launcher import Launcher, aggregator_config
from photon.model import build_model, preset
from photon.pki import init_federation
from photon.tokenizer import ByteTokenizer

HOSTILE = "hostile"
FD_LIMIT = "--nofile=1024:1024"


@dataclass(frozen=True, slots=True)
class Plan:
    silos: int = 200
    per_round: int = 32
    rounds: int = 6
    workers: int = 8
    seconds: float = 900.0
    local_steps: int = 2
    batch_size: int = 4
    seq_len: int = 32

    @property
    def tokens(self) -> int:
        """What an honest silo trains in a task: the most the aggregator may credit it."""
        return self.local_steps * self.batch_size * self.seq_len


QUICK = Plan(silos=200, rounds=3, seconds=420.0)
FULL = Plan()


def honest_names(plan: Plan) -> list[str]:
    return [f"silo-{i:03d}" for i in range(plan.silos)]


def seed_selecting_hostile(plan: Plan, names: list[str]) -> int:
    """A federation seed under which the hostile member is selected in round 1.

    Rounds after the first open with every member online, so their selection is the seeded
    sample of all names (as in `aggregator.engine`): choosing the seed makes sure the attacks
    that need a selection actually run, instead of leaving it to a 16 % chance per round."""
    everyone = sorted([*names, HOSTILE])
    for seed in range(10_000):
        rng = random.Random(f"{seed}:1")
        if HOSTILE in rng.sample(everyone, plan.per_round):
            return seed
    raise RuntimeError("no seed selects the hostile member")


def write_objects(root: Path) -> tuple[Path, Path]:
    """An honest small delta and an overflow one (finite values near the fp32 maximum)."""
    model = build_model(preset("tiny", ByteTokenizer().vocab_size), seed=0)
    gen = torch.Generator().manual_seed(0)
    honest = {k: torch.randn(v.shape, generator=gen) * 1e-3 for k, v in model.state_dict().items()}
    huge = {k: torch.full_like(v, 3.0e38) for k, v in honest.items()}
    paths = root / "honest.obj", root / "overflow.obj"
    for path, tensors in zip(paths, (honest, huge), strict=True):
        path.write_bytes(encode_object(tensors, "fp32"))
    return paths


def make_launcher(root: Path, plan: Plan, names: list[str]) -> Launcher:
    init_federation(root / "certs", silos=[*names, HOSTILE])
    cfg = aggregator_config(root)
    cfg.rounds.min_silos = plan.per_round
    cfg.rounds.silos_per_round = plan.per_round
    # A selected member that never delivers must not stall the federation: the round closes at
    # its deadline with the quorum it has (with quorum 1.0 it would wait for the attacker).
    cfg.rounds.deadline_s, cfg.rounds.quorum = 150.0, 0.9
    spec = cfg.federation
    spec.rounds, spec.local_steps = plan.rounds, plan.local_steps
    spec.training.batch_size, spec.training.seq_len = plan.batch_size, plan.seq_len
    spec.seed = seed_selecting_hostile(plan, names)
    return Launcher(root=root, aggregator=cfg, silos={})


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def start_workers(
    launcher: Launcher, plan: Plan, names: list[str], honest_obj: Path
) -> list[subprocess.Popen[bytes]]:
    root, target = launcher.root, f"localhost:{launcher.port}"
    procs = []
    for w in range(plan.workers):
        group = names[w :: plan.workers]
        argv = python_module(
            "bench.load.simsilos",
            *("--certs", str(root / "certs"), "--target", target, "--object", str(honest_obj)),
            *("--names", ",".join(group), "--tokens", str(plan.tokens)),
            *("--seconds", str(plan.seconds), "--out", str(root / f"worker-{w}.json")),
        )
        with (root / f"worker-{w}.log").open("wb") as log:
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
    return procs


def start_hostile(launcher: Launcher, plan: Plan, objects: tuple[Path, Path]) -> Any:
    root = launcher.root
    argv = python_module(
        "bench.load.hostile",
        *("--certs", str(root / "certs"), "--name", HOSTILE),
        *("--target", f"localhost:{launcher.port}", "--object", str(objects[0])),
        *("--overflow-object", str(objects[1]), "--seconds", str(plan.seconds)),
        *("--out", str(root / "hostile.json")),
    )
    with (root / "hostile.log").open("wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


@dataclass(slots=True)
class Peaks:
    rss: int = 0
    fds: int = 0

    def sample(self, pid: int) -> None:
        try:
            proc = psutil.Process(pid)
            self.rss = max(self.rss, proc.memory_info().rss)
            self.fds = max(self.fds, proc.num_fds())
        except psutil.Error:
            pass


def wait_for_rounds(launcher: Launcher, plan: Plan, agg_pid: int, peaks: Peaks) -> float:
    started = time.monotonic()
    deadline = started + plan.seconds
    while time.monotonic() < deadline:
        peaks.sample(agg_pid)
        if len(launcher.summary().get("rounds", [])) >= plan.rounds:
            break
        if launcher.procs["aggregator"].poll() is not None:
            break
        time.sleep(0.5)
    return time.monotonic() - started


def journal_facts(state_dir: Path) -> tuple[int, dict[int, set[str]]]:
    store = Store(state_dir / "journal.sqlite")
    try:
        closed = [r for r in store.rounds() if r.outcome == "aggregated"]
        accepted = {r.round: {u.silo_id for u in store.updates(r.round)} for r in closed}
        return len(closed), accepted
    finally:
        store.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def results(
    root: Path, plan: Plan, peaks: Peaks, seconds: float, agg_code: int | None
) -> dict[str, Any]:
    records = [r for w in range(plan.workers) for r in _read(root / f"worker-{w}.json", [])]
    completed, accepted = journal_facts(root / "aggregator-state")
    lost = [
        (r["name"], rnd)
        for r in records
        for rnd in r["trained"]
        if rnd < completed and r["name"] not in accepted.get(rnd, set())
    ]
    latencies = [ms for r in records for ms in r["latencies_ms"]]
    refusals: dict[str, int] = {}
    for r in records:
        for key, n in r["refusals"].items():
            refusals[key] = refusals.get(key, 0) + n
    hostile = _read(root / "hostile.json", {})
    poisoned = {rnd: HOSTILE in silos for rnd, silos in accepted.items()}
    return {
        "silos": len(records),
        "rpc_p99_ms_honest": round(percentile(latencies, 0.99), 1),
        "rpc_p50_ms_honest": round(percentile(latencies, 0.50), 1),
        "honest_unary_rpcs": len(latencies),
        "honest_refusals": refusals,
        "rounds_planned": plan.rounds,
        "rounds_completed": completed,
        "updates_lost": len(lost),
        "lost": [f"{name}@r{rnd}" for name, rnd in lost][:20],
        "aggregator_peak_rss_mib": round(peaks.rss / 2**20, 1),
        "open_fds_peak": peaks.fds,
        "aggregator_exit_code": agg_code,
        "hostile_update_accepted": any(poisoned.values()),
        "hostile": hostile,
        "seconds": round(seconds, 1),
    }


def _read(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def run(root: Path, plan: Plan) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    names = honest_names(plan)
    launcher = make_launcher(root, plan, names)
    objects = write_objects(root)
    agg = launcher.start_aggregator(exit_when_done=False, prefix=["prlimit", FD_LIMIT])
    peaks = Peaks()
    workers = start_workers(launcher, plan, names, objects[0])
    hostile = start_hostile(launcher, plan, objects)
    try:
        seconds = wait_for_rounds(launcher, plan, agg.pid, peaks)
    finally:
        for proc in [*workers, hostile]:
            proc.terminate()
        for proc in [*workers, hostile]:
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
        agg_code = agg.poll()
        launcher.stop_all()
    return results(root, plan, peaks, seconds, agg_code)
