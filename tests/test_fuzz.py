"""Fuzzing what crosses the network: encoded objects, chunk streams, the live servicer, and
the audit log.

(a) `bandwidth.codec` decoding of random bytes, mutated objects and mutated manifests raises
    only `CodecError`; (b) a `PartialFile` fed arbitrary chunk sequences raises only
    `TransferError`s and never finalizes a file whose digest is wrong; (c) a real aggregator
    (`AggregatorDaemon` in this process, mTLS on loopback) fed malformed Upload, Download,
    UploadStatus, ReportEval, Join, Heartbeat and raw non-protobuf messages, and invalid or
    forged updates signed by silo-0, answers only with the expected status codes, keeps
    serving, and its journal and checkpoints do not change; (d) editing any audit line that
    has a successor breaks the hash chain.

The default run is small. The slow variants (12,000 cases in all, see SLOW_CASES) run with

    .venv/bin/python -m pytest -m slow tests/test_fuzz.py

Bugs the fuzzers found that are not fixed yet are listed in KNOWN_BUGS / KNOWN_GRPC_BUGS /
KNOWN_GAPS: each is pinned by a strict xfail test (which fails once the bug is fixed: then
delete the entry and the marker), and the fuzzers tolerate exactly that form meanwhile.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
import tempfile
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
import zstandard
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from aggregator.audit import GENESIS, AuditLog, read_audit
from aggregator.config import load_aggregator_config
from aggregator.server import AggregatorDaemon
from aggregator.store import Store
from bandwidth.chunking import PartialFile, sha256_file
from bandwidth.codec import CODECS, decode_object, encode_object, read_manifest
from bandwidth.objectfmt import MAGIC, PREFIX_SIZE
from photon import pki
from photon.errors import CodecError, TransferError
from photon.signing import sign_digest
from photon.tls import TLSFiles, channel_credentials
from photon.tokenizer import ByteTokenizer
from photon.v1 import federation_pb2 as pb
from photon.v1 import federation_pb2_grpc as pb_grpc
from tests.harness import Federation, make_federation, wait_for

# -- settings ---------------------------------------------------------------------------------

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


def cases(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=_QUIET)


_ONLY_WHEN_SELECTED = pytest.mark.skipif(
    "'slow' not in (config.getoption('markexpr') or '')",
    reason="10,000+ fuzz cases: run with `pytest -m slow tests/test_fuzz.py`",
)


def slow(test: Callable[..., None]) -> Callable[..., None]:
    """A slow fuzzer: marked `slow`, and skipped unless `-m` selects slow tests (so a plain
    `pytest` stays fast)."""
    return pytest.mark.slow(_ONLY_WHEN_SELECTED(test))


SLOW_CASES = {
    "random_bytes": 2000,
    "mutated_objects": 2500,
    "mutated_manifests": 2000,
    "partial_file": 1500,
    "grpc_uploads": 1200,
    "grpc_signed_uploads": 1000,
    "grpc_downloads": 500,
    "grpc_unary": 500,
    "grpc_raw": 300,
    "audit_log": 500,
}
"""Examples per slow fuzzer: 12,000 in all, 3,500 of them through gRPC."""

U32, U64 = 2**32 - 1, 2**64 - 1
INTERESTING_INTS = (0, 1, 7, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 2**70, -1, -(2**63))

# -- known bugs (remove an entry, and its xfail marker, once fixed) -----------------------------

# All bugs the fuzzers found are fixed; their regression tests follow the fuzzers below.
KNOWN_BUGS: dict[str, tuple[tuple[type[BaseException], str], ...]] = {}


KNOWN_GRPC_BUGS: dict[str, tuple[str, ...]] = {}

KNOWN_GAPS: dict[str, str] = {}


def known_bug(exc: BaseException) -> str | None:
    """The KNOWN_BUGS entry `exc` is an instance of, if any."""
    for name, forms in KNOWN_BUGS.items():
        if any(isinstance(exc, kind) and text in str(exc) for kind, text in forms):
            return name
    return None


def known_grpc_bug(request: Any, code: grpc.StatusCode) -> str | None:
    if code != grpc.StatusCode.INTERNAL:
        return None
    for name, fields in KNOWN_GRPC_BUGS.items():
        if any(getattr(request, f, 0) >= 2**63 for f in fields):
            return name
    return None


# -- (a) the object format --------------------------------------------------------------------


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
    except Exception as exc:
        name = known_bug(exc)
        if name is None:
            raise
        event(f"known bug {name}")
        return
    event("decoded")
    with io.BytesIO(data) as fh:
        shapes = read_manifest(fh).shapes
    assert {k: tuple(t.shape) for k, t in out.items()} == shapes
    assert all(t.dtype == torch.float32 for t in out.values())


def split_object(data: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack("<I", data[len(MAGIC) : PREFIX_SIZE])
    return json.loads(data[PREFIX_SIZE : PREFIX_SIZE + length]), data[PREFIX_SIZE + length :]


def join_object(body: bytes, sections: bytes, length: int | None = None) -> bytes:
    return MAGIC + struct.pack("<I", len(body) if length is None else length) + body + sections


@st.composite
def random_objects(draw: st.DrawFn) -> bytes:
    tail = draw(st.binary(max_size=2048))
    prefix = draw(st.sampled_from([b"", MAGIC, MAGIC + struct.pack("<I", len(tail))]))
    return prefix + tail


@st.composite
def byte_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """1-4 of: bit flip, byte set, truncation, deletion, insertion, duplication."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not buf:
            break
        pos = draw(st.integers(0, len(buf) - 1))
        kind = draw(st.sampled_from(["flip", "set", "truncate", "delete", "insert", "dup"]))
        if kind == "flip":
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            buf[pos] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "delete":
            del buf[pos : pos + draw(st.integers(1, 16))]
        elif kind == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            buf[pos:pos] = buf[pos : pos + draw(st.integers(1, 64))]
    return bytes(buf)


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


