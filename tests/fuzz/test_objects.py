"""The object format: decoding random bytes, mutated objects and mutated manifests returns fp32
tensors of the manifest's shapes or raises `CodecError`, nothing else; and the regression tests
of what these fuzzers found."""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

from bandwidth.codec import decode_object, encode_object, read_manifest
from bandwidth.objectfmt import MAGIC
from photon.codecs import CODECS
from photon.errors import CodecError
from tests.fuzz._support import (
    INTERESTING_INTS,
    U32,
    byte_mutations,
    cases,
    join_object,
    split_object,
)


def _sample_tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(6, 5, generator=g),
        "b": torch.randn(17, generator=g) * 1e-3,
        "empty": torch.zeros(0, 3),
    }


def _build_objects() -> list[tuple[bytes, dict[str, torch.Tensor] | None]]:
    tensors, base = _sample_tensors(0), _sample_tensors(1)
    meta = {"round": "3", "silo": "silo-0"}
    objs: list[tuple[bytes, dict[str, torch.Tensor] | None]] = [
        (encode_object(tensors, codec, block_size=8, meta=meta), None) for codec in CODECS
    ]
    objs.append((encode_object(tensors, "xor", base=base, meta=meta), base))
    return objs


OBJECTS = _build_objects()
"""Valid objects of every codec (xor with its base) that the mutators start from."""


def check_decode(data: bytes, base: dict[str, torch.Tensor] | None = None) -> None:
    """Decoding `data` either succeeds with fp32 tensors of the manifest's shapes or raises
    CodecError; anything else fails the test."""
    try:
        with io.BytesIO(data) as fh:
            out = decode_object(fh, base=base)
    except CodecError:
        event("CodecError")
        return
    event("decoded")
    with io.BytesIO(data) as fh:
        shapes = read_manifest(fh).shapes
    assert {k: tuple(t.shape) for k, t in out.items()} == shapes
    assert all(t.dtype == torch.float32 for t in out.values())


@st.composite
def random_objects(draw: st.DrawFn) -> bytes:
    tail = draw(st.binary(max_size=2048))
    prefix = draw(st.sampled_from([b"", MAGIC, MAGIC + struct.pack("<I", len(tail))]))
    return prefix + tail


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.sampled_from(INTERESTING_INTS)
    | st.integers()
    | st.floats()
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
TEXT_SPLICES = st.sampled_from(
    [
        "1" * 5000,
        "[" * 3000,
        '{"a":' * 3000,
        "NaN",
        "-Infinity",
        "1e999",
        "\\ud800",
        "\x00",
        ",",
        "}",
        "]",
        '"',
        ":",
        "0x10",
        "-0",
        "1.0",
        "\ufeff",
    ]
) | st.text(max_size=8)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in items:
        yield from _paths(child, (*prefix, key))


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


@st.composite
def manifest_mutations(draw: st.DrawFn) -> tuple[bytes, dict[str, torch.Tensor] | None]:
    """A valid object whose manifest JSON was edited: a value replaced (by anything, or by an
    extreme integer), a key removed or added, or text spliced in; the length field kept
    consistent or not."""
    data, base = draw(st.sampled_from(OBJECTS))
    doc, sections = split_object(data)
    kind = draw(st.sampled_from(["set", "set_int", "set_shape", "delete", "add", "splice"]))
    path = draw(st.sampled_from([p for p in _paths(doc) if p]))
    parent = _parent(doc, path)
    if kind == "set":
        parent[path[-1]] = draw(JSON_VALUES)
    elif kind == "set_int":
        parent[path[-1]] = draw(st.sampled_from(INTERESTING_INTS) | st.integers())
    elif kind == "set_shape":
        entry = draw(st.sampled_from(doc["tensors"]))
        entry["shape"] = draw(st.lists(st.sampled_from(INTERESTING_INTS), max_size=4))
    elif kind == "delete":
        del parent[path[-1]]
    elif kind == "add" and isinstance(parent, dict):
        parent[draw(st.text(max_size=8))] = draw(JSON_VALUES)
    body = json.dumps(doc, allow_nan=True).encode()
    if kind == "splice":
        text = body.decode()
        at = draw(st.integers(0, len(text)))
        body = (text[:at] + draw(TEXT_SPLICES) + text[at:]).encode("utf-8", "surrogatepass")
    length = draw(st.none() | st.integers(0, len(body) + 8) | st.sampled_from([U32, 2**26]))
    return join_object(body, sections, length), base


def _random_bytes(data: bytes) -> None:
    check_decode(data)
    check_decode(data, base=OBJECTS[-1][1])


def _mutated_object(index: int, data: st.DataObject) -> None:
    obj, base = OBJECTS[index]
    check_decode(data.draw(byte_mutations(obj)), base)


@cases(60, long=2000)
@given(data=random_objects())
def test_random_bytes_raise_only_codec_error(data: bytes) -> None:
    _random_bytes(data)


@cases(80, long=2500)
@given(index=st.integers(0, len(OBJECTS) - 1), data=st.data())
def test_mutated_objects_raise_only_codec_error(index: int, data: st.DataObject) -> None:
    _mutated_object(index, data)


@cases(80, long=2000)
@given(case=manifest_mutations())
def test_mutated_manifests_raise_only_codec_error(
    case: tuple[bytes, dict[str, torch.Tensor] | None],
) -> None:
    check_decode(*case)


def _manifest_object(body: bytes) -> bytes:
    return join_object(body, b"")


def test_huge_integer_literal_in_manifest_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        decode_object(_manifest_object(b'{"format": ' + b"1" * 5000 + b"}"))


def test_deeply_nested_manifest_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        decode_object(_manifest_object(b"[" * 100_000))


@pytest.mark.parametrize("shape", [[0, 2**63], [7, 2**63 - 1, 0]])
def test_dimensions_past_int64_with_a_zero_dimension_are_refused(shape: list[int]) -> None:
    doc, sections = split_object(encode_object({"a": torch.zeros(0)}, "fp32"))
    doc["tensors"][0]["shape"] = shape
    with pytest.raises(CodecError):
        decode_object(join_object(json.dumps(doc).encode(), sections))
