"""The codec registry (photon/codecs.py) says what the codecs in bandwidth/quantize.py do."""

from __future__ import annotations

import pytest
import torch

from bandwidth.quantize import decode_tensor, encode_tensor, raw_length
from photon.codecs import (
    ALL_CODECS,
    CODECS,
    DEFAULT_BLOCK_SIZE,
    MAX_BLOCK_SIZE,
    MAX_FEDERATION_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    MIN_FEDERATION_BLOCK_SIZE,
    REGISTRY,
    is_lossy,
)
from photon.errors import ConfigError
from photon.federation import FederationSpec


@pytest.mark.parametrize("name", ALL_CODECS)
def test_lossy_flag_matches_what_a_round_trip_loses(name: str) -> None:
    t = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    base = torch.randn(1000) if REGISTRY[name].needs_base else None
    raw = encode_tensor(name, t, DEFAULT_BLOCK_SIZE, base)
    back = decode_tensor(name, raw, t.shape, DEFAULT_BLOCK_SIZE, base)
    assert is_lossy(name) == (not torch.equal(back, t))


@pytest.mark.parametrize("name", ALL_CODECS)
def test_blocked_flag_matches_whether_the_block_size_changes_the_bytes(name: str) -> None:
    sizes = {raw_length(name, 1000, block) for block in (MIN_BLOCK_SIZE, DEFAULT_BLOCK_SIZE)}
    assert REGISTRY[name].blocked == (len(sizes) > 1)


def test_federation_codecs_are_the_ones_that_need_no_base() -> None:
    assert set(CODECS) == {n for n, info in REGISTRY.items() if not info.needs_base}


def test_federation_block_size_range_sits_inside_the_format_range() -> None:
    assert MIN_BLOCK_SIZE <= MIN_FEDERATION_BLOCK_SIZE <= DEFAULT_BLOCK_SIZE
    assert DEFAULT_BLOCK_SIZE <= MAX_FEDERATION_BLOCK_SIZE <= MAX_BLOCK_SIZE
    FederationSpec(block_size=MIN_FEDERATION_BLOCK_SIZE)
    FederationSpec(block_size=MAX_FEDERATION_BLOCK_SIZE)
    with pytest.raises(ConfigError, match=r"federation.block_size must be within \[16, 4096\]"):
        FederationSpec(block_size=MAX_FEDERATION_BLOCK_SIZE + 1)