@cases(60)
@given(data=random_objects())
def test_random_bytes_raise_only_codec_error(data: bytes) -> None:
    _random_bytes(data)


@slow
@cases(SLOW_CASES["random_bytes"])
@given(data=random_objects())
def test_random_bytes_raise_only_codec_error_slow(data: bytes) -> None:
    _random_bytes(data)


@cases(80)
@given(index=st.integers(0, len(OBJECTS) - 1), data=st.data())
def test_mutated_objects_raise_only_codec_error(index: int, data: st.DataObject) -> None:
    _mutated_object(index, data)


@slow
@cases(SLOW_CASES["mutated_objects"])
@given(index=st.integers(0, len(OBJECTS) - 1), data=st.data())
def test_mutated_objects_raise_only_codec_error_slow(index: int, data: st.DataObject) -> None:
    _mutated_object(index, data)


@cases(80)
@given(case=manifest_mutations())
def test_mutated_manifests_raise_only_codec_error(
    case: tuple[bytes, dict[str, torch.Tensor] | None],
) -> None:
    check_decode(*case)


@slow
@cases(SLOW_CASES["mutated_manifests"])
@given(case=manifest_mutations())
def test_mutated_manifests_raise_only_codec_error_slow(
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


# -- (b) resumable receiving files ------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    kind: str  # chunk | reopen | sync | finalize
    offset: int = 0
    data: bytes = b""
    crc: int = 0


@st.composite
def transfer_plans(draw: st.DrawFn) -> tuple[bytes, int, str, list[Op]]:
    """An object, the size and digest a receiver is told (right or wrong), and a sequence of
    chunks (genuine, re-sent, misplaced, corrupt, random) with reopens and finalizes."""
    source = draw(st.binary(max_size=3000))
    size = draw(st.sampled_from([len(source)] * 3) | st.integers(-2, 4000))
    good = hashlib.sha256(source).hexdigest()
    digest = draw(
        st.sampled_from([good, good, good.upper(), hashlib.sha256(source + b"x").hexdigest()])
        | st.text(max_size=70)
    )
    ops: list[Op] = []
    for _ in range(draw(st.integers(0, 14))):
        kind = draw(
            st.sampled_from(["genuine"] * 4 + ["corrupt", "random", "reopen", "sync", "finalize"])
        )
        if kind in ("genuine", "corrupt"):
            start = draw(st.integers(0, len(source)))
            data = source[start : start + draw(st.integers(0, 700))]
            crc = zlib.crc32(data)
            if kind == "corrupt":
                crc ^= draw(st.integers(1, U32))  # any other CRC
            ops.append(Op("chunk", start, data, crc))
        elif kind == "random":
            data = draw(st.binary(max_size=700))
            crc = draw(st.sampled_from([zlib.crc32(data)]) | st.integers(0, U32))
            ops.append(Op("chunk", draw(st.integers(-5, 4100)), data, crc))
        else:
            ops.append(Op(kind))
    return source, size, digest, ops


def _run_transfer(plan: tuple[bytes, int, str, list[Op]]) -> None:
    _source, size, digest, ops = plan
    with tempfile.TemporaryDirectory() as tmp:
        final = Path(tmp) / "obj.upd"
        finalized = False

        def opened() -> PartialFile | None:
            try:
                return PartialFile(
                    final, size=size, digest=digest, transfer_id="fz", sync_every=512
                )
            except TransferError:
                return None

        part = opened()
        for op in ops:
            if part is None:
                break
            try:
                if op.kind == "chunk":
                    part.write_chunk(op.offset, op.data, op.crc)
                elif op.kind == "reopen":
                    part.close()
                    part = opened()
                elif op.kind == "sync":
                    part.sync()
                else:
                    assert part.finalize() == final
                    finalized = True
            except TransferError:
                pass
            assert final.exists() == finalized, "only a successful finalize makes the file"
            if finalized:
                assert sha256_file(final) == digest.lower() and final.stat().st_size == size
        if part is not None:
            part.close()


@cases(60)
@given(plan=transfer_plans())
def test_partial_file_raises_only_transfer_errors_and_never_keeps_bad_bytes(
    plan: tuple[bytes, int, str, list[Op]],
) -> None:
    _run_transfer(plan)


@slow
@cases(SLOW_CASES["partial_file"])
@given(plan=transfer_plans())
def test_partial_file_raises_only_transfer_errors_and_never_keeps_bad_bytes_slow(
    plan: tuple[bytes, int, str, list[Op]],
) -> None:
    _run_transfer(plan)


# -- (c) the live servicer --------------------------------------------------------------------

RPC_TIMEOUT = 30.0  # a safety net against hangs, not an assertion about speed
EXPECTED_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
    }
)


