"""Flexible initialisation: pick BiPer's frequency omega0 for a target quantization error.

BiPer's QE for Laplace(0, b) latent weights depends on ``x = omega0 * b`` only (see
`biper.theory`), so for a layer with scale ``b`` and a target error ``QE_t`` the
frequency is ``omega0 = x_t / b`` where ``QE(x_t) = QE_t`` (BiPer, CVPR 2024, Sec. 3.3). The
target is absolute or relative to the stage-1 weight energy (``QE / E[sin^2]``), at the optimal
scale (``gamma="opt"``, QE*) or at ``gamma = 1`` (``gamma="one"``).

Reachable targets (x from 0 to inf)::

    gamma   absolute                       relative (QE / E[sin^2])
    opt     (0, 0.1028]   rises then 0.0947 (1 - 8/pi^2, 1/2) = (0.1894, 0.5)
    one     (3/2 - 4/pi, 1) = (0.2268, 1)  (3 - 8/pi, inf)   = (0.4535, inf)

All but absolute QE* are monotone in x. QE* rises to its peak 0.1028 at x = 0.955 and then
falls to 0.0947, so targets in (0.0947, 0.1028] have two solutions: the smaller x is returned
(the rising branch, where most weights sit in the first lobe of the square wave).

``x`` is found by bisection in log space inside the first bracketing interval of a grid
``x in [1e-8, 1e8]``. A global omega0 (``per_layer=False``) makes the weight-count-weighted mean
of the per-layer errors equal to the target.

Example::

    >>> round(omega0_for_target(b=0.05, target_qe=0.05), 3)
    5.437
    >>> import torch, biper
    >>> from biper.nn import BinaryLinear
    >>> model = torch.nn.Sequential(BinaryLinear(64, 64), BinaryLinear(64, 64))
    >>> sorted(apply_flexible_init(model, 0.3, relative=True, per_layer=True))
    ['0', '1']
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
from torch import nn

from ..errors import BiperError, did_you_mean
from ..nn import binary_layers
from .measure import laplace_b
from ..theory import LIMITS, QE_OPT_PEAK, qe, qe_opt, qe_relative

__all__ = ["GAMMAS", "omega0_for_target", "apply_flexible_init", "FlexibleInit", "reachable_range"]

GAMMAS = ("opt", "one")
_GRID = np.logspace(-8.0, 8.0, 1601)  # x = omega0 * b


def reachable_range(relative: bool = False, gamma: str = "opt") -> tuple[float, float]:
    """(inf, sup) of the QE reachable by some x in (0, inf) (the sup is attained for absolute QE*)."""
    _check_gamma(gamma)
    if gamma == "opt":
        return (LIMITS["qe_opt_relative"], 0.5) if relative else (0.0, QE_OPT_PEAK[1])
    return (LIMITS["qe_gamma1_relative"], math.inf) if relative else (LIMITS["qe_gamma1"], 1.0)


def _check_gamma(gamma: str) -> None:
    if gamma not in GAMMAS:
        raise BiperError(f"gamma must be one of {', '.join(GAMMAS)} (optimal scale or 1), got {gamma!r}"
                         f"{did_you_mean(str(gamma), GAMMAS)}")


def _check_number(name: str, value, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not math.isfinite(value):
        raise BiperError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise BiperError(f"{name} must be > 0, got {value!r}")
    return float(value)


def _qe_of_x(relative: bool, gamma: str) -> Callable[[np.ndarray], np.ndarray]:
    if relative:
        return lambda x: qe_relative(x, "opt" if gamma == "opt" else 1.0)
    return qe_opt if gamma == "opt" else (lambda x: qe(x, 1.0))


def _solve(fun: Callable[[np.ndarray], np.ndarray], target: float, what: str) -> float:
    """Smallest s on the grid's first bracketing interval with fun(s) = target (log bisection)."""
    diff = fun(_GRID) - target
    hits = np.flatnonzero((diff[:-1] == 0) | (np.sign(diff[:-1]) != np.sign(diff[1:])))
    if hits.size == 0:
        raise BiperError(what)
    i = int(hits[0])
    if diff[i] == 0:
        return float(_GRID[i])
    lo, hi = math.log(_GRID[i]), math.log(_GRID[i + 1])
    sign_lo = np.sign(diff[i])
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if np.sign(float(fun(np.exp(mid))) - target) == sign_lo:
            lo = mid
        else:
            hi = mid
    return float(math.exp(0.5 * (lo + hi)))


def _unreachable(target: float, relative: bool, gamma: str) -> str:
    lo, hi = reachable_range(relative, gamma)
    kind = "relative QE/E[sin^2]" if relative else "absolute QE"
    right = "]" if (gamma == "opt" and not relative) else ")"
    return (f"target_qe {target:g} is not reachable ({kind}, gamma={gamma}); "
            f"reachable range ({lo:.4g}, {hi:.4g}{right}")


def omega0_for_target(b: float, target_qe: float, relative: bool = False, gamma: str = "opt") -> float:
    """omega0 such that BiPer's QE for Laplace(0, b) weights equals ``target_qe`` (see module docs)."""
    b = _check_number("b (Laplace scale)", b)
    target = _check_number("target_qe", target_qe)
    _check_gamma(gamma)
    peak_x, peak_qe = QE_OPT_PEAK
    if gamma == "opt" and not relative and peak_qe - 1e-12 <= target <= peak_qe:
        return peak_x / b  # the maximum of QE*, which the grid need not bracket
    message = _unreachable(target, relative, gamma)
    x = _solve(_qe_of_x(relative, gamma), target, message)
    if not _GRID[0] * 1.001 < x < _GRID[-1] / 1.001:
        raise BiperError(message)  # only reached in the limit x -> 0 or x -> inf
    return x / b


