"""The link emulator: profile parsing, the shaper on a fake clock, and the proxy on real
loopback sockets (intact bytes, faults, partitions, gRPC through it), plus `photon link`."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bandwidth.link import LinkEmulator
from bandwidth.link_profile import LinkProfile, parse_duration
from bandwidth.link_shaper import MAX_READ_BYTES, Shaper, burst_bytes, read_size
from bandwidth.link_state import LinkState
from photon.cli.link import link as link_cmd
from photon.cli.link import parse_address, parse_flap
from photon.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

MB = 1_000_000
Address = tuple[str, int]


# -- profiles --------------------------------------------------------------------------------


def test_parse_profile_units() -> None:
    p = LinkProfile.parse(rate="50mbit", latency="80ms", jitter="10ms", seed=3)
    assert p.rate_bps == pytest.approx(50e6)
    assert (p.latency_s, p.jitter_s, p.seed) == (pytest.approx(0.08), pytest.approx(0.01), 3)
    assert LinkProfile.parse(rate="1gbit").rate_bps == pytest.approx(1e9)
    assert LinkProfile.parse(rate="10MB/s").rate_bps == pytest.approx(80e6)
    assert LinkProfile.parse(rate="unlimited").rate_bps is None
    assert p.describe() == "50mbit, 80ms ± 10ms"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("80ms", 0.08),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("250us", 250e-6),
        ("3", 3.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"latency": "80 parsecs"}, "latency"),
        ({"jitter": "fast"}, "jitter"),
        ({"rate": "50 furlongs"}, "rate"),
        ({"rate": "50mbps"}, "rate"),
    ],
)
def test_parse_errors_name_the_key(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: .*write e\.g\."):
        LinkProfile.parse(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate_bps": 0.0},
        {"rate_bps": float("inf")},
        {"latency_s": -1.0},
        {"jitter_s": float("nan")},
    ],
)
def test_profile_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        LinkProfile(**kwargs)  # type: ignore[arg-type]


# -- the shaper on a fake clock --------------------------------------------------------------


def pump_on_fake_clock(profile: LinkProfile, sizes: list[int]) -> list[tuple[float, float]]:
    """Read chunks as fast as the shaper allows (as a pump does): (release, deliver) each."""
    shaper, now, out = Shaper(rng=random.Random(profile.seed)), 0.0, []
    for n in sizes:
        slot = shaper.admit(n, now, profile)
        out.append((slot.release_at, slot.deliver_at))
        now = max(now, slot.release_at)
    return out


@settings(max_examples=50, deadline=None)
@given(
    rate_bps=st.floats(1e5, 1e10),
    sizes=st.lists(st.integers(1, MAX_READ_BYTES), min_size=50, max_size=200),
)
def test_rate_stage_matches_the_configured_rate(rate_bps: float, sizes: list[int]) -> None:
    profile = LinkProfile(rate_bps=rate_bps)
    rate = rate_bps / 8
    total = sum(sizes)
    last_release = pump_on_fake_clock(profile, sizes)[-1][0]
    # the first burst passes at once; everything after it at exactly the rate
    expected = max(0.0, total - burst_bytes(rate)) / rate
    assert last_release == pytest.approx(expected, rel=0.01, abs=1e-9)


def test_rate_bucket_refills_only_up_to_its_burst() -> None:
    profile = LinkProfile(rate_bps=8e6)  # 1 MB/s, burst 5000 bytes
    shaper = Shaper(rng=random.Random(0))
    assert shaper.admit(5000, 0.0, profile).release_at == 0.0  # a full bucket
    # an hour idle refills one burst, not an hour of traffic
    assert shaper.admit(15000, 3600.0, profile).release_at == pytest.approx(3600.01)


def test_live_rate_change_applies_to_the_next_chunk() -> None:
    shaper = Shaper(rng=random.Random(0))
    slow, fast = LinkProfile(rate_bps=8e5), LinkProfile(rate_bps=8e7)
    shaper.admit(4096, 0.0, slow)  # drain the burst
    assert shaper.admit(10_000, 0.0, slow).release_at == pytest.approx(0.1)
    assert shaper.admit(10_000, 0.1, fast).release_at == pytest.approx(0.1 + 10_000 / 1e7)


def test_latency_delays_every_chunk_by_exactly_latency() -> None:
    shaper = Shaper(rng=random.Random(0))
    profile = LinkProfile(latency_s=0.08)
    for now in (0.0, 0.001, 0.5, 7.25):
        slot = shaper.admit(1000, now, profile)
        assert (slot.release_at, slot.deliver_at) == (now, pytest.approx(now + 0.08))


@settings(max_examples=50, deadline=None)
@given(
    gaps=st.lists(st.floats(0, 0.05), min_size=2, max_size=200),
    latency=st.floats(0, 0.2),
    jitter=st.floats(0, 0.2),
    seed=st.integers(0, 2**32),
)
def test_jitter_stays_in_bounds_and_never_reorders(
    gaps: list[float], latency: float, jitter: float, seed: int
) -> None:
    profile = LinkProfile(latency_s=latency, jitter_s=jitter, seed=seed)
    shaper, now, previous = Shaper(rng=random.Random(seed)), 0.0, float("-inf")
    for gap in gaps:
        now += gap
        deliver = shaper.admit(100, now, profile).deliver_at
        assert deliver >= previous  # never reordered
        assert deliver >= now + max(0.0, latency - jitter) - 1e-12
        assert deliver <= max(previous, now + latency + jitter) + 1e-12
        previous = deliver


def test_jitter_is_seeded() -> None:
    profile = LinkProfile(latency_s=0.05, jitter_s=0.02, seed=7)
    sizes = [1000] * 20
    assert pump_on_fake_clock(profile, sizes) == pump_on_fake_clock(profile, sizes)
    other = LinkProfile(latency_s=0.05, jitter_s=0.02, seed=8)
    assert pump_on_fake_clock(profile, sizes) != pump_on_fake_clock(other, sizes)


def test_read_size_keeps_chunks_small_on_slow_links() -> None:
    assert read_size(LinkProfile()) == MAX_READ_BYTES >= 256 * 1024
    assert read_size(LinkProfile(rate_bps=20e6)) == 25_000  # 10 ms of 2.5 MB/s
    assert read_size(LinkProfile(rate_bps=1e3)) == 4096


def test_cut_budget_allows_exactly_n_and_fires_once() -> None:
    fired: list[int] = []
    state = LinkState(LinkProfile(), on_cut=lambda: fired.append(1))
    state.arm_cut(1000, "up")
    assert state.allowance("down", 5000) == 5000  # the other direction is not counted
    state.forwarded("down", 5000)
    assert state.allowance("up", 600) == 600
    state.forwarded("up", 600)
    assert state.allowance("up", 600) == 400
    state.forwarded("up", 400)
    assert fired == [1]
    state.forwarded("up", 400)  # one-shot: disarmed after firing
    assert fired == [1]
    assert (state.bytes_forwarded("up"), state.bytes_forwarded("down")) == (1400, 5000)


# -- real sockets ----------------------------------------------------------------------------


def serve(handler: Callable[[socket.socket], None]) -> Iterator[Address]:
    """A threaded TCP server on 127.0.0.1:0 running `handler` per connection."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    stop = threading.Event()

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_handle, args=(handler, conn), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    yield server.getsockname()[:2]
    stop.set()
    thread.join()
    server.close()