class Blob(bytes):
    """Bytes with a short repr (strategies built from large payloads print their arguments)."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes, sha256 {hashlib.sha256(self).hexdigest()[:12]}>"


@dataclass(repr=False)
class Live:
    """A running aggregator (in this process: `AggregatorDaemon` serving on a port, its driver
    in a thread) with round 0 open, and silo-0 joined to it over mTLS."""

    fed: Federation
    driver: threading.Thread
    """The aggregator's round driver (`AggregatorDaemon.serve`), in this process."""
    channel: grpc.Channel
    stub: pb_grpc.FederationStub
    key: Path
    payloads: dict[str, bytes]
    """Well-formed but invalid updates, by what is wrong with them."""
    valid: bytes
    """A valid update (all zeros): only ever sent mutated."""
    shapes: dict[str, tuple[int, ...]]

    def __repr__(self) -> str:
        return f"Live(aggregator at {self.fed.port})"

    def snapshot(self) -> tuple[object, ...]:
        store = Store(self.fed.state_dir / "journal.sqlite")
        try:
            updates, rounds = store.all_updates(), store.rounds()
        finally:
            store.close()
        checkpoints = sorted((self.fed.state_dir / "checkpoints").glob("*.safetensors"))
        return (
            updates,
            [(r.round, r.base_version, r.selected, r.closed_at, r.outcome) for r in rounds],
            [(p.name, sha256_file(p)) for p in checkpoints],
        )

    def call(self, rpc: Callable[[], Any], request: Any = None) -> tuple[grpc.StatusCode, Any]:
        """Run an RPC: (OK, its reply), or (code, None) for one of the expected refusals."""
        try:
            reply = rpc()
        except grpc.RpcError as exc:
            code = exc.code()
            if code in EXPECTED_CODES:
                event(f"status {code.name}")
                return code, None
            bug = known_grpc_bug(request, code)
            assert bug is not None, f"{code.name}: {exc.details()}"
            event(f"known bug {bug}")
            return code, None
        event("status OK")
        return grpc.StatusCode.OK, reply

    def check_unchanged(self, before: tuple[object, ...]) -> None:
        """The aggregator still serves, and its journal and checkpoints are as they were."""
        assert self.driver.is_alive(), "the aggregator's round driver stopped"
        self.stub.Status(pb.StatusRequest(), timeout=RPC_TIMEOUT)
        assert self.snapshot() == before, "a refused request changed the aggregator's state"


