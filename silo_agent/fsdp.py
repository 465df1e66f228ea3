"""`parallelism = "fsdp"`: a silo under torchrun trains one model sharded over its processes.

    torchrun --standalone --nproc_per_node N --no-python photon silo run --config silo.toml
    # with [silo] parallelism = "fsdp" (and optionally activation_checkpointing = true)

PyTorch's FSDP2 (`fully_shard`) wraps each transformer block, then the root (embeddings, final
norm, head): every rank holds 1/N of the parameters, gradients and AdamW moments; a block's full
parameters exist only while it runs. On CUDA, parameters are gathered and computed in bf16 and
gradients reduced in fp32 (the fp32 shards are the master copy); on CPU nothing is cast.

How this fits the rank group of `silo_agent/distributed.py` (which does the talking):
- Every rank builds its model on the meta device and shards it before any memory is allocated;
  each round rank 0's global parameters reach the shards tensor by tensor
  (`set_model_state_dict(broadcast_from_rank0=True)`).
- After the local steps the ranks gather the trained parameters one tensor at a time
  (`DTensor.full_tensor()`); rank 0 subtracts the global tensor from each at once, in place, so
  its global parameters become the delta the agent encodes (`gather_delta`). Rank 0's host
  holds the global parameters (then the delta) and one gathered tensor: no rank ever holds a
  gathered state dict, and no GPU a whole model. The agent's own model on rank 0 only
  evaluates and holds no weights of its own (`model_owns_weights` is False): it is built on the
  meta device and lent the global parameters while it evaluates them, so over a whole round
  rank 0's host holds one full copy of the model (tests/test_fsdp_memory.py).
- The committed trainer state `trainer/r<R>/` holds the sharded optimizer state written with
  `torch.distributed.checkpoint` (`optimizer/`: one file per rank plus `.metadata`) and each
  rank's data cursor and RNG (`rank<k>/`). The parameters are not saved there: a round starts
  from the global model, which the silo keeps in `global/`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed._composable import checkpoint
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from photon.data import TokenShards
from photon.errors import DataError
from photon.federation import FederationSpec
from photon.fsutil import atomic_write_bytes, atomic_write_with
from photon.model import LlamaModel, ModelConfig, rope_inv_freq
from photon.trainer import Trainer, TrainerConfig, TrainStats
from silo_agent.distributed import TrainingFactory
from silo_agent.ranks import SHARDED_OPTIMIZER, RankGroup, RankLoader, group_stats, rank_dir

#: Each rank's data cursor and format marker, in `rank<k>/`.
CURSOR_FILE = "cursor.json"
#: Each rank's torch RNG state, in `rank<k>/`.
RNG_FILE = "rng.safetensors"
FORMAT = "fsdp-1"


def mixed_precision(device: torch.device) -> MixedPrecisionPolicy:
    """bf16 parameters and compute with fp32 gradient reduction on CUDA; no casts elsewhere."""
    if device.type == "cuda":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_model(
    cfg: ModelConfig, group: RankGroup, *, activation_checkpointing: bool = False
) -> LlamaModel:
    """A LlamaModel sharded over the group: `fully_shard` per block, then at the root. Built on
    the meta device; its parameters hold no values until `load_full` (every round does)."""
    mesh = init_device_mesh(group.device.type, (group.world_size,))
    policy = mixed_precision(group.device)
    with torch.device("meta"):
        model = LlamaModel(cfg)
    for block in model.model.layers:
        if activation_checkpointing:
            checkpoint(block)  # composable: the parameter names stay the model's own
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    model.to_empty(device=group.device)
    with torch.no_grad():
        model.get_buffer("inv_freq").copy_(rope_inv_freq(cfg))
    return model


def load_full(model: LlamaModel, params: Mapping[str, torch.Tensor] | None) -> None:
    """Set the sharded `model` to rank 0's full `params` (None on the other ranks): broadcast
    one tensor at a time, each rank keeping its shard. Every rank must call it."""
    # a new dict: the helper edits the dict it is given
    full: dict[str, Any] = dict(params) if params is not None else {}
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full, options=options)


@torch.no_grad()
def gather_delta(
    model: LlamaModel, params: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor] | None:
    """θ_local − θ_global in fp32 on the CPU, in name order, made in rank 0's global `params`
    (None on the other ranks): each trained parameter of the sharded `model` is assembled in
    turn and at once subtracted into its global tensor, in place, then freed. Every rank must
    call it (each gather is collective, all in the model's order)."""
    named = list(model.named_parameters(remove_duplicate=False))
    if params is not None and sorted(n for n, _ in named) != sorted(params):
        raise DataError("the global parameters do not name the FSDP model's parameters")
    for name, param in named:
        if not isinstance(param, DTensor):
            raise DataError(f"parameter {name} of the FSDP model is not sharded")
        full = param.full_tensor()
        if params is not None:
            torch.sub(full.float().cpu(), params[name], out=params[name])
        del full
    return None if params is None else {k: params[k] for k in sorted(params)}


class ShardedTrainer(Trainer):
    """The shared AdamW loop on a sharded model; its state is saved with DCP."""

    def __init__(
        self, model: LlamaModel, cfg: TrainerConfig, loader: RankLoader, group: RankGroup
    ) -> None:
        super().__init__(model, cfg, loader)
        self.group, self.rank_loader = group, loader

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """No autocast: on CUDA the sharding's MixedPrecisionPolicy computes in bf16."""
        return contextlib.nullcontext()

    def train(
        self, steps: int, global_step: int, on_step: Callable[[int, float], None] | None = None
    ) -> TrainStats:
        return group_stats(self.group, super().train(steps, global_step, on_step))

    def save_state(self, directory: Path | None = None) -> None:
        """The sharded optimizer state into `<rank 0's directory>/optimizer` (DCP, written by
        every rank), each rank's cursor and RNG into `rank<k>/`; returns when all have."""
        mine = rank_dir(self.group, directory)
        state = {"optimizer": get_optimizer_state_dict(self.model, self.optimizer)}
        dcp.save(state, checkpoint_id=mine.parent / SHARDED_OPTIMIZER)
        rng = {"rng/torch": torch.get_rng_state()}
        atomic_write_with(mine / RNG_FILE, lambda tmp: save_file(rng, str(tmp)))
        meta = {"loader": self.rank_loader.state_dict(), "format": FORMAT}
        atomic_write_bytes(mine / CURSOR_FILE, json.dumps(meta).encode())
        self.group.barrier()

    def load_state(self, directory: Path) -> None:
        mine = directory / f"rank{self.group.rank}"
        if not (directory / SHARDED_OPTIMIZER).exists():
            raise DataError(
                f'the trainer state in {directory} was not saved with parallelism = "fsdp"; '
                'set parallelism = "ddp" in [silo] again, or start from a fresh state_dir'
            )
        if not (mine / CURSOR_FILE).exists():
            raise DataError(
                f"no trainer state for rank {self.group.rank} in {directory}: the silo ran with "
                "another number of processes; run torchrun with the same --nproc_per_node as "
                "before"
            )
        state = {"optimizer": get_optimizer_state_dict(self.model, self.optimizer)}
        dcp.load(state, checkpoint_id=directory / SHARDED_OPTIMIZER)
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"])
        torch.set_rng_state(load_file(str(mine / RNG_FILE))["rng/torch"])
        meta = json.loads((mine / CURSOR_FILE).read_bytes())
        self.rank_loader.load_state_dict(meta["loader"])


class ShardedTraining:
    """What every rank keeps across rounds under FSDP: its shard of the model and its data."""

    def __init__(
        self,
        group: RankGroup,
        spec: FederationSpec,
        tcfg: TrainerConfig,
        shards: TokenShards,
        *,
        activation_checkpointing: bool = False,
    ) -> None:
        self.group, self.tcfg, self.shards, self.seed = group, tcfg, shards, spec.seed
        cfg = ModelConfig.from_dict(spec.model)
        self.model = shard_model(cfg, group, activation_checkpointing=activation_checkpointing)

    def trainer(
        self, restore: Path | None, params: Mapping[str, torch.Tensor] | None = None
    ) -> ShardedTrainer:
        """The round's trainer: the shards set to rank 0's `params`, the state from `restore`."""
        if self.group.rank == 0 and params is None:
            raise ValueError("rank 0 must give the round's parameters")
        load_full(self.model, params if self.group.rank == 0 else None)
        loader = RankLoader.for_group(self.shards, self.group, self.tcfg, self.seed)
        trainer = ShardedTrainer(self.model, self.tcfg, loader, self.group)
        if restore is not None:
            trainer.load_state(restore)
        if self.tcfg.reset_optimizer:
            trainer.begin_round()
        return trainer

    def local_delta(self, params: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        """After the round's steps, on every rank: rank 0's `params` turned into the delta."""
        if self.group.rank == 0 and params is None:
            raise ValueError("rank 0 must give the round's parameters")
        return gather_delta(self.model, params if self.group.rank == 0 else None)


class FSDPTrainingFactory:
    """Builds each rank's ShardedTraining. Rank 0's agent model is not used (the ranks shard a
    model of their own; the delta is made from the global parameters), so it needs no weights."""

    trains_agent_model = False

    def __init__(self, *, activation_checkpointing: bool) -> None:
        self.activation_checkpointing = activation_checkpointing

    def __call__(
        self,
        group: RankGroup,
        spec: FederationSpec,
        tcfg: TrainerConfig,
        shards: TokenShards,
        model: LlamaModel | None,
    ) -> ShardedTraining:
        return ShardedTraining(
            group, spec, tcfg, shards, activation_checkpointing=self.activation_checkpointing
        )


def fsdp_training(*, activation_checkpointing: bool) -> TrainingFactory:
    """The `parallelism = "fsdp"` factory for `run_distributed`."""
    return FSDPTrainingFactory(activation_checkpointing=activation_checkpointing)
