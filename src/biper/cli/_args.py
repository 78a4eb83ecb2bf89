"""argparse value types shared by the sub-commands (one message for each kind of bad value)."""

from __future__ import annotations

import argparse

__all__ = ["positive_int", "name_list", "int_list"]


def _int(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (``--max-steps``, ``--subset``, ``--epochs``, ``--nproc``)."""
    return _int(text, 1, "a positive integer")


def name_list(text: str) -> list[str]:
    """A non-empty comma-separated list (``--methods biper,bnn``)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"must be a comma-separated list, got {text!r}")
    return items


def int_list(text: str, minimum: int = 0) -> list[int]:
    """Comma-separated integers >= ``minimum`` (``--seeds 0,1,2``)."""
    return [_int(t, minimum, f"comma-separated integers >= {minimum}") for t in name_list(text)]