def _download(stub: pb_grpc.FederationStub, version: int) -> bytes:
    stream = stub.Download(
        pb.DownloadRequest(version=version, have_version=-1), timeout=RPC_TIMEOUT
    )
    header, *chunks = list(stream)
    data = b"".join(c.chunk.data for c in chunks)
    assert hashlib.sha256(data).hexdigest() == header.header.digest
    return data


def _invalid_payloads(params: dict[str, torch.Tensor]) -> dict[str, bytes]:
    zeros = {k: torch.zeros_like(v) for k, v in params.items()}
    first, second = sorted(zeros)[:2]
    nan, inf = dict(zeros), dict(zeros)
    nan[first] = zeros[first].clone()
    nan[first].view(-1)[0] = math.nan
    inf[second] = torch.full_like(zeros[second], -math.inf)
    missing = {k: v for k, v in zeros.items() if k != first}
    reshaped = dict(zeros, **{first: zeros[first].reshape(-1, 1)})
    return {
        "nan": Blob(encode_object(nan, "fp32")),
        "inf": Blob(encode_object(inf, "fp32")),
        "other_codec": Blob(encode_object(zeros, "int8")),
        "missing_tensor": Blob(encode_object(missing, "fp32")),
        "extra_tensor": Blob(encode_object(dict(zeros, extra=torch.zeros(3)), "fp32")),
        "wrong_shape": Blob(encode_object(reshaped, "fp32")),
    }


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("fuzz-federation")
    # No request-rate limit and no upload quota: the fuzzers send hundreds of requests a
    # second and abandon hundreds of transfers, and a refusal for rate or quota would hide what
    # the request itself does (tests/test_limits.py and test_starvation*.py cover the limits).
    fed = make_federation(
        root,
        silos=1,
        rounds=2,
        extra_server="max_requests_per_s = 0\nmax_open_uploads_per_silo = 1000000\n"
        "max_spool_bytes_per_silo = 1000000000000",
    )
    daemon = AggregatorDaemon(load_aggregator_config(root / "aggregator.toml"))
    daemon.start()
    stop = threading.Event()
    driver = threading.Thread(target=daemon.serve, args=(stop,), name="fuzz-aggregator")
    driver.start()
    try:
        creds = channel_credentials(TLSFiles.for_silo(root / "certs", "silo-0"))
        with grpc.secure_channel(f"localhost:{daemon.port}", creds) as channel:
            stub = pb_grpc.FederationStub(channel)
            join = pb.JoinRequest(tokenizer_digest=ByteTokenizer().digest(), num_train_tokens=10)
            stub.Join(join, timeout=RPC_TIMEOUT)

            def round_open() -> bool:
                task = stub.GetTask(pb.GetTaskRequest(held_version=-1), timeout=RPC_TIMEOUT)
                return bool(task.kind == pb.Task.TRAIN)

            wait_for(round_open, 60, "round 0 to open")
            params = decode_object(_download(stub, 0))
            yield Live(
                fed=fed,
                driver=driver,
                channel=channel,
                stub=stub,
                key=pki.silo_paths(root / "certs", "silo-0")[1],
                payloads=_invalid_payloads(params),
                valid=Blob(
                    encode_object({k: torch.zeros_like(v) for k, v in params.items()}, "fp32")
                ),
                shapes={k: tuple(v.shape) for k, v in params.items()},
            )
    finally:
        stop.set()
        driver.join(timeout=60)


