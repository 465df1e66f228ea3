"""A live aggregator for the gRPC fuzzers: `AggregatorDaemon` in this process, mTLS on
loopback, round 0 open and silo-0 joined; `Live.call` and `check_unchanged` hold what every
case must satisfy."""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch
from hypothesis import event

from aggregator.config import load_aggregator_config
from aggregator.server import AggregatorDaemon
from aggregator.store import Store
from bandwidth.chunking import sha256_file
from bandwidth.codec import decode_object, encode_object
from photon import pki
from photon.cli.localfed.launcher import Launcher
from photon.tls import TLSFiles, channel_credentials
from photon.tokenizer import ByteTokenizer
from photon.v1 import federation_pb2 as pb
from photon.v1 import federation_pb2_grpc as pb_grpc
from tests.harness import make_federation, wait_for

RPC_TIMEOUT = 30.0  # a safety net against hangs, not an assertion about speed
EXPECTED_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
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

    fed: Launcher
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

    def call(self, rpc: Callable[[], Any]) -> tuple[grpc.StatusCode, Any]:
        """Run an RPC: (OK, its reply), or (code, None) for one of the expected refusals."""
        try:
            reply = rpc()
        except grpc.RpcError as exc:
            code = exc.code()
            assert code in EXPECTED_CODES, f"{code.name}: {exc.details()}"
            event(f"status {code.name}")
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


@contextmanager
def live_aggregator(root: Path) -> Iterator[Live]:
    """A federation of one silo under `root`, its aggregator serving until the block ends."""
    # No request-rate limit and no upload quota: the fuzzers send hundreds of requests a
    # second and abandon hundreds of transfers, and a refusal for rate or quota would hide what
    # the request itself does (tests/test_limits.py and test_starvation*.py cover the limits).
    fed = make_federation(root, silos=1, rounds=2)
    srv = fed.aggregator.server
    srv.max_requests_per_s = 0.0
    srv.max_open_uploads_per_silo, srv.max_spool_bytes_per_silo = 1_000_000, 10**12
    fed.write_configs()
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
