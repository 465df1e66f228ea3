"""Outer optimizers ("strategies"); the average they consume is in aggregator/averaging.py.

Each round the silos send deltas Δ_i = θ_local,i − θ_global. The aggregator averages them,
weighted by training tokens, into Δ̄ and takes one OUTER step with the pseudo-gradient
g = −Δ̄. Models can be large, so everything here works one tensor at a time, in place, with
optimizer state held per tensor name:

    acc = Accumulator()
    for silo in sorted(silos):                       # fixed order -> bit-identical results
        for name, delta in silo.deltas():
            acc.add(name, delta, weight=silo.tokens)
    outer = make_outer(OuterConfig(name="nesterov"))
    for name in acc.names():
        outer.step(name, params[name], acc.pop(name), round=r)

Rules (g = −Δ̄, η = learning rate after warm-up, μ = momentum):

    fedavg    θ ← θ − η g                          (η 1.0: plain averaging θ + Δ̄; Photon)
    fedmom    b ← μ b + g;  θ ← θ − η b            (heavy ball; torch SGD, nesterov=False)
    nesterov  b ← μ b + g;  θ ← θ − η (g + μ b)    (DiLoCo; torch SGD, nesterov=True)
    fedadam   m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²
    fedyogi   m as fedadam;  v ← v − (1−β2) g² sign(v − g²)
              both: θ ← θ − η m / (√v + τ)

The momentum buffer starts as b = g on the first step, exactly as torch.optim.SGD does.
FedAdam and FedYogi follow Reddi et al., "Adaptive Federated Optimization" (ICLR 2021),
Algorithm 2: m starts at 0, v starts at τ² (their v₋₁ ≥ τ²), and there is NO bias
correction. Their defaults are used: β1 0.9, β2 0.99, τ 1e-3, and server learning rate
1e-2 (the order of the best server rates they report for FedAdam/FedYogi on text).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

import torch
from torch import Tensor

from photon.errors import ConfigError

StrategyName = Literal["fedavg", "fedmom", "nesterov", "fedadam", "fedyogi"]
STRATEGIES: tuple[str, ...] = get_args(StrategyName)
_MOMENTUM = ("fedavg", "fedmom", "nesterov")
_ADAPTIVE = ("fedadam", "fedyogi")
_DEFAULT_LR = {"fedavg": 1.0, "fedmom": 1.0, "nesterov": 0.7, "fedadam": 1e-2, "fedyogi": 1e-2}
_DEFAULT_MOMENTUM = {"fedavg": 0.0, "fedmom": 0.9, "nesterov": 0.9}
_DEFAULT_BETA1, _DEFAULT_BETA2, _DEFAULT_TAU = 0.9, 0.99, 1e-3


def _number(key: str, value: object, *, lo: float, hi: float, lo_open: bool, hint: str) -> None:
    """Raise ConfigError unless `value` is a finite number in the interval."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"outer.{key} must be a finite number, got {value!r}; {hint}")
    below = value <= lo if lo_open else value < lo
    if below or value >= hi:
        left = "(" if lo_open else "["
        raise ConfigError(f"outer.{key} must be in {left}{lo}, {hi}), got {value!r}; {hint}")


@dataclass(frozen=True, slots=True)
class ResolvedOuter:
    """An OuterConfig with every default filled in; 0.0 where the strategy has no such knob."""

    name: StrategyName
    lr: float
    momentum: float
    beta1: float
    beta2: float
    tau: float
    warmup_rounds: int

    def lr_at(self, step: int) -> float:
        """Learning rate for the `step`-th outer step (1-based): linear warm-up, then flat."""
        if self.warmup_rounds <= 0:
            return self.lr
        return self.lr * min(1.0, step / self.warmup_rounds)


