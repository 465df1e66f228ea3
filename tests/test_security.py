"""Each bad input and each bad identity through a real mTLS channel: exact status and message,
and a rejected update leaves the journal, the checkpoints and the published model unchanged."""

from __future__ import annotations

import ast
import hashlib
import math
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from aggregator.audit import read_audit
from aggregator.store import Store
from bandwidth.codec import encode_object
from photon.cli.localfed.launcher import Launcher
from photon.model import build_model, preset
from photon.pki import issue
from photon.signing import sign_digest
from photon.tls import TLSFiles, channel_credentials
from photon.update import UpdateRecord
from photon.v1 import federation_pb2 as pb
from photon.v1 import federation_pb2_grpc as pb_grpc
from silo_agent.client import AggregatorClient
from silo_agent.config import load_silo_config
from silo_agent.transfers import PendingUpdate, UploadOutcome, upload
from tests.harness import make_federation

CHUNK = 64 * 1024


def _shapes() -> dict[str, torch.Tensor]:
    return {
        k: torch.zeros_like(v) for k, v in build_model(preset("tiny", 258), 0).state_dict().items()
    }


class Silo:
    def __init__(self, fed: Launcher, name: str) -> None:
        self.name = name
        self.key = fed.root / "certs" / "silos" / f"{name}.key"
        creds = channel_credentials(TLSFiles.for_silo(fed.root / "certs", name))
        self.channel = grpc.secure_channel(f"localhost:{fed.port}", creds)
        self.stub = pb_grpc.FederationStub(self.channel)

    def upload(
        self,
        blob: bytes,
        *,
        round_: int = 0,
        base: int = 0,
        sign_round: int | None = None,
        size: int | None = None,
        crc_ok: bool = True,
        signature: bytes | None = None,
        transfer: str = "t",
        num_tokens: int = 100,
        train_seconds: float = 0.0,
        base_eval_loss: float = math.nan,
        codec: str = "",
    ) -> pb.UploadReply:
        digest = hashlib.sha256(blob).hexdigest()
        if signature is None:
            signature = sign_digest(self.key, digest, round_ if sign_round is None else sign_round)

        def messages() -> Iterator[pb.UploadChunk]:
            yield pb.UploadChunk(
                header=pb.UploadHeader(
                    transfer_id=transfer,
                    round=round_,
                    base_version=base,
                    digest=digest,
                    size=len(blob) if size is None else size,
                    offset=0,
                    num_tokens=num_tokens,
                    train_loss=1.0,
                    base_eval_loss=base_eval_loss,
                    train_seconds=train_seconds,
                    signature=signature,
                    codec=codec,
                )
            )
            for off in range(0, len(blob), CHUNK):
                data = blob[off : off + CHUNK]
                crc = zlib.crc32(data) ^ (0 if crc_ok else 1)
                yield pb.UploadChunk(chunk=pb.Chunk(offset=off, data=data, crc32=crc))

        return self.stub.Upload(messages(), timeout=60)


def _refused(call: object, code: grpc.StatusCode, text: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    assert info.value.code() == code, info.value.details()
    assert text in (info.value.details() or ""), info.value.details()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Launcher, Silo, Silo]]:
    root = tmp_path_factory.mktemp("sec")
    fed = make_federation(root, silos=2, rounds=1)
    fed.aggregator.server.allowlist = ["silo-0", "silo-1"]
    fed.aggregator.server.max_requests_per_s = 0.0
    fed.start_aggregator(exit_when_done=False)
    a, b = Silo(fed, "silo-0"), Silo(fed, "silo-1")
    for s in (a, b):
        s.stub.Join(pb.JoinRequest(), timeout=10)
    assert a.stub.GetTask(pb.GetTaskRequest(held_version=-1), timeout=30).kind == pb.Task.TRAIN
    try:
        yield fed, a, b
    finally:
        for s in (a, b):
            s.channel.close()
        fed.stop_all()


def _good_blob() -> bytes:
    return encode_object({k: v + 1e-3 for k, v in _shapes().items()}, "fp32")


