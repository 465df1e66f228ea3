"""Pure tensor codecs: one fp32 tensor in, the codec's bytes out, and back.

Each codec is a pair `encode_<codec>(t) -> buffer` / `decode_<codec>(raw, numel) -> fp32`
working on flat tensors; `encode_tensor` / `decode_tensor` dispatch by name and restore shapes.
Nothing here knows about zstd, files or manifests (see `bandwidth.codec`).

Byte layouts (all little-endian, n = numel, nb = ceil(n / block_size)):

    fp32   4 byte planes of the float bits (byte 0 of every value, then byte 1, ...)
    bf16   2 byte planes of the round-to-nearest-even bfloat16 bits
    int8   nb fp32 scales (absmax / 127), then n int8 values in [-127, 127]
    int4   nb fp32 scales (absmax / 7), then ceil(n / 2) bytes of two's-complement nibbles in
           [-7, 7], element 2i in the low nibble; an odd tail's high nibble is 0
    xor    4 byte planes of bits(new) XOR bits(base): lossless, needs the base to decode

Byte planes compress better under zstd than interleaved floats: the exponent bytes of nearby
values repeat. Vectorized torch/numpy only; no Python loop over elements.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import numpy as np
import torch

CODECS = ("fp32", "bf16", "int8", "int4")
"""Codecs for updates and full downloads."""
ALL_CODECS = (*CODECS, "xor")
"""Every codec an object may name; `xor` is the lossless delta against a base the reader holds."""
MIN_BLOCK_SIZE = 8
MAX_BLOCK_SIZE = 65536
DEFAULT_BLOCK_SIZE = 256

Buffer = bytes | bytearray | memoryview

if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for
    raise ImportError("bandwidth.quantize assumes a little-endian host")


def raw_length(codec: str, numel: int, block_size: int) -> int:
    """Bytes the codec produces for `numel` values: what a decoder must find in a section."""
    nblocks = -(-numel // block_size)
    lengths = {
        "fp32": 4 * numel,
        "xor": 4 * numel,
        "bf16": 2 * numel,
        "int8": 4 * nblocks + numel,
        "int4": 4 * nblocks + (numel + 1) // 2,
    }
    if codec not in lengths:
        raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(ALL_CODECS)}")
    return lengths[codec]


def as_flat_fp32(t: torch.Tensor) -> torch.Tensor:
    """A contiguous 1-D fp32 CPU view or copy of a floating-point tensor."""
    if not torch.is_floating_point(t):
        raise TypeError(f"expected a floating-point tensor, got {t.dtype}")
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous().view(-1)


# -- byte planes -------------------------------------------------------------------------------


def _shuffle(u8: torch.Tensor) -> memoryview:
    """(n, w) uint8 -> w planes of n bytes, as one flat buffer."""
    n, width = u8.shape
    out = torch.empty(width, n, dtype=torch.uint8)
    for k in range(width):  # w <= 4 strided copies, each vectorized
        out[k] = u8[:, k]
    return out.view(-1).numpy().data


def _unshuffle(raw: Buffer, width: int, n: int) -> np.ndarray:
    """w planes of n bytes -> a writable (n, w) uint8 array."""
    planes = np.frombuffer(raw, dtype=np.uint8, count=width * n).reshape(width, n)
    return np.stack(list(planes), axis=1)


def encode_fp32(t: torch.Tensor) -> memoryview:
    x = as_flat_fp32(t)
    return _shuffle(x.view(torch.uint8).view(-1, 4))


def decode_fp32(raw: Buffer, numel: int) -> torch.Tensor:
    return torch.from_numpy(_unshuffle(raw, 4, numel).view(np.float32).reshape(numel))


def encode_bf16(t: torch.Tensor) -> memoryview:
    x = as_flat_fp32(t).to(torch.bfloat16)  # torch rounds to nearest, ties to even
    return _shuffle(x.view(torch.uint8).view(-1, 2))


def decode_bf16(raw: Buffer, numel: int) -> torch.Tensor:
    bits = torch.from_numpy(_unshuffle(raw, 2, numel).view(np.int16).reshape(numel))
    return bits.view(torch.bfloat16).float()


def encode_xor(new: torch.Tensor, base: torch.Tensor) -> memoryview:
    x, b = as_flat_fp32(new), as_flat_fp32(base)
    if x.shape != b.shape:
        raise ValueError(f"base has {b.numel()} values, the tensor {x.numel()}")
    bits = x.view(torch.int32) ^ b.view(torch.int32)
    return _shuffle(bits.view(torch.uint8).view(-1, 4))


def decode_xor(raw: Buffer, base: torch.Tensor) -> torch.Tensor:
    b = as_flat_fp32(base)
    bits = torch.from_numpy(_unshuffle(raw, 4, b.numel()).view(np.int32).reshape(b.numel()))
    bits ^= b.view(torch.int32)
    return bits.view(torch.float32)


# -- block-wise absmax quantization ---------------------------------------------------------------


def _blocks(x: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split flat `x` into a (full blocks, block_size) view and the short tail."""
    full = x.numel() // block_size * block_size
    return x[:full].view(-1, block_size), x[full:]