@dataclass(kw_only=True, slots=True)
class OuterConfig:
    """How the aggregator turns the averaged delta into the next global model."""

    name: StrategyName = "fedavg"
    """Outer rule: fedavg (Photon), fedmom, nesterov (DiLoCo), fedadam, fedyogi."""
    lr: float | None = None
    """Server learning rate; None -> fedavg/fedmom 1.0, nesterov 0.7, fedadam/fedyogi 1e-2."""
    momentum: float | None = None
    """Momentum μ in [0, 1) for fedavg/fedmom/nesterov; None -> 0.0 / 0.9 / 0.9."""
    beta1: float | None = None
    """First-moment decay for fedadam/fedyogi, in [0, 1); None -> 0.9."""
    beta2: float | None = None
    """Second-moment decay for fedadam/fedyogi, in [0, 1); None -> 0.99."""
    tau: float | None = None
    """Adaptivity τ (added to √v) for fedadam/fedyogi, > 0; None -> 1e-3."""
    warmup_rounds: int = 0
    """Outer steps over which the learning rate rises linearly to `lr`; 0 = no warm-up."""

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise ConfigError(
                f"outer.name must be one of {', '.join(STRATEGIES)}, got {self.name!r}"
            )
        if self.lr is not None:
            _number("lr", self.lr, lo=0.0, hi=math.inf, lo_open=True, hint="use e.g. 0.7")
        self._check_momentum()
        self._check_adaptive()
        w = self.warmup_rounds
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise ConfigError(f"outer.warmup_rounds must be an integer >= 0, got {w!r}")

    def _check_momentum(self) -> None:
        mu = self.momentum
        if mu is None:
            return
        if self.name in _ADAPTIVE:
            raise ConfigError(
                f"outer.momentum does not apply to {self.name}; set outer.beta1 instead"
            )
        _number("momentum", mu, lo=0.0, hi=1.0, lo_open=False, hint="use e.g. 0.9")
        if self.name == "fedavg" and mu != 0.0:
            raise ConfigError(
                "outer.momentum must be 0 for fedavg; use outer.name = 'fedmom' for momentum"
            )
        if self.name == "nesterov" and mu == 0.0:
            raise ConfigError("outer.momentum must be > 0 for nesterov; use e.g. 0.9")

    def _check_adaptive(self) -> None:
        given = [k for k in ("beta1", "beta2", "tau") if getattr(self, k) is not None]
        if given and self.name not in _ADAPTIVE:
            raise ConfigError(
                f"outer.{given[0]} applies only to fedadam/fedyogi, not {self.name}; remove it"
            )
        for key in ("beta1", "beta2"):
            if getattr(self, key) is not None:
                _number(key, getattr(self, key), lo=0.0, hi=1.0, lo_open=False, hint="e.g. 0.9")
        if self.tau is not None:
            _number("tau", self.tau, lo=0.0, hi=math.inf, lo_open=True, hint="use e.g. 1e-3")

    def resolved(self) -> ResolvedOuter:
        """The effective values, defaults filled in."""
        adaptive = self.name in _ADAPTIVE

        def pick(value: float | None, default: float) -> float:
            return float(default if value is None else value)

        return ResolvedOuter(
            name=self.name,
            lr=pick(self.lr, _DEFAULT_LR[self.name]),
            momentum=0.0 if adaptive else pick(self.momentum, _DEFAULT_MOMENTUM[self.name]),
            beta1=pick(self.beta1, _DEFAULT_BETA1) if adaptive else 0.0,
            beta2=pick(self.beta2, _DEFAULT_BETA2) if adaptive else 0.0,
            tau=pick(self.tau, _DEFAULT_TAU) if adaptive else 0.0,
            warmup_rounds=self.warmup_rounds,
        )


class OuterOptimizer(Protocol):
    """One outer step per round, applied tensor by tensor, in place."""

    def step(self, name: str, param: Tensor, avg_delta: Tensor, round: int) -> None:
        """Update `param` in place from the averaged delta Δ̄ (pseudo-gradient −Δ̄)."""
        ...

    def state_tensors(self) -> dict[str, Tensor]:
        """Live state: "step", "round" and per-tensor "<slot>/<name>" buffers (not copies)."""
        ...

    def load_state_tensors(self, state: Mapping[str, Tensor]) -> None:
        """Replace the state with `state` (takes the tensors over, does not copy them)."""
        ...


class _OuterBase:
    """Round bookkeeping and per-name state slots shared by every rule.

    A new `round` value starts a new outer step (the warm-up counter advances once per
    round, not per tensor). Rounds must not go backwards and a tensor may be stepped once
    per round. Save the state only between rounds.
    """

    slots: tuple[str, ...] = ()

    def __init__(self, cfg: ResolvedOuter) -> None:
        self.cfg = cfg
        self._state: dict[str, dict[str, Tensor]] = {slot: {} for slot in self.slots}
        self._steps = 0
        self._round = -1
        self._stepped: set[str] = set()

    @property
    def steps(self) -> int:
        """Outer steps begun so far (rounds seen)."""
        return self._steps

    def step(self, name: str, param: Tensor, avg_delta: Tensor, round: int) -> None:
        _check_tensors(name, param, avg_delta)
        lr = self.cfg.lr_at(self._begin(name, round))
        with torch.no_grad():
            self._apply(name, param, avg_delta, lr)

    def _begin(self, name: str, round: int) -> int:
        if round < self._round:
            raise ValueError(f"outer step for round {round} after round {self._round}")
        if round > self._round:
            self._round, self._steps = round, self._steps + 1
            self._stepped.clear()
        if name in self._stepped:
            raise ValueError(f"tensor {name!r} already stepped in round {round}")
        self._stepped.add(name)
        return self._steps

    def _apply(self, name: str, param: Tensor, delta: Tensor, lr: float) -> None:
        raise NotImplementedError

    def _slot(self, slot: str, name: str, like: Tensor, init: Callable[[], Tensor]) -> Tensor:
        """The state buffer `slot` for `name` on `like`'s device, created by `init` if new."""
        buf = self._state[slot].get(name)
        if buf is None:
            buf = init()
        elif buf.shape != like.shape:
            raise ValueError(
                f"outer state {slot}/{name}: shape {tuple(buf.shape)} != "
                f"parameter's {tuple(like.shape)}"
            )
        else:
            buf = buf.to(device=like.device, dtype=torch.float32)
        self._state[slot][name] = buf
        return buf

    def state_tensors(self) -> dict[str, Tensor]:
        out = {
            "step": torch.tensor(self._steps, dtype=torch.int64),
            "round": torch.tensor(self._round, dtype=torch.int64),
        }
        for slot in self.slots:
            for name in sorted(self._state[slot]):
                out[f"{slot}/{name}"] = self._state[slot][name]
        return out

    def load_state_tensors(self, state: Mapping[str, Tensor]) -> None:
        slots: dict[str, dict[str, Tensor]] = {slot: {} for slot in self.slots}
        for key, tensor in state.items():
            if key in ("step", "round"):
                continue
            slot, sep, name = key.partition("/")
            if not sep or slot not in slots:
                raise ConfigError(
                    f"outer state key {key!r} does not belong to {self.cfg.name}; resume "
                    "with the outer.name that wrote the checkpoint, or start a fresh run"
                )
            slots[slot][name] = tensor
        self._state = slots
        self._steps = _scalar(state, "step", 0)
        self._round = _scalar(state, "round", -1)
        self._stepped = set()


