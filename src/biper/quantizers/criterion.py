"""The ProxConnect++ decomposition criterion, checked numerically, and a pair synthesizer.

A pair (F, B) is *sound* when the forward quantizer
factors as ``F = B o P`` with ``P`` a proximal quantizer, i.e. a nondecreasing 1-D map (every
nondecreasing map is the proximal map of some regulariser). PC++ is then ProxConnect applied
to the composite loss ``f o B``.

Where B' is evaluated is the second half of the reading, and both are reported:

* ``at_w`` (how the methods are implemented, and the default test): the backward pass
  multiplies by ``B'(w)``, the derivative of the declared ``B`` at the latent weight.
* ``at_p`` (ProxConnect on ``f o B`` taken literally): the multiplier is ``B'(P(w))``.

They agree when ``P`` is the identity (BNN++) or ``B'`` is constant (BC, PC). BiPer's square
wave satisfies ``F = B o P`` with ``B = sin(omega0 .)`` and the staircase
``P(w) = pi/(2 omega0) + (pi/omega0) floor(omega0 w / pi)`` (monotone), but ``B'(P(w)) = 0``:
BiPer is sound in the ``at_w`` reading only, like BNN+ (``P = x* sign``, ``SS(x*) = 1``).

Example::

    >>> import torch
    >>> res = check_decomposition(torch.sign, lambda x: x)      # BC: B = id, P = sign
    >>> res.ok
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import BiperError
from ..functional import sign
from .base import Quantizer, get_quantizer

__all__ = ["Decomposition", "check_decomposition", "check_pair", "synthesize_pair"]

Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Decomposition:
    """Result of a criterion check. ``bool(result)`` is ``result.ok``."""

    ok: bool
    reason: str
    w: np.ndarray = field(repr=False)
    p: np.ndarray | None = field(default=None, repr=False)
    max_error: float = float("nan")
    backward: dict[str, bool] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.ok


def _call(fn: Fn, x: np.ndarray) -> np.ndarray:
    return fn(torch.as_tensor(x, dtype=torch.float64)).detach().double().numpy()


def _derivative(fn: Fn, x: np.ndarray) -> np.ndarray:
    t = torch.as_tensor(x, dtype=torch.float64).clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(t).sum(), t, allow_unused=True)
    return np.zeros_like(x) if g is None else g.numpy()


def _refine(fn: Fn, targets: np.ndarray, lo: np.ndarray, hi: np.ndarray, iters: int = 80) -> np.ndarray:
    """Minimise |fn(x) - target| on each bracket by ternary search (crossings and tangencies)."""
    for _ in range(iters):
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        fa = np.abs(_call(fn, a) - targets)
        fb = np.abs(_call(fn, b) - targets)
        left = fa <= fb
        hi = np.where(left, b, hi)
        lo = np.where(left, lo, a)
    return 0.5 * (lo + hi)


def _find_monotone_p(F_vals, w, B, search, m, tol):
    """A nondecreasing selection P(w_i) in B^{-1}(F(w_i)); returns (p, reason or '')."""
    xs = np.linspace(search[0], search[1], m)
    bv = _call(B, xs)
    step = xs[1] - xs[0]
    coarse = max(1e-3, 4 * np.nanmax(np.abs(np.diff(bv))))  # B varies by at most this per step
    owner, brackets = [], []
    for i, v in enumerate(F_vals):  # local minima of |B(x) - F(w_i)| on the grid
        d = np.abs(bv - v)
        interior = (d[1:-1] <= d[:-2]) & (d[1:-1] <= d[2:])
        is_min = np.concatenate([[d[0] <= d[1]], interior, [d[-1] <= d[-2]]])
        cand = np.flatnonzero(is_min & (d <= coarse))
        if cand.size == 0:
            return None, f"F(w)={v:.6g} at w={w[i]:.6g} is not attained by B on [{search[0]:.3g}, {search[1]:.3g}]"
        gaps = np.diff(cand) > 1  # a plateau of B = v is kept as its two ends
        cand = np.unique(np.concatenate([cand[np.r_[True, gaps]], cand[np.r_[gaps, True]]]))
        owner.append(np.full(cand.size, i))
        brackets.append(xs[cand])
    owner, centre = np.concatenate(owner), np.concatenate(brackets)
    targets = F_vals[owner]
    roots = _refine(B, targets, np.maximum(centre - step, search[0]), np.minimum(centre + step, search[1]))
    good = np.abs(_call(B, roots) - targets) <= tol
    per_w = [roots[(owner == i) & good] for i in range(len(w))]
    for i, mine in enumerate(per_w):
        if mine.size == 0:
            return None, f"F(w)={F_vals[i]:.6g} at w={w[i]:.6g} is not attained by B (closest miss > {tol:g})"
    p, reason = _greedy(per_w, w, F_vals, step, nearest=True)  # the natural P (closest to w)
    if p is None:
        p, reason = _greedy(per_w, w, F_vals, step, nearest=False)  # existence-optimal
    return p, reason


def _greedy(per_w, w, F_vals, step, nearest):
    """Nondecreasing selection from per-point preimages: the smallest admissible one (optimal:
    if any nondecreasing selection exists this one does) or the one nearest to w."""
    p = np.empty_like(w)
    prev = -np.inf
    for i, mine in enumerate(per_w):
        later = mine[mine >= prev - 2 * step]
        if later.size == 0:
            return None, (
                f"P would have to decrease: F(w)={F_vals[i]:.6g} at w={w[i]:.6g} needs P(w) <= {mine.max():.6g} "
                f"but P(w') = {prev:.6g} at a smaller w' (F is not B composed with any monotone P)"
            )
        p[i] = later[np.argmin(np.abs(later - w[i]))] if nearest else later.min()
        prev = max(prev, p[i])
    return p, ""


def check_decomposition(
    F: Fn,
    B: Fn,
    P: Fn | None = None,
    *,
    backward: Fn | None = None,
    domain: tuple[float, float] = (-1.5, 1.5),
    n: int = 601,
    search: tuple[float, float] | None = None,
    resolution: int = 20001,
    tol: float = 1e-6,
) -> Decomposition:
    """Check numerically on a grid of ``n`` points of ``domain`` whether ``F = B o P`` with ``P``
    nondecreasing. With ``P`` given, it is checked; otherwise one is searched on ``search``.

    ``backward`` is the method's actual multiplier ``w -> B'_method(w)``; when given, the result's
    ``backward`` dict says whether it equals ``B'(w)`` (reading ``at_w``) and ``B'(P(w))``
    (``at_p``) on the grid (kinks of measure zero tolerated: at most 1% of points may differ).
    """
    if not domain[0] < domain[1]:
        raise BiperError(f"domain must be (lo, hi) with lo < hi, got {domain}")
    w = np.linspace(domain[0], domain[1], n)
    F_vals = _call(F, w)
    if P is not None:
        p = _call(P, w)
        drops = np.flatnonzero(np.diff(p) < -tol)
        if drops.size:
            j = drops[0]
            return Decomposition(False, f"P is not monotone: P({w[j]:.6g})={p[j]:.6g} > P({w[j+1]:.6g})={p[j+1]:.6g}", w, p)
    else:
        width = domain[1] - domain[0]
        search = search or (domain[0] - 0.5 * width - 1.0, domain[1] + 0.5 * width + 1.0)
        p, reason = _find_monotone_p(F_vals, w, B, search, resolution, tol)
        if p is None:
            return Decomposition(False, reason, w)
    err = np.abs(_call(B, p) - F_vals)
    worst = int(np.argmax(err))
    if err[worst] > 1e-4:
        return Decomposition(False, f"F != B o P: at w={w[worst]:.6g} F={F_vals[worst]:.6g}, B(P(w))={F_vals[worst] + err[worst]:.6g}", w, p, float(err[worst]))
    result = Decomposition(True, "F = B o P with P nondecreasing", w, p, float(err.max()))
    if backward is not None:
        actual = _call(backward, w)
        for reading, at in (("at_w", w), ("at_p", p)):
            mismatch = ~np.isclose(actual, _derivative(B, at), rtol=1e-5, atol=1e-6)
            result.backward[reading] = bool(mismatch.mean() <= 0.01)
        if not result.backward["at_w"]:
            result.ok = False
            result.reason = "the backward multiplier is not B' evaluated at w"
    return result


def check_pair(quantizer: str | Quantizer, **kwargs) -> Decomposition:
    """Check a registered weight pair (by name or instance) with its declared B."""
    q = get_quantizer(quantizer)
    if q.kind != "weight":
        raise BiperError(f"the criterion applies to weight quantizers; {q.name!r} is an activation quantizer")
    return check_decomposition(q.forward_fn, q.backward_primitive, backward=q.backward_fn, **kwargs)


def synthesize_pair(
    P: Fn,
    B: Fn,
    *,
    dB: Fn | None = None,
    backward_at: str = "w",
    name: str = "synthesized",
    domain: tuple[float, float] = (-3.0, 3.0),
) -> Quantizer:
    """Build a sound weight pair ``F = B o P`` from a monotone ``P`` and a smooth ``B``.

    The backward multiplier is ``B'(w)`` (``backward_at="w"``) or ``B'(P(w))`` (``"p"``);
    ``dB`` defaults to the autograd derivative of ``B``. Deployment uses ``sign(F(w))``.
    ``P`` is checked to be nondecreasing on ``domain`` (a ``BiperError`` otherwise).
    """
    if backward_at not in ("w", "p"):
        raise BiperError(f"backward_at must be 'w' or 'p', got {backward_at!r}")
    grid = torch.linspace(domain[0], domain[1], 4001, dtype=torch.float64)
    pv = P(grid)
    if bool((pv[1:] - pv[:-1] < -1e-9).any()):
        raise BiperError(f"P must be nondecreasing (a proximal quantizer) on {domain}")

    def derivative(x: torch.Tensor) -> torch.Tensor:
        if dB is not None:
            return dB(x)
        with torch.enable_grad():
            t = x.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(B(t).sum(), t)
        return g

    class Synthesized(Quantizer):
        kind = "weight"
        forward_formula = "B(P(w))"
        backward_formula = f"B'({backward_at})"

        def forward_fn(self, x):
            return B(P(x))

        def backward_fn(self, x):
            return derivative(P(x) if backward_at == "p" else x)

        def backward_primitive(self, x):
            return B(x)

        def binary(self, x):
            return sign(B(P(x)))

    Synthesized.name = name
    Synthesized.__name__ = f"Synthesized_{name}"
    return Synthesized()
