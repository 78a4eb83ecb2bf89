"""Vision transformers (ViT / DeiT) for the ProxConnect++ transformer experiments.

A standard pre-norm ViT (Dosovitskiy et al. 2021, DeiT: Touvron et al. 2021): a patch
embedding (a ``patch_size`` stride-``patch_size`` conv), a class token and learned position
embeddings, ``depth`` blocks ::

    x = x + proj(attention(qkv(LN1(x))))       # multi-head self-attention
    x = x + fc2(GELU(fc1(LN2(x))))             # MLP, hidden = mlp_ratio * dim

then a final LayerNorm and a linear head on the class token. ProxConnect++ binarizes the
weights of the Linear layers inside the blocks (``qkv``, ``proj``, ``fc1``, ``fc2``) and keeps
embeddings, LayerNorms and the head in full precision: with `create_model(..., binarize=...)`
the patch-embedding conv is the first layer and the head the last (kept by the config's
``keep_first`` / ``keep_last``), LayerNorms are never converted. For weight-only binarization
as in the paper use a config with ``input_quantizer=None``.

``vit_tiny`` is DeiT-Ti (dim 192, depth 12, 3 heads, MLP 4x, 5.72M parameters at 224x224 /
patch 16); ``img_size`` and ``patch_size`` adapt it to small images (e.g. 32 and 4 for
CIFAR-10); ``vit_mini`` (dim 128, depth 6, 4 heads, 32x32 / patch 4) is small enough to train on
a CPU. Other sizes are one `VisionTransformer(...)` call away (DeiT-S: ``embed_dim=384,
num_heads=6``). There is no BatchNorm, so `conv_bn_pairs` is
empty.

Example::

    >>> import torch
    >>> from biper.models import create_model
    >>> vit = create_model("vit_tiny", num_classes=10, img_size=32, patch_size=4)
    >>> vit(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BiperError
from .common import BiperModel
from .registry import register_model

__all__ = ["Attention", "Mlp", "TransformerBlock", "VisionTransformer"]


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection and an output ``proj``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise BiperError(f"embed_dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, N, D)
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, -1))  # (B, N, 3, heads, D/heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)          # each (B, heads, N, D/heads)
        y = F.scaled_dot_product_attention(q, k, v)             # (B, heads, N, D/heads)
        return self.proj(y.transpose(1, 2).flatten(2))          # (B, N, D)


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, N, D)
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: attention and MLP, each with a residual connection."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, N, D)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(BiperModel):
    """Patch embedding + class token + position embedding -> blocks -> LayerNorm -> head."""

    def __init__(self, num_classes: int = 1000, img_size: int = 224, patch_size: int = 16,
                 embed_dim: int = 192, depth: int = 12, num_heads: int = 3, mlp_ratio: float = 4.0):
        super().__init__()
        for key, value in (("img_size", img_size), ("patch_size", patch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BiperError(f"{key} must be a positive integer, got {value!r}")
        if img_size % patch_size:
            raise BiperError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.blocks = nn.Sequential(*[TransformerBlock(embed_dim, num_heads, mlp_ratio)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, num_classes)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)      # (B, 1, D)
        x = torch.cat([cls, x], dim=1) + self.pos_embed      # (B, N + 1, D)
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])                            # (B, num_classes)


@register_model(dataset="imagenet", input_size=(3, 224, 224), num_classes=1000, params=5_717_416)
def vit_tiny(*, num_classes: int = 1000, img_size: int = 224, patch_size: int = 16) -> VisionTransformer:
    """DeiT-Ti: ViT with dim 192, depth 12, 3 heads, MLP 4x; 5.72M params at 224/16."""
    return VisionTransformer(num_classes, img_size, patch_size, embed_dim=192, depth=12, num_heads=3)


@register_model(dataset="cifar10", input_size=(3, 32, 32), num_classes=10, params=1_205_898)
def vit_mini(*, num_classes: int = 10, img_size: int = 32, patch_size: int = 4) -> VisionTransformer:
    """A small ViT for CPU experiments: dim 128, depth 6, 4 heads, MLP 4x; 1.21M params at 32/4."""
    return VisionTransformer(num_classes, img_size, patch_size, embed_dim=128, depth=6, num_heads=4)