def quantize_blocks(
    x: torch.Tensor, block_size: int, qmax: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat fp32 -> (scales fp32 [nb], values int8 [n]) with scale = absmax / qmax.

    Raises ValueError when a value is not finite: no scale can represent it.
    """
    head, tail = _blocks(x, block_size)
    absmax = head.abs().amax(dim=1)
    if tail.numel():
        absmax = torch.cat((absmax, tail.abs().amax().view(1)))
    if not bool(torch.isfinite(absmax).all()):
        raise ValueError("has non-finite values, which a quantized codec cannot represent")
    scales = absmax / qmax
    divisor = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.empty(x.numel(), dtype=torch.int8)
    qhead, qtail = _blocks(q, block_size)
    qhead.copy_((head / divisor[: head.shape[0], None]).round_().clamp_(-qmax, qmax))
    if tail.numel():
        qtail.copy_((tail / divisor[-1]).round_().clamp_(-qmax, qmax))
    return scales, q


def dequantize_blocks(scales: torch.Tensor, qf: torch.Tensor, block_size: int) -> torch.Tensor:
    """values * scale per block, in place on the flat fp32 `qf`; returns it.

    The sender's `quantize_roundtrip` and the receiver's decoder both end here, so the sender's
    view of what the receiver decodes is bit-exact.
    """
    head, tail = _blocks(qf, block_size)
    head.mul_(scales[: head.shape[0], None])
    if tail.numel():
        tail.mul_(scales[-1])
    return qf


def _pack_scales(scales: torch.Tensor, payload: torch.Tensor) -> memoryview:
    out = torch.empty(4 * scales.numel() + payload.numel(), dtype=torch.uint8)
    out[: 4 * scales.numel()] = scales.view(torch.uint8)
    out[4 * scales.numel() :] = payload.view(torch.uint8)
    return out.numpy().data


def _read_scales(raw: Buffer, numel: int, block_size: int) -> tuple[torch.Tensor, int]:
    nblocks = -(-numel // block_size)
    scales = torch.from_numpy(np.frombuffer(raw, dtype=np.float32, count=nblocks).copy())
    return scales, 4 * nblocks


def encode_int8(t: torch.Tensor, block_size: int = DEFAULT_BLOCK_SIZE) -> memoryview:
    scales, q = quantize_blocks(as_flat_fp32(t), block_size, 127)
    return _pack_scales(scales, q)


def decode_int8(raw: Buffer, numel: int, block_size: int = DEFAULT_BLOCK_SIZE) -> torch.Tensor:
    scales, off = _read_scales(raw, numel, block_size)
    values = np.frombuffer(raw, dtype=np.int8, count=numel, offset=off).astype(np.float32)
    qf = torch.from_numpy(values)
    if bool((qf == -128).any()):
        raise ValueError("holds the int8 value -128, outside the codec's range [-127, 127]")
    return dequantize_blocks(scales, qf, block_size)


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    if q.numel() % 2:
        q = torch.cat((q, q.new_zeros(1)))
    u = q.view(torch.uint8)
    return (u[0::2] & 0x0F) | ((u[1::2] & 0x0F) << 4)


def encode_int4(t: torch.Tensor, block_size: int = DEFAULT_BLOCK_SIZE) -> memoryview:
    scales, q = quantize_blocks(as_flat_fp32(t), block_size, 7)
    return _pack_scales(scales, _pack_nibbles(q))


def decode_int4(raw: Buffer, numel: int, block_size: int = DEFAULT_BLOCK_SIZE) -> torch.Tensor:
    scales, off = _read_scales(raw, numel, block_size)
    count = (numel + 1) // 2
    packed = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, count=count, offset=off).copy())
    nibbles = torch.stack((packed & 0x0F, packed >> 4), dim=1).view(-1)
    if numel % 2 and int(nibbles[-1]) != 0:
        raise ValueError("has a non-zero padding nibble")
    nibbles = nibbles[:numel]
    if bool((nibbles == 8).any()):
        raise ValueError("holds the int4 value -8, outside the codec's range [-7, 7]")
    qf = (nibbles ^ 8).float().sub_(8)  # two's-complement nibble -> -8..7
    return dequantize_blocks(scales, qf, block_size)


# -- dispatch ------------------------------------------------------------------------------------


def encode_tensor(
    codec: str, t: torch.Tensor, block_size: int, base: torch.Tensor | None = None
) -> memoryview:
    """The codec's bytes for one tensor (any shape; flattened in C order)."""
    if codec == "xor":
        if base is None:
            raise ValueError("the xor codec needs the base tensor")
        return encode_xor(t, base)
    if codec in ("int8", "int4"):
        return (encode_int8 if codec == "int8" else encode_int4)(t, block_size)
    if codec in ("fp32", "bf16"):
        return (encode_fp32 if codec == "fp32" else encode_bf16)(t)
    raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(ALL_CODECS)}")


