"""Start this process's part of a silo: the agent with the right training backend."""

from __future__ import annotations

import os
import threading

import torch

from silo_agent.agent import SiloAgent
from silo_agent.backend import LocalBackend
from silo_agent.config import SiloConfig
from silo_agent.distributed import run_distributed


def run_silo(cfg: SiloConfig, stop: threading.Event) -> int:
    """Run the silo until the federation is done; under torchrun, this rank's part of it."""
    if cfg.silo.threads:
        torch.set_num_threads(cfg.silo.threads)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # one silo, several processes under torchrun (DDP): see silo_agent/distributed.py
        return run_distributed(cfg, stop)
    return SiloAgent(cfg, backend=LocalBackend(), stop=stop).run()
