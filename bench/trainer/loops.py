"""The two loops the benchmark holds side by side, each run in blocks of steps.

`SiloLoop` is the silo's own path: `LocalBackend.trainer` builds the trainer (its token loader,
AdamW, schedule, clip and accounting) and `silo_agent.steps.run_local_steps` drives it with the
heartbeat, the Prometheus metrics and the progress reporting the agent passes. `BareLoop` is
what a person would write in plain torch for the same work: the same initial model, the same
batches (read ahead of time into memory), AdamW with the same groups, the same schedule and
clip, and no reporting; it keeps each step's loss on the device and reads them after the block.
Both continue from one block to the next, so their losses can be compared step by step.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, NamedTuple, cast

import torch

from photon.data import TokenLoader, TokenShards
from photon.federation import FederationSpec
from photon.model import LlamaModel, build_model, preset
from photon.trainer import Trainer, TrainerConfig, lr_at
from photon.v1 import federation_pb2 as pb
from silo_agent.backend import LocalBackend
from silo_agent.client import AggregatorClient
from silo_agent.heartbeat import Heartbeat
from silo_agent.metrics import SiloMetrics
from silo_agent.steps import run_local_steps


class Timed(NamedTuple):
    """One block of steps."""

    seconds: float
    cpu_seconds: float
    mean_loss: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SiloLoop:
    """The silo agent's step loop on the agent's backend."""

    def __init__(self, spec: FederationSpec, tcfg: TrainerConfig, shards: TokenShards) -> None:
        backend = LocalBackend()
        model = initial_model(spec, shards)
        backend.start(spec, model, tcfg, shards)
        params = {k: v.clone() for k, v in model.state_dict().items()}
        task = pb.Task(kind=pb.Task.TRAIN, round=0, local_steps=1, global_step=0)
        self.trainer: Trainer = backend.trainer(task, params, restore=None)
        # the heartbeat's reporting side; its thread (one RPC every few seconds) is not started
        self.heartbeat = Heartbeat(cast(AggregatorClient, None))
        self.metrics = SiloMetrics()
        self.device = self.trainer.device

    def run(self, steps: int, global_step: int) -> Timed:
        """`steps` steps from `global_step`: seconds, CPU seconds and their mean loss."""
        _sync(self.device)
        started, cpu = time.perf_counter(), time.process_time()
        stats = run_local_steps(self.trainer, steps, global_step, self.heartbeat, self.metrics)
        _sync(self.device)
        return Timed(time.perf_counter() - started, time.process_time() - cpu, stats.mean_loss)


class BareLoop:
    """A plain torch loop doing the same work."""

    def __init__(self, spec: FederationSpec, tcfg: TrainerConfig, shards: TokenShards) -> None:
        self.tcfg = tcfg
        self.device = torch.device("cuda" if tcfg.device == "cuda" else "cpu")
        self.model = initial_model(spec, shards).to(self.device)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        rest = [p for p in self.model.parameters() if p.dim() < 2]
        groups: list[dict[str, Any]] = [
            {"params": decay, "weight_decay": tcfg.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ]
        self.opt = torch.optim.AdamW(
            groups,
            lr=tcfg.lr,
            betas=(tcfg.beta1, tcfg.beta2),
        )
        self.loader = TokenLoader(
            shards, batch_size=tcfg.batch_size, seq_len=tcfg.seq_len, seed=spec.seed
        )
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def prefetch(self, steps: int) -> None:
        """Read the next `steps` batches into memory, outside the timed blocks."""
        for _ in range(steps):
            x, y = self.loader.next_batch()
            self.batches.append((x.to(self.device), y.to(self.device)))

    def run(self, steps: int, global_step: int) -> Timed:
        """`steps` steps from `global_step`: seconds, CPU seconds and their mean loss."""
        self.prefetch(steps)
        batches, self.batches = self.batches, []
        autocast: contextlib.AbstractContextManager[Any] = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        _sync(self.device)
        started, cpu = time.perf_counter(), time.process_time()
        losses: list[torch.Tensor] = []
        for i, (x, y) in enumerate(batches):
            for group in self.opt.param_groups:
                group["lr"] = lr_at(self.tcfg, global_step + i)
            with autocast:
                loss = self.model.loss(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tcfg.grad_clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        values = [float(v) for v in torch.stack(losses).cpu()]
        _sync(self.device)
        mean = sum(values) / len(values)
        return Timed(time.perf_counter() - started, time.process_time() - cpu, mean)


def initial_model(spec: FederationSpec, shards: TokenShards) -> LlamaModel:
    """The federation's initial model for the data's vocabulary, as the agent builds it."""
    return build_model(preset(spec.preset, int(shards.meta["vocab_size"])), spec.seed)
