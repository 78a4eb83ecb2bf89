"""Binary layers against the float ops fed the binarized operands (atol = 0 where sums are exact)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from biper.errors import BiperError
from biper.functional import sign
from biper.nn import BinaryConv2d, BinaryLinear, clip_latent_weights_, regularization
from biper.quantizers import get_quantizer, list_quantizers

SIGN_FORWARD_WEIGHTS = ["bc", "bnn", "bnn+", "rpc"]


def with_zeros(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten()
    flat[:4] = torch.tensor([0.0, -0.0, 0.0, -0.0])
    return flat.view_as(x)


@pytest.mark.parametrize("wq", SIGN_FORWARD_WEIGHTS)
@pytest.mark.parametrize("aq", list_quantizers("activation"))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conv_equals_float_conv_on_signs(wq, aq, seed):
    torch.manual_seed(seed)
    conv = BinaryConv2d(5, 7, 3, stride=1 + seed % 2, padding=1, bias=False,
                        weight_quantizer=wq, input_quantizer=aq, scaling="none").eval()
    with torch.no_grad():
        conv.weight.copy_(with_zeros(conv.weight))
    x = with_zeros(torch.randn(2, 5, 9, 9))
    expected = F.conv2d(sign(x), sign(conv.weight), None, conv.stride, 1)
    assert torch.equal(conv(x), expected)  # integer sums of +-1: exact


@pytest.mark.parametrize("wq", SIGN_FORWARD_WEIGHTS)
@pytest.mark.parametrize("seed", [0, 1])
def test_linear_equals_float_linear_on_signs(wq, seed):
    torch.manual_seed(seed)
    lin = BinaryLinear(33, 6, bias=False, weight_quantizer=wq, input_quantizer="ste_sign", scaling="none")
    x = with_zeros(torch.randn(4, 3, 33))
    assert torch.equal(lin(x), F.linear(sign(x), sign(lin.weight)))


def test_biper_conv_uses_square_wave_weights():
    torch.manual_seed(0)
    conv = BinaryConv2d(4, 6, 3, padding=1, bias=False, weight_params={"omega0": 20.0},
                        input_quantizer="ste_sign", scaling="none")
    x = torch.randn(2, 4, 6, 6)
    wb = torch.where(torch.sin(20.0 * conv.weight) < 0, -1.0, 1.0)
    assert torch.equal(conv(x), F.conv2d(sign(x), wb, padding=1))


@pytest.mark.parametrize("scaling", ["learnable", "mean_abs", "gamma_opt", "none"])
def test_scaling_and_bias_are_applied_per_output_channel(scaling):
    torch.manual_seed(3)
    conv = BinaryConv2d(3, 4, 3, padding=1, bias=True, weight_quantizer="bc",
                        input_quantizer="approx_sign", scaling=scaling)
    x = torch.randn(2, 3, 5, 5)
    base = F.conv2d(sign(x), sign(conv.weight), padding=1)
    if scaling == "learnable":
        scale = conv.alpha
    elif scaling == "mean_abs":
        scale = conv.weight.abs().mean(dim=(1, 2, 3))
    elif scaling == "gamma_opt":
        scale = conv.weight.abs().mean().expand(4)  # bc's least-squares scale
    else:
        scale = torch.ones(4)
    expected = base * scale.view(1, -1, 1, 1) + conv.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(conv(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pad_value", [1.0, -1.0])
def test_pad_value_pads_the_binarized_input(pad_value):
    torch.manual_seed(1)
    conv = BinaryConv2d(3, 4, 3, padding=2, dilation=2, bias=False, weight_quantizer="bc",
                        input_quantizer="ste_sign", scaling="none", pad_value=pad_value)
    x = torch.randn(1, 3, 6, 6)
    padded = F.pad(sign(x), (2, 2, 2, 2), value=pad_value)
    assert torch.equal(conv(x), F.conv2d(padded, sign(conv.weight), dilation=2))


def test_w1a32_keeps_real_activations():
    lin = BinaryLinear(8, 3, bias=False, weight_quantizer="bc", input_quantizer=None, scaling="none")
    x = torch.randn(5, 8)
    torch.testing.assert_close(lin(x), x @ sign(lin.weight).t(), rtol=0, atol=1e-6)


def test_from_float_and_to_float_are_symmetric():
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, dilation=1, groups=1, bias=True)
    b = BinaryConv2d.from_float(conv, weight_quantizer="biper", scaling="learnable", alpha_init="mean_abs")
    assert (b.stride, b.padding, b.kernel_size) == (conv.stride, conv.padding, conv.kernel_size)
    torch.testing.assert_close(b.alpha, conv.weight.abs().mean(dim=(1, 2, 3)))
    back = b.to_float()
    assert type(back) is nn.Conv2d
    assert torch.equal(back.weight, conv.weight) and torch.equal(back.bias, conv.bias)
    lin = nn.Linear(6, 2, bias=False)
    bl = BinaryLinear.from_float(lin, input_quantizer=None)
    assert torch.equal(bl.to_float().weight, lin.weight) and bl.bias is None
    assert set(b.state_dict()) >= {"weight", "bias", "alpha"}


def test_gradients_reach_latent_weights_alpha_and_inputs():
    conv = BinaryConv2d(3, 4, 3, padding=1, input_quantizer="recu_sign")
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    conv(x).square().sum().backward()
    for t in (conv.weight, conv.alpha, conv.bias, x):
        assert t.grad is not None and t.grad.abs().sum() > 0


@pytest.mark.parametrize("layer_type", ["conv", "linear"])
def test_training_folds_scale_into_weights_like_scaling_the_output(layer_type):
    # reference: the unfused formula op(Qa(x), Qw(w)) * alpha + bias through plain autograd
    torch.manual_seed(4)
    if layer_type == "conv":
        layer = BinaryConv2d(6, 5, 3, padding=1, bias=True, input_quantizer="approx_sign")
        x = torch.randn(3, 6, 7, 7)
        op = lambda a, w: F.conv2d(a, w, padding=1)  # noqa: E731
        shape = (1, -1, 1, 1)
    else:
        layer = BinaryLinear(6, 5, bias=True, input_quantizer="approx_sign")
        x = torch.randn(3, 6)
        op = F.linear
        shape = (1, -1)
    ref = {n: p.detach().clone().requires_grad_(True) for n, p in layer.named_parameters()}
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    g = torch.randn_like(layer(x))
    layer(xa).backward(g)
    a = torch.where(xb.abs() <= 1, 2 * xb - xb * xb.abs(), torch.sign(xb))  # ApproxSign primitive
    s = torch.sin(20.0 * ref["weight"])
    wq = s + (sign(s) - s).detach()  # sign(sin(w0 w)) forward, d sin(w0 w) backward
    y = op(sign(xb) + (a - a.detach()), wq) * ref["alpha"].view(shape) + ref["bias"].view(shape)
    y.backward(g)
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5)
    for name, param in layer.named_parameters():
        torch.testing.assert_close(param.grad, ref[name].grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    layer.eval()  # eval scales the output: exactly integer sums x alpha + bias
    with torch.no_grad():
        exact = op(sign(x), sign(torch.sin(20.0 * layer.weight))) * layer.alpha.view(shape) + layer.bias.view(shape)
        assert torch.equal(layer(x), exact)


def test_latent_clipping_and_regulariser_hooks():
    model = nn.Sequential(BinaryLinear(4, 4, weight_quantizer="bnn"), BinaryLinear(4, 4, weight_quantizer="biper"))
    with torch.no_grad():
        model[0].weight.mul_(100)
        model[1].weight.mul_(100)
    clip_latent_weights_(model)
    assert model[0].weight.abs().max() <= 1.0
    assert model[1].weight.abs().max() > 1.0  # BiPer does not clip
    expected = torch.sin(20.0 * model[1].weight).pow(2).mean()
    torch.testing.assert_close(regularization(model), expected)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"scaling": "mean"}, "scaling must be one of"),
        ({"alpha_init": "zeros"}, "alpha_init must be one of"),
        ({"weight_quantizer": "ste_sign"}, "weight_quantizer 'ste_sign' has kind 'activation'; weight_quantizer needs kind 'weight'"),
        ({"input_quantizer": "bc"}, "input_quantizer 'bc' has kind 'weight'; input_quantizer needs kind 'activation'"),
        ({"weight_quantizer": "biper", "weight_params": {"omega0": -1}}, "omega0 must be > 0"),
        ({"input_quantizer": None, "input_params": {"clip": 1.0}}, r"input_params \['clip'\] given but input_quantizer is None"),
    ],
)
def test_bad_layer_arguments(kwargs, message):
    with pytest.raises(BiperError, match=message):
        BinaryConv2d(3, 4, 3, **kwargs)


def test_quantizer_instance_can_be_passed():
    q = get_quantizer("bnn+", beta=2.0)
    conv = BinaryConv2d(3, 4, 3, weight_quantizer=q)
    assert conv.weight_quantizer is q and conv.binary_config()["weight_params"] == {"beta": 2.0}
