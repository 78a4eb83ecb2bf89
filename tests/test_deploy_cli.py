"""`biper train` -> `biper export` -> `biper infer` gives the training model's predictions;
`biper summary` counts against closed forms."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import biper
from biper.cli import main
from biper.deploy import load_packed, pack_model, summarize
from biper.nn import BinaryConv2d, BinaryLinear
from biper.train import build_model_from_config, load_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A two-stage BiPer run of the small MLP on synthetic data, trained by the real CLI."""
    out = tmp_path_factory.mktemp("run")
    rc = main(["train", "--out", str(out / "run"), "--max-steps", "2", "--quiet",
               "cifar10-resnet20-biper-cpu", "model.name=mlp", "data.dataset=synthetic", "data.options={size: 8, length: 64}",
               "data.batch_size=32", "data.eval_batch_size=64", "stages.*.epochs=1", "precision=fp32",
               "channels_last=false"])
    assert rc == 0
    return out / "run" / "final.pt"


def test_train_export_infer_same_predictions(trained, tmp_path, capsys):
    model_file = tmp_path / "mlp.biper"
    assert main(["export", str(trained), "-o", str(model_file), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verify"]["agree"] == report["verify"]["samples"] == 8
    assert report["packed_layers"] >= 1 and report["verify"]["max_abs_diff"] < 1e-4

    reference = build_model_from_config(load_checkpoint(trained)).eval()
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    np.save(tmp_path / "x.npy", x.numpy())
    assert main(["infer", str(model_file), "--input", str(tmp_path / "x.npy"), "--topk", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    with torch.no_grad():
        expected = reference(x).topk(2, dim=1).indices.tolist()
    assert [[p["index"] for p in r["top"]] for r in rows] == expected
    packed = load_packed(model_file)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), reference(x), rtol=1e-5, atol=1e-5)


def test_infer_images_need_normalisation(trained, tmp_path, capsys):
    from PIL import Image

    model_file = tmp_path / "m.biper"
    assert main(["export", str(trained), "-o", str(model_file), "--no-verify"]) == 0
    img = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    capsys.readouterr()
    assert main(["infer", str(model_file), "-i", str(tmp_path / "a.png")]) == 2
    assert "--mean" in capsys.readouterr().err
    assert main(["infer", str(model_file), "-i", str(tmp_path), "--mean", "0.5,0.5,0.5",
                 "--std", "0.25,0.25,0.25", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["predictions"][0]
    x = ((torch.from_numpy(img).permute(2, 0, 1).float() / 255 - 0.5) / 0.25).unsqueeze(0)
    with torch.no_grad():
        assert row["top"][0]["index"] == int(load_packed(model_file)(x).argmax())
    (tmp_path / "notes.txt").write_text("hi")
    assert main(["infer", str(model_file), "-i", str(tmp_path / "notes.txt")]) == 2
    assert "unsupported input type" in capsys.readouterr().err


def _small_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
        BinaryConv2d(8, 16, 3, stride=2, padding=1, bias=False),                     # W1A1
        BinaryConv2d(16, 16, 1, input_quantizer=None, scaling="none"),               # W1A32
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        BinaryLinear(16, 10, input_quantizer="rsign"), nn.Linear(10, 4)).eval()


def test_summary_counts_match_closed_form():
    s = summarize(_small_net(), (3, 8, 8))
    rows = {layer.name: layer for layer in s.layers}
    assert (rows["0"].float_params, rows["0"].float_macs) == (8 * 27 + 8, 8 * 8 * 8 * 27)
    assert (rows["2"].binary_params, rows["2"].float_params, rows["2"].binary_macs) == (16 * 72, 16, 16 * 16 * 72)
    assert (rows["3"].binary_params, rows["3"].float_macs, rows["3"].input_bits) == (256, 16 * 16 * 16, 32)
    assert (rows["6"].binary_params, rows["6"].float_params, rows["6"].binary_macs) == (160, 10 + 10 + 16, 160)
    assert s.binary_params == 1152 + 256 + 160
    assert s.float_params == 224 + 16 + 16 + 16 + 36 + 44
    assert (s.bops, s.flops) == (18432 + 160, 13824 + 4096 + 40)
    assert s.ops == s.bops / 64 + s.flops
    assert s.memory_bits == s.binary_params + 32 * s.float_params
    assert s.compression == pytest.approx(32 * (s.binary_params + s.float_params) / s.memory_bits)
    packed = summarize(pack_model(_small_net())[0], (3, 8, 8))
    assert (packed.binary_params, packed.bops, packed.flops) == (s.binary_params, s.bops, s.flops)
    assert "OPs = BOPs/64 + FLOPs" in s.table()


def test_summary_cli_on_model_recipe_and_file(trained, tmp_path, capsys):
    assert main(["summary", "resnet20_cifar", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    model = biper.create_model("resnet20_cifar", binarize=biper.BinarizeConfig())
    binary = sum(m.weight.numel() for m in model.modules() if isinstance(m, BinaryConv2d))
    assert data["binary_params"] == binary
    assert data["binary_params"] + data["float_params"] == sum(p.numel() for p in model.parameters())
    assert main(["summary", "cifar10-resnet20-biper"]) == 0
    assert "compression ratio" in capsys.readouterr().out
    for target in (str(trained), str(tmp_path / "m.biper")):
        if target.endswith(".biper"):
            assert main(["export", str(trained), "-o", target, "--no-verify"]) == 0
        capsys.readouterr()
        assert main(["summary", target, "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["input_size"] == [3, 8, 8] and data["bops"] > 0
    assert main(["summary", "no-such-thing"]) == 2
    assert "not a file, a model" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["bitpack", "kernels", "modules", "convert", "fileformat", "export",
                                    "optimize", "summary", "predict", "verify"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"biper.deploy.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_bench_reports_speedups(tmp_path, capsys):
    assert main(["bench", "--threads", "2", "--clock", "cpu"]) == 2
    assert "--threads 1" in capsys.readouterr().err
    assert main(["bench", "--threads", "1", "--clock", "cpu", "--rounds", "2", "--warmup", "0",
                 "--only", "linear", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "linear 4096x4096 batch 1" in out and "vs best float32" in out
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["environment"]["threads"] == 1 and len(report["results"]) == 2
    for case in report["results"]:
        packed = case["timings"]["packed W1A1"]
        assert packed["median_ms"] > 0 and packed["speedup_vs_best_float32"] > 0


def test_verify_uses_the_deployed_signs_for_soft_weight_methods():
    from biper.deploy.verify import compare_models

    torch.manual_seed(3)
    config = biper.BinarizeConfig(weight_quantizer="biper", weight_params={"stage": "sine"})
    model = biper.create_model("mlp", binarize=config).eval()
    result = compare_models(model, pack_model(model)[0], (3, 8, 8))
    assert result["soft_weights"] and result["agree"] == 8 and result["max_abs_diff"] < 1e-4
    hard = biper.create_model("mlp", binarize=biper.BinarizeConfig(weight_quantizer="bc")).eval()
    assert not compare_models(hard, pack_model(hard)[0], (3, 8, 8))["soft_weights"]
