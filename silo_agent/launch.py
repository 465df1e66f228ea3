"""Start this process's part of a silo: the agent with the right training backend."""

from __future__ import annotations

import os
import threading

import torch

from photon.logs import get_logger
from silo_agent.agent import SiloAgent
from silo_agent.backend import LocalBackend
from silo_agent.config import SiloConfig
from silo_agent.distributed import TrainingFactory, ddp_training, run_distributed

log = get_logger("silo_agent.launch")


def run_silo(cfg: SiloConfig, stop: threading.Event) -> int:
    """Run the silo until the federation is done; under torchrun, this rank's part of it."""
    if cfg.silo.threads:
        torch.set_num_threads(cfg.silo.threads)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # one silo, several processes under torchrun: see silo_agent/distributed.py
        return run_distributed(cfg, stop, training=rank_training(cfg))
    if cfg.silo.parallelism != "ddp":
        log.info("parallelism_unused", parallelism=cfg.silo.parallelism, reason="one process")
    return SiloAgent(cfg, backend=LocalBackend(), stop=stop).run()


def rank_training(cfg: SiloConfig) -> TrainingFactory:
    """How the ranks share the training: `[silo] parallelism`."""
    if cfg.silo.parallelism == "fsdp":
        from silo_agent.fsdp import fsdp_training  # FSDP2 loads only where it is used

        return fsdp_training(activation_checkpointing=cfg.silo.activation_checkpointing)
    return ddp_training
