"""Central DP: clipping, Gaussian noise (scale, determinism) and the RDP accountant."""

from __future__ import annotations

import itertools
import math

import dp_accounting
import pytest
import torch
from dp_accounting import rdp
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.privacy import (
    PrivacyAccountant,
    PrivacyConfig,
    add_noise,
    clip_factor,
    noise_generator,
    noise_std,
)
from photon.errors import ConfigError

# -- config -----------------------------------------------------------------------------------


def test_defaults_are_off_and_valid() -> None:
    cfg = PrivacyConfig()
    assert (cfg.enabled, cfg.clip_norm, cfg.noise_multiplier, cfg.delta, cfg.seed) == (
        False,
        1.0,
        1.0,
        1e-5,
        0,
    )


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"enabled": 1}, "privacy.enabled"),
        ({"clip_norm": 0.0}, "privacy.clip_norm"),
        ({"clip_norm": -1.0}, "privacy.clip_norm"),
        ({"clip_norm": math.inf}, "privacy.clip_norm"),
        ({"clip_norm": math.nan}, "privacy.clip_norm"),
        ({"clip_norm": True}, "privacy.clip_norm"),
        ({"noise_multiplier": -0.1}, "privacy.noise_multiplier"),
        ({"noise_multiplier": math.inf}, "privacy.noise_multiplier"),
        ({"noise_multiplier": "1"}, "privacy.noise_multiplier"),
        ({"delta": 0.0}, "privacy.delta"),
        ({"delta": 1.0}, "privacy.delta"),
        ({"delta": math.nan}, "privacy.delta"),
        ({"seed": -1}, "privacy.seed"),
        ({"seed": 1.5}, "privacy.seed"),
        ({"seed": False}, "privacy.seed"),
    ],
)
def test_config_errors_name_the_key(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        PrivacyConfig(**kwargs)  # type: ignore[arg-type]


def test_config_accepts_integers_for_floats_and_zero_noise() -> None:
    cfg = PrivacyConfig(enabled=True, clip_norm=2, noise_multiplier=0, delta=1e-6, seed=7)
    assert cfg.clip_norm == 2 and cfg.noise_multiplier == 0


# -- clipping ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("norm", "clip", "factor"),
    [(0.0, 1.0, 1.0), (0.5, 1.0, 1.0), (1.0, 1.0, 1.0), (2.0, 1.0, 0.5), (10.0, 0.1, 0.01)],
)
def test_clip_factor(norm: float, clip: float, factor: float) -> None:
    assert clip_factor(norm, clip) == pytest.approx(factor, rel=1e-12)


def test_clip_factor_edges() -> None:
    assert clip_factor(math.inf, 1.0) == 0.0
    with pytest.raises(ValueError, match="norm"):
        clip_factor(math.nan, 1.0)
    with pytest.raises(ValueError, match="norm"):
        clip_factor(-1.0, 1.0)
    with pytest.raises(ValueError, match="clip_norm"):
        clip_factor(1.0, 0.0)


