"""Uploads through the live servicer: malformed streams, complete uploads of invalid updates
signed by the silo, a message over the size limit and a decompression bomb are refused with an
expected status, and the aggregator's journal and checkpoints do not change."""

from __future__ import annotations

import hashlib
import io
import json
import math
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import torch
import zstandard
from hypothesis import assume, event, given
from hypothesis import strategies as st

from bandwidth.codec import decode_object
from photon.signing import sign_digest
from photon.v1 import federation_pb2 as pb
from tests.fuzz._live import RPC_TIMEOUT, Live
from tests.fuzz._support import (
    HEX64,
    TRANSFER_IDS,
    U32,
    U64,
    byte_mutations,
    cases,
    join_object,
    small_or,
    split_object,
)

RANDOM_HEADER_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "transfer_id": TRANSFER_IDS,
    "round": st.sampled_from([0, 0, 1]) | small_or(U32),
    "base_version": st.sampled_from([0, 0, 1]) | small_or(U64),
    "digest": HEX64 | st.text(max_size=70) | HEX64.map(str.upper),
    "size": small_or(U64),
    "offset": small_or(U64),
    "num_tokens": small_or(U64),
    "train_loss": st.floats(),
    "base_eval_loss": st.floats(),
    "train_seconds": st.floats(),
    "signature": st.binary(max_size=80),
}


@st.composite
def upload_headers(draw: st.DrawFn) -> pb.UploadHeader:
    """Either every field random, or a plausible header for the open round with up to three
    fields made random: deep enough to open sessions, shallow enough to stay invalid."""
    if draw(st.booleans()):
        return pb.UploadHeader(**{k: draw(v) for k, v in RANDOM_HEADER_FIELDS.items()})
    size = draw(st.integers(1, 4096))
    fields: dict[str, Any] = {
        "transfer_id": draw(TRANSFER_IDS.filter(bool)),
        "round": 0,
        "base_version": 0,
        "digest": draw(HEX64),
        "size": size,
        "offset": draw(st.just(0) | st.integers(0, size)),  # a new transfer starts at 0
        "num_tokens": draw(st.integers(1, 10**6)),
        "train_loss": 1.0,
        "base_eval_loss": math.nan,
        "train_seconds": 1.0,
    }
    for key in draw(st.lists(st.sampled_from(sorted(RANDOM_HEADER_FIELDS)), max_size=3)):
        fields[key] = draw(RANDOM_HEADER_FIELDS[key])
    return pb.UploadHeader(**fields)


UPLOAD_HEADERS = upload_headers()


@st.composite
def random_chunks(draw: st.DrawFn) -> pb.Chunk:
    data = draw(st.binary(max_size=1024))
    crc = draw(st.sampled_from([zlib.crc32(data)]) | st.integers(0, U32))
    return pb.Chunk(offset=draw(small_or(U64)), data=data, crc32=crc)


UPLOAD_MESSAGES = st.one_of(
    UPLOAD_HEADERS.map(lambda h: pb.UploadChunk(header=h)),
    random_chunks().map(lambda c: pb.UploadChunk(chunk=c)),
)
UPLOAD_STREAMS = st.tuples(
    st.none() | UPLOAD_HEADERS.map(lambda h: pb.UploadChunk(header=h)),
    st.lists(UPLOAD_MESSAGES, max_size=5),
).map(lambda t: ([t[0]] if t[0] is not None else []) + t[1])


def _random_upload(live: Live, messages: list[pb.UploadChunk]) -> None:
    before = live.snapshot()
    _, reply = live.call(lambda: live.stub.Upload(iter(messages), timeout=RPC_TIMEOUT))
    assert reply is None or reply.status != pb.UploadReply.ACCEPTED
    live.check_unchanged(before)


@cases(30, long=1200)
@given(messages=UPLOAD_STREAMS)
def test_malformed_upload_streams_are_refused_cleanly(
    live: Live, messages: list[pb.UploadChunk]
) -> None:
    _random_upload(live, messages)


def is_valid_update(payload: bytes, shapes: dict[str, tuple[int, ...]]) -> bool:
    """What the aggregator must accept: an fp32 object of the model's tensors, all finite."""
    try:
        with io.BytesIO(payload) as fh:
            tensors = decode_object(fh)
            fh.seek(0)
            codec = split_object(fh.read())[0].get("codec")
    except Exception:  # CodecError: not valid
        return False
    same = {k: tuple(v.shape) for k, v in tensors.items()} == shapes
    return codec == "fp32" and same and all(bool(torch.isfinite(t).all()) for t in tensors.values())


@dataclass(frozen=True)
class UploadPlan:
    """A complete, correctly framed upload of an invalid payload, signed (or not), with one
    fault (or none) in its stream."""

    payload: bytes
    signature: str  # good | none | junk | other_round | other_digest
    fault: str  # none | bad_crc | gap | past_end | second_header | cut | resend | empty
    chunk_size: int
    at: int
    num_tokens: int


@st.composite
def upload_plans(draw: st.DrawFn, live: Live) -> UploadPlan:
    kind = draw(st.sampled_from([*sorted(live.payloads), "garbage", "mutated", "mutated"]))
    if kind == "garbage":
        payload = draw(st.binary(min_size=1, max_size=4096))
    elif kind == "mutated":
        payload = draw(byte_mutations(live.valid))
        assume(payload and not is_valid_update(payload, live.shapes))
    else:
        payload = live.payloads[kind]
    event(f"payload {kind}")
    return UploadPlan(
        payload=payload,
        signature=draw(
            st.sampled_from(["good"] * 3 + ["none", "junk", "other_round", "other_digest"])
        ),
        fault=draw(
            st.sampled_from(
                ["none"] * 3
                + ["bad_crc", "gap", "past_end", "second_header", "cut", "resend", "empty"]
            )
        ),
        chunk_size=draw(st.integers(1, 1 << 16)),
        at=draw(st.integers(0, 1 << 20)),
        num_tokens=draw(st.integers(1, 2**40)),
    )


