"""U-Net-style segmentation network on the CIFAR ResNet-20 encoder: ``segnet_resnet20``.

Encoder: the ResNet-20 of `biper.models.resnet_cifar` without its pool and classifier: a
full-precision 3x3 stem (16 channels) + BN + act, then three stages of three Bi-Real blocks
(16 / 32 / 64 channels at strides 1 / 2 / 4). Decoder: two `UpBlock` steps back to the input
resolution (stride 4 -> 2 -> 1), each a nearest-neighbour x2 upsampling, concatenation with
the encoder's feature map of that resolution (U-Net skip) and two 3x3 conv + BN pairs in the
Bi-Real pattern, with the skip as the real-valued shortcut of the first conv::

    u = cat(upsample(x), skip)                  # (B, Cx + Cs, 2H, 2W)
    h = act(bn1(conv1(u)) + skip)               # conv1: Cx + Cs -> Cs
    y = act(bn2(conv2(h)) + h)

A full-precision 1x1 ``head`` maps the 16 channels to ``num_classes`` logits per pixel.

Output: logits ``(B, num_classes, H, W)`` at input resolution (H, W multiples of 4);
``num_classes`` counts the background class. With ``binarize=`` the 18 encoder and 4 decoder
3x3 convs become binary; the stem and ``head`` (both in ``fp_patterns``) stay full
precision. Upsampling and concatenation are parameter-free tensor ops, so the packed model
(`biper.deploy.pack_model`) has the same module tree with packed convolutions.

Example::

    >>> import torch
    >>> from biper.models import create_model
    >>> create_model("segnet_resnet20")(torch.randn(1, 3, 64, 64)).shape
    torch.Size([1, 11, 64, 64])
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import BiperError
from .common import BiperModel, kaiming_init_, make_act
from .registry import register_model
from .resnet_cifar import BiRealBlock

__all__ = ["ResNetEncoder", "UpBlock", "SegNet"]


class ResNetEncoder(nn.Module):
    """Stem conv (stride ``stem_stride``) + BN + act, then stages of Bi-Real blocks; returns the
    output of every stage (strides ``stem_stride * 2**i``)."""

    _conv_bn = (("conv1", "bn1"),)

    def __init__(self, depths: tuple[int, ...] = (3, 3, 3), widths: tuple[int, ...] = (16, 32, 64),
                 act: str = "hardtanh", stem_stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act = make_act(act)
        stages, cin = [], widths[0]
        for i, (depth, width) in enumerate(zip(depths, widths)):
            blocks = []
            for j in range(depth):
                blocks.append(BiRealBlock(cin, width, 2 if i > 0 and j == 0 else 1, act))
                cin = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            stages.append(f"layer{i + 1}")
        self.stages = tuple(stages)
        self.widths = tuple(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # (B, 3, H, W) -> per-stage maps
        x = self.act(self.bn1(self.conv1(x)))
        feats = []
        for name in self.stages:
            x = getattr(self, name)(x)
            feats.append(x)
        return feats


class UpBlock(nn.Module):
    """Nearest x2 upsampling + concat skip + two 3x3 conv/BN pairs (see the module docstring)."""

    _conv_bn = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, cin: int, cskip: int, act: str = "hardtanh"):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv1 = nn.Conv2d(cin + cskip, cskip, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cskip)
        self.conv2 = nn.Conv2d(cskip, cskip, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cskip)
        self.act1, self.act2 = make_act(act), make_act(act)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # (B, Cx, H, W), (B, Cs, 2H, 2W) -> (B, Cs, 2H, 2W)
        u = torch.cat([self.up(x), skip], 1)
        h = self.act1(self.bn1(self.conv1(u)) + skip)
        return self.act2(self.bn2(self.conv2(h)) + h)


class SegNet(BiperModel):
    """ResNet encoder + U-Net decoder back to input resolution + 1x1 full-precision head."""

    fp_patterns = ("encoder.conv1", "head")

    def __init__(self, num_classes: int = 11, act: str = "hardtanh",
                 depths: tuple[int, ...] = (3, 3, 3), widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        self.encoder = ResNetEncoder(depths, widths, act, stem_stride=1)
        ups = [UpBlock(widths[i + 1], widths[i], act) for i in reversed(range(len(widths) - 1))]
        self.decoder = nn.ModuleList(ups)
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, K, H, W)
        feats = self.encoder(x)
        y = feats[-1]
        for up, skip in zip(self.decoder, reversed(feats[:-1])):
            y = up(y, skip)
        return self.head(y)


def check_act(act: str) -> str:
    make_act(act)  # one-line error for an unknown name
    return act


@register_model(dataset="scenes", input_size=(3, 64, 64), num_classes=11, params=315_531)
def segnet_resnet20(*, num_classes: int = 11, act: str = "hardtanh") -> SegNet:
    """U-Net segmentation on the ResNet-20 encoder (16/32/64 ch, strides 1/2/4), 0.32M params."""
    if num_classes < 2:
        raise BiperError(f"segnet_resnet20 needs num_classes >= 2 (background included), got {num_classes}")
    return SegNet(num_classes, check_act(act))