def _scalar(state: Mapping[str, Tensor], key: str, default: int) -> int:
    t = state.get(key)
    if t is None:
        return default
    if t.numel() != 1 or t.is_floating_point():
        raise ValueError(f"outer state {key!r} must be an integer scalar, got {t.dtype} {t.shape}")
    return int(t.item())


def _check_tensors(name: str, param: Tensor, delta: Tensor) -> None:
    if param.dtype != torch.float32 or delta.dtype != torch.float32:
        raise ValueError(f"{name}: outer step needs fp32, got {param.dtype} and {delta.dtype}")
    if param.shape != delta.shape:
        raise ValueError(f"{name}: delta shape {tuple(delta.shape)} != {tuple(param.shape)}")


class FedAvg(_OuterBase):
    """θ ← θ + η Δ̄ (θ − η g)."""

    def _apply(self, name: str, param: Tensor, delta: Tensor, lr: float) -> None:
        param.add_(delta, alpha=lr)


class FedMom(_OuterBase):
    """Heavy-ball momentum: b ← μ b + g; θ ← θ − η b (torch SGD, nesterov=False)."""

    slots = ("momentum",)
    nesterov = False

    def _apply(self, name: str, param: Tensor, delta: Tensor, lr: float) -> None:
        mu, fresh = self.cfg.momentum, name not in self._state["momentum"]
        buf = self._slot("momentum", name, param, delta.neg)  # first step: b = g, as torch
        if not fresh:
            buf.mul_(mu).sub_(delta)
        if self.nesterov:
            direction = delta.neg().add_(buf, alpha=mu)
            param.add_(direction, alpha=-lr)
        else:
            param.add_(buf, alpha=-lr)


class Nesterov(FedMom):
    """DiLoCo's outer rule: b ← μ b + g; θ ← θ − η (g + μ b) (torch SGD, nesterov=True)."""

    nesterov = True


class FedAdam(_OuterBase):
    """Reddi et al. FedAdam (no bias correction, v starts at τ²); FedYogi overrides `_v`."""

    slots = ("m", "v")

    def _apply(self, name: str, param: Tensor, delta: Tensor, lr: float) -> None:
        c = self.cfg
        m = self._slot("m", name, param, lambda: torch.zeros_like(param))
        v = self._slot("v", name, param, lambda: torch.full_like(param, c.tau * c.tau))
        m.mul_(c.beta1).sub_(delta, alpha=1.0 - c.beta1)
        self._v(v, delta)
        denom = v.sqrt().add_(c.tau)
        param.addcdiv_(m, denom, value=-lr)

    def _v(self, v: Tensor, delta: Tensor) -> None:
        v.mul_(self.cfg.beta2).addcmul_(delta, delta, value=1.0 - self.cfg.beta2)


class FedYogi(FedAdam):
    """Reddi et al. FedYogi: v ← v − (1−β2) g² sign(v − g²)."""

    def _v(self, v: Tensor, delta: Tensor) -> None:
        g2 = delta.square()
        sign = torch.sub(v, g2).sign_()
        v.addcmul_(g2, sign, value=-(1.0 - self.cfg.beta2))


_RULES: dict[str, type[_OuterBase]] = {
    "fedavg": FedAvg,
    "fedmom": FedMom,
    "nesterov": Nesterov,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
}


def make_outer(cfg: OuterConfig) -> OuterOptimizer:
    """The outer optimizer `cfg` names, with its defaults resolved."""
    resolved = cfg.resolved()
    return _RULES[resolved.name](resolved)
