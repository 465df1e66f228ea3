"""One silo, several processes: torchrun and DistributedDataParallel behind one aggregator session.

    torchrun --standalone --nproc_per_node N --no-python photon silo run --config silo.toml

Rank 0 is the silo agent proper, given a `RankGroupBackend` as its training backend: the only
process that talks to the aggregator (join, tasks, downloads, uploads, heartbeats, final
evaluation) and the only one that commits `state.json`. The other ranks follow it (`Follower`).
Each round rank 0 shares the task (an object it built itself: nothing received from the network
is ever pickled, the spec travels as its JSON text) and broadcasts the global parameters as
tensors; every rank trains the same model under DistributedDataParallel on its own windows of
the data (each epoch's permutation dealt out by rank); rank 0 encodes and uploads the delta and
reports the tokens of all ranks. With `[silo] parallelism = "fsdp"` the ranks train one
FSDP2-sharded model instead of DDP copies (`silo_agent/fsdp.py`, a `TrainingFactory` chosen in
`silo_agent/launch.py`); everything else here is the same.

Durable state: every rank saves its trainer state (AdamW moments, data cursor, RNG) into
`trainer/r<R>/rank<k>/`, then a barrier, then rank 0 commits `state.json`, so a committed round
holds every rank's state. The state folder must be one that every rank can reach (one machine,
or a shared filesystem). A rank that dies makes torchrun stop the whole job (its default); running
the same torchrun command again, with the same number of processes, resumes every rank from the
last committed round.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import structlog
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from photon.data import TokenLoader, TokenShards
from photon.errors import ConfigError, DataError
from photon.faults import crash_point
from photon.federation import FederationSpec
from photon.logs import get_logger
from photon.model import LlamaModel, ModelConfig, build_model
from photon.trainer import Trainer, TrainerConfig, TrainStats, resolve_device
from photon.v1 import federation_pb2 as pb
from silo_agent.agent import SiloAgent
from silo_agent.backend import trainer_config
from silo_agent.config import SiloConfig

log = get_logger("silo_agent.distributed")

#: How long a rank may wait in a collective. Followers wait in a broadcast while rank 0
#: downloads, evaluates, uploads or waits for the other silos, which can take hours on a WAN;
#: a rank that dies is noticed by torchrun (which stops the job), not by this timeout.
COLLECTIVE_TIMEOUT = timedelta(days=7)
#: The folder of a committed trainer state that holds FSDP's sharded optimizer state (DCP).
SHARDED_OPTIMIZER = "optimizer"


@dataclasses.dataclass(frozen=True, slots=True)
class RankGroup:
    """This process's place in the silo's job and the collectives the ranks use."""

    rank: int
    world_size: int
    #: The device this rank trains on (cuda:LOCAL_RANK with NCCL, cpu with gloo).
    device: torch.device
    #: A gloo group for small objects and barriers, so idle followers wait on the CPU.
    control: Any

    def share(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank (an object broadcast between our own processes)."""
        box = [value if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def barrier(self) -> None:
        dist.barrier(group=self.control)

    def broadcast_parameters(self, model: nn.Module) -> None:
        """Overwrite every rank's parameters with rank 0's, in place, in name order."""
        with torch.no_grad():
            for _, param in sorted(model.named_parameters()):
                dist.broadcast(param.data, src=0)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of `values` over all ranks."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return [float(v) for v in t.tolist()]


def init_group(device_name: str, environ: Mapping[str, str]) -> RankGroup:
    """Join the job torchrun started: NCCL on CUDA (one GPU per local rank), gloo on CPU."""
    if not dist.is_available():
        raise ConfigError(
            "this torch build has no torch.distributed; run the silo without torchrun"
        )
    rank, size, local = (int(environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices: start "
                "torchrun with --nproc_per_node at most the number of GPUs"
            )
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    control = (
        dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT)
        if backend == "nccl"
        else dist.group.WORLD
    )
    return RankGroup(rank=rank, world_size=size, device=device, control=control)


class RankLoader(TokenLoader):
    """TokenLoader whose epoch permutation is dealt out by rank: rank k of N reads windows
    k, k+N, k+2N, ... of it, so the ranks read disjoint windows in every epoch. With N = 1
    it is exactly TokenLoader."""

    def __init__(
        self,
        shards: TokenShards,
        *,
        rank: int,
        world_size: int,
        split: str = "train",
        batch_size: int,
        seq_len: int,
        seed: int,
    ) -> None:
        self.rank, self.world_size = rank, world_size
        super().__init__(shards, split=split, batch_size=batch_size, seq_len=seq_len, seed=seed)
        self.windows = len(self._order)
        if self.windows < 1:
            raise DataError(
                f"the {split} split of {shards.dir} has fewer sequences than the {world_size} "
                "ranks; add text or start fewer processes"
            )

    def _permutation(self) -> np.ndarray:
        total = (len(self.data) - 1) // self.seq_len
        order = np.random.default_rng([self.seed, self.epoch]).permutation(total)
        return order[self.rank :: self.world_size]

    def state_dict(self) -> dict[str, int]:
        return {**super().state_dict(), "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        saved = int(state.get("rank", 0)), int(state.get("world_size", 1))
        if saved != (self.rank, self.world_size):
            raise DataError(
                f"the trainer state was saved by rank {saved[0]} of {saved[1]}, this is rank "
                f"{self.rank} of {self.world_size}: run torchrun with --nproc_per_node "
                f"{saved[1]} (the data cursor of every rank is part of the silo's state)"
            )
        super().load_state_dict(state)


def group_stats(group: RankGroup, local: TrainStats) -> TrainStats:
    """This rank's stats with the tokens of every rank and the mean of their losses."""
    tokens, losses = group.sum([local.tokens, local.mean_loss])
    return dataclasses.replace(
        local,
        tokens=int(tokens),
        mean_loss=losses / group.world_size,
        tokens_per_s=tokens / local.seconds if local.seconds else 0.0,
    )


def rank_dir(group: RankGroup, directory: Path | None) -> Path:
    """This rank's folder `<rank 0's directory>/rank<k>`, created (rank 0 names the folder:
    the followers pass None)."""
    shared = Path(group.share(None if directory is None else str(directory)))
    mine = shared / f"rank{group.rank}"
    mine.mkdir(exist_ok=True)
    return mine


class _Loss(nn.Module):
    """The model's loss as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, model: LlamaModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.model.loss(input_ids, targets)


class DistributedTrainer(Trainer):
    """A Trainer whose forward runs through DistributedDataParallel: gradients are averaged
    over the ranks. Stats count every rank's tokens; state is saved per rank."""

    def __init__(
        self,
        model: LlamaModel,
        cfg: TrainerConfig,
        loader: RankLoader,
        group: RankGroup,
        ddp: DistributedDataParallel,
    ) -> None:
        super().__init__(model, cfg, loader)
        self.group = group
        group.broadcast_parameters(model)
        self.forward = torch.compile(ddp) if cfg.compile else ddp

    def train(
        self, steps: int, global_step: int, on_step: Callable[[int, float], None] | None = None
    ) -> TrainStats:
        return group_stats(self.group, super().train(steps, global_step, on_step))

    def save_state(self, directory: Path | None = None) -> None:
        """Every rank saves into `<rank 0's directory>/rank<k>`; returns when all have."""
        super().save_state(rank_dir(self.group, directory))
        self.group.barrier()

    def load_state(self, directory: Path) -> None:
        mine = directory / f"rank{self.group.rank}"
        if (directory / SHARDED_OPTIMIZER).exists():
            raise DataError(
                f'the trainer state in {directory} was saved with parallelism = "fsdp"; set '
                "it back in [silo], or start the silo from a fresh state_dir"
            )
        if not (mine / "trainer.json").exists():
            raise DataError(
                f"no trainer state for rank {self.group.rank} in {directory}: the silo ran with "
                "another number of processes; run torchrun with the same --nproc_per_node as "
                "before"
            )
        super().load_state(mine)


class RankTraining:
    """What every rank keeps across rounds: its group, model, data and the DDP wrapper."""

    def __init__(
        self,
        group: RankGroup,
        model: LlamaModel,
        tcfg: TrainerConfig,
        shards: TokenShards,
        seed: int,
    ) -> None:
        self.group, self.model, self.tcfg, self.shards, self.seed = group, model, tcfg, shards, seed
        model.to(group.device)
        ids = [group.device.index] if group.device.type == "cuda" else None
        # built once: a second wrapper over the same parameters would add a second reducer
        self.ddp = DistributedDataParallel(_Loss(model), device_ids=ids)

    def trainer(
        self, restore: Path | None, params: Mapping[str, torch.Tensor] | None = None
    ) -> DistributedTrainer:
        """A round's trainer (parameters synchronised from rank 0, which sets them to `params`),
        restored from `restore`."""
        if params is not None:
            self.model.load_state_dict(dict(params))
        loader = RankLoader(
            self.shards,
            rank=self.group.rank,
            world_size=self.group.world_size,
            batch_size=self.tcfg.batch_size,
            seq_len=self.tcfg.seq_len,
            seed=self.seed,
        )
        trainer = DistributedTrainer(self.model, self.tcfg, loader, self.group, self.ddp)
        if restore is not None:
            trainer.load_state(restore)
        if self.tcfg.reset_optimizer:
            trainer.begin_round()
        return trainer


class RankTrainer(Protocol):
    """A round's trainer on one rank (the agent's `RoundTrainer`, saving where rank 0 says)."""

    def train(
        self, steps: int, global_step: int, on_step: Callable[[int, float], None] | None = None
    ) -> TrainStats: ...

    def save_state(self, directory: Path | None = None) -> None: ...


class RoundTraining(Protocol):
    """What one rank keeps across rounds; gives each round's trainer."""

    def trainer(
        self, restore: Path | None, params: Mapping[str, torch.Tensor] | None = None
    ) -> RankTrainer:
        """The round's trainer: parameters `params` (rank 0's; None on the followers), the
        trainer state restored from `restore`."""
        ...


#: Builds a rank's RoundTraining: (group, spec, settings, data, model), where `model` is the
#: agent's model on rank 0 and None on the followers. `parallelism` picks it (silo_agent/launch.py).
TrainingFactory = Callable[
    [RankGroup, FederationSpec, TrainerConfig, TokenShards, LlamaModel | None], RoundTraining
]


def ddp_training(
    group: RankGroup,
    spec: FederationSpec,
    tcfg: TrainerConfig,
    shards: TokenShards,
    model: LlamaModel | None,
) -> RankTraining:
    """`parallelism = "ddp"`: every rank trains a whole model (the agent's, on rank 0)."""
    if model is None:
        model = build_model(ModelConfig.from_dict(spec.model), seed=spec.seed)
    return RankTraining(group, model, tcfg, shards, spec.seed)


@dataclasses.dataclass(frozen=True, slots=True)
class Command:
    """What rank 0 tells the followers: train one round, or exit with `code`."""

    kind: Literal["train", "exit"]
    steps: int = 0
    global_step: int = 0
    #: The committed trainer folder to restore from (None before the first round).
    restore: str | None = None
    code: int = 0


class RankGroupBackend:
    """Rank 0's training backend: it leads the other ranks through every training round."""

    def __init__(self, group: RankGroup, training: TrainingFactory = ddp_training) -> None:
        self.group, self.make_training = group, training

    def start(
        self, spec: FederationSpec, model: LlamaModel, tcfg: TrainerConfig, shards: TokenShards
    ) -> None:
        """Tell the followers the federation, and set up this rank's part of the training."""
        self.group.share(spec.to_json())
        self.training = self.make_training(self.group, spec, tcfg, shards, model)

    def trainer(
        self, task: pb.Task, params: Mapping[str, torch.Tensor], restore: Path | None
    ) -> RankTrainer:
        """Send every follower into the round, then build this rank's trainer (its parameters,
        set to `params` here, reach the followers' models by broadcast)."""
        self.group.share(
            Command(
                kind="train",
                steps=task.local_steps,
                global_step=task.global_step,
                restore=None if restore is None else str(restore),
            )
        )
        return self.training.trainer(restore, params)

    def finish(self, code: int) -> None:
        """Tell the followers to exit with `code`; returns when every rank has got it."""
        self.group.share(Command(kind="exit", code=code))
        self.group.barrier()


class Follower:
    """Ranks 1..N-1: train when rank 0 says so, save their own state, never touch the network."""

    def __init__(
        self, cfg: SiloConfig, group: RankGroup, training: TrainingFactory = ddp_training
    ) -> None:
        self.cfg, self.group, self.make_training = cfg, group, training

    def run(self) -> int:
        spec = FederationSpec.from_json(self.group.share(None))
        shards = TokenShards(self.cfg.silo.data_dir)
        shards.check_tokenizer(spec.tokenizer_digest)
        tcfg = trainer_config(spec, self.cfg)
        training = self.make_training(self.group, spec, tcfg, shards, None)
        while True:
            cmd: Command = self.group.share(None)
            if cmd.kind == "exit":
                self.group.barrier()
                return cmd.code
            trainer = training.trainer(None if cmd.restore is None else Path(cmd.restore))
            trainer.train(cmd.steps, cmd.global_step, on_step=_follower_step)
            trainer.save_state()


def _follower_step(step: int, loss: float) -> None:
    """A follower's crash point between its optimizer steps (the agent's is the heartbeat's)."""
    crash_point("silo.follower_step")


def run_distributed(
    cfg: SiloConfig,
    stop: threading.Event,
    environ: Mapping[str, str] | None = None,
    training: TrainingFactory = ddp_training,
) -> int:
    """Run this process's part of a multi-process silo (under torchrun); `training` says how
    the ranks share the training."""
    group = init_group(cfg.silo.device, os.environ if environ is None else environ)
    structlog.contextvars.bind_contextvars(rank=group.rank)
    log.info("rank_started", world_size=group.world_size, device=str(group.device))
    try:
        if group.rank == 0:
            return SiloAgent(cfg, backend=RankGroupBackend(group, training), stop=stop).run()
        return Follower(cfg, group, training).run()
    finally:
        dist.destroy_process_group()
