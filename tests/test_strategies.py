"""Outer optimizers and the token-weighted average, checked against reference maths."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from aggregator.averaging import Accumulator
from aggregator.strategies import (
    STRATEGIES,
    FedAdam,
    FedYogi,
    Nesterov,
    OuterConfig,
    OuterOptimizer,
    make_outer,
)
from photon.errors import ConfigError

SHAPES = {"model.embed_tokens.weight": (7, 5), "model.norm.weight": (5,)}


def rand_params(seed: int) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=gen) for n, s in SHAPES.items()}


def deltas_for(rounds: int, seed: int = 1) -> list[dict[str, Tensor]]:
    return [{n: t * 0.1 for n, t in rand_params(seed + r).items()} for r in range(rounds)]


def run_outer(
    outer: OuterOptimizer, params: dict[str, Tensor], deltas: list[dict[str, Tensor]], r0: int = 0
) -> None:
    for r, delta in enumerate(deltas, start=r0):
        for name in params:
            outer.step(name, params[name], delta[name], round=r)


# --- config ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "lr", "momentum"),
    [("fedavg", 1.0, 0.0), ("fedmom", 1.0, 0.9), ("nesterov", 0.7, 0.9), ("fedadam", 1e-2, 0.0)],
)
def test_defaults_resolve_per_strategy(name: str, lr: float, momentum: float) -> None:
    r = OuterConfig(name=name).resolved()  # type: ignore[arg-type]
    assert (r.lr, r.momentum) == (lr, momentum)


def test_adaptive_defaults_follow_reddi() -> None:
    r = OuterConfig(name="fedyogi").resolved()
    assert (r.beta1, r.beta2, r.tau) == (0.9, 0.99, 1e-3)
    assert OuterConfig(name="fedyogi", lr=0.5, tau=1e-6).resolved().lr == 0.5


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"name": "sgd"}, "outer.name must be one of"),
        ({"lr": 0.0}, "outer.lr"),
        ({"lr": math.nan}, "outer.lr must be a finite number"),
        ({"name": "fedmom", "momentum": 1.0}, "outer.momentum must be in [0.0, 1.0)"),
        ({"momentum": 0.9}, "use outer.name = 'fedmom'"),
        ({"name": "nesterov", "momentum": 0.0}, "outer.momentum must be > 0"),
        ({"name": "fedadam", "momentum": 0.9}, "set outer.beta1 instead"),
        ({"name": "nesterov", "beta2": 0.9}, "outer.beta2 applies only to fedadam/fedyogi"),
        ({"name": "fedadam", "beta1": -0.1}, "outer.beta1"),
        ({"name": "fedyogi", "tau": 0.0}, "outer.tau"),
        ({"warmup_rounds": -1}, "outer.warmup_rounds"),
        ({"warmup_rounds": True}, "outer.warmup_rounds"),
    ],
)
def test_bad_config_names_the_key(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        OuterConfig(**kwargs)  # type: ignore[arg-type]
    assert needle in str(info.value)


# --- averaging ------------------------------------------------------------------------


def test_fedavg_of_identical_deltas_is_theta_plus_delta() -> None:
    params, delta = rand_params(0), deltas_for(1)[0]
    expected = {n: params[n] + delta[n] for n in params}
    acc = Accumulator()
    for weight in (100.0, 250.0, 7.0):
        for name, t in delta.items():
            acc.add(name, t, weight)
    outer = make_outer(OuterConfig())
    for name in acc.names():
        outer.step(name, params[name], acc.pop(name), round=0)
    for name in params:
        torch.testing.assert_close(params[name], expected[name], rtol=1e-6, atol=1e-7)


def test_token_weighting() -> None:
    a, b = {"w": torch.zeros(3)}, {"w": torch.full((3,), 4.0)}
    acc = Accumulator()
    acc.add("w", a["w"], 1.0)
    acc.add("w", b["w"], 3.0)
    assert torch.equal(acc.average("w"), torch.full((3,), 3.0))


def test_accumulator_converts_low_precision_through_scratch() -> None:
    acc = Accumulator()
    x = torch.randn(4, 6).to(torch.bfloat16)
    acc.add("big", x, 2.0)
    acc.add("small", x[0], 1.0)  # reuses the scratch with a smaller view
    acc.add("big", x, 2.0)
    assert acc.average("big").dtype == torch.float32
    torch.testing.assert_close(acc.average("big"), x.float())
    torch.testing.assert_close(acc.average("small"), x[0].float())


def test_accumulator_is_deterministic_and_guards_misuse() -> None:
    ds = deltas_for(4)

    def fold() -> Tensor:
        acc = Accumulator()
        for i, d in enumerate(ds):
            acc.add("w", d["model.norm.weight"], 10.0 + i)
        return acc.pop("w")

    assert torch.equal(fold(), fold())
    acc = Accumulator()
    acc.add("w", torch.ones(2), 1.0)
    with pytest.raises(ValueError, match="shape"):
        acc.add("w", torch.ones(3), 1.0)
    with pytest.raises(ValueError, match="weight"):
        acc.add("w", torch.ones(2), 0.0)
    acc.average("w")
    assert torch.equal(acc.average("w"), torch.ones(2))  # divides once only
    with pytest.raises(ValueError, match="already averaged"):
        acc.add("w", torch.ones(2), 1.0)


def weighted_average(deltas: list[tuple[float, dict[str, Tensor]]]) -> dict[str, Tensor]:
    """Reference Σ w_i Δ_i / Σ w_i, in float64, returned as fp32."""
    total = sum(w for w, _ in deltas)
    out: dict[str, Tensor] = {}
    for name in deltas[0][1]:
        acc = torch.zeros(deltas[0][1][name].shape, dtype=torch.float64)
        for w, d in deltas:
            acc += w * d[name].double()
        out[name] = (acc / total).float()
    return out


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0.5, 1e6),
            st.lists(st.floats(-100, 100, width=32), min_size=3, max_size=3),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_accumulator_matches_float64_reference(silos: list[tuple[float, list[float]]]) -> None:
    deltas = [(w, {"t": torch.tensor(v, dtype=torch.float32)}) for w, v in silos]
    acc = Accumulator()
    for w, d in deltas:
        acc.add("t", d["t"], w)
    ref = weighted_average(deltas)["t"]
    scale = max(abs(x) for _, v in silos for x in v) + 1.0
    torch.testing.assert_close(acc.average("t"), ref, rtol=0, atol=1e-5 * scale)


# --- parity with torch.optim.SGD ------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "sgd_kwargs"),
    [
        (OuterConfig(), {"lr": 1.0, "momentum": 0.0}),
        (OuterConfig(name="fedmom", lr=0.5), {"lr": 0.5, "momentum": 0.9}),
        (OuterConfig(name="nesterov"), {"lr": 0.7, "momentum": 0.9, "nesterov": True}),
    ],
)
def test_sgd_family_equals_torch_sgd(cfg: OuterConfig, sgd_kwargs: dict[str, object]) -> None:
    ours, ref = rand_params(0), rand_params(0)
    leaves = {n: torch.nn.Parameter(t) for n, t in ref.items()}
    sgd = torch.optim.SGD(list(leaves.values()), foreach=False, **sgd_kwargs)  # type: ignore[arg-type]
    deltas = deltas_for(5)
    run_outer(make_outer(cfg), ours, deltas)
    for delta in deltas:
        for name, leaf in leaves.items():
            leaf.grad = -delta[name]  # pseudo-gradient g = −Δ̄
        sgd.step()
    for name in ours:
        assert torch.equal(ours[name], leaves[name].detach()), name


def test_nesterov_class_is_diloco_rule() -> None:
    assert isinstance(make_outer(OuterConfig(name="nesterov")), Nesterov)


# --- FedAdam / FedYogi against a hand-written reference --------------------------------


def reddi_reference(
    theta: Tensor, deltas: list[Tensor], *, yogi: bool, lr: float, b1: float, b2: float, tau: float
) -> Tensor:
    theta = theta.double()
    m = torch.zeros_like(theta)
    v = torch.full_like(theta, tau**2)
    for delta in deltas:
        g = -delta.double()
        m = b1 * m + (1 - b1) * g
        yogi_v = v - (1 - b2) * g * g * torch.sign(v - g * g)
        adam_v = b2 * v + (1 - b2) * g * g
        v = yogi_v if yogi else adam_v
        theta = theta - lr * m / (torch.sqrt(v) + tau)
    return theta.float()


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_adaptive_equals_reference(name: str) -> None:
    cfg = OuterConfig(name=name, lr=0.05, beta1=0.8, beta2=0.95, tau=1e-2)  # type: ignore[arg-type]
    params, deltas = rand_params(0), deltas_for(3)
    start = {n: t.clone() for n, t in params.items()}
    outer = make_outer(cfg)
    assert isinstance(outer, FedYogi if name == "fedyogi" else FedAdam)
    run_outer(outer, params, deltas)
    for n in params:
        steps = [d[n] for d in deltas]
        hyper = {"lr": 0.05, "b1": 0.8, "b2": 0.95, "tau": 1e-2}
        ref = reddi_reference(start[n], steps, yogi=name == "fedyogi", **hyper)
        torch.testing.assert_close(params[n], ref, rtol=1e-5, atol=1e-6)


def test_yogi_and_adam_differ() -> None:
    runs = {}
    for name in ("fedadam", "fedyogi"):
        params = rand_params(0)
        run_outer(make_outer(OuterConfig(name=name)), params, deltas_for(3))
        runs[name] = params["model.norm.weight"]
    assert not torch.allclose(runs["fedadam"], runs["fedyogi"])


# --- state, warm-up, misuse -----------------------------------------------------------


@pytest.mark.parametrize("name", STRATEGIES)
def test_state_round_trip_continues_identically(name: str) -> None:
    cfg = OuterConfig(name=name, warmup_rounds=3)  # type: ignore[arg-type]
    deltas = deltas_for(5)
    straight = rand_params(0)
    run_outer(make_outer(cfg), straight, deltas, r0=10)

    resumed = rand_params(0)
    first = make_outer(cfg)
    run_outer(first, resumed, deltas[:2], r0=10)
    saved = {k: v.clone() for k, v in first.state_tensors().items()}
    assert int(saved["step"]) == 2 and int(saved["round"]) == 11
    second = make_outer(cfg)
    second.load_state_tensors(saved)
    run_outer(second, resumed, deltas[2:], r0=12)
    for n in straight:
        assert torch.equal(straight[n], resumed[n]), n


def test_state_keys_name_the_tensors() -> None:
    outer = make_outer(OuterConfig(name="fedadam"))
    run_outer(outer, rand_params(0), deltas_for(1))
    keys = set(outer.state_tensors())
    assert keys == {"step", "round"} | {f"{s}/{n}" for s in ("m", "v") for n in SHAPES}


def test_state_from_another_strategy_is_refused() -> None:
    adam = make_outer(OuterConfig(name="fedadam"))
    run_outer(adam, rand_params(0), deltas_for(1))
    with pytest.raises(ConfigError, match="does not belong to nesterov"):
        make_outer(OuterConfig(name="nesterov")).load_state_tensors(adam.state_tensors())


def test_warmup_scales_lr_per_round_not_per_tensor() -> None:
    outer = make_outer(OuterConfig(lr=1.0, warmup_rounds=4))
    params = {n: torch.zeros(s) for n, s in SHAPES.items()}
    moved = []
    for r in range(6):
        for name in params:
            outer.step(name, params[name], torch.ones(SHAPES[name]), round=r)
        moved.append(float(params["model.norm.weight"][0]))
    assert moved == pytest.approx([0.25, 0.75, 1.5, 2.5, 3.5, 4.5])
    assert torch.equal(params["model.embed_tokens.weight"], torch.full((7, 5), 4.5))


def test_step_misuse_is_refused() -> None:
    outer = make_outer(OuterConfig(name="fedmom"))
    p = torch.zeros(3)
    outer.step("w", p, torch.ones(3), round=2)
    with pytest.raises(ValueError, match="already stepped"):
        outer.step("w", p, torch.ones(3), round=2)
    with pytest.raises(ValueError, match="after round 2"):
        outer.step("w", p, torch.ones(3), round=1)
    with pytest.raises(ValueError, match="shape"):
        outer.step("w", p, torch.ones(4), round=3)
    with pytest.raises(ValueError, match="fp32"):
        outer.step("w", p, torch.ones(3, dtype=torch.float64), round=3)


def test_step_works_on_parameters_that_require_grad() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    make_outer(OuterConfig(name="nesterov")).step("w", p, torch.ones(2), round=0)
    torch.testing.assert_close(p.detach(), torch.full((2,), 0.7 * 1.9))
