"""Streaming aggregation: token weighting, fixed order, bounded memory, DP clipping and noise."""

from __future__ import annotations

import gc
from pathlib import Path

import psutil
import pytest
import torch

from aggregator.aggregate import accumulate
from aggregator.privacy import PrivacyConfig
from aggregator.store import UpdateRow
from aggregator.summary import privacy_summary
from bandwidth.codec import write_object
from photon.update import UpdateRecord


def update(
    tmp_path: Path, silo: str, tensors: dict[str, torch.Tensor], tokens: int, codec: str = "fp32"
) -> UpdateRow:
    path = tmp_path / f"{silo}.upd"
    info = write_object(path, tensors, codec)
    norm = float(sum(float((t.double() ** 2).sum()) for t in tensors.values()) ** 0.5)
    update = UpdateRecord(
        round=0,
        transfer_id=f"{silo}-r0",
        base_version=0,
        digest=info.digest,
        size=info.size,
        num_tokens=tokens,
    )
    return UpdateRow(silo_id=silo, update=update, path=str(path), accepted_at=0.0, norm=norm)


def test_token_weighted_average_is_independent_of_arrival_order(tmp_path: Path) -> None:
    a = update(tmp_path, "a", {"w": torch.tensor([1.0, 2.0])}, tokens=1)
    b = update(tmp_path, "b", {"w": torch.tensor([4.0, 8.0])}, tokens=3)
    first = accumulate([a, b]).pop("w")
    second = accumulate([b, a]).pop("w")
    assert torch.equal(first, second)
    assert torch.allclose(first, torch.tensor([3.25, 6.5]))


def test_clipping_bounds_each_update_and_weighs_silos_equally(tmp_path: Path) -> None:
    big = update(tmp_path, "big", {"w": torch.tensor([30.0, 40.0])}, tokens=1000)  # norm 50
    small = update(tmp_path, "small", {"w": torch.tensor([0.3, 0.4])}, tokens=1)  # norm 0.5
    avg = accumulate([big, small], clip_norm=1.0).pop("w")
    assert torch.allclose(avg, (torch.tensor([0.6, 0.8]) + torch.tensor([0.3, 0.4])) / 2)


def test_privacy_summary_reports_growing_epsilon() -> None:
    cfg = PrivacyConfig(enabled=True, clip_norm=1.0, noise_multiplier=1.0, delta=1e-5)
    eps = [privacy_summary(cfg, r)["epsilon"] for r in (1, 5, 20)]  # type: ignore[index]
    assert 0 < eps[0] < eps[1] < eps[2]
    assert privacy_summary(PrivacyConfig(), 5) is None


def test_memory_stays_one_accumulator_for_many_updates(tmp_path: Path) -> None:
    model = {f"layer{i}": torch.randn(512, 512) for i in range(8)}  # 8 MiB fp32
    size = sum(t.numel() * 4 for t in model.values())
    updates = [
        update(tmp_path, f"s{i:02d}", {k: v * 0.01 * i for k, v in model.items()}, 10)
        for i in range(40)
    ]
    gc.collect()
    before = psutil.Process().memory_info().rss
    acc = accumulate(updates)
    grown = psutil.Process().memory_info().rss - before
    assert grown < 4 * size, f"RSS grew {grown / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB model"
    expected = sum(0.01 * i for i in range(40)) / 40
    assert torch.allclose(acc.pop("layer0"), model["layer0"] * expected, atol=1e-5)


@pytest.mark.parametrize("codec", ["bf16", "int8", "int4"])
def test_lossy_codecs_aggregate_close_to_the_truth(tmp_path: Path, codec: str) -> None:
    delta = {"w": torch.randn(4096) * 1e-3}
    avg = accumulate([update(tmp_path, "a", delta, 1, codec)]).pop("w")
    rel = float((avg - delta["w"]).norm() / delta["w"].norm())
    assert rel < {"bf16": 0.01, "int8": 0.02, "int4": 0.2}[codec]
