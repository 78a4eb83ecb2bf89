"""Building blocks shared by the model zoo: the model base class, activations, option-A shortcut.

Every model in `biper.models` is written with plain ``nn.Conv2d`` / ``nn.Linear`` and becomes a
binary network only through `biper.binarize_` (called by `create_model`). Two pieces of metadata
make that conversion and the later deployment exact:

- ``fp_patterns``: fnmatch patterns of layers the papers keep in full precision *inside* the
  network (e.g. ImageNet ResNets' 1x1 ``downsample`` convs). `create_model` adds them to the
  config's ``exclude``. The stem conv and the classifier are kept full precision by the config's
  ``keep_first`` / ``keep_last`` (both true by default).
- ``conv_bn_pairs()``: ``[(conv_name, bn_name), ...]`` for every conv (or linear) whose output
  feeds *only* the BatchNorm right after it, so that BN (and a binary layer's scale) can be
  folded into that layer at deployment. Blocks declare their own pairs in ``_conv_bn`` with
  names relative to the block; the model collects them with full names. The list covers full
  precision convs too (e.g. the stem); filter with `biper.nn.is_binary_layer` if needed.

Option-A shortcut (He et al. 2016, as in BiPer's CIFAR code): ``AvgPool2d(2)`` followed by zero
padding of the new channels, split evenly in front and behind: no parameters at all.

Example::

    >>> import torch
    >>> from biper.models.common import PadShortcut
    >>> PadShortcut(16, 32, stride=2)(torch.ones(1, 16, 8, 8)).shape
    torch.Size([1, 32, 4, 4])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BiperError

__all__ = ["ACTIVATIONS", "BiperModel", "PadShortcut", "make_act", "kaiming_init_"]

ACTIVATIONS = ("hardtanh", "relu")


def make_act(act: str) -> nn.Module:
    """The block non-linearity by name: ``hardtanh`` (BiPer, binary nets) or ``relu`` (float)."""
    if act == "hardtanh":
        return nn.Hardtanh()
    if act == "relu":
        return nn.ReLU()
    raise BiperError(f"act must be one of {', '.join(ACTIVATIONS)}, got {act!r}")


class BiperModel(nn.Module):
    """Base class of the zoo: carries ``fp_patterns`` and collects ``conv_bn_pairs()``."""

    fp_patterns: tuple[str, ...] = ()
    _conv_bn: tuple[tuple[str, str], ...] = ()  # pairs of this module, names relative to it

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """(conv, bn) module names where the conv's output feeds only that BatchNorm."""
        pairs = []
        for prefix, module in self.named_modules():
            for conv, bn in getattr(module, "_conv_bn", ()):
                head = f"{prefix}." if prefix else ""
                pairs.append((head + conv, head + bn))
        return pairs


class PadShortcut(nn.Module):
    """Option-A shortcut: ``AvgPool2d(stride)`` then zero channels up to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        super().__init__()
        if out_channels < in_channels:
            raise BiperError(f"PadShortcut cannot shrink channels ({in_channels} -> {out_channels})")
        self.stride = stride
        self.pad_front = (out_channels - in_channels) // 2
        self.pad_back = out_channels - in_channels - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        if self.stride != 1:
            x = F.avg_pool2d(x, self.stride)
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_front}, {self.pad_back})"


def kaiming_init_(model: nn.Module) -> None:
    """Kaiming-normal init of every conv weight (as the BiPer/ReCU code); BN weight 1, bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
