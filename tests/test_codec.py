"""Tensor codecs and the encoded object: round trips, byte layouts, validation."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bandwidth import quantize as q
from bandwidth.codec import (
    decode_object,
    encode_delta_download,
    encode_object,
    iter_tensors,
    quantize_roundtrip,
    read_manifest,
    sha256_file,
    write_object,
)
from bandwidth.objectfmt import MAGIC, PREFIX_SIZE
from photon.codecs import CODECS
from photon.errors import CodecError, ConfigError

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def sample_delta(seed: int = 0) -> dict[str, torch.Tensor]:
    """Delta-like tensors: per-row scales, a heavy-tailed embedding, odd sizes."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.rand(256, 1, generator=g) * 2e-3 + 1e-4
    mix = torch.exp(torch.randn(512, 96, generator=g) * 0.7)  # a scale mixture: heavy tails
    heavy = torch.randn(512, 96, generator=g) * mix * 1e-3
    return {
        "layers.0.w": torch.randn(256, 1024, generator=g) * rows,
        "embed": heavy,
        "norm": torch.randn(1001, generator=g) * 1e-4,
    }


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    shape = draw(st.lists(st.integers(0, 40), min_size=0, max_size=3))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-6, 1e-3, 1.0, 1e4]))
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g) * scale
    if t.numel() and draw(st.booleans()):
        t.view(-1)[: t.numel() // 3] = 0.0  # whole zero blocks
    return t


# -- codecs ---------------------------------------------------------------------------------


@SETTINGS
@given(t=tensors(), codec=st.sampled_from(CODECS), block=st.sampled_from([8, 64, 128, 257]))
def test_object_round_trip_equals_quantize_roundtrip(t: torch.Tensor, codec: str, block: int):
    data = encode_object({"t": t}, codec, block_size=block)
    out = decode_object(data)["t"]
    assert out.dtype == torch.float32 and out.shape == t.shape
    assert torch.equal(bits(out), bits(quantize_roundtrip(t, codec, block)))


def test_fp32_and_xor_are_bit_exact_for_special_values():
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-45, 3.0])
    assert torch.equal(
        bits(decode_object(encode_object({"s": special}, "fp32"))["s"]), bits(special)
    )
    base = {"s": torch.linspace(-1, 1, 7)}
    data = encode_delta_download({"s": special}, base)
    assert torch.equal(bits(decode_object(data, base=base)["s"]), bits(special))


@SETTINGS
@given(new=tensors(), seed=st.integers(0, 1000))
def test_xor_delta_download_is_lossless(new: torch.Tensor, seed: int):
    g = torch.Generator().manual_seed(seed)
    base = {"w": new + torch.randn(new.shape, generator=g) * 1e-3}
    out = decode_object(encode_delta_download({"w": new}, base), base=base)["w"]
    assert torch.equal(bits(out), bits(new))


def test_fp32_section_is_byte_planes():
    x = torch.tensor([1.0, -2.0, 3.5])
    raw = bytes(q.encode_fp32(x))
    le = x.numpy().tobytes()
    assert raw == bytes(le[k + 4 * i] for k in range(4) for i in range(3))


def test_bf16_rounds_to_nearest_even_like_torch():
    x = torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.00390625, -3.14159, 65504.0])
    assert torch.equal(quantize_roundtrip(x, "bf16"), x.to(torch.bfloat16).float())
    assert torch.equal(q.decode_bf16(q.encode_bf16(x), 5), x.to(torch.bfloat16).float())
    assert float(quantize_roundtrip(torch.tensor([1.0 + 2**-8]), "bf16")) == 1.0  # tie -> even


def test_int8_layout_scales_then_values():
    x = torch.tensor([0.5, -1.27, 0.0, 1.27, 2.0])
    raw = bytes(q.encode_int8(x, block_size=8))
    (scale,) = struct.unpack("<f", raw[:4])
    assert scale == pytest.approx(2.0 / 127)
    values = np.frombuffer(raw[4:], dtype=np.int8)
    assert values.tolist() == [32, -81, 0, 81, 127]


