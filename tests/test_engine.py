"""The round engine's rules, with an injected clock and a small stand-in global model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from structlog.testing import capture_logs

from aggregator.aggregate import accumulate
from aggregator.config import AggregatorConfig, RoundsConfig, ServerConfig
from aggregator.engine import RoundEngine
from aggregator.store import Store, UpdateRow
from bandwidth.chunking import iter_file_chunks
from bandwidth.codec import write_object
from photon.errors import (
    AlreadyAccepted,
    NotAuthorized,
    ResumeMismatch,
    RoundClosed,
    UpdateRejected,
)
from photon.federation import FederationSpec
from photon.update import UpdateRecord


class FakeModel:
    """The parts of GlobalModel the engine uses: one tensor, plain averaging."""

    def __init__(self) -> None:
        self.params = {"w": torch.zeros(8)}
        self.version = 0
        self.advanced: list[tuple[int, list[str]]] = []

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"w": (8,)}

    @property
    def max_update_bytes(self) -> int:
        return 1 << 20

    def advance(self, updates: list[UpdateRow], round_: int) -> list[UpdateRow]:
        acc = accumulate(updates)
        self.params["w"] += acc.average("w")
        self.advanced.append((round_, [u.silo_id for u in updates]))
        self.version += 1
        return []


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_engine(
    tmp_path: Path,
    *,
    silos: int = 2,
    rounds: int = 3,
    quorum: float = 1.0,
    per_round: int = 0,
    min_silos: int | None = None,
    store: Store | None = None,
    model: FakeModel | None = None,
    clock: Clock | None = None,
    seed: int = 0,
) -> tuple[RoundEngine, FakeModel, Clock, Store]:
    cfg = AggregatorConfig(
        # Deltas of 1.0 on an 8-parameter stand-in: far above the default norm bound.
        server=ServerConfig(state_dir=tmp_path, insecure=True, allowlist=[], update_norm_bound=0),
        rounds=RoundsConfig(
            min_silos=silos if min_silos is None else min_silos,
            quorum=quorum,
            deadline_s=100,
            heartbeat_timeout_s=30,
            silos_per_round=per_round,
        ),
        federation=FederationSpec(rounds=rounds, local_steps=5, tokenizer_digest="tok", seed=seed),
    )
    store = store or Store(tmp_path / "journal.sqlite")
    model = model or FakeModel()
    clock = clock or Clock()
    engine = RoundEngine(cfg, store, model, clock=clock)  # type: ignore[arg-type]
    return engine, model, clock, store


def send_update(
    engine: RoundEngine, tmp_path: Path, silo: str, round_: int, value: float, tokens: int = 100
) -> bool:
    src = tmp_path / f"src-{silo}-{round_}.upd"
    info = write_object(src, {"w": torch.full((8,), value)}, "fp32")
    header = UpdateRecord(
        transfer_id=f"{silo}-r{round_}",
        round=round_,
        base_version=round_,
        digest=info.digest,
        size=info.size,
        num_tokens=tokens,
        train_loss=1.0,
        base_eval_loss=2.0,
        train_seconds=1.0,
    )
    session = engine.begin_upload(silo, header, 0)
    gen = session.claim()
    for chunk in iter_file_chunks(src, chunk_size=64):
        session.write(gen, chunk.offset, bytes(chunk.data), chunk.crc32)
    return engine.complete_upload(silo, header, session.finalize())


def join_all(engine: RoundEngine, n: int) -> None:
    for i in range(n):
        engine.join(f"s{i}", 1000, "tok")


def test_round_opens_at_min_silos_and_closes_when_all_report(tmp_path: Path) -> None:
    engine, model, _, _ = make_engine(tmp_path)
    engine.join("s0", 1000, "tok")
    engine.tick()
    assert engine.get_task("s0", 0).kind == "wait"
    engine.join("s1", 1000, "tok")
    engine.tick()
    task = engine.get_task("s0", 0)
    assert (task.kind, task.round, task.base_version, task.local_steps) == ("train", 0, 0, 5)
    assert send_update(engine, tmp_path, "s0", 0, 1.0, tokens=100)
    engine.tick()
    assert model.version == 0, "must wait for the other selected silo"
    assert engine.get_task("s0", 0).kind == "wait"
    assert send_update(engine, tmp_path, "s1", 0, 4.0, tokens=300)
    engine.tick()
    assert model.version == 1
    assert torch.allclose(model.params["w"], torch.full((8,), 3.25)), "token-weighted mean"
    assert engine.get_task("s1", 0).round == 1


def test_federation_finishes_with_eval_then_done(tmp_path: Path) -> None:
    engine, _model, _, store = make_engine(tmp_path, rounds=1)
    join_all(engine, 2)
    engine.tick()
    for silo in ("s0", "s1"):
        send_update(engine, tmp_path, silo, 0, 1.0)
    engine.tick()
    task = engine.get_task("s0", 0)
    assert (task.kind, task.base_version) == ("eval", 1)
    engine.report_eval("s0", 1, 2.5, 100)
    assert engine.get_task("s0", 0).kind == "done"
    assert not engine.finished()
    engine.leave("s0", "done")
    engine.leave("s1", "done")
    assert engine.finished()
    assert (1, "s0", 2.5, 100) in store.evals()


def test_duplicate_update_is_refused_and_late_update_names_open_round(tmp_path: Path) -> None:
    engine, _, _, _ = make_engine(tmp_path)
    join_all(engine, 2)
    engine.tick()
    send_update(engine, tmp_path, "s0", 0, 1.0)
    with pytest.raises(AlreadyAccepted, match="already accepted"):
        send_update(engine, tmp_path, "s0", 0, 1.0)
    send_update(engine, tmp_path, "s1", 0, 1.0)
    engine.tick()
    with pytest.raises(RoundClosed, match="the open round is 1") as info:
        send_update(engine, tmp_path, "s0", 0, 1.0)
    assert info.value.open_round == 1


def test_unknown_silo_and_allowlist_are_refused(tmp_path: Path) -> None:
    engine, _, _, _ = make_engine(tmp_path)
    with pytest.raises(NotAuthorized, match="call Join first"):
        engine.get_task("ghost", 0)
    engine.cfg.server.allowlist = ["s0"]
    with pytest.raises(NotAuthorized, match="not in the aggregator's allowlist"):
        engine.join("s9", 1, "tok")
    with pytest.raises(NotAuthorized, match="tokenizer digest"):
        engine.join("s0", 1, "other")


def test_silo_joined_names_the_agent_version(tmp_path: Path) -> None:
    engine, _, _, _ = make_engine(tmp_path)
    with capture_logs() as logs:
        engine.join("s0", 1000, "tok", "9.8.7")
        engine.join("s1", 1000, "tok")  # an agent that sent none
    joined = {e["silo"]: e["agent_version"] for e in logs if e["event"] == "silo_joined"}
    assert joined == {"s0": "9.8.7", "s1": "unknown"}


def test_unselected_silo_cannot_upload(tmp_path: Path) -> None:
    engine, _, _, _ = make_engine(tmp_path, silos=2, per_round=2)
    join_all(engine, 3)
    engine.tick()
    selected = engine.status()["selected"]
    assert isinstance(selected, list) and len(selected) == 2
    outsider = ({"s0", "s1", "s2"} - set(selected)).pop()
    assert engine.get_task(outsider, 0).message == "not selected this round"
    with pytest.raises(NotAuthorized, match="was not selected"):
        send_update(engine, tmp_path, outsider, 0, 1.0)


def test_lost_silo_is_not_waited_for_when_quorum_is_met(tmp_path: Path) -> None:
    engine, model, clock, _ = make_engine(tmp_path, silos=2, quorum=0.5)
    join_all(engine, 2)
    engine.tick()
    send_update(engine, tmp_path, "s0", 0, 1.0)
    clock.t += 31  # s1 goes silent past the heartbeat timeout; s0 keeps polling
    engine.heartbeat("s0")
    engine.tick()
    assert model.advanced == [(0, ["s0"])]
    silos = engine.status()["silos"]
    assert isinstance(silos, list)
    assert next(s for s in silos if s["silo"] == "s1")["state"] == "lost"


def test_deadline_without_quorum_extends_the_round(tmp_path: Path) -> None:
    engine, model, clock, store = make_engine(tmp_path, silos=2, quorum=1.0)
    join_all(engine, 2)
    engine.tick()
    send_update(engine, tmp_path, "s0", 0, 1.0)
    clock.t += 101
    engine.heartbeat("s0")
    engine.heartbeat("s1")
    engine.tick()
    assert model.version == 0
    row = store.rounds()[0]
    assert row.round == 0 and row.deadline_at == pytest.approx(clock.t + 100)


def test_restart_keeps_accepted_updates_and_continues_the_round(tmp_path: Path) -> None:
    engine, model, clock, store = make_engine(tmp_path)
    join_all(engine, 2)
    engine.tick()
    send_update(engine, tmp_path, "s0", 0, 2.0)
    store.close()
    # A new engine on the same journal and model version: the update is still there.
    store2 = Store(tmp_path / "journal.sqlite")
    engine2, _, _, _ = make_engine(tmp_path, store=store2, model=model, clock=clock)
    join_all(engine2, 2)
    with pytest.raises(AlreadyAccepted, match="already accepted"):
        send_update(engine2, tmp_path, "s0", 0, 2.0)
    send_update(engine2, tmp_path, "s1", 0, 2.0)
    engine2.tick()
    assert model.advanced == [(0, ["s0", "s1"])]


def test_resume_must_start_at_committed_offset(tmp_path: Path) -> None:
    engine, _, _, _ = make_engine(tmp_path)
    join_all(engine, 2)
    engine.tick()
    src = tmp_path / "u.upd"
    info = write_object(src, {"w": torch.ones(8)}, "fp32")
    header = UpdateRecord(
        transfer_id="t1",
        round=0,
        base_version=0,
        digest=info.digest,
        size=info.size,
        num_tokens=1,
        train_loss=None,
        base_eval_loss=None,
        train_seconds=0.0,
    )
    session = engine.begin_upload("s0", header, 0)
    gen = session.claim()
    first = next(iter_file_chunks(src, chunk_size=32))
    session.write(gen, 0, bytes(first.data), first.crc32)
    session.sync()
    assert engine.uploads.committed("s0", "t1") == (32, False)
    with pytest.raises(ResumeMismatch, match="32 bytes are committed"):
        engine.begin_upload("s0", header, 0)  # a new stream claiming offset 0 again


def test_bad_update_is_rejected_and_leaves_no_trace(tmp_path: Path) -> None:
    engine, _model, _, store = make_engine(tmp_path)
    join_all(engine, 2)
    engine.tick()
    with pytest.raises(UpdateRejected, match="NaN or infinite"):
        send_update(engine, tmp_path, "s0", 0, float("nan"))
    assert store.updates(0) == []
    assert not list((tmp_path / "spool").rglob("*.upd"))
    assert engine.get_task("s0", 0).kind == "train", "the silo may still send a good update"


def _trained(engine: RoundEngine, silos: list[str]) -> list[str]:
    return [s for s in silos if engine.get_task(s, 0).kind == "train"]


def _sampled(tmp_path: Path, seed: int, rounds: int = 12) -> list[tuple[str, ...]]:
    """Run `rounds` rounds choosing 3 of 7 silos; each round's selection as the journal holds it."""
    names = [f"s{i}" for i in range(7)]
    tmp_path.mkdir()
    engine, _, _, store = make_engine(
        tmp_path, silos=7, rounds=rounds, per_round=3, min_silos=3, seed=seed
    )
    join_all(engine, 7)
    engine.tick()
    for r in range(rounds):
        row = store.rounds()[r]
        assert row.round == r
        assert _trained(engine, names) == list(row.selected), "only the selected silos train"
        for silo in row.selected:
            assert send_update(engine, tmp_path, silo, r, 1.0)
        engine.tick()
    return [row.selected for row in store.rounds()]


