"""Schedules for annealed quantizer parameters (BNN++'s mu, ProxConnect's mu, BiPer's omega0).

A schedule maps training progress ``p`` in [0, 1] (fraction of the current stage done) to a
parameter value. The trainer calls ``biper.quantizers.set_progress(model, p)`` once per step;
each quantizer owns its schedules, so the engine never needs to know which method runs.

Kinds (``s = start``, ``e = end``)::

    constant  v(p) = s
    linear    v(p) = s + (e - s) p
    exp       v(p) = s (e / s)^p                (geometric; s, e > 0)
    cosine    v(p) = e + (s - e) (1 + cos(pi p)) / 2

Example::

    >>> Schedule("exp", 1.0, 100.0)(0.5)
    10.0
    >>> as_schedule({"schedule": "linear", "start": 1, "end": 3})(0.5)
    2.0
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import BiperError, did_you_mean

__all__ = ["Schedule", "as_schedule", "SCHEDULE_KINDS"]

SCHEDULE_KINDS = ("constant", "linear", "exp", "cosine")


@dataclass(frozen=True)
class Schedule:
    """A parameter value as a function of stage progress ``p`` in [0, 1]."""

    kind: str
    start: float
    end: float

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise BiperError(
                f"unknown schedule {self.kind!r}{did_you_mean(self.kind, SCHEDULE_KINDS)}; "
                f"valid: {', '.join(SCHEDULE_KINDS)}"
            )
        for key in ("start", "end"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise BiperError(f"schedule {key} must be a finite number, got {value!r}")
        if self.kind == "exp" and (self.start <= 0 or self.end <= 0):
            raise BiperError(f"exp schedule needs start > 0 and end > 0, got {self.start}, {self.end}")

    def __call__(self, p: float) -> float:
        p = min(max(float(p), 0.0), 1.0)
        s, e = float(self.start), float(self.end)
        if self.kind == "constant":
            return s
        if self.kind == "linear":
            return s + (e - s) * p
        if self.kind == "exp":
            return s * (e / s) ** p
        return e + (s - e) * 0.5 * (1.0 + math.cos(math.pi * p))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"schedule": d.pop("kind"), **d}


def as_schedule(spec: Any) -> Schedule:
    """A `Schedule` from itself or a dict ``{"schedule": kind, "start": s, "end": e}``."""
    if isinstance(spec, Schedule):
        return spec
    if not isinstance(spec, dict):
        raise BiperError(f"a schedule must be a dict with keys schedule, start, end; got {spec!r}")
    keys = {"schedule", "start", "end"}
    unknown = set(spec) - keys
    if unknown:
        bad = sorted(unknown)[0]
        raise BiperError(f"unknown schedule key {bad!r}{did_you_mean(bad, keys)}; valid: schedule, start, end")
    missing = keys - set(spec) - ({"end"} if spec.get("schedule") == "constant" else set())
    if missing:
        raise BiperError(f"schedule {spec!r} is missing {', '.join(sorted(missing))}")
    return Schedule(spec["schedule"], spec["start"], spec.get("end", spec["start"]))