def test_int4_layout_packs_two_nibbles_low_first():
    x = torch.tensor([7.0, -7.0, 1.0, -1.0, 3.0])  # absmax 7 -> scale 1
    raw = bytes(q.encode_int4(x, block_size=8))
    assert struct.unpack("<f", raw[:4]) == (1.0,)
    assert raw[4:] == bytes([0x97, 0xF1, 0x03])  # (-7<<4)|7, (-1<<4)|1, pad 0 | 3


@SETTINGS
@given(t=tensors(), block=st.sampled_from([8, 64, 128]))
def test_quantization_error_is_within_half_a_step(t: torch.Tensor, block: int):
    flat = t.reshape(-1)
    for codec, qmax in (("int8", 127), ("int4", 7)):
        err = (quantize_roundtrip(t, codec, block).reshape(-1) - flat).abs()
        for start in range(0, flat.numel(), block):
            absmax = float(flat[start : start + block].abs().max())
            step = absmax / qmax
            assert float(err[start : start + block].max()) <= step / 2 * (1 + 1e-5) + 1e-30


def test_targets_on_a_delta_int8_4x_int4_8x():
    delta = sample_delta()
    n_bytes = 4 * sum(t.numel() for t in delta.values())
    for codec, min_ratio in (("int8", 3.8), ("int4", 7.5)):
        data = encode_object(delta, codec)
        assert n_bytes / len(data) >= min_ratio
    out = decode_object(encode_object(delta, "int8"))
    num = sum(float(((out[k] - t) ** 2).sum()) for k, t in delta.items())
    den = sum(float((t**2).sum()) for t in delta.values())
    assert (num / den) ** 0.5 < 0.01


def test_quantized_codecs_refuse_non_finite_values_naming_the_tensor():
    t = torch.ones(300)
    t[200] = float("nan")
    with pytest.raises(CodecError, match=r"'bad'.*non-finite"):
        encode_object({"ok": torch.ones(3), "bad": t}, "int8")


def test_non_float_tensor_is_refused():
    with pytest.raises(CodecError, match="'ids'"):
        encode_object({"ids": torch.arange(4)}, "fp32")


# -- object format ----------------------------------------------------------------------------


def test_manifest_layout_and_meta():
    delta = sample_delta()
    data = encode_object(delta, "int8", block_size=64, meta={"round": "3", "silo": "a"})
    assert data[:8] == MAGIC
    (length,) = struct.unpack("<I", data[8:12])
    doc = json.loads(data[12 : 12 + length])
    assert doc["format"] == 1 and doc["codec"] == "int8" and doc["block_size"] == 64
    assert doc["meta"] == {"round": "3", "silo": "a"}
    assert [e["name"] for e in doc["tensors"]] == list(delta)
    offset = 0
    for e, t in zip(doc["tensors"], delta.values(), strict=True):
        assert e["shape"] == list(t.shape) and e["dtype"] == "float32"
        assert e["offset"] == offset
        offset += e["length"]
    assert len(data) == 12 + length + offset


def test_write_object_is_durable_and_matches_encode_object(tmp_path: Path):
    delta = sample_delta()
    path = tmp_path / "spool" / "u.obj"
    info = write_object(path, delta, "int4", meta={"r": "1"})
    assert path.read_bytes() == encode_object(delta, "int4", meta={"r": "1"})
    assert info.size == path.stat().st_size
    assert info.digest == sha256_file(path)
    assert [p.name for p in path.parent.iterdir()] == ["u.obj"]
    assert info.manifest.shapes == {k: tuple(v.shape) for k, v in delta.items()}


def test_failed_write_leaves_no_file(tmp_path: Path):
    path = tmp_path / "u.obj"
    with pytest.raises(CodecError):
        write_object(path, {"a": torch.ones(3), "b": torch.tensor([float("inf")])}, "int4")
    assert list(tmp_path.iterdir()) == []


