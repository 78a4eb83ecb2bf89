"""Config validation helpers, re-exported from `biper.validate` (their home)."""

from __future__ import annotations

from ..validate import (  # noqa: F401
    ConfigError,
    __all__,
    check_bool,
    check_choice,
    check_int,
    check_keys,
    check_mapping,
    check_number,
    check_str,
    wrap_errors,
)
