"""Weight quantizer pairs (F, B') of the ProxConnect++ family and BiPer.

=======  =================================  ==============================  ===================
name     F(w) (training forward)            B'(w) (backward multiplier)     deployment
=======  =================================  ==============================  ===================
bc       sign(w)                            1                               sign(w)
bnn      sign(w)                            1{|w| <= clip}, w clipped       sign(w)
bnn+     sign(w)                            SS_beta'(w)                     sign(w)
bnn++    SS_mu(w), mu annealed              SS_mu'(w)                       sign(w)
pc       P_mu(w) = clamp(mu w, -1, 1)       1                               sign(w)
rpc      sign(w)                            P_mu'(w) = mu 1{|mu w| <= 1}    sign(w)
biper    sin(w0 w) | sign(sin(w0 w))        w0 cos(w0 w)                    sign(sin(w0 w))
=======  =================================  ==============================  ===================

References: Courbariaux et al. 2015 (BinaryConnect); Hubara et al. 2016 (BNN); Darabi et al.
2018 (BNN+, SignSwish); Dockhorn et al. 2021 (ProxConnect); Lu et al. 2023 (ProxConnect++,
BNN++, reverse PC); Vargas et al. 2024 (BiPer).

ProxConnect's soft quantizer ``P_mu`` is a reading: any nondecreasing map tending to sign works;
biper uses the piecewise-linear ``clamp(mu w, -1, 1)``, which reaches sign as mu -> inf.
"""

from __future__ import annotations

import torch

from ..theory import gamma_opt
from ..functional import sign, signswish, signswish_grad
from .base import Quantizer, register

__all__ = [
    "ste_grad",
    "clipped_grad",
    "soft_linear",
    "soft_linear_grad",
    "BinaryConnect",
    "BNN",
    "BNNPlus",
    "BNNPlusPlus",
    "ProxConnect",
    "ReverseProxConnect",
    "BiPer",
]


def ste_grad(x: torch.Tensor) -> torch.Tensor:
    """Identity straight-through estimator: B'(x) = 1."""
    return torch.ones_like(x)


def clipped_grad(x: torch.Tensor, clip: float) -> torch.Tensor:
    """Clipped straight-through estimator: B'(x) = 1{|x| <= clip}."""
    return (x.abs() <= clip).to(x.dtype)


def soft_linear(x: torch.Tensor, mu: float) -> torch.Tensor:
    """ProxConnect's monotone soft quantizer P_mu(x) = clamp(mu x, -1, 1)."""
    return torch.clamp(mu * x, -1.0, 1.0)


def soft_linear_grad(x: torch.Tensor, mu: float) -> torch.Tensor:
    """P_mu'(x) = mu 1{|mu x| <= 1}."""
    return mu * ((mu * x).abs() <= 1.0).to(x.dtype)


@register
class BinaryConnect(Quantizer):
    """BinaryConnect: F(w) = sign(w), B'(w) = 1 (Courbariaux et al., NeurIPS 2015)."""

    name = "bc"
    forward_formula = "sign(w)"
    backward_formula = "1"
    reference = "Courbariaux et al., BinaryConnect, NeurIPS 2015"

    def forward_fn(self, x):
        return sign(x)

    def backward_fn(self, x):
        return ste_grad(x)

    def backward_primitive(self, x):
        return x

@register
class BNN(Quantizer):
    """BNN: F(w) = sign(w), B'(w) = 1{|w| <= clip}; latent w clipped to [-clip, clip] after
    each optimizer step (Hubara et al., NeurIPS 2016)."""

    name = "bnn"
    forward_formula = "sign(w)"
    backward_formula = "1{|w| <= clip}"
    reference = "Hubara et al., Binarized Neural Networks, NeurIPS 2016"
    defaults = {"clip": 1.0}
    positive = ("clip",)

    @property
    def latent_clip(self) -> float:
        return self.clip

    def forward_fn(self, x):
        return sign(x)

    def backward_fn(self, x):
        return clipped_grad(x, self.clip)

    def backward_primitive(self, x):
        return torch.clamp(x, -self.clip, self.clip)

@register
class BNNPlus(Quantizer):
    """BNN+: F(w) = sign(w), B'(w) = SS_beta'(w) = beta(2 - beta w tanh(beta w/2))/(1 + cosh(beta w))
    (Darabi et al., 2018)."""

    name = "bnn+"
    forward_formula = "sign(w)"
    backward_formula = "beta (2 - beta w tanh(beta w / 2)) / (1 + cosh(beta w))"
    reference = "Darabi et al., BNN+, arXiv 1812.11800"
    defaults = {"beta": 5.0}
    positive = ("beta",)

    def forward_fn(self, x):
        return sign(x)

    def backward_fn(self, x):
        return signswish_grad(x, self.beta)

    def backward_primitive(self, x):
        return signswish(x, self.beta)

