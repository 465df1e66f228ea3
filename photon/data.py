"""Token shards: `photon data prepare` turns a folder of text into them; silos read them.

A prepared folder holds `train.bin` and `heldout.bin` (raw little-endian uint16 tokens, or
uint32 for vocabularies past 65535) and `meta.json`. Documents go wholly to one split,
chosen by a seeded hash of their source, so the held-out split is text the silo never trains on.
Shards are memory-mapped; the loader's position is a value (`state_dict`) the silo saves.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from photon.errors import DataError
from photon.fsutil import atomic_open, atomic_write_bytes
from photon.tokenizer import Tokenizer

FORMAT_VERSION = 1
TEXT_SUFFIXES = (".txt", ".py", ".md", ".rst", ".text")
SPLITS = ("train", "heldout")


@dataclass(frozen=True, slots=True)
class PrepareReport:
    out_dir: Path
    documents: int
    train_tokens: int
    heldout_tokens: int


def _is_text(path: Path) -> bool:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return name.endswith((*TEXT_SUFFIXES, ".jsonl"))


def _read(path: Path) -> str:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    return raw.decode("utf-8", errors="replace")


def iter_documents(input_dir: Path) -> Iterator[tuple[str, str]]:
    """(source id, text) of every document under `input_dir`, in sorted path order.
    Text files are one document each; a `.jsonl` line is one document (its `text` field)."""
    if not input_dir.is_dir():
        raise DataError(f"input folder {input_dir} does not exist")
    for path in sorted(p for p in input_dir.rglob("*") if p.is_file() and _is_text(p)):
        rel = str(path.relative_to(input_dir))
        text = _read(path)
        if ".jsonl" not in path.name:
            yield rel, text
            continue
        for i, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(
                    f"{path}:{i + 1}: expected a JSON object with a 'text' field ({exc})"
                ) from exc
            yield f"{rel}:{i}", str(doc)


def _in_heldout(source: str, fraction: float, seed: int) -> bool:
    h = hashlib.sha256(f"{seed}:{source}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


def prepare(
    input_dir: Path,
    out_dir: Path,
    tokenizer: Tokenizer,
    *,
    heldout_fraction: float = 0.05,
    seed: int = 0,
    max_bytes: int | None = None,
) -> PrepareReport:
    """Tokenize every document, append EOS, write the two splits and `meta.json`."""
    if not 0.0 <= heldout_fraction <= 1.0:
        raise DataError("heldout_fraction must be within [0, 1]")
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {s: 0 for s in SPLITS}
    docs, used = 0, 0
    with atomic_open(out_dir / "train.bin") as train, atomic_open(out_dir / "heldout.bin") as held:
        for source, text in iter_documents(input_dir):
            if max_bytes is not None and used >= max_bytes:
                break
            used += len(text.encode("utf-8", errors="replace"))
            ids = np.asarray([*tokenizer.encode(text), tokenizer.eos_id], dtype=dtype)
            split = "heldout" if _in_heldout(source, heldout_fraction, seed) else "train"
            (held if split == "heldout" else train).write(ids.tobytes())
            counts[split] += len(ids)
            docs += 1
        if docs == 0:  # raised inside the `with`: earlier shards in out_dir stay untouched
            raise DataError(
                f"no text documents ({', '.join(TEXT_SUFFIXES)}, .jsonl, .gz) under {input_dir}"
            )
    meta = {
        "format_version": FORMAT_VERSION,
        "tokenizer": tokenizer.name,
        "tokenizer_digest": tokenizer.digest(),
        "vocab_size": tokenizer.vocab_size,
        "dtype": np.dtype(dtype).name,
        "documents": docs,
        "train_tokens": counts["train"],
        "heldout_tokens": counts["heldout"],
        "heldout_fraction": heldout_fraction,
        "seed": seed,
    }
    atomic_write_bytes(out_dir / "meta.json", json.dumps(meta, indent=2).encode())
    return PrepareReport(out_dir, docs, counts["train"], counts["heldout"])


class TokenShards:
    """A prepared folder, memory-mapped read-only."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir)
        try:
            self.meta: dict[str, Any] = json.loads((self.dir / "meta.json").read_bytes())
        except FileNotFoundError:
            raise DataError(
                f"{self.dir} is not a prepared data folder (no meta.json); run "
                f"`photon data prepare --input TEXT_DIR --out {self.dir}`"
            ) from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{self.dir / 'meta.json'} is corrupt: {exc}") from exc
        self.dtype = np.dtype(str(self.meta.get("dtype", "uint16")))
        self.splits = {s: self._map(s) for s in SPLITS}

    def _map(self, split: str) -> np.ndarray:
        path = self.dir / f"{split}.bin"
        expected = int(self.meta.get(f"{split}_tokens", 0))
        size = path.stat().st_size if path.exists() else -1
        if size != expected * self.dtype.itemsize:
            raise DataError(
                f"{path} holds {size} bytes, meta.json says {expected} tokens; "
                "prepare the folder again"
            )
        if expected == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(path, dtype=self.dtype, mode="r")

    def tokens(self, split: str) -> np.ndarray:
        return self.splits[split]

    def check_tokenizer(self, digest: str) -> None:
        mine = str(self.meta.get("tokenizer_digest", ""))
        if mine != digest:
            raise DataError(
                f"{self.dir} was prepared with tokenizer {self.meta.get('tokenizer')!r} "
                f"(digest {mine[:12]}), but the federation uses digest {digest[:12]}; prepare "
                "the data again with the federation's tokenizer"
            )


class TokenLoader:
    """Seeded random windows of `seq_len + 1` tokens, a new permutation each epoch."""

    def __init__(
        self, shards: TokenShards, *, split: str = "train", batch_size: int, seq_len: int, seed: int
    ) -> None:
        self.data = shards.tokens(split)
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.windows = (len(self.data) - 1) // seq_len
        if self.windows < 1:
            raise DataError(
                f"the {split} split of {shards.dir} has {len(self.data)} tokens, "
                f"fewer than one sequence of {seq_len + 1}; add text"
            )
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.windows)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for _ in range(self.batch_size):
            if self.position >= self.windows:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            start = int(self._order[self.position]) * self.seq_len
            rows.append(np.asarray(self.data[start : start + self.seq_len + 1], dtype=np.int64))
            self.position += 1
        batch = torch.from_numpy(np.stack(rows))
        return batch[:, :-1], batch[:, 1:]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["seed"]) != self.seed:
            raise DataError("loader state was saved with another seed")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()


def eval_batches(
    shards: TokenShards, *, seq_len: int, batch_size: int, max_batches: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Sequential held-out windows; raises DataError (when iterated) if the split is empty."""
    data = shards.tokens("heldout")
    windows = (len(data) - 1) // seq_len
    if windows < 1:
        raise DataError(
            f"the held-out split of {shards.dir} is empty; prepare with a larger "
            "--heldout fraction or more text"
        )
    starts = [i * seq_len for i in range(min(windows, max_batches * batch_size))]
    for b in range(0, len(starts), batch_size):
        rows = [
            np.asarray(data[s : s + seq_len + 1], dtype=np.int64)
            for s in starts[b : b + batch_size]
        ]
        batch = torch.from_numpy(np.stack(rows))
        yield batch[:, :-1], batch[:, 1:]
