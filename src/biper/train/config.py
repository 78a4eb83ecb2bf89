"""The run configuration: frozen, validated dataclasses that round-trip through plain dicts.

A run is a model, an optional binarization, a dataset and a list of *stages*. Stages are data:
each has its own optimizer, learning-rate schedule, regulariser weight ``tau``, loss task and
binarization overrides, and starts from the previous stage's weights (``init_from: previous``).
BiPer's two-stage protocol is two stages that differ in ``binarize.weight_params.stage``
(``sine`` then ``square``) and in their hyper-parameters; the engine never branches on method
names.

==========================  =====================================================================
key                         meaning (allowed values)
==========================  =====================================================================
model.name / num_classes    registered model (`biper.models.list_models`); classes (null: data)
model.kwargs                options of the model entrypoint (e.g. ``img_size``)
binarize                    a `biper.BinarizeConfig` mapping, or null for a full-precision model
data.*                      dataset, data_dir, batch_size, eval_batch_size, augment, subset, ...
stages[i].*                 epochs, max_steps, optimizer (sgd|adam|adamw|bop), lr, momentum, nesterov,
                            betas, eps, weight_decay, weight_decay_on (all|conv_linear|
                            no_bias_norm), lr_schedule (cosine|linear|constant), warmup_epochs,
                            min_lr, label_smoothing, tau, grad_clip, binarize (overrides merged
                            into the run's; unused when the stage is full precision),
                            full_precision, init_from (previous|null|path), task
stages[i].bop               with optimizer bop: gamma, threshold, float_optimizer (sgd|adam|adamw),
                            gamma_schedule (constant|lr) (`biper.train.bop`)
stages[i].task              name (classification|distillation|segmentation|detection), teacher
                            (previous|path), alpha, temperature, dice (segmentation: Dice weight)
precision                   fp32 | bf16 (autocast; CPU or GPU) | amp (float16 + GradScaler, GPU)
channels_last, compile      memory format of model and batches; wrap the model in torch.compile
sync_bn                     BatchNorm -> SyncBatchNorm under DDP (global-batch statistics; CUDA)
device, threads, seed       auto|cpu|cuda|cuda:N; torch intra-op threads (null: torch default)
checkpoint_every_steps      extra mid-epoch checkpoints (null: only at the end of each epoch)
keep_checkpoints            rolling checkpoints kept (>= 1; stage-final ones are always kept)
omega0_init                 flexible BiPer initialisation applied once before the first stage:
                            {target_qe, relative, per_layer, gamma} (`biper.analysis.flexible_init`)
==========================  =====================================================================

Example::

    >>> cfg = RunConfig.from_dict({"model": {"name": "mlp"},
    ...                            "data": {"dataset": "synthetic", "options": {"size": 8}},
    ...                            "stages": [{"epochs": 1, "lr": 0.1}]})
    >>> cfg.stages[0].optimizer, cfg.precision
    ('sgd', 'fp32')
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from ..data.load import DATASETS
from ..recipes import deep_merge
from ..transform import BinarizeConfig
from ..validate import (ConfigError, check_bool, check_choice, check_int, check_keys, check_mapping,
                       check_number, check_str, wrap_errors)
from .bop import check_bop

__all__ = ["ModelConfig", "DataConfig", "TaskConfig", "StageConfig", "RunConfig", "deep_merge",
           "OPTIMIZERS", "LR_SCHEDULES", "WEIGHT_DECAY_ON", "PRECISIONS", "TASKS"]

OPTIMIZERS = ("sgd", "adam", "adamw", "bop")
LR_SCHEDULES = ("cosine", "linear", "constant")
WEIGHT_DECAY_ON = ("all", "conv_linear", "no_bias_norm")
PRECISIONS = ("fp32", "bf16", "amp")
TASKS = ("classification", "distillation", "segmentation", "detection")


class _Config:
    """Shared dict conversion of the config dataclasses."""

    @classmethod
    def from_dict(cls, data: Any, path: str = ""):
        check_keys(path, data, [f.name for f in dataclasses.fields(cls)],
                   [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING])
        with wrap_errors(path):
            return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, _Config):
                v = v.to_dict()
            elif isinstance(v, BinarizeConfig):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = [x.to_dict() if isinstance(x, _Config) else x for x in v]
            elif isinstance(v, dict):
                v = dict(v)
            out[f.name] = v
        return out

    def _set(self, key: str, value: Any) -> None:
        object.__setattr__(self, key, value)

    def _set_nested(self, key: str, cls: type["_Config"], expected: str) -> None:
        """Field ``key`` as a ``cls``: a mapping is converted (errors prefixed with ``key``), an
        instance kept, anything else refused with "must be {expected}"."""
        value = getattr(self, key)
        if isinstance(value, dict):
            value = cls.from_dict(value, key)
        elif not isinstance(value, cls):
            raise ConfigError(key, f"must be {expected}, got {value!r}")
        self._set(key, value)


@dataclass(frozen=True)
class ModelConfig(_Config):
    """Which registered model to build; ``num_classes`` None takes the dataset's class count."""

    name: str
    num_classes: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ..models import list_models

        check_choice("name", self.name, list_models())
        check_int("num_classes", self.num_classes, minimum=1, none=True)
        self._set("kwargs", dict(check_mapping("kwargs", self.kwargs if self.kwargs is not None else {})))


