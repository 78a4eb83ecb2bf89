"""`biper qe` and `biper analyze`: documented outputs, JSON keys, errors, and plots written."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from torch import nn

from biper.analysis import theory as T
from biper.analysis.measure import sample_weights
from biper.cli import main
from biper.nn import BinaryConv2d, BinaryLinear

PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_qe_json_matches_theory_and_monte_carlo(capsys):
    out = _json(capsys, ["qe", "--omega", "20", "--b", "0.05", "--mc", "50000", "--json"])
    for key in ("e_sin2", "gamma_opt", "qe", "qe_opt", "qe_mc"):
        assert key in out
    assert out["gamma"] == 1.0 and out["x"] == pytest.approx(1.0)
    assert out["e_sin2"] == pytest.approx(0.4)  # 2x^2/(4x^2+1) at x = 1
    assert out["gamma_opt"] == pytest.approx(1 / (2 * math.tanh(math.pi / 2)))
    assert out["qe"] == pytest.approx(0.4 - 2 * out["gamma_opt"] + 1)
    assert out["qe_opt"] == pytest.approx(0.4 - out["gamma_opt"] ** 2)
    assert abs(out["qe_mc"] - out["qe"]) < 5 * out["qe_mc_stderr"] and out["mc_n"] == 50000

    opt = _json(capsys, ["qe", "--omega", "20", "--b", "0.05", "--gamma-opt", "--json"])
    assert opt["gamma"] == opt["gamma_opt"] and opt["qe"] == pytest.approx(opt["qe_opt"])
    assert opt["qe_mc"] is None
    g = _json(capsys, ["qe", "--omega", "3", "--b", "0.5", "--gamma", "0.7", "--json"])
    assert g["qe"] == pytest.approx(float(T.qe(1.5, 0.7)))


def test_qe_text_and_target(capsys):
    assert main(["qe", "--omega", "20", "--b", "0.05", "--mc", "20000"]) == 0
    text = capsys.readouterr().out
    assert "E[sin^2]            = 0.400000" in text and "QE Monte Carlo" in text and "QE*" in text
    out = _json(capsys, ["qe", "--b", "0.05", "--target-qe", "0.05", "--json"])
    assert float(T.qe_opt(out["omega0_for_target"] * 0.05)) == pytest.approx(0.05)
    out = _json(capsys, ["qe", "--b", "0.1", "--target-qe", "0.6", "--relative", "--target-gamma", "one", "--json"])
    assert float(T.qe_relative(out["omega0_for_target"] * 0.1, 1.0)) == pytest.approx(0.6)


@pytest.mark.parametrize("argv,message", [
    (["qe", "--omega", "20"], "give both --omega and --b"),
    (["qe"], "give --omega W --b B"),
    (["qe", "--omega", "-1", "--b", "0.1"], "--omega must be > 0"),
    (["qe", "--b", "0.05", "--target-qe", "0.5"], "reachable range (0, 0.1028]"),
    (["qe", "--omega", "1", "--b", "1", "--relative"], "--relative only applies"),
])
def test_qe_errors_exit_2(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_qe_plot_writes_png(tmp_path, capsys):
    path = tmp_path / "img" / "qe.png"
    assert main(["qe", "--plot", str(path), "--mc", "300"]) == 0
    assert "wrote" in capsys.readouterr().out
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 20_000
    from PIL import Image

    with Image.open(path) as im:
        assert im.size[0] > 1000 and im.size[1] > 400


def _checkpoint(tmp_path):
    conv = BinaryConv2d(8, 16, 3, weight_params={"omega0": 30.0})
    lin = BinaryLinear(64, 32, weight_params={"omega0": 12.0})
    with torch.no_grad():
        conv.weight.copy_(sample_weights("laplace", conv.weight.numel(), 0.05, seed=1).view_as(conv.weight))
        lin.weight.copy_(sample_weights("laplace", lin.weight.numel(), 0.1, seed=2).view_as(lin.weight))
    model = nn.Sequential(conv, nn.Flatten(), lin)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "config": {}, "version": "test"}, path)
    return path, model


def test_analyze_json_and_table(tmp_path, capsys):
    path, model = _checkpoint(tmp_path)
    out = _json(capsys, ["analyze", str(path), "--json"])
    layers = {r["name"]: r for r in out["layers"]}
    assert set(layers) == {"0", "2"} and out["source"]["source"] == "state_dict"
    assert layers["0"]["omega0"] == 30.0 and layers["2"]["omega0"] == 12.0
    for name, layer in (("0", model[0]), ("2", model[2])):
        w = layer.weight.detach().double()
        b = (w - w.median()).abs().mean().item()
        assert layers[name]["b"] == pytest.approx(b)
        assert layers[name]["theory"]["qe_opt"] == pytest.approx(float(T.qe_opt(layer.weight_quantizer.omega0 * b)))
        assert layers[name]["alpha"]["mean"] == pytest.approx(layer.alpha.mean().item())
    assert main(["analyze", str(path)]) == 0
    text = capsys.readouterr().out
    assert "binary layers read from the state dict" in text and "2 binary layer(s)" in text


def test_analyze_plot_writes_png(tmp_path, capsys):
    path, _ = _checkpoint(tmp_path)
    png = tmp_path / "hist.png"
    assert main(["analyze", str(path), "--plot", str(png)]) == 0
    data = png.read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000


def test_analyze_errors(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["analyze", str(junk)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_imports_stay_light():
    code = ("import sys, biper, biper.analysis, biper.analysis.report, biper.analysis.flexible_init, "
            "biper.cli.qe, biper.cli.analyze; biper.analysis.qe_monte_carlo; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    src = str(pathlib.Path(__file__).resolve().parents[1] / "src")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": src})
