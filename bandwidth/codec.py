"""Encode a dict of fp32 tensors into one object (see `bandwidth.objectfmt`) and back.

    info = write_object(spool / "update.obj", delta, "int8")      # streams, O(largest tensor)
    with open(path, "rb") as fh:
        manifest = read_manifest(fh)
        for name, tensor in iter_tensors(fh, manifest):             # one tensor at a time
            ...

Each tensor is one zstd frame (with content size and checksum) of its codec bytes
(`bandwidth.quantize`). Decoding checks the frame's declared size against the manifest before
decompressing, and every failure is a `CodecError` naming the tensor.

Downloads of a new global version to a silo that holds an older one use the lossless `xor`
codec against that base: `encode_delta_download(new, base)` / `decode_object(data, base=base)`.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
import zstandard

from bandwidth.chunking import Digest, sha256_file
from bandwidth.objectfmt import (
    PREFIX_SIZE,
    Manifest,
    TensorEntry,
    pack_prefix,
    read_manifest,
)
from bandwidth.quantize import decode_tensor, encode_tensor, quantize_roundtrip, raw_length
from photon.codecs import ALL_CODECS, DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE
from photon.errors import CodecError, ConfigError
from photon.fsutil import atomic_open

__all__ = [
    "Digest",
    "Manifest",
    "ObjectInfo",
    "TensorEntry",
    "decode_object",
    "encode_delta_download",
    "encode_object",
    "iter_tensors",
    "quantize_roundtrip",
    "read_manifest",
    "sha256_file",
    "write_object",
]

_PLACEHOLDER = 10**19 - 1
"""Stands in for section offsets/lengths while sizing the manifest: no real one is longer."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What `write_object` wrote."""

    digest: str
    """SHA-256 hex of the file's bytes."""
    size: int
    manifest: Manifest


def _check_args(codec: str, block_size: int, level: int, base: object) -> None:
    if codec not in ALL_CODECS:
        raise ConfigError(f"codec {codec!r} is unknown; choose one of {', '.join(ALL_CODECS)}")
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise ConfigError(
            f"block_size {block_size} is out of range; use {MIN_BLOCK_SIZE}..{MAX_BLOCK_SIZE} "
            f"(64..256 is typical; default {DEFAULT_BLOCK_SIZE})"
        )
    if not 1 <= level <= 22:
        raise ConfigError(f"zstd level {level} is out of range; use 1..22 (default 1)")
    if (codec == "xor") != (base is not None):
        raise ValueError("pass base= exactly when the codec is 'xor'")


def _plan(
    tensors: Mapping[str, torch.Tensor],
    codec: str,
    block_size: int,
    meta: Mapping[str, str] | None,
    base: Mapping[str, torch.Tensor] | None,
) -> Manifest:
    """The manifest with placeholder offsets/lengths: JSON at least as long as the real one."""
    entries = []
    for name, t in tensors.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor names must be non-empty strings, got {name!r}")
        if base is not None and (name not in base or base[name].shape != t.shape):
            raise ValueError(f"tensor {name!r}: base lacks it or has another shape")
        shape = tuple(int(d) for d in t.shape)
        raw = raw_length(codec, t.numel(), block_size)
        entries.append(TensorEntry(name, shape, "float32", _PLACEHOLDER, _PLACEHOLDER, raw))
    return Manifest(
        codec=codec, block_size=block_size, meta=dict(meta or {}), tensors=tuple(entries)
    )


def _write_stream(
    fh: BinaryIO,
    tensors: Mapping[str, torch.Tensor],
    codec: str,
    *,
    block_size: int,
    level: int,
    meta: Mapping[str, str] | None,
    base: Mapping[str, torch.Tensor] | None,
) -> Manifest:
    """Write an object at `fh`'s position (seekable), one tensor in memory at a time."""
    _check_args(codec, block_size, level, base)
    plan = _plan(tensors, codec, block_size, meta, base)
    reserved = len(plan.to_json())
    start = fh.tell()
    fh.write(pack_prefix(reserved) + b" " * reserved)
    cctx = zstandard.ZstdCompressor(level=level, threads=0, write_checksum=True)
    entries, offset = [], 0
    for entry in plan.tensors:
        try:
            held = None if base is None else base[entry.name]
            raw = encode_tensor(codec, tensors[entry.name], block_size, held)
        except (TypeError, ValueError) as exc:
            raise CodecError(f"cannot encode tensor {entry.name!r} as {codec}: {exc}") from exc
        frame = cctx.compress(raw)
        fh.write(frame)
        entries.append(
            TensorEntry(entry.name, entry.shape, "float32", offset, len(frame), len(raw))
        )
        offset += len(frame)
    manifest = dataclasses.replace(
        plan, tensors=tuple(entries), sections_start=start + PREFIX_SIZE + reserved
    )
    fh.seek(start + PREFIX_SIZE)
    fh.write(manifest.to_json().ljust(reserved))
    fh.seek(0, io.SEEK_END)
    return manifest


