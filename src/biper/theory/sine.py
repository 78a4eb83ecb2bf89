"""Closed-form quantization error of BiPer for Laplace latent weights (BiPer, CVPR 2024, Sec. 3).

BiPer binarizes a latent weight ``w`` with the square wave ``sign(sin(omega0 w))``; during
stage 1 the network uses the sine ``sin(omega0 w)`` itself. The quantization error (QE) is the
mean squared gap between the stage-1 weight and its scaled binary version. For
``w ~ Laplace(0, b)`` everything depends on the product ``x = omega0 * b`` only, so the
frequency can compensate the weight scale::

    E[sin^2]     = 2 x^2 / (4 x^2 + 1)
    gamma*(x)    = E|sin(omega0 w)| = x (e^{pi/x} + 1) / ((x^2 + 1)(e^{pi/x} - 1))
                 = x coth(pi / (2x)) / (x^2 + 1)
    QE(x, gamma) = E[(sin(omega0 w) - gamma sign(sin(omega0 w)))^2]
                 = E[sin^2] - 2 gamma gamma*(x) + gamma^2
    QE*(x)       = E[sin^2] - gamma*(x)^2                 (at the optimal gamma = gamma*)

Two by-products used by the per-layer report (sums of geometric series over the lobes
``k pi / omega0 < |w| < (k+1) pi / omega0`` of the square wave)::

    P(|w| > pi / omega0)                  = e^{-pi/x}          (beyond the first lobe)
    P(sign(sin(omega0 w)) != sign(w))      = 1 / (e^{pi/x} + 1) (odd lobes flip the sign)

Limits. As ``x -> inf``: E[sin^2] -> 1/2, gamma* -> 2/pi, QE(gamma) -> 1/2 - 4 gamma/pi +
gamma^2 (so QE(1) -> 3/2 - 4/pi), QE* -> 1/2 - 4/pi^2. As ``x -> 0``: E[sin^2] ~ 2 x^2,
gamma* ~ x, QE* ~ x^2, QE(gamma) -> gamma^2. QE(x, 1) decreases monotonically from 1 to its
limit; QE*(x) rises to a maximum ``QE_OPT_PEAK`` near x = 0.955 and then settles to its limit;
the relative errors QE/E[sin^2] decrease monotonically (QE*/E[sin^2] from 1/2 to 1 - 8/pi^2).

Numerics: ``(e^a + 1)/(e^a - 1) = coth(a/2)`` avoids the overflow of ``e^{pi/x}`` at small x
and the 0/0 at x = 0; for x > 1 the forms ``(2/pi) (a / tanh a) / (1 + 1/x^2)`` with
``a = pi/(2x)`` and ``2 / (4 + 1/x^2)`` avoid ``inf/inf`` at huge x. ``x = inf`` returns the
limits. Functions accept floats, numpy arrays or tensors and return float64 numpy values.

Example::

    >>> round(float(gamma_opt(1e6)), 6) == round(2 / 3.141592653589793, 6)
    True
    >>> round(float(qe(0.0, gamma=0.5)), 6)
    0.25
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "e_sin2",
    "gamma_opt",
    "qe",
    "qe_opt",
    "qe_relative",
    "qe_limit",
    "frac_beyond_first_lobe",
    "frac_sign_flip",
    "LIMITS",
    "QE_OPT_PEAK",
]

LIMITS = {
    "e_sin2": 0.5,
    "gamma_opt": 2.0 / np.pi,
    "qe_gamma1": 1.5 - 4.0 / np.pi,
    "qe_opt": 0.5 - 4.0 / np.pi**2,
    "qe_opt_relative": 1.0 - 8.0 / np.pi**2,
    "qe_gamma1_relative": 3.0 - 8.0 / np.pi,
}


def _as_array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if np.any(np.isnan(arr)) or np.any(arr < 0):
        raise ValueError(f"omega0 * b must be >= 0 (inf allowed for the limit), got {x!r}")
    return arr


def e_sin2(x):
    """E[sin^2(omega0 w)] = 2x^2/(4x^2+1) for w ~ Laplace(0, b), x = omega0 b (-> 1/2)."""
    x = _as_array(x)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        small = 2.0 * x * x / (4.0 * x * x + 1.0)
        large = 2.0 / (4.0 + 1.0 / (x * x))
    return np.where(x > 1.0, large, small)


def gamma_opt(x):
    """gamma* = E|sin(omega0 w)| = x coth(pi/(2x)) / (x^2 + 1); 0 at x = 0, 2/pi at x = inf."""
    x = _as_array(x)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        a = np.pi / (2.0 * x)  # inf at x = 0 -> tanh = 1; 0 at x = inf
        small = x / (np.tanh(a) * (x * x + 1.0))
        a_coth_a = np.where(a == 0, 1.0, a / np.tanh(a))
        large = (2.0 / np.pi) * a_coth_a / (1.0 + 1.0 / (x * x))
    return np.where(x > 1.0, large, np.where(x == 0, 0.0, small))


def qe(x, gamma=1.0):
    """QE(x, gamma) = E[(sin(omega0 w) - gamma sign(sin(omega0 w)))^2] = E[sin^2] - 2 gamma gamma* + gamma^2."""
    g = np.asarray(gamma, dtype=np.float64)
    return e_sin2(x) - 2.0 * g * gamma_opt(x) + g * g


def qe_opt(x):
    """QE* = E[sin^2] - gamma*^2, the error at the optimal scale gamma = gamma*(x)."""
    return e_sin2(x) - gamma_opt(x) ** 2


def qe_relative(x, gamma=1.0):
    """QE / E[sin^2]: the error relative to the stage-1 weight energy; ``gamma='opt'`` for QE*.

    At x = 0 the limit is returned (1/2 for gamma*, inf for a fixed gamma > 0).
    """
    if isinstance(gamma, str) and gamma != "opt":
        raise ValueError(f"gamma must be a number or 'opt', got {gamma!r}")
    x = _as_array(x)
    num = qe_opt(x) if isinstance(gamma, str) else qe(x, gamma)
    den = e_sin2(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = num / den
    if isinstance(gamma, str):  # QE*/E[sin^2] -> 1/2 as x -> 0 (also where x^2 underflows)
        return np.where(den == 0, 0.5, rel)
    return np.where(den == 0, np.where(np.asarray(gamma) == 0, 1.0, np.inf), rel)


def qe_limit(gamma=1.0):
    """lim_{x -> inf} QE(x, gamma) = 1/2 - 4 gamma / pi + gamma^2."""
    g = np.asarray(gamma, dtype=np.float64)
    return 0.5 - 4.0 * g / np.pi + g * g


def frac_beyond_first_lobe(x):
    """P(|w| > pi/omega0) = e^{-pi/x}: weights past the first lobe of the square wave."""
    x = _as_array(x)
    with np.errstate(divide="ignore", over="ignore"):
        return np.exp(-np.pi / x)


def frac_sign_flip(x):
    """P(sign(sin(omega0 w)) != sign(w)) = 1/(e^{pi/x} + 1) = (1 - tanh(pi/(2x))) / 2."""
    x = _as_array(x)
    with np.errstate(divide="ignore", over="ignore"):
        return 0.5 * (1.0 - np.tanh(np.pi / (2.0 * x)))


def _qe_opt_peak() -> tuple[float, float]:
    """(x, QE*) at the maximum of QE*(x), by golden-section search on [0.3, 3]."""
    lo, hi = 0.3, 3.0
    r = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(80):
        a, b = hi - r * (hi - lo), lo + r * (hi - lo)
        if qe_opt(a) > qe_opt(b):
            hi = b
        else:
            lo = a
    xm = 0.5 * (lo + hi)
    return float(xm), float(qe_opt(xm))


QE_OPT_PEAK = _qe_opt_peak()  # (x, max QE*) ~ (0.955, 0.1028)
