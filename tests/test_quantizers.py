"""Every registered quantizer pair against closed forms written independently here.

The reference table below is the test matrix: a newly registered quantizer without an entry
fails `test_every_quantizer_has_a_reference`, so new methods are tested automatically.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import biper
from biper.errors import BiperError
from biper.quantizers import Schedule, get_quantizer, list_quantizers, set_progress


def np_sign(x):
    return np.where(x < 0, -1.0, 1.0)  # sign(0) = sign(-0.0) = +1


def ss(x, b):
    s = 1.0 / (1.0 + np.exp(-b * x))
    return 2.0 * s * (1.0 + b * x * (1.0 - s)) - 1.0


def ss_grad(x, b):
    return b * (2.0 - b * x * np.tanh(b * x / 2.0)) / (1.0 + np.cosh(b * x))


# name -> list of (params, F_ref(x, p), dF_ref(x, p)); activation entries are checked in eval mode
REFERENCE = {
    "bc": [({}, lambda x, p: np_sign(x), lambda x, p: np.ones_like(x))],
    "bnn": [
        ({}, lambda x, p: np_sign(x), lambda x, p: (np.abs(x) <= 1.0) * 1.0),
        ({"clip": 0.5}, lambda x, p: np_sign(x), lambda x, p: (np.abs(x) <= 0.5) * 1.0),
    ],
    "bnn+": [
        ({}, lambda x, p: np_sign(x), lambda x, p: ss_grad(x, 5.0)),
        ({"beta": 2.0}, lambda x, p: np_sign(x), lambda x, p: ss_grad(x, 2.0)),
    ],
    "bnn++": [
        ({"mu": 3.0}, lambda x, p: ss(x, 3.0), lambda x, p: ss_grad(x, 3.0)),
        ({"mu": 40.0}, lambda x, p: ss(x, 40.0), lambda x, p: ss_grad(x, 40.0)),
    ],
    "pc": [({"mu": 2.0}, lambda x, p: np.clip(2.0 * x, -1, 1), lambda x, p: np.ones_like(x))],
    "rpc": [
        ({}, lambda x, p: np_sign(x), lambda x, p: (np.abs(x) <= 1.0) * 1.0),
        ({"mu": 4.0}, lambda x, p: np_sign(x), lambda x, p: 4.0 * (np.abs(4.0 * x) <= 1.0)),
    ],
    "biper": [
        ({}, lambda x, p: np_sign(np.sin(20.0 * x)), lambda x, p: 20.0 * np.cos(20.0 * x)),
        ({"omega0": 7.5, "stage": "square"}, lambda x, p: np_sign(np.sin(7.5 * x)), lambda x, p: 7.5 * np.cos(7.5 * x)),
        ({"omega0": 30.0, "stage": "sine"}, lambda x, p: np.sin(30.0 * x), lambda x, p: 30.0 * np.cos(30.0 * x)),
    ],
    "biper_tanh": [
        ({"beta": 3.0}, lambda x, p: np.tanh(3.0 * np.sin(20.0 * x)) / np.tanh(3.0),
         lambda x, p: 3.0 * 20.0 * np.cos(20.0 * x) / np.cosh(3.0 * np.sin(20.0 * x)) ** 2 / np.tanh(3.0)),
    ],
    "biper_fourier": [
        ({"K": 2.0}, lambda x, p: (4 / np.pi) ** 0.5 * (np.sin(20.0 * x) + np.sin(60.0 * x) / 3),
         lambda x, p: (4 / np.pi) ** 0.5 * 20.0 * (np.cos(20.0 * x) + np.cos(60.0 * x))),
    ],
    "biper_triangle": [
        ({}, lambda x, p: np_sign(np.sin(20.0 * x)), lambda x, p: 40.0 / np.pi * np_sign(np.cos(20.0 * x))),
        ({"stage": "triangle"}, lambda x, p: 2 / np.pi * np.arcsin(np.sin(20.0 * x)),
         lambda x, p: 40.0 / np.pi * np_sign(np.cos(20.0 * x))),
    ],
    "ste_sign": [
        ({}, lambda x, p: np_sign(x), lambda x, p: (np.abs(x) <= 1.0) * 1.0),
        ({"clip": 2.0}, lambda x, p: np_sign(x), lambda x, p: (np.abs(x) <= 2.0) * 1.0),
    ],
    "approx_sign": [({}, lambda x, p: np_sign(x), lambda x, p: np.maximum(0.0, 2.0 - 2.0 * np.abs(x)))],
    "swish_sign": [({"beta": 3.0}, lambda x, p: np_sign(x), lambda x, p: ss_grad(x, 3.0))],
    "recu_sign": [({}, lambda x, p: np_sign(x), lambda x, p: np.maximum(0.0, 2.0 - 2.0 * np.abs(x)))],
    "rsign": [({"channels": 4}, lambda x, p: np_sign(x), lambda x, p: np.maximum(0.0, 2.0 - 2.0 * np.abs(x)))],
}

CASES = [(name, i) for name in sorted(REFERENCE) for i in range(len(REFERENCE[name]))]


def sample_inputs(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    special = torch.tensor([0.0, -0.0, 0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 1e-30, -1e-30], dtype=torch.float64)
    body = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64) * 0.8
    x = body.flatten()
    x[: special.numel()] = special
    return x.view(2, 4, 3, 3)  # 4 channels, so rsign (channels=4) applies too


def test_every_quantizer_has_a_reference():
    missing = sorted(set(list_quantizers()) - set(REFERENCE))
    assert not missing, f"add closed-form references for {missing}"


@pytest.mark.parametrize("name", list_quantizers())
def test_registry_names_are_parametrized(name):
    q = get_quantizer(name)
    assert q.name == name and q.kind in ("weight", "activation")
    assert q.forward_formula and q.backward_formula and q.reference


@pytest.mark.parametrize("name,case", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_forward_and_gradient_match_closed_forms(name, case, seed):
    params, f_ref, df_ref = REFERENCE[name][case]
    q = get_quantizer(name, **params).double().eval()
    x = sample_inputs(seed).requires_grad_(True)
    y = q(x)
    xn = x.detach().numpy()
    np.testing.assert_allclose(y.detach().numpy(), f_ref(xn, params), rtol=0, atol=1e-12)
    g = torch.randn_like(x, generator=torch.Generator().manual_seed(seed + 7))
    y.backward(g)
    np.testing.assert_allclose(x.grad.numpy(), g.numpy() * df_ref(xn, params), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", list_quantizers())
def test_zero_and_negative_zero_map_to_plus_one_at_deployment(name):
    q = get_quantizer(name, **({"channels": 3} if name == "rsign" else {})).eval()
    x = torch.tensor([[0.0, -0.0, 0.0]]).view(1, 3, 1)
    b = q.binary(x)
    assert torch.equal(b, torch.ones_like(b))
    assert set(q.binary(torch.randn(2, 3, 5)).unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("name", list_quantizers("weight"))
def test_weight_deployment_is_sign_of_training_forward_limit(name):
    # the deployed +-1 weights agree with sign(F(w)) (F may be soft during training)
    q = get_quantizer(name)
    w = torch.randn(1000, dtype=torch.float64)
    assert torch.equal(q.binary(w), torch.where(q.forward_fn(w) < 0, -1.0, 1.0).double())


def test_recu_sign_training_gradient_through_normalisation():
    # reference: the smooth ApproxSign surrogate s(t) = 2t - t|t| (|t| <= 1), sign(t) otherwise,
    # applied to x / sqrt(var + eps), differentiated by autograd with plain torch ops
    q = get_quantizer("recu_sign").double().train()
    x = (torch.randn(3, 4, 5, 5, dtype=torch.float64) * 2).requires_grad_(True)
    g = torch.randn_like(x)
    q(x).backward(g)
    xr = x.detach().clone().requires_grad_(True)
    t = xr / torch.sqrt(xr.var(dim=(1, 2, 3), keepdim=True, unbiased=True) + 1e-5)
    s = torch.where(t.abs() <= 1, 2 * t - t * t.abs(), torch.sign(t))
    (s * g).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-10, atol=1e-12)
    assert torch.equal(q(x), torch.where(x < 0, -1.0, 1.0).double())  # forward unchanged by scale


def test_rsign_threshold_gradient_and_shift():
    q = get_quantizer("rsign", channels=3).double()
    with torch.no_grad():
        q.threshold.copy_(torch.tensor([0.5, -0.25, 0.0]))
    x = torch.tensor([[0.5, -0.3, -0.0], [0.4, -0.2, 0.1]], dtype=torch.float64).view(2, 3, 1, 1)
    x.requires_grad_(True)
    y = q(x)
    expected = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, 1.0]], dtype=torch.float64).view(2, 3, 1, 1)
    assert torch.equal(y, expected)
    y.sum().backward()
    shifted = (x.detach() - q.threshold.detach().view(1, 3, 1, 1)).numpy()
    dref = np.maximum(0.0, 2.0 - 2.0 * np.abs(shifted))
    np.testing.assert_allclose(x.grad.numpy(), dref, atol=1e-12)
    np.testing.assert_allclose(q.threshold.grad.numpy(), -dref.sum(axis=(0, 2, 3)), atol=1e-12)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown quantizer 'bipr'.*did you mean 'biper'.*valid: .*bnn\+\+"):
        biper.get_quantizer("bipr")


@pytest.mark.parametrize(
    "name,params,message",
    [
        ("biper", {"omega0": 0.0}, "omega0 must be > 0"),
        ("biper", {"omega0": -3}, "omega0 must be > 0"),
        ("biper", {"stage": "cube"}, "stage must be one of sine, square"),
        ("biper", {"omega": 20}, "no parameter 'omega'.*did you mean 'omega0'"),
        ("bnn", {"clip": float("nan")}, "clip must be a finite number"),
        ("bnn++", {"mu": {"schedule": "exp", "start": 0.0, "end": 5}}, "exp schedule needs start > 0"),
        ("bnn++", {"mu": {"schedule": "lin", "start": 1, "end": 5}}, "unknown schedule 'lin'"),
        ("swish_sign", {"beta": "5"}, "beta must be a finite number"),
    ],
)
def test_bad_parameters_are_rejected_with_a_clear_message(name, params, message):
    with pytest.raises(BiperError, match=message):
        get_quantizer(name, **params)


def test_schedules_anneal_parameters():
    q = get_quantizer("bnn++", mu={"schedule": "exp", "start": 2.0, "end": 200.0})
    assert q.mu == pytest.approx(2.0)
    model = torch.nn.Sequential(q)
    set_progress(model, 0.5)
    assert q.mu == pytest.approx(20.0)
    set_progress(model, 1.0)
    assert q.mu == pytest.approx(200.0)
    x = torch.tensor([0.3])
    assert q(x).item() == pytest.approx(ss(np.array([0.3]), 200.0)[0])
    assert Schedule("cosine", 10.0, 0.0)(0.5) == pytest.approx(5.0)
    assert Schedule("linear", 1.0, 3.0)(2.0) == pytest.approx(3.0)  # progress clamped to [0, 1]
    assert q.config()["mu"] == {"schedule": "exp", "start": 2.0, "end": 200.0}


def test_biper_regulariser_and_optimal_scale():
    q = get_quantizer("biper", omega0=20.0)
    w = torch.distributions.Laplace(0.0, 0.05).sample((200_000,))
    assert q.regularizer(w).item() == pytest.approx(torch.sin(20 * w).pow(2).mean().item())
    x = 20 * 0.05
    gamma_ref = x * (math.exp(math.pi / x) + 1) / ((x * x + 1) * (math.exp(math.pi / x) - 1))
    assert q.optimal_scale(w).item() == pytest.approx(gamma_ref, abs=5e-3)
    assert q.optimal_scale(w).item() == pytest.approx(torch.sin(20 * w).abs().mean().item(), abs=5e-3)


def test_extra_state_round_trips_numeric_parameters_only():
    q = get_quantizer("biper", omega0=12.0, stage="sine")
    r = get_quantizer("biper", stage="square")
    r.set_extra_state(q.get_extra_state())
    assert r.omega0 == 12.0 and r.stage == "square"
