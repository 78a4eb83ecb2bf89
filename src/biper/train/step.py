"""One optimisation step, shared by the engine and the training benchmark.

`train_step` sets the quantizers' progress and the learning rate, computes the task's loss under
the precision context, refuses a non-finite loss before touching the weights, then runs
backward (through the GradScaler when given), clips the gradient norm, steps the optimizer and
clips the latent weights. It returns the step's numbers; it keeps no state of its own.

Example::

    >>> r = train_step(model, ClassificationTask(), optimizer, x, y, progress=0.5, lr=0.1)
    >>> r.loss, r.correct, r.count
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..nn import clip_latent_weights_
from ..quantizers import set_progress
from .model import autocast_context
from .optim import set_lr
from .stops import NonFiniteLoss

__all__ = ["StepResult", "train_step"]


@dataclass(frozen=True)
class StepResult:
    """The numbers of one step: mean loss and regulariser, the task's correct predictions and
    what they are counted over (`train_counts`: examples, labelled pixels, ...), and the loss
    parts the task logs beyond ``ce`` and ``reg`` (detection: heatmap, size, offset)."""

    loss: float
    reg: float
    correct: int
    count: int
    parts: dict = field(default_factory=dict)


def train_step(model: nn.Module, task, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
               progress: float, lr: float, net: nn.Module | None = None, grad_clip: float | None = None,
               scaler: torch.amp.GradScaler | None = None, precision: str = "fp32",
               all_finite: Callable[[float], bool] | None = None, context: str = "") -> StepResult:
    """One step on batch ``(x, y)`` (already on the model's device).

    ``net`` is what runs the forward pass (a DDP or compiled wrapper of ``model``; default
    ``model``). ``all_finite(loss)`` decides whether to go on (default ``math.isfinite``; under
    DDP a collective so that every rank stops together). A non-finite loss raises
    `NonFiniteLoss` with ``context`` appended to its message, before any weight changes.
    """
    set_progress(model, progress)
    set_lr(optimizer, lr)
    with autocast_context(precision, x.device):
        loss, logits, parts = task.loss(net if net is not None else model, x, y)
    value = loss.item()
    if not (math.isfinite(value) if all_finite is None else all_finite(value)):
        shown = value if not math.isfinite(value) else "non-finite on another rank"
        raise NonFiniteLoss(f"loss is {shown}{context}")
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    clip_latent_weights_(model)
    correct, count = task.train_counts(logits.detach(), y)
    return StepResult(value, float(parts["reg"]), correct, count, task.log_parts(parts))
