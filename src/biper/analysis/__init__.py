"""Quantization-error (QE) analysis: BiPer's closed form, Monte Carlo, per-layer reports, omega0
selection and plots.

- `theory`: the closed forms for Laplace latent weights (``e_sin2``, ``gamma_opt``, ``qe``,
  ``qe_opt``, limits), re-exported from `biper.theory`.
- `measure`: empirical QE of any weight quantizer pair on any tensor, Laplace ``b`` by maximum
  likelihood, Monte Carlo estimates with standard errors.
- `report`: per-layer table of a model, a state dict or a checkpoint.
- `flexible_init`: choose omega0 (global or per layer) for a target QE.
- `plots`: figures (imports matplotlib when called, never at import).

The closed forms are imported eagerly; the other names load on first access, so
``import biper.analysis`` stays light.

Example::

    >>> from biper.analysis import qe_opt, omega0_for_target
    >>> round(float(qe_opt(1.0)), 4)
    0.1028
    >>> round(omega0_for_target(0.05, 0.05), 3)   # omega0 for QE* = 0.05 at b = 0.05
    5.437
"""

from __future__ import annotations

import importlib

from ..theory import *  # noqa: F403 (the closed forms, eagerly)
from ..theory import __all__ as _THEORY

_LAZY = {
    "laplace_b": "measure",
    "sample_weights": "measure",
    "qe_target": "measure",
    "measure_qe": "measure",
    "qe_monte_carlo": "measure",
    "MonteCarloQE": "measure",
    "LayerReport": "report",
    "analyze_model": "report",
    "analyze_state_dict": "report",
    "analyze_checkpoint": "report",
    "format_table": "report",
    "omega0_for_target": "flexible_init",
    "apply_flexible_init": "flexible_init",
    "FlexibleInit": "flexible_init",
    "plot_qe_curve": "plots",
    "plot_weight_histograms": "plots",
}

__all__ = [
    *_THEORY,
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