def decode_tensor(
    codec: str,
    raw: Buffer,
    shape: Sequence[int],
    block_size: int,
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """fp32 tensor of `shape` from the codec's bytes; ValueError when they are inconsistent."""
    numel = math.prod(shape)
    expected = raw_length(codec, numel, block_size)
    if memoryview(raw).nbytes != expected:
        raise ValueError(f"{codec} needs {expected} bytes for shape {list(shape)}")
    if codec == "xor":
        if base is None or base.numel() != numel:
            raise ValueError("the xor codec needs a base tensor of the same shape")
        flat = decode_xor(raw, base)
    elif codec in ("int8", "int4"):
        flat = (decode_int8 if codec == "int8" else decode_int4)(raw, numel, block_size)
    else:
        flat = (decode_fp32 if codec == "fp32" else decode_bf16)(raw, numel)
    return flat.view(tuple(shape))


def quantize_roundtrip(
    t: torch.Tensor, codec: str, block_size: int = DEFAULT_BLOCK_SIZE
) -> torch.Tensor:
    """What a receiver decodes from `t` under `codec`, computed without bytes or zstd.

    Bit-identical to `decode_tensor(codec, encode_tensor(codec, t, ...), ...)`; error feedback
    uses it to keep the residual `t - quantize_roundtrip(t)`.
    """
    x = as_flat_fp32(t)
    if codec == "fp32":
        out = x.clone()
    elif codec == "bf16":
        out = x.to(torch.bfloat16).float()
    elif codec in ("int8", "int4"):
        scales, q = quantize_blocks(x, block_size, 127 if codec == "int8" else 7)
        out = dequantize_blocks(scales, q.float(), block_size)
    else:
        raise ValueError(f"quantize_roundtrip supports {', '.join(CODECS)}, not {codec!r}")
    return out.view(t.shape)
