"""Batched tensor augmentation: random crop with zero padding and horizontal flip.

The CIFAR recipe (``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip``) applied to a whole
uint8 batch with one gather instead of a Python loop per image. For a batch ``x`` (B, C, H, W),
padding ``p``, per-sample offsets ``top, left`` in ``[0, 2p]`` and flip flags ``f``:

    out[b, c, i, j] = xp[b, c, top[b] + i, left[b] + (W - 1 - j if f[b] else j)]

where ``xp`` is ``x`` zero-padded by ``p`` on every side. Zero padding in uint8 is a black pixel,
exactly what torchvision's ``RandomCrop(padding=4)`` produces before normalisation.

All randomness comes from an explicit ``torch.Generator`` so a loader can seed it from
(seed, epoch, batch index) and replay any batch exactly.

Example::

    >>> x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    >>> crop_flip(x, torch.tensor([1]), torch.tensor([1]), torch.tensor([True]), 1)[0, 0, 0]
    tensor([3, 2, 1, 0], dtype=torch.uint8)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["crop_flip", "random_crop_flip", "normalize"]


def crop_flip(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor,
              padding: int) -> torch.Tensor:
    """Crop each sample of ``x`` (B, C, H, W) at (top, left) of its ``padding``-padded copy and
    mirror it horizontally where ``flip`` is True. Offsets lie in ``[0, 2 * padding]``."""
    b, c, h, w = x.shape
    dev = x.device
    if padding > 0:
        x = F.pad(x, (padding, padding, padding, padding))              # (B, C, H+2p, W+2p)
    top = top.to(dev, torch.int64)
    left = left.to(dev, torch.int64)
    flip = flip.to(dev, torch.bool)
    hp, wp = x.shape[2], x.shape[3]
    cols = torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], cols.flip(0)[None, :], cols[None, :])  # (B, W)
    cols = left[:, None] + cols                                         # (B, W)
    rows = top[:, None] + torch.arange(h, device=dev)[None, :]         # (B, H)
    flat = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w)  # (B, 1, H*W)
    out = torch.gather(x.reshape(b, c, hp * wp), 2, flat.expand(b, c, h * w))  # (B, C, H*W)
    return out.view(b, c, h, w)


def random_crop_flip(x: torch.Tensor, padding: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (zero padding ``padding``) + horizontal flip with probability 1/2, per sample.

    Draws, in this order, ``top``, ``left`` ~ U{0..2p} and ``flip`` ~ Bernoulli(1/2) from
    ``generator`` (on the CPU), so the same generator state gives the same batch.
    """
    b = x.shape[0]
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.randint(0, 2, (b,), generator=generator).bool()
    return crop_flip(x, top, left, flip, padding)


def normalize(x: torch.Tensor, mean, std, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B, C, H, W) -> ``dtype`` ``(x / 255 - mean) / std`` per channel."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    out = x.to(torch.float32).mul_(1.0 / 255).sub_(mean_t).div_(std_t)
    return out if dtype == torch.float32 else out.to(dtype)
