"""The global model: current version, parameters, outer optimizer, checkpoints and downloads.

A version is committed when its checkpoint file is renamed into place; everything else
(published download objects, journal rows) is derived and rebuilt after a crash.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from aggregator.aggregate import accumulate
from aggregator.averaging import Accumulator
from aggregator.privacy import PrivacyConfig, add_noise, noise_generator
from aggregator.store import UpdateRow
from aggregator.strategies import OuterConfig, make_outer
from bandwidth.codec import write_object
from photon.checkpoint import (
    OUTER_PREFIX,
    checkpoint_path,
    clean_tmp,
    latest_checkpoint,
    load_checkpoint,
    param_digest,
    prune,
    save_checkpoint,
)
from photon.faults import crash_point
from photon.federation import FederationSpec
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
        privacy: PrivacyConfig | None = None,
    ) -> None:
        self.spec = spec
        self.privacy = privacy or PrivacyConfig()
        self.ckpt_dir = state_dir / "checkpoints"
        self.pub_dir = state_dir / "published"
        self.pub_dir.mkdir(parents=True, exist_ok=True)
        self.keep = keep_checkpoints
        self.model_config = ModelConfig.from_dict(spec.model)
        self.outer = make_outer(outer)
        self._lock = threading.Lock()
        self._published: dict[tuple[int, int], Published] = {}
        self._digest: tuple[int, str] | None = None
        self._load_or_init()

    def _load_or_init(self) -> None:
        for stray in clean_tmp(self.ckpt_dir):  # left by a writer killed before its rename
            log.warning("checkpoint_tmp_removed", path=str(stray))
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
        """The parameter digest of the current version (computed once per version)."""
        if self._digest is None or self._digest[0] != self.version:
            self._digest = (self.version, param_digest(self.params))
        return self._digest[1]

    # -- one round --------------------------------------------------------------------------
    def advance(self, updates: Sequence[UpdateRow], round_: int) -> list[UpdateRow]:
        """Average the updates (token-weighted), take the outer step, commit version + 1.

        A version with a non-finite parameter or outer state is never written: the step is
        undone from the last checkpoint and retried without the largest-norm update, until
        the result is finite (with no update left, the version repeats the parameters).
        Returns the updates left out, largest norm first, for the audit log. If committing
        fails (a full disk), the parameters and outer state are restored from the current
        version's checkpoint, so trying again takes the same step once."""
        try:
            return self._advance(updates, round_)
        except Exception:
            with self._lock:
                self._restore()
            log.warning("model_restored", version=self.version, path=str(self.checkpoint_path))
            raise

    def _advance(self, updates: Sequence[UpdateRow], round_: int) -> list[UpdateRow]:
        kept = sorted(updates, key=lambda u: u.silo_id)
        excluded: list[UpdateRow] = []
        acc = self._accumulate(kept)
        crash_point("aggregator.aggregated")
        while True:
            with self._lock:
                # In place, tensor by tensor, freeing each average once used: memory stays at
                # the parameters plus one accumulator. The checkpoint is the commit point; a
                # crash before it restarts from the previous checkpoint.
                if acc is None or self._outer_step(acc, len(kept), round_):
                    version = self.version + 1
                    path = self._save(round_, version)
                    break
                self._restore()
            worst = max(kept, key=lambda u: (_norm_key(u.norm), u.silo_id))
            kept.remove(worst)
            excluded.append(worst)
            log.error("update_excluded", round=round_, silo=worst.silo_id, norm=worst.norm)
            acc = self._accumulate(kept)
        # The download objects exist before the new version is announced: a silo told about
        # it (GetTask reads `version`) must be able to download it at once.
        self.publish(version)
        with self._lock:
            self.version, self.checkpoint_path = version, path
        if self.keep:
            prune(self.ckpt_dir, keep=max(2, self.keep))
        return excluded

    def _accumulate(self, updates: Sequence[UpdateRow]) -> Accumulator | None:
        if not updates:
            return None
        dp = self.privacy if self.privacy.enabled else None
        return accumulate(updates, clip_norm=dp.clip_norm if dp else None)

    def _outer_step(self, acc: Accumulator, n_updates: int, round_: int) -> bool:
        """Step every tensor from the average; False (parameters possibly changed) if the
        average, a parameter or the outer state is not finite."""
        names = sorted(self.params)
        if not all(_finite(acc.average(name)) for name in names):
            return False
        dp = self.privacy if self.privacy.enabled else None
        for name in names:
            average = acc.pop(name)
            if dp is not None:
                add_noise(
                    average,
                    clip_norm=dp.clip_norm,
                    noise_multiplier=dp.noise_multiplier,
                    n_updates=n_updates,
                    generator=noise_generator(dp.seed, round_, name),
                )
            self.outer.step(name, self.params[name], average, round_)
            if not _finite(self.params[name]):
                return False
        return all(_finite(t) for t in self.outer.state_tensors().values())

    def _restore(self) -> None:
        """Parameters and outer state back to the last committed checkpoint."""
        ckpt = load_checkpoint(self.checkpoint_path)
        self.params = {name: ckpt.params[name] for name in self.params}  # same order
        self.outer.load_state_tensors(dict(ckpt.outer_state))

    def _save(self, round_: int, version: int | None = None) -> Path:
        meta = {
            "round": str(round_),
            "model_config": json.dumps(self.spec.model, sort_keys=True),
            "federation_digest": self.spec.digest(),
        }
        return save_checkpoint(
            self.ckpt_dir,
            version=self.version if version is None else version,
            params=self.params,
            outer_state=self.outer.state_tensors(),
            meta=meta,
        )

    # -- downloads --------------------------------------------------------------------------
    def publish(self, version: int | None = None) -> None:
        """Write the download objects of `version` (default: the current one): full weights,
        and a delta from the previous version."""
        version = self.version if version is None else version
        self._publish_one(version, -1, self.params, None)
        previous = checkpoint_path(self.ckpt_dir, version - 1)
        if version > 0 and previous.exists():
            with safe_open(str(previous), framework="pt") as handle:
                self._publish_one(version, version - 1, self.params, _LazyTensors(handle))
        for key in [k for k in self._published if k[0] < version - 1]:
            stale = self._published.pop(key)
            stale.path.unlink(missing_ok=True)

    def _publish_one(
        self,
        version: int,
        base: int,
        params: Mapping[str, torch.Tensor],
        base_params: Mapping[str, torch.Tensor] | None,
    ) -> None:
        name = f"v{version:06d}.full" if base < 0 else f"v{version:06d}.from{base:06d}"
        path = self.pub_dir / f"{name}.obj"
        if base_params is None:
            info = write_object(path, params, "fp32")
        else:
            info = write_object(path, params, "xor", base=base_params)
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


def _finite(tensor: torch.Tensor) -> bool:
    return not tensor.is_floating_point() or bool(torch.isfinite(tensor).all())


def _norm_key(norm: float | None) -> float:
    """Largest first; an unknown or NaN norm counts as the largest."""
    return math.inf if norm is None or math.isnan(norm) else norm


class _LazyTensors(Mapping[str, torch.Tensor]):
    """The parameters of a checkpoint file, read one tensor at a time (for delta downloads)."""

    def __init__(self, handle: Any) -> None:
        self._f = handle
        self._keys = [k for k in handle.keys() if not k.startswith(OUTER_PREFIX)]  # noqa: SIM118

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._keys:
            raise KeyError(name)
        return self._f.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
