"""QE measurement for every weight pair, Laplace ML fit, per-layer report, flexible omega0 init.

References are independent of the code under test: closed forms for other laws and pairs,
hand-computed values from plain ``math`` on known weights, Monte Carlo with standard errors.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import biper
from biper.analysis import theory as T
from biper.analysis.flexible_init import FlexibleInit, apply_flexible_init, omega0_for_target, reachable_range
from biper.analysis.measure import laplace_b, measure_qe, qe_monte_carlo, qe_target, sample_weights
from biper.analysis.report import analyze_checkpoint, analyze_model, analyze_state_dict, format_table
from biper.nn import BinaryLinear

Z = 5.0


pytestmark = pytest.mark.usefixtures("one_thread")


# -- measurement ---------------------------------------------------------------------------------
@pytest.mark.parametrize("loc,b", [(0.0, 0.05), (0.3, 1.7)])
def test_laplace_b_recovers_scale(loc, b):
    n = 200_000
    w = sample_weights("laplace", n, b, seed=1) + loc
    # the ML estimate mean|w - median| has relative standard deviation 1/sqrt(n)
    assert laplace_b(w) == pytest.approx(b, rel=Z / math.sqrt(n))
    assert laplace_b(torch.tensor([1.0, 2.0, 4.0, 10.0, -3.0])) == pytest.approx((1 + 0 + 2 + 8 + 5) / 5)
    assert laplace_b(torch.tensor([1.0, -1.0, 3.0]), loc=0.0) == pytest.approx(5 / 3)


@pytest.mark.parametrize("dist,scale", [("gaussian", 0.07), ("uniform", 0.2)])
def test_biper_energy_on_other_laws(dist, scale):
    """QE at gamma = 0 is E[sin^2(omega0 w)]: closed forms for Gaussian and uniform weights."""
    omega0 = 15.0
    if dist == "gaussian":
        expected = (1 - math.exp(-2 * (omega0 * scale) ** 2)) / 2
    else:
        a = omega0 * scale
        expected = 0.5 - math.sin(2 * a) / (4 * a)
    q = biper.get_quantizer("biper", omega0=omega0)
    mc = qe_monte_carlo(q, dist, scale, n=100_000, gamma=0.0, seed=2)
    assert abs(mc.qe - expected) < Z * mc.stderr


@pytest.mark.parametrize("name", ["bc", "bnn", "bnn+", "rpc"])
@pytest.mark.parametrize("gamma", [1.0, 0.03])
def test_sign_forward_pairs_measure_against_latent(name, gamma):
    """Target w: E[(w - gamma sign w)^2] = 2b^2 - 2 gamma b + gamma^2 for Laplace(0, b)."""
    b = 0.05
    mc = qe_monte_carlo(name, "laplace", b, n=100_000, gamma=gamma, seed=4)
    assert abs(mc.qe - (2 * b * b - 2 * gamma * b + gamma * gamma)) < Z * mc.stderr
    emp = qe_monte_carlo(name, "laplace", b, n=100_000, gamma="emp", seed=4)
    assert emp.gamma == pytest.approx(b, rel=0.02)  # least squares gamma = E|w| = b


def test_soft_forward_pairs_measure_against_their_forward():
    w = torch.linspace(-1, 1, 2001, dtype=torch.float64)
    pc = biper.get_quantizer("pc", mu=3.0)
    assert torch.equal(qe_target(pc, w), torch.clamp(3.0 * w, -1, 1))
    bpp = biper.get_quantizer("bnn++", mu=4.0)
    assert torch.equal(qe_target(bpp, w), bpp.forward_fn(w))
    sign = torch.where(w >= 0, 1.0, -1.0).double()
    expected = ((torch.clamp(3.0 * w, -1, 1) - 0.8 * sign) ** 2).mean()
    assert measure_qe(pc, w, 0.8) == pytest.approx(float(expected), rel=1e-12)
    # BiPer's target is the stage-1 sine in either stage
    for stage in ("sine", "square"):
        q = biper.get_quantizer("biper", omega0=7.0, stage=stage)
        assert torch.equal(qe_target(q, w), torch.sin(7.0 * w))


def test_measure_rejects_bad_input():
    with pytest.raises(biper.BiperError, match="weight quantizers"):
        measure_qe(biper.get_quantizer("ste_sign"), torch.randn(10))
    with pytest.raises(biper.BiperError, match="gamma"):
        measure_qe("bc", torch.randn(10), gamma="best")
    with pytest.raises(biper.BiperError, match="dist must be one of"):
        sample_weights("cauchy", 10, 1.0)
    with pytest.raises(biper.BiperError, match="scale"):
        sample_weights("laplace", 10, -1.0)


# -- per-layer report ----------------------------------------------------------------------------
KNOWN = [0.1, -0.2, 0.4, -0.5, 0.05, 0.7, -0.05, 0.33]


def _known_model(omega0=10.0):
    layer = BinaryLinear(4, 2, bias=False, weight_params={"omega0": omega0})
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(KNOWN).view(2, 4))
        layer.alpha.copy_(torch.tensor([0.25, 0.75]))
    return nn.Sequential(nn.Linear(3, 4), layer)


def test_report_on_known_weights():
    (r,) = analyze_model(_known_model())
    w = [float(torch.tensor(v)) for v in KNOWN]  # float32 values, as stored
    med = sorted(w)[3]  # torch.median: lower of the two middle values
    b = sum(abs(v - med) for v in w) / 8
    sq = [1.0 if math.sin(10 * v) >= 0 else -1.0 for v in w]
    g_star = 10 * b / ((100 * b * b + 1) * math.tanh(math.pi / (20 * b)))
    assert r.name == "1" and r.shape == (2, 4) and r.numel == 8 and r.quantizer == "biper"
    assert r.omega0 == 10.0 and r.loc == pytest.approx(med) and r.b == pytest.approx(b)
    assert r.x == pytest.approx(10 * b)
    assert r.frac_beyond_first_lobe == 4 / 8  # |w| > pi/10: 0.4, -0.5, 0.7, 0.33
    assert r.frac_sign_flip == 3 / 8          # 0.4, -0.5, 0.33 sit in odd lobes
    assert r.qe_gamma1 == pytest.approx(sum((math.sin(10 * v) - s) ** 2 for v, s in zip(w, sq)) / 8)
    assert r.gamma_opt == pytest.approx(g_star)
    assert r.qe_gamma_opt == pytest.approx(sum((math.sin(10 * v) - g_star * s) ** 2 for v, s in zip(w, sq)) / 8)
    assert r.gamma_emp == pytest.approx(sum(abs(math.sin(10 * v)) for v in w) / 8)
    assert r.alpha == pytest.approx({"mean": 0.5, "min": 0.25, "max": 0.75})
    assert r.theory["qe_opt"] == pytest.approx(float(T.qe_opt(10 * b)))
    assert r.theory["frac_sign_flip"] == pytest.approx(1 / (math.exp(math.pi / (10 * b)) + 1))


def test_report_on_laplace_layer_matches_theory():
    layer = BinaryLinear(512, 512, bias=False, weight_params={"omega0": 25.0}, scaling="none")
    with torch.no_grad():
        layer.weight.copy_(sample_weights("laplace", 512 * 512, 0.04, seed=5).view(512, 512))
    (r,) = analyze_model(nn.Sequential(layer))
    n = r.numel
    assert r.b == pytest.approx(0.04, rel=Z / math.sqrt(n)) and r.alpha is None
    th = r.theory
    for measured, expected in ((r.qe_gamma1, th["qe_gamma1"]), (r.qe_gamma_opt, th["qe_opt"])):
        assert abs(measured - expected) < Z * math.sqrt(0.25 / n)  # errors in [0, 4], var < 1/4 here
    for key in ("frac_beyond_first_lobe", "frac_sign_flip"):
        p = th[key]
        assert abs(getattr(r, key) - p) < Z * math.sqrt(p * (1 - p) / n)


def test_state_dict_and_checkpoint_paths_agree_with_model(tmp_path):
    model = _known_model()
    ref = [r.to_dict() for r in analyze_model(model)]
    assert [r.to_dict() for r in analyze_state_dict(model.state_dict())] == ref
    path = tmp_path / "plain.pt"
    torch.save(model.state_dict(), path)
    assert [r.to_dict() for r in analyze_checkpoint(path)] == ref
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "config": {}, "version": biper.__version__}, ckpt)
    assert [r.to_dict() for r in analyze_checkpoint(str(ckpt))] == ref


def test_checkpoint_is_rebuilt_from_model_config(tmp_path):
    from biper.analysis.report import load_layers
    from biper.models import create_model

    torch.manual_seed(0)
    cfg = biper.BinarizeConfig(weight_quantizer="pc", weight_params={"mu": 2.0})
    model = create_model("mlp", binarize=cfg)
    path = tmp_path / "m.pt"
    torch.save({"model": model.state_dict(), "model_config": model.model_config, "config": {}}, path)
    specs, info = load_layers(path)
    assert info["source"] == "model" and info["model"] == "mlp"
    assert [s.quantizer.name for s in specs] == ["pc", "pc"]
    # a plain state dict of a pc model cannot tell pc from bnn++ / rpc (all store mu) ...
    with pytest.raises(biper.BiperError, match="several quantizers"):
        analyze_state_dict(model.state_dict())
    # ... unless the name is given
    rows = analyze_state_dict(model.state_dict(), "pc")
    assert [r.to_dict() for r in rows] == [r.to_dict() for r in analyze_model(model)]


def test_report_errors_and_table():
    with pytest.raises(biper.BiperError, match="no binary layer"):
        analyze_state_dict(nn.Linear(2, 2).state_dict())
    with pytest.raises(biper.BiperError, match="no binary layer"):
        analyze_model(nn.Linear(2, 2))
    with pytest.raises(biper.BiperError, match="does not exist"):
        analyze_checkpoint("/nonexistent/x.pt")
    with pytest.raises(biper.BiperError, match="unknown weight quantizer"):
        analyze_state_dict(_known_model().state_dict(), "bipr")
    table = format_table(analyze_model(_known_model()))
    assert "QE* th" in table and "\n1 " in table and "1 binary layer(s), 8 weights" in table


# -- flexible initialisation ---------------------------------------------------------------------
@pytest.mark.parametrize("relative,gamma,target", [
    (False, "opt", 0.01), (False, "opt", 0.05), (False, "opt", 0.1), (False, "one", 0.3),
    (False, "one", 0.8), (True, "opt", 0.2), (True, "opt", 0.4), (True, "one", 0.6), (True, "one", 5.0)])
@pytest.mark.parametrize("b", [0.003, 0.08, 2.0])
def test_omega0_for_target_hits_target(relative, gamma, target, b):
    omega0 = omega0_for_target(b, target, relative=relative, gamma=gamma)
    x = omega0 * b
    g = "opt" if gamma == "opt" else 1.0
    value = T.qe_relative(x, g) if relative else (T.qe_opt(x) if gamma == "opt" else T.qe(x, 1.0))
    assert float(value) == pytest.approx(target, rel=1e-9)
    if not relative and gamma == "opt":  # two solutions above 0.0947: the rising branch is chosen
        assert x <= T.QE_OPT_PEAK[0] + 1e-9


@pytest.mark.parametrize("relative,gamma,target", [
    (False, "opt", 0.11), (False, "one", 0.2), (True, "opt", 0.1), (True, "opt", 0.6), (True, "one", 0.4)])
def test_unreachable_target_names_range(relative, gamma, target):
    lo, hi = reachable_range(relative, gamma)
    assert not lo < target <= hi
    with pytest.raises(biper.BiperError, match=r"not reachable.*reachable range \("):
        omega0_for_target(0.05, target, relative=relative, gamma=gamma)
    with pytest.raises(biper.BiperError, match="not reachable"):
        FlexibleInit(target, relative=relative, gamma=gamma)


def _laplace_model(bs=(0.02, 0.05, 0.2), sizes=(256, 128, 64)):
    layers = []
    for k, (b, n) in enumerate(zip(bs, sizes)):
        layer = BinaryLinear(n, n, weight_params={"omega0": 20.0})
        with torch.no_grad():
            layer.weight.copy_(sample_weights("laplace", n * n, b, seed=10 + k).view(n, n))
        layers.append(layer)
    return nn.Sequential(*layers)


def test_apply_flexible_init_per_layer_and_global():
    model = _laplace_model()
    chosen = apply_flexible_init(model, 0.05, per_layer=True)
    assert list(chosen) == ["0", "1", "2"]
    for name, layer in model.named_children():
        q, b = layer.weight_quantizer, laplace_b(layer.weight)
        assert q.omega0 == chosen[name]
        assert float(T.qe_opt(q.omega0 * b)) == pytest.approx(0.05, rel=1e-9)
        # the measured QE of the layer's own weights lands on the target too
        n = layer.weight.numel()
        assert abs(measure_qe(q, layer.weight, "opt") - 0.05) < Z * math.sqrt(0.05 / n)

    chosen = apply_flexible_init(model, 0.3, per_layer=False, gamma="one")
    assert len(set(chosen.values())) == 1
    omega0 = chosen["0"]
    ws = [(layer.weight.numel(), laplace_b(layer.weight)) for layer in model]
    mean = sum(n * float(T.qe(omega0 * b, 1.0)) for n, b in ws) / sum(n for n, _ in ws)
    assert mean == pytest.approx(0.3, rel=1e-9)


def test_flexible_init_survives_state_dict_round_trip():
    model = _laplace_model()
    chosen = FlexibleInit.from_dict({"target_qe": 0.35, "relative": True, "per_layer": True}).apply(model)
    fresh = _laplace_model()
    fresh.load_state_dict(model.state_dict())
    assert {n: m.weight_quantizer.omega0 for n, m in fresh.named_children()} == chosen
    assert len(set(chosen.values())) == 3


def test_flexible_init_errors():
    with pytest.raises(biper.BiperError, match="no"):
        apply_flexible_init(nn.Sequential(BinaryLinear(4, 4, weight_quantizer="bc")), 0.05)
    sched = BinaryLinear(8, 8, weight_params={"omega0": {"schedule": "linear", "start": 10.0, "end": 30.0}})
    with pytest.raises(biper.BiperError, match="schedule"):
        apply_flexible_init(nn.Sequential(sched), 0.05)
    with pytest.raises(biper.BiperError, match="unknown omega0_init key 'per_layers'"):
        FlexibleInit.from_dict({"target_qe": 0.05, "per_layers": True})
    with pytest.raises(biper.BiperError, match="needs target_qe"):
        FlexibleInit.from_dict({"relative": True})
    with pytest.raises(biper.BiperError, match="gamma must be one of"):
        FlexibleInit(0.05, gamma="best")
    with pytest.raises(biper.BiperError, match="per_layer must be true or false"):
        FlexibleInit(0.05, per_layer="yes")
    with pytest.raises(biper.BiperError, match="b \\(Laplace scale\\) must be > 0"):
        omega0_for_target(0.0, 0.05)
    assert FlexibleInit.from_dict(FlexibleInit(0.05, per_layer=True).to_dict()) == FlexibleInit(0.05, per_layer=True)
