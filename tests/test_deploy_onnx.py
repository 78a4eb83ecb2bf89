"""ONNX export: onnxruntime runs the deployed network and matches the PyTorch packed model (and
the training-time model) on batches; binary weights are stored at 1 bit each."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import biper
from biper.cli import main
from biper.deploy import export_model, pack_model
from biper.errors import BiperError
from biper.nn import BinaryConv2d, BinaryLinear

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'biper[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'biper[onnx]')")

from biper.deploy.onnx_export import export_onnx, pack_sign_bits  # noqa: E402


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


def _mixed_net() -> nn.Module:
    """Binary first layer on the raw input, W1A32, +-1 padding, stride, thresholds, pools."""
    torch.manual_seed(0)
    return _randomise_bn(nn.Sequential(
        BinaryConv2d(3, 70, 3, padding=1, bias=False), nn.BatchNorm2d(70), nn.Hardtanh(),  # W1A1, Cin=3
        BinaryConv2d(70, 24, 3, stride=2, padding=1, pad_value=-1.0, bias=False), nn.BatchNorm2d(24),
        nn.ReLU(), nn.MaxPool2d(2),
        BinaryConv2d(24, 16, 1, input_quantizer=None, scaling="none"),                     # W1A32
        nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        BinaryLinear(16, 10, input_quantizer="rsign"), nn.BatchNorm1d(10), nn.Linear(10, 4)))


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])


CASES = [
    ("resnet20", lambda: _randomise_bn(biper.create_model("resnet20_cifar", binarize=biper.BinarizeConfig())), (3, 32, 32)),
    ("resnet20-bnn", lambda: _randomise_bn(biper.create_model(
        "resnet20_cifar", binarize=biper.BinarizeConfig(weight_quantizer="bnn", input_quantizer="ste_sign"))), (3, 32, 32)),
    ("mlp", lambda: _randomise_bn(biper.create_model("mlp", binarize=biper.BinarizeConfig())), (3, 8, 8)),
    ("mixed", _mixed_net, (3, 12, 12)),
]


@pytest.mark.parametrize("name,make,size", CASES, ids=[c[0] for c in CASES])
def test_onnxruntime_matches_the_packed_and_training_models(name, make, size, tmp_path):
    model = make()
    packed, _ = pack_model(model)
    path = tmp_path / f"{name}.onnx"
    info = export_onnx(model, path, size)
    assert info["file_bytes"] == path.stat().st_size
    session = _session(path)
    g = torch.Generator().manual_seed(1)
    for batch in (1, 9):  # the batch dimension is dynamic
        x = torch.randn(batch, *size, generator=g)
        x[0, :, :2] = 0.0   # sign(0) = +1 ...
        x[-1, :, 2:4] = -0.0  # ... and sign(-0.0) = +1, exactly as in training
        got = _run(session, x)
        with torch.no_grad():
            want, train = packed(x), model(x)
        assert got.shape == want.shape
        assert torch.equal(got.argmax(1), want.argmax(1))
        scale = float(want.abs().max()) + 1.0
        assert float((got - want).abs().max()) <= 1e-5 * scale, name
        assert float((got - train).abs().max()) <= 1e-5 * scale, name


def test_graph_is_standard_with_one_bit_weights(tmp_path):
    model = _randomise_bn(biper.create_model("resnet20_cifar", binarize=biper.BinarizeConfig()))
    path = tmp_path / "r20.onnx"
    export_onnx(model, path, (3, 32, 32))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert all(o.domain in ("", "ai.onnx") for o in proto.opset_import)
    assert max(o.version for o in proto.opset_import) >= 17
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    dims = inp.type.tensor_type.shape.dim
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert out.name == "logits" and out.type.tensor_type.shape.dim[1].dim_value == 10
    binary = [m for m in model.modules() if isinstance(m, (BinaryConv2d, BinaryLinear)) and m.weight_quantizer]
    bits = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.UINT8 and i.name.endswith("bits")]
    assert len(bits) == len(binary) == 18
    assert sum(len(i.raw_data) for i in bits) == sum(math.ceil(m.weight.numel() / 8) for m in binary)
    floats = sum(int(np.prod(i.dims)) for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    others = sum(p.numel() for p in model.parameters()) - sum(m.weight.numel() for m in binary)
    assert floats < others + 2 * sum(m.weight.shape[0] for m in binary) + 4 * 64 + 100  # no +-1 float copies
    packed_file = tmp_path / "r20.biper"
    export_model(model, packed_file)
    assert path.stat().st_size < 1.1 * packed_file.stat().st_size


def test_pack_sign_bits_order():
    w = torch.tensor([1.0, -1.0, 0.0, -0.0, -2.0, 3.0, 1.0, 1.0, -1.0, 1.0])
    # byte 0: weights 0..7, bit i set for w[i] < 0 -> bits 1 and 4; byte 1: bit 0 (w[8])
    assert pack_sign_bits(w).tolist() == [0b00010010, 0b00000001]


def test_unsupported_layer_is_named(tmp_path):
    model = nn.Sequential(BinaryConv2d(3, 8, 3, padding=1), nn.GELU(), nn.Flatten(), nn.Linear(8 * 16, 2)).eval()
    with pytest.raises(BiperError, match=r"does not support layer '1' \(GELU\)"):
        export_onnx(model, tmp_path / "x.onnx", (3, 4, 4))
    assert not (tmp_path / "x.onnx").exists()


def test_cli_exports_a_packed_file_and_verifies_it(tmp_path, capsys):
    model = _randomise_bn(biper.create_model("resnet20_cifar", binarize=biper.BinarizeConfig()))
    export_model(model, tmp_path / "m.biper")
    capsys.readouterr()
    assert main(["export", str(tmp_path / "m.biper"), "--format", "onnx", "-o", str(tmp_path / "m.onnx"),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verify"]["agree"] == report["verify"]["samples"] == 8
    assert report["verify"]["max_abs_diff"] < 1e-4
    assert report["biper_bytes"] == (tmp_path / "m.biper").stat().st_size
    assert report["size_ratio"] == pytest.approx(report["file_bytes"] / report["biper_bytes"], abs=1e-4)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = pack_model(model)[0](x)
    torch.testing.assert_close(_run(_session(tmp_path / "m.onnx"), x), want, rtol=1e-5, atol=1e-5)
