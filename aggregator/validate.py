"""Validation of a received update before anything of it can touch state.

Checks, in order: the object decodes (magic, manifest, sections); the codec is the federation's;
tensor names and shapes equal the global model's; every value is finite. A failure raises
`UpdateRejected` with the reason; the caller deletes the bytes, so a rejected update leaves no
trace.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import torch

from bandwidth.codec import iter_tensors, read_manifest
from photon.errors import CodecError, UpdateRejected
from photon.federation import FederationSpec


class ModelShapes(Protocol):
    @property
    def shapes(self) -> dict[str, tuple[int, ...]]: ...


def validate_update(path: Path, model: ModelShapes, spec: FederationSpec) -> float:
    """Return the update's L2 norm, or raise UpdateRejected saying what is wrong."""
    try:
        with path.open("rb") as fh:
            manifest = read_manifest(fh)
            _check_manifest(manifest, model.shapes, spec)
            sq = 0.0
            for name, tensor in iter_tensors(fh, manifest):
                if not bool(torch.isfinite(tensor).all()):
                    raise UpdateRejected(f"tensor {name!r} holds NaN or infinite values")
                sq += float(tensor.double().pow(2).sum())
    except CodecError as exc:
        raise UpdateRejected(f"update cannot be decoded: {exc}") from exc
    return math.sqrt(sq)


def _check_manifest(
    manifest: object, shapes: dict[str, tuple[int, ...]], spec: FederationSpec
) -> None:
    codec = getattr(manifest, "codec", None)
    if codec != spec.codec:
        raise UpdateRejected(f"update uses codec {codec!r}; the federation uses {spec.codec!r}")
    got = {e.name: tuple(e.shape) for e in manifest.tensors}  # type: ignore[attr-defined]
    if got.keys() != shapes.keys():
        missing = sorted(shapes.keys() - got.keys())[:3]
        extra = sorted(got.keys() - shapes.keys())[:3]
        raise UpdateRejected(
            f"tensor names differ from the model: missing {missing}, unexpected {extra}"
        )
    for name, shape in shapes.items():
        if got[name] != shape:
            raise UpdateRejected(
                f"tensor {name!r} has shape {list(got[name])}, expected {list(shape)}"
            )
