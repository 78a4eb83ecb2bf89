"""BiPer's closed-form quantization error, re-exported from `biper.theory.sine` (its home)."""

from __future__ import annotations

from ..theory.sine import (  # noqa: F401
    LIMITS,
    QE_OPT_PEAK,
    __all__,
    e_sin2,
    frac_beyond_first_lobe,
    frac_sign_flip,
    gamma_opt,
    qe,
    qe_limit,
    qe_opt,
    qe_relative,
)
