"""BiPer QE closed forms against independent references: numerical integration, Monte Carlo with
tolerances from the sample size, limits and asymptotics, and numerical stability at extremes."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import biper
from biper.analysis import theory as T
from biper.analysis.measure import qe_monte_carlo, sample_weights



pytestmark = pytest.mark.usefixtures("one_thread")


Z = 5.0  # tolerance in standard errors (deterministic seeds; ~1e-6 false-alarm rate per point)


def _laplace_expect(fn, x: float) -> float:
    """E[fn(omega0 w)] for w ~ Laplace(0, b), x = omega0 b, by the trapezoid rule over
    t = |w|/b in [0, 60] (fn even): integral of fn(x t) e^{-t} dt."""
    t = np.linspace(0.0, 60.0, 2_000_001)
    y = fn(x * t) * np.exp(-t)
    return float(np.sum((y[1:] + y[:-1]) * 0.5 * np.diff(t)))


@pytest.mark.parametrize("x", [0.05, 0.3, 0.955, 2.0, 7.5])
def test_closed_forms_match_numerical_integration(x):
    esin2 = _laplace_expect(lambda u: np.sin(u) ** 2, x)
    gabs = _laplace_expect(lambda u: np.abs(np.sin(u)), x)
    assert T.e_sin2(x) == pytest.approx(esin2, rel=1e-6, abs=1e-9)
    assert T.gamma_opt(x) == pytest.approx(gabs, rel=1e-6, abs=1e-9)
    # the paper's printed form with e^{pi/x}, fine at moderate x
    e = math.exp(math.pi / x)
    paper = 2 * x * x / (4 * x * x + 1) - 2 * 0.7 * x * (e + 1) / ((x * x + 1) * (e - 1)) + 0.7**2
    assert T.qe(x, 0.7) == pytest.approx(paper, rel=1e-12)


POINTS = [(omega0, b, gamma)
          for b in (0.01, 0.08, 1.5)
          for omega0 in (0.5 / b, 2.0 / b, 20.0, 300.0)
          for gamma in (0.0, 0.4, 1.0, 1.7, "opt")]


@pytest.mark.parametrize("omega0,b,gamma", POINTS)
def test_theory_matches_monte_carlo(omega0, b, gamma):
    q = biper.get_quantizer("biper", omega0=omega0)
    mc = qe_monte_carlo(q, "laplace", scale=b, n=40_000, gamma=gamma, seed=hash((omega0, b)) % 1000)
    x = omega0 * b
    theory = T.qe_opt(x) if gamma == "opt" else T.qe(x, gamma)
    if gamma == "opt":
        assert mc.gamma == pytest.approx(float(T.gamma_opt(x)), rel=1e-12)
    assert mc.stderr > 0
    assert abs(mc.qe - theory) < Z * mc.stderr, (mc, float(theory))


@pytest.mark.parametrize("x", [0.2, 1.0, 4.0])
def test_lobe_fractions_match_monte_carlo(x):
    n = 200_000
    w = sample_weights("laplace", n, 0.1, seed=3)
    omega0 = x / 0.1
    beyond = (w.abs() > math.pi / omega0).double().mean().item()
    flip = (torch.sign(torch.sin(omega0 * w)) != torch.sign(w)).double().mean().item()
    for measured, p in ((beyond, T.frac_beyond_first_lobe(x)), (flip, T.frac_sign_flip(x))):
        se = math.sqrt(p * (1 - p) / n)
        assert abs(measured - p) < Z * se + 1e-12


def test_limits_at_infinity():
    for x in (1e8, 1e300, np.inf):
        assert T.e_sin2(x) == pytest.approx(T.LIMITS["e_sin2"], rel=1e-12)
        assert T.gamma_opt(x) == pytest.approx(2 / math.pi, rel=1e-12)
        assert T.qe(x, 1.0) == pytest.approx(1.5 - 4 / math.pi, rel=1e-12)
        assert T.qe_opt(x) == pytest.approx(0.5 - 4 / math.pi**2, rel=1e-12)
        assert T.qe(x, 0.3) == pytest.approx(T.qe_limit(0.3), rel=1e-12)
        assert T.qe_relative(x, "opt") == pytest.approx(1 - 8 / math.pi**2, rel=1e-12)
        assert T.qe_relative(x, 1.0) == pytest.approx(3 - 8 / math.pi, rel=1e-12)
    assert T.LIMITS["qe_gamma1"] == pytest.approx(float(T.qe_limit(1.0)))


def test_limits_and_asymptotics_at_zero():
    assert T.e_sin2(0.0) == 0 and T.gamma_opt(0.0) == 0 and T.qe_opt(0.0) == 0
    assert T.qe(0.0, 0.6) == pytest.approx(0.36)
    for x in (1e-3, 1e-8, 1e-100):
        assert T.e_sin2(x) == pytest.approx(2 * x * x, rel=1e-5)
        assert T.gamma_opt(x) == pytest.approx(x, rel=1e-5)
        assert T.qe_relative(x, "opt") == pytest.approx(0.5, rel=1e-5)
    for x in (1e-3, 1e-8):
        assert T.qe_opt(x) == pytest.approx(x * x, rel=1e-4)
    assert T.qe_relative(1e-300, "opt") == 0.5  # x^2 underflows: the limit, not 0/0
    assert T.frac_beyond_first_lobe(0.0) == 0 and T.frac_sign_flip(0.0) == 0


def test_no_overflow_or_nan_anywhere():
    x = np.concatenate([[0.0, 5e-324, 1e-300], np.logspace(-12, 12, 2001), [1e300, np.inf]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any RuntimeWarning (overflow, 0/0) fails the test
        for f in (T.e_sin2, T.gamma_opt, T.qe_opt, T.frac_beyond_first_lobe, T.frac_sign_flip):
            v = f(x)
            assert np.all(np.isfinite(v)), f.__name__
        assert np.all(np.isfinite(T.qe(x, 1.0)))
        assert np.all(np.isfinite(T.qe_relative(x, "opt")))
    # continuity where the implementation switches form (x = 1)
    for f in (T.e_sin2, T.gamma_opt):
        assert f(1.0 - 1e-12) == pytest.approx(float(f(1.0 + 1e-12)), rel=1e-10)


def test_shape_facts_used_by_flexible_init():
    x = np.logspace(-4, 4, 4001)
    assert np.all(np.diff(T.gamma_opt(x)) > 0)
    assert np.all(np.diff(T.qe(x, 1.0)) < 0)
    assert np.all(np.diff(T.qe_relative(x, "opt")) < 0)
    assert np.all(np.diff(T.qe_relative(x, 1.0)) < 0)
    px, py = T.QE_OPT_PEAK
    assert 0.9 < px < 1.0 and py == pytest.approx(float(T.qe_opt(x).max()), rel=1e-6)
    h = 1e-5  # derivative vanishes at the peak
    assert abs(float(T.qe_opt(px + h) - T.qe_opt(px - h))) / (2 * h) < 1e-6
    assert np.all(T.qe_opt(x) <= py + 1e-15)


def test_inputs_accept_tensors_and_reject_bad_values():
    assert T.gamma_opt(torch.tensor([1.0]))[0] == pytest.approx(float(T.gamma_opt(1.0)))
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="omega0 \\* b"):
            T.qe_opt(bad)
    with pytest.raises(ValueError, match="gamma"):
        T.qe_relative(1.0, "best")