def encode_object(
    tensors: Mapping[str, torch.Tensor],
    codec: str,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    level: int = 1,
    meta: Mapping[str, str] | None = None,
    base: Mapping[str, torch.Tensor] | None = None,
) -> bytes:
    """The object's bytes in memory (the same bytes `write_object` puts in a file)."""
    buf = io.BytesIO()
    _write_stream(buf, tensors, codec, block_size=block_size, level=level, meta=meta, base=base)
    return buf.getvalue()


def write_object(
    path: Path,
    tensors: Mapping[str, torch.Tensor],
    codec: str,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    level: int = 1,
    meta: Mapping[str, str] | None = None,
    base: Mapping[str, torch.Tensor] | None = None,
) -> ObjectInfo:
    """Encode into a durable file (tmp + fsync + rename) with O(largest tensor) extra memory.

    The digest is taken by reading the finished file back once (the manifest, written last,
    comes first in the file).
    """
    with atomic_open(Path(path)) as fh:
        manifest = _write_stream(
            fh, tensors, codec, block_size=block_size, level=level, meta=meta, base=base
        )
        size = fh.tell()
    return ObjectInfo(digest=sha256_file(Path(path)), size=size, manifest=manifest)


def encode_delta_download(
    new: Mapping[str, torch.Tensor],
    base: Mapping[str, torch.Tensor],
    *,
    level: int = 1,
    meta: Mapping[str, str] | None = None,
) -> bytes:
    """Lossless download of `new` for a reader holding `base` (same names and shapes)."""
    return encode_object(new, "xor", level=level, meta=meta, base=base)


def _decompress(frame: bytes, entry: TensorEntry) -> bytes:
    where = f"tensor {entry.name!r}"
    try:
        declared = zstandard.frame_content_size(frame)
        if declared != entry.raw_length:
            raise CodecError(
                f"{where}: zstd frame declares {declared} bytes, manifest {entry.raw_length}"
            )
        return zstandard.ZstdDecompressor().decompress(
            frame, max_output_size=entry.raw_length, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise CodecError(f"{where}: corrupt zstd frame ({exc})") from exc


def _base_tensor(entry: TensorEntry, base: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
    held = None if base is None else base.get(entry.name)
    if held is None or tuple(held.shape) != entry.shape:
        raise CodecError(
            f"tensor {entry.name!r} is an xor delta; pass base= holding it with shape "
            f"{list(entry.shape)}"
        )
    return held


def iter_tensors(
    fh: BinaryIO,
    manifest: Manifest,
    *,
    base: Mapping[str, torch.Tensor] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Decode one tensor at a time, in manifest order, into fp32 (memory O(largest tensor)).

    `base` is read only for `xor` objects. Shapes come from the manifest: a caller that
    expects a model should compare `manifest.shapes` to it first.
    """
    for entry in manifest.tensors:
        fh.seek(manifest.sections_start + entry.offset)
        frame = fh.read(entry.length)
        if len(frame) != entry.length:
            raise CodecError(f"tensor {entry.name!r}: section truncated")
        held = _base_tensor(entry, base) if manifest.codec == "xor" else None
        raw = _decompress(frame, entry)
        try:
            tensor = decode_tensor(manifest.codec, raw, entry.shape, manifest.block_size, held)
        except ValueError as exc:
            raise CodecError(f"tensor {entry.name!r}: {manifest.codec} section {exc}") from exc
        yield entry.name, tensor


def decode_object(
    data: bytes | bytearray | memoryview | BinaryIO,
    base: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Every tensor of an object, from its bytes or a seekable binary file."""
    fh = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
    manifest = read_manifest(fh)
    return dict(iter_tensors(fh, manifest, base=base))
