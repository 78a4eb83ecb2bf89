"""A tiny MLP for smoke tests and examples: Flatten -> [Linear -> BN1d -> act] x depth -> Linear.

With `create_model("mlp", binarize=...)` the first and last Linear stay full precision (the
config's ``keep_first`` / ``keep_last``) and the hidden ``depth - 1`` Linear layers become
binary. Each hidden Linear feeds only its ``BatchNorm1d`` (listed by `conv_bn_pairs`).
Defaults take a 3x8x8 image (192 inputs); ``in_features`` changes that.

Example::

    >>> import torch
    >>> from biper.models import create_model
    >>> create_model("mlp", binarize=True)(torch.randn(4, 3, 8, 8)).shape
    torch.Size([4, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import BiperError
from .common import BiperModel, make_act
from .registry import register_model

__all__ = ["MLP"]


class MLP(BiperModel):
    """``depth`` hidden layers of width ``hidden`` with BN1d and an activation, then a head."""

    def __init__(self, in_features: int = 192, hidden: int = 64, depth: int = 3,
                 num_classes: int = 10, act: str = "hardtanh"):
        super().__init__()
        for key, value in (("in_features", in_features), ("hidden", hidden), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BiperError(f"{key} must be a positive integer, got {value!r}")
        self.flatten = nn.Flatten()
        layers, width = [], in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), make_act(act)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, num_classes)
        self._conv_bn = tuple((f"body.{3 * i}", f"body.{3 * i + 1}") for i in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, num_classes)
        return self.head(self.body(self.flatten(x)))


@register_model(dataset="any", input_size=(3, 8, 8), num_classes=10, params=21_514)
def mlp(*, num_classes: int = 10, in_features: int = 192, hidden: int = 64, depth: int = 3,
        act: str = "hardtanh") -> MLP:
    """Tiny MLP for smoke tests: 192 -> 64 -> 64 -> 64 -> classes, BN1d + Hardtanh."""
    return MLP(in_features, hidden, depth, num_classes, act)
