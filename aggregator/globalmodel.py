"""The global model: current version, parameters, outer optimizer, checkpoints and downloads.

A version is committed when its checkpoint file is renamed into place; everything else
(published download objects, journal rows) is derived and rebuilt after a crash.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from aggregator.aggregate import accumulate
from aggregator.checkpoint import latest_checkpoint, param_digest, prune, save_checkpoint
from aggregator.store import UpdateRow
from aggregator.strategies import OuterConfig, make_outer
from bandwidth.codec import write_object
from photon.federation import FederationSpec
from photon.fsutil import atomic_write_bytes
from photon.logs import get_logger
from photon.model import ModelConfig, build_model

log = get_logger("aggregator.model")


@dataclass(frozen=True, slots=True)
class Published:
    """A download object of one version: full weights, or a lossless delta from `base`."""

    path: Path
    digest: str
    size: int
    version: int
    base: int  # -1 for full weights


class GlobalModel:
    def __init__(
        self,
        state_dir: Path,
        spec: FederationSpec,
        outer: OuterConfig,
        *,
        keep_checkpoints: int = 0,
    ) -> None:
        self.spec = spec
        self.ckpt_dir = state_dir / "checkpoints"
        self.pub_dir = state_dir / "published"
        self.pub_dir.mkdir(parents=True, exist_ok=True)
        self.keep = keep_checkpoints
        self.model_config = ModelConfig.from_dict(spec.model)
        self.outer = make_outer(outer)
        self._lock = threading.Lock()
        self._published: dict[tuple[int, int], Published] = {}
        self._previous: dict[str, torch.Tensor] | None = None
        self._load_or_init()

    def _load_or_init(self) -> None:
        ckpt = latest_checkpoint(self.ckpt_dir)
        if ckpt is None:
            model = build_model(self.model_config, seed=self.spec.seed)
            self.params = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
            self.version = 0
            self.checkpoint_path = self._save(round_=-1)
            log.info("model_initialised", params=self.num_params, preset=self.spec.preset)
        else:
            self.params, self.version = dict(ckpt.params), ckpt.version
            self.outer.load_state_tensors(dict(ckpt.outer_state))
            self.checkpoint_path = ckpt.path
            log.info("checkpoint_loaded", version=self.version, path=str(ckpt.path))
        self.publish()

    @property
    def num_params(self) -> int:
        return sum(t.numel() for t in self.params.values())

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.params.items()}

    @property
    def max_update_bytes(self) -> int:
        """Upper bound on an encoded update: fp32 size plus framing headroom."""
        return int(self.num_params * 4 * 1.02) + (1 << 20) + 256 * len(self.params)

    def digest(self) -> str:
        return param_digest(self.params)

    # -- one round --------------------------------------------------------------------------
    def advance(self, updates: Sequence[UpdateRow], round_: int) -> None:
        """Average the updates (token-weighted), take the outer step, commit version + 1."""
        acc = accumulate(updates)
        new = {k: v.clone() for k, v in self.params.items()}
        for name in sorted(new):
            self.outer.step(name, new[name], acc.average(name), round_)
        with self._lock:
            self._previous, self.params = self.params, new
            self.version += 1
            self.checkpoint_path = self._save(round_)
        self.publish()
        if self.keep:
            prune(self.ckpt_dir, keep=self.keep)

    def _save(self, round_: int) -> Path:
        meta = {
            "round": str(round_),
            "model_config": json.dumps(self.spec.model, sort_keys=True),
            "federation_digest": self.spec.digest(),
        }
        return save_checkpoint(
            self.ckpt_dir,
            version=self.version,
            params=self.params,
            outer_state=self.outer.state_tensors(),
            meta=meta,
        )

    # -- downloads --------------------------------------------------------------------------
    def publish(self) -> None:
        """Write the download objects of the current version (full, and delta from previous)."""
        version = self.version
        self._publish_one(version, -1, self.params, None)
        if self._previous is not None:
            self._publish_one(version, version - 1, self.params, self._previous)
        for key in [k for k in self._published if k[0] < version - 1]:
            stale = self._published.pop(key)
            stale.path.unlink(missing_ok=True)
            stale.path.with_suffix(".json").unlink(missing_ok=True)

    def _publish_one(
        self,
        version: int,
        base: int,
        params: dict[str, torch.Tensor],
        base_params: dict[str, torch.Tensor] | None,
    ) -> None:
        name = f"v{version:06d}.full" if base < 0 else f"v{version:06d}.from{base:06d}"
        path = self.pub_dir / f"{name}.obj"
        if base_params is None:
            info = write_object(path, params, "fp32")
        else:
            info = write_object(path, params, "xor", base=base_params)
        atomic_write_bytes(
            path.with_suffix(".json"),
            json.dumps({"digest": info.digest, "size": info.size}).encode(),
        )
        with self._lock:
            self._published[(version, base)] = Published(
                path, info.digest, info.size, version, base
            )

    def download(self, version: int, have_version: int) -> Published | None:
        """The object to send for `version`: a delta when the silo holds version − 1."""
        with self._lock:
            if have_version >= 0 and (version, have_version) in self._published:
                return self._published[(version, have_version)]
            return self._published.get((version, -1))
