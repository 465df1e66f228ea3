"""One proxied TCP connection of the link emulator: two pumps, one per direction.

A pump reads its source socket in chunks, schedules each chunk with a `Shaper` (rate, then
latency + jitter) and writes it to the other socket when it is due. Sockets are non-blocking
and each pump waits in `poll()` on its sockets and on the connection's stop pipe, so `stop()`
ends both pumps at once however the link is shaped. While the link is black-holed a pump keeps
reading (up to MAX_IN_FLIGHT bytes, then TCP back-pressure) but writes nothing: the bytes are
held, not dropped, so both ends see what a partition looks like to TCP — silence — and a
connection that outlives a short partition carries on, as it would across a real one.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import math
import os
import random
import select
import socket
import struct
import threading
from collections.abc import Callable
from typing import Literal

from bandwidth.link_shaper import Shaper, read_size
from bandwidth.link_state import Direction, LinkState
from photon.logs import get_logger

log = get_logger("bandwidth.link")

POLL_CAP_S = 0.05
"""Longest a pump sleeps without looking at the link's switches (black hole, profile)."""
CONNECT_TIMEOUT_S = 10.0
MAX_IN_FLIGHT = 32 * 1024 * 1024
"""Bytes one direction may hold (in its delay line or behind a black hole) before it stops
reading; bounds memory and, with latency, the bandwidth-delay product."""

_Out = Literal["idle", "wait", "blocked", "stalled"]


def _watch(poller: select.poll, watched: dict[int, int], fd: int, mask: int) -> None:
    """Make `poller` watch `fd` for `mask` (0: not at all)."""
    if watched.get(fd, 0) == mask:
        return
    if mask:
        poller.register(fd, mask)
        watched[fd] = mask
    else:
        poller.unregister(fd)
        del watched[fd]


def wait_readable(fd: int, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for `fd` to become readable (poll: no FD_SETSIZE limit)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(math.ceil(timeout_s * 1000)))