def _signature(live: Live, plan: UploadPlan, digest: str) -> bytes:
    if plan.signature == "none":
        return b""
    if plan.signature == "junk":
        return hashlib.sha512(plan.payload).digest()
    if plan.signature == "other_digest":
        return sign_digest(live.key, hashlib.sha256(plan.payload + b"!").hexdigest(), 0)
    return sign_digest(live.key, digest, 1 if plan.signature == "other_round" else 0)


def _plan_messages(live: Live, plan: UploadPlan) -> list[pb.UploadChunk]:
    data = plan.payload
    step = max(plan.chunk_size, -(-len(data) // 64))  # at most 64 chunks
    digest = hashlib.sha256(data).hexdigest()
    header = pb.UploadHeader(
        transfer_id=f"fz-{uuid.uuid4().hex}",
        round=0,
        base_version=0,
        digest=digest,
        size=len(data),
        offset=0,
        num_tokens=plan.num_tokens,
        train_loss=1.0,
        base_eval_loss=math.nan,
        train_seconds=1.0,
        signature=_signature(live, plan, digest),
    )
    chunks = [
        pb.Chunk(offset=o, data=data[o : o + step], crc32=zlib.crc32(data[o : o + step]))
        for o in range(0, len(data), step)
    ]
    i = plan.at % len(chunks)
    if plan.fault == "bad_crc":
        chunks[i].crc32 ^= 1 << (plan.at % 32)
    elif plan.fault in ("gap", "cut"):
        chunks = chunks[:i] + (chunks[i + 1 :] if plan.fault == "gap" else [])
    elif plan.fault == "past_end":
        chunks.append(pb.Chunk(offset=len(data), data=b"x", crc32=zlib.crc32(b"x")))
    elif plan.fault == "resend":
        chunks.insert(i + 1, chunks[i])
    elif plan.fault == "empty":
        chunks.insert(i, pb.Chunk(offset=chunks[i].offset, data=b"", crc32=0))
    messages = [pb.UploadChunk(header=header)] + [pb.UploadChunk(chunk=c) for c in chunks]
    if plan.fault == "second_header":
        messages.insert(1 + i, pb.UploadChunk(header=header))
    return messages


def _signed_upload(live: Live, plan: UploadPlan) -> None:
    before = live.snapshot()
    messages = _plan_messages(live, plan)
    _, reply = live.call(lambda: live.stub.Upload(iter(messages), timeout=RPC_TIMEOUT))
    assert reply is None or reply.status == pb.UploadReply.INCOMPLETE, "an invalid update got in"
    live.check_unchanged(before)


@cases(30, long=1000)
@given(data=st.data())
def test_invalid_updates_signed_by_the_silo_are_refused(live: Live, data: st.DataObject) -> None:
    _signed_upload(live, data.draw(upload_plans(live)))


def test_a_message_over_the_size_limit_is_refused_by_grpc(live: Live) -> None:
    before = live.snapshot()
    data = bytes(4 << 20)  # server.chunk_bytes is 2 MiB; messages may be 1 MiB larger
    header = pb.UploadHeader(
        transfer_id="too-big",
        round=0,
        base_version=0,
        digest="0" * 64,
        size=len(data),
        num_tokens=1,
    )
    chunk = pb.Chunk(offset=0, data=data, crc32=zlib.crc32(data))
    messages = [pb.UploadChunk(header=header), pb.UploadChunk(chunk=chunk)]
    with pytest.raises(grpc.RpcError) as info:
        live.stub.Upload(iter(messages), timeout=RPC_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    live.check_unchanged(before)


def _bomb(shapes: dict[str, tuple[int, ...]], inflated: str, numel: int) -> bytes:
    """An fp32 object of the model's tensors in which `inflated` declares `numel` values: a
    few kB of zstd that would decompress to 4 * numel bytes."""
    frames, entries, offset = [], [], 0
    for name, shape in shapes.items():
        n = numel if name == inflated else math.prod(shape)
        compressor = zstandard.ZstdCompressor(level=1, write_checksum=True).compressobj(size=4 * n)
        zeros = bytes(min(4 * n, 1 << 22))
        parts = [compressor.compress(zeros) for _ in range(4 * n // len(zeros) if n else 0)]
        frame = b"".join([*parts, compressor.flush()])
        shape_out = [n] if name == inflated else list(shape)
        entries.append(
            {"name": name, "shape": shape_out, "dtype": "float32", "offset": offset}
            | {"length": len(frame), "raw_length": 4 * n}
        )
        frames.append(frame)
        offset += len(frame)
    doc = {"format": 1, "codec": "fp32", "block_size": 128, "meta": {}, "tensors": entries}
    return join_object(json.dumps(doc).encode(), b"".join(frames))


def test_a_decompression_bomb_is_refused_before_it_is_inflated(live: Live) -> None:
    name = sorted(live.shapes)[0]
    bomb = _bomb(live.shapes, name, 1 << 26)  # declares 256 MiB for one tensor
    assert len(bomb) < 100_000
    plan = UploadPlan(
        payload=bomb, signature="good", fault="none", chunk_size=1 << 20, at=0, num_tokens=100
    )
    before = live.snapshot()
    with pytest.raises(grpc.RpcError) as info:
        live.stub.Upload(iter(_plan_messages(live, plan)), timeout=RPC_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Refused by the manifest check, which runs before any section is decompressed.
    assert f"tensor {name!r} has shape [{1 << 26}]" in (info.value.details() or "")
    live.check_unchanged(before)