def _global_omega0(bs: list[float], counts: list[int], target: float, relative: bool, gamma: str) -> float:
    b = np.asarray(bs, dtype=np.float64)
    wts = np.asarray(counts, dtype=np.float64) / float(sum(counts))
    b_ref = float((wts * b).sum())
    f = _qe_of_x(relative, gamma)

    def mean_qe(s):  # s = omega0 * b_ref; weighted mean of per-layer QE(omega0 * b_i)
        s = np.asarray(s, dtype=np.float64)
        return (wts * f(s[..., None] * (b / b_ref))).sum(-1)

    return _solve(mean_qe, target, _unreachable(target, relative, gamma)) / b_ref


def _biper_layers(model: nn.Module):
    layers = [(n, m) for n, m in binary_layers(model)
              if m.weight_quantizer is not None and m.weight_quantizer.name == "biper"]
    if not layers:
        raise BiperError("flexible omega0 initialisation needs BiPer weight quantizers; the model has none")
    for name, layer in layers:
        if "omega0" in layer.weight_quantizer.schedules:
            raise BiperError(f"layer {name!r}: omega0 follows a schedule; flexible initialisation "
                             "sets a fixed omega0, so give omega0 as a number")
    return layers


def apply_flexible_init(model: nn.Module, target_qe: float, *, relative: bool = False,
                        per_layer: bool = False, gamma: str = "opt") -> dict[str, float]:
    """Set ``omega0`` of every BiPer weight quantizer of ``model`` for ``target_qe``, in place.

    Each layer's ``b`` is the maximum-likelihood Laplace scale of its latent weights. With
    ``per_layer`` every layer reaches the target; otherwise one global omega0 makes the
    weight-count-weighted mean QE equal to it. Returns ``{layer_name: omega0}``.
    """
    target = _check_number("target_qe", target_qe)
    _check_gamma(gamma)
    for key, value in (("relative", relative), ("per_layer", per_layer)):
        if not isinstance(value, bool):
            raise BiperError(f"{key} must be true or false, got {value!r}")
    layers = _biper_layers(model)
    bs = [laplace_b(layer.weight) for _, layer in layers]
    for (name, _), b in zip(layers, bs):
        if not b > 0:
            raise BiperError(f"layer {name!r} has constant weights (Laplace b = 0); cannot choose omega0")
    if per_layer:
        omegas = [omega0_for_target(b, target, relative, gamma) for b in bs]
    else:
        counts = [layer.weight.numel() for _, layer in layers]
        omegas = [_global_omega0(bs, counts, target, relative, gamma)] * len(layers)
    chosen: dict[int, float] = {}
    for (name, layer), omega0 in zip(layers, omegas):
        q = layer.weight_quantizer
        if id(q) in chosen and not math.isclose(chosen[id(q)], omega0):
            raise BiperError(f"layer {name!r} shares its weight quantizer with another layer; "
                             "per_layer needs one quantizer per layer")
        chosen[id(q)] = omega0
        q.omega0 = float(omega0)
    return {name: float(omega0) for (name, _), omega0 in zip(layers, omegas)}


@dataclass(frozen=True)
class FlexibleInit:
    """Config of the flexible omega0 initialisation, e.g. the training config's ``omega0_init``.

    ``FlexibleInit.from_dict({"target_qe": 0.05, "per_layer": True}).apply(model)``
    """

    target_qe: float
    relative: bool = False
    per_layer: bool = False
    gamma: str = "opt"

    def __post_init__(self) -> None:
        _check_number("omega0_init.target_qe", self.target_qe)
        _check_gamma(self.gamma)
        for key in ("relative", "per_layer"):
            if not isinstance(getattr(self, key), bool):
                raise BiperError(f"omega0_init.{key} must be true or false, got {getattr(self, key)!r}")
        lo, hi = reachable_range(self.relative, self.gamma)
        if not lo < self.target_qe <= hi or (self.target_qe == hi and (self.relative or self.gamma == "one")):
            raise BiperError(_unreachable(self.target_qe, self.relative, self.gamma))

    @classmethod
    def from_dict(cls, data: dict) -> "FlexibleInit":
        if not isinstance(data, dict):
            raise BiperError(f"omega0_init must be a mapping, got {type(data).__name__}")
        names = ("target_qe", "relative", "per_layer", "gamma")
        for key in data:
            if key not in names:
                raise BiperError(f"unknown omega0_init key {key!r}{did_you_mean(key, names)}; valid: {', '.join(names)}")
        if "target_qe" not in data:
            raise BiperError("omega0_init needs target_qe (e.g. {target_qe: 0.05})")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)

    def apply(self, model: nn.Module) -> dict[str, float]:
        """`apply_flexible_init` with this config; returns ``{layer_name: omega0}``."""
        return apply_flexible_init(model, self.target_qe, relative=self.relative,
                                   per_layer=self.per_layer, gamma=self.gamma)
