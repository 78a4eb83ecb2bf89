"""Training: configs, recipes + overrides, the multi-stage engine, checkpoints, tasks.

A run is described by a `RunConfig` (frozen, validated; see `biper.train.config`), usually
loaded from a packaged YAML recipe with ``key=value`` overrides (`load_run_config`), and run by
`train`, which writes a run folder (resolved ``config.yaml``, ``metrics.jsonl`` / ``.csv``,
``checkpoints/``, ``final.pt``, ``summary.json``) and resumes exactly from it.

Checkpoints (`biper.train.checkpoint`) are plain dicts loadable with ``weights_only=True``;
`load_checkpoint` verifies their SHA-256 checksum and `build_model_from_config` rebuilds the
model they belong to.

Example::

    >>> from biper.train import load_run_config, train, load_checkpoint, build_model_from_config
    >>> cfg = load_run_config("cifar10-resnet20-biper-cpu", ["stages.*.epochs=1"],
    ...                       data_dir="../shared/data", subset=1000)
    >>> summary = train(cfg, "runs/quick")
    >>> model = build_model_from_config(load_checkpoint("runs/quick/final.pt"))
"""

from .checkpoint import (CheckpointError, CheckpointWriteError, latest_checkpoint, load_checkpoint,
                         load_state_file, save_checkpoint, state_digest, weights_digest)
from .config import DataConfig, ModelConfig, RunConfig, StageConfig, TaskConfig
from .engine import NonFiniteLoss, Trainer, TrainingInterrupted, TrainingStopped, evaluate, train
from .model import build_model_from_config, model_spec
from .optim import LRSchedule, build_optimizer, param_groups
from .overrides import apply_overrides, load_run_config, parse_override
from .tasks import ClassificationTask, DistillationTask
from ..validate import ConfigError

__all__ = [
    "RunConfig",
    "ModelConfig",
    "DataConfig",
    "StageConfig",
    "TaskConfig",
    "ConfigError",
    "load_run_config",
    "apply_overrides",
    "parse_override",
    "train",
    "Trainer",
    "evaluate",
    "TrainingStopped",
    "TrainingInterrupted",
    "NonFiniteLoss",
    "build_model_from_config",
    "model_spec",
    "load_checkpoint",
    "load_state_file",
    "save_checkpoint",
    "latest_checkpoint",
    "state_digest",
    "weights_digest",
    "CheckpointError",
    "CheckpointWriteError",
    "LRSchedule",
    "build_optimizer",
    "param_groups",
    "ClassificationTask",
    "DistillationTask",
]
