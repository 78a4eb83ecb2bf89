"""Measured quantization error of any weight quantizer pair, and its Monte Carlo estimate.

The quantization error (QE) of a pair is the mean squared gap between a *target* (what the
binary weight stands in for) and the scaled deployed binary weight ``gamma * binary(w)``::

    QE(gamma) = mean_i (T(w_i) - gamma * binary(w_i))^2

The target ``T`` depends on the pair (``qe_target``):

- BiPer: ``T(w) = sin(omega0 w)``, the stage-1 weight, in either stage; ``binary(w) =
  sign(sin(omega0 w))``. This is the QE of BiPer, Sec. 3, whose Laplace closed form is in
  `biper.theory`.
- pairs whose training forward ``F`` is soft (``pc``, ``bnn++``): ``T(w) = F(w)`` at the
  current parameter values (mu), i.e. the error made when deploying ``sign`` instead of ``F``.
- pairs whose training forward is already ``sign`` (``bc``, ``bnn``, ``bnn+``, ``rpc``):
  ``T(w) = w``, the classic weight-binarization error ``E[(w - gamma sign(w))^2]``.

``auto`` decides between the last two by probing ``F`` on tiny values (``1e-7 .. 0.3``): a
forward that is exactly +-1 there is a sign forward. ``gamma`` is a number, ``"emp"`` (the
least-squares optimum on the sample, ``mean(T binary)``, since ``binary^2 = 1``) or ``"opt"``
(BiPer: the analytic ``gamma*(omega0 b)`` with ``b`` = `laplace_b` of the sample, i.e. what the
``gamma_opt`` scaling of a layer uses; other pairs: same as ``"emp"``).

The Monte Carlo estimator `qe_monte_carlo` draws ``n`` latent weights from a Laplace(0, b),
Gaussian(0, sigma) or Uniform(-a, a) law and returns the sample mean with its standard error
``std(errors) / sqrt(n)``, the yardstick the tests use against the closed form.

Example::

    >>> import biper
    >>> from biper.analysis import theory
    >>> q = biper.get_quantizer("biper", omega0=20.0)
    >>> mc = qe_monte_carlo(q, "laplace", scale=0.05, n=200_000, gamma=1.0, seed=0)
    >>> abs(mc.qe - float(theory.qe(20.0 * 0.05, 1.0))) < 5 * mc.stderr
    True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..errors import BiperError
from ..quantizers import Quantizer, get_quantizer
from ..theory import gamma_opt

__all__ = [
    "DISTRIBUTIONS",
    "TARGETS",
    "laplace_b",
    "sample_weights",
    "qe_target",
    "resolve_gamma",
    "measure_qe",
    "qe_monte_carlo",
    "MonteCarloQE",
]

DISTRIBUTIONS = ("laplace", "gaussian", "uniform")
TARGETS = ("auto", "sine", "forward", "latent")
_PROBE = (1e-7, 1e-4, 0.3)


def laplace_b(w: torch.Tensor, loc: float | None = None) -> float:
    """Maximum-likelihood Laplace scale of a tensor: ``b = mean|w - median(w)|``.

    With ``loc`` given (e.g. 0 for a zero-centred layer) the location is not estimated and
    ``b = mean|w - loc|``.
    """
    w = torch.as_tensor(w).detach().double().flatten()
    if w.numel() == 0:
        raise BiperError("laplace_b needs a non-empty tensor")
    centre = w.median() if loc is None else torch.tensor(float(loc), dtype=w.dtype)
    return float((w - centre).abs().mean())


def sample_weights(dist: str, n: int, scale: float, *, seed: int | None = 0,
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` latent weights from ``laplace`` (scale b), ``gaussian`` (std) or ``uniform`` (+-scale)."""
    if dist not in DISTRIBUTIONS:
        raise BiperError(f"dist must be one of {', '.join(DISTRIBUTIONS)}, got {dist!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise BiperError(f"n (number of samples) must be a positive integer, got {n!r}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise BiperError(f"scale must be a finite number > 0, got {scale!r}")
    g = torch.Generator().manual_seed(0 if seed is None else int(seed))
    if dist == "laplace":  # inverse CDF: w = -b sign(u) log(1 - 2|u|), u ~ U(-1/2, 1/2)
        u = torch.rand(n, generator=g, dtype=torch.float64) - 0.5
        w = -scale * torch.sign(u) * torch.log1p(-2.0 * u.abs())
    elif dist == "gaussian":
        w = scale * torch.randn(n, generator=g, dtype=torch.float64)
    else:
        w = scale * (2.0 * torch.rand(n, generator=g, dtype=torch.float64) - 1.0)
    return w.to(dtype)


def _is_biper(q: Quantizer) -> bool:
    return q.name == "biper" and hasattr(q, "omega0")


def _sign_forward(q: Quantizer) -> bool:
    probe = torch.tensor([s * v for v in _PROBE for s in (1.0, -1.0)], dtype=torch.float64)
    with torch.no_grad():
        return bool((q.forward_fn(probe).abs() == 1).all())


def qe_target(q: Quantizer, w: torch.Tensor, target: str = "auto") -> torch.Tensor:
    """The value ``T(w)`` that ``gamma * binary(w)`` approximates (see module docs)."""
    if target not in TARGETS:
        raise BiperError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if target == "auto":
        target = "sine" if _is_biper(q) else ("latent" if _sign_forward(q) else "forward")
    with torch.no_grad():
        if target == "sine":
            if not _is_biper(q):
                raise BiperError(f"target 'sine' is BiPer's stage-1 weight; quantizer is {q.name!r}")
            return torch.sin(q.omega0 * w)
        if target == "forward":
            if _is_biper(q):
                return torch.sin(q.omega0 * w)  # BiPer's soft forward is the stage-1 sine
            return q.forward_fn(w)
        return w.clone()


def resolve_gamma(q: Quantizer, w: torch.Tensor, gamma, t: torch.Tensor | None = None,
                  binary: torch.Tensor | None = None) -> float:
    """A number for ``gamma`` given as a number, ``"opt"`` or ``"emp"`` (see module docs)."""
    if isinstance(gamma, str):
        if gamma == "opt" and _is_biper(q):
            return float(gamma_opt(q.omega0 * laplace_b(w)))
        if gamma in ("opt", "emp"):
            t = qe_target(q, w) if t is None else t
            binary = q.binary(w) if binary is None else binary
            return float((t * binary).mean())
        raise BiperError(f"gamma must be a number, 'opt' or 'emp', got {gamma!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma):
        raise BiperError(f"gamma must be a finite number, 'opt' or 'emp', got {gamma!r}")
    return float(gamma)


def _errors(q: Quantizer, w: torch.Tensor, gamma, target: str) -> tuple[torch.Tensor, float]:
    if not isinstance(q, Quantizer) or q.kind != "weight":
        raise BiperError(f"QE is defined for weight quantizers, got {getattr(q, 'name', q)!r}")
    w = torch.as_tensor(w).detach().double().flatten()
    if w.numel() == 0:
        raise BiperError("cannot measure the QE of an empty tensor")
    with torch.no_grad():
        t = qe_target(q, w, target)
        binary = q.binary(w).double()
        g = resolve_gamma(q, w, gamma, t, binary)
        return (t - g * binary).pow(2), g


def measure_qe(q: Quantizer | str, w: torch.Tensor, gamma=1.0, *, target: str = "auto") -> float:
    """Empirical ``mean((T(w) - gamma binary(w))^2)`` over the tensor ``w`` (any shape)."""
    q = get_quantizer(q) if isinstance(q, str) else q
    err, _ = _errors(q, w, gamma, target)
    return float(err.mean())


@dataclass(frozen=True)
class MonteCarloQE:
    """A Monte Carlo QE estimate: mean over ``n`` draws, its standard error and the gamma used."""

    qe: float
    stderr: float
    n: int
    gamma: float
    dist: str
    scale: float

    def to_dict(self) -> dict:
        return asdict(self)


def qe_monte_carlo(q: Quantizer | str, dist: str = "laplace", scale: float = 1.0, n: int = 100_000,
                   gamma=1.0, *, seed: int | None = 0, target: str = "auto",
                   chunk: int = 1_000_000) -> MonteCarloQE:
    """Estimate QE on ``n`` weights drawn from ``dist`` (float64, processed in chunks).

    ``gamma="opt"`` for BiPer uses ``gamma*(omega0 b)`` with the *true* b when ``dist`` is
    Laplace (the closed form's gamma*), otherwise b estimated from the sample.
    """
    q = get_quantizer(q) if isinstance(q, str) else q
    w = sample_weights(dist, n, scale, seed=seed)
    if isinstance(gamma, str) and gamma == "opt" and _is_biper(q) and dist == "laplace":
        gamma = float(gamma_opt(q.omega0 * scale))
    elif isinstance(gamma, str):
        gamma = resolve_gamma(q, w, gamma)
    total, total_sq = 0.0, 0.0
    for start in range(0, n, chunk):
        err, g = _errors(q, w[start:start + chunk], gamma, target)
        total += float(err.sum())
        total_sq += float(err.pow(2).sum())
    mean = total / n
    var = max(total_sq / n - mean * mean, 0.0) * n / max(n - 1, 1)
    return MonteCarloQE(mean, math.sqrt(var / n), n, g, dist, float(scale))
