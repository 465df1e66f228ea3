"""Central differential privacy at the aggregator: clip each silo's delta, noise the average.

With privacy on, one round does (silo-level DP: the unit protected is a whole silo's update)

    factor_i = clip_factor(norm_i, C)                 # scale delta_i to L2 norm <= C
    avg      = (1/n) Σ factor_i · delta_i             # uniform weights over the n updates
    for name in sorted(avg):
        add_noise(avg[name], clip_norm=C, noise_multiplier=z, n_updates=n,
                  generator=noise_generator(seed, round, name))   # + N(0, (z·C/n)²)
    accountant.step()                                 # ε after this round: accountant.epsilon()

The noise on the SUM is N(0, (z·C)²), i.e. the Gaussian mechanism with sensitivity C; its
privacy over rounds is tracked by `PrivacyAccountant` with `dp_accounting`'s Rényi-DP
accountant (Mironov 2017; Abadi et al. 2016), optionally with Poisson-subsampling
amplification. The bound holds only if every update's influence on the average is at most
C/n: token-weighted averaging gives a silo with more tokens more influence, so a private
round weights updates uniformly (or scales the noise to the largest weight share).

Noise is drawn from a torch generator seeded by (seed, round, tensor name), so a run is
reproducible and a restart redraws exactly the same noise. The seed is therefore a secret of
the operator: whoever knows it can regenerate the noise and subtract it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import dp_accounting
import torch
from dp_accounting import rdp

from photon.errors import ConfigError

__all__ = [
    "PrivacyAccountant",
    "PrivacyConfig",
    "add_noise",
    "clip_factor",
    "noise_generator",
    "noise_std",
]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(kw_only=True, slots=True)
class PrivacyConfig:
    """Central differential privacy for a federation (`[privacy]`); off by default."""

    enabled: bool = False
    """Clip every update to `clip_norm` and add Gaussian noise to the average each round."""
    clip_norm: float = 1.0
    """C: the L2 bound on each silo's delta (over all tensors); larger deltas are scaled down."""
    noise_multiplier: float = 1.0
    """z: noise std is z·C on the sum of updates, z·C/n on their average; 0 clips only
    (ε is then infinite)."""
    delta: float = 1e-5
    """Target δ of the (ε, δ) guarantee; keep it well below 1 / number of silos."""
    seed: int = 0
    """Seeds the noise (with round and tensor name). Keep it secret: it reproduces the noise."""

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"privacy.enabled must be true or false, got {self.enabled!r}")
        if not _is_number(self.clip_norm) or self.clip_norm <= 0:
            raise ConfigError(
                f"privacy.clip_norm must be a finite number > 0, got {self.clip_norm!r}; "
                "use the typical delta norm of a round (e.g. 1.0)"
            )
        if not _is_number(self.noise_multiplier) or self.noise_multiplier < 0:
            raise ConfigError(
                f"privacy.noise_multiplier must be a finite number >= 0, got "
                f"{self.noise_multiplier!r}; use e.g. 1.0 (larger is more private)"
            )
        if not _is_number(self.delta) or not 0 < self.delta < 1:
            raise ConfigError(
                f"privacy.delta must be a number in (0, 1), got {self.delta!r}; use e.g. 1e-5"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"privacy.seed must be an integer >= 0, got {self.seed!r}")


# -- clipping and noise -----------------------------------------------------------------------


def clip_factor(norm: float, clip_norm: float) -> float:
    """min(1, C / norm): the scale that brings an update of L2 norm `norm` within C.

    A zero norm needs no scaling (1.0); an infinite one is scaled to nothing (0.0).
    """
    if math.isnan(norm) or norm < 0:
        raise ValueError(f"norm must be a non-negative number, got {norm!r}")
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm!r}")
    if norm <= clip_norm:
        return 1.0
    return clip_norm / norm


def noise_std(*, clip_norm: float, noise_multiplier: float, n_updates: int) -> float:
    """Standard deviation of the noise on the average of `n_updates` clipped updates."""
    if n_updates < 1:
        raise ValueError(f"n_updates must be >= 1, got {n_updates}")
    if not clip_norm > 0 or not noise_multiplier >= 0:
        raise ValueError(
            f"need clip_norm > 0 and noise_multiplier >= 0, got {clip_norm}, {noise_multiplier}"
        )
    return noise_multiplier * clip_norm / n_updates


