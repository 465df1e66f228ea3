"""The encoded tensor object: a self-describing binary file, never pickled.

    magic b"PHOTON\\x00\\x01" | u32 LE manifest length | manifest JSON (utf-8) | sections

The manifest says the codec and where each tensor's section lies, relative to the start of the
sections area; each section is one zstd frame of the codec's bytes for that tensor:

    {"format": 1, "codec": "int8", "block_size": 128, "meta": {"round": "7"},
     "tensors": [{"name": "w", "shape": [4, 8], "dtype": "float32",
                  "offset": 0, "length": 57, "raw_length": 36}]}

The JSON may be followed by spaces up to the stated length (a writer reserves room for it
before the section sizes are known). Everything read here is validated before use: a bad
object raises `CodecError` saying what is wrong and, where it applies, which tensor.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NoReturn

from bandwidth.quantize import raw_length
from photon.codecs import ALL_CODECS, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE
from photon.errors import CodecError

MAGIC = b"PHOTON\x00\x01"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
"""A manifest larger than this is refused before it is read (a corrupt length field)."""
MAX_NAME_CHARS = 1024
_LENGTH = struct.Struct("<I")
PREFIX_SIZE = len(MAGIC) + _LENGTH.size
_TOP_KEYS = ("format", "codec", "block_size", "meta", "tensors")
_ENTRY_KEYS = ("name", "shape", "dtype", "offset", "length", "raw_length")
#: Bounds on a tensor's shape, so no product of dimensions can overflow int64.
MAX_ELEMENTS = 2**62
MAX_DIMS = 16


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor's place in an object."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    """Start of the tensor's zstd frame, relative to the sections area."""
    length: int
    """Size of the zstd frame in bytes."""
    raw_length: int
    """Size of the codec's bytes inside the frame."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, slots=True)
class Manifest:
    """What an object holds and how it is encoded."""

    codec: str
    block_size: int
    meta: Mapping[str, str] = field(hash=False)
    tensors: tuple[TensorEntry, ...]
    format: int = FORMAT_VERSION
    sections_start: int = field(default=0, compare=False)
    """Stream position where the sections area begins; set by `read_manifest`."""

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {e.name: e.shape for e in self.tensors}

    def to_json(self) -> bytes:
        doc = {
            "format": self.format,
            "codec": self.codec,
            "block_size": self.block_size,
            "meta": dict(self.meta),
            "tensors": [
                {k: list(e.shape) if k == "shape" else getattr(e, k) for k in _ENTRY_KEYS}
                for e in self.tensors
            ],
        }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def pack_prefix(manifest_length: int) -> bytes:
    """Magic and the manifest length field."""
    return MAGIC + _LENGTH.pack(manifest_length)


# -- validation -----------------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    raise CodecError(f"invalid object manifest: {message}")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        _fail(f"duplicate JSON key(s) {dupes}")
    return dict(pairs)


def _reject_constant(name: str) -> NoReturn:
    _fail(f"JSON constant {name} is not allowed")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_keys(obj: object, keys: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        _fail(f"{where} must be a JSON object, got {type(obj).__name__}")
    if set(obj) != set(keys):
        _fail(f"{where} must have exactly the keys {list(keys)}, got {sorted(obj)}")
    return obj


def _check_int(value: object, where: str, minimum: int = 0) -> int:
    if not _is_int(value) or value < minimum:  # type: ignore[operator]
        _fail(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value  # type: ignore[return-value]


def _parse_entry(obj: object, index: int, codec: str, block_size: int) -> TensorEntry:
    if not isinstance(obj, dict):
        _fail(f"tensors[{index}] must be a JSON object")
    name = obj.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
        _fail(f"tensors[{index}].name must be a string of 1..{MAX_NAME_CHARS} characters")
    where = f"tensor {name!r}"
    entry = _check_keys(obj, _ENTRY_KEYS, where)
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and 0 <= d < MAX_ELEMENTS for d in shape):
        _fail(f"{where}: shape must be a list of integers in [0, 2**62), got {shape!r}")
    if math.prod(d for d in shape if d) >= MAX_ELEMENTS or len(shape) > MAX_DIMS:
        _fail(
            f"{where}: shape {shape!r} is too large (at most {MAX_DIMS} dimensions and "
            "2**62 elements)"
        )
    if entry["dtype"] != "float32":
        _fail(f"{where}: dtype must be 'float32', got {entry['dtype']!r}")
    parsed = TensorEntry(
        name=name,
        shape=tuple(shape),
        dtype="float32",
        offset=_check_int(entry["offset"], f"{where}: offset"),
        length=_check_int(entry["length"], f"{where}: length", minimum=1),
        raw_length=_check_int(entry["raw_length"], f"{where}: raw_length"),
    )
    implied = raw_length(codec, parsed.numel, block_size)
    if parsed.raw_length != implied:
        _fail(f"{where}: raw_length {parsed.raw_length} but {codec} of {shape} takes {implied}")
    return parsed


def _check_meta(meta: object) -> dict[str, str]:
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        _fail("meta must be a JSON object of string values")
    return meta


def parse_manifest(data: bytes) -> Manifest:
    """Validate manifest JSON (schema, types, unique names, codec sizes) into a `Manifest`."""
    try:
        doc = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and integer literals past Python's digit limit;
        # RecursionError, absurdly nested JSON.
        raise CodecError(f"invalid object manifest: not valid UTF-8 JSON ({exc})") from exc
    top = _check_keys(doc, _TOP_KEYS, "the manifest")
    if not _is_int(top["format"]) or top["format"] != FORMAT_VERSION:
        _fail(f"format {top['format']!r} is not supported (this reader knows {FORMAT_VERSION})")
    codec = top["codec"]
    if codec not in ALL_CODECS:
        _fail(f"codec {codec!r} is not one of {list(ALL_CODECS)}")
    block_size = _check_int(top["block_size"], "block_size", minimum=MIN_BLOCK_SIZE)
    if block_size > MAX_BLOCK_SIZE:
        _fail(f"block_size {block_size} is above {MAX_BLOCK_SIZE}")
    if not isinstance(top["tensors"], list):
        _fail("tensors must be a JSON list")
    entries = tuple(_parse_entry(obj, i, codec, block_size) for i, obj in enumerate(top["tensors"]))
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        _fail(f"tensor names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    return Manifest(
        codec=codec, block_size=block_size, meta=_check_meta(top["meta"]), tensors=entries
    )


def check_sections(manifest: Manifest, area_size: int) -> None:
    """Sections lie inside the area, do not overlap, and the area ends with the last one."""
    end = 0
    for entry in sorted(manifest.tensors, key=lambda e: e.offset):
        if entry.offset < end:
            _fail(f"tensor {entry.name!r}: section at {entry.offset} overlaps the previous one")
        end = entry.offset + entry.length
        if end > area_size:
            _fail(
                f"tensor {entry.name!r}: section ends at {end}, past the object's "
                f"{area_size} section bytes (truncated?)"
            )
    if end != area_size:
        _fail(f"{area_size - end} bytes follow the last section")


def _read_exactly(fh: BinaryIO, n: int, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise CodecError(f"object truncated: {what} needs {n} bytes, found {len(data)}")
    return data


def read_manifest(fh: BinaryIO) -> Manifest:
    """Read and validate the header of the object starting at `fh`'s position.

    `fh` must be seekable: section bounds are checked against the object's size. Leaves `fh`
    at the start of the sections area.
    """
    start = fh.tell()
    prefix = _read_exactly(fh, PREFIX_SIZE, "the header")
    if prefix[: len(MAGIC)] != MAGIC:
        raise CodecError(f"not a Photon tensor object: magic {prefix[: len(MAGIC)]!r}")
    (length,) = _LENGTH.unpack(prefix[len(MAGIC) :])
    if length > MAX_MANIFEST_BYTES:
        raise CodecError(f"manifest length {length} exceeds {MAX_MANIFEST_BYTES} (corrupt?)")
    manifest = parse_manifest(_read_exactly(fh, length, "the manifest"))
    sections_start = start + PREFIX_SIZE + length
    check_sections(manifest, fh.seek(0, 2) - sections_start)
    fh.seek(sections_start)
    return dataclasses.replace(manifest, sections_start=sections_start)
