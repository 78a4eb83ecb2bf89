"""Why a training run stopped early: the exceptions `biper.train.train` raises, and the signal
handler that turns SIGINT / SIGTERM into a clean stop.

Each carries ``exit_code``, what ``biper train`` returns: 128 + the signal number after SIGINT /
SIGTERM (a checkpoint was written; ``--resume`` continues), 1 for a NaN/Inf loss (the last good
checkpoint is kept).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["TrainingStopped", "TrainingInterrupted", "NonFiniteLoss", "SignalCatcher"]


class TrainingStopped(Exception):
    """Training stopped before the end; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class TrainingInterrupted(TrainingStopped):
    """SIGINT / SIGTERM: a checkpoint was written; ``--resume`` continues."""

    def __init__(self, signum: int, path: Path | None):
        self.signum, self.path = signum, path
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        where = f"checkpoint saved to {path}" if path else "no checkpoint written (not the main process)"
        super().__init__(f"interrupted by {name}; {where}; continue with --resume")


class NonFiniteLoss(TrainingStopped):
    """The loss became NaN or Inf; the weights were not updated with it."""


class SignalCatcher:
    """While active (in the main thread), SIGINT / SIGTERM only set ``signum``: the engine
    finishes the step, writes a checkpoint and raises `TrainingInterrupted`. A second Ctrl-C
    stops at once (``KeyboardInterrupt``)."""

    def __init__(self, notice: Callable[[str], None]):
        self.signum: int | None = None
        self._notice = notice
        self._old: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        self._notice(f"{signal.Signals(signum).name} received: finishing the current step, writing a "
                     f"checkpoint and exiting (press Ctrl-C again to stop at once)")

    def __enter__(self) -> "SignalCatcher":
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
