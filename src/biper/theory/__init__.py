"""Closed forms that quantizers and analysis share, with no dependency above numpy.

- `sine`: BiPer's sine / square-wave pair for Laplace latent weights: ``E[sin^2]``, the
  optimal scale ``gamma*``, the quantization error ``QE`` and ``QE*``, their limits.
"""

from __future__ import annotations

from .sine import (
    LIMITS,
    QE_OPT_PEAK,
    e_sin2,
    frac_beyond_first_lobe,
    frac_sign_flip,
    gamma_opt,
    qe,
    qe_limit,
    qe_opt,
    qe_relative,
)

__all__ = [
    "LIMITS",
    "QE_OPT_PEAK",
    "e_sin2",
    "frac_beyond_first_lobe",
    "frac_sign_flip",
    "gamma_opt",
    "qe",
    "qe_limit",
    "qe_opt",
    "qe_relative",
]