class Connection:
    """A client socket, its upstream socket and the two pumps between them (in one thread
    that runs the 'up' pump and owns the teardown, and one for 'down')."""

    def __init__(
        self,
        client: socket.socket,
        *,
        number: int,
        upstream: tuple[str, int],
        state: LinkState,
        clock: Callable[[], float],
        on_done: Callable[[Connection], None],
    ) -> None:
        self.number = number
        self.stopping = False
        self._client = client
        self._upstream_addr = upstream
        self._upstream: socket.socket | None = None
        self.state = state
        self.clock = clock
        self._on_done = on_done
        self._stop_r, self._stop_w = os.pipe()
        self._lock = threading.Lock()
        self._closed = False
        self._reset = False
        self.thread = threading.Thread(target=self._run, name=f"link-conn-{number}", daemon=True)

    @property
    def stop_fd(self) -> int:
        return self._stop_r

    def start(self) -> None:
        self.thread.start()

    def stop(self, *, reset: bool) -> None:
        """End both pumps now; with `reset`, both sockets are closed with an RST."""
        with self._lock:
            if self._closed:
                return
            self._reset = self._reset or reset
            if not self.stopping:
                self.stopping = True
                os.write(self._stop_w, b"x")

    def _run(self) -> None:
        try:
            self._client.setblocking(False)
            self._client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._upstream = self._connect()
            if self._upstream is not None:
                self._pump_both(self._upstream)
        except OSError as exc:  # the client went away before its pumps started
            log.debug("link_connection_error", connection=self.number, error=str(exc))
        finally:
            self._teardown()

    def _pump_both(self, upstream: socket.socket) -> None:
        down = Pump(self, "down", upstream, self._client)
        down_thread = threading.Thread(
            target=down.run, name=f"link-conn-{self.number}-down", daemon=True
        )
        down_thread.start()
        Pump(self, "up", self._client, upstream).run()
        down_thread.join()

    def _wait_stop(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for stop(); whether it came."""
        return wait_readable(self._stop_r, timeout_s) or self.stopping

    def _connect(self) -> socket.socket | None:
        """Connect upstream (not while black-holed: the SYN would not get through)."""
        while self.state.blackholed:
            if self._wait_stop(POLL_CAP_S):
                return None
        host, port = self._upstream_addr
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[
                0
            ]
        except OSError as exc:
            log.warning("link_upstream_unreachable", upstream=f"{host}:{port}", error=str(exc))
            return None
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        err = sock.connect_ex(addr)
        if err == errno.EINPROGRESS:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLOUT)
            poller.register(self._stop_r, select.POLLIN)
            ready = dict(poller.poll(CONNECT_TIMEOUT_S * 1000))
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if not err and sock.fileno() not in ready:
                err = errno.ETIMEDOUT
        if err or self.stopping:
            sock.close()
            if err:
                log.warning(
                    "link_upstream_unreachable", upstream=f"{host}:{port}", error=os.strerror(err)
                )
            return None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _teardown(self) -> None:
        with self._lock:
            self._closed = True
            self.stopping = True
            reset = self._reset
            os.close(self._stop_r)
            os.close(self._stop_w)
        for sock in (self._client, self._upstream):
            if sock is None:
                continue
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        self._on_done(self)


class Pump:
    """Moves one direction of a connection through a Shaper's delay line."""

    def __init__(
        self, conn: Connection, direction: Direction, src: socket.socket, dst: socket.socket
    ) -> None:
        self._conn = conn
        self._direction: Direction = direction
        self._src, self._dst = src, dst
        self._state = conn.state
        self._clock = conn.clock
        seed = self._state.profile.seed
        rng = random.Random(f"{seed}/{conn.number}/{direction}")  # noqa: S311 - jitter, not crypto
        self._shaper = Shaper(rng=rng)
        self._queue: collections.deque[tuple[float, memoryview]] = collections.deque()
        self._queued = 0
        self._read_ok_at = float("-inf")
        self._eof = False

    def run(self) -> None:
        """Pump until both EOF and an empty delay line, or stop(); an error resets both ends."""
        try:
            self._loop()
        except OSError as exc:
            log.debug(
                "link_connection_error",
                connection=self._conn.number,
                direction=self._direction,
                error=str(exc),
            )
            self._conn.stop(reset=True)

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._conn.stop_fd, select.POLLIN)
        watched: dict[int, int] = {}
        src_fd, dst_fd = self._src.fileno(), self._dst.fileno()
        while not self._conn.stopping:
            now = self._clock()
            held = self._state.blackholed
            out: _Out = "stalled" if held else self._flush(now)
            if self._conn.stopping:
                return
            if self._eof and not self._queue and not held:
                self._dst.shutdown(socket.SHUT_WR)  # pass the FIN on
                return
            can_read = not self._eof and self._queued < MAX_IN_FLIGHT
            read_now = can_read and now >= self._read_ok_at
            timeout = POLL_CAP_S
            if can_read and not read_now:
                timeout = min(timeout, self._read_ok_at - now)
            if out == "wait":
                timeout = min(timeout, self._queue[0][0] - now)
            _watch(poller, watched, src_fd, select.POLLIN if read_now else 0)
            _watch(poller, watched, dst_fd, select.POLLOUT if out == "blocked" else 0)
            ready = dict(poller.poll(math.ceil(max(0.0, timeout) * 1000)))
            if read_now and src_fd in ready:
                self._read()

    def _read(self) -> None:
        profile = self._state.profile
        try:
            data = self._src.recv(read_size(profile))
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            self._eof = True
            return
        slot = self._shaper.admit(len(data), self._clock(), profile)
        self._read_ok_at = slot.release_at
        self._queue.append((slot.deliver_at, memoryview(data)))
        self._queued += len(data)

    def _flush(self, now: float) -> _Out:
        """Write every chunk that is due; what the output side waits for next."""
        queue = self._queue
        while queue:
            deliver_at, view = queue[0]
            if deliver_at > now:
                return "wait"
            n = self._state.allowance(self._direction, len(view))
            if n == 0:
                return "stalled"  # a cut has fired; the reset is on its way
            try:
                sent = self._dst.send(view[:n] if n < len(view) else view)
            except (BlockingIOError, InterruptedError):
                return "blocked"
            self._queued -= sent
            if sent == len(view):
                queue.popleft()
            else:
                queue[0] = (deliver_at, view[sent:])
            self._state.forwarded(self._direction, sent)
            if self._conn.stopping:
                return "stalled"
        return "idle"
