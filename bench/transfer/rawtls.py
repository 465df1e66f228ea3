"""The baseline: a raw TLS 1.3 socket (Python `ssl`, the federation's mTLS certificates).

One request per connection: an op byte and a u64 size, then

- `U`: the client sends `size` bytes in `chunk_bytes` sends; the server writes them to a file
  the way our spool does (write, fsync every 32 MiB and at the end), then answers `K`;
- `u`: the same, but the server reads and discards (shows the disk's share);
- `D`: the server sends its `--source` file in `chunk_bytes` sends; the client writes it to a
  file (fsync every 32 MiB and at the end).

The client's time runs from connect to the server's `K` (upload) or the file's final fsync
(download), so both paths are timed to the same point: the bytes durable on the receiver.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
from pathlib import Path

from bandwidth.chunking import SYNC_EVERY
from photon.fsutil import atomic_write_bytes
from photon.pki import aggregator_paths, ca_paths, silo_paths

_REQUEST = struct.Struct("<cQ")


def server_context(certs: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    cert, key = aggregator_paths(certs)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca_paths(certs)[0])
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(certs: Path, silo: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(ca_paths(certs)[0])
    cert, key = silo_paths(certs, silo)
    ctx.load_cert_chain(cert, key)
    return ctx


def _recv_exact(sock: ssl.SSLSocket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            raise ConnectionError("peer closed early")
        buf += part
    return bytes(buf)


def receive(sock: ssl.SSLSocket, size: int, chunk_bytes: int, dest: Path | None) -> None:
    """Read `size` bytes into `dest` (fsync every 32 MiB and at the end), or discard them."""
    buf = bytearray(chunk_bytes)
    view = memoryview(buf)
    fh = None if dest is None else dest.open("wb", buffering=0)
    try:
        left, unsynced = size, 0
        while left:
            n = sock.recv_into(view[: min(chunk_bytes, left)])
            if not n:
                raise ConnectionError(f"peer closed with {left} bytes to go")
            left -= n
            if fh is not None:
                fh.write(view[:n])
                unsynced += n
                if unsynced >= SYNC_EVERY:
                    os.fsync(fh.fileno())
                    unsynced = 0
        if fh is not None:
            os.fsync(fh.fileno())
    finally:
        if fh is not None:
            fh.close()


def send_file(sock: ssl.SSLSocket, path: Path, chunk_bytes: int) -> None:
    """Send a file in `chunk_bytes` sends, each a fresh read (as `iter_file_chunks` does)."""
    with path.open("rb", buffering=0) as fh:
        while data := fh.read(chunk_bytes):
            sock.sendall(data)


def _handle(conn: ssl.SSLSocket, out_dir: Path, source: Path | None, chunk_bytes: int) -> None:
    with conn:
        op, size = _REQUEST.unpack(_recv_exact(conn, _REQUEST.size))
        if op in (b"U", b"u"):
            dest = out_dir / f"raw-{threading.get_ident()}.bin" if op == b"U" else None
            receive(conn, size, chunk_bytes, dest)
            if dest is not None:
                dest.unlink()
            conn.sendall(b"K")
        elif op == b"D" and source is not None:
            send_file(conn, source, chunk_bytes)


def serve(
    *,
    certs: Path,
    listen_host: str,
    port_file: Path,
    out_dir: Path,
    source: Path | None,
    chunk_bytes: int,
    stop: threading.Event,
) -> None:
    """Accept connections until `stop` is set; one thread per connection."""
    ctx = server_context(certs)
    out_dir.mkdir(parents=True, exist_ok=True)
    with socket.create_server((listen_host, 0)) as lsock:
        lsock.settimeout(0.5)
        atomic_write_bytes(port_file, str(lsock.getsockname()[1]).encode())
        while not stop.is_set():
            try:
                raw, _ = lsock.accept()
            except TimeoutError:
                continue
            raw.settimeout(120.0)
            conn = ctx.wrap_socket(raw, server_side=True)
            args = (conn, out_dir, source, chunk_bytes)
            threading.Thread(target=_handle, args=args, daemon=True).start()


def _connect(certs: Path, port: int, host: str) -> ssl.SSLSocket:
    raw = socket.create_connection((host, port), timeout=120.0)
    return client_context(certs, "silo-0").wrap_socket(raw, server_hostname="localhost")


def upload(certs: Path, port: int, path: Path, chunk_bytes: int, *, discard: bool = False) -> str:
    """Send `path` to the raw server; returns the negotiated cipher once the server said K."""
    size = path.stat().st_size
    with _connect(certs, port, "127.0.0.1") as sock:
        sock.sendall(_REQUEST.pack(b"u" if discard else b"U", size))
        send_file(sock, path, chunk_bytes)
        if _recv_exact(sock, 1) != b"K":
            raise ConnectionError("raw server did not acknowledge the upload")
        cipher = sock.cipher()
        return f"{sock.version()} {cipher[0] if cipher else '?'}"


def download(certs: Path, port: int, size: int, dest: Path, chunk_bytes: int) -> None:
    """Receive the server's source file (`size` bytes) into `dest`, durably."""
    with _connect(certs, port, "127.0.0.1") as sock:
        sock.sendall(_REQUEST.pack(b"D", size))
        receive(sock, size, chunk_bytes, dest)
