"""Image data for biper: decode once, keep uint8 tensors, augment whole batches.

Training a small binary network on CIFAR-10 on a CPU is only practical when data loading costs
next to nothing. This package decodes a dataset once (Pillow for JPEG/PNG folders and tars, a
restricted unpickler for the official CIFAR-10 batches), caches the uint8 arrays as ``.npy`` +
JSON (no pickle), and serves batches by indexing tensors and applying the random crop (zero
padding 4) and horizontal flip as one batched gather.

Public API (the trainer and CLI use exactly these):

``load_dataset(name, data_dir, split, *, subset=None, cache_dir=None, skip_corrupt=False,
progress=True, download=False, **options) -> ImageTensorDataset``
    ``name`` in :data:`DATASETS` = ("cifar10", "folder", "imagenet", "synthetic", "scenes",
    "coco"); ``split`` in
    "train", "test" ("val" is an alias of "test"). ``cifar10`` auto-detects the official
    archive / extracted folder or ``cifar10-jpeg.tar`` / extracted JPEG folder under
    ``data_dir``. ``folder`` reads class folders or a tar of them. ``imagenet`` returns a
    lazily decoding :class:`LazyImageFolder` with the same loader protocol. ``synthetic``
    takes ``num_classes=10, size=32, length=(2000 train / 500 test), seed=0``.
    ``subset=N`` keeps the first N examples of a round-robin over classes (first image of each
    class, then the second, ...), so N = k * num_classes gives k per class; kept examples stay
    in dataset order. Unknown names / splits / options raise ``BiperError`` listing the valid ones.
    ``scenes`` (CIFAR-10 objects on textured backgrounds, generated once and cached) and ``coco``
    (COCO-style JSON via pycocotools) return a :class:`DenseDataset` for segmentation or
    detection (option ``target="mask" | "boxes"``; ``subset=N`` keeps the first N images).

``DenseDataset``
    ``.images`` uint8 (N, 3, H, W), ``.masks`` uint8 (N, H, W) (0 background, c + 1 class c,
    255 ignore), ``.boxes`` float32 (N, M, 5) rows ``[cls, x0, y0, x1, y1]`` (x1/y1 exclusive,
    padding rows cls = -1), ``.classes``, ``.num_classes``, ``.task``, ``.max_objects``,
    ``fetch_pair(indices, augment=, generator=) -> (x uint8, y)`` with the flip/translation
    applied to image, mask and boxes alike; ``TensorLoader`` then yields ``(x, y)`` with that y.

``ImageTensorDataset``
    ``.images`` uint8 (N, 3, H, W), ``.labels`` int64 (N,), ``.classes`` list[str],
    ``.mean`` / ``.std`` per-channel floats in [0, 1] units, ``len()``, ``.subset(n)``,
    ``.skipped`` (paths skipped with ``skip_corrupt=True``).

``TensorLoader(dataset, batch_size, *, train, augment=True, seed=0, drop_last=False, rank=0,
world_size=1, channels_last=False, dtype=torch.float32, device=None)``
    Iterating yields ``(x, y)``: ``x`` (B, 3, H, W) normalised ``dtype``, ``y`` int64 (B,).
    ``set_epoch(epoch, start_batch=0)``: order = randperm from (seed, epoch) in every process;
    ``iter_from(b)`` / ``start_batch`` resume mid-epoch exactly (augmentation of batch b is
    seeded from (seed, epoch, rank, b)). ``world_size > 1``: each rank takes every
    world_size-th position of the epoch order, padded by wrap-around to equal length like
    ``DistributedSampler`` (``num_real`` = this rank's non-duplicate samples, which come
    first). ``len(loader)`` = batches per epoch on this rank.

Errors: a missing or empty folder, images outside class folders, a class with zero images, an
unreadable image (with its path; ``skip_corrupt=True`` skips and counts instead), a refused
pickle global, a checksum mismatch: all ``biper.errors.BiperError`` with a one-line message.

Example::

    >>> from biper.data import load_dataset, TensorLoader
    >>> train = load_dataset("cifar10", "../shared/data", "train")
    >>> loader = TensorLoader(train, 256, train=True, seed=0)
    >>> loader.set_epoch(0)
    >>> x, y = next(iter(loader))          # (256, 3, 32, 32) float32, (256,) int64
"""

from biper.data.augment import crop_flip, normalize, random_crop_flip
from biper.data.cifar import CIFAR10_MD5, CIFAR10_URL, download_cifar10, read_cifar10
from biper.data.dataset import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTensorDataset,
    balanced_order,
)
from biper.data.dense import DenseDataset
from biper.data.imagenet import LazyImageFolder
from biper.data.load import DATASETS, SPLITS, find_cifar10, load_dataset
from biper.data.loader import TensorLoader
from biper.data.synthetic import make_synthetic

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "DATASETS",
    "DenseDataset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLITS",
    "ImageTensorDataset",
    "LazyImageFolder",
    "TensorLoader",
    "balanced_order",
    "crop_flip",
    "download_cifar10",
    "find_cifar10",
    "load_dataset",
    "make_synthetic",
    "normalize",
    "random_crop_flip",
    "read_cifar10",
]
