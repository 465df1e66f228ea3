"""Hostile-environment helpers: a small tmpfs to fill up, a filler file, a flipped bit.

Mounting needs root (CAP_SYS_ADMIN); where it is refused the test is skipped with the reason.
Every mount is unmounted when its context ends, whatever the test did.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

FILLER = ".filler"


@contextmanager
def small_tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "64m") at `mountpoint`, unmounted afterwards."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(folder: Path, leave: int = 0) -> Path:
    """Write a filler file into `folder` until at most `leave` bytes are free; returns it."""
    filler = folder / FILLER
    with filler.open("ab") as fh:
        block = b"\0" * (1 << 20)
        while (room := free_bytes(folder) - leave) > 0:
            try:
                fh.write(block[: min(len(block), room)])
                fh.flush()
            except OSError:
                break
    return filler


def unfill(folder: Path) -> None:
    (folder / FILLER).unlink(missing_ok=True)


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    """Flip one bit of the byte at `offset` (negative: from the end), in place."""
    with path.open("r+b") as fh:
        fh.seek(offset, os.SEEK_SET if offset >= 0 else os.SEEK_END)
        where = fh.tell()
        byte = fh.read(1)[0]
        fh.seek(where)
        fh.write(bytes([byte ^ (1 << bit)]))
