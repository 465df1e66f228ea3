"""A userspace WAN link between a silo and the aggregator: rate, latency, jitter and faults.

The kernel here has no netem, so a TCP proxy shapes the traffic instead. gRPC over TLS passes
through it as opaque bytes. Tests and the chaos benchmark steer it while it runs:

    profile = LinkProfile.parse(rate="50mbit", latency="80ms", jitter="10ms")
    with LinkEmulator(upstream=("127.0.0.1", aggregator_port), profile=profile) as link:
        connect_silo_to(link.address)
        link.cut_after(1_000_000, direction="up")   # RST mid-upload
        link.blackhole(True)                        # a partition ...
        link.blackhole(False)                       # ... healed
        link.flap(10.0, 2.0, count=3)               # three 2 s outages, one every 10 s

'up' is client -> upstream, 'down' is upstream -> client. Each direction of each connection
is shaped on its own (see link_shaper.py); jitter samples are seeded by `profile.seed`.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

from bandwidth.link_conn import POLL_CAP_S, Connection, wait_readable
from bandwidth.link_profile import LinkProfile, parse_duration
from bandwidth.link_state import CutDirection, LinkState
from photon.errors import ConfigError
from photon.logs import get_logger

__all__ = ["LinkEmulator", "LinkProfile", "parse_duration"]

log = get_logger("bandwidth.link")

CLOSE_TIMEOUT_S = 5.0
"""close() waits at most this long for the connection threads (they stop within ms)."""


class LinkEmulator:
    """A threaded TCP proxy from `listen` to `upstream` that shapes traffic by `profile`.

    The clock drives the shaping and the flap schedule; the sleep paces the flap schedule.
    Every control method is safe to call from any thread while the link runs.
    """

    def __init__(
        self,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        upstream: tuple[str, int] | None = None,
        profile: LinkProfile | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if upstream is None:
            raise TypeError("LinkEmulator() needs upstream=(host, port)")
        self._listen = listen
        self._upstream = upstream
        self._clock = clock
        self._sleep = sleep
        self._state = LinkState(profile or LinkProfile(), on_cut=self._on_cut)
        self._lock = threading.Lock()
        self._conns: set[Connection] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._closing = False
        self._flap_thread: threading.Thread | None = None
        self._flap_stop = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> LinkEmulator:
        """Bind the listening socket and start accepting."""
        if self._listener is not None or self._closing:
            raise RuntimeError("a LinkEmulator starts once")
        host, port = self._listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=128)
        self._listener.setblocking(False)
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="link-accept", daemon=True
        )
        self._accept_thread.start()
        log.info(
            "link_started",
            listen=self._format(self.address),
            upstream=self._format(self._upstream),
            profile=self.profile.describe(),
        )
        return self

    def close(self) -> None:
        """Stop accepting, close every connection and join the threads."""
        self.stop_flap()
        with self._lock:
            if self._closing:
                return
            self._closing = True
            conns = list(self._conns)
        os.write(self._stop_w, b"x")
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        if self._accept_thread is not None:
            self._accept_thread.join(CLOSE_TIMEOUT_S)
        for conn in conns:
            conn.stop(reset=False)
        for conn in conns:
            conn.thread.join(max(0.0, deadline - time.monotonic()))
        if self._listener is not None:
            self._listener.close()
        os.close(self._stop_r)
        os.close(self._stop_w)
        log.info("link_closed", connections_total=self.connections_total)

    def __enter__(self) -> LinkEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) that clients connect to."""
        if self._listener is None:
            raise RuntimeError("start() the LinkEmulator first")
        host, port = self._listener.getsockname()[:2]
        return host, port

    # -- controls ------------------------------------------------------------------------

    @property
    def profile(self) -> LinkProfile:
        return self._state.profile

    def set_profile(self, profile: LinkProfile) -> None:
        """Shape every byte read from now on by `profile` (held bytes keep their schedule)."""
        self._state.profile = profile
        log.info("link_profile", profile=profile.describe())

    def cut_after(self, n_bytes: int, direction: CutDirection = "both") -> None:
        """Reset the active connections once `n_bytes` more have been forwarded in
        `direction` ('both': counting both). One-shot; a new call replaces an armed cut."""
        if n_bytes < 0:
            raise ValueError(f"cut_after needs n_bytes >= 0, got {n_bytes}")
        if direction not in ("up", "down", "both"):
            raise ValueError(f"direction must be 'up', 'down' or 'both', got {direction!r}")
        log.info("link_cut_armed", n_bytes=n_bytes, direction=direction)
        self._state.arm_cut(n_bytes, direction)

    def reset_all(self) -> None:
        """Reset (RST) every active connection now."""
        self._reset_all("reset")

    def blackhole(self, on: bool) -> None:
        """Partition the link: forward nothing either way, new connections included."""
        if on and not self._state.manual_blackhole:
            self._state.count_faults()
            log.warning("link_fault", fault="blackhole")
        elif not on and self._state.manual_blackhole:
            log.info("link_healed", fault="blackhole")
        self._state.manual_blackhole = on

    def refuse(self, on: bool) -> None:
        """While on, new connections are accepted and closed at once."""
        self._state.refusing = on
        log.info("link_refusing" if on else "link_accepting")

    def flap(self, period_s: float, down_s: float, *, count: int | None = None) -> None:
        """Black-hole the link for the last `down_s` of every `period_s`, `count` times
        (forever when None) or until stop_flap(). Replaces a running flap."""
        if not 0 < down_s < period_s:
            raise ConfigError(
                f"flap: need 0 < down ({down_s}s) < period ({period_s}s); write e.g. --flap 120s:5s"
            )
        if count is not None and count < 1:
            raise ConfigError(f"flap: count must be >= 1 or None, got {count}")
        self.stop_flap()
        self._flap_stop = threading.Event()
        self._flap_thread = threading.Thread(
            target=self._flap_loop,
            args=(period_s, down_s, count, self._flap_stop),
            name="link-flap",
            daemon=True,
        )
        self._flap_thread.start()

    def stop_flap(self) -> None:
        """End a flap schedule; the link comes back up if the flap had it down."""
        self._flap_stop.set()
        if self._flap_thread is not None:
            self._flap_thread.join(CLOSE_TIMEOUT_S)
            self._flap_thread = None
        self._state.flap_blackhole = False

    @property
    def flapping(self) -> bool:
        """Whether a flap schedule is still running."""
        thread = self._flap_thread
        return thread is not None and thread.is_alive()

    # -- counters ------------------------------------------------------------------------

    @property
    def bytes_up(self) -> int:
        """Bytes forwarded client -> upstream."""
        return self._state.bytes_forwarded("up")

    @property
    def bytes_down(self) -> int:
        """Bytes forwarded upstream -> client."""
        return self._state.bytes_forwarded("down")

    @property
    def connections_total(self) -> int:
        """Connections accepted and proxied (refused ones count as faults instead)."""
        return self._state.counts()[0]

    @property
    def connections_active(self) -> int:
        return self._state.counts()[1]

    @property
    def faults_injected(self) -> int:
        """Connections reset or refused, plus each time a black hole (or flap) went down."""
        return self._state.counts()[2]

    # -- internals -----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        poller = select.poll()
        poller.register(self._listener.fileno(), select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while not self._closing:
            poller.poll()
            if self._closing:
                return
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:  # e.g. out of file descriptors: back off, keep serving
                log.warning("link_accept_failed", error=str(exc))
                wait_readable(self._stop_r, POLL_CAP_S)
                continue
            self._admit(client)

    def _admit(self, client: socket.socket) -> None:
        if self._state.refusing:
            self._state.count_faults()
            log.warning("link_fault", fault="refuse")
            client.close()
            return
        with self._lock:
            if self._closing:
                client.close()
                return
            conn = Connection(
                client,
                number=self._state.connection_opened(),
                upstream=self._upstream,
                state=self._state,
                clock=self._clock,
                on_done=self._forget,
            )
            self._conns.add(conn)
        conn.start()

    def _forget(self, conn: Connection) -> None:
        with self._lock:
            self._conns.discard(conn)
        self._state.connection_closed()

    def _reset_all(self, fault: str) -> None:
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.stop(reset=True)
        self._state.count_faults(len(conns))
        log.warning("link_fault", fault=fault, connections=len(conns))

    def _on_cut(self) -> None:
        self._reset_all("cut")

    def _flap_loop(
        self, period: float, down: float, count: int | None, stop: threading.Event
    ) -> None:
        start = self._clock()
        done = 0
        while count is None or done < count:
            cycle = start + done * period
            if self._sleep_until(cycle + period - down, stop):
                break
            self._state.flap_blackhole = True
            self._state.count_faults()
            log.warning("link_fault", fault="flap", down_s=down, flap=done + 1)
            if self._sleep_until(cycle + period, stop):
                break
            self._state.flap_blackhole = False
            log.info("link_healed", fault="flap", flap=done + 1)
            done += 1
        self._state.flap_blackhole = False

    def _sleep_until(self, deadline: float, stop: threading.Event) -> bool:
        """Sleep until `deadline` on the injected clock; True if stopped first."""
        while not stop.is_set():
            remaining = deadline - self._clock()
            if remaining <= 0:
                return False
            self._sleep(min(remaining, POLL_CAP_S))
        return True

    @staticmethod
    def _format(address: tuple[str, int]) -> str:
        host, port = address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