def _handle(handler: Callable[[socket.socket], None], conn: socket.socket) -> None:
    with conn, contextlib.suppress(OSError):
        handler(conn)


def echo(conn: socket.socket) -> None:
    while data := conn.recv(1 << 16):
        conn.sendall(data)


def count_then_reply(conn: socket.socket) -> None:
    """Read to EOF, then answer with the byte count (tests half-close)."""
    total = 0
    while data := conn.recv(1 << 20):
        total += len(data)
    conn.sendall(str(total).encode())


@pytest.fixture(scope="module")
def echo_server() -> Iterator[Address]:
    yield from serve(echo)


@pytest.fixture(scope="module")
def counting_server() -> Iterator[Address]:
    yield from serve(count_then_reply)


@pytest.fixture(scope="module")
def echo_link(echo_server: Address) -> Iterator[LinkEmulator]:
    with LinkEmulator(upstream=echo_server) as link:
        yield link


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            break
        buf += data
    return bytes(buf)


def connect(link: LinkEmulator, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(link.address, timeout=timeout)


def wait_for(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def sees_reset_or_eof(sock: socket.socket) -> bool:
    """Whether the peer reset or closed `sock` (drains what was still in flight)."""
    try:
        while sock.recv(1 << 16):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=st.binary(min_size=1, max_size=200_000), cuts=st.lists(st.integers(1, 70_000)))
def test_bytes_arrive_intact_and_in_order(
    echo_link: LinkEmulator, payload: bytes, cuts: list[int]
) -> None:
    with connect(echo_link) as sock:
        offsets = sorted({0, len(payload), *(c % len(payload) for c in cuts)})
        pieces = [payload[a:b] for a, b in itertools.pairwise(offsets)]
        sender = threading.Thread(target=send_pieces, args=(sock, pieces))
        sender.start()
        assert recv_exactly(sock, len(payload)) == payload
        sender.join()


def send_pieces(sock: socket.socket, pieces: list[bytes]) -> None:
    for piece in pieces:
        sock.sendall(piece)


def test_half_close_and_counters(counting_server: Address) -> None:
    with LinkEmulator(upstream=counting_server) as link, connect(link) as sock:
        sock.sendall(b"x" * 3 * MB)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b"3000000"
        assert wait_for(lambda: link.bytes_down == 7)
        assert (link.bytes_up, link.connections_total) == (3 * MB, 1)
        assert wait_for(lambda: link.connections_active == 0)


def test_rate_limit_sanity_on_real_sockets(counting_server: Address) -> None:
    profile = LinkProfile(rate_bps=160e6)  # 20 MB/s
    with LinkEmulator(upstream=counting_server, profile=profile) as link, connect(link) as sock:
        started = time.monotonic()
        sock.sendall(b"x" * 2 * MB)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b"2000000"
        assert time.monotonic() - started >= 0.09  # loose lower bound only


def test_latency_sanity_and_live_profile_change(echo_server: Address) -> None:
    with LinkEmulator(upstream=echo_server, profile=LinkProfile(latency_s=0.05)) as link:
        with connect(link) as sock:
            started = time.monotonic()
            sock.sendall(b"ping")
            assert recv_exactly(sock, 4) == b"ping"
            assert time.monotonic() - started >= 0.1  # 50 ms each way
        link.set_profile(LinkProfile())
        assert link.profile == LinkProfile()
        with connect(link) as sock:
            sock.sendall(b"pong")
            assert recv_exactly(sock, 4) == b"pong"


def test_cut_after_resets_after_n_bytes(counting_server: Address) -> None:
    with LinkEmulator(upstream=counting_server) as link, connect(link) as sock:
        link.cut_after(100_000, direction="up")
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            for _ in range(100):  # 10 MB: far more than the cut lets through
                sock.sendall(b"x" * 100_000)
        assert link.bytes_up == 100_000
        assert link.faults_injected == 1
        assert wait_for(lambda: link.connections_active == 0)
        # one-shot: the next connection is not cut
        with connect(link) as again:
            again.sendall(b"x" * 300_000)
            again.shutdown(socket.SHUT_WR)
            assert again.recv(100) == b"300000"


def test_cut_after_down_counts_only_downstream(echo_server: Address) -> None:
    with LinkEmulator(upstream=echo_server) as link, connect(link) as sock:
        link.cut_after(50_000, direction="down")
        sender = threading.Thread(target=send_until_broken, args=(sock,), daemon=True)
        sender.start()
        received = 0
        # the reset is reported once, to the sender or to us; after it, recv sees EOF
        with contextlib.suppress(ConnectionResetError):
            while data := sock.recv(1 << 16):
                received += len(data)
        sender.join(2)
        assert received <= 50_000
        assert link.bytes_down == 50_000
        assert link.bytes_up >= 50_000
        assert link.faults_injected == 1


def send_until_broken(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        for _ in range(50):
            sock.sendall(b"y" * 10_000)


def test_reset_all_resets_active_connections(echo_server: Address) -> None:
    with LinkEmulator(upstream=echo_server) as link:
        socks = [connect(link) for _ in range(3)]
        for sock in socks:
            sock.sendall(b"hello")
            assert recv_exactly(sock, 5) == b"hello"
        link.reset_all()
        for sock in socks:
            with pytest.raises(ConnectionResetError):
                sock.recv(10)
            sock.close()
        assert link.faults_injected == 3
        assert wait_for(lambda: link.connections_active == 0)


def test_refuse_closes_new_connections(echo_server: Address) -> None:
    with LinkEmulator(upstream=echo_server) as link:
        link.refuse(True)
        with connect(link) as sock:
            assert sees_reset_or_eof(sock)
        assert (link.connections_total, link.faults_injected) == (0, 1)
        link.refuse(False)
        with connect(link) as sock:
            sock.sendall(b"back")
            assert recv_exactly(sock, 4) == b"back"


def test_blackhole_stalls_both_ways_then_heals(echo_server: Address) -> None:
    with LinkEmulator(upstream=echo_server) as link:
        held = connect(link, timeout=0.3)
        held.sendall(b"before")
        assert recv_exactly(held, 6) == b"before"
        link.blackhole(True)
        fresh = connect(link, timeout=0.3)
        for sock in (held, fresh):
            sock.sendall(b"lost?")
            with pytest.raises(TimeoutError):
                sock.recv(10)
        assert link.faults_injected == 1
        link.blackhole(False)
        with connect(link) as sock:
            sock.sendall(b"after")
            assert recv_exactly(sock, 5) == b"after"
        # held, not dropped: connections that outlive the partition carry on
        for sock in (held, fresh):
            sock.settimeout(2)
            assert recv_exactly(sock, 5) == b"lost?"
            sock.close()


def test_flap_with_count_ends_by_itself(echo_server: Address) -> None:
    with LinkEmulator(upstream=echo_server) as link:
        link.flap(0.2, 0.1, count=1)
        assert link.flapping
        assert wait_for(lambda: link.faults_injected == 1)
        assert wait_for(lambda: not link.flapping)
        with connect(link) as sock:  # up again after the flap
            sock.sendall(b"up")
            assert recv_exactly(sock, 2) == b"up"


def test_flap_runs_on_the_injected_clock(echo_server: Address) -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    link = LinkEmulator(upstream=echo_server, clock=lambda: now[0], sleep=sleep)
    link.flap(60.0, 5.0, count=3)  # three minutes of flapping, without waiting for them
    assert wait_for(lambda: not link.flapping)
    assert link.faults_injected == 3
    assert now[0] == pytest.approx(180.0)
    with pytest.raises(ConfigError, match="flap"):
        link.flap(5.0, 5.0)
    link.close()


def test_close_returns_with_active_connections(echo_server: Address) -> None:
    before = set(threading.enumerate())
    link = LinkEmulator(upstream=echo_server, profile=LinkProfile(latency_s=5.0)).start()
    socks = [connect(link) for _ in range(3)]
    for sock in socks:
        sock.sendall(b"x" * 100_000)  # stuck in a 5 s delay line
    assert wait_for(lambda: link.connections_active == 3)
    link.blackhole(True)
    link.flap(10.0, 1.0)
    link.close()
    assert not [t for t in set(threading.enumerate()) - before if t.name.startswith("link-")]
    for sock in socks:
        assert sees_reset_or_eof(sock)
        sock.close()


def test_unreachable_upstream_closes_the_client() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    with LinkEmulator(upstream=("127.0.0.1", port)) as link, connect(link) as sock:
        assert sees_reset_or_eof(sock)


def test_upstream_is_required() -> None:
    with pytest.raises(TypeError, match="upstream"):
        LinkEmulator()


def test_grpc_health_check_through_the_link() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    profile = LinkProfile(rate_bps=100e6, latency_s=0.01, jitter_s=0.005, seed=1)
    try:
        with LinkEmulator(upstream=("127.0.0.1", port), profile=profile) as link:
            host, link_port = link.address
            with grpc.insecure_channel(f"{host}:{link_port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert link.bytes_up > 0 and link.bytes_down > 0
    finally:
        server.stop(None)


# -- photon link -----------------------------------------------------------------------------


def test_cli_parsers() -> None:
    assert parse_address("0.0.0.0:7000", key="listen") == ("0.0.0.0", 7000)
    assert parse_address("[::1]:50051", key="upstream") == ("::1", 50051)
    assert parse_flap("120s:5s") == (120.0, 5.0)
    with pytest.raises(ConfigError, match=r"^listen: .*HOST:PORT"):
        parse_address("7000", key="listen")
    with pytest.raises(ConfigError, match=r"^flap: .*120s:5s"):
        parse_flap("120s")


def test_cli_help_and_bad_option() -> None:
    runner = CliRunner()
    result = runner.invoke(link_cmd, ["--help"])
    assert result.exit_code == 0
    assert "--latency 80ms" in result.output
    result = runner.invoke(
        link_cmd, ["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--latency", "soon"]
    )
    assert result.exit_code == 1
    assert "latency: cannot read duration 'soon'" in result.output


def test_cli_runs_until_sigterm(echo_server: Address) -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "photon",
            "link",
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            f"{echo_server[0]}:{echo_server[1]}",
            "--latency",
            "5ms",
            "--flap",
            "60s:1s",
            "--log-format",
            "json",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stderr is not None
        assert "link_started" in proc.stderr.readline()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"via cli")
            assert recv_exactly(sock, 7) == b"via cli"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