def noise_generator(seed: int, round: int, name: str) -> torch.Generator:
    """A CPU generator seeded from (seed, round, tensor name): the same triple, the same noise,
    independent streams for different tensors and rounds."""
    material = f"photon/dp-noise:{seed}:{round}:{name}".encode()
    derived = int.from_bytes(hashlib.sha256(material).digest()[:8], "little") >> 1
    return torch.Generator(device="cpu").manual_seed(derived)


def add_noise(
    avg: torch.Tensor,
    *,
    clip_norm: float,
    noise_multiplier: float,
    n_updates: int,
    generator: torch.Generator,
) -> None:
    """avg += N(0, (z·C/n)²) elementwise, in place, drawn from `generator` (on the CPU, in fp32,
    so the noise does not depend on the device `avg` lives on)."""
    if not torch.is_floating_point(avg):
        raise TypeError(f"avg must be a floating-point tensor, got {avg.dtype}")
    std = noise_std(clip_norm=clip_norm, noise_multiplier=noise_multiplier, n_updates=n_updates)
    if std == 0.0:
        return
    noise = torch.randn(avg.shape, generator=generator, dtype=torch.float32, device="cpu")
    avg.add_(noise.to(device=avg.device, dtype=avg.dtype), alpha=std)


# -- accounting -------------------------------------------------------------------------------

_MECHANISM_KEYS = {
    "noise_multiplier": "privacy.noise_multiplier",
    "sampling_probability": "the sampling probability",
}


class PrivacyAccountant:
    """(ε, δ) spent so far: one Gaussian mechanism (noise multiplier z) per aggregated round,
    composed with `dp_accounting`'s RDP accountant. `sampling_probability` q < 1 claims
    amplification by Poisson subsampling (each silo independently takes part with
    probability q); leave it at 1.0 unless rounds really sample that way.

    acct = PrivacyAccountant(1.1, 1e-5)
    acct.step()                      # after each round that added noise
    acct.epsilon()                   # -> float
    state = acct.state_dict()        # JSON-able; load_state_dict(state) after a restart
    """

    def __init__(
        self, noise_multiplier: float, delta: float, *, sampling_probability: float = 1.0
    ) -> None:
        if not _is_number(noise_multiplier) or noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier!r}")
        if not _is_number(delta) or not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta!r}")
        q = sampling_probability
        if not _is_number(q) or not 0 < q <= 1:
            raise ValueError(f"sampling_probability must be in (0, 1], got {q!r}")
        self.noise_multiplier = float(noise_multiplier)
        self.delta = float(delta)
        self.sampling_probability = float(q)
        self.rounds = 0
        self._cache: tuple[int, float] | None = None

    def event(self) -> dp_accounting.DpEvent:
        """The DP event of one round."""
        gaussian = dp_accounting.GaussianDpEvent(self.noise_multiplier)
        if self.sampling_probability == 1.0:
            return gaussian
        return dp_accounting.PoissonSampledDpEvent(self.sampling_probability, gaussian)

    def step(self, rounds: int = 1) -> None:
        """Account for `rounds` more noised rounds."""
        if rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds}")
        self.rounds += rounds

    def epsilon(self) -> float:
        """ε of the whole run so far at the configured δ (0.0 before the first round,
        inf without noise)."""
        if self.rounds == 0:
            return 0.0
        if self._cache is not None and self._cache[0] == self.rounds:
            return self._cache[1]
        if self.noise_multiplier == 0.0:
            return math.inf
        accountant = rdp.RdpAccountant()
        accountant.compose(dp_accounting.SelfComposedDpEvent(self.event(), self.rounds))
        eps = float(accountant.get_epsilon(self.delta))
        self._cache = (self.rounds, eps)
        return eps

    def state_dict(self) -> dict[str, int | float]:
        """The rounds spent and the mechanism they were spent with (JSON-able)."""
        return {
            "rounds": self.rounds,
            "noise_multiplier": self.noise_multiplier,
            "sampling_probability": self.sampling_probability,
        }

    def load_state_dict(self, state: Mapping[str, int | float]) -> None:
        """Continue from `state_dict()`; refuses state spent with another mechanism."""
        rounds = state.get("rounds")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
            raise ValueError(f"privacy state: rounds must be an integer >= 0, got {rounds!r}")
        for key, label in _MECHANISM_KEYS.items():
            if key in state and float(state[key]) != getattr(self, key):
                raise ConfigError(
                    f"{label} is {getattr(self, key)} but the {rounds} rounds already spent "
                    f"used {state[key]}; restore the original value or start a new federation"
                )
        self.rounds = rounds
        self._cache = None
