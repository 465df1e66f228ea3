"""What one update may claim and how far it may move the model, from what the aggregator knows.

A member's self-reported numbers are never trusted as they come: its token count is the
aggregation weight, so it may not exceed the tokens the task lets one silo train

    local_steps × grad_accum × batch_size × seq_len × server.max_silo_processes

(`batch_size` is per training process; under torchrun every rank trains that many sequences).
Likewise an evaluation report's tokens (they weigh its loss in the reported metric). Its
delta's L2 norm may not exceed

    server.update_norm_bound × lr × local_steps × √(parameters)

— a delta in which every parameter moved by the peak learning rate at every local step.
AdamW's steps are about `lr` per parameter, so honest deltas stay far inside it, and a sum of
bounded updates cannot overflow the fp32 accumulator. Over-reports are rejected, not clamped:
a silo that claims more than it could have trained is lying about its weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aggregator.config import ServerConfig
from photon.errors import UpdateRejected
from photon.federation import FederationSpec


@dataclass(frozen=True, slots=True)
class UpdateBounds:
    """The largest token count and L2 norm one update may have (0.0 norm: no norm bound),
    and the most tokens one evaluation report may weigh."""

    max_tokens: int
    max_norm: float
    max_eval_tokens: int

    @classmethod
    def of(cls, server: ServerConfig, spec: FederationSpec, num_params: int) -> UpdateBounds:
        t = spec.training
        per_process = spec.local_steps * t.grad_accum * t.batch_size * t.seq_len
        norm = server.update_norm_bound * t.lr * spec.local_steps * math.sqrt(num_params)
        procs = server.max_silo_processes
        eval_tokens = spec.eval_batches * t.batch_size * t.seq_len * procs
        return cls(max_tokens=per_process * procs, max_norm=norm, max_eval_tokens=eval_tokens)

    def check_tokens(self, num_tokens: int, *, silo: str, round_: int) -> None:
        if num_tokens > self.max_tokens:
            raise UpdateRejected(
                f"num_tokens {num_tokens} exceeds the {self.max_tokens} tokens one silo can "
                "train in a round (local_steps × grad_accum × batch_size × seq_len × "
                "server.max_silo_processes)",
                silo=silo,
                round=round_,
            )

    def check_eval_tokens(self, tokens: int, *, silo: str) -> None:
        """An evaluation's token count weighs its loss in the reported metric."""
        if tokens > self.max_eval_tokens:
            raise UpdateRejected(
                f"eval tokens {tokens} exceed the {self.max_eval_tokens} one silo evaluates "
                "(eval_batches × batch_size × seq_len × server.max_silo_processes)",
                silo=silo,
            )

    def check_norm(self, norm: float, *, silo: str, round_: int) -> None:
        if self.max_norm > 0 and not norm <= self.max_norm:
            raise UpdateRejected(
                f"update L2 norm {norm:.4g} exceeds the bound {self.max_norm:.4g} "
                "(server.update_norm_bound × lr × local_steps × √parameters)",
                silo=silo,
                round=round_,
            )
