"""Activation quantizers: F = sign in the forward pass, a surrogate B' in the backward pass.

=============  ==========================================  ===================================
name           forward                                     B'(x)
=============  ==========================================  ===================================
ste_sign       sign(x)                                     1{|x| <= clip}
approx_sign    sign(x)                                     max(0, 2 - 2|x|)
swish_sign     sign(x)                                     SS_beta'(x)
recu_sign      sign(x / sqrt(var(x) + eps)) (train only)   max(0, 2 - 2|x_hat|), chained
rsign          sign(x - t_c), t learnable per channel      max(0, 2 - 2|x - t_c|)
=============  ==========================================  ===================================

``recu_sign`` follows the released BiPer/ReCU code: during training each sample is divided by
the square root of its (unbiased) variance over all non-batch dimensions plus eps, without mean
subtraction; at evaluation the input is used as is (the sign is unchanged by a positive scale,
so only the gradient differs). ``rsign`` is ReActNet's RSign (Liu et al., ECCV 2020); its
channel dimension is 1 for convolutions and -1 for linear layers.

References: Hubara et al. 2016 (clipped STE); Liu et al. 2018 (Bi-Real Net, ApproxSign);
Darabi et al. 2018 (SwishSign); Xu et al. 2021 (ReCU); Liu et al. 2020 (ReActNet).
"""

from __future__ import annotations

import torch
from torch import nn

from ..functional import sign, signswish_grad
from . import fused
from .base import PairFunction, Quantizer, register
from .weight import clipped_grad

__all__ = ["approx_sign_grad", "NormalisedSign", "SteSign", "ApproxSign", "SwishSign", "RecuSign", "RSign"]


def approx_sign_grad(x: torch.Tensor) -> torch.Tensor:
    """Bi-Real Net's ApproxSign derivative: max(0, 2 - 2|x|)."""
    return torch.rsub(x.abs(), 2.0, alpha=2.0).clamp_(min=0.0)


class NormalisedSign(torch.autograd.Function):
    """``recu_sign`` in training, forward and backward written out (about half the memory passes
    of autograd through the normalisation). Per sample, over all non-batch dims (n values)::

        r = (var(x) + eps)^(-1/2)   (unbiased var)       forward:  sign(x)  (= sign(x r))
        gs = g * max(0, 2 - 2|x r|)                      backward: gs r - r^3 A (x - mean) / (n - 1)

    with ``A = sum(gs * x)``, the chain rule through r(var(x)). float32 CPU tensors take the
    one-pass kernels of `biper.quantizers.fused`; the formulas below are the reference.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        dims = tuple(range(1, x.dim()))
        ctx.dims, ctx.n = dims, x[0].numel()
        fast = fused.recu_forward(x, eps)
        if fast is not None:
            out, r, mean = fast
            ctx.save_for_backward(x, r, mean)
            return out
        n = ctx.n
        acc = torch.promote_types(x.dtype, torch.float32)
        total = torch.sum(x, dim=dims, keepdim=True, dtype=acc)                  # (B, 1, ...)
        squares = torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=acc).square()
        var = (squares - total.square() / n).clamp_min(0.0) / max(n - 1, 1)
        ctx.save_for_backward(x, torch.rsqrt(var + eps), total / n)
        return sign(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, r, mean = ctx.saved_tensors                                             # r, mean: (B, 1, ...)
        fast = fused.recu_backward(x, g, r, mean)
        if fast is not None:
            return fast, None
        rx = r.to(x.dtype)
        gs = approx_sign_grad(x * rx) * g                                          # dL/dx_hat
        a = torch.sum(gs * x, dim=ctx.dims, keepdim=True, dtype=r.dtype)
        k = r.pow(3) * a / max(ctx.n - 1, 1)                                       # (B, 1, ...)
        grad = gs * rx + (k * mean).to(x.dtype)  # out of place: differentiable (create_graph)
        return torch.addcmul(grad, x, k.to(x.dtype), value=-1.0), None


class _Sign(Quantizer):
    kind = "activation"
    forward_formula = "sign(x)"

    def forward_fn(self, x):
        out = fused.sign(x)
        return sign(x) if out is None else out


@register
class SteSign(_Sign):
    """Sign with the clipped straight-through estimator B'(x) = 1{|x| <= clip} (Hubara et al. 2016)."""

    name = "ste_sign"
    backward_formula = "1{|x| <= clip}"
    reference = "Hubara et al., Binarized Neural Networks, NeurIPS 2016"
    defaults = {"clip": 1.0}
    positive = ("clip",)

    def backward_fn(self, x):
        return clipped_grad(x, self.clip)

    def input_grad(self, x, grad):
        out = fused.clip_backward(x, grad, self.clip)
        return super().input_grad(x, grad) if out is None else out