@dataclass(frozen=True)
class DataConfig(_Config):
    """Dataset and batching; ``subset`` keeps the first N training and N test examples."""

    dataset: str = "cifar10"
    data_dir: str | None = None
    batch_size: int = 256
    eval_batch_size: int = 512
    augment: bool = True
    drop_last: bool = False
    subset: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None
    skip_corrupt: bool = False

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, DATASETS)
        check_str("data_dir", self.data_dir, none=True)
        check_str("cache_dir", self.cache_dir, none=True)
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("eval_batch_size", self.eval_batch_size, minimum=1)
        check_int("subset", self.subset, minimum=1, none=True)
        for key in ("augment", "drop_last", "skip_corrupt"):
            check_bool(key, getattr(self, key))
        self._set("options", dict(check_mapping("options", self.options if self.options is not None else {})))


@dataclass(frozen=True)
class TaskConfig(_Config):
    """The loss of a stage: plain classification, distillation from a teacher (``previous`` =
    the previous stage's final model, or a checkpoint path), per-pixel segmentation (``dice``:
    weight of the Dice term, null = 0) or CenterNet detection."""

    name: str = "classification"
    teacher: str | None = None
    alpha: float = 0.5
    temperature: float = 4.0
    dice: float | None = None

    def __post_init__(self) -> None:
        check_choice("name", self.name, TASKS)
        check_str("teacher", self.teacher, none=True)
        check_number("alpha", self.alpha, minimum=0.0, maximum=1.0)
        check_number("temperature", self.temperature, minimum=0.0, strict_min=True)
        if self.name == "distillation" and self.teacher is None:
            raise ConfigError("teacher", "distillation needs a teacher: 'previous' (the previous stage's "
                                         "final model) or a checkpoint path")
        if self.name != "distillation" and self.teacher is not None:
            raise ConfigError("teacher", "only the distillation task takes a teacher; set name: distillation")
        check_number("dice", self.dice, minimum=0.0, none=True)
        if self.dice is not None and self.name != "segmentation":
            raise ConfigError("dice", f"the Dice weight belongs to the segmentation task, not {self.name}")


