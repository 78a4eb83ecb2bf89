"""CIFAR ResNets of the BiPer paper: ResNet-20 (Bi-Real-style blocks) and ResNet-18.

Both use a full-precision 3x3 stem conv, option-A shortcuts (``AvgPool2d(2)`` + zero channel
padding, no parameters), global average pooling, ``BatchNorm1d`` before the full-precision FC,
and Hardtanh as block non-linearity (``act="relu"`` for a float baseline). Every 3x3 conv
inside the blocks is binarized by `create_model(..., binarize=...)`.

- ResNet-20 (16/32/64 channels, 3 blocks per stage, 0.27M parameters). As in BiPer's code
  (after Bi-Real Net) each block has *a shortcut around each conv*::

      h = act(bn1(conv1(x)) + shortcut(x))
      y = act(bn2(conv2(h)) + h)

  and the stem is followed by the activation.
- ResNet-18 (64..512 channels, [2, 2, 2, 2], 11.01M parameters), as in the ReCU / IR-Net code
  BiPer builds on: one shortcut per block and no activation after the stem::

      y = act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x))

Every binary conv is followed directly by its BatchNorm (`conv_bn_pairs`).

References: He et al., CVPR 2016 (CIFAR ResNets, option A); Liu et al., ECCV 2018 (Bi-Real);
Vargas et al., CVPR 2024 (BiPer).

Example::

    >>> import torch
    >>> from biper.models import create_model
    >>> create_model("resnet20_cifar")(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from .common import BiperModel, PadShortcut, kaiming_init_, make_act
from .registry import register_model

__all__ = ["BiRealBlock", "BasicBlock", "CifarResNet"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    return PadShortcut(cin, cout, stride) if stride != 1 or cin != cout else nn.Identity()


class _TwoConvBlock(nn.Module):
    """Two 3x3 conv + BN pairs, a shortcut and two activations; subclasses wire the forward."""

    _conv_bn = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, cin: int, cout: int, stride: int = 1, act: str = "hardtanh"):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)
        self.act1, self.act2 = make_act(act), make_act(act)


class BiRealBlock(_TwoConvBlock):
    """Two 3x3 convs, each with its own shortcut (BiPer's ResNet-20 block)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        h = self.act1(self.bn1(self.conv1(x)) + self.shortcut(x))
        return self.act2(self.bn2(self.conv2(h)) + h)


class BasicBlock(_TwoConvBlock):
    """Classic ResNet basic block with one shortcut around both 3x3 convs (CIFAR ResNet-18)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        h = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(h)) + self.shortcut(x))


class CifarResNet(BiperModel):
    """Stem conv 3x3 -> stages of blocks -> global average pool -> BN1d -> FC."""

    _conv_bn = (("conv1", "bn1"),)

    def __init__(self, block: type[nn.Module], depths: tuple[int, ...], widths: tuple[int, ...],
                 num_classes: int = 10, act: str = "hardtanh", stem_act: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act = make_act(act) if stem_act else nn.Identity()
        stages, cin = [], widths[0]
        for i, (depth, width) in enumerate(zip(depths, widths)):
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(cin, width, stride, act))
                cin = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            stages.append(f"layer{i + 1}")
        self.stages = tuple(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bn2 = nn.BatchNorm1d(cin)
        self.fc = nn.Linear(cin, num_classes)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, num_classes)
        x = self.act(self.bn1(self.conv1(x)))
        for name in self.stages:
            x = getattr(self, name)(x)
        x = self.pool(x).flatten(1)  # (B, C)
        return self.fc(self.bn2(x))


@register_model(dataset="cifar10", input_size=(3, 32, 32), num_classes=10, params=270_000)
def resnet20_cifar(*, num_classes: int = 10, act: str = "hardtanh") -> CifarResNet:
    """CIFAR ResNet-20 with Bi-Real-style blocks (BiPer), 16/32/64 channels, 0.27M params."""
    return CifarResNet(BiRealBlock, (3, 3, 3), (16, 32, 64), num_classes, act, stem_act=True)


@register_model(dataset="cifar10", input_size=(3, 32, 32), num_classes=10, params=11_010_000)
def resnet18_cifar(*, num_classes: int = 10, act: str = "hardtanh") -> CifarResNet:
    """CIFAR ResNet-18 (ReCU/IR-Net style), 64..512 channels, option-A shortcut, 11.01M params."""
    return CifarResNet(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), num_classes, act,
                       stem_act=False)
