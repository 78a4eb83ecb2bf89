"""QE theory of the periodic surrogates (biper.theory.surrogates) against Monte Carlo and the sine."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from biper.analysis import theory
from biper.analysis.measure import qe_monte_carlo
from biper.cli import main
from biper.quantizers.periodic import surrogate_quantizer
from biper.theory import surrogates

N = 200_000
CASES = [("sine", {}), ("tanh", {"beta": 0.5}), ("tanh", {"beta": 5.0}), ("tanh", {"beta": 200.0}),
         ("fourier", {"K": 2.0}), ("fourier", {"K": 4.5}), ("fourier", {"K": 12.0}), ("triangle", {})]
POINTS = [(20.0, 0.005), (20.0, 0.05), (5.0, 0.2), (40.0, 0.5)]  # x = 0.1, 1, 1, 20


def _spec(name, param):
    return name + (f":{next(iter(param.values())):g}" if param else "")


@pytest.mark.parametrize("name, param", CASES)
@pytest.mark.parametrize("omega0, b", POINTS)
def test_theory_matches_monte_carlo(name, param, omega0, b):
    x = omega0 * b
    m = surrogates.moments(name, x, **param)
    q = surrogate_quantizer(_spec(name, param), omega0)
    for gamma in (1.0, m["e_fs"], 0.3):
        mc = qe_monte_carlo(q, "laplace", scale=b, n=N, gamma=gamma, seed=7, target="forward")
        expected = m["e_f2"] - 2 * gamma * m["e_fs"] + gamma**2
        assert abs(mc.qe - expected) < 4 * mc.stderr + 1e-12, (gamma, mc, expected)


@pytest.mark.parametrize("x", [0.01, 0.3, 1.0, 2.7, 50.0, 1e4])
def test_sine_equals_the_closed_form_of_analysis_theory(x):
    m = surrogates.moments("sine", x)
    assert m["e_f2"] == pytest.approx(float(theory.e_sin2(x)), rel=1e-12)
    assert m["e_fs"] == pytest.approx(float(theory.gamma_opt(x)), rel=1e-12)
    assert surrogates.qe_opt("sine", x) == pytest.approx(float(theory.qe_opt(x)), rel=1e-9, abs=1e-15)
    assert surrogates.qe("sine", x, 0.7) == pytest.approx(float(theory.qe(x, 0.7)), rel=1e-12)


@pytest.mark.parametrize("x", [0.02, 0.4, 1.0, 7.0, 200.0])
@pytest.mark.parametrize("K", [1.0, 2.0, 3.25, 10.0])
def test_fourier_closed_form_equals_lobe_quadrature(x, K):
    a = surrogates.moments("fourier", x, K=K)
    b = surrogates.moments("fourier", x, K=K, method="quadrature")
    assert a["e_f2"] == pytest.approx(b["e_f2"], rel=1e-9, abs=1e-14)
    assert a["e_fs"] == pytest.approx(b["e_fs"], rel=1e-9, abs=1e-14)


def test_lobe_integral_of_sin_times_square_wave():
    """E[sin(n u) S(u)] = n X coth(pi/(2X)) / (1 + n^2 X^2): K = 2 minus K = 1 isolates n = 3."""
    X = 0.8
    lam = (4 / math.pi) ** 0.5
    e3 = (surrogates.moments("fourier", X, K=2.0)["e_fs"] / lam - surrogates.moments("sine", X)["e_fs"]) * 3
    assert e3 == pytest.approx(3 * X / math.tanh(math.pi / (2 * X)) / (1 + 9 * X * X), rel=1e-12)


def test_limits():
    # large beta / large K: the forward is the square wave, QE(1) -> 0, gamma* -> 1 (for x not tiny)
    assert surrogates.qe("tanh", 1.0, beta=1e5) < 1e-4
    assert surrogates.gamma_opt("tanh", 1.0, beta=1e5) == pytest.approx(1.0, abs=1e-4)
    assert surrogates.qe("fourier", 1.0, K=2000.0) < 2e-3
    # beta -> 0: the sine
    assert surrogates.qe_opt("tanh", 1.0, beta=1e-4) == pytest.approx(float(theory.qe_opt(1.0)), rel=1e-6)
    # square: no error at gamma = 1
    assert surrogates.qe("square", 3.0) == 0.0
    # triangle at large x: E[T^2] = 1/3, E|T| = 1/2 (uniform phase)
    m = surrogates.moments("triangle", 1e4)
    assert m["e_f2"] == pytest.approx(1 / 3, rel=1e-3) and m["e_fs"] == pytest.approx(0.5, rel=1e-3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown surrogate"):
        surrogates.moments("cosine", 1.0)
    with pytest.raises(ValueError, match="> 0"):
        surrogates.moments("sine", 0.0)
    with pytest.raises(ValueError, match=">= 1"):
        surrogates.moments("fourier", 1.0, K=0.5)


def test_cli_surrogate_json_agrees_with_monte_carlo(capsys):
    assert main(["qe", "--surrogate", "tanh:5", "--omega", "20", "--b", "0.05", "--mc", "200000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("gamma_opt", "qe", "qe_opt", "qe_mc", "qe_mc_stderr", "mc_n", "e_sin2", "x"):
        assert key in out
    assert out["gamma"] == 1.0 and out["x"] == pytest.approx(1.0)
    assert abs(out["qe_mc"] - out["qe"]) < 4 * out["qe_mc_stderr"]
    assert out["qe"] == pytest.approx(surrogates.qe("tanh", 1.0, beta=5.0))
    assert main(["qe", "--surrogate", "fourier:3", "--omega", "20", "--b", "0.05", "--gamma-opt", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["qe"] == pytest.approx(out["qe_opt"]) and out["qe_mc"] is None


@pytest.mark.parametrize("argv, message", [
    (["--surrogate", "cosine", "--omega", "20", "--b", "0.05"], "unknown surrogate"),
    (["--surrogate", "tanh:abc", "--omega", "20", "--b", "0.05"], "must be a number"),
    (["--surrogate", "fourier:0.5", "--omega", "20", "--b", "0.05"], "K must be in [1, 4096]"),
    (["--surrogate", "triangle:2", "--omega", "20", "--b", "0.05"], "takes no parameter"),
    (["--surrogate", "tanh", "--b", "0.05", "--target-qe", "0.05"], "applies to the sine only"),
])
def test_cli_bad_surrogate(argv, message, capsys):
    assert main(["qe", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_surrogate_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot needs the 'plot' extra (matplotlib)")
    path = tmp_path / "qe.png"
    assert main(["qe", "--surrogate", "all", "--plot", str(path), "--mc", "500"]) == 0
    assert path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.isfinite(surrogates.qe_opt("tanh", 0.05, beta=100.0))
