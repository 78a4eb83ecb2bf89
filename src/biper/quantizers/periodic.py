"""Periodic surrogates for BiPer: other forward/backward pairs with the square wave's period.

With ``x = omega0 w`` and the deployed square wave ``S(x) = sign(sin x)``, each pair keeps BiPer's
deployment (``binary(w) = sign(sin(omega0 w))``) and its regulariser (mean sin^2(omega0 w)) and
changes what training computes with:

==============  ===============================================  ==========================================
name            F(w) (training forward)                          B'(w) (backward multiplier)
==============  ===============================================  ==========================================
biper_tanh      tanh(beta sin x) / tanh(beta)                    beta omega0 cos x (1 - tanh^2(beta sin x))
                                                                 / tanh(beta)
biper_fourier   lambda_K sum_k c_k sin((2k-1) x) / (2k-1)        lambda_K omega0 sum_k c_k cos((2k-1) x)
biper_triangle  S(x) [stage square] | T(x) [stage triangle]      (2 omega0 / pi) sign(cos x)
==============  ===============================================  ==========================================

``biper`` itself stays the sine / square-wave pair. Every parameter (omega0, beta, K) takes a
`Schedule`, so one stage can anneal from the sine (beta -> 0, K = 1) to the square wave
(beta -> inf, K -> inf).

tanh. As beta -> 0, ``tanh(beta s)/tanh(beta) -> s`` (the sine stage, to first order in beta^2);
as beta -> inf it tends to S(x) away from the zero crossings, and all its values lie in [-1, 1].
B' is its derivative (B = F, P = identity: sound by the ProxConnect++ criterion for every beta).

fourier. ``K >= 1`` odd harmonics; ``K`` may be fractional so that a schedule anneals it
continuously: harmonic k enters with weight ``c_k = clamp(K - (k - 1), 0, 1)`` (all integer
K: the plain partial sum). The factor ``lambda_K = (4/pi)^(1 - 1/K)`` is 1 at K = 1 (exactly the
sine stage) and tends to 4/pi, so the forward tends to S(x) away from the crossings (the
Fourier series of S is ``(4/pi) sum sin((2k-1)x)/(2k-1)``). The one exception to values in
[-1, 1]: next to each jump the partial sums overshoot (Gibbs, up to ~1.18 for large K). B' is
the derivative of F (B = F, P = identity).

triangle. ``T(x) = (2/pi) arcsin(sin x)`` has S's period and zero crossings and is piecewise
linear; its derivative never vanishes except at the kinks, unlike cos x at the sine's peaks.
Stage ``square`` (default) is the square wave with the triangle as its backward surrogate (a
periodic straight-through estimator, B = T, P = BiPer's staircase); stage ``triangle`` trains
with T itself (B = F).

``target_qe`` (default 0, off) lets the training engine's epoch-end hook re-choose each layer's
omega0 from its weights every epoch (`biper.analysis.flips`), so that the sine-stage QE at the
optimal scale equals ``target_qe`` for a Laplace fit of the layer; omega0 must then be a number.

Example::

    >>> import torch
    >>> q = get_quantizer("biper_tanh", omega0=20.0, beta=1e-6)
    >>> w = torch.tensor([0.01, 0.2])
    >>> torch.allclose(q(w), torch.sin(20.0 * w), atol=1e-6)
    True
"""

from __future__ import annotations

import math

import torch

from ..errors import BiperError
from ..functional import sign
from .base import get_quantizer, register
from .weight import BiPer

__all__ = [
    "tanh_forward", "tanh_backward",
    "fourier_weights", "fourier_lambda", "fourier_forward", "fourier_backward",
    "triangle_forward", "triangle_backward", "square_forward",
    "BiPerTanh", "BiPerFourier", "BiPerTriangle", "SURROGATES",
]


def tanh_forward(x: torch.Tensor, beta: float) -> torch.Tensor:
    """F = tanh(beta sin x) / tanh(beta), with x = omega0 w."""
    return torch.tanh(beta * torch.sin(x)) / math.tanh(beta)


