"""Codecs on a real delta: the `small` preset after one round of local training.

Text is the top-level modules of Python's standard library, tokenized by the byte tokenizer
(`photon.data.prepare`); the trainer is `photon.trainer.Trainer` (AdamW, lr 1e-3, batch 8 x
seq 128). delta = trained − initial, fp32. For each codec:

    ratio        fp32 bytes of the delta ÷ bytes of `encode_object(delta, codec)`
    rel_l2       ||decode(encode(delta)) − delta|| / ||delta||  (0 for fp32: lossless)
    encode_mb_s  fp32 MB (10^6 bytes) of delta per second of `encode_object` (median of 3)
    decode_mb_s  fp32 MB per second of `decode_object`
"""

from __future__ import annotations

import math
import shutil
import sysconfig
import time
from pathlib import Path
from typing import Any

import torch

from bandwidth.codec import decode_object, encode_object
from bench.transfer.env import MB, median
from photon.codecs import CODECS, DEFAULT_BLOCK_SIZE
from photon.data import TokenLoader, TokenShards, prepare
from photon.model import build_model, preset
from photon.tokenizer import ByteTokenizer
from photon.trainer import Trainer, TrainerConfig

TEXT_BYTES = 4_000_000
"""About this much stdlib source becomes training text."""
BLOCK_SIZE = DEFAULT_BLOCK_SIZE  # the federation's default block size
REPEATS = 3


def stdlib_text(dest: Path, budget: int = TEXT_BYTES) -> int:
    """Copy top-level stdlib modules (sorted by name) into `dest` until `budget` bytes."""
    dest.mkdir(parents=True, exist_ok=True)
    used = 0
    for src in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        if used >= budget:
            break
        shutil.copyfile(src, dest / src.name)
        used += src.stat().st_size
    return used


def train_delta(work: Path, steps: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """One round of local training of the `small` preset; (delta, facts about the round)."""
    text_bytes = stdlib_text(work / "text")
    report = prepare(work / "text", work / "data", ByteTokenizer(), heldout_fraction=0.0)
    loader = TokenLoader(TokenShards(work / "data"), batch_size=8, seq_len=128, seed=0)
    model = build_model(preset("small", ByteTokenizer.vocab_size), seed=0)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg = TrainerConfig(lr=1e-3, warmup_steps=2, batch_size=8, seq_len=128, device="cpu")
    stats = Trainer(model, cfg, loader).train(steps, global_step=0)
    delta = {
        k: (v.detach().float() - initial[k]).contiguous() for k, v in model.state_dict().items()
    }
    facts = {
        "preset": "small",
        "params": sum(t.numel() for t in delta.values()),
        "steps": steps,
        "text_bytes": text_bytes,
        "train_tokens_available": report.train_tokens,
        "mean_loss": round(stats.mean_loss, 3),
        "last_loss": round(stats.last_loss, 3),
        "train_s": round(stats.seconds, 1),
    }
    return delta, facts


def _rel_l2(decoded: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]) -> float:
    err = sum(float((decoded[k] - t).double().pow(2).sum()) for k, t in delta.items())
    ref = sum(float(t.double().pow(2).sum()) for t in delta.values())
    return math.sqrt(err / ref) if ref else 0.0


def measure_codec(delta: dict[str, torch.Tensor], codec: str) -> dict[str, float]:
    raw = sum(t.numel() * 4 for t in delta.values())
    enc_s, dec_s = [], []
    blob = b""
    decoded: dict[str, torch.Tensor] = {}
    for _ in range(REPEATS):
        started = time.perf_counter()
        blob = encode_object(delta, codec, block_size=BLOCK_SIZE)
        enc_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        decoded = decode_object(blob)
        dec_s.append(time.perf_counter() - started)
    return {
        "ratio": round(raw / len(blob), 3),
        "rel_l2": float(f"{_rel_l2(decoded, delta):.4g}"),
        "encode_mb_s": round(raw / MB / median(enc_s), 1),
        "decode_mb_s": round(raw / MB / median(dec_s), 1),
        "encoded_bytes": len(blob),
    }


def measure(work: Path, steps: int) -> dict[str, Any]:
    delta, facts = train_delta(work, steps)
    codecs = {codec: measure_codec(delta, codec) for codec in CODECS}
    return {"codecs": codecs, "codecs_detail": {**facts, "block_size": BLOCK_SIZE}}
