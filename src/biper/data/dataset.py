"""In-memory image datasets as uint8 tensors.

A decoded dataset is two tensors: ``images`` (N, 3, H, W) uint8 and ``labels`` (N,) int64, plus
the class names and the per-channel mean/std used for normalisation. Keeping the pixels as uint8
(CIFAR-10 train is 150 MB) lets a loader index, crop and flip whole batches with tensor ops, so
data loading costs a few milliseconds per batch instead of a Python loop per image (the airbench
design).

Subsets are taken in a fixed *round-robin over classes* order: the first example of every class
(in dataset order), then the second of every class, and so on. ``subset(N)`` keeps the first N
positions of that order, so N = k * num_classes gives exactly k images per class (fewer only for
classes that run out), and the kept examples stay in their original dataset order.

Example::

    >>> ds = ImageTensorDataset(torch.zeros(4, 3, 8, 8, dtype=torch.uint8),
    ...                         torch.tensor([0, 0, 1, 1]), ["a", "b"])
    >>> ds.subset(2).labels.tolist()
    [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from biper.data.augment import random_crop_flip
from biper.errors import BiperError

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageTensorDataset",
    "balanced_order",
    "channel_stats",
]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def balanced_order(labels: torch.Tensor) -> torch.Tensor:
    """Round-robin order over classes: k-th example of class 0, 1, ..., then the (k+1)-th.

    Within a class, examples keep their dataset order. Returns int64 indices (N,).
    """
    labels = labels.to(torch.int64)
    n = labels.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.int64)
    by_class = torch.sort(labels, stable=True).indices                 # (N,)
    sorted_labels = labels[by_class]
    counts = torch.bincount(sorted_labels)
    starts = torch.cumsum(counts, 0) - counts                          # (C,)
    rank = torch.empty(n, dtype=torch.int64)
    rank[by_class] = torch.arange(n) - starts[sorted_labels]           # position within class
    key = rank * (int(labels.max()) + 1) + labels
    return torch.sort(key, stable=True).indices


def channel_stats(images: torch.Tensor, chunk: int = 4096
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images (N, C, H, W), in [0, 1] units."""
    if images.numel() == 0:
        raise BiperError("cannot compute channel statistics of an empty dataset")
    c = images.shape[1]
    s1 = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].to(torch.float64)              # (b, C, H, W)
        s1 += x.sum(dim=(0, 2, 3))
        s2 += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s1 / count
    std = (s2 / count - mean * mean).clamp_min(0).sqrt()
    return (tuple(float(m) / 255 for m in mean), tuple(float(s) / 255 for s in std))


class ImageTensorDataset(torch.utils.data.Dataset):
    """Decoded images held as tensors.

    Attributes:
        images: uint8 (N, 3, H, W).
        labels: int64 (N,), values in ``range(len(classes))``.
        classes: class names; ``labels`` index into it.
        mean, std: per-channel floats in [0, 1] units used by the loader to normalise.
        source: where the data came from (for messages and run records).
        skipped: paths of unreadable images skipped while decoding (``skip_corrupt=True``).
        crop_padding: padding of the random-crop augmentation (4 for CIFAR).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], *,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 source: str = "", skipped: Sequence[str] = (), crop_padding: int = 4):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise BiperError(f"images must be a uint8 tensor (N, 3, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        labels = torch.as_tensor(labels).to(torch.int64)
        if labels.shape != (images.shape[0],):
            raise BiperError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        classes = [str(c) for c in classes]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
            raise BiperError(f"labels must lie in [0, {len(classes) - 1}] for {len(classes)} classes")
        if crop_padding < 0:
            raise BiperError(f"crop_padding must be >= 0, got {crop_padding}")
        self.images = images
        self.labels = labels
        self.classes = classes
        if mean is None or std is None:
            stat_mean, stat_std = channel_stats(images)
            mean = stat_mean if mean is None else mean
            std = stat_std if std is None else std
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise BiperError(f"mean/std must be 3 floats with std > 0, got {self.mean} / {self.std}")
        self.source = source
        self.skipped = list(skipped)
        self.crop_padding = int(crop_padding)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def __repr__(self) -> str:
        n, _, h, w = self.images.shape
        return (f"ImageTensorDataset(n={n}, size={h}x{w}, classes={len(self.classes)}, "
                f"source={self.source!r})")

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.images.shape[2], self.images.shape[3])

    def class_counts(self) -> list[int]:
        """Number of examples per class, in ``classes`` order."""
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()

    def subset(self, n: int) -> ImageTensorDataset:
        """First ``n`` examples of the round-robin class order, kept in dataset order."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise BiperError(f"subset must be a positive integer, got {n!r}")
        if n >= len(self):
            return self
        keep = torch.sort(balanced_order(self.labels)[:n]).values      # (n,)
        return ImageTensorDataset(self.images[keep], self.labels[keep], self.classes,
                                  mean=self.mean, std=self.std, source=self.source,
                                  skipped=self.skipped, crop_padding=self.crop_padding)

    def to(self, device: torch.device | str) -> ImageTensorDataset:
        """Same dataset with ``images`` and ``labels`` on ``device`` (augmentation runs there)."""
        out = ImageTensorDataset.__new__(ImageTensorDataset)
        out.__dict__.update(self.__dict__)
        out.images = self.images.to(device)
        out.labels = self.labels.to(device)
        return out

    def fetch(self, indices: torch.Tensor, *, augment: bool,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 batch (B, 3, H, W) for ``indices``; random crop (pad ``crop_padding``) + flip
        when ``augment``, with all randomness drawn from ``generator``."""
        x = self.images[indices.to(self.images.device)]                # (B, 3, H, W)
        if augment:
            x = random_crop_flip(x, self.crop_padding, generator)
        return x
