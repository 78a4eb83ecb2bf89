"""A deterministic synthetic image dataset for tests and smoke runs.

Each class has a fixed random template (a smooth 4x4 colour pattern upsampled to ``size``); an
image is ``0.6 * template + 0.4 * noise`` in uint8. Templates depend only on ``seed``, noise on
(seed, split), so train and test share the classes and a small network learns them well above
chance within an epoch. Labels cycle ``0, 1, ..., num_classes - 1``.

Example::

    >>> ds = make_synthetic("train", num_classes=4, size=16, length=64)
    >>> ds.images.shape, ds.class_counts()
    (torch.Size([64, 3, 16, 16]), [16, 16, 16, 16])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from biper.data.dataset import ImageTensorDataset
from biper.data.loader import derive_seed
from biper.errors import BiperError

__all__ = ["make_synthetic", "SYNTHETIC_DEFAULT_LENGTH"]

SYNTHETIC_DEFAULT_LENGTH = {"train": 2000, "test": 500}


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BiperError(f"synthetic option {name} must be a positive integer, got {value!r}")
    return value


def make_synthetic(split: str, *, num_classes: int = 10, size: int = 32, length: int | None = None,
                   seed: int = 0) -> ImageTensorDataset:
    """``length`` images (default 2000 train / 500 test) of ``num_classes`` classes, size x size."""
    if split not in SYNTHETIC_DEFAULT_LENGTH:
        raise BiperError(f"split must be 'train' or 'test', got {split!r}")
    num_classes = _positive_int("num_classes", num_classes)
    size = _positive_int("size", size)
    length = _positive_int("length", SYNTHETIC_DEFAULT_LENGTH[split] if length is None else length)
    g = torch.Generator().manual_seed(derive_seed("synthetic-templates", seed))
    coarse = torch.rand(num_classes, 3, 4, 4, generator=g)             # (K, 3, 4, 4)
    templates = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(derive_seed("synthetic-noise", seed, split))
    labels = torch.arange(length) % num_classes                        # (N,)
    noise = torch.rand(length, 3, size, size, generator=g)             # (N, 3, S, S)
    images = (0.6 * templates[labels] + 0.4 * noise).mul(255).round().clamp(0, 255)
    return ImageTensorDataset(images.to(torch.uint8), labels,
                              [f"class{k}" for k in range(num_classes)],
                              source=f"synthetic(num_classes={num_classes}, size={size}, "
                                     f"length={length}, seed={seed})")
