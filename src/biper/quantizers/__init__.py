"""Forward/backward quantizer pairs: registry, schedules and the ProxConnect++ criterion.

See `biper.quantizers.base` for the (F, B') model, `weight` and `activation` for the pairs.
"""

from . import activation, periodic, weight  # noqa: F401  (registers the pairs)
from .base import (
    KINDS,
    PairFunction,
    Quantizer,
    describe_quantizers,
    get_quantizer,
    list_quantizers,
    register,
    set_progress,
)
from .criterion import Decomposition, check_decomposition, check_pair, synthesize_pair
from .schedules import Schedule, as_schedule

__all__ = [
    "KINDS",
    "PairFunction",
    "Quantizer",
    "Schedule",
    "as_schedule",
    "describe_quantizers",
    "get_quantizer",
    "list_quantizers",
    "register",
    "set_progress",
    "Decomposition",
    "check_decomposition",
    "check_pair",
    "synthesize_pair",
]
