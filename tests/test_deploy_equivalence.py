"""Packed layers and models equal the training-time binarized model.

Integer accumulations are compared with atol=0 against an independent float64 convolution of
the +-1 tensors given by the layer's own quantizers; outputs without a folded BatchNorm are
bit-identical (same float operations), with one they agree to float rounding.
"""

import logging
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from biper.deploy import kernels, pack_model
from biper.deploy.modules import PackedConv2d, PackedLinear
from biper.errors import BiperError
from biper.nn import BinaryConv2d, BinaryLinear
from biper.quantizers import get_quantizer

ACTS = ["recu_sign", "approx_sign", "ste_sign", "rsign"]
WEIGHTS = ["biper", "bc", "bnn", "bnn++"]


def _trains_with_binary_weights(layer):
    """bnn++ (SignSwish) trains with soft weights and deploys sign(w): outputs then differ by
    design, and only the integer accumulations of the deployed sign are comparable."""
    with torch.no_grad():
        return torch.equal(layer.quantized_weight(), layer.weight_quantizer.binary(layer.weight))


@pytest.fixture
def backend(request, monkeypatch):
    """``native`` (C kernels) or ``reference`` (pure PyTorch, BIPER_DISABLE_KERNELS=1)."""
    if request.param == "reference":
        monkeypatch.setenv("BIPER_DISABLE_KERNELS", "1")
    kernels.reset()
    if request.param == "native" and kernels.backend() != "native":
        pytest.skip("native kernels unavailable")
    yield request.param
    kernels.reset()


# every seed on the native path, every fourth one on the reference path too
CONV_CASES = [("native", s) for s in range(40)] + [("reference", s) for s in range(0, 40, 4)]


def _randomize_(layer, gen):
    with torch.no_grad():
        layer.weight.normal_(0, 0.1, generator=gen)
        if layer.input_quantizer is not None and hasattr(layer.input_quantizer, "threshold"):
            layer.input_quantizer.threshold.normal_(0, 0.3, generator=gen)
        if layer.alpha is not None:
            layer.alpha.uniform_(0.2, 2.0, generator=gen)
        if layer.bias is not None:
            layer.bias.normal_(generator=gen)
    return layer.eval()


def _train_acc(layer, x):
    """Exact integer conv of the binarized input and weights (float64, independent path)."""
    xq = layer.input_quantizer.binary(x).double()
    wq = layer.weight_quantizer.binary(layer.weight).double()
    ph, pw = layer.padding
    xq = F.pad(xq, (pw, pw, ph, ph), value=layer.pad_value)
    return F.conv2d(xq, wq, None, layer.stride, 0, layer.dilation)


def _conv_case(seed):
    rng = random.Random(seed)
    return dict(cin=rng.choice([3, 64, 65, 130]), cout=rng.choice([1, 5, 32, 33, 40]),
                k=rng.choice([1, 2, 3, 5]), stride=rng.choice([1, 2]), padding=rng.choice([0, 1, 2]),
                dilation=rng.choice([1, 2]), pad_value=rng.choice([0.0, 0.0, 1.0, -1.0]),
                act=rng.choice(ACTS), weight=rng.choice(WEIGHTS), bias=rng.random() < 0.5,
                scaling=rng.choice(["learnable", "mean_abs", "none"]), batch=rng.choice([1, 2, 3]),
                hw=(rng.randint(9, 13), rng.randint(9, 13)), channels_last=rng.random() < 0.4)


