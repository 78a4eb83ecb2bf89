"""Tasks: what a training step minimises, as objects the engine calls without branching.

A task turns ``(model, x, y)`` into ``(loss, logits, parts)`` where ``parts`` are scalar floats
for logging. The engine owns the loop, the optimizer and the precision context; the task owns
the loss.

- `ClassificationTask`: ``CE(model(x), y; label smoothing) + tau * R(model)`` where ``R`` is the
  sum over binary layers of each weight quantizer's regulariser
  (`biper.nn.regularization`; BiPer: ``mean sin^2(omega0 w)``, released CIFAR code).
- `DistillationTask` (Hinton et al. 2015): with teacher logits ``t``, student logits ``s`` and
  temperature ``T``::

      loss = (1 - alpha) CE(s, y) + alpha T^2 KL(softmax(t / T) || softmax(s / T)) + tau R

  The teacher is frozen and runs in eval mode without gradients.

Example::

    >>> task = ClassificationTask(label_smoothing=0.1, tau=0.037)
    >>> loss, logits, parts = task.loss(model, x, y)       # parts: ce, reg
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import regularization

__all__ = ["ClassificationTask", "DistillationTask"]


class ClassificationTask:
    """Cross-entropy with optional label smoothing plus ``tau`` times the quantizer regulariser."""

    def __init__(self, *, label_smoothing: float = 0.0, tau: float = 0.0):
        self.label_smoothing = float(label_smoothing)
        self.tau = float(tau)

    def _regularizer(self, model: nn.Module, like: torch.Tensor) -> torch.Tensor:
        if self.tau == 0.0:
            return like.new_zeros(())
        return regularization(model).float()

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        logits = model(x)                                                   # (B, K)
        ce = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        reg = self._regularizer(model, ce)
        loss = ce + self.tau * reg if self.tau else ce
        return loss, logits, {"ce": ce.detach(), "reg": reg.detach()}

    def to(self, device: torch.device) -> "ClassificationTask":
        return self


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
        reg = self._regularizer(model, ce)
        loss = (1.0 - self.alpha) * ce + self.alpha * kd
        if self.tau:
            loss = loss + self.tau * reg
        return loss, logits, {"ce": ce.detach(), "kd": kd.detach(), "reg": reg.detach()}

    def to(self, device: torch.device) -> "DistillationTask":
        self.teacher.to(device)
        return self
