"""Periodic surrogates (biper_tanh, biper_fourier, biper_triangle) against formulas written here."""

from __future__ import annotations

import json
import math

import pytest
import torch

import biper
from biper.cli import main
from biper.errors import BiperError
from biper.quantizers import check_decomposition, check_pair, describe_quantizers, get_quantizer
from biper.quantizers.periodic import surrogate_quantizer

W0 = 20.0
# exact zeros, lobe boundaries (+- 1 ulp-ish), peaks, generic points and large |w|
POINTS = ([k * math.pi / W0 for k in range(-3, 4)]
          + [k * math.pi / W0 + d for k in (-2, 1, 5) for d in (-1e-9, 1e-9)]
          + [(k + 0.5) * math.pi / W0 for k in (-2, 0, 3)]
          + [0.0123, -0.0456, 0.2, 317.3, -1234.5678])


def _autograd(q, w):
    t = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    q(t).sum().backward()
    return q(t.detach()), t.grad


def _num_derivative(f, w, h=1e-7):
    return (f(w + h) - f(w - h)) / (2 * h)


def ref_tanh(w, beta):
    return math.tanh(beta * math.sin(W0 * w)) / math.tanh(beta)


def ref_fourier(w, K):
    n_terms = math.ceil(K)
    s = sum(min(1.0, K - k) * math.sin((2 * k + 1) * W0 * w) / (2 * k + 1) for k in range(n_terms))
    return (4 / math.pi) ** (1 - 1 / K) * s


def ref_triangle(w):
    return 2 / math.pi * math.asin(max(-1.0, min(1.0, math.sin(W0 * w))))


def ref_square(w):
    return 1.0 if math.sin(W0 * w) >= 0 else -1.0


@pytest.mark.parametrize("beta", [0.3, 2.0, 25.0])
def test_tanh_forward_backward(beta):
    q = get_quantizer("biper_tanh", omega0=W0, beta=beta)
    y, g = _autograd(q, POINTS)
    for i, w in enumerate(POINTS):
        assert y[i].item() == pytest.approx(ref_tanh(w, beta), abs=1e-9)
        if abs(w) < 10:  # the finite difference loses digits at large |w|
            assert g[i].item() == pytest.approx(_num_derivative(lambda v: ref_tanh(v, beta), w), rel=1e-5, abs=1e-4)
        expected = beta * W0 * math.cos(W0 * w) * (1 - math.tanh(beta * math.sin(W0 * w)) ** 2) / math.tanh(beta)
        assert g[i].item() == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert float(y.abs().max()) <= 1.0


@pytest.mark.parametrize("K", [1.0, 2.0, 3.5, 9.0])
def test_fourier_forward_backward(K):
    q = get_quantizer("biper_fourier", omega0=W0, K=K)
    y, g = _autograd(q, POINTS)
    for i, w in enumerate(POINTS):
        assert y[i].item() == pytest.approx(ref_fourier(w, K), abs=1e-9)
        if abs(w) < 10:
            assert g[i].item() == pytest.approx(_num_derivative(lambda v: ref_fourier(v, K), w), rel=1e-5, abs=1e-4)


def test_triangle_forward_backward():
    tri = get_quantizer("biper_triangle", omega0=W0, stage="triangle")
    sq = get_quantizer("biper_triangle", omega0=W0)  # stage square
    y, g = _autograd(tri, POINTS)
    ys, gs = _autograd(sq, POINTS)
    for i, w in enumerate(POINTS):
        assert y[i].item() == pytest.approx(ref_triangle(w), abs=1e-7 if abs(w) > 10 else 1e-12)
        assert ys[i].item() == ref_square(w)
        slope = 2 * W0 / math.pi * (1.0 if math.cos(W0 * w) >= 0 else -1.0)
        assert g[i].item() == slope and gs[i].item() == slope
    # piecewise linear: the derivative is a finite difference away from the kinks
    for w in (0.0123, -0.0456, 0.2):
        assert _num_derivative(ref_triangle, w) == pytest.approx(g[POINTS.index(w)].item(), rel=1e-6)
    # kinks at the peaks of the sine: T = +-1 exactly
    assert tri(torch.tensor([0.5 * math.pi / W0, 1.5 * math.pi / W0], dtype=torch.float64)).tolist() == \
        pytest.approx([1.0, -1.0], abs=1e-15)