def small_or(hi: int, lo: int = 0) -> st.SearchStrategy[int]:
    """Mostly plausible values, sometimes anything the field can carry."""
    extremes = [v for v in (hi, 2**63, 2**63 - 1, 2**31) if v <= hi]
    return (
        st.integers(lo, 4) | st.integers(lo, 4096) | st.sampled_from(extremes) | st.integers(lo, hi)
    )


HEX64 = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)
TRANSFER_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,16}", fullmatch=True) | st.text(
    max_size=140
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


@cases(30)
@given(messages=UPLOAD_STREAMS)
def test_malformed_upload_streams_are_refused_cleanly(
    live: Live, messages: list[pb.UploadChunk]
) -> None:
    _random_upload(live, messages)


@slow
@cases(SLOW_CASES["grpc_uploads"])
@given(messages=UPLOAD_STREAMS)
def test_malformed_upload_streams_are_refused_cleanly_slow(
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
    except Exception:  # CodecError, or a KNOWN_BUGS escape: not valid either way
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


@cases(30)
@given(data=st.data())
def test_invalid_updates_signed_by_the_silo_are_refused(live: Live, data: st.DataObject) -> None:
    _signed_upload(live, data.draw(upload_plans(live)))


@slow
@cases(SLOW_CASES["grpc_signed_uploads"])
@given(data=st.data())
def test_invalid_updates_signed_by_the_silo_are_refused_slow(
    live: Live, data: st.DataObject
) -> None:
    _signed_upload(live, data.draw(upload_plans(live)))


DOWNLOADS = st.builds(
    pb.DownloadRequest,
    version=st.integers(0, 3) | small_or(U64),
    offset=small_or(U64),
    have_version=st.integers(-3, 3) | st.integers(-(2**63), 2**63 - 1),
)


def _download_fuzz(live: Live, request: pb.DownloadRequest) -> None:
    before = live.snapshot()
    code, reply = live.call(lambda: list(live.stub.Download(request, timeout=RPC_TIMEOUT)), request)
    if code == grpc.StatusCode.OK:
        header, *chunks = reply
        assert header.WhichOneof("body") == "header" and header.header.size >= request.offset
        offset = request.offset
        for c in (m.chunk for m in chunks):
            assert c.offset == offset and zlib.crc32(c.data) == c.crc32
            offset += len(c.data)
        assert offset == header.header.size
    live.check_unchanged(before)


@cases(30)
@given(request=DOWNLOADS)
def test_download_requests_are_answered_or_refused_cleanly(
    live: Live, request: pb.DownloadRequest
) -> None:
    _download_fuzz(live, request)


@slow
@cases(SLOW_CASES["grpc_downloads"])
@given(request=DOWNLOADS)
def test_download_requests_are_answered_or_refused_cleanly_slow(
    live: Live, request: pb.DownloadRequest
) -> None:
    _download_fuzz(live, request)


UNARY = st.one_of(
    st.tuples(
        st.just("ReportEval"),
        st.builds(
            pb.EvalReport,
            version=st.integers(0, 2) | small_or(U64),
            loss=st.floats(),
            tokens=small_or(U64),
        ),
    ),
    st.tuples(st.just("UploadStatus"), st.builds(pb.UploadStatusRequest, transfer_id=TRANSFER_IDS)),
    st.tuples(
        st.just("Join"),
        st.builds(
            pb.JoinRequest,
            agent_version=st.text(max_size=20),
            tokenizer_digest=st.sampled_from([ByteTokenizer().digest(), ""]) | st.text(max_size=70),
            num_train_tokens=small_or(U64),
        ),
    ),
    st.tuples(
        st.just("Heartbeat"),
        st.builds(
            pb.HeartbeatRequest,
            round=small_or(U32),
            step=small_or(U64),
            loss=st.floats(),
            phase=st.text(max_size=20),
        ),
    ),
    st.tuples(st.just("Status"), st.just(pb.StatusRequest())),
)


def _unary(live: Live, name: str, request: Any) -> None:
    before = live.snapshot()
    rpc = getattr(live.stub, name)
    _, reply = live.call(lambda: rpc(request, timeout=RPC_TIMEOUT), request)
    if name == "UploadStatus" and reply is not None:
        assert not reply.accepted
    live.check_unchanged(before)


@cases(30)
@given(call=UNARY)
def test_unary_requests_with_random_values_are_refused_cleanly(
    live: Live, call: tuple[str, Any]
) -> None:
    _unary(live, *call)


@slow
@cases(SLOW_CASES["grpc_unary"])
@given(call=UNARY)
def test_unary_requests_with_random_values_are_refused_cleanly_slow(
    live: Live, call: tuple[str, Any]
) -> None:
    _unary(live, *call)


REQUEST_TYPES: dict[str, tuple[str, type[Any]]] = {
    "Join": ("unary_unary", pb.JoinRequest),
    "Heartbeat": ("unary_unary", pb.HeartbeatRequest),
    "GetTask": ("unary_unary", pb.GetTaskRequest),
    "UploadStatus": ("unary_unary", pb.UploadStatusRequest),
    "ReportEval": ("unary_unary", pb.EvalReport),
    "Status": ("unary_unary", pb.StatusRequest),
    "Download": ("unary_stream", pb.DownloadRequest),
    "Upload": ("stream_unary", pb.UploadChunk),
}
DESERIALIZE_FAILED = "Exception deserializing request!"
"""grpcio's own answer (INTERNAL) to bytes that are not the method's message: Photon's
handlers never see them."""


def _parsed(message_type: type[Any], raw: bytes) -> Any:
    try:
        return message_type.FromString(raw)
    except Exception:  # google.protobuf.message.DecodeError
        return None


def _raw_bytes(live: Live, method: str, raws: list[bytes]) -> None:
    before = live.snapshot()
    kind, message_type = REQUEST_TYPES[method]
    rpc = getattr(live.channel, kind)(f"/photon.v1.Federation/{method}")
    try:
        if kind == "stream_unary":
            rpc(iter(raws), timeout=RPC_TIMEOUT)
        elif kind == "unary_stream":
            list(rpc(raws[0], timeout=RPC_TIMEOUT))
        else:
            rpc(raws[0], timeout=RPC_TIMEOUT)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
        request = _parsed(message_type, raws[0])
        undecodable = code == grpc.StatusCode.INTERNAL and details == DESERIALIZE_FAILED
        assert code in EXPECTED_CODES or undecodable or known_grpc_bug(request, code), (
            f"{code.name}: {details}"
        )
        event("undecodable" if undecodable else f"status {code.name}")
    else:
        event("status OK")
    live.check_unchanged(before)


RAW_CALLS = st.tuples(
    st.sampled_from(sorted(REQUEST_TYPES)),
    st.lists(st.binary(max_size=300), min_size=1, max_size=4),
)


@cases(30)
@given(call=RAW_CALLS)
def test_bytes_that_are_not_protobuf_are_refused_cleanly(
    live: Live, call: tuple[str, list[bytes]]
) -> None:
    _raw_bytes(live, *call)


@slow
@cases(SLOW_CASES["grpc_raw"])
@given(call=RAW_CALLS)
def test_bytes_that_are_not_protobuf_are_refused_cleanly_slow(
    live: Live, call: tuple[str, list[bytes]]
) -> None:
    _raw_bytes(live, *call)


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("ReportEval", pb.EvalReport(version=0, loss=1.0, tokens=2**63)),
        ("Join", pb.JoinRequest(tokenizer_digest=ByteTokenizer().digest(), num_train_tokens=2**63)),
    ],
)
def test_counts_past_int64_are_invalid_arguments(live: Live, method: str, request_: Any) -> None:
    with pytest.raises(grpc.RpcError) as info:
        getattr(live.stub, method)(request_, timeout=RPC_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- oversized input through the live servicer (see tests/test_security.py for the rest) ------


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


# -- the audit log's hash chain ---------------------------------------------------------------


@dataclass(frozen=True)
class Tamper:
    lines: int
    kind: str  # edit | delete | swap | insert | flip
    at: int  # a line that has a successor
    other: int
    field: str
    byte: int


TAMPERING = st.builds(
    Tamper,
    lines=st.integers(2, 8),
    kind=st.sampled_from(["edit", "delete", "swap", "insert", "flip"]),
    at=st.integers(0, 100),
    other=st.integers(0, 100),
    field=st.sampled_from(["silo", "round", "digest", "verdict", "reason", "signature", "time"]),
    byte=st.integers(0, 10_000),
)


def _forged(line: str, field: str) -> str:
    entry = json.loads(line)
    value = entry[field]
    entry[field] = value + 1 if isinstance(value, int | float) else f"{value}x"
    return json.dumps(entry, sort_keys=True)


def _tamper(t: Tamper) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        log = AuditLog(path)
        for i in range(t.lines):
            verdict = "accepted" if i % 2 else "rejected"
            log.record(
                silo=f"silo-{i % 3}", round=i, digest=f"{i:064x}", signature=b"s", verdict=verdict
            )
        lines = path.read_text().splitlines()
        i = t.at % (t.lines - 1)  # never the last line: see test_known_gap_...
        if t.kind == "edit":
            lines[i] = _forged(lines[i], t.field)
        elif t.kind == "delete":
            del lines[i]
        elif t.kind == "swap":
            j = (i + 1 + t.other % (t.lines - 1)) % t.lines
            lines[i], lines[j] = lines[j], lines[i]
        elif t.kind == "insert":  # a forged entry chained correctly to its predecessor
            prev = hashlib.sha256(lines[i - 1].encode()).hexdigest() if i else GENESIS
            lines.insert(
                i,
                json.dumps(dict(json.loads(_forged(lines[i], t.field)), prev=prev), sort_keys=True),
            )
        else:
            raw = bytearray(lines[i].encode())
            raw[t.byte % len(raw)] ^= 0x01
            lines[i] = raw.decode(errors="replace")
        assume(lines != path.read_text().splitlines())
        path.write_text("\n".join(lines) + "\n")
        _, broken = read_audit(path)
        assert broken is not None and broken <= i + 1, f"{t.kind} at line {i} went unnoticed"


@cases(25)
@given(t=TAMPERING)
def test_editing_any_audit_line_but_the_last_breaks_the_chain(t: Tamper) -> None:
    _tamper(t)


@slow
@cases(SLOW_CASES["audit_log"])
@given(t=TAMPERING)
def test_editing_any_audit_line_but_the_last_breaks_the_chain_slow(t: Tamper) -> None:
    _tamper(t)


def test_a_cut_audit_tail_is_detected_against_the_anchored_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    heads: list[str] = []
    log = AuditLog(path, anchor=heads.append)
    for i in range(3):
        log.record(silo="silo-0", round=i, digest=f"{i:064x}", signature=b"", verdict="accepted")
    assert read_audit(path, head=heads[-1])[1] is None
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    assert read_audit(path, head=heads[-1])[1] == 2
