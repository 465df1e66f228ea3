"""`summary.json`: the run's record, rewritten atomically after every round.

Contract (keys are only ever added): initial_eval_loss, final_eval_loss, checkpoint,
rounds[] = {round, eval_loss, bytes_up, bytes_down, seconds, ...}.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregator.globalmodel import GlobalModel
from aggregator.privacy import PrivacyAccountant, PrivacyConfig
from aggregator.store import RoundRow, Store, UpdateRow
from photon.federation import FederationSpec
from photon.fsutil import atomic_write_bytes

AGGREGATOR_EVAL = "aggregator"


def eval_by_version(store: Store) -> dict[int, float]:
    """Global eval loss per version: the operator's eval set if present, else the
    token-weighted mean of the silos' held-out losses."""
    own: dict[int, float] = {}
    silo_sum: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for version, source, loss, tokens in store.evals():
        if source == AGGREGATOR_EVAL:
            own[version] = loss
        elif tokens > 0:
            silo_sum[version][0] += loss * tokens
            silo_sum[version][1] += tokens
    merged = {v: s / t for v, (s, t) in silo_sum.items() if t > 0}
    merged.update(own)
    return merged


def ddp_equivalent_bytes(num_params: int, steps: int, workers: int) -> int:
    """Bytes data-parallel training would move for the same inner steps: per step, every
    worker sends its fp32 gradient and receives fp32 parameters (parameter-server accounting,
    2 x 4 bytes x parameters; a ring all-reduce moves about the same)."""
    return 2 * 4 * num_params * steps * workers


def privacy_summary(privacy: PrivacyConfig, rounds: int) -> dict[str, Any] | None:
    """ε spent after `rounds` noised rounds (RDP accountant of dp-accounting), or None."""
    if not privacy.enabled:
        return None
    accountant = PrivacyAccountant(privacy.noise_multiplier, privacy.delta)
    accountant.step(rounds)
    return {
        "epsilon": accountant.epsilon() if rounds else 0.0,
        "delta": privacy.delta,
        "noise_multiplier": privacy.noise_multiplier,
        "clip_norm": privacy.clip_norm,
        "rounds": rounds,
    }


def _epsilon(privacy: PrivacyConfig, rounds: int) -> float | None:
    spent = privacy_summary(privacy, rounds)
    return None if spent is None else round(float(spent["epsilon"]), 6)


@dataclass(frozen=True, slots=True)
class _Journal:
    """What the summary reads from the journal, indexed once."""

    evals: dict[int, float]
    silo_evals: dict[tuple[int, str], float]
    traffic: dict[int, dict[str, dict[str, int]]]

    @classmethod
    def read(cls, store: Store) -> _Journal:
        traffic: dict[int, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
        for round_, silo, direction, nbytes in store.traffic():
            traffic[round_][silo][direction] = nbytes
        silo_evals = {(v, src): loss for v, src, loss, _ in store.evals() if src != AGGREGATOR_EVAL}
        return cls(eval_by_version(store), silo_evals, traffic)


def _round_row(
    r: RoundRow, updates: list[UpdateRow], j: _Journal, model: GlobalModel, spec: FederationSpec
) -> dict[str, Any]:
    assert r.closed_at is not None
    traffic = j.traffic[r.round]
    eval_loss = _num(j.evals.get(r.round + 1))
    silos = {
        u.silo_id: {
            "train_loss": u.update.train_loss,
            "tokens": u.update.num_tokens,
            "tokens_per_s": _rate(u.update.num_tokens, u.update.train_seconds),
            "update_norm": _num(u.norm),
            "eval_loss": _num(j.silo_evals.get((r.round + 1, u.silo_id))),
            "bytes_up": traffic[u.silo_id].get("up", 0),
            "bytes_down": traffic[u.silo_id].get("down", 0),
        }
        for u in sorted(updates, key=lambda u: u.silo_id)
    }
    return {
        "round": r.round,
        "version": r.round + 1,
        "eval_loss": eval_loss,
        "eval_perplexity": _ppl(eval_loss),
        "bytes_up": sum(d.get("up", 0) for d in traffic.values()),
        "bytes_down": sum(d.get("down", 0) for d in traffic.values()),
        "seconds": round(r.closed_at - r.opened_at, 3),
        "tokens": sum(u.update.num_tokens for u in updates),
        "epsilon": _epsilon(model.privacy, r.round + 1),
        "ddp_equivalent_bytes": ddp_equivalent_bytes(
            model.num_params, spec.local_steps, len(updates)
        ),
        "silos": silos,
    }


def build_summary(store: Store, model: GlobalModel, spec: FederationSpec) -> dict[str, Any]:
    j = _Journal.read(store)
    evals = j.evals
    rows = [
        _round_row(r, store.updates(r.round), j, model, spec)
        for r in store.rounds()
        if r.closed_at is not None
    ]
    up = sum(r["bytes_up"] for r in rows)
    down = sum(r["bytes_down"] for r in rows)
    ddp = sum(r["ddp_equivalent_bytes"] for r in rows)
    return {
        "federation": spec.name,
        "preset": spec.preset,
        "model_params": model.num_params,
        "codec": spec.codec,
        "rounds_planned": spec.rounds,
        "local_steps": spec.local_steps,
        "version": model.version,
        "done": model.version >= spec.rounds,
        "initial_eval_loss": _num(evals.get(0)),
        "final_eval_loss": _num(evals.get(model.version)),
        "final_eval_perplexity": _ppl(_num(evals.get(model.version))),
        "checkpoint": str(model.checkpoint_path),
        "param_digest": model.digest(),
        "bytes_up_total": up,
        "bytes_down_total": down,
        "ddp_equivalent_bytes_total": ddp,
        "privacy": privacy_summary(model.privacy, model.version),
        "comm_reduction_vs_ddp": round(ddp / (up + down), 2) if up + down else None,
        "rounds": rows,
    }


def _ppl(loss: float | None) -> float | None:
    return None if loss is None else round(math.exp(min(loss, 50.0)), 4)


def _rate(tokens: int, seconds: float | None) -> float | None:
    return round(tokens / seconds, 1) if seconds else None


def _num(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else round(x, 6)


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    atomic_write_bytes(path, json.dumps(summary, indent=2).encode())
