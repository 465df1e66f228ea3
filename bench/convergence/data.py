"""The convergence benchmark's corpus: four silos of real text that differ, all offline.

English, German and Italian fortune cookies (Debian's `fortunes`, `fortunes-de`,
`fortunes-it`; one fortune = one document, so the held-out split is fortunes the silo never
trains on) and Python's standard-library source (one file = one document). When the Debian
packages cannot be installed, every silo is a slice of the standard library instead (by
package), and the corpus record says so.

The global eval set is the union of the four silos' held-out splits, interleaved one
sequence at a time so that any prefix of it (an evaluation reads the first `batches x
batch_size` windows) holds every silo equally.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from photon.cli.localfed.corpus import split_stdlib, stdlib_dir, stdlib_packages
from photon.data import TokenShards, prepare
from photon.errors import DataError
from photon.fsutil import atomic_open, atomic_write_bytes
from photon.tokenizer import ByteTokenizer

FORTUNES = Path("/usr/share/games/fortunes")
PACKAGES = ("fortunes", "fortunes-de", "fortunes-it")
LANGUAGES = {"en": FORTUNES, "de": FORTUNES / "de", "it": FORTUNES / "it"}
HELDOUT = 0.05
_SKIP_DIRS = {"test", "tests", "__pycache__", "idlelib", "turtledemo"}
NAMES = ["fortunes-en", "fortunes-de", "fortunes-it", "python"]


@dataclass(slots=True)
class Corpus:
    """Prepared folders of one benchmark, and where their text came from."""

    silo_dirs: list[Path]
    eval_dir: Path
    names: list[str]
    source: str
    notes: list[str] = field(default_factory=list)
    stats: dict[str, dict[str, int]] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "silos": self.names,
            "notes": self.notes,
            "stats": self.stats,
            "eval_dir": str(self.eval_dir),
        }


def fortune_files(folder: Path) -> list[Path]:
    """The fortune text files of one language folder (no .dat indexes, .u8 links, links)."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")
    )


def _have_fortunes() -> bool:
    return all(fortune_files(d) for d in LANGUAGES.values())


def ensure_fortunes(notes: list[str]) -> bool:
    """True when all three languages are on disk: install the packages if needed (and run
    `apt-get update` first when a plain install fails)."""
    if _have_fortunes():
        return True
    apt = shutil.which("apt-get")
    if apt is None:
        notes.append("apt-get not found; cannot install the fortunes packages")
        return False
    install = ["install", "-y", *PACKAGES]
    for args in (install, ["update"], install):
        try:
            done = subprocess.run(
                [apt, *args], capture_output=True, text=True, check=False, timeout=900
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            notes.append(f"`apt-get {' '.join(args)}` could not run: {exc}")
            continue
        if done.returncode != 0:
            notes.append(f"`apt-get {' '.join(args)}` failed: {done.stderr.strip()[-300:]}")
        elif args is install and _have_fortunes():
            notes.append(f"installed {' '.join(PACKAGES)} with apt-get")
            return True
    return _have_fortunes()


def fortunes_to_jsonl(files: list[Path], out: Path, max_bytes: int) -> int:
    """One JSON line per fortune (fortunes are separated by lines holding only `%`)."""
    written = 0
    with atomic_open(out) as fh:
        for path in files:
            text = path.read_bytes().decode("utf-8", errors="replace")
            for fortune in text.replace("\r\n", "\n").split("\n%\n"):
                fortune = fortune.strip("%\n")
                if not fortune.strip() or written >= max_bytes:
                    continue
                line = json.dumps({"text": fortune + "\n"}, ensure_ascii=False) + "\n"
                fh.write(line.encode())
                written += len(fortune.encode())
    return written


def copy_stdlib(out: Path, max_bytes: int) -> int:
    """Standard-library .py files, package by package in name order, up to `max_bytes`."""
    copied = 0
    root = stdlib_dir()
    for package in stdlib_packages(root):
        for src in sorted(package.rglob("*.py")):
            if copied >= max_bytes or _SKIP_DIRS & set(src.relative_to(root).parts[:-1]):
                continue
            dst = out / src.relative_to(root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            copied += src.stat().st_size
    return copied


def _text_dirs(work: Path, max_bytes: int, notes: list[str]) -> tuple[list[Path], list[str], str]:
    text = work / "text"
    if ensure_fortunes(notes):
        dirs = []
        for lang, folder in LANGUAGES.items():
            (text / lang).mkdir(parents=True, exist_ok=True)
            fortunes_to_jsonl(fortune_files(folder), text / lang / "fortunes.jsonl", max_bytes)
            dirs.append(text / lang)
        copy_stdlib(text / "python", max_bytes)
        return (
            [*dirs, text / "python"],
            ["fortunes-en", "fortunes-de", "fortunes-it", "python"],
            ("debian-fortunes+python-stdlib"),
        )
    notes.append("FALLBACK: four silos of Python standard-library packages (not the fortunes)")
    dirs, _ = split_stdlib(text / "stdlib", 4, bytes_per_silo=max_bytes, eval_bytes=1)
    return dirs, [f"stdlib-{i}" for i in range(4)], "python-stdlib-fallback"


def build_corpus(work: Path, *, max_bytes: int, seq_len: int, eval_windows: int) -> Corpus:
    """Text -> four prepared silo folders (5% held out) -> the interleaved eval folder."""
    notes: list[str] = []
    texts, names, source = _text_dirs(work, max_bytes, notes)
    tokenizer = ByteTokenizer()
    silo_dirs, stats = [], {}
    for name, text in zip(names, texts, strict=True):
        report = prepare(text, work / "data" / name, tokenizer, heldout_fraction=HELDOUT, seed=0)
        silo_dirs.append(report.out_dir)
        stats[name] = {
            "documents": report.documents,
            "train_tokens": report.train_tokens,
            "heldout_tokens": report.heldout_tokens,
        }
    eval_dir = work / "data" / "eval"
    per_silo = interleave_heldout(silo_dirs, eval_dir, seq_len=seq_len, windows=eval_windows)
    notes.append(f"eval set: {per_silo} held-out sequences of {seq_len} tokens from each silo")
    return Corpus(silo_dirs, eval_dir, names, source, notes, stats)


def interleave_heldout(sources: list[Path], out_dir: Path, *, seq_len: int, windows: int) -> int:
    """Write a prepared folder whose held-out split is the sources' held-out splits taken one
    `seq_len` chunk from each in turn (the same number from each); return that number."""
    shards = [TokenShards(s) for s in sources]
    held = [s.tokens("heldout") for s in shards]
    per_silo = min([windows, *((len(h) - 1) // seq_len for h in held)])
    if per_silo < 1:
        raise DataError(f"a silo's held-out split is shorter than one sequence of {seq_len}")
    chunks = [h[k * seq_len : (k + 1) * seq_len] for k in range(per_silo) for h in held]
    tail = held[0][per_silo * seq_len : per_silo * seq_len + 1]  # the last window's target
    tokens = np.concatenate([*chunks, tail]).astype(shards[0].dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "train.bin", b"")
    atomic_write_bytes(out_dir / "heldout.bin", tokens.tobytes())
    meta = {
        **shards[0].meta,
        "documents": len(sources),
        "train_tokens": 0,
        "heldout_tokens": len(tokens),
        "heldout_fraction": 1.0,
        "interleaved_from": [str(s) for s in sources],
    }
    atomic_write_bytes(out_dir / "meta.json", json.dumps(meta, indent=2).encode())
    return per_silo