def tanh_backward(x: torch.Tensor, beta: float, omega0: float) -> torch.Tensor:
    """B' = dF/dw = beta omega0 cos x (1 - tanh^2(beta sin x)) / tanh(beta)."""
    t = torch.tanh(beta * torch.sin(x))
    return (beta * omega0 / math.tanh(beta)) * torch.cos(x) * (1.0 - t * t)


def fourier_weights(K: float) -> list[float]:
    """c_k = clamp(K - (k - 1), 0, 1) for k = 1 .. ceil(K): the weight of harmonic 2k - 1."""
    n = max(1, math.ceil(K - 1e-12))
    return [min(1.0, max(0.0, K - k)) for k in range(n)]


def fourier_lambda(K: float) -> float:
    """lambda_K = (4/pi)^(1 - 1/K): 1 at K = 1, 4/pi as K -> inf."""
    return (4.0 / math.pi) ** (1.0 - 1.0 / K)


def fourier_forward(x: torch.Tensor, K: float) -> torch.Tensor:
    """F = lambda_K sum_k c_k sin((2k-1) x) / (2k-1)."""
    out = torch.zeros_like(x)
    for k, c in enumerate(fourier_weights(K)):
        n = 2 * k + 1
        out = out + (c / n) * torch.sin(n * x)
    return fourier_lambda(K) * out


def fourier_backward(x: torch.Tensor, K: float, omega0: float) -> torch.Tensor:
    """B' = dF/dw = lambda_K omega0 sum_k c_k cos((2k-1) x)."""
    out = torch.zeros_like(x)
    for k, c in enumerate(fourier_weights(K)):
        out = out + c * torch.cos((2 * k + 1) * x)
    return (fourier_lambda(K) * omega0) * out


def triangle_forward(x: torch.Tensor) -> torch.Tensor:
    """T = (2/pi) arcsin(sin x), computed from the phase (exact at the kinks and for large |x|)."""
    u = torch.remainder(x + 0.5 * math.pi, 2.0 * math.pi)  # T = 1 - (2/pi)|u - pi|
    return 1.0 - (2.0 / math.pi) * (u - math.pi).abs()


def triangle_backward(x: torch.Tensor, omega0: float) -> torch.Tensor:
    """B' = dT/dw = (2 omega0 / pi) sign(cos x) (+ at the kinks, like `sign`)."""
    return (2.0 * omega0 / math.pi) * sign(torch.cos(x))


def square_forward(x: torch.Tensor) -> torch.Tensor:
    """S = sign(sin x), the deployed weights."""
    return sign(torch.sin(x))


class _Periodic(BiPer):
    """Shared parts: deployment sign(sin(omega0 w)), the sin^2 regulariser, empirical gamma*."""

    positive = ("omega0",)

    def _check(self, key, value):
        super()._check(key, value)
        if key == "target_qe" and not 0.0 <= value < 0.1:
            raise BiperError(f"{self.name} target_qe must be in [0, 0.1) (0: off; QE* peaks near 0.103), got {value!r}")
        if key == "target_qe" and value > 0 and "omega0" in getattr(self, "schedules", {}):
            raise BiperError(f"{self.name}: target_qe re-chooses omega0 each epoch; give omega0 as a number")

    def theory_spec(self) -> tuple[str, dict]:
        """(surrogate name, parameter) of the current forward for `biper.theory.surrogates`."""
        raise NotImplementedError

    def optimal_scale(self, w):
        """gamma minimising mean((F(w) - gamma S(w))^2) on these weights: mean(F(w) S(w))."""
        w = w.detach()
        x = self.omega0 * w
        return (self.forward_fn(w) * square_forward(x)).mean()


class _SmoothPeriodic(_Periodic):
    """F is a smooth periodic surrogate of one shape parameter and B' = F' (P = identity):
    subclasses name the parameter, the theory key and the two pure functions."""

    param: str
    theory: str
    choices: dict = {}
    _forward = _backward = None  # staticmethods: F(x, param) and F'(x, param, omega0), x = omega0 w

    def theory_spec(self):
        return self.theory, {self.param: float(getattr(self, self.param))}

    def forward_fn(self, x):
        return self._forward(self.omega0 * x, getattr(self, self.param))

    def backward_fn(self, x):
        return self._backward(self.omega0 * x, getattr(self, self.param), self.omega0)

    def backward_primitive(self, x):
        return self.forward_fn(x)


