"""A hostile member cannot poison the aggregate (hardening rows 1 and 3): real aggregator
processes over mTLS, updates crafted by hand and signed with the members' own certificates."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from aggregator.audit import read_audit
from aggregator.bounds import UpdateBounds
from aggregator.config import EvalConfig, ServerConfig
from aggregator.globalmodel import GlobalModel
from aggregator.server import resolve_spec
from aggregator.store import Store, UpdateRow
from aggregator.strategies import OuterConfig
from bandwidth.codec import encode_object
from photon.checkpoint import latest_checkpoint, save_checkpoint
from photon.cli.localfed.launcher import Launcher
from photon.errors import UpdateRejected
from photon.federation import FederationSpec
from photon.v1 import federation_pb2 as pb
from tests.harness import make_federation, wait_for
from tests.test_aggregate import update
from tests.test_security import Silo, _good_blob, _refused, _shapes

#: Finite, but any ordinary token weight times it overflows fp32.
NEAR_FP32_MAX = 3.0e38
#: The federation fixture's settings: (an operator eval set?, server.update_norm_bound or None).
EVAL = (True, None)


def _overflowing_blob() -> bytes:
    tensors = {k: v + 1e-3 for k, v in _shapes().items()}
    tensors["lm_head.weight"][0, 0] = NEAR_FP32_MAX
    return encode_object(tensors, "fp32")


@pytest.fixture
def federation(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Launcher]:
    with_eval, norm_bound = request.param
    fed = make_federation(tmp_path, silos=2, rounds=2)
    server = fed.aggregator.server
    server.allowlist, server.max_requests_per_s = ["silo-0", "silo-1"], 0.0
    if norm_bound is not None:
        server.update_norm_bound = norm_bound
    if with_eval:
        fed.aggregator.eval = EvalConfig(data_dir=tmp_path / "data" / "silo-0", batches=2)
    fed.write_configs()
    try:
        yield fed
    finally:
        fed.stop_all()


def _open_round(fed: Launcher) -> tuple[Silo, Silo]:
    fed.start_aggregator(exit_when_done=False)
    a, b = Silo(fed, "silo-0"), Silo(fed, "silo-1")
    for s in (a, b):
        s.stub.Join(pb.JoinRequest(), timeout=10)
    assert a.stub.GetTask(pb.GetTaskRequest(held_version=-1), timeout=30).kind == pb.Task.TRAIN
    return a, b


def _assert_finite_checkpoint(fed: Launcher, version: int) -> None:
    ckpt = latest_checkpoint(fed.state_dir / "checkpoints")
    assert ckpt is not None and ckpt.version == version
    for name, t in ckpt.params.items():
        assert bool(torch.isfinite(t).all()), f"{name} is not finite in v{version}"


def _verdicts(fed: Launcher) -> list[tuple[str, str]]:
    entries, broken = read_audit(fed.state_dir / "audit.jsonl")
    assert broken is None
    return [(str(e["silo"]), str(e["verdict"])) for e in entries]


def _evals(fed: Launcher) -> list[tuple[int, str, float, int]]:
    store = Store(fed.state_dir / "journal.sqlite")
    try:
        return store.evals()
    finally:
        store.close()


def _log_events(fed: Launcher, event: str) -> int:
    lines = fed.log("aggregator", tail=None).splitlines()
    return sum(1 for line in lines if line.startswith("{") and json.loads(line)["event"] == event)


@pytest.mark.parametrize("federation", [EVAL], ids=["with_eval"], indirect=True)
def test_an_update_near_the_fp32_maximum_is_rejected_by_the_default_norm_bound(
    federation: Launcher,
) -> None:
    fed = federation
    a, b = _open_round(fed)
    _refused(
        lambda: a.upload(_overflowing_blob(), transfer="huge"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "exceeds the bound",
    )
    assert ("silo-0", "rejected") in _verdicts(fed)
    assert a.upload(_good_blob(), transfer="good").status == pb.UploadReply.ACCEPTED
    assert b.upload(_good_blob(), transfer="good").status == pb.UploadReply.ACCEPTED
    wait_for(lambda: any(v == 1 for v, *_ in _evals(fed)), 60, "version 1 evaluated")
    _assert_finite_checkpoint(fed, 1)
    assert all(math.isfinite(loss) for _, _, loss, _ in _evals(fed))


@pytest.mark.parametrize(
    "federation",
    [(True, 0.0), (False, 0.0)],
    ids=["with_eval", "without_eval"],
    indirect=True,
)
def test_an_overflowing_aggregate_is_never_published_and_restarts_cleanly(
    federation: Launcher,
) -> None:
    fed = federation
    a, b = _open_round(fed)
    assert a.upload(_overflowing_blob(), transfer="huge").status == pb.UploadReply.ACCEPTED
    assert b.upload(_good_blob(), transfer="good").status == pb.UploadReply.ACCEPTED
    wait_for(
        lambda: fed.summary().get("version") == 1 or fed.procs["aggregator"].poll() is not None,
        60,
        "version 1",
    )
    assert fed.procs["aggregator"].poll() is None, fed.log("aggregator")
    _assert_finite_checkpoint(fed, 1)
    assert ("silo-0", "excluded") in _verdicts(fed)
    assert _log_events(fed, "update_excluded") == 1
    # The published model is silo-1's update alone: the next round trains on finite weights.
    assert all(math.isfinite(loss) for _, _, loss, _ in _evals(fed))
    fed.stop_all()
    fed.start_aggregator(exit_when_done=False)
    wait_for(lambda: _log_events(fed, "checkpoint_loaded") >= 1, 60, "restart")
    assert fed.procs["aggregator"].poll() is None, fed.log("aggregator")
    _assert_finite_checkpoint(fed, 1)


@pytest.mark.parametrize("federation", [EVAL], ids=["with_eval"], indirect=True)
def test_a_non_finite_model_on_disk_does_not_crash_the_evaluating_aggregator(
    federation: Launcher,
) -> None:
    """State written before the fix (an Inf version): the NaN evaluation is logged and skipped,
    at every start, and the daemon keeps serving."""
    fed = federation
    fed.start_aggregator(exit_when_done=False)
    fed.stop_all()
    ckpt = latest_checkpoint(fed.state_dir / "checkpoints")
    assert ckpt is not None
    poisoned = {k: torch.full_like(v, math.inf) for k, v in ckpt.params.items()}
    save_checkpoint(
        fed.state_dir / "checkpoints",
        version=1,
        params=poisoned,
        outer_state=dict(ckpt.outer_state),
        meta={
            k: v
            for k, v in ckpt.meta.items()
            if k in ("round", "model_config", "federation_digest")
        },
    )
    for attempt in range(2):
        fed.start_aggregator(exit_when_done=False)
        wait_for(
            lambda: (
                _log_events(fed, "global_eval_not_finite") >= 1
                or fed.procs["aggregator"].poll() is not None
            ),
            60,
            "evaluation",
        )
        assert fed.procs["aggregator"].poll() is None, fed.log("aggregator")
        fed.stop_all()
        (fed.root / "aggregator.log").rename(fed.root / f"aggregator.{attempt}.log")
    assert all(v != 1 for v, *_ in _evals(fed))


def test_the_token_bound_counts_every_process_of_a_distributed_silo() -> None:
    spec = FederationSpec(local_steps=3)
    bounds = UpdateBounds.of(ServerConfig(insecure=True, max_silo_processes=4), spec, 100)
    per_process = 3 * spec.training.grad_accum * spec.training.batch_size * spec.training.seq_len
    assert bounds.max_tokens == 4 * per_process
    bounds.check_tokens(4 * per_process, silo="s", round_=0)  # a 4-rank torchrun silo
    with pytest.raises(UpdateRejected, match="max_silo_processes"):
        bounds.check_tokens(4 * per_process + 1, silo="s", round_=0)
    assert bounds.max_norm == pytest.approx(10 * spec.training.lr * 3 * 10)
    evals = spec.eval_batches * spec.training.batch_size * spec.training.seq_len
    bounds.check_eval_tokens(4 * evals, silo="s")
    with pytest.raises(UpdateRejected, match="eval tokens"):
        bounds.check_eval_tokens(2**62 - 1, silo="s")


def _round_updates(tmp_path: Path, gm: GlobalModel, *, poison: float) -> list[UpdateRow]:
    shapes = gm.shapes
    gen = torch.Generator().manual_seed(0)
    honest = {k: torch.randn(s, generator=gen) * 1e-3 for k, s in shapes.items()}
    rows = [update(tmp_path, "b-honest", honest, tokens=384)]
    if poison != 0.0:
        bad = {k: torch.zeros(s) for k, s in shapes.items()}
        bad["lm_head.weight"][0, 0] = poison
        rows.append(update(tmp_path, "a-hostile", bad, tokens=100))
    return rows


@pytest.mark.parametrize(
    ("outer", "value"),
    [
        ("nesterov", NEAR_FP32_MAX),  # the accumulator overflows
        ("fedadam", 1e30),  # the average is finite, the second moment g² is not
    ],
)
def test_an_excluded_update_leaves_exactly_the_model_without_it(
    tmp_path: Path, outer: str, value: float
) -> None:
    """The undone step restores parameters and optimizer state: the version equals the one
    the honest update alone gives, bit for bit, and the next round continues from it."""
    digests = []
    for poison in (False, True):
        spec = FederationSpec(preset="tiny")
        resolve_spec(spec)
        gm = GlobalModel(tmp_path / f"s{poison}", spec, OuterConfig(name=outer))  # type: ignore[arg-type]
        for round_ in range(3):
            folder = tmp_path / f"u{poison}{round_}"
            folder.mkdir()
            hostile = poison and round_ == 1
            rows = _round_updates(folder, gm, poison=value if hostile else 0.0)
            excluded = gm.advance(rows, round_)
            assert [u.silo_id for u in excluded] == (["a-hostile"] if hostile else [])
        assert all(bool(torch.isfinite(t).all()) for t in gm.params.values())
        digests.append((gm.version, gm.digest()))
    assert digests[0] == digests[1]
