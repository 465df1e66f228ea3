"""The close decision, branch by branch, as a pure function of the round's facts."""

from __future__ import annotations

import pytest

from aggregator.closing import Close, ExtendDeadline, KeepWaiting, RoundFacts, decide_close

ABC = frozenset({"a", "b", "c"})


def facts(
    reported: str,
    online: str = "",
    *,
    quorum: float = 0.6,
    now: float = 10.0,
    deadline_at: float = 100.0,
) -> RoundFacts:
    return RoundFacts(
        selected=ABC,
        reported=frozenset(reported),
        pending_online=frozenset(online),
        quorum=quorum,
        now=now,
        deadline_at=deadline_at,
        deadline_s=50.0,
    )


def test_a_round_nobody_reported_to_waits_even_past_its_deadline() -> None:
    assert decide_close(facts("", "abc")) == KeepWaiting()
    assert decide_close(facts("", "", now=500.0)) == KeepWaiting()


def test_every_selected_silo_reported_closes() -> None:
    assert decide_close(facts("abc")) == Close("all_reported")


def test_reports_from_silos_not_selected_do_not_count() -> None:
    outsiders = RoundFacts(
        selected=frozenset({"a", "b"}),
        reported=frozenset({"a", "x"}),
        pending_online=frozenset({"b"}),
        quorum=1.0,
        now=10.0,
        deadline_at=100.0,
        deadline_s=50.0,
    )
    assert decide_close(outsiders) == KeepWaiting()


def test_quorum_with_the_rest_lost_closes_without_them() -> None:
    assert decide_close(facts("ab")) == Close("lost", ("c",))


def test_quorum_with_someone_still_online_waits_for_the_deadline() -> None:
    assert decide_close(facts("ab", "c")) == KeepWaiting()
    assert decide_close(facts("ab", "c", now=100.0)) == Close("deadline", ("c",))


def test_below_quorum_with_the_rest_lost_waits_for_the_deadline() -> None:
    assert decide_close(facts("a")) == KeepWaiting()


@pytest.mark.parametrize("online", ["", "bc"])
def test_below_quorum_at_the_deadline_extends_it(online: str) -> None:
    decision = decide_close(facts("a", online, now=120.0))
    assert decision == ExtendDeadline(until=170.0, reported=1, quorum=2)


def test_quorum_is_rounded_up() -> None:
    # 0.5 of 3 selected is 1.5: two reports are needed, one is not enough
    assert decide_close(facts("a", quorum=0.5, now=100.0)) == ExtendDeadline(
        until=150.0, reported=1, quorum=2
    )
    assert decide_close(facts("ab", "c", quorum=0.5, now=100.0)) == Close("deadline", ("c",))
