"""Quantization error of BiPer's periodic surrogates for Laplace(0, b) latent weights.

A surrogate ``F`` (the training forward, see `biper.quantizers.periodic`) is deployed as the
square wave ``S(x) = sign(sin x)``, ``x = omega0 w``. As for BiPer's sine, the quantization
error is the mean squared gap between the training weight and its scaled deployed version::

    QE(gamma) = E[(F(w) - gamma S(w))^2] = E[F^2] - 2 gamma E[F S] + gamma^2
    gamma*    = E[F S]                     (the optimal scale)
    QE*       = E[F^2] - gamma*^2

For w ~ Laplace(0, b) the moments depend on ``X = omega0 b`` and the surrogate's parameter only.
``u = omega0 |w|`` is exponential with mean X, and F^2, F S are even in w and pi-periodic in u,
so every moment reduces exactly to one lobe::

    E[g(u)] = (1/X) / (1 - e^{-pi/X}) * int_0^pi g(v) e^{-v/X} dv

Closed forms (sine: ``K = 1``; n, m odd)::

    E[sin(n u) sin(m u)] = (1/2) [1/(1 + X^2 (n-m)^2) - 1/(1 + X^2 (n+m)^2)]
    E[sin(n u) S(u)]     = n X coth(pi / (2X)) / (1 + n^2 X^2)

so the Fourier surrogate ``lambda_K sum_k c_k sin(n_k u)/n_k`` (``n_k = 2k - 1``) has finite
closed-form sums. tanh and triangle are integrated on the one lobe by composite Gauss-Legendre
quadrature on panels graded geometrically towards both ends of the lobe (where tanh's
transition of width 1/beta and the weight e^{-v/X} for small X live), accurate to ~1e-12.
``square`` (F = S) gives E[F^2] = E[F S] = 1, QE(gamma) = (1 - gamma)^2.

Functions take scalars (X > 0, the surrogate's parameter) and return floats.

Example::

    >>> m = moments("fourier", 1.0, K=1)          # the sine: E[sin^2] = 2/5 at X = 1
    >>> round(m["e_f2"], 12) == 0.4
    True
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SURROGATES", "moments", "qe", "gamma_opt", "qe_opt", "surrogate_values", "fourier_weights"]

SURROGATES = ("sine", "tanh", "fourier", "triangle", "square")
_DEFAULTS = {"tanh": 5.0, "fourier": 5.0}
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(48)


def fourier_weights(K: float) -> np.ndarray:
    """c_k = clamp(K - (k - 1), 0, 1), k = 1 .. ceil(K)."""
    n = max(1, math.ceil(K - 1e-12))
    return np.clip(K - np.arange(n), 0.0, 1.0)


def _check(name: str, X: float, param: float | None) -> float | None:
    if name not in SURROGATES:
        raise ValueError(f"unknown surrogate {name!r}; valid: {', '.join(SURROGATES)}")
    if not (isinstance(X, (int, float, np.floating)) and math.isfinite(X) and X > 0):
        raise ValueError(f"omega0 * b must be a finite number > 0, got {X!r}")
    if name not in _DEFAULTS:
        if param is not None:
            raise ValueError(f"surrogate {name!r} takes no parameter")
        return None
    param = _DEFAULTS[name] if param is None else float(param)
    if not math.isfinite(param) or param <= 0 or (name == "fourier" and param < 1):
        raise ValueError(f"{name} parameter must be {'>= 1' if name == 'fourier' else '> 0'}, got {param!r}")
    return param


def surrogate_values(name: str, v: np.ndarray, param: float | None = None) -> np.ndarray:
    """F as a function of the phase ``v = omega0 w`` (numpy; the theory's own formulas)."""
    v = np.asarray(v, dtype=np.float64)
    if name == "sine":
        return np.sin(v)
    if name == "tanh":
        return np.tanh(param * np.sin(v)) / math.tanh(param)
    if name == "fourier":
        c = fourier_weights(param)
        n = 2.0 * np.arange(len(c)) + 1.0
        return (4.0 / math.pi) ** (1.0 - 1.0 / param) * (np.sin(np.multiply.outer(v, n)) * (c / n)).sum(-1)
    if name == "triangle":
        return (2.0 / math.pi) * np.arcsin(np.clip(np.sin(v), -1.0, 1.0))
    return np.where(np.sin(v) >= 0, 1.0, -1.0)


def _panels(width: float) -> np.ndarray:
    """Breakpoints on [0, pi]: geometric towards both ends, down to ``width * 1e-6``."""
    inner = np.geomspace(max(min(width, 0.5), 1e-300) * 1e-6, math.pi / 2, 60)
    return np.unique(np.concatenate([[0.0], inner, math.pi - inner[::-1], [math.pi]]))


def _lobe_moments(name: str, X: float, param: float | None) -> tuple[float, float]:
    """(E[F^2], E[F S]) by Gauss-Legendre on the first lobe (S = 1 there)."""
    width = min(X, 1.0 / param if name == "tanh" else 1.0)
    edges = _panels(width)
    a, b = edges[:-1, None], edges[1:, None]
    v = 0.5 * (b - a) * _NODES + 0.5 * (a + b)
    wq = 0.5 * (b - a) * _WEIGHTS * np.exp(-v / X)
    f = surrogate_values(name, v, param)
    norm = (1.0 / X) / -math.expm1(-math.pi / X)
    return float(norm * (wq * f * f).sum()), float(norm * (wq * f).sum())


def _fourier_moments(X: float, K: float) -> tuple[float, float]:
    c = fourier_weights(K)
    n = 2.0 * np.arange(len(c)) + 1.0
    a = c / n * (4.0 / math.pi) ** (1.0 - 1.0 / K)
    d, s = np.subtract.outer(n, n), np.add.outer(n, n)
    e_ss = 0.5 * (1.0 / (1.0 + (X * d) ** 2) - 1.0 / (1.0 + (X * s) ** 2))
    coth = 1.0 / math.tanh(math.pi / (2.0 * X))
    e_sS = n * X * coth / (1.0 + (n * X) ** 2)
    return float(a @ e_ss @ a), float(a @ e_sS)


def moments(name: str, X: float, K: float | None = None, beta: float | None = None,
            method: str = "auto") -> dict[str, float]:
    """{"e_f2": E[F^2], "e_fs": E[F S]} for surrogate ``name`` at X = omega0 b.

    ``method``: ``auto`` (closed form for sine/fourier/square, quadrature otherwise) or
    ``quadrature`` (the lobe quadrature for every surrogate; used as a cross-check).
    """
    param = _check(name, X, K if name == "fourier" else beta if name == "tanh" else None)
    if method not in ("auto", "quadrature"):
        raise ValueError(f"method must be 'auto' or 'quadrature', got {method!r}")
    if method == "quadrature":
        e_f2, e_fs = _lobe_moments(name, X, param)
    elif name == "square":
        e_f2, e_fs = 1.0, 1.0
    elif name in ("sine", "fourier"):
        e_f2, e_fs = _fourier_moments(X, 1.0 if name == "sine" else param)
    else:
        e_f2, e_fs = _lobe_moments(name, X, param)
    return {"e_f2": e_f2, "e_fs": e_fs}


def gamma_opt(name: str, X: float, **param) -> float:
    """gamma* = E[F S]."""
    return moments(name, X, **param)["e_fs"]


def qe(name: str, X: float, gamma: float = 1.0, **param) -> float:
    """QE(gamma) = E[F^2] - 2 gamma E[F S] + gamma^2."""
    m = moments(name, X, **param)
    return m["e_f2"] - 2.0 * gamma * m["e_fs"] + gamma * gamma


def qe_opt(name: str, X: float, **param) -> float:
    """QE* = E[F^2] - E[F S]^2."""
    m = moments(name, X, **param)
    return m["e_f2"] - m["e_fs"] ** 2
