"""The system clock set a day forwards or backwards under a running round.

The engine runs on two injected clocks that move apart here as they do on a host whose clock is
stepped: wall time (records) jumps, monotonic time (every timeout) does not. Neither a live silo
nor a deadline may notice the jump; across a restart, the journaled wall-clock deadline is read
once and clamped to one `deadline_s`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.clocks import Clocks, remaining_from_record
from aggregator.config import AggregatorConfig, RoundsConfig, ServerConfig
from aggregator.engine import RoundEngine
from aggregator.store import Store
from photon.federation import FederationSpec
from tests.test_engine import FakeModel, join_all, send_update

DAY = 86400.0
DEADLINE_S = 100.0
HEARTBEAT_TIMEOUT_S = 30.0


class SteppedClocks:
    """A wall clock that can be stepped and a monotonic clock that only moves forwards."""

    def __init__(self, wall: float = 1.7e9, mono: float = 500.0) -> None:
        self.wall_t, self.mono_t = wall, mono

    def clocks(self) -> Clocks:
        return Clocks(wall=lambda: self.wall_t, mono=lambda: self.mono_t)

    def elapse(self, seconds: float) -> None:
        self.wall_t += seconds
        self.mono_t += seconds


def engine_on(
    tmp_path: Path, t: SteppedClocks, model: FakeModel, store: Store | None = None
) -> tuple[RoundEngine, Store]:
    cfg = AggregatorConfig(
        server=ServerConfig(state_dir=tmp_path, insecure=True, allowlist=[], update_norm_bound=0),
        rounds=RoundsConfig(
            min_silos=2,
            quorum=0.5,
            deadline_s=DEADLINE_S,
            heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
        ),
        federation=FederationSpec(rounds=3, local_steps=5, tokenizer_digest="tok"),
    )
    store = store or Store(tmp_path / "journal.sqlite")
    engine = RoundEngine(cfg, store, model, clocks=t.clocks())  # type: ignore[arg-type]
    return engine, store


def open_round_with_one_update(tmp_path: Path, t: SteppedClocks) -> tuple[RoundEngine, FakeModel]:
    """Round 0 open with s0's update in it and s1 still training (quorum 0.5 is met)."""
    model = FakeModel()
    engine, _ = engine_on(tmp_path, t, model)
    join_all(engine, 2)
    engine.tick()
    assert send_update(engine, tmp_path, "s0", 0, 1.0)
    engine.tick()
    assert model.version == 0, "s1 is online and within the deadline: the round waits for it"
    return engine, model


def silo_states(engine: RoundEngine) -> dict[str, str]:
    return {s["silo"]: s["state"] for s in engine.status()["silos"]}


def test_wall_clock_a_day_forwards_neither_loses_silos_nor_expires_the_deadline(
    tmp_path: Path,
) -> None:
    t = SteppedClocks()
    engine, model = open_round_with_one_update(tmp_path, t)
    t.elapse(5.0)
    t.wall_t += DAY  # NTP steps the clock; no silo has called since
    engine.tick()
    assert silo_states(engine) == {"s0": "online", "s1": "online"}
    assert model.version == 0, "the deadline is 95 s away on the monotonic clock"
    assert engine.get_task("s1", 0).deadline_s == pytest.approx(DEADLINE_S - 5.0)
    assert engine.status()["deadline_in_s"] == pytest.approx(DEADLINE_S - 5.0)
    # The round's record in the journal is still a wall-clock time near when it opened.
    row = engine.store.get_round(0)
    assert row is not None and row.deadline_at < t.wall_t - DAY + DEADLINE_S


def test_wall_clock_a_day_backwards_does_not_extend_the_deadline(tmp_path: Path) -> None:
    t = SteppedClocks()
    engine, model = open_round_with_one_update(tmp_path, t)
    t.wall_t -= DAY
    t.elapse(DEADLINE_S + 1)
    engine.heartbeat("s0")
    engine.heartbeat("s1")  # alive, but too slow: the round closes with the quorum
    engine.tick()
    assert model.advanced == [(0, ["s0"])], "the deadline passed on the monotonic clock"


def test_silent_silo_is_still_lost_after_its_timeout_whatever_the_wall_clock(
    tmp_path: Path,
) -> None:
    t = SteppedClocks()
    engine, model = open_round_with_one_update(tmp_path, t)
    t.wall_t -= DAY
    t.elapse(HEARTBEAT_TIMEOUT_S + 1)
    engine.heartbeat("s0")
    engine.tick()
    assert silo_states(engine) == {"s0": "online", "s1": "lost"}
    assert model.advanced == [(0, ["s0"])], "closed without the lost silo (quorum 0.5)"


@pytest.mark.parametrize(
    ("wall_step", "expected_left"),
    [(0.0, DEADLINE_S - 40), (-DAY, DEADLINE_S), (DAY, 0.0)],
    ids=["no-jump", "a-day-back", "a-day-forwards"],
)
def test_a_restart_reads_the_deadline_once_clamped_to_one_deadline(
    tmp_path: Path, wall_step: float, expected_left: float
) -> None:
    t = SteppedClocks()
    engine, model = open_round_with_one_update(tmp_path, t)
    engine.store.close()
    t.elapse(40.0)
    t.wall_t += wall_step
    t.mono_t = 3.0  # a new process: its monotonic clock starts elsewhere
    restarted, _ = engine_on(tmp_path, t, model, Store(tmp_path / "journal.sqlite"))
    assert restarted.status()["deadline_in_s"] == pytest.approx(expected_left)
    restarted.heartbeat("s1")
    restarted.tick()
    closed = model.advanced == [(0, ["s0"])]
    assert closed == (expected_left == 0.0), "only an expired deadline closes the round"
    t.elapse(expected_left + 1)
    restarted.heartbeat("s0")
    restarted.heartbeat("s1")
    restarted.tick()
    assert model.advanced == [(0, ["s0"])], "the remaining time ran out on the monotonic clock"


def test_remaining_from_record_is_clamped() -> None:
    assert remaining_from_record(1000.0, 990.0, 100.0) == 10.0
    assert remaining_from_record(1000.0, 1000.0 - DAY, 100.0) == 100.0
    assert remaining_from_record(1000.0, 1000.0 + DAY, 100.0) == 0.0
