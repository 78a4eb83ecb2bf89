"""Why a training run stopped early: the exceptions `biper.train.train` raises.

Each carries ``exit_code``, what ``biper train`` returns: 128 + the signal number after SIGINT /
SIGTERM (a checkpoint was written; ``--resume`` continues), 1 for a NaN/Inf loss (the last good
checkpoint is kept).
"""

from __future__ import annotations

import signal
from pathlib import Path

__all__ = ["TrainingStopped", "TrainingInterrupted", "NonFiniteLoss"]


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
