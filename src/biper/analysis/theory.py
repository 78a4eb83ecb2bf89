"""Closed-form quantization error of BiPer for Laplace latent weights (BiPer, CVPR 2024, Sec. 3).

For ``w ~ Laplace(0, b)``, stage-1 weights ``sin(omega0 w)`` and stage-2 weights
``gamma * sign(sin(omega0 w))``, everything depends on ``x = omega0 * b`` only::

    E[sin^2]     = 2 x^2 / (4 x^2 + 1)
    gamma*(x)    = E|sin(omega0 w)| = x (e^{pi/x} + 1) / ((x^2 + 1)(e^{pi/x} - 1))
                 = x coth(pi / (2x)) / (x^2 + 1)          (the stable form used here)
    QE(x, gamma) = E[sin^2] - 2 gamma gamma*(x) + gamma^2
    QE*(x)       = E[sin^2] - gamma*(x)^2                 (at gamma = gamma*)

Limits as x -> inf: E[sin^2] -> 1/2, gamma* -> 2/pi, QE(1) -> 3/2 - 4/pi, QE* -> 1/2 - 4/pi^2;
as x -> 0 all of E[sin^2], gamma*, QE* -> 0 and QE(gamma) -> gamma^2.

Writing ``(e^{a}+1)/(e^{a}-1) = coth(a/2)`` avoids the overflow of ``e^{pi/x}`` at small x and
the 0/0 at x = 0. Functions accept floats, numpy arrays or tensors.

Example::

    >>> round(float(gamma_opt(1e6)), 6) == round(2 / 3.141592653589793, 6)
    True
"""

from __future__ import annotations

import numpy as np

__all__ = ["e_sin2", "gamma_opt", "qe", "qe_opt", "LIMITS"]

LIMITS = {
    "e_sin2": 0.5,
    "gamma_opt": 2.0 / np.pi,
    "qe_gamma1": 1.5 - 4.0 / np.pi,
    "qe_opt": 0.5 - 4.0 / np.pi**2,
}


def _as_array(x):
    arr = np.asarray(x, dtype=np.float64)
    if np.any(arr < 0) or np.any(~np.isfinite(arr)):
        raise ValueError(f"omega0 * b must be finite and >= 0, got {x!r}")
    return arr


def e_sin2(x):
    """E[sin^2(omega0 w)] for w ~ Laplace(0, b), x = omega0 b."""
    x = _as_array(x)
    return 2.0 * x * x / (4.0 * x * x + 1.0)


def gamma_opt(x):
    """gamma* = E|sin(omega0 w)| = x coth(pi/(2x)) / (x^2 + 1); 0 at x = 0."""
    x = _as_array(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.pi / (2.0 * x)  # inf at x = 0 -> tanh = 1
        g = x / (np.tanh(a) * (x * x + 1.0))
    return np.where(x == 0, 0.0, g)


def qe(x, gamma=1.0):
    """QE(x, gamma) = E[(sin(omega0 w) - gamma sign(sin(omega0 w)))^2]."""
    return e_sin2(x) - 2.0 * np.asarray(gamma, dtype=np.float64) * gamma_opt(x) + np.asarray(gamma) ** 2


def qe_opt(x):
    """QE* = E[sin^2] - gamma*^2, the error at the optimal scale."""
    return e_sin2(x) - gamma_opt(x) ** 2
