"""Tasks: what a training step minimises, as objects the engine calls without branching.

A task turns ``(model, x, y)`` into ``(loss, logits, parts)`` where ``parts`` are scalar floats
for logging. The engine owns the loop, the optimizer and the precision context; the task owns
the loss, what a step counts (``train_counts(logits, y) -> (correct, count)``, ``train_metric``
its name or None), the test metrics (``evaluate(model, loader, ...) -> {"test_loss": ..., ...}``)
and the one that ranks epochs (``main_metric``). The dense tasks (segmentation, detection) are
in `biper.train.dense_tasks`.

- `ClassificationTask`: ``CE(model(x), y; label smoothing) + tau * R(model)`` where ``R`` is the
  quantizer regulariser (`biper.train.regularizer`; BiPer: ``mean sin^2(omega0 w)``).
- `DistillationTask` (Hinton et al. 2015): with teacher logits ``t``, student logits ``s`` and
  temperature ``T``::

      loss = (1 - alpha) CE(s, y) + alpha T^2 KL(softmax(t / T) || softmax(s / T)) + tau R

  The teacher is frozen and runs in eval mode without gradients.

Example::

    >>> task = ClassificationTask(label_smoothing=0.1, tau=0.037)
    >>> loss, logits, parts = task.loss(model, x, y)       # parts: ce, reg
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BiperError
from ..validate import wrap_errors
from .checkpoint import load_checkpoint
from .dense_tasks import DetectionTask, SegmentationTask
from .evaluate import evaluate
from .model import build_model_from_config, model_spec
from .regularizer import add_regularizer

__all__ = ["ClassificationTask", "DistillationTask", "build_task", "eval_task", "check_task_data", "data_task"]


class ClassificationTask:
    """Cross-entropy with optional label smoothing plus ``tau`` times the quantizer regulariser."""

    name = "classification"
    main_metric = "test_acc"
    train_metric = "acc"

    def __init__(self, *, label_smoothing: float = 0.0, tau: float = 0.0):
        self.label_smoothing = float(label_smoothing)
        self.tau = float(tau)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        logits = model(x)                                                   # (B, K)
        ce = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        loss, reg = add_regularizer(model, ce, self.tau)
        return loss, logits, {"ce": ce.detach(), "reg": reg.detach()}

    def to(self, device: torch.device) -> "ClassificationTask":
        return self

    @staticmethod
    def log_parts(parts: dict) -> dict[str, float]:
        """Loss parts kept per epoch beyond the loss and regulariser: none for classifiers."""
        return {}

    @staticmethod
    def train_counts(logits: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        """(correct top-1 predictions, examples) of a batch."""
        return int((logits.argmax(dim=1) == y).sum()), y.numel()

    @staticmethod
    def evaluate(model: nn.Module, loader, **kwargs) -> dict[str, float]:
        """``test_loss`` (mean CE) and ``test_acc`` (top-1 %) (`biper.train.evaluate.evaluate`)."""
        loss, acc = evaluate(model, loader, **kwargs)
        return {"test_loss": loss, "test_acc": acc}


class DistillationTask(ClassificationTask):
    """Soft-target knowledge distillation from a frozen ``teacher`` (see module docstring)."""

    def __init__(self, teacher: nn.Module, *, alpha: float = 0.5, temperature: float = 4.0,
                 label_smoothing: float = 0.0, tau: float = 0.0):
        super().__init__(label_smoothing=label_smoothing, tau=tau)
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.alpha = float(alpha)
        self.temperature = float(temperature)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        logits = model(x)                                                   # (B, K)
        with torch.no_grad():
            teacher_logits = self.teacher(x).float()                        # (B, K)
        s = logits.float()
        ce = F.cross_entropy(s, y, label_smoothing=self.label_smoothing)
        t = self.temperature
        kd = F.kl_div(F.log_softmax(s / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                      reduction="batchmean", log_target=True) * (t * t)
        loss, reg = add_regularizer(model, (1.0 - self.alpha) * ce + self.alpha * kd, self.tau)
        return loss, logits, {"ce": ce.detach(), "kd": kd.detach(), "reg": reg.detach()}

    def to(self, device: torch.device) -> "DistillationTask":
        self.teacher.to(device)
        return self


def build_task(config, index: int, teacher_state: Callable[[], dict], device: torch.device):
    """The task of stage ``index`` of run ``config`` on ``device``. A distillation teacher is
    the previous stage's model with weights ``teacher_state()``, or a checkpoint file."""
    stage = config.stages[index]
    if stage.task.name != "distillation":
        return _plain_task(stage)
    source = stage.task.teacher
    if source == "previous":
        teacher = build_model_from_config(model_spec(config, index - 1))
        teacher.load_state_dict(teacher_state())
    else:
        with wrap_errors(f"stages.{index}.task.teacher"):
            teacher = build_model_from_config(load_checkpoint(source))
    teacher.to(device)
    if config.channels_last:
        teacher.to(memory_format=torch.channels_last)
    return DistillationTask(teacher, alpha=stage.task.alpha, temperature=stage.task.temperature,
                            label_smoothing=stage.label_smoothing, tau=stage.tau).to(device)


def _plain_task(stage):
    name = stage.task.name
    if name == "segmentation":
        return SegmentationTask(dice=stage.task.dice or 0.0, tau=stage.tau)
    if name == "detection":
        return DetectionTask(tau=stage.tau)
    return ClassificationTask(label_smoothing=stage.label_smoothing, tau=stage.tau)


def eval_task(config):
    """The task that evaluates a run's final model (a distilled model is a classifier)."""
    stage = config.stages[-1]
    if stage.task.name == "distillation":
        return ClassificationTask()
    return _plain_task(stage)


def data_task(dataset) -> str:
    """What a dataset's targets are for: its ``task`` attribute, classification by default."""
    return getattr(dataset, "task", None) or "classification"


def check_task_data(config, dataset) -> None:
    """Refuse a stage whose task does not fit the dataset's targets (one clear line)."""
    have = data_task(dataset)
    for i, stage in enumerate(config.stages):
        want = "classification" if stage.task.name == "distillation" else stage.task.name
        if want != have:
            hint = {"segmentation": "scenes with target: mask", "detection": "scenes with target: boxes"}
            raise BiperError(f"stages.{i}.task.name: {stage.task.name} needs a {want} dataset, but "
                             f"data.dataset {config.data.dataset} gives {have} targets"
                             + (f" (use {hint[want]})" if want in hint else "")
                             + f"; set stages.{i}.task.name={have} or change the dataset")
