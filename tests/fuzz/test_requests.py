"""Downloads, unary requests with random values and raw non-protobuf bytes through the live
servicer: answered correctly or refused with an expected status, the aggregator unchanged."""

from __future__ import annotations

import zlib
from typing import Any

import grpc
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from photon.tokenizer import ByteTokenizer
from photon.v1 import federation_pb2 as pb
from tests.fuzz._live import EXPECTED_CODES, RPC_TIMEOUT, Live
from tests.fuzz._support import TRANSFER_IDS, U32, U64, cases, small_or

DOWNLOADS = st.builds(
    pb.DownloadRequest,
    version=st.integers(0, 3) | small_or(U64),
    offset=small_or(U64),
    have_version=st.integers(-3, 3) | st.integers(-(2**63), 2**63 - 1),
)


def _download_fuzz(live: Live, request: pb.DownloadRequest) -> None:
    before = live.snapshot()
    code, reply = live.call(lambda: list(live.stub.Download(request, timeout=RPC_TIMEOUT)))
    if code == grpc.StatusCode.OK:
        header, *chunks = reply
        assert header.WhichOneof("body") == "header" and header.header.size >= request.offset
        offset = request.offset
        for c in (m.chunk for m in chunks):
            assert c.offset == offset and zlib.crc32(c.data) == c.crc32
            offset += len(c.data)
        assert offset == header.header.size
    live.check_unchanged(before)


@cases(30, long=500)
@given(request=DOWNLOADS)
def test_download_requests_are_answered_or_refused_cleanly(
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
    _, reply = live.call(lambda: rpc(request, timeout=RPC_TIMEOUT))
    if name == "UploadStatus" and reply is not None:
        assert not reply.accepted
    live.check_unchanged(before)


@cases(30, long=500)
@given(call=UNARY)
def test_unary_requests_with_random_values_are_refused_cleanly(
    live: Live, call: tuple[str, Any]
) -> None:
    _unary(live, *call)


REQUEST_KINDS = {
    "Join": "unary_unary",
    "Heartbeat": "unary_unary",
    "GetTask": "unary_unary",
    "UploadStatus": "unary_unary",
    "ReportEval": "unary_unary",
    "Status": "unary_unary",
    "Download": "unary_stream",
    "Upload": "stream_unary",
}
"""Every method of the service, by how its call is made."""
DESERIALIZE_FAILED = "Exception deserializing request!"
"""grpcio's own answer (INTERNAL) to bytes that are not the method's message: Photon's
handlers never see them."""


def _raw_bytes(live: Live, method: str, raws: list[bytes]) -> None:
    before = live.snapshot()
    kind = REQUEST_KINDS[method]
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
        undecodable = code == grpc.StatusCode.INTERNAL and details == DESERIALIZE_FAILED
        assert code in EXPECTED_CODES or undecodable, f"{code.name}: {details}"
        event("undecodable" if undecodable else f"status {code.name}")
    else:
        event("status OK")
    live.check_unchanged(before)


RAW_CALLS = st.tuples(
    st.sampled_from(sorted(REQUEST_KINDS)),
    st.lists(st.binary(max_size=300), min_size=1, max_size=4),
)


@cases(30, long=300)
@given(call=RAW_CALLS)
def test_bytes_that_are_not_protobuf_are_refused_cleanly(
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