@register
class BiPerTanh(_SmoothPeriodic):
    """BiPer with the tanh surrogate: F = tanh(beta sin(omega0 w))/tanh(beta), B' = F'."""

    name = "biper_tanh"
    forward_formula = "tanh(beta sin(omega0 w)) / tanh(beta)"
    backward_formula = "beta omega0 cos(omega0 w) (1 - tanh^2(beta sin(omega0 w))) / tanh(beta)"
    reference = "periodic counterpart of BNN++ (Lu et al. 2023) on BiPer (Vargas et al. 2024)"
    defaults = {"omega0": 20.0, "beta": 5.0, "target_qe": 0.0}
    param, theory, positive = "beta", "tanh", ("omega0", "beta")
    _forward, _backward = staticmethod(tanh_forward), staticmethod(tanh_backward)


@register
class BiPerFourier(_SmoothPeriodic):
    """BiPer with a Fourier partial sum of the square wave over K odd harmonics, B' = F'."""

    param, theory = "K", "fourier"  # K: number of odd harmonics, fractional K blends the last one in
    defaults = {"omega0": 20.0, "K": 5.0, "target_qe": 0.0}
    name = "biper_fourier"
    forward_formula = "(4/pi)^(1-1/K) sum_{k<=K} c_k sin((2k-1) omega0 w) / (2k-1), c_k = clamp(K-k+1, 0, 1)"
    backward_formula = "(4/pi)^(1-1/K) omega0 sum_{k<=K} c_k cos((2k-1) omega0 w)"
    reference = "Fourier series of BiPer's square wave (Vargas et al. 2024)"
    _forward, _backward = staticmethod(fourier_forward), staticmethod(fourier_backward)

    def _check(self, key, value):
        super()._check(key, value)
        if key == "K" and not 1.0 <= value <= 4096:
            raise BiperError(f"{self.name} K must be in [1, 4096], got {value!r}")


@register
class BiPerTriangle(_Periodic):
    """BiPer with the triangle wave T = (2/pi) arcsin(sin(omega0 w)) as backward (and optionally
    forward) surrogate: stage square F = S, stage triangle F = T; B' = T' always."""

    name = "biper_triangle"
    forward_formula = "sign(sin(omega0 w)) [stage square] | (2/pi) arcsin(sin(omega0 w)) [stage triangle]"
    backward_formula = "(2 omega0 / pi) sign(cos(omega0 w))"
    reference = "periodic straight-through estimator for BiPer (Vargas et al. 2024)"
    defaults = {"omega0": 20.0, "stage": "square", "target_qe": 0.0}
    choices = {"stage": ("triangle", "square")}

    def theory_spec(self):
        return ("triangle" if self.stage == "triangle" else "square"), {}

    def forward_fn(self, x):
        x = self.omega0 * x
        return triangle_forward(x) if self.stage == "triangle" else square_forward(x)

    def backward_fn(self, x):
        return triangle_backward(self.omega0 * x, self.omega0)

    def backward_primitive(self, x):
        return triangle_forward(self.omega0 * x)


SURROGATES = {"sine": "biper", "tanh": "biper_tanh", "fourier": "biper_fourier", "triangle": "biper_triangle",
              "square": "biper_triangle"}


def surrogate_quantizer(spec: str, omega0: float):
    """A quantizer from ``NAME[:param]`` (sine, tanh:beta, fourier:K, triangle, square)."""
    name, _, param = spec.partition(":")
    if name not in SURROGATES:
        raise BiperError(f"unknown surrogate {name!r}; valid: {', '.join(SURROGATES)}")
    key = {"tanh": "beta", "fourier": "K"}.get(name)
    if param and key is None:
        raise BiperError(f"surrogate {name!r} takes no parameter, got {spec!r}")
    params = {"omega0": omega0}
    if name == "sine":
        params["stage"] = "sine"
    elif name == "triangle":
        params["stage"] = "triangle"
    if key and param:
        try:
            params[key] = float(param)
        except ValueError:
            raise BiperError(f"surrogate {name} parameter must be a number, got {param!r}") from None
    return get_quantizer(SURROGATES[name], **params)