def test_iter_tensors_streams_from_a_file_at_any_position(tmp_path: Path):
    delta = sample_delta()
    path = tmp_path / "o.bin"
    path.write_bytes(b"prefix!" + encode_object(delta, "bf16"))
    with path.open("rb") as fh:
        fh.seek(7)
        manifest = read_manifest(fh)
        names = []
        for name, t in iter_tensors(fh, manifest):
            names.append(name)
            assert torch.equal(t, quantize_roundtrip(delta[name], "bf16"))
    assert names == list(delta)


def test_empty_object_round_trips():
    assert decode_object(encode_object({}, "int8")) == {}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"codec": "fp16"}, ConfigError, "codec 'fp16'"),
        ({"codec": "int8", "block_size": 4}, ConfigError, "block_size 4"),
        ({"codec": "int8", "level": 0}, ConfigError, "zstd level 0"),
        ({"codec": "xor"}, ValueError, "base="),
        ({"codec": "fp32", "base": {}}, ValueError, "base="),
    ],
)
def test_bad_encode_arguments(kwargs: dict, error: type[Exception], match: str):
    with pytest.raises(error, match=match):
        encode_object({"a": torch.ones(2)}, **kwargs)


# -- validation of what is read ---------------------------------------------------------------


def _object_with_manifest(doc: dict, sections: bytes) -> bytes:
    body = json.dumps(doc).encode()
    return MAGIC + struct.pack("<I", len(body)) + body + sections


def _valid_parts() -> tuple[dict, bytes]:
    data = encode_object({"a": torch.arange(6.0).view(2, 3), "b": torch.ones(5)}, "fp32")
    (length,) = struct.unpack("<I", data[8:12])
    return json.loads(data[12 : 12 + length]), data[12 + length :]


def _mutate(path: str, value: object) -> bytes:
    doc, sections = _valid_parts()
    target = doc
    keys = path.split(".")
    for k in keys[:-1]:
        target = target[int(k)] if isinstance(target, list) else target[k]
    target[keys[-1]] = value
    return _object_with_manifest(doc, sections)


@pytest.mark.parametrize(
    ("data_fn", "match"),
    [
        (lambda: b"NOTPHOTN" + b"\x00" * 8, "magic"),
        (lambda: MAGIC + b"\x01", "truncated"),
        (lambda: MAGIC + struct.pack("<I", 2**31), "exceeds"),
        (lambda: MAGIC + struct.pack("<I", 4) + b"{x:1", "JSON"),
        (lambda: MAGIC + struct.pack("<I", 8) + b'{"a":1}', "truncated"),
        (lambda: _mutate("format", 2), "format 2"),
        (lambda: _mutate("format", True), "format True"),
        (lambda: _mutate("codec", "zip"), "codec 'zip'"),
        (lambda: _mutate("block_size", 1.5), "block_size"),
        (lambda: _mutate("meta", {"k": 1}), "meta"),
        (lambda: _mutate("extra", 1), "exactly the keys"),
        (lambda: _mutate("tensors.1.name", "a"), "names repeat"),
        (lambda: _mutate("tensors.1.name", ""), r"tensors\[1\].name"),
        (lambda: _mutate("tensors.0.shape", [2, -3]), "'a': shape"),
        (lambda: _mutate("tensors.0.shape", [True, 6]), "'a': shape"),
        (lambda: _mutate("tensors.0.dtype", "float16"), "'a': dtype"),
        (lambda: _mutate("tensors.0.raw_length", 20), "'a': raw_length"),
        (lambda: _mutate("tensors.0.offset", -1), "'a': offset"),
        (lambda: _mutate("tensors.1.offset", 1), "'b'.*overlaps"),
        (lambda: _mutate("tensors.1.length", 10**6), "'b'.*past the object"),
        (lambda: _object_with_manifest(*_valid_parts()) + b"\x00", "follow the last section"),
        (lambda: _object_with_manifest(*_valid_parts())[:-1], "'b'.*past the object"),
    ],
)
def test_corrupt_objects_raise_codec_error(data_fn, match: str):
    with pytest.raises(CodecError, match=match):
        decode_object(data_fn())


def test_duplicate_json_keys_are_rejected():
    doc, sections = _valid_parts()
    body = json.dumps(doc).encode().replace(b'"codec"', b'"codec": "fp32", "codec"', 1)
    with pytest.raises(CodecError, match="duplicate JSON key"):
        decode_object(MAGIC + struct.pack("<I", len(body)) + body + sections)