@dataclass(frozen=True, kw_only=True)
class StageConfig(_Config):
    """One training stage: optimizer, schedule, loss, binarization overrides, initialisation."""

    epochs: int
    lr: float
    name: str | None = None
    max_steps: int | None = None
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    weight_decay_on: str = "all"
    lr_schedule: str = "cosine"
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    tau: float = 0.0
    grad_clip: float | None = None
    binarize: dict[str, Any] = field(default_factory=dict)
    full_precision: bool = False
    init_from: str | None = "previous"
    task: TaskConfig = field(default_factory=TaskConfig)
    bop: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, minimum=1)
        check_number("lr", self.lr, minimum=0.0)
        check_str("name", self.name, none=True)
        check_int("max_steps", self.max_steps, minimum=1, none=True)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_number("momentum", self.momentum, minimum=0.0, maximum=1.0, strict_max=True)
        check_bool("nesterov", self.nesterov)
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ConfigError("nesterov", "needs optimizer sgd with momentum > 0")
        betas = self.betas
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise ConfigError("betas", f"must be a list of two numbers in [0, 1), got {betas!r}")
        for i, b in enumerate(betas):
            check_number(f"betas.{i}", b, minimum=0.0, maximum=1.0, strict_max=True)
        self._set("betas", tuple(float(b) for b in betas))
        check_number("eps", self.eps, minimum=0.0, strict_min=True)
        check_number("weight_decay", self.weight_decay, minimum=0.0)
        check_choice("weight_decay_on", self.weight_decay_on, WEIGHT_DECAY_ON)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_number("warmup_epochs", self.warmup_epochs, minimum=0.0)
        if self.warmup_epochs > self.epochs:
            raise ConfigError("warmup_epochs", f"must be <= epochs ({self.epochs}), got {self.warmup_epochs}")
        check_number("min_lr", self.min_lr, minimum=0.0)
        if self.min_lr > self.lr:
            raise ConfigError("min_lr", f"must be <= lr ({self.lr}), got {self.min_lr}")
        check_number("label_smoothing", self.label_smoothing, minimum=0.0, maximum=1.0, strict_max=True)
        check_number("tau", self.tau, minimum=0.0)
        check_number("grad_clip", self.grad_clip, minimum=0.0, strict_min=True, none=True)
        self._set("binarize", dict(check_mapping("binarize", self.binarize if self.binarize is not None else {})))
        check_bool("full_precision", self.full_precision)
        check_str("init_from", self.init_from, none=True)
        if self.init_from in ("none", "null", ""):
            self._set("init_from", None)
        self._set_nested("task", TaskConfig, "a mapping with keys name, teacher, alpha, temperature, dice")
        self._set("bop", check_bop(self.bop))
        if self.bop is not None and self.optimizer != "bop":
            raise ConfigError("bop", f"Bop settings need optimizer bop (this stage uses {self.optimizer})")


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass(frozen=True, kw_only=True)
class RunConfig(_Config):
    """A whole training run: model, binarization, data, stages and runtime settings."""

    model: ModelConfig
    stages: tuple[StageConfig, ...]
    name: str = "run"
    description: str = ""
    binarize: BinarizeConfig | None = None
    data: DataConfig = field(default_factory=DataConfig)
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    checkpoint_every_steps: int | None = None
    keep_checkpoints: int = 2
    omega0_init: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_str("name", self.name)
        if not isinstance(self.description, str):
            raise ConfigError("description", f"must be a string, got {self.description!r}")
        if isinstance(self.model, str):
            self._set("model", {"name": self.model})
        self._set_nested("model", ModelConfig, "a mapping with keys name, num_classes, kwargs")
        if isinstance(self.binarize, dict):
            with wrap_errors("binarize"):
                self._set("binarize", BinarizeConfig.from_dict(self.binarize))
        elif self.binarize is not None and not isinstance(self.binarize, BinarizeConfig):
            raise ConfigError("binarize", f"must be a mapping (a BinarizeConfig) or null for a full-precision "
                                          f"model, got {self.binarize!r}")
        self._set_nested("data", DataConfig, "a mapping")
        self._set("stages", self._check_stages(self.stages))
        check_choice("precision", self.precision, PRECISIONS)
        check_bool("channels_last", self.channels_last)
        check_bool("compile", self.compile)
        check_bool("sync_bn", self.sync_bn)
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise ConfigError("device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.precision == "amp" and self.device == "cpu":
            raise ConfigError("precision", "amp (float16 + GradScaler) needs a CUDA device; use bf16 on CPU")
        check_int("threads", self.threads, minimum=1, none=True)
        check_int("seed", self.seed, minimum=0)
        check_int("checkpoint_every_steps", self.checkpoint_every_steps, minimum=1, none=True)
        check_int("keep_checkpoints", self.keep_checkpoints, minimum=1)
        flexible = None
        if self.omega0_init is not None:
            from ..analysis.flexible_init import FlexibleInit

            check_mapping("omega0_init", self.omega0_init)
            with wrap_errors("omega0_init"):
                flexible = FlexibleInit.from_dict(dict(self.omega0_init))
            self._set("omega0_init", flexible.to_dict())
            if self.binarize is None:
                raise ConfigError("omega0_init", "needs a binarized model with BiPer weights (binarize is null)")
        # Derived once here, trusted downstream (not fields: not in to_dict, not compared).
        object.__setattr__(self, "flexible_init", flexible)
        merged = []
        for i in range(len(self.stages)):
            with wrap_errors(f"stages.{i}.binarize"):
                merged.append(self._merge_binarize(i))
        object.__setattr__(self, "_stage_binarize", tuple(merged))

    def _check_stages(self, stages: Any) -> tuple[StageConfig, ...]:
        if not isinstance(stages, (list, tuple)) or not stages:
            raise ConfigError("stages", f"must be a non-empty list of stage mappings, got {stages!r}")
        out = []
        for i, stage in enumerate(stages):
            if isinstance(stage, dict):
                stage = StageConfig.from_dict(stage, f"stages.{i}")
            elif not isinstance(stage, StageConfig):
                raise ConfigError(f"stages.{i}", f"must be a mapping, got {stage!r}")
            if stage.name is None:
                stage = dataclasses.replace(stage, name=f"stage{i + 1}")
            teacher = stage.task.teacher
            if teacher == "previous" and i == 0:
                raise ConfigError(f"stages.{i}.task.teacher", "'previous' needs an earlier stage; give a "
                                                              "checkpoint path for the first stage")
            out.append(stage)
        names = [s.name for s in out]
        for i, n in enumerate(names):
            if names.index(n) != i:
                raise ConfigError(f"stages.{i}.name", f"duplicate stage name {n!r}; names must be unique")
        return tuple(out)

    # -- derived views ------------------------------------------------------------------------
    def stage_binarize(self, index: int) -> BinarizeConfig | None:
        """The binarize config of stage ``index``: the run's merged with the stage's overrides;
        None for a full-precision stage (run ``binarize: null`` or stage ``full_precision``),
        whose overrides are then unused, so ``binarize=null`` turns any recipe into its float
        reference. Merged and validated once, when the config is made."""
        return self._stage_binarize[index]

    def with_num_classes(self, num_classes: int) -> "RunConfig":
        """This config with ``model.num_classes`` set (the other parts are not validated again)."""
        out = copy.copy(self)
        object.__setattr__(out, "model", dataclasses.replace(self.model, num_classes=num_classes))
        return out

    def _merge_binarize(self, index: int) -> BinarizeConfig | None:
        stage = self.stages[index]
        if self.binarize is None or stage.full_precision:
            return None
        if not stage.binarize:
            return self.binarize
        return BinarizeConfig.from_dict(deep_merge(self.binarize.to_dict(), stage.binarize))

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["binarize"] = None if self.binarize is None else self.binarize.to_dict()
        for stage in out["stages"]:
            stage["betas"] = list(stage["betas"])
        return out

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> "RunConfig":
        check_mapping(path or "config", data)
        return super().from_dict(data, path)
