"""One silo, several processes: torchrun and DistributedDataParallel behind one aggregator session.

    torchrun --standalone --nproc_per_node N --no-python photon silo run --config silo.toml

Rank 0 is the silo agent proper, given a `RankGroupBackend` as its training backend: the only
process that talks to the aggregator (join, tasks, downloads, uploads, heartbeats, final
evaluation) and the only one that commits `state.json`. The other ranks follow it (`Follower`).
Each round rank 0 shares the task (an object it built itself: nothing received from the network
is ever pickled, the spec travels as its JSON text) and broadcasts the global parameters as
tensors; every rank trains the same model under DistributedDataParallel on its own windows of
the data (each epoch's permutation dealt out by rank); rank 0 encodes and uploads the delta and
reports the tokens of all ranks. The rank group itself (collectives, rank-dealt data, per-rank
state folders) is `silo_agent/ranks.py`. With `[silo] parallelism = "fsdp"` the ranks train one
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
from pathlib import Path
from typing import Literal, Protocol

import structlog
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from photon.data import TokenShards
from photon.errors import DataError
from photon.faults import crash_point
from photon.federation import FederationSpec
from photon.logs import get_logger
from photon.model import LlamaModel, ModelConfig, build_model
from photon.trainer import Trainer, TrainerConfig, TrainStats
from photon.v1 import federation_pb2 as pb
from silo_agent.agent import SiloAgent
from silo_agent.backend import model_delta, trainer_config
from silo_agent.config import SiloConfig
from silo_agent.ranks import (
    SHARDED_OPTIMIZER,
    RankGroup,
    RankLoader,
    group_stats,
    init_group,
    rank_dir,
)

log = get_logger("silo_agent.distributed")


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
        loader = RankLoader.for_group(self.shards, self.group, self.tcfg, self.seed)
        trainer = DistributedTrainer(self.model, self.tcfg, loader, self.group, self.ddp)
        if restore is not None:
            trainer.load_state(restore)
        if self.tcfg.reset_optimizer:
            trainer.begin_round()
        return trainer

    def local_delta(self, params: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        """Rank 0's delta from its whole trained model; nothing on the followers (no collective)."""
        return None if params is None else model_delta(self.model, params)


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

    def local_delta(self, params: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        """After the round's steps, on every rank (it may be collective): rank 0's delta from
        its global `params` (which it may turn into the delta in place); None on the followers."""
        ...


#: Builds a rank's RoundTraining: (group, spec, settings, data, model), where `model` is the
#: agent's model on rank 0 and None on the followers. `parallelism` picks it (silo_agent/launch.py).
#: One that builds a model of its own says so with `trains_agent_model = False` (`fsdp_training`).
TrainingFactory = Callable[
    [RankGroup, FederationSpec, TrainerConfig, TokenShards, LlamaModel | None], RoundTraining
]


def trains_agent_model(training: TrainingFactory) -> bool:
    """Whether `training` trains rank 0's agent model (DDP: it is rank 0's copy), or a model of
    its own (it sets `trains_agent_model = False`: the agent's then needs no weights of its own)."""
    return bool(getattr(training, "trains_agent_model", True))


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

    @property
    def model_owns_weights(self) -> bool:
        """Under DDP rank 0 trains the agent's model; under FSDP the shards are the ranks' own."""
        return trains_agent_model(self.make_training)

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

    def local_delta(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The round's delta; the followers take part in the same step (`Follower.run`)."""
        delta = self.training.local_delta(params)
        if delta is None:
            raise RuntimeError("rank 0's training gave no delta")
        return delta

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
            training.local_delta(None)  # as rank 0 does before it saves its state
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
