"""Optimizers with weight-decay groups, and the per-step learning-rate schedule.

Weight decay applies to the parameters chosen by ``weight_decay_on``:

- ``all``: every parameter (BiPer's released CIFAR code);
- ``conv_linear``: only the ``weight`` of convolution and linear layers, binary ones included
  (BiPer's ImageNet setting "weight decay on conv/fc only"): no decay on BatchNorm, biases,
  scales ``alpha`` or learnable thresholds;
- ``no_bias_norm``: every parameter with more than one dimension (timm's convention for
  transformers): no decay on biases, norm weights and per-channel scales.

Learning rate at stage step ``s`` of ``S`` (``W`` warm-up steps, base ``lr``, floor ``m``)::

    warm-up   s < W:  lr * (s + 1) / W                               (linear, per step)
    cosine:         m + (lr - m) * (1 + cos(pi * t)) / 2,  t = (s - W) / (S - W)
    linear:         lr - (lr - m) * t
    constant:       lr

so the cosine reaches ``m`` (0 by default) at the end of the stage, as in the released code.
``W = round(S * warmup_epochs / epochs)``: truncating a stage with ``max_steps`` compresses the
whole schedule, warm-up included.

Example::

    >>> sched = LRSchedule(lr=0.1, total_steps=100, warmup_steps=10, kind="cosine")
    >>> round(sched(0), 3), round(sched(9), 3), round(sched(10), 3), round(sched(100), 3)
    (0.01, 0.1, 0.1, 0.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import StageConfig

__all__ = ["LRSchedule", "param_groups", "build_optimizer", "set_lr"]


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate as a pure function of the stage step (resumes exactly)."""

    lr: float
    total_steps: int
    warmup_steps: int = 0
    kind: str = "cosine"
    min_lr: float = 0.0

    @classmethod
    def for_stage(cls, stage: StageConfig, total_steps: int) -> "LRSchedule":
        warmup = int(round(total_steps * stage.warmup_epochs / stage.epochs))
        return cls(stage.lr, total_steps, min(warmup, total_steps), stage.lr_schedule, stage.min_lr)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.lr
        span = max(self.total_steps - self.warmup_steps, 1)
        t = min(max((step - self.warmup_steps) / span, 0.0), 1.0)
        if self.kind == "linear":
            return self.lr - (self.lr - self.min_lr) * t
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


_CONV_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def param_groups(model: nn.Module, weight_decay: float, on: str = "all") -> list[dict]:
    """Parameter groups ``[{params, weight_decay}, {params, weight_decay: 0}]`` (empty dropped)."""
    if on == "all":
        decay = [p for p in model.parameters() if p.requires_grad]
        return [{"params": decay, "weight_decay": weight_decay}] if decay else []
    if on == "conv_linear":
        chosen = {id(m.weight) for m in model.modules()
                  if isinstance(m, _CONV_LINEAR) and isinstance(getattr(m, "weight", None), nn.Parameter)}
        is_decay = lambda p: id(p) in chosen  # noqa: E731
    elif on == "no_bias_norm":
        is_decay = lambda p: p.dim() > 1  # noqa: E731
    else:
        raise ValueError(f"weight_decay_on must be all, conv_linear or no_bias_norm, got {on!r}")
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if is_decay(p) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, stage: StageConfig) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov), Adam or AdamW over `param_groups`, learning rate ``stage.lr``;
    ``bop``: `biper.train.bop.build_bop` (Bop for binary weights, a float optimizer for the rest)."""
    groups = param_groups(model, stage.weight_decay, stage.weight_decay_on)
    if stage.optimizer == "bop":
        from .bop import build_bop

        return build_bop(model, stage, groups)
    if stage.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=stage.lr, momentum=stage.momentum, nesterov=stage.nesterov)
    if stage.optimizer == "adam":
        # torch's Adam adds weight decay to the gradient (L2); AdamW decouples it
        return torch.optim.Adam(groups, lr=stage.lr, betas=stage.betas, eps=stage.eps)
    return torch.optim.AdamW(groups, lr=stage.lr, betas=stage.betas, eps=stage.eps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
