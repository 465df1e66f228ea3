"""Safetensors checkpoints: round trip, atomic writes, torn files, digests, pruning."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs
from torch import Tensor

import photon.checkpoint as ckpt
from aggregator.strategies import OuterConfig, OuterOptimizer, make_outer
from photon.checkpoint import (
    clean_tmp,
    latest_checkpoint,
    list_versions,
    load_checkpoint,
    param_digest,
    prune,
    save_checkpoint,
)
from photon.errors import CheckpointError

META = {"round": "7", "model_config": '{"preset": "tiny"}', "federation_digest": "abc123"}


def params(seed: int = 0) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "model.embed_tokens.weight": torch.randn(11, 4, generator=gen),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(4, 4, generator=gen),
        "model.norm.weight": torch.randn(4, generator=gen).to(torch.bfloat16),
    }


def save(directory: Path, version: int, seed: int = 0) -> Path:
    state = {"step": torch.tensor(3), "momentum/model.norm.weight": torch.ones(4)}
    return save_checkpoint(
        directory, version=version, params=params(seed), outer_state=state, meta=META
    )


def test_round_trip(tmp_path: Path) -> None:
    path = save(tmp_path, 3)
    assert path == tmp_path / "v000003.safetensors"
    loaded = load_checkpoint(path)
    assert loaded.version == 3 and loaded.path == path
    assert loaded.params.keys() == params().keys()
    for name, t in params().items():
        assert loaded.params[name].dtype == t.dtype and torch.equal(loaded.params[name], t)
    assert set(loaded.outer_state) == {"step", "momentum/model.norm.weight"}
    assert int(loaded.outer_state["step"]) == 3
    assert loaded.meta["version"] == "3" and loaded.meta["param_digest"] == param_digest(params())
    assert loaded.meta["outer_digest"] == param_digest(loaded.outer_state)
    assert {k: loaded.meta[k] for k in META} == META and "created_at" in loaded.meta


def test_latest_and_list_ignore_strays(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None and list_versions(tmp_path / "nope") == []
    for v in (2, 10, 1):
        save(tmp_path, v, seed=v)
    (tmp_path / ".v000011.safetensors.tmp-123").write_bytes(b"half a file")
    (tmp_path / "notes.txt").write_text("x")
    assert list_versions(tmp_path) == [1, 2, 10]
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.version == 10
    assert param_digest(latest.params) == param_digest(params(10))


def test_failed_write_leaves_previous_file_and_no_final(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = save(tmp_path, 1)
    before = first.read_bytes()

    def torn_writer(tensors: object, filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(before[:100])
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", torn_writer)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path, 2)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path, 1, seed=5)  # overwriting the same version is atomic too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v000001.safetensors"]
    assert first.read_bytes() == before


def test_truncated_newest_falls_back_with_warning(tmp_path: Path) -> None:
    save(tmp_path, 1, seed=1)
    newest = save(tmp_path, 2, seed=2)
    newest.write_bytes(newest.read_bytes()[:-10])
    with capture_logs() as logs:
        latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.version == 1
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [(e["event"], e["version"]) for e in warnings] == [("checkpoint_skipped", 2)]
    assert newest.exists()  # kept for a person to look at
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(newest)


def test_flipped_bit_is_caught_by_digest(tmp_path: Path) -> None:
    save(tmp_path, 1, seed=1)
    newest = save(tmp_path, 2, seed=2)
    flip_bit(newest, "model.embed_tokens.weight")
    with pytest.raises(CheckpointError, match="param_digest"):
        load_checkpoint(newest)
    assert load_checkpoint(newest, verify=False).version == 2
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.version == 1


def test_flipped_bit_in_outer_state_is_caught(tmp_path: Path) -> None:
    path = save(tmp_path, 1)
    flip_bit(path, "outer/momentum/model.norm.weight")
    with pytest.raises(CheckpointError, match="outer_digest"):
        load_checkpoint(path)


def flip_bit(path: Path, tensor: str) -> None:
    """Flip one bit inside `tensor`'s bytes, using the safetensors header layout."""
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    start, _ = json.loads(data[8 : 8 + header_len])[tensor]["data_offsets"]
    data[8 + header_len + start] ^= 0x01
    path.write_bytes(bytes(data))


def test_file_renamed_to_another_version_is_refused(tmp_path: Path) -> None:
    save(tmp_path, 1).rename(tmp_path / "v000005.safetensors")
    with pytest.raises(CheckpointError, match="metadata version"):
        load_checkpoint(tmp_path / "v000005.safetensors")


