"""The quantizer regulariser term every task adds to its loss.

``loss + tau * R(model)``, where ``R`` is the sum over binary layers of each weight quantizer's
regulariser (`biper.nn.regularization`; BiPer: ``mean sin^2(omega0 w)``, released CIFAR code).
With ``tau = 0`` ``R`` is not computed and reads as zero in the logs.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn import regularization

__all__ = ["add_regularizer"]


def add_regularizer(model: nn.Module, loss: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss + tau * R(model), R(model))``; ``(loss, 0)`` when ``tau`` is 0."""
    if tau == 0.0:
        return loss, loss.new_zeros(())
    reg = regularization(model).float()
    return loss + tau * reg, reg
