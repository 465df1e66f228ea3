"""What the silo agent needs from training, and the single-process way of doing it.

    agent = SiloAgent(cfg, backend=LocalBackend())          # one process
    agent = SiloAgent(cfg, backend=RankGroupBackend(group))  # rank 0 of a torchrun job

The agent owns the federation (join, tasks, transfers, commits); a `TrainingBackend` owns how a
round's local steps run: it is started once the agent knows the federation, builds each round's
trainer from the global parameters (restored from the last committed trainer state), and is
finished when the agent leaves. The trainer it returns runs the round's steps and saves its
state into the folder the agent commits; after the steps the backend gives the round's delta
(θ_local − θ_global), which the agent encodes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import torch

from photon.data import TokenLoader, TokenShards
from photon.federation import FederationSpec
from photon.model import LlamaModel
from photon.trainer import Trainer, TrainerConfig, TrainStats
from photon.v1 import federation_pb2 as pb
from silo_agent.config import SiloConfig


def model_delta(
    model: torch.nn.Module, params: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """θ_local − θ_global in fp32 on the CPU, in name order: `model`'s weights minus `params`."""
    local = model.state_dict()
    return {k: local[k].detach().float().cpu() - params[k] for k in sorted(params)}


def trainer_config(spec: FederationSpec, cfg: SiloConfig) -> TrainerConfig:
    """The trainer settings of this silo: the federation's training section, this silo's device."""
    return TrainerConfig.from_spec(
        spec.training,
        total_steps=spec.total_steps,
        device=cfg.silo.device,
        seed=spec.seed,
        threads=cfg.silo.threads or None,
    )


class RoundTrainer(Protocol):
    """One round's local training, as the agent drives it."""

    def train(
        self, steps: int, global_step: int, on_step: Callable[[int, float], None] | None = None
    ) -> TrainStats:
        """Run `steps` optimizer steps starting at `global_step` of the schedule."""
        ...

    def save_state(self, directory: Path) -> None:
        """Save optimizer moments, data cursor and RNG into `directory` (committed by the agent)."""
        ...


class TrainingBackend(Protocol):
    """How a silo's local training runs: in this process, or across a torchrun rank group."""

    @property
    def model_owns_weights(self) -> bool:
        """Whether the agent's model (the one given to `start`) must hold weights of its own:
        True where the backend trains it; False where the backend trains a model of its own
        (FSDP), the agent's then only evaluating, on the global parameters it is lent."""
        ...

    def start(
        self, spec: FederationSpec, model: LlamaModel, tcfg: TrainerConfig, shards: TokenShards
    ) -> None:
        """Called once after joining: the federation, the agent's model, settings and data."""
        ...

    def trainer(
        self, task: pb.Task, params: Mapping[str, torch.Tensor], restore: Path | None
    ) -> RoundTrainer:
        """The trainer of `task`'s round: the model set to `params`, its state from `restore`."""
        ...

    def local_delta(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """After the round's steps: θ_local − θ_global in fp32 on the CPU, in name order, from
        the round's global `params`, which it may turn into the delta in place (the caller
        must not use them afterwards)."""
        ...

    def finish(self, code: int) -> None:
        """Called once after leaving the federation with the agent's exit code."""
        ...


class LocalBackend:
    """Training in this process, on the agent's model."""

    @property
    def model_owns_weights(self) -> bool:
        """It trains the agent's model."""
        return True

    def start(
        self, spec: FederationSpec, model: LlamaModel, tcfg: TrainerConfig, shards: TokenShards
    ) -> None:
        self.spec, self.model, self.tcfg, self.shards = spec, model, tcfg, shards

    def trainer(
        self, task: pb.Task, params: Mapping[str, torch.Tensor], restore: Path | None
    ) -> Trainer:
        self.model.load_state_dict(dict(params))
        loader = TokenLoader(
            self.shards,
            split="train",
            batch_size=self.tcfg.batch_size,
            seq_len=self.tcfg.seq_len,
            seed=self.spec.seed,
        )
        trainer = Trainer(self.model, self.tcfg, loader)
        if restore is not None:
            trainer.load_state(restore)
        if self.tcfg.reset_optimizer:
            trainer.begin_round()
        return trainer

    def local_delta(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return model_delta(self.model, params)

    def finish(self, code: int) -> None:
        """Nothing to stop: training ran in this process."""
