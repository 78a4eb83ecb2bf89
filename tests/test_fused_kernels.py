"""The one-pass C kernels of the activation quantizers against PyTorch formulas written here,
against autograd through the ReCU normalisation, and the fallback when they do not apply."""

import logging

import pytest
import torch

from biper.functional import sign
from biper.native import tune_allocator
from biper.nn import BinaryConv2d
from biper.quantizers import fused, get_quantizer
from biper.quantizers.activation import NormalisedSign

needs_native = pytest.mark.skipif(fused.backend() != "native", reason="fused kernels unavailable")
LAYOUTS = [pytest.param(False, id="nchw"), pytest.param(True, id="channels_last")]


def _x(shape, seed, channels_last=False, scale=1.5, shift=0.2):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale + shift
    x.view(-1)[:7] = torch.tensor([0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 1e-30])  # ties and kinks
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.fixture
def reference(monkeypatch):
    """Force the PyTorch formulas (as if the kernels were unavailable)."""
    monkeypatch.setitem(fused._LIB.state, "lib", None)
    monkeypatch.setitem(fused._LIB.state, "tried", True)
    monkeypatch.setitem(fused._LIB.state, "noticed", True)


@needs_native
@pytest.mark.parametrize("channels_last", LAYOUTS)
def test_sign_and_approx_backward_match_formulas(channels_last):
    x = _x((5, 6, 7, 9), 0, channels_last)
    g = _x((5, 6, 7, 9), 1, channels_last)
    out = fused.sign(x)
    assert torch.equal(out, sign(x)) and out.stride() == x.stride()
    assert torch.equal(fused.sign(torch.tensor([-0.0, 0.0, -1e-38])), torch.tensor([1.0, 1.0, -1.0]))
    torch.testing.assert_close(fused.clip_backward(x, g, 0.5), torch.where(x.abs() <= 0.5, g, 0.0), rtol=0, atol=0)
    expected = g * torch.clamp(2 - 2 * x.abs(), min=0)
    torch.testing.assert_close(fused.approx_sign_backward(x, g), expected, rtol=0, atol=0)
    # a gradient with other strides is read in the input's layout
    g_other = g.contiguous(memory_format=torch.contiguous_format if channels_last else torch.channels_last)
    torch.testing.assert_close(fused.approx_sign_backward(x, g_other), expected, rtol=0, atol=0)


@needs_native
@pytest.mark.parametrize("shape,channels_last", [((4, 3, 5, 5), False), ((4, 3, 5, 5), True), ((3, 16, 32, 32), False),
                                                 ((3, 16, 32, 32), True), ((2, 5000), False)], ids=str)
def test_recu_forward_statistics(channels_last, shape):
    x = _x(shape, 2, channels_last, scale=3.0, shift=5.0)  # large mean: cancellation-prone
    out, r, mean = fused.recu_forward(x, 1e-5)
    x64 = x.double()
    dims = tuple(range(1, x.dim()))
    var = x64.var(dim=dims, keepdim=True, unbiased=True)
    torch.testing.assert_close(r.double(), torch.rsqrt(var + 1e-5), rtol=2e-6, atol=0)
    torch.testing.assert_close(mean.double(), x64.mean(dim=dims, keepdim=True), rtol=1e-6, atol=1e-7)
    assert torch.equal(out, sign(x)) and r.shape == mean.shape == (shape[0],) + (1,) * (len(shape) - 1)


@needs_native
@pytest.mark.parametrize("channels_last", LAYOUTS)
def test_recu_backward_matches_autograd_through_normalisation(channels_last):
    # reference: autograd in float64 through x / sqrt(var + eps) and the ApproxSign primitive
    x = _x((4, 8, 6, 6), 3, channels_last)
    g = _x((4, 8, 6, 6), 4, channels_last)
    xr = x.double().requires_grad_(True)
    t = xr / torch.sqrt(xr.var(dim=(1, 2, 3), keepdim=True, unbiased=True) + 1e-5)
    s = torch.where(t.abs() <= 1, 2 * t - t * t.abs(), torch.sign(t))
    (s * g.double()).sum().backward()
    xf = x.clone().requires_grad_(True)
    y = NormalisedSign.apply(xf, 1e-5)
    y.backward(g)
    assert torch.equal(y, sign(x))
    torch.testing.assert_close(xf.grad.double(), xr.grad, rtol=1e-4, atol=1e-5)


@needs_native
@pytest.mark.parametrize("name", ["recu_sign", "approx_sign", "ste_sign", "swish_sign"])
def test_quantizer_native_equals_reference_path(name, monkeypatch):
    q = get_quantizer(name).train()
    x = _x((3, 4, 10, 10), 5, channels_last=True).requires_grad_(True)
    g = _x((3, 4, 10, 10), 6)
    y = q(x)
    y.backward(g)
    native_y, native_grad = y.detach(), x.grad.clone()
    monkeypatch.setitem(fused._LIB.state, "lib", None)
    x.grad = None
    y = q(x)
    y.backward(g)
    assert torch.equal(native_y, y)
    torch.testing.assert_close(native_grad, x.grad, rtol=1e-5, atol=1e-6)


@needs_native
@pytest.mark.parametrize("name", ["recu_sign", "approx_sign"])
def test_double_backward_takes_the_differentiable_path(name, monkeypatch):
    # create_graph=True needs a graph through the backward: same second derivative as the formulas
    q = get_quantizer(name).train()
    x0 = _x((2, 3, 6, 6), 7, scale=0.5)

    def second_derivative():
        x = x0.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad((q(x) * x0).sum(), x, create_graph=True)
        (ggx,) = torch.autograd.grad(gx.square().sum(), x)
        return gx.detach(), ggx

    native = second_derivative()
    monkeypatch.setitem(fused._LIB.state, "lib", None)
    reference = second_derivative()
    assert native[1].abs().sum() > 0
    for a, b in zip(native, reference):  # r from the kernel's double sums: rounding-level differences
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_kernels_decline_what_they_cannot_do():
    x = torch.randn(2, 3, 4, 4)
    assert fused.sign(x.double()) is None
    assert fused.sign(x[:, :, ::2]) is None                          # not dense
    assert fused.recu_forward(torch.randn(5), 1e-5) is None          # no batch dimension
    assert fused.approx_sign_backward(x, x.double()) is None          # gradient dtype differs
    assert fused.sign(torch.empty(0)) is None


def test_reference_path_gives_same_layer_training(reference):
    torch.manual_seed(0)
    conv = BinaryConv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    conv(x).sum().backward()
    assert fused.backend() == "reference" and x.grad.abs().sum() > 0


def test_disabled_kernels_log_one_line(monkeypatch, caplog):
    monkeypatch.setenv("BIPER_DISABLE_KERNELS", "1")
    fused._LIB.reset()
    caplog.set_level(logging.WARNING, logger="biper.quantizers")
    try:
        assert fused.backend() == "reference" and fused.sign(torch.ones(3)) is None
        fused.backend()
        lines = [r.getMessage() for r in caplog.records if "fused training kernels" in r.getMessage()]
        assert len(lines) == 1 and "BIPER_DISABLE_KERNELS" in lines[0]
    finally:
        monkeypatch.delenv("BIPER_DISABLE_KERNELS")
        fused._LIB.reset()


def test_tune_allocator_is_idempotent_and_can_be_disabled(monkeypatch):
    first = tune_allocator()
    assert tune_allocator() == first and isinstance(first, bool)
    from biper import native
    monkeypatch.setitem(native._allocator, "tuned", None)
    monkeypatch.setenv("BIPER_MALLOC_TUNING", "0")
    assert tune_allocator() is False
