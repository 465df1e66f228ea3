"""Token bucket on a fake clock, and rate parsing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bandwidth.ratelimit import TokenBucket, parse_rate
from photon.errors import ConfigError

MiB = 1024 * 1024


class FakeClock:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


def bucket(rate: float, burst: int | None = None) -> tuple[TokenBucket, FakeClock]:
    clock = FakeClock()
    return TokenBucket(rate, burst, clock=clock, sleep=clock.sleep), clock


@settings(max_examples=50, deadline=None)
@given(
    rate=st.floats(1e3, 1e10),
    burst=st.integers(1, 8 * MiB),
    sizes=st.lists(st.integers(1, 4 * MiB), min_size=200, max_size=400),
)
def test_long_run_rate_is_accurate_within_one_percent(rate: float, burst: int, sizes: list[int]):
    b, clock = bucket(rate, burst)
    for n in sizes:
        b.acquire(n)
    total = sum(sizes)
    # the first `burst` bytes pass at once; every byte after them costs exactly 1/rate
    assert clock.now == pytest.approx(max(0.0, (total - burst) / rate), rel=1e-9, abs=1e-12)
    if total >= 100 * burst:
        assert total / clock.now == pytest.approx(rate, rel=0.01)


def test_fifty_megabytes_per_second_of_two_mib_chunks():
    b, clock = bucket(parse_rate("50MB/s"))  # type: ignore[arg-type]
    for _ in range(1000):
        b.acquire(2 * MiB)
    assert 1000 * 2 * MiB / clock.now == pytest.approx(50e6, rel=0.01)


def test_burst_passes_at_once_then_the_rate_applies():
    b, clock = bucket(1000.0, burst=5000)
    b.acquire(5000)
    assert clock.now == 0.0 and clock.sleeps == []
    b.acquire(500)
    assert clock.now == pytest.approx(0.5)


def test_idle_time_refills_up_to_the_burst_only():
    b, clock = bucket(1000.0, burst=2000)
    b.acquire(2000)
    clock.now += 100.0  # a long idle period: 2000 tokens, not 100 000
    b.acquire(2000)
    assert clock.sleeps == []
    b.acquire(1000)
    assert clock.sleeps == [pytest.approx(1.0)]


def test_a_request_larger_than_the_burst_goes_through_at_the_rate():
    b, clock = bucket(1 * MiB, burst=64 * 1024)
    b.acquire(4 * MiB)
    assert clock.now == pytest.approx((4 * MiB - 64 * 1024) / MiB)
    b.acquire(1 * MiB)
    assert clock.now == pytest.approx((5 * MiB - 64 * 1024) / MiB)


def test_default_burst_and_zero_acquire():
    b, clock = bucket(100e6)
    assert b.burst == 10_000_000
    assert bucket(10.0)[0].burst == 64 * 1024
    b.acquire(0)
    assert clock.sleeps == []
    with pytest.raises(ValueError):
        b.acquire(-1)


@pytest.mark.parametrize(
    ("rate", "burst"), [(0.0, None), (-1.0, None), (float("inf"), None), (1.0, 0)]
)
def test_bad_bucket_settings(rate: float, burst: int | None):
    with pytest.raises(ConfigError):
        TokenBucket(rate, burst)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("50MB/s", 50e6),
        ("50mb/s", 50e6),
        ("10MiB/s", 10 * MiB),
        ("10 MiB", 10 * MiB),
        ("50mbit", 50e6 / 8),
        ("1Gbit/s", 1e9 / 8),
        ("8Kibit", 1024.0),
        ("1.5GB/s", 1.5e9),
        ("2.5e6", 2.5e6),
        ("100B/s", 100.0),
        ("800bit", 100.0),
        ("unlimited", None),
        ("  Unlimited ", None),
        ("inf", None),
    ],
)
def test_parse_rate(text: str, expected: float | None):
    assert parse_rate(text) == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("fast", "cannot read rate"),
        ("", "cannot read rate"),
        ("-5MB/s", "cannot read rate"),
        ("50Mbps", "ambiguous"),
        ("50 parsecs", "unknown unit"),
        ("50k", "unknown unit"),
        ("0", "positive"),
        ("1e400", "positive"),
    ],
)
def test_parse_rate_rejects_junk_naming_the_key(text: str, match: str):
    with pytest.raises(ConfigError, match=match) as exc:
        parse_rate(text, key="links.upload_rate")
    assert str(exc.value).startswith("links.upload_rate:")
    assert "'unlimited'" in str(exc.value)