@register
class BNNPlusPlus(Quantizer):
    """BNN++: F(w) = SS_mu(w), B'(w) = SS_mu'(w), mu annealed upwards so SS_mu -> sign; the
    deployed model uses sign(w) (Lu et al., ProxConnect++, NeurIPS 2023)."""

    name = "bnn++"
    forward_formula = "2 sigmoid(mu w) [1 + mu w (1 - sigmoid(mu w))] - 1"
    backward_formula = "mu (2 - mu w tanh(mu w / 2)) / (1 + cosh(mu w))"
    reference = "Lu et al., ProxConnect++, NeurIPS 2023"
    defaults = {"mu": {"schedule": "exp", "start": 5.0, "end": 250.0}}
    positive = ("mu",)

    def forward_fn(self, x):
        return signswish(x, self.mu)

    def backward_fn(self, x):
        return signswish_grad(x, self.mu)

    def backward_primitive(self, x):
        return signswish(x, self.mu)

@register
class ProxConnect(Quantizer):
    """ProxConnect: F(w) = P_mu(w) = clamp(mu w, -1, 1) (monotone, a proximal map), B'(w) = 1;
    mu annealed upwards so P_mu -> sign (Dockhorn et al., NeurIPS 2021)."""

    name = "pc"
    forward_formula = "clamp(mu w, -1, 1)"
    backward_formula = "1"
    reference = "Dockhorn et al., Demystifying and Generalizing BinaryConnect, NeurIPS 2021"
    defaults = {"mu": {"schedule": "exp", "start": 1.0, "end": 1000.0}}
    positive = ("mu",)

    def forward_fn(self, x):
        return soft_linear(x, self.mu)

    def backward_fn(self, x):
        return ste_grad(x)

    def backward_primitive(self, x):
        return x

@register
class ReverseProxConnect(Quantizer):
    """Reverse ProxConnect: F(w) = sign(w), B'(w) = P_mu'(w) = mu 1{|mu w| <= 1} (the roles of
    PC's forward and backward swapped; Lu et al., NeurIPS 2023 — a reading)."""

    name = "rpc"
    forward_formula = "sign(w)"
    backward_formula = "mu 1{|mu w| <= 1}"
    reference = "Lu et al., ProxConnect++, NeurIPS 2023"
    defaults = {"mu": 1.0}
    positive = ("mu",)

    def forward_fn(self, x):
        return sign(x)

    def backward_fn(self, x):
        return soft_linear_grad(x, self.mu)

    def backward_primitive(self, x):
        return soft_linear(x, self.mu)

@register
class BiPer(Quantizer):
    """BiPer: a binary periodic function (Vargas et al., CVPR 2024).

    stage ``square`` (default): F(w) = sign(sin(omega0 w)); stage ``sine``: F(w) = sin(omega0 w).
    Both: B'(w) = omega0 cos(omega0 w), the derivative of the sine surrogate with the same
    period (the released code's identity STE on sign applied to sin(omega0 w)).
    Regulariser (released CIFAR code): mean(sin^2(omega0 w)).
    """

    name = "biper"
    forward_formula = "sign(sin(omega0 w)) [stage square] | sin(omega0 w) [stage sine]"
    backward_formula = "omega0 cos(omega0 w)"
    reference = "Vargas et al., BiPer: Binary Neural Networks using a Periodic Function, CVPR 2024"
    defaults = {"omega0": 20.0, "stage": "square"}
    choices = {"stage": ("sine", "square")}
    positive = ("omega0",)

    def forward_fn(self, x):
        s = torch.sin(self.omega0 * x)
        return s if self.stage == "sine" else sign(s)

    def backward_fn(self, x):
        return self.omega0 * torch.cos(self.omega0 * x)

    def binary(self, x):
        return sign(torch.sin(self.omega0 * x))

    def optimal_scale(self, w):
        """Analytic gamma* = E|sin(omega0 w)| for Laplace weights, b = mean|w - median(w)|."""
        w = w.detach().double()
        b = (w - w.median()).abs().mean().item()
        return torch.tensor(float(gamma_opt(self.omega0 * b)), dtype=torch.float32, device=w.device)

    def regularizer(self, w):
        return torch.sin(self.omega0 * w).pow(2).mean()

    def backward_primitive(self, x):
        return torch.sin(self.omega0 * x)
