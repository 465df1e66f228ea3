"""Deal a text corpus out to N silos: the way to build a federation's data from one folder.

Two modes:

- `iid`: documents (files) are shuffled with the seed and dealt round-robin, so every silo
  sees the same mix of text.
- `by-source`: each top-level entry of the input folder (a project, a site, a book) goes
  wholly to one silo, largest first onto the silo with the fewest bytes: silos hold different
  kinds of text, the non-IID setting federated training has to cope with.

Files are copied under `out_dir/silo-<i>/`, keeping their paths relative to the input folder;
only files `photon data prepare` reads are copied, and `site-packages` and `__pycache__` folders
are skipped.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from photon.data import TEXT_SUFFIXES
from photon.errors import DataError
from photon.fsutil import atomic_open

SplitMode = Literal["iid", "by-source"]
MODES: tuple[SplitMode, ...] = ("iid", "by-source")
SKIP_DIRS = frozenset({"site-packages", "__pycache__"})


@dataclass(frozen=True, slots=True)
class SplitReport:
    """What `split_corpus` wrote."""

    out_dir: Path
    """The folder holding `silo-<i>/`."""
    silo_dirs: tuple[Path, ...]
    """One folder per silo, in silo order."""
    files: tuple[int, ...]
    """Files copied to each silo."""
    bytes: tuple[int, ...]
    """Bytes copied to each silo."""


def is_document(path: Path) -> bool:
    """A file `photon data prepare` reads (text, .jsonl, either optionally gzipped)."""
    name = path.name.removesuffix(".gz")
    return name.endswith((*TEXT_SUFFIXES, ".jsonl"))


def list_documents(root: Path) -> list[Path]:
    """Document files under `root` (relative to it, sorted), skipping SKIP_DIRS."""
    found: list[Path] = []
    if root.is_file():
        return [Path(root.name)] if is_document(root) else []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        here = Path(dirpath)
        found.extend(here / f for f in filenames if is_document(here / f))
    return sorted(p.relative_to(root) for p in found)


def deal_iid(files: list[Path], n_silos: int, seed: int) -> list[list[Path]]:
    """Shuffle with `seed`, then deal round-robin."""
    order = sorted(files)
    random.Random(seed).shuffle(order)  # noqa: S311 (a reproducible deal, not a secret)
    return [order[i::n_silos] for i in range(n_silos)]


def deal_by_source(sizes: dict[Path, int], n_silos: int) -> list[list[Path]]:
    """Greedy: largest entry first, each onto the silo with the fewest bytes so far."""
    silos: list[list[Path]] = [[] for _ in range(n_silos)]
    load = [0] * n_silos
    for entry in sorted(sizes, key=lambda p: (-sizes[p], str(p))):
        target = min(range(n_silos), key=lambda i: (load[i], len(silos[i]), i))
        silos[target].append(entry)
        load[target] += sizes[entry]
    return silos


def _top_level_entries(input_dir: Path) -> dict[Path, list[Path]]:
    """Top-level entry -> its document files (relative to input_dir); empty entries dropped."""
    entries: dict[Path, list[Path]] = {}
    for child in sorted(input_dir.iterdir()):
        if child.name in SKIP_DIRS:
            continue
        docs = list_documents(child)
        if docs:
            prefix = Path(child.name)
            entries[prefix] = [prefix / d if child.is_dir() else prefix for d in docs]
    return entries


def _copy(src: Path, dst: Path) -> int:
    with src.open("rb") as fin, atomic_open(dst) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    return dst.stat().st_size


def _check_dirs(input_dir: Path, out_dir: Path, n_silos: int) -> None:
    if n_silos < 1:
        raise DataError("the number of silos must be >= 1")
    if not input_dir.is_dir():
        raise DataError(f"input folder {input_dir} does not exist")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"output folder {out_dir} is not empty; remove it or choose another")
    if out_dir.resolve().is_relative_to(input_dir.resolve()):
        raise DataError(f"output folder {out_dir} lies inside the input folder {input_dir}")


def split_corpus(
    input_dir: Path, out_dir: Path, n_silos: int, *, mode: SplitMode = "iid", seed: int = 0
) -> SplitReport:
    """Copy the documents under `input_dir` into `out_dir/silo-<i>/`, one silo per file.

    DataError when the folders are wrong or there are fewer files (iid) or top-level entries
    (by-source) than silos, since a silo without text cannot train.
    """
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    _check_dirs(input_dir, out_dir, n_silos)
    if mode == "iid":
        files = list_documents(input_dir)
        _need(len(files), n_silos, "document files", input_dir)
        dealt = deal_iid(files, n_silos, seed)
    elif mode == "by-source":
        entries = _top_level_entries(input_dir)
        _need(len(entries), n_silos, "top-level entries holding documents", input_dir)
        sizes = {e: sum((input_dir / f).stat().st_size for f in fs) for e, fs in entries.items()}
        dealt = [
            sorted(f for e in group for f in entries[e]) for group in deal_by_source(sizes, n_silos)
        ]
    else:
        raise DataError(f"unknown split mode {mode!r}; choose one of {', '.join(MODES)}")
    silo_dirs = tuple(out_dir / f"silo-{i}" for i in range(n_silos))
    copied = []
    for silo_dir, group in zip(silo_dirs, dealt, strict=True):
        silo_dir.mkdir(parents=True, exist_ok=True)
        copied.append(sum(_copy(input_dir / f, silo_dir / f) for f in group))
    return SplitReport(out_dir, silo_dirs, tuple(len(g) for g in dealt), tuple(copied))


def _need(found: int, n_silos: int, what: str, input_dir: Path) -> None:
    if found < n_silos:
        raise DataError(
            f"{input_dir} has {found} {what}, fewer than {n_silos} silos; "
            "use fewer silos or add text"
        )