@settings(max_examples=50, deadline=None)
@given(
    shape=st.lists(st.integers(1, 20), min_size=1, max_size=3),
    scale=st.floats(1e-4, 1e4),
    clip=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**31 - 1),
)
def test_clipped_update_norm_is_at_most_clip_norm(
    shape: list[int], scale: float, clip: float, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    delta = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    norm = float(delta.norm())
    clipped = delta * clip_factor(norm, clip)
    assert float(clipped.norm()) <= clip * (1 + 1e-9)
    if norm <= clip:
        assert torch.equal(clipped, delta), "an update within the bound is untouched"


# -- noise ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("z", "clip", "n"), [(1.0, 1.0, 1), (1.1, 0.5, 4), (0.3, 2.0, 10)])
def test_noise_std_is_z_c_over_n(z: float, clip: float, n: int) -> None:
    avg = torch.zeros(1_000_000)
    add_noise(
        avg, clip_norm=clip, noise_multiplier=z, n_updates=n, generator=noise_generator(3, 0, "w")
    )
    expected = z * clip / n
    assert noise_std(clip_norm=clip, noise_multiplier=z, n_updates=n) == pytest.approx(expected)
    # The sample std of 1e6 normals is within 0.3% of sigma with overwhelming probability.
    assert float(avg.std()) == pytest.approx(expected, rel=0.03)
    assert abs(float(avg.mean())) < 5 * expected / 1000


def test_noise_is_added_in_place_to_the_values() -> None:
    base = torch.linspace(-1, 1, 10_000)
    avg = base.clone()
    add_noise(
        avg,
        clip_norm=1.0,
        noise_multiplier=1.0,
        n_updates=100,
        generator=noise_generator(0, 0, "w"),
    )
    diff = avg - base
    assert float(diff.std()) == pytest.approx(0.01, rel=0.05)


def test_noise_is_deterministic_per_seed_round_and_name() -> None:
    def draw(seed: int, round_: int, name: str) -> torch.Tensor:
        t = torch.zeros(1000)
        add_noise(
            t,
            clip_norm=1.0,
            noise_multiplier=1.0,
            n_updates=2,
            generator=noise_generator(seed, round_, name),
        )
        return t

    assert torch.equal(draw(5, 3, "layers.0.w"), draw(5, 3, "layers.0.w"))
    others = [draw(6, 3, "layers.0.w"), draw(5, 4, "layers.0.w"), draw(5, 3, "layers.1.w")]
    for other in others:
        assert not torch.equal(draw(5, 3, "layers.0.w"), other)


def test_noise_does_not_depend_on_the_dtype_of_the_average() -> None:
    a, b = torch.zeros(100), torch.zeros(100, dtype=torch.float64)
    for t in (a, b):
        add_noise(
            t,
            clip_norm=1.0,
            noise_multiplier=1.0,
            n_updates=1,
            generator=noise_generator(1, 1, "x"),
        )
    assert torch.equal(a.double(), b)


def test_zero_noise_multiplier_leaves_the_average_and_bad_inputs_are_refused() -> None:
    avg = torch.ones(10)
    add_noise(
        avg, clip_norm=1.0, noise_multiplier=0.0, n_updates=3, generator=noise_generator(0, 0, "w")
    )
    assert torch.equal(avg, torch.ones(10))
    with pytest.raises(ValueError, match="n_updates"):
        add_noise(
            avg,
            clip_norm=1.0,
            noise_multiplier=1.0,
            n_updates=0,
            generator=noise_generator(0, 0, "w"),
        )
    with pytest.raises(TypeError, match="floating"):
        add_noise(
            torch.ones(3, dtype=torch.int64),
            clip_norm=1.0,
            noise_multiplier=1.0,
            n_updates=1,
            generator=noise_generator(0, 0, "w"),
        )


# -- accounting -------------------------------------------------------------------------------


def reference_epsilon(z: float, rounds: int, delta: float, q: float = 1.0) -> float:
    """dp_accounting's own computation: Gaussian rounds composed one by one; subsampled rounds
    (whose RDP is costly to compute) composed with `count=`."""
    accountant = rdp.RdpAccountant()
    if q == 1.0:
        for _ in range(rounds):
            accountant.compose(dp_accounting.GaussianDpEvent(z))
    else:
        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
        accountant.compose(event, count=rounds)
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize(
    ("z", "rounds", "q"),
    [
        (0.8, 1, 1.0),
        (1.0, 10, 1.0),
        (2.0, 50, 1.0),
        (5.0, 200, 1.0),
        (1.0, 20, 0.3),
        (1.5, 100, 0.05),
    ],
)
def test_epsilon_equals_dp_accounting(z: float, rounds: int, q: float) -> None:
    acct = PrivacyAccountant(z, 1e-5, sampling_probability=q)
    for _ in range(rounds):
        acct.step()
    assert acct.rounds == rounds
    assert acct.epsilon() == pytest.approx(reference_epsilon(z, rounds, 1e-5, q), rel=1e-9)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    acct = PrivacyAccountant(1.0, 1e-5)
    assert acct.epsilon() == 0.0
    seen = []
    for _ in range(5):
        acct.step(4)
        seen.append(acct.epsilon())
    assert all(a < b for a, b in itertools.pairwise(seen))
    noisier = PrivacyAccountant(2.0, 1e-5)
    noisier.step(20)
    assert noisier.epsilon() < seen[-1]


def test_zero_noise_has_infinite_epsilon() -> None:
    acct = PrivacyAccountant(0.0, 1e-5)
    acct.step()
    assert acct.epsilon() == math.inf


def test_state_survives_a_restart() -> None:
    acct = PrivacyAccountant(1.2, 1e-6)
    acct.step(7)
    state = acct.state_dict()
    restored = PrivacyAccountant(1.2, 1e-6)
    restored.load_state_dict(state)
    assert restored.rounds == 7 and restored.epsilon() == acct.epsilon()
    restored.step()
    assert restored.epsilon() == pytest.approx(reference_epsilon(1.2, 8, 1e-6))


def test_state_from_another_mechanism_is_refused() -> None:
    acct = PrivacyAccountant(1.0, 1e-5)
    acct.step(3)
    with pytest.raises(ConfigError, match=r"privacy\.noise_multiplier"):
        PrivacyAccountant(2.0, 1e-5).load_state_dict(acct.state_dict())
    with pytest.raises(ConfigError, match="sampling probability"):
        PrivacyAccountant(1.0, 1e-5, sampling_probability=0.5).load_state_dict(acct.state_dict())
    with pytest.raises(ValueError, match="rounds"):
        PrivacyAccountant(1.0, 1e-5).load_state_dict({"rounds": -1})


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((-1.0, 1e-5), {}, "noise_multiplier"),
        ((1.0, 0.0), {}, "delta"),
        ((1.0, 1e-5), {"sampling_probability": 0.0}, "sampling_probability"),
        ((1.0, 1e-5), {"sampling_probability": 1.5}, "sampling_probability"),
    ],
)
def test_accountant_refuses_bad_arguments(
    args: tuple[float, float], kwargs: dict[str, float], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        PrivacyAccountant(*args, **kwargs)