def test_digest_stable_and_sensitive() -> None:
    base = params()
    reordered = {k: base[k].clone() for k in reversed(list(base))}
    assert param_digest(base) == param_digest(reordered) == param_digest(params())
    flipped = {k: v.clone() for k, v in base.items()}
    bits = flipped["model.layers.0.self_attn.q_proj.weight"].view(torch.int32)
    bits[2, 3] ^= 1 << 7
    assert param_digest(flipped) != param_digest(base)
    reshaped = dict(base, **{"model.norm.weight": base["model.norm.weight"].reshape(2, 2)})
    assert param_digest(reshaped) != param_digest(base)
    renamed = {k + "x": v for k, v in base.items()}
    assert param_digest(renamed) != param_digest(base)
    as_int = dict(base, **{"model.norm.weight": base["model.norm.weight"].view(torch.int16)})
    assert param_digest(as_int) != param_digest(base)


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 4), max_size=3), min_size=1, max_size=4),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.int64]),
)
def test_round_trip_preserves_digest(shapes: list[list[int]], dtype: torch.dtype) -> None:
    tensors = {
        f"t{i}": torch.arange(math.prod(s)).to(dtype).reshape(s) for i, s in enumerate(shapes)
    }
    with tempfile.TemporaryDirectory() as d:
        path = save_checkpoint(Path(d), version=0, params=tensors, outer_state={}, meta={})
        loaded = load_checkpoint(path)
    assert param_digest(loaded.params) == param_digest(tensors)
    assert all(loaded.params[k].shape == t.shape for k, t in tensors.items())


def test_shared_storage_is_saved(tmp_path: Path) -> None:
    flat = torch.arange(12, dtype=torch.float32)
    tied = {"a": flat[:6].view(2, 3), "b": flat[6:], "c": flat[6:]}
    loaded = load_checkpoint(
        save_checkpoint(tmp_path, version=1, params=tied, outer_state={}, meta={})
    )
    assert all(torch.equal(loaded.params[k], tied[k]) for k in tied)


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="computed"):
        save_checkpoint(tmp_path, version=1, params=params(), outer_state={}, meta={"version": "9"})
    with pytest.raises(ValueError, match="outer/"):
        save_checkpoint(
            tmp_path, version=1, params={"outer/x": torch.ones(1)}, outer_state={}, meta={}
        )
    with pytest.raises(ValueError, match="version"):
        save_checkpoint(tmp_path, version=-1, params=params(), outer_state={}, meta={})
    assert list(tmp_path.iterdir()) == []


def test_prune_keeps_newest(tmp_path: Path) -> None:
    for v in range(1, 6):
        save(tmp_path, v)
    removed = prune(tmp_path, keep=2)
    assert [p.name for p in removed] == [f"v00000{v}.safetensors" for v in (1, 2, 3)]
    assert list_versions(tmp_path) == [4, 5]
    assert prune(tmp_path, keep=5) == [] and list_versions(tmp_path) == [4, 5]
    with pytest.raises(ValueError, match="keep must be >= 1"):
        prune(tmp_path, keep=0)


def test_clean_tmp_removes_only_strays(tmp_path: Path) -> None:
    save(tmp_path, 1)
    stray = tmp_path / ".v000002.safetensors.tmp-4242"
    stray.write_bytes(b"torn")
    assert clean_tmp(tmp_path) == [stray]
    assert [p.name for p in tmp_path.iterdir()] == ["v000001.safetensors"]
    assert clean_tmp(tmp_path / "missing") == []


def test_outer_state_through_checkpoint_continues_identically(tmp_path: Path) -> None:
    cfg = OuterConfig(name="nesterov")
    fp32 = [{k: v for k, v in params(s).items() if v.dtype == torch.float32} for s in range(4)]
    deltas = [{k: v * 0.01 for k, v in d.items()} for d in fp32]
    names = list(deltas[0])

    def run(outer: OuterOptimizer, theta: dict[str, Tensor], rounds: range) -> None:
        for r in rounds:
            for n in names:
                outer.step(n, theta[n], deltas[r][n], round=r)

    straight = {n: params()[n] for n in names}
    run(make_outer(cfg), straight, range(4))

    theta = {n: params()[n] for n in names}
    first = make_outer(cfg)
    run(first, theta, range(2))
    save_checkpoint(tmp_path, version=2, params=theta, outer_state=first.state_tensors(), meta={})
    loaded = latest_checkpoint(tmp_path)
    assert loaded is not None
    second = make_outer(cfg)
    second.load_state_tensors(loaded.outer_state)
    run(second, loaded.params, range(2, 4))
    assert param_digest(loaded.params) == param_digest(straight)