@pytest.mark.parametrize("backend,seed", CONV_CASES, indirect=["backend"])
def test_packed_conv_equals_training_conv(backend, seed):
    case = _conv_case(seed)
    gen = torch.Generator().manual_seed(seed)
    layer = _randomize_(BinaryConv2d(case["cin"], case["cout"], case["k"], case["stride"], case["padding"],
                                     case["dilation"], bias=case["bias"], weight_quantizer=case["weight"],
                                     input_quantizer=case["act"], scaling=case["scaling"],
                                     pad_value=case["pad_value"]), gen)
    x = torch.randn(case["batch"], case["cin"], *case["hw"], generator=gen)
    x[0, :, 0, :2] = torch.tensor([0.0, -0.0])  # exact zeros binarize to +1
    if case["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    packed = PackedConv2d.from_binary(layer)
    acc = packed.accumulate(x)
    assert acc.dtype == torch.int32
    torch.testing.assert_close(acc.double(), _train_acc(layer, x), atol=0, rtol=0)
    if _trains_with_binary_weights(layer):
        with torch.no_grad():
            assert torch.equal(packed(x), layer(x)), case


@pytest.mark.parametrize("backend", ["native", "reference"], indirect=True)
@pytest.mark.parametrize("seed", range(12))
def test_packed_linear_equals_training_linear(seed, backend):
    rng = random.Random(seed)
    cin, cout = rng.choice([1, 3, 64, 65, 130, 700]), rng.choice([1, 5, 33, 64])
    act = rng.choice(ACTS + [None])
    gen = torch.Generator().manual_seed(seed)
    layer = _randomize_(BinaryLinear(cin, cout, bias=rng.random() < 0.5, input_quantizer=act,
                                     weight_quantizer=rng.choice(WEIGHTS)), gen)
    x = torch.randn(2, rng.choice([1, 3]), cin, generator=gen)
    x[0, 0, :2] = torch.tensor([0.0, -0.0])[: min(2, cin)] if cin > 1 else 0.0
    packed = PackedLinear.from_binary(layer)
    if not _trains_with_binary_weights(layer):
        layer.weight_quantizer = get_quantizer("bc")  # compare against sign(w) weights
        packed = PackedLinear.from_binary(layer)
    with torch.no_grad():
        if act is None:  # W1A32: same float linear with +-1 weights
            assert torch.equal(packed(x), layer(x))
            return
        expected = layer.input_quantizer.binary(x).double() @ layer.weight_quantizer.binary(layer.weight).double().T
        torch.testing.assert_close(packed.accumulate(x).double(), expected, atol=0, rtol=0)
        assert torch.equal(packed(x), layer(x))


@pytest.mark.parametrize("pad_value", [0.0, 1.0, -1.0])
def test_w1a32_conv(pad_value):
    torch.manual_seed(1)
    layer = BinaryConv2d(5, 7, 3, padding=1, input_quantizer=None, pad_value=pad_value).eval()
    x = torch.randn(2, 5, 6, 6)
    packed = PackedConv2d.from_binary(layer)
    assert not packed.binary_input
    with torch.no_grad():
        assert torch.equal(packed(x), layer(x))
    with pytest.raises(BiperError, match="W1A1"):
        packed.accumulate(x)


def test_float64_input_and_all_zero_input():
    torch.manual_seed(2)
    layer = BinaryConv2d(66, 8, 3, padding=1, bias=True).eval()
    packed = PackedConv2d.from_binary(layer)
    x = torch.randn(1, 66, 5, 5, dtype=torch.float64)
    x[0, 0, 0, 0] = -1e-300  # negative in float64, -0.0 in float32: must stay -1
    torch.testing.assert_close(packed.accumulate(x).double(), _train_acc(layer, x), atol=0, rtol=0)
    zeros = torch.zeros(1, 66, 5, 5)
    torch.testing.assert_close(packed.accumulate(zeros).double(), _train_acc(layer, zeros), atol=0, rtol=0)


class _Block(nn.Module):
    """Bi-Real style: y = act(bn(conv(x)) + x), plus a conv whose output is reused (no fold)."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = BinaryConv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = BinaryConv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.act = nn.Hardtanh()

    def forward(self, x):
        h = self.act(self.bn1(self.conv1(x)) + x)
        z = self.conv2(h)
        return self.act(self.bn2(z) + z)  # conv2's output is used twice: bn2 must stay


def _net(c=65):
    net = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), _Block(c), _Block(c),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), BinaryLinear(c, 16, bias=False),
                        nn.BatchNorm1d(16), nn.Linear(16, 10))
    gen = torch.Generator().manual_seed(3)
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.normal_(0, 2, generator=gen)
            m.running_var.uniform_(0.1, 3, generator=gen)
            m.weight.data.normal_(generator=gen)
            m.bias.data.normal_(generator=gen)
        elif isinstance(m, (BinaryConv2d, BinaryLinear)):
            _randomize_(m, gen)
    return net.eval()


def test_pack_model_folds_only_safe_pairs_and_matches():
    net = _net()
    packed, report = pack_model(net)
    assert report.fold_method == "fx"
    assert sorted(report.folded) == [("2.conv1", "2.bn1"), ("3.conv1", "3.bn1"), ("6", "7")]
    assert isinstance(packed[2].bn2, nn.BatchNorm2d) and isinstance(packed[2].bn1, nn.Identity)
    assert isinstance(net[2].conv1, BinaryConv2d), "pack_model must not modify its input"
    x = torch.randn(4, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), net(x), rtol=1e-5, atol=1e-5)


class _Untraceable(nn.Module):
    def __init__(self, with_pairs):
        super().__init__()
        self.conv, self.bn = BinaryConv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.with_pairs = with_pairs

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            x = -x
        return self.bn(self.conv(x))


def test_untraceable_model_uses_declared_pairs_or_keeps_bn(caplog):
    model = _Untraceable(True).eval()
    model.bn.running_mean.normal_()
    caplog.set_level(logging.WARNING, logger="biper.deploy")
    packed, report = pack_model(model)
    assert report.folded == [] and "not traceable" in report.fold_method
    assert any("cannot trace" in r.getMessage() for r in caplog.records)
    model.conv_bn_pairs = lambda: [("conv", "bn")]
    packed2, report2 = pack_model(model)
    assert report2.folded == [("conv", "bn")]
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        assert torch.equal(packed(x), model(x))
        torch.testing.assert_close(packed2(x), model(x), rtol=1e-5, atol=1e-5)


def test_unsupported_layers_are_refused():
    with pytest.raises(BiperError, match="groups=1"):
        PackedConv2d.from_binary(BinaryConv2d(4, 4, 3, groups=2))

    class Odd(get_quantizer("ste_sign").__class__):
        name = "odd_sign"

        def binary(self, x):
            return torch.where(x < 0.5, -1.0, 1.0)  # a threshold the layer does not expose

    layer = BinaryConv2d(4, 4, 3)
    layer.input_quantizer = Odd()
    with pytest.raises(BiperError, match="does not deploy as sign"):
        PackedConv2d.from_binary(layer)


@pytest.mark.parametrize("backend", ["native", "reference"], indirect=True)
def test_fused_residual_tail_is_bit_exact(backend):
    gen = torch.Generator().manual_seed(5)
    layer = _randomize_(BinaryConv2d(70, 33, 3, padding=1, bias=True), gen)
    packed = PackedConv2d.from_binary(layer)
    x = torch.randn(2, 70, 6, 7, generator=gen)
    r = torch.randn(2, 33, 6, 7, generator=gen)
    r[0, 0, 0, 0] = float("nan")
    with torch.no_grad():
        y = packed(x)
        for clamp in (None, (-1.0, 1.0), (0.0, float("inf"))):
            for res in (r, r.contiguous(memory_format=torch.channels_last), r[:, :, :1, :1]):
                expected = y + res
                expected = torch.clamp(expected, *clamp) if clamp else expected
                torch.testing.assert_close(packed(x, res, clamp=clamp), expected, rtol=0, atol=0,
                                           equal_nan=True)


def test_optimize_folds_fuses_and_keeps_outputs():
    from biper.deploy.optimize import optimize

    net = _net()
    packed, _ = pack_model(net)
    fast = optimize(pack_model(net)[0])
    assert isinstance(fast, torch.fx.GraphModule)
    assert fast.fused_epilogues == 2  # conv1 of each block; conv2's output is used twice
    assert sum(type(m) is nn.BatchNorm2d for m in fast.modules()) == 2  # the stem BN was folded
    x = torch.randn(3, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast(x), packed(x), rtol=1e-5, atol=1e-5)


def test_optimize_moves_activation_behind_maxpool_exactly():
    from biper.deploy.optimize import optimize

    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Hardtanh(), nn.MaxPool2d(3, 2, 1),
                        BinaryConv2d(8, 8, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2)).eval()
    fast = optimize(pack_model(net)[0])
    order = [n.target for n in fast.graph.nodes if n.op == "call_module"]
    assert order == ["0", "2", "1", "3", "5", "4"], order
    x = torch.randn(2, 3, 11, 11)
    x[0, 0, 0, 0] = float("nan")
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("backend", ["native", "reference"], indirect=True)
def test_empty_batch_and_strided_inputs(backend):
    torch.manual_seed(7)
    conv = BinaryConv2d(8, 4, 3, padding=1).eval()
    linear = BinaryLinear(8, 4).eval()
    pc, pl = PackedConv2d.from_binary(conv), PackedLinear.from_binary(linear)
    with torch.no_grad():
        assert pc(torch.randn(0, 8, 5, 5)).shape == (0, 4, 5, 5)
        assert pc.accumulate(torch.randn(0, 8, 5, 5)).shape == (0, 4, 5, 5)
        assert pl(torch.randn(0, 8)).shape == (0, 4)
        x = torch.randn(2, 16, 7, 9)[:, ::2, 1:, ::2]  # non-contiguous in every dim
        assert torch.equal(pc(x), conv(x))
        v = torch.randn(3, 16)[:, ::2]
        assert torch.equal(pl(v), linear(v))
