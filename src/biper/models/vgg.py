"""VGG-small for CIFAR-10 (LQ-Nets / IR-Net / ReCU / BiPer): 4.66M parameters.

A full-precision conv0 (3 -> 128) with BN and activation, then five 3x3 convs
(128, 256, 256, 512, 512 output channels) that `create_model(..., binarize=...)` binarizes,
each followed by BatchNorm and Hardtanh; a 2x2 max-pool after conv1, conv3 and conv5; finally a
full-precision FC from the 512x4x4 feature map::

    conv0 bn0 act | conv1 bn1 pool act | conv2 bn2 act | conv3 bn3 pool act
                  | conv4 bn4 act | conv5 bn5 pool act | flatten fc

Order of pool and BN. The IR-Net/ReCU code applies the max-pool *between* conv and BN
(``bn(pool(conv(x)))``). By default this model puts BN first (``pool(bn(conv(x)))``), so that
every binary conv is followed directly by its BatchNorm and both fold into the conv at
deployment. With fixed statistics (evaluation) the two orders agree wherever the BN scale
``gamma / sqrt(var + eps)`` is non-negative, since max-pooling commutes with increasing affine
maps; in training the BN statistics differ (pooled vs full map). Parameters are identical. ``pool_before_bn=True`` restores the original order (those three convs then drop
out of `conv_bn_pairs`).

Example::

    >>> import torch
    >>> from biper.models import create_model
    >>> create_model("vgg_small_cifar")(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from .common import BiperModel, kaiming_init_, make_act
from .registry import register_model

__all__ = ["VGGSmall"]

WIDTHS = (128, 128, 256, 256, 512, 512)  # conv0 .. conv5 output channels
POOL_AFTER = (1, 3, 5)                   # convs followed by a 2x2 max-pool


class VGGSmall(BiperModel):
    """VGG-small: conv0 (FP) + five 3x3 convs + FC (FP); see the module docstring."""

    def __init__(self, num_classes: int = 10, act: str = "hardtanh", pool_before_bn: bool = False,
                 in_size: int = 32):
        super().__init__()
        cin = 3
        for i, width in enumerate(WIDTHS):
            setattr(self, f"conv{i}", nn.Conv2d(cin, width, 3, padding=1, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(width))
            setattr(self, f"act{i}", make_act(act))
            cin = width
        self.pool = nn.MaxPool2d(2, 2)
        self.pool_before_bn = pool_before_bn
        self._conv_bn = tuple((f"conv{i}", f"bn{i}") for i in range(len(WIDTHS))
                              if not (pool_before_bn and i in POOL_AFTER))
        side = in_size // 2 ** len(POOL_AFTER)
        self.fc = nn.Linear(WIDTHS[-1] * side * side, num_classes)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32) -> (B, num_classes)
        for i in range(len(WIDTHS)):
            conv, bn, act = getattr(self, f"conv{i}"), getattr(self, f"bn{i}"), getattr(self, f"act{i}")
            if i not in POOL_AFTER:
                x = act(bn(conv(x)))
            elif self.pool_before_bn:
                x = act(bn(self.pool(conv(x))))
            else:
                x = act(self.pool(bn(conv(x))))
        return self.fc(x.flatten(1))  # (B, 512 * 4 * 4) -> (B, num_classes)


@register_model(dataset="cifar10", input_size=(3, 32, 32), num_classes=10, params=4_660_000)
def vgg_small_cifar(*, num_classes: int = 10, act: str = "hardtanh",
                    pool_before_bn: bool = False) -> VGGSmall:
    """VGG-small for CIFAR-10: FP conv0, five binary 3x3 convs, max-pools, FP FC; 4.66M params."""
    return VGGSmall(num_classes, act, pool_before_bn)
