"""The rank group of a multi-process silo: the processes torchrun started, their collectives,
how they deal out the data, and where each saves its trainer state.

`silo_agent/distributed.py` leads the ranks through the rounds; the training backends
(DistributedDataParallel there, FSDP2 in `silo_agent/fsdp.py`) train on this group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from photon.data import TokenLoader, TokenShards
from photon.errors import ConfigError, DataError
from photon.trainer import TrainerConfig, TrainStats, resolve_device

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

    @classmethod
    def for_group(
        cls, shards: TokenShards, group: RankGroup, tcfg: TrainerConfig, seed: int
    ) -> RankLoader:
        """This rank's share of the training windows, at the trainer's batch and length."""
        return cls(
            shards,
            rank=group.rank,
            world_size=group.world_size,
            batch_size=tcfg.batch_size,
            seq_len=tcfg.seq_len,
            seed=seed,
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