def test_limits_beta_to_zero_and_infinity():
    w = torch.linspace(-1.0, 1.0, 20001, dtype=torch.float64)
    s = torch.sin(W0 * w)
    small = get_quantizer("biper_tanh", omega0=W0, beta=1e-4)
    assert (small(w) - s).abs().max() < 1e-8  # tanh(b s)/tanh(b) = s + O(b^2)
    away = s.abs() > 1e-2
    big = get_quantizer("biper_tanh", omega0=W0, beta=1e4)
    assert torch.equal(big(w)[away], torch.sign(s)[away])
    assert float(get_quantizer("biper_tanh", omega0=W0, beta=30.0)(w).abs().max()) <= 1.0


def test_fourier_k1_is_the_sine_and_large_k_the_square_wave():
    w = torch.linspace(-1.0, 1.0, 20001, dtype=torch.float64)
    s = torch.sin(W0 * w)
    assert torch.allclose(get_quantizer("biper_fourier", omega0=W0, K=1)(w), s, atol=1e-15, rtol=0)
    sine_stage = get_quantizer("biper", omega0=W0, stage="sine")
    assert torch.allclose(get_quantizer("biper_fourier", omega0=W0, K=1)(w), sine_stage(w), atol=1e-15, rtol=0)
    away = s.abs() > 0.2
    errors = [float((get_quantizer("biper_fourier", omega0=W0, K=K)(w) - torch.sign(s))[away].abs().max())
              for K in (16, 64, 256)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01  # ~1/K away from the crossings
    # the anneal is continuous in K (the newest harmonic fades in)
    a = get_quantizer("biper_fourier", omega0=W0, K=2.5)(w)
    b = get_quantizer("biper_fourier", omega0=W0, K=2.5 + 1e-6)(w)
    assert (a - b).abs().max() < 1e-5


def test_schedules_anneal_inside_one_stage():
    q = get_quantizer("biper_tanh", beta={"schedule": "exp", "start": 0.1, "end": 1000.0})
    assert q.beta == pytest.approx(0.1)
    q.set_progress(0.5)
    assert q.beta == pytest.approx(10.0)
    q.set_progress(1.0)
    assert q.beta == pytest.approx(1000.0)
    f = get_quantizer("biper_fourier", K={"schedule": "linear", "start": 1, "end": 9},
                      omega0={"schedule": "linear", "start": 10, "end": 30})
    f.set_progress(0.25)
    assert (f.K, f.omega0) == (3.0, 15.0)


def test_deployment_is_the_square_wave():
    w = torch.randn(1000, dtype=torch.float64) * 0.1
    for name in ("biper_tanh", "biper_fourier", "biper_triangle"):
        q = get_quantizer(name, omega0=W0)
        assert torch.equal(q.binary(w), torch.where(torch.sin(W0 * w) >= 0, 1.0, -1.0).double())
        assert q.regularizer(w).item() == pytest.approx(float(torch.sin(W0 * w).pow(2).mean()))


def test_quantizers_json_lists_the_surrogates(capsys):
    assert main(["quantizers", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["biper_tanh"]["parameters"] == {"omega0": 20.0, "beta": 5.0, "target_qe": 0.0}
    assert rows["biper_fourier"]["parameters"]["K"] == 5.0
    assert rows["biper_triangle"]["choices"] == {"stage": ["triangle", "square"]}
    for name in ("biper_tanh", "biper_fourier", "biper_triangle"):
        assert "omega0" in rows[name]["forward"] and rows[name]["backward"]
    assert {d["name"] for d in describe_quantizers()} >= {"biper", "biper_tanh", "biper_fourier", "biper_triangle"}


@pytest.mark.parametrize("name, params, error", [
    ("biper_fourier", {"K": 0.5}, "K must be in [1, 4096]"),
    ("biper_tanh", {"beta": 0.0}, "beta must be > 0"),
    ("biper_tanh", {"target_qe": 0.2}, "target_qe must be in [0, 0.1)"),
    ("biper_tanh", {"target_qe": 0.05, "omega0": {"schedule": "linear", "start": 10, "end": 20}},
     "give omega0 as a number"),
    ("biper_triangle", {"stage": "sine"}, "stage must be one of triangle, square"),
])
def test_bad_parameters(name, params, error):
    with pytest.raises(BiperError, match=error.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        get_quantizer(name, **params)


# -- the ProxConnect++ criterion --------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.5, 5.0, 50.0])
def test_tanh_pair_is_sound_with_identity_p(beta):
    q = get_quantizer("biper_tanh", omega0=W0, beta=beta)
    res = check_pair(q, n=201, resolution=8001)
    assert res.ok and res.backward == {"at_w": True, "at_p": True}
    res = check_decomposition(q.forward_fn, q.backward_primitive, P=lambda x: x, backward=q.backward_fn)
    assert res.ok and res.backward == {"at_w": True, "at_p": True}


@pytest.mark.parametrize("K", [1.0, 3.5, 16.0])
def test_fourier_pair_is_sound_with_identity_p(K):
    q = get_quantizer("biper_fourier", omega0=W0, K=K)
    res = check_decomposition(q.forward_fn, q.backward_primitive, P=lambda x: x, backward=q.backward_fn)
    assert res.ok and res.backward == {"at_w": True, "at_p": True}


def test_triangle_pairs():
    tri = get_quantizer("biper_triangle", omega0=W0, stage="triangle")
    res = check_pair(tri, n=201)
    assert res.ok and res.backward == {"at_w": True, "at_p": True}
    sq = get_quantizer("biper_triangle", omega0=W0)
    staircase = lambda w: math.pi / (2 * W0) + (math.pi / W0) * torch.floor(W0 * w / math.pi)  # noqa: E731
    res = check_decomposition(sq.forward_fn, sq.backward_primitive, P=staircase, backward=sq.backward_fn)
    assert res.ok and res.backward == {"at_w": True, "at_p": False}  # like BiPer's square stage
    assert check_pair(sq, n=201).backward == {"at_w": True, "at_p": False}


def test_backward_not_derivative_is_rejected():
    """The checker can fail: the tanh forward with the sine's backward is not B' at w."""
    q = get_quantizer("biper_tanh", omega0=W0, beta=5.0)
    res = check_decomposition(q.forward_fn, q.backward_primitive, P=lambda x: x,
                              backward=lambda x: W0 * torch.cos(W0 * x))
    assert not res.ok and "not B' evaluated at w" in res.reason


# -- training and export ------------------------------------------------------------------------------
def test_packed_export_agrees_with_the_model():
    from biper.deploy import pack_model
    from biper.deploy.verify import compare_models

    torch.manual_seed(0)
    for name, params in (("biper_tanh", {"beta": 1000.0}), ("biper_fourier", {"K": 64.0}), ("biper_triangle", {})):
        model = biper.create_model("mlp", binarize=biper.BinarizeConfig(weight_quantizer=name,
                                                                       weight_params=params)).eval()
        res = compare_models(model, pack_model(model)[0], (3, 8, 8))
        assert res["agree"] == res["samples"] and res["max_abs_diff"] < 1e-3


def test_surrogate_spec_parsing():
    assert surrogate_quantizer("tanh:7", 10.0).hparams()["beta"] == 7.0
    assert surrogate_quantizer("fourier:3", 10.0).K == 3.0
    assert surrogate_quantizer("sine", 10.0).stage == "sine"
    assert surrogate_quantizer("triangle", 10.0).stage == "triangle"
    with pytest.raises(BiperError, match="unknown surrogate"):
        surrogate_quantizer("cosine", 10.0)
    with pytest.raises(BiperError, match="takes no parameter"):
        surrogate_quantizer("triangle:3", 10.0)
