"""BiPer's closed-form quantization error, re-exported from `biper.theory.sine` (its home)."""

from __future__ import annotations

from ..theory.sine import *  # noqa: F403
from ..theory.sine import __all__  # noqa: F401