def _section_of(data: bytes, index: int) -> tuple[int, int]:
    with io.BytesIO(data) as fh:
        m = read_manifest(fh)
    e = m.tensors[index]
    return m.sections_start + e.offset, e.length


def test_corrupt_zstd_frame_names_the_tensor():
    data = bytearray(encode_object({"a": torch.ones(4), "b": torch.randn(500)}, "fp32"))
    start, length = _section_of(bytes(data), 1)
    data[start + length - 6] ^= 0xFF
    with pytest.raises(CodecError, match="'b': corrupt zstd frame"):
        decode_object(bytes(data))


def test_frame_size_must_match_the_manifest():
    one = encode_object({"a": torch.ones(4)}, "fp32")
    other = encode_object({"a": torch.ones(5)}, "fp32")
    s1, _ = _section_of(one, 0)
    s2, l2 = _section_of(other, 0)
    doc = json.loads(one[PREFIX_SIZE:s1])
    doc["tensors"][0]["length"] = l2
    with pytest.raises(CodecError, match="'a': zstd frame declares 20 bytes, manifest 16"):
        decode_object(_object_with_manifest(doc, other[s2 : s2 + l2]))


def _with_raw_section(codec: str, shape: list[int], raw: bytes) -> bytes:
    import zstandard

    frame = zstandard.ZstdCompressor().compress(raw)
    doc = {
        "format": 1,
        "codec": codec,
        "block_size": 8,
        "meta": {},
        "tensors": [
            {"name": "x", "shape": shape, "dtype": "float32", "offset": 0}
            | {"length": len(frame), "raw_length": len(raw)}
        ],
    }
    return _object_with_manifest(doc, frame)


def test_out_of_range_quantized_values_are_rejected():
    scale = struct.pack("<f", 1.0)
    with pytest.raises(CodecError, match="'x': int8 section holds the int8 value -128"):
        decode_object(_with_raw_section("int8", [2], scale + bytes([0x80, 0x01])))
    with pytest.raises(CodecError, match="'x': int4 section holds the int4 value -8"):
        decode_object(_with_raw_section("int4", [2], scale + bytes([0x81])))
    with pytest.raises(CodecError, match="padding nibble"):
        decode_object(_with_raw_section("int4", [1], scale + bytes([0x11])))


def test_xor_object_needs_the_matching_base():
    base = {"w": torch.ones(3)}
    data = encode_delta_download({"w": torch.zeros(3)}, base)
    with pytest.raises(CodecError, match="'w' is an xor delta"):
        decode_object(data)
    with pytest.raises(CodecError, match="shape"):
        decode_object(data, base={"w": torch.ones(4)})


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_random_corruption_raises_codec_error_or_decodes_what_its_manifest_says(
    data: st.DataObject,
):
    obj = bytearray(encode_object(sample_delta(1) | {"tiny": torch.ones(3)}, "int8"))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(obj) - 1))
        obj[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.sampled_from([len(obj), len(obj) - 1, len(obj) // 2]))
    corrupt = bytes(obj[:cut])
    try:
        out = decode_object(corrupt)
    except CodecError:
        return
    with io.BytesIO(corrupt) as fh:  # it decoded: then it is exactly what its manifest says
        shapes = read_manifest(fh).shapes
    assert {k: tuple(v.shape) for k, v in out.items()} == shapes
    assert all(v.dtype == torch.float32 for v in out.values())


@settings(max_examples=50, deadline=None)
@given(data=st.data(), codec=st.sampled_from(["fp32", "int8", "int4"]))
def test_any_changed_section_byte_is_a_codec_error(data: st.DataObject, codec: str):
    obj = bytearray(encode_object(sample_delta(1), codec))
    with io.BytesIO(bytes(obj)) as fh:
        start = read_manifest(fh).sections_start
    pos = data.draw(st.integers(start, len(obj) - 1))
    obj[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(CodecError):
        decode_object(bytes(obj))
