"""ImageNet ResNet-18 / ResNet-34 with Bi-Real blocks (BiPer, ReCU): 11.69M / 21.81M parameters.

Full-precision 7x7 stride-2 stem conv + BN + activation + 3x3 max-pool, four stages of
Bi-Real basic blocks (64, 128, 256, 512 channels; depths [2, 2, 2, 2] or [3, 4, 6, 3]), global
average pooling, ``BatchNorm1d`` and a full-precision FC. A Bi-Real block puts a shortcut
around *each* 3x3 conv::

    h = act(bn1(conv1(x)) + downsample(x))     # downsample = identity or FP 1x1 conv s2 + BN
    y = act(bn2(conv2(h)) + h)

`create_model(..., binarize=...)` binarizes every 3x3 conv inside the blocks; the 1x1
``downsample`` convs stay full precision (``fp_patterns``), as do the stem and the FC. The
activation is Hardtanh as in the released code (``act="relu"`` for a float baseline). Global
pooling is adaptive, so any input of at least 32x32 works (224x224 for the papers' figures).

References: Liu et al., ECCV 2018 (Bi-Real Net); Xu et al., ICCV 2021 (ReCU);
Vargas et al., CVPR 2024 (BiPer).

Example::

    >>> import torch
    >>> from biper.models import create_model
    >>> create_model("resnet18_imagenet", num_classes=5).eval()(torch.randn(1, 3, 64, 64)).shape
    torch.Size([1, 5])
"""

from __future__ import annotations

import torch
from torch import nn

from .common import BiperModel, kaiming_init_, make_act
from .registry import register_model

__all__ = ["BiRealBasicBlock", "ImageNetResNet"]


class BiRealBasicBlock(nn.Module):
    """Two 3x3 convs with a shortcut around each; FP 1x1 conv + BN when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1, act: str = "hardtanh"):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act1, self.act2 = make_act(act), make_act(act)
        pairs = [("conv1", "bn1"), ("conv2", "bn2")]
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(cout))
            pairs.append(("downsample.0", "downsample.1"))
        else:
            self.downsample = nn.Identity()
        self._conv_bn = tuple(pairs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        h = self.act1(self.bn1(self.conv1(x)) + self.downsample(x))
        return self.act2(self.bn2(self.conv2(h)) + h)


class ImageNetResNet(BiperModel):
    """Stem 7x7/2 + max-pool -> four stages of Bi-Real blocks -> avg pool -> BN1d -> FC."""

    fp_patterns = ("*downsample*",)
    _conv_bn = (("conv1", "bn1"),)

    def __init__(self, depths: tuple[int, ...], num_classes: int = 1000, act: str = "hardtanh",
                 widths: tuple[int, ...] = (64, 128, 256, 512)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act = make_act(act)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin, stages = widths[0], []
        for i, (depth, width) in enumerate(zip(depths, widths)):
            blocks = [BiRealBasicBlock(cin if j == 0 else width, width,
                                       2 if i > 0 and j == 0 else 1, act) for j in range(depth)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            stages.append(f"layer{i + 1}")
            cin = width
        self.stages = tuple(stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.bn2 = nn.BatchNorm1d(cin)
        self.fc = nn.Linear(cin, num_classes)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, num_classes)
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        for name in self.stages:
            x = getattr(self, name)(x)
        x = self.avgpool(x).flatten(1)  # (B, 512)
        return self.fc(self.bn2(x))


@register_model(dataset="imagenet", input_size=(3, 224, 224), num_classes=1000, params=11_690_000)
def resnet18_imagenet(*, num_classes: int = 1000, act: str = "hardtanh") -> ImageNetResNet:
    """ImageNet ResNet-18 with Bi-Real blocks, FP downsample/stem/FC; 11.69M params."""
    return ImageNetResNet((2, 2, 2, 2), num_classes, act)


@register_model(dataset="imagenet", input_size=(3, 224, 224), num_classes=1000, params=21_810_000)
def resnet34_imagenet(*, num_classes: int = 1000, act: str = "hardtanh") -> ImageNetResNet:
    """ImageNet ResNet-34 with Bi-Real blocks, FP downsample/stem/FC; 21.81M params."""
    return ImageNetResNet((3, 4, 6, 3), num_classes, act)
