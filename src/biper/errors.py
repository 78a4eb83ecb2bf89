"""Errors raised by biper for bad input.

`BiperError` is a `ValueError` whose message is one line naming what is wrong and what is
allowed. The CLI prints it without a traceback and exits with status 2 (`--debug` shows the
traceback).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["BiperError", "did_you_mean"]


class BiperError(ValueError):
    """Bad user input: a one-line message naming the key, path or value and what is allowed."""


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest valid name, or '' when none is close."""
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
