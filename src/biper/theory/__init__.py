"""Closed forms that quantizers and analysis share, with no dependency above numpy.

- `sine`: BiPer's sine / square-wave pair for Laplace latent weights: ``E[sin^2]``, the
  optimal scale ``gamma*``, the quantization error ``QE`` and ``QE*``, their limits.
- `surrogates`: the same quantities for the periodic surrogates (Fourier partial sums in closed
  form; tanh and triangle by exact per-lobe quadrature).
"""

from __future__ import annotations

from .sine import *  # noqa: F403 (the package re-exports every closed form)
from .sine import __all__  # noqa: F401
