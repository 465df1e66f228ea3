"""Peak RSS of a real aggregator (`python -m photon aggregator serve`) while 8 silos upload.

The federation has one round of a preset whose fp32 size is the denominator. Eight silo
clients (threads here, each with its own mTLS channel and certificate) Join, GetTask, sign
their synthetic fp32 delta (random, small magnitude, the model's exact names and shapes) with
their certificate's key, and upload it concurrently with `silo_agent.transfers.upload`. The
round then aggregates. A sampler reads the aggregator's RSS every 50 ms and tags each sample
with the phase: `idle` (started, before uploads), `upload`, `aggregate` (last upload accepted
until the log says `round_closed`). The kernel's VmHWM is read before the process is stopped.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from aggregator.config import RoundsConfig
from bandwidth.codec import write_object
from bench.transfer.env import MB, REPO, SILOS, Plan, silo_client, wait_for
from photon.cli.localfed.launcher import Launcher, aggregator_config
from photon.federation import FederationSpec, TrainingSpec
from photon.model import LlamaModel, preset
from photon.pki import silo_paths
from photon.signing import sign_digest
from photon.tokenizer import ByteTokenizer
from photon.update import UpdateRecord
from photon.v1 import federation_pb2 as pb
from silo_agent.transfers import PendingUpdate, UploadOutcome, upload


def _aggregator(root: Path, certs: Path, plan: Plan) -> Launcher:
    """One round of `plan.rss_preset` for the 8 silos, which never time out."""
    cfg = aggregator_config(root.resolve())
    cfg.server.certs_dir = certs.resolve()
    cfg.server.chunk_bytes = plan.chunk_bytes
    cfg.rounds = RoundsConfig(
        min_silos=len(SILOS), deadline_s=3600.0, heartbeat_timeout_s=900.0, long_poll_s=2.0
    )
    training = TrainingSpec(batch_size=1, seq_len=128, warmup_steps=0)
    cfg.federation = FederationSpec(
        preset=plan.rss_preset, rounds=1, local_steps=1, eval_batches=1, training=training
    )
    return Launcher(root=root.resolve(), aggregator=cfg, silos={}, env={"OMP_NUM_THREADS": "1"})


def model_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of a preset (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = LlamaModel(preset(name, ByteTokenizer.vocab_size))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def write_deltas(
    root: Path, shapes: dict[str, tuple[int, ...]], distinct: bool
) -> dict[str, tuple[Path, str]]:
    """A synthetic fp32 update object for each silo (or one they share): (path, digest)."""
    out: dict[str, tuple[Path, str]] = {}
    for i, silo in enumerate(SILOS):
        if not distinct and out:
            out[silo] = out[SILOS[0]]
            continue
        g = torch.Generator().manual_seed(100 + i)
        tensors = {k: torch.randn(s, generator=g) * 1e-3 for k, s in shapes.items()}
        path = root / f"delta-{silo}.obj"
        out[silo] = (path, write_object(path, tensors, "fp32").digest)
        del tensors
    return out


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile and VmHWM of `pid` from /proc, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


class Sampler:
    """Memory of one process every `interval` seconds, tagged with the current phase.

    Samples are (monotonic time, phase, RSS, anonymous RSS); file-backed RSS (mapped
    checkpoint files, reclaimable) is RSS − anonymous.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.phase = "idle"
        self.samples: list[tuple[float, str, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                m = proc_memory(self.pid)
            except OSError:
                return
            self.samples.append((time.monotonic(), self.phase, m["VmRSS"], m["RssAnon"]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def peak(self, phase: str, anon: bool = False) -> int:
        return max(
            (anon_rss if anon else rss for _, p, rss, anon_rss in self.samples if p == phase),
            default=0,
        )


def vm_hwm(pid: int) -> int:
    """The kernel's peak RSS of `pid` (VmHWM), in bytes."""
    return proc_memory(pid).get("VmHWM", 0)


def _logged(log: Path, event: str) -> bool:
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and json.loads(line).get("event") == event:
            return True
    return False


def _prepare_silo(certs: Path, port: int, plan: Plan, silo: str, delta: tuple[Path, str]) -> Any:
    """Join, wait for the round's TRAIN task, sign the delta: (client, pending update)."""
    client = silo_client(certs, silo, f"localhost:{port}", plan.chunk_bytes)
    client.join(ByteTokenizer().digest(), 1_000_000)
    deadline = time.monotonic() + 300
    task = client.get_task(-1, long_poll_s=2.0)
    while task.kind != pb.Task.TRAIN:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{silo} got no TRAIN task: {task.message}")
        task = client.get_task(-1, long_poll_s=2.0)
    path, digest = delta
    signature = sign_digest(silo_paths(certs, silo)[1], digest, task.round)
    pending = PendingUpdate(
        update=UpdateRecord(
            round=task.round,
            base_version=task.base_version,
            transfer_id=f"{silo}-r{task.round}",
            digest=digest,
            size=path.stat().st_size,
            num_tokens=1_000_000,
            train_loss=1.0,
            base_eval_loss=math.nan,
            train_seconds=1.0,
            signature=signature,
        ),
        path=str(path),
    )
    return client, pending


def _upload_all(prepared: list[Any], plan: Plan) -> float:
    def one(item: Any) -> UploadOutcome:
        client, pending = item
        return upload(client, pending, chunk_bytes=plan.chunk_bytes)

    started = time.perf_counter()
    with ThreadPoolExecutor(len(prepared)) as pool:
        outcomes = list(pool.map(one, prepared))
    if any(o is not UploadOutcome.ACCEPTED for o in outcomes):
        raise RuntimeError(f"uploads not all accepted: {[o.value for o in outcomes]}")
    return time.perf_counter() - started


def runtime_rss() -> int:
    """RSS of a fresh interpreter that imported the aggregator (torch, grpc, ...)."""
    code = "import aggregator.server, psutil; print(psutil.Process().memory_info().rss)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(out.stdout.strip())


def _run_round(
    fed: Launcher, certs: Path, plan: Plan, deltas: dict[str, tuple[Path, str]]
) -> dict[str, Any]:
    proc = fed.start_aggregator(exit_when_done=False, timeout_s=600)
    port = fed.port
    sampler = Sampler(proc.pid)
    prepared: list[Any] = []
    try:
        time.sleep(1.0)
        with ThreadPoolExecutor(len(SILOS)) as pool:
            prepared = list(
                pool.map(lambda s: _prepare_silo(certs, port, plan, s, deltas[s]), SILOS)
            )
        sampler.phase = "upload"
        upload_s = _upload_all(prepared, plan)
        sampler.phase = "aggregate"
        started = time.perf_counter()
        log = fed.log_path("aggregator")
        wait_for(lambda: _logged(log, "round_closed"), 900, "the round to aggregate")
        aggregate_s = time.perf_counter() - started
        time.sleep(1.0)
        hwm = vm_hwm(proc.pid)
    finally:
        sampler.stop()
        for client, _ in prepared:
            client.close()
    return {"sampler": sampler, "hwm": hwm, "upload_s": upload_s, "aggregate_s": aggregate_s}


def measure(work: Path, certs: Path, plan: Plan) -> dict[str, Any]:
    root = work / "rss"
    root.mkdir(parents=True, exist_ok=True)
    shapes = model_shapes(plan.rss_preset)
    model_bytes = 4 * sum(math.prod(s) for s in shapes.values())
    deltas = write_deltas(root, shapes, plan.rss_distinct_deltas)
    fed = _aggregator(root, certs, plan)
    try:
        r = _run_round(fed, certs, plan, deltas)
    finally:
        fed.stop_all(grace_s=60)
    s: Sampler = r["sampler"]
    peak = max(r["hwm"], *(sample[2] for sample in s.samples))

    def mib(n: int) -> float:
        return round(n / 2**20, 1)

    return {
        "aggregator_peak_rss_over_model": round(peak / model_bytes, 3),
        "rss_detail": {
            "preset": plan.rss_preset,
            "silos": len(SILOS),
            "distinct_deltas": plan.rss_distinct_deltas,
            "model_fp32_mib": mib(model_bytes),
            "update_object_mib": mib(next(iter(deltas.values()))[0].stat().st_size),
            "peak_rss_mib": mib(peak),
            "idle_rss_mib": mib(s.peak("idle")),
            "upload_peak_rss_mib": mib(s.peak("upload")),
            "aggregate_peak_rss_mib": mib(s.peak("aggregate")),
            "upload_over_model": round(s.peak("upload") / model_bytes, 3),
            "aggregate_over_model": round(s.peak("aggregate") / model_bytes, 3),
            "anon_peak_mib": {
                p: mib(s.peak(p, anon=True)) for p in ("idle", "upload", "aggregate")
            },
            "runtime_rss_mib": mib(runtime_rss()),
            "upload_s": round(r["upload_s"], 1),
            "aggregate_s": round(r["aggregate_s"], 1),
            "aggregate_mb_s_in": round(len(SILOS) * model_bytes / MB / r["aggregate_s"], 1),
        },
    }
