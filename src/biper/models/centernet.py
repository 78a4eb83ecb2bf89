"""CenterNet-style anchor-free detector on the CIFAR ResNet-20 encoder: ``centernet_resnet20``.

Backbone: the ResNet-20 encoder of `biper.models.segnet` with a stride-2 stem, so its three
stages (16 / 32 / 64 channels) run at strides 2 / 4 / 8; one `UpBlock` (nearest x2 upsampling,
concatenation with the stride-4 stage, two 3x3 conv/BN pairs) brings the stride-8 features
back to the output stride ``model.stride = 4``. Three full-precision heads, each a 3x3 conv
(``head_channels``, with bias) + ReLU + 1x1 conv, predict per output cell:

- ``heatmap``: ``num_classes`` centre logits (sigmoid -> centre probability); the last bias is
  initialised to -2.19 (prior 0.1) as in CenterNet;
- ``size``: box width and height, *linear, in input pixels*;
- ``offset``: sub-cell centre offset (x, y) in output-cell units, in [0, 1) for the targets.

Forward returns ONE tensor ``(B, num_classes + 4, H/4, W/4)``: channels ``[0:K]`` heatmap
logits, ``[K:K+2]`` size (w, h), ``[K+2:K+4]`` offset (x, y). Box decoding, targets and the
loss are in `biper.models.detection`. With ``binarize=`` the 18 encoder and 2 decoder 3x3
convs become binary; the stem and the heads (``fp_patterns``) stay full precision.

Reference: Zhou et al., "Objects as Points", 2019.

Example::

    >>> import torch
    >>> from biper.models import create_model
    >>> create_model("centernet_resnet20")(torch.randn(1, 3, 64, 64)).shape
    torch.Size([1, 14, 16, 16])
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import BiperError
from .common import BiperModel, kaiming_init_
from .registry import register_model
from .segnet import ResNetEncoder, UpBlock, check_act

__all__ = ["CenterNet", "HEATMAP_PRIOR_BIAS"]

HEATMAP_PRIOR_BIAS = -2.19  # sigmoid(-2.19) ~ 0.1, CenterNet's initial centre probability


def _head(cin: int, mid: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, mid, 3, padding=1, bias=True), nn.ReLU(), nn.Conv2d(mid, cout, 1))


class CenterNet(BiperModel):
    """ResNet encoder (stem stride 2) + one UpBlock to stride 4 + heatmap / size / offset heads."""

    fp_patterns = ("encoder.conv1", "heads.*")

    def __init__(self, num_classes: int = 10, act: str = "hardtanh", head_channels: int = 32):
        super().__init__()
        widths = (16, 32, 64)
        self.encoder = ResNetEncoder((3, 3, 3), widths, act, stem_stride=2)
        self.up = UpBlock(widths[2], widths[1], act)
        self.heads = nn.ModuleDict({"heatmap": _head(widths[1], head_channels, num_classes),
                                    "size": _head(widths[1], head_channels, 2),
                                    "offset": _head(widths[1], head_channels, 2)})
        self.num_classes = num_classes
        self.stride = 4
        kaiming_init_(self)
        for name, head in self.heads.items():
            nn.init.zeros_(head[0].bias)
            nn.init.constant_(head[2].bias, HEATMAP_PRIOR_BIAS if name == "heatmap" else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, K + 4, H/4, W/4)
        _, s4, s8 = self.encoder(x)
        y = self.up(s8, s4)
        return torch.cat([self.heads["heatmap"](y), self.heads["size"](y), self.heads["offset"](y)], 1)


@register_model(dataset="scenes", input_size=(3, 64, 64), num_classes=10, params=334_270)
def centernet_resnet20(*, num_classes: int = 10, act: str = "hardtanh", head_channels: int = 32) -> CenterNet:
    """CenterNet on the ResNet-20 encoder (strides 2/4/8), output stride 4, 0.33M params."""
    if isinstance(head_channels, bool) or not isinstance(head_channels, int) or head_channels < 1:
        raise BiperError(f"head_channels must be a positive integer, got {head_channels!r}")
    return CenterNet(num_classes, check_act(act), head_channels)