def test_unknown_silo_is_refused_by_the_allowlist(running: tuple[Launcher, Silo, Silo]) -> None:
    fed, _, _ = running
    issue(fed.root / "certs", "silo", "intruder")
    stranger = Silo(fed, "intruder")
    _refused(
        lambda: stranger.stub.Join(pb.JoinRequest(), timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
        "not in the aggregator's allowlist",
    )
    # Every other method too, before it can hold a worker or a transfer slot (the interceptor
    # applies the allowlist); only Status is open to any certificate of the federation.
    calls = {
        "GetTask": lambda: stranger.stub.GetTask(pb.GetTaskRequest(), timeout=10),
        "Heartbeat": lambda: stranger.stub.Heartbeat(pb.HeartbeatRequest(), timeout=10),
        "Upload": lambda: stranger.stub.Upload(iter([]), timeout=10),
        "ReportEval": lambda: stranger.stub.ReportEval(pb.EvalReport(loss=1.0), timeout=10),
    }
    for call in calls.values():
        _refused(call, grpc.StatusCode.PERMISSION_DENIED, "not in the aggregator's allowlist")
    assert stranger.stub.Status(pb.StatusRequest(), timeout=10).status_json


@pytest.mark.parametrize(
    ("case", "code", "text"),
    [
        (
            "wrong_round",
            grpc.StatusCode.FAILED_PRECONDITION,
            "round 3 is not open; the open round is 0",
        ),
        ("wrong_base", grpc.StatusCode.INVALID_ARGUMENT, "is based on version 5"),
        ("too_large", grpc.StatusCode.INVALID_ARGUMENT, "exceeds the bound"),
        ("bad_crc", grpc.StatusCode.DATA_LOSS, "crc"),
        ("unsigned", grpc.StatusCode.INVALID_ARGUMENT, "signature does not verify"),
        ("replayed_signature", grpc.StatusCode.INVALID_ARGUMENT, "signature does not verify"),
        ("nan", grpc.StatusCode.INVALID_ARGUMENT, "NaN or infinite"),
        ("wrong_shape", grpc.StatusCode.INVALID_ARGUMENT, "has shape"),
        ("wrong_codec", grpc.StatusCode.INVALID_ARGUMENT, "uses codec 'int8'"),
        # Declared in the header: refused before a byte of the object is received.
        ("declared_codec", grpc.StatusCode.INVALID_ARGUMENT, "encoded with codec 'int8'"),
        ("unknown_codec", grpc.StatusCode.INVALID_ARGUMENT, "codec 'int3' is not one of"),
        ("garbage", grpc.StatusCode.INVALID_ARGUMENT, "cannot be decoded"),
        ("bad_transfer_id", grpc.StatusCode.INVALID_ARGUMENT, "transfer_id"),
        ("over_reported_tokens", grpc.StatusCode.INVALID_ARGUMENT, "num_tokens 4611686018427"),
        (
            "infinite_seconds",
            grpc.StatusCode.INVALID_ARGUMENT,
            "train_seconds must be a finite number",
        ),
        ("negative_eval_loss", grpc.StatusCode.INVALID_ARGUMENT, "base_eval_loss must be"),
    ],
)
def test_bad_update_is_refused_and_leaves_no_trace(
    running: tuple[Launcher, Silo, Silo], case: str, code: grpc.StatusCode, text: str
) -> None:
    fed, silo, _ = running
    before = _state_bytes(fed)
    tensors = _shapes()
    blob = {
        "nan": lambda: encode_object(
            {**tensors, "lm_head.weight": tensors["lm_head.weight"] + float("nan")}, "fp32"
        ),
        "wrong_shape": lambda: encode_object(
            {**tensors, "model.norm.weight": torch.zeros(7)}, "fp32"
        ),
        "wrong_codec": lambda: encode_object(tensors, "int8"),
        "garbage": lambda: b"PHOTON\x00\x01" + bytes(range(256)) * 40,
    }.get(case, _good_blob)()
    kwargs: dict[str, object] = {
        "wrong_round": {"round_": 3},
        "wrong_base": {"base": 5},
        "too_large": {"size": 10**12},
        "bad_crc": {"crc_ok": False},
        "unsigned": {"signature": b""},
        "replayed_signature": {"sign_round": 7},
        "bad_transfer_id": {"transfer": "../../etc/passwd"},
        "over_reported_tokens": {"num_tokens": 2**62 - 1},
        "infinite_seconds": {"train_seconds": math.inf},
        "negative_eval_loss": {"base_eval_loss": -1.0},
        "declared_codec": {"codec": "int8"},
        "unknown_codec": {"codec": "int3"},
    }.get(case, {})  # type: ignore[assignment]
    kwargs.setdefault("transfer", f"t-{case}")
    _refused(lambda: silo.upload(blob, **kwargs), code, text)  # type: ignore[arg-type]
    assert _state_bytes(fed) == before, "a rejected update must not change any state"


def test_rejections_are_in_the_audit_log(running: tuple[Launcher, Silo, Silo]) -> None:
    fed, _, _ = running
    entries, broken = read_audit(fed.state_dir / "audit.jsonl")
    assert broken is None
    assert entries and all(e["verdict"] == "rejected" for e in entries)
    assert any("signature" in e["reason"] for e in entries)


def test_a_silo_cannot_upload_as_another(running: tuple[Launcher, Silo, Silo]) -> None:
    fed, silo0, _ = running
    # silo-0 signs with silo-1's key: the connection's certificate decides who it is.
    blob = _good_blob()
    forged = sign_digest(
        fed.root / "certs" / "silos" / "silo-1.key", hashlib.sha256(blob).hexdigest(), 0
    )
    _refused(
        lambda: silo0.upload(blob, signature=forged, transfer="forged"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "signature does not verify",
    )


def test_good_update_then_duplicate_is_idempotent(running: tuple[Launcher, Silo, Silo]) -> None:
    fed, silo, _ = running
    blob = _good_blob()
    assert silo.upload(blob, transfer="good").status == pb.UploadReply.ACCEPTED
    _refused(
        lambda: silo.upload(blob, transfer="good-again"),
        grpc.StatusCode.ALREADY_EXISTS,
        "already accepted",
    )
    status = silo.stub.UploadStatus(pb.UploadStatusRequest(transfer_id="good"), timeout=10)
    assert (status.complete, status.accepted) == (True, True)
    status = silo.stub.UploadStatus(pb.UploadStatusRequest(transfer_id="good-again"), timeout=10)
    assert not status.accepted, "that transfer was refused"
    store = Store(fed.state_dir / "journal.sqlite")
    try:
        assert [(u.silo_id, u.update.transfer_id) for u in store.updates(0)] == [("silo-0", "good")]
    finally:
        store.close()


def test_the_silo_takes_an_already_accepted_update_as_done(
    running: tuple[Launcher, Silo, Silo],
) -> None:
    """After test_good_update_then_duplicate_is_idempotent: silo-0's round-0 update is in."""
    fed, _, _ = running
    blob = _good_blob()
    path = fed.root / "again.upd"
    path.write_bytes(blob)
    digest = hashlib.sha256(blob).hexdigest()
    signature = sign_digest(fed.root / "certs" / "silos" / "silo-0.key", digest, 0)
    client = AggregatorClient(load_silo_config(fed.root / "silo-0.toml"))

    def send(transfer_id: str) -> tuple[UploadOutcome, int]:
        update = UpdateRecord(
            round=0,
            transfer_id=transfer_id,
            base_version=0,
            digest=digest,
            size=len(blob),
            num_tokens=100,
            signature=signature,
        )
        sent: list[int] = []
        pending = PendingUpdate(update=update, path=str(path))
        return upload(client, pending, chunk_bytes=CHUNK, on_chunk=sent.append), sum(sent)

    try:
        # The journal holds transfer "good": UploadStatus says so and nothing is sent.
        assert send("good") == (UploadOutcome.ACCEPTED, 0)
        # Another transfer of the same round is answered ALREADY_EXISTS: done, too.
        assert send("good-resent")[0] is UploadOutcome.ACCEPTED
    finally:
        client.close()


def _state_bytes(fed: Launcher) -> dict[str, bytes]:
    """The journal's accepted updates and every checkpoint and published file, as bytes."""
    store = Store(fed.state_dir / "journal.sqlite")
    try:
        rows = repr(store.updates(0)).encode()
    finally:
        store.close()
    files = {
        str(p.relative_to(fed.state_dir)): p.read_bytes()
        for sub in ("checkpoints", "published")
        for p in sorted((fed.state_dir / sub).glob("*"))
        if p.is_file()
    }
    spool = sorted(str(p) for p in (fed.state_dir / "spool").rglob("*.upd"))
    return {"journal": rows, "spool": repr(spool).encode(), **files}


UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "shelve", "marshal", "joblib", "cloudpickle"}


def test_no_daemon_module_can_unpickle() -> None:
    """Nothing received is ever unpickled: no module imports a pickle-like loader or calls
    `torch.load` / `numpy.load(allow_pickle=True)` (the docstrings may say the words)."""
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for package in ("photon", "aggregator", "silo_agent", "bandwidth"):
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
                if isinstance(node, ast.Import):
                    offenders += [where for a in node.names if a.name.split(".")[0] in UNPICKLERS]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    offenders += [where] if node.module.split(".")[0] in UNPICKLERS else []
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    owner = ast.unparse(node.func.value)
                    pickles = any(
                        k.arg == "allow_pickle" and ast.unparse(k.value) != "False"
                        for k in node.keywords
                    )
                    if (owner, node.func.attr) == ("torch", "load") or (
                        node.func.attr == "load" and pickles
                    ):
                        offenders.append(where)
    assert offenders == []
