"""Epoch-end flip-rate / |B'| / soft-fraction diagnostics, omega0 re-targeting, the one-stage recipes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from biper.analysis.flips import SOFT_TOL, FlipTracker
from biper.analysis.flexible_init import omega0_for_target
from biper.analysis.theory import qe_opt
from biper.cli import main
from biper.nn import BinaryLinear
from biper.quantizers import get_quantizer, set_progress
from biper.train import load_run_config

SYNTHETIC = ["data.dataset=synthetic", "data.data_dir=null", "data.options={size: 32, length: 8, num_classes: 10}",
             "data.batch_size=2", "data.eval_batch_size=4", "threads=1"]


def _model(quantizer="bnn", params=None, n=(32, 16)):
    torch.manual_seed(0)
    return torch.nn.Sequential(BinaryLinear(n[0], n[1], weight_quantizer=quantizer, weight_params=params or {}),
                               BinaryLinear(n[1], 8, weight_quantizer=quantizer, weight_params=params or {}))


def test_flip_rate_of_hand_flipped_weights():
    model = _model()
    t = FlipTracker()
    first = t.update(model)
    assert first["flip_rate"] is None and set(first["layers"]) == {"0", "1"}
    with torch.no_grad():
        w = model[0].weight.view(-1)
        w[:40] = -w[:40]  # 40 of 512 signs of layer 0 flipped, layer 1 untouched
    row = t.update(model)
    assert row["layers"]["0"]["flip_rate"] == 40 / 512
    assert row["layers"]["1"]["flip_rate"] == 0.0
    assert row["flip_rate"] == 40 / (512 + 128)
    assert t.update(model)["flip_rate"] == 0.0


def test_flip_rate_uses_the_deployed_signs_of_biper():
    model = _model("biper", {"omega0": 20.0})
    t = FlipTracker()
    t.update(model)
    with torch.no_grad():  # a shift by one period keeps every deployed sign, half a period flips all
        model[0].weight.add_(2 * math.pi / 20.0)
        model[1].weight.add_(math.pi / 20.0)
    row = t.update(model)
    assert row["layers"]["0"]["flip_rate"] < 0.01  # float rounding at the crossings only
    assert row["layers"]["1"]["flip_rate"] > 0.99


def test_mean_abs_bprime_and_soft_fraction():
    model = _model("bnn")
    with torch.no_grad():
        model[0].weight.copy_(torch.linspace(-2.0, 2.0, 512).view(16, 32))
    row = FlipTracker().update(model)["layers"]["0"]
    assert row["mean_abs_bprime"] == pytest.approx(float((torch.linspace(-2, 2, 512).abs() <= 1).float().mean()))
    assert row["soft_frac"] == 0.0 and "omega0" not in row
    model = _model("biper_tanh", {"omega0": 20.0, "beta": 3.0})
    w = model[0].weight.detach()
    row = FlipTracker().update(model)["layers"]["0"]
    x = 20.0 * w.double()
    bprime = 3.0 * 20.0 * torch.cos(x) * (1 - torch.tanh(3.0 * torch.sin(x)) ** 2) / math.tanh(3.0)
    assert row["mean_abs_bprime"] == pytest.approx(float(bprime.abs().mean()), rel=1e-5)
    soft = (torch.tanh(3.0 * torch.sin(x)) / math.tanh(3.0) - torch.where(torch.sin(x) >= 0, 1.0, -1.0)).abs()
    assert row["soft_frac"] == pytest.approx(float((soft > SOFT_TOL).double().mean()))
    assert row["omega0"] == 20.0


def test_end_of_anneal_forward_is_the_square_wave():
    """At the end of the one-stage recipes' schedules the forward equals the deployed weights
    on all but a small fraction of Laplace(0, 0.05) weights (tanh: within SOFT_TOL)."""
    cfg = load_run_config("cifar10-resnet20-biper-tanh-cpu")
    q = get_quantizer(cfg.binarize.weight_quantizer, **cfg.binarize.weight_params)
    set_progress(torch.nn.Sequential(q), 1.0)
    w = torch.distributions.Laplace(0.0, 0.05).sample((200_000,))
    frac = float(((q.forward_fn(w) - q.binary(w)).abs() > SOFT_TOL).float().mean())
    assert frac < 0.01
    set_progress(torch.nn.Sequential(q), 0.0)
    assert float(((q.forward_fn(w) - torch.sin(20.0 * w)).abs()).max()) < 2e-3  # starts at the sine


def test_retarget_omega0_each_epoch():
    model = _model("biper_fourier", {"omega0": 20.0, "K": 1.0, "target_qe": 0.05}, n=(256, 64))
    with torch.no_grad():
        model[0].weight.copy_(torch.distributions.Laplace(0.0, 0.02).sample(model[0].weight.shape))
    row = FlipTracker().update(model)
    omega0 = row["layers"]["0"]["omega0"]
    w = model[0].weight.detach()
    b = float((w - w.median()).abs().mean())
    assert omega0 == pytest.approx(omega0_for_target(b, 0.05))
    assert float(qe_opt(omega0 * b)) == pytest.approx(0.05, rel=1e-6)
    assert model[0].weight_quantizer.omega0 == omega0


def test_one_stage_recipes_run_one_step_through_the_cli(tmp_path):
    for name in ("cifar10-resnet20-biper-tanh-cpu", "cifar10-resnet20-biper-fourier-cpu",
                 "cifar10-resnet20-biper-triangle-cpu"):
        cfg = load_run_config(name)
        two = load_run_config("cifar10-resnet20-biper-cpu")
        assert len(cfg.stages) == 1 and cfg.stages[0].epochs == sum(s.epochs for s in two.stages)
        out = tmp_path / name
        assert main(["train", name, *SYNTHETIC, "stages.0.epochs=2", "--subset", "2", "--out", str(out),
                     "--quiet"]) == 0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and rows[0]["flip_rate"] is None
        assert 0.0 <= rows[1]["flip_rate"] <= 1.0 and rows[1]["mean_abs_bprime"] > 0
        assert set(rows[1]["layers"]) and 0.0 <= rows[1]["soft_frac"] <= 1.0
        assert "flip_rate" in (out / "metrics.csv").read_text().splitlines()[0]


def test_plot_flips(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot needs the 'plot' extra (matplotlib)")
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"epoch": i, "test_acc": 10.0 + i, "flip_rate": None if i == 1 else 0.1 / i, "mean_abs_bprime": 1.0}
            for i in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = tmp_path / "flips.png"
    assert main(["plot-flips", str(run), "--out", str(png), "--label", "x"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_flips_bad_input(tmp_path, capsys):
    assert main(["plot-flips", str(tmp_path / "missing"), "--out", str(tmp_path / "f.png")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["plot-flips", str(tmp_path), "--out", str(tmp_path / "f.png"), "--label", "a", "--label", "b"]) == 2
    assert "--label given 2 time(s) for 1 run(s)" in capsys.readouterr().err


def test_qe_report_follows_the_surrogate_and_its_current_omega0():
    from biper.analysis.report import analyze_model
    from biper.theory import surrogates

    model = _model("biper_tanh", {"omega0": 20.0, "beta": 4.0, "target_qe": 0.05}, n=(1024, 256))
    with torch.no_grad():
        model[0].weight.copy_(torch.distributions.Laplace(0.0, 0.04).sample(model[0].weight.shape))
    FlipTracker().update(model)  # re-targets omega0
    row = analyze_model(model)[0]
    omega0 = model[0].weight_quantizer.omega0
    assert row.omega0 == omega0 != 20.0
    x = omega0 * row.b
    assert row.theory["qe_opt"] == pytest.approx(surrogates.qe_opt("tanh", x, beta=4.0))
    # a Laplace layer matches its theory up to sampling noise (262,144 weights)
    assert row.qe_gamma1 == pytest.approx(row.theory["qe_gamma1"], abs=0.01)
