"""Checkpoints of the global model: one safetensors file per published version.

    checkpoints/v000042.safetensors
        <param name>        global parameters, names as-is (Hugging Face Llama names)
        outer/<key>         outer optimizer state (OuterOptimizer.state_tensors())
        metadata            version, param_digest, outer_digest, created_at + the
                            caller's keys
                            (round, model_config JSON, federation digest, ...)

Files are written tmp + fsync + rename (photon.fsutil.atomic_write_with), so a crash
leaves the previous file set plus, at worst, a stray `.v….safetensors.tmp-<pid>` that
readers ignore and `clean_tmp` removes. A loaded checkpoint is checked against the
digests stored with it, so a truncated or bit-flipped file is refused; the
newest checkpoint that loads cleanly is the one to resume from.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from photon.errors import CheckpointError
from photon.fsutil import atomic_write_with
from photon.logs import get_logger

log = get_logger(__name__)

OUTER_PREFIX = "outer/"
_NAME = re.compile(r"^v(\d{6,})\.safetensors$")
_TMP_MARK = ".tmp-"
_COMPUTED_META = ("version", "param_digest", "outer_digest")
_DIGEST_TAG = b"photon-param-digest/1"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One loaded checkpoint."""

    version: int
    """The global model version this file holds."""
    params: dict[str, Tensor]
    """Global parameters by name."""
    outer_state: dict[str, Tensor]
    """Outer optimizer state, keys without the "outer/" prefix."""
    meta: dict[str, str]
    """String metadata: version, param_digest, outer_digest, created_at, the caller's keys."""
    path: Path
    """The file it was read from."""


def checkpoint_path(directory: Path, version: int) -> Path:
    """Where version `version` lives inside `directory`."""
    return Path(directory) / f"v{version:06d}.safetensors"


def param_digest(params: Mapping[str, Tensor]) -> str:
    """SHA-256 (hex) over sorted names, dtypes, shapes and raw bytes (native order: little-endian).

    Equal digests mean bit-identical parameters; any flipped bit changes it.
    """
    h = hashlib.sha256(_DIGEST_TAG)
    for name in sorted(params):
        t = params[name].detach()
        h.update(_framed(name.encode()) + _framed(str(t.dtype).removeprefix("torch.").encode()))
        h.update(struct.pack(f"<Q{t.dim()}Q", t.dim(), *t.shape))
        raw = t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
        h.update(struct.pack("<Q", raw.nbytes))
        h.update(raw.data)
    return h.hexdigest()


def _framed(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


def save_checkpoint(
    directory: Path,
    *,
    version: int,
    params: Mapping[str, Tensor],
    outer_state: Mapping[str, Tensor],
    meta: Mapping[str, str],
) -> Path:
    """Write version `version` atomically and return its path (replaces that version)."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"checkpoint version must be an integer >= 0, got {version!r}")
    clash = [k for k in params if k.startswith(OUTER_PREFIX)]
    if clash:
        raise ValueError(f"parameter names may not start with {OUTER_PREFIX!r}: {clash[:3]}")
    tensors = _unshared({**params, **{OUTER_PREFIX + k: v for k, v in outer_state.items()}})
    digests = {"param_digest": param_digest(params), "outer_digest": param_digest(outer_state)}
    metadata = _metadata(meta, version=version, digests=digests)
    path = checkpoint_path(directory, version)
    atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    log.info("checkpoint_saved", version=version, path=str(path), tensors=len(tensors))
    return path


def _metadata(
    meta: Mapping[str, str], *, version: int, digests: Mapping[str, str]
) -> dict[str, str]:
    for key, value in meta.items():
        if key in _COMPUTED_META:
            raise ValueError(f"checkpoint metadata {key!r} is computed; do not pass it")
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"checkpoint metadata must be str -> str, got {key!r}: {value!r}")
    out = {"created_at": dt.datetime.now(dt.timezone.utc).isoformat(), **meta}
    out.update(digests, version=str(version))
    return out


def _unshared(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous tensors, cloning any that share storage with an earlier one
    (safetensors refuses shared storage, e.g. tied embeddings or views of a flat buffer)."""
    seen: set[int] = set()
    out: dict[str, Tensor] = {}
    for name, t in tensors.items():
        t = t.detach().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel() > 0:
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        seen.add(ptr)
        out[name] = t
    return out


def load_checkpoint(path: Path, *, verify: bool = True) -> Checkpoint:
    """Read one checkpoint; CheckpointError if it is unreadable, mislabelled or corrupt."""
    path = Path(path)
    match = _NAME.match(path.name)
    if match is None:
        raise CheckpointError(f"{path}: not a checkpoint name (want v<version>.safetensors)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc}") from exc
    version = int(match.group(1))
    if meta.get("version") != str(version):
        raise CheckpointError(f"{path}: metadata version {meta.get('version')!r} != {version}")
    params = {k: v for k, v in tensors.items() if not k.startswith(OUTER_PREFIX)}
    outer = {k[len(OUTER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(OUTER_PREFIX)}
    if verify:
        _verify(path, meta, "param_digest", params)
        _verify(path, meta, "outer_digest", outer)
    return Checkpoint(version=version, params=params, outer_state=outer, meta=meta, path=path)


def _verify(path: Path, meta: Mapping[str, str], key: str, tensors: Mapping[str, Tensor]) -> None:
    if param_digest(tensors) != meta.get(key):
        raise CheckpointError(f"{path}: tensors do not match the recorded {key}")


def list_versions(directory: Path) -> list[int]:
    """Versions present in `directory`, ascending (stray temporary files ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = (_NAME.match(p.name) for p in directory.iterdir())
    return sorted(int(m.group(1)) for m in found if m is not None)


def latest_checkpoint(directory: Path) -> Checkpoint | None:
    """The newest checkpoint that loads cleanly; broken files are logged, skipped, kept."""
    for version in reversed(list_versions(directory)):
        path = checkpoint_path(directory, version)
        try:
            return load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("checkpoint_skipped", version=version, path=str(path), error=str(exc))
    return None


def prune(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` (>= 1) versions; return the paths removed."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(
            f"prune keeps at least the newest checkpoint; keep must be >= 1, got {keep!r}"
        )
    old = list_versions(directory)[:-keep]
    return _remove(checkpoint_path(directory, v) for v in old)


def clean_tmp(directory: Path) -> list[Path]:
    """Remove temporary files a crashed writer left behind; return them.

    Call at start-up, before this process writes checkpoints: it does not tell a dead
    writer's file from a live one's.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stray = sorted(p for p in directory.iterdir() if p.name.startswith(".") and _TMP_MARK in p.name)
    return _remove(stray)


def _remove(paths: Iterable[Path]) -> list[Path]:
    removed = []
    for path in paths:
        path.unlink(missing_ok=True)
        removed.append(path)
        log.info("checkpoint_file_removed", path=str(path))
    return removed