def test_k_of_n_sampling_is_seeded_and_without_replacement(tmp_path: Path) -> None:
    first, again, other = (
        _sampled(tmp_path / name, seed) for name, seed in (("a", 1), ("a2", 1), ("b", 2))
    )
    for run in (first, other):
        assert len(run) == 12
        assert all(len(set(chosen)) == len(chosen) == 3 for chosen in run), "3 distinct silos"
        assert len(set(run)) > 1, "a new sample each round"
        assert set().union(*run) == {f"s{i}" for i in range(7)}, "every silo gets its turn"
    assert first == again, "the same seed samples the same silos"
    assert first != other, "another seed samples other silos"


def test_a_silo_joining_mid_run_starts_from_the_current_global_model(tmp_path: Path) -> None:
    engine, model, _, _ = make_engine(tmp_path, silos=2, rounds=3)
    join_all(engine, 2)
    engine.tick()
    for silo in ("s0", "s1"):
        assert send_update(engine, tmp_path, silo, 0, 1.0)
    engine.tick()
    engine.join("late", 1000, "tok")  # round 1 is already open without it
    engine.tick()
    assert engine.get_task("late", 0).kind == "wait"
    for silo in ("s0", "s1"):
        assert send_update(engine, tmp_path, silo, 1, 1.0)
    engine.tick()
    assert model.version == 2
    task = engine.get_task("late", 0)
    assert (task.kind, task.round, task.base_version) == ("train", 2, model.version)
