"""Text every machine with Python has: the standard library's source, split by package.

Each silo gets whole packages (so silos differ, as institutions' corpora do); the aggregator's
evaluation set gets packages no silo trains on.
"""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

from photon.errors import DataError

_SKIP = {
    "site-packages",
    "test",
    "tests",
    "idlelib",
    "__pycache__",
    "lib2to3",
    "turtledemo",
    "ensurepip",
    "config-3",
    "lib-dynload",
}


def stdlib_dir() -> Path:
    path = Path(sysconfig.get_paths()["stdlib"])
    if not (path / "os.py").exists():
        raise DataError(f"cannot find the Python standard library source at {path}")
    return path


def stdlib_packages(root: Path) -> list[Path]:
    """Top-level packages with Python source, sorted by name."""
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir()
        and (p / "__init__.py").exists()
        and p.name not in _SKIP
        and not p.name.startswith(("config-", "_"))
    )


def _size(package: Path) -> int:
    return sum(f.stat().st_size for f in package.rglob("*.py"))


def split_stdlib(
    out_dir: Path, n_silos: int, *, bytes_per_silo: int, eval_bytes: int
) -> tuple[list[Path], Path]:
    """Copy packages into `out_dir/silo-<i>/` (round-robin by name until each has
    `bytes_per_silo`) and `out_dir/eval/`; return the silo folders and the eval folder."""
    packages = stdlib_packages(stdlib_dir())
    silo_dirs = [out_dir / f"silo-{i}" for i in range(n_silos)]
    eval_dir = out_dir / "eval"
    targets = [*silo_dirs, eval_dir]
    budget = [bytes_per_silo] * n_silos + [eval_bytes]
    filled = [0] * len(targets)
    for turn, package in enumerate(packages):
        open_slots = [i for i in range(len(targets)) if filled[i] < budget[i]]
        if not open_slots:
            break
        slot = open_slots[turn % len(open_slots)]
        _copy_package(package, targets[slot] / package.name, budget[slot] - filled[slot])
        filled[slot] += min(_size(package), budget[slot] - filled[slot])
    if min(filled) == 0:
        raise DataError("the standard library has too few packages for this many silos")
    return silo_dirs, eval_dir


def _copy_package(src: Path, dst: Path, limit: int) -> None:
    copied = 0
    for f in sorted(src.rglob("*.py")):
        if copied >= limit or any(part in _SKIP for part in f.relative_to(src).parts):
            continue
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
        copied += f.stat().st_size