@register
class ApproxSign(_Sign):
    """Sign with Bi-Real Net's piecewise-polynomial surrogate B'(x) = max(0, 2 - 2|x|)."""

    name = "approx_sign"
    backward_formula = "max(0, 2 - 2|x|)"
    reference = "Liu et al., Bi-Real Net, ECCV 2018"

    def backward_fn(self, x):
        return approx_sign_grad(x)

    def input_grad(self, x, grad):
        out = fused.approx_sign_backward(x, grad)
        return super().input_grad(x, grad) if out is None else out


@register
class SwishSign(_Sign):
    """Sign with the SignSwish surrogate B'(x) = SS_beta'(x) (Darabi et al. 2018; Larq's swish_sign)."""

    name = "swish_sign"
    backward_formula = "beta (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x))"
    reference = "Darabi et al., BNN+, arXiv 1812.11800"
    defaults = {"beta": 5.0}
    positive = ("beta",)

    def backward_fn(self, x):
        return signswish_grad(x, self.beta)


@register
class RecuSign(ApproxSign):
    """Per-sample std normalisation (training only) then sign with the ApproxSign backward, as in
    the released ReCU / BiPer code: x_hat = x / sqrt(var(x over C,H,W) + eps)."""

    name = "recu_sign"
    forward_formula = "sign(x / sqrt(var_chw(x) + eps)) [training]; sign(x) [eval]"
    backward_formula = "max(0, 2 - 2|x_hat|) through the normalisation"
    reference = "Xu et al., ReCU, ICCV 2021; Vargas et al., BiPer, CVPR 2024"
    defaults = {"eps": 1e-5}
    positive = ("eps",)

    def forward(self, x):
        if not self.training or x.dim() < 2:
            return PairFunction.apply(x, self)
        return NormalisedSign.apply(x, self.eps)


@register
class RSign(ApproxSign):
    """ReActNet's RSign: sign(x - t_c) with a learnable per-channel threshold t (init 0) and the
    ApproxSign backward at x - t_c (Liu et al., ECCV 2020)."""

    name = "rsign"
    forward_formula = "sign(x - t_c)"
    backward_formula = "max(0, 2 - 2|x - t_c|)"
    reference = "Liu et al., ReActNet, ECCV 2020"
    defaults = {"channels": 1, "dim": 1}
    positive = ("channels",)

    def __init__(self, **params):
        super().__init__(**params)
        self.channels, self.dim = int(self.channels), int(self.dim)
        self.threshold = nn.Parameter(torch.zeros(self.channels))

    def shifted(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[self.dim] != self.channels:
            raise ValueError(
                f"rsign expects {self.channels} channels in dim {self.dim}, got shape {tuple(x.shape)}"
            )
        shape = [1] * x.dim()
        shape[self.dim] = self.channels
        return x - self.threshold.view(shape).to(x.dtype)

    def forward(self, x):
        return PairFunction.apply(self.shifted(x), self)

    def binary(self, x):
        return sign(self.shifted(x))
