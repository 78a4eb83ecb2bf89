"""Validation helpers for configs: one clear message per bad value.

Every check raises `ConfigError`, a `biper.errors.BiperError` that carries the dotted path of
the offending key (``stages.0.lr``) and what is allowed. Nested configs re-raise their
children's errors under their own prefix with `ConfigError.under`, so a message always names
the full path the user wrote, whatever the entry point (YAML recipe, ``key=value`` override,
Python dict or dataclass).

Example::

    >>> check_number("lr", -0.1, minimum=0.0)
    Traceback (most recent call last):
    ...
    biper.validate.ConfigError: lr: must be a finite number >= 0, got -0.1
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .errors import BiperError, did_you_mean

__all__ = [
    "ConfigError",
    "check_keys",
    "check_mapping",
    "check_number",
    "check_int",
    "check_bool",
    "check_choice",
    "check_str",
    "wrap_errors",
]


class ConfigError(BiperError):
    """A bad config value: ``key`` is the dotted path, ``problem`` what is wrong and allowed."""

    def __init__(self, key: str, problem: str):
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}" if key else problem)

    def under(self, prefix: str) -> "ConfigError":
        """The same error with ``prefix`` in front of its key."""
        if not prefix:
            return self
        return ConfigError(f"{prefix}.{self.key}" if self.key else prefix, self.problem)


class wrap_errors:
    """Context manager: re-raise `ConfigError` under ``prefix`` and any other `BiperError`
    (e.g. from `BinarizeConfig` or a quantizer) as a `ConfigError` naming ``prefix``."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if isinstance(err, ConfigError):
            raise err.under(self.prefix) from None
        if isinstance(err, BiperError):
            raise ConfigError(self.prefix, str(err)) from None
        return False


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, str) else f"'{value}'"


def check_mapping(key: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(key, f"must be a mapping (key: value pairs), got {type(value).__name__} {_show(value)}")
    for k in value:
        if not isinstance(k, str):
            raise ConfigError(key, f"keys must be strings, got {k!r}")
    return value


def check_keys(key: str, data: dict, valid: Iterable[str], required: Iterable[str] = ()) -> None:
    """Unknown keys (with a did-you-mean) and missing required keys of mapping ``data``."""
    valid = list(valid)
    check_mapping(key, data)
    for k in data:
        if k not in valid:
            path = f"{key}.{k}" if key else k
            raise ConfigError(path, f"unknown key{did_you_mean(k, valid)}; valid keys here: {', '.join(valid)}")
    for k in required:
        if k not in data:
            raise ConfigError(f"{key}.{k}" if key else k, "is required")


def check_number(key: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
                 strict_min: bool = False, strict_max: bool = False, none: bool = False) -> float | None:
    """A finite real number in the given range (bounds inclusive unless ``strict_*``)."""
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number{_range(minimum, maximum, strict_min, strict_max)}"
                               f"{' or null' if none else ''}, got {_show(value)}")
    bad_lo = minimum is not None and (value <= minimum if strict_min else value < minimum)
    bad_hi = maximum is not None and (value >= maximum if strict_max else value > maximum)
    if bad_lo or bad_hi:
        raise ConfigError(key, f"must be a finite number{_range(minimum, maximum, strict_min, strict_max)}, "
                               f"got {_show(value)}")
    return float(value)


def check_int(key: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
              none: bool = False) -> int | None:
    """An integer (not a bool, not a float) in [minimum, maximum]."""
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer{_range(minimum, maximum)}{' or null' if none else ''}, "
                               f"got {_show(value)}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(key, f"must be an integer{_range(minimum, maximum)}, got {value}")
    return value


def check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {_show(value)}")
    return value


def check_choice(key: str, value: Any, choices: Iterable[Any]) -> Any:
    choices = list(choices)
    if value not in choices:
        shown = ", ".join("null" if c is None else str(c) for c in choices)
        raise ConfigError(key, f"must be one of {shown}, got {_show(value)}{did_you_mean(str(value), [str(c) for c in choices])}")
    return value


def check_str(key: str, value: Any, *, none: bool = False, empty: bool = False) -> str | None:
    if value is None and none:
        return None
    if not isinstance(value, str) or (not empty and not value):
        raise ConfigError(key, f"must be a non-empty string{' or null' if none else ''}, got {_show(value)}")
    return value


def _range(lo, hi, strict_lo: bool = False, strict_hi: bool = False) -> str:
    fmt = lambda v: f"{v:g}" if isinstance(v, float) else str(v)  # noqa: E731
    if lo is not None and hi is not None:
        return f" in {'(' if strict_lo else '['}{fmt(lo)}, {fmt(hi)}{')' if strict_hi else ']'}"
    if lo is not None:
        return f" {'>' if strict_lo else '>='} {fmt(lo)}"
    if hi is not None:
        return f" {'<' if strict_hi else '<='} {fmt(hi)}"
    return ""
