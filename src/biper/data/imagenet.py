"""ImageNet-style class folders decoded lazily, batch by batch.

``<data_dir>/train/<wnid>/*.JPEG`` and ``<data_dir>/val/<wnid>/*.JPEG`` are too big to hold as
uint8 tensors, so :class:`LazyImageFolder` keeps the file list and decodes each batch on demand
with Pillow in a small thread pool (Pillow releases the GIL while decoding). Labels index the
sorted class folders of ``train`` for both splits, so train and val labels agree.

Transforms (the standard ImageNet recipe, as in torchvision):

- train: RandomResizedCrop(image_size, scale=(0.08, 1), ratio=(3/4, 4/3)) + horizontal flip.
  For each image, up to 10 attempts draw an area fraction s ~ U(0.08, 1) and a log aspect ratio
  ~ U(log 3/4, log 4/3); the first box that fits is cropped at a uniform position, otherwise the
  central crop with the ratio clamped to [3/4, 4/3]. The box is cropped, then resized
  (bilinear), as torchvision does.
- eval: resize the short side to ``resize_size`` (256; long side truncated), center crop
  ``image_size`` (224), with torchvision's ``Resize`` + ``CenterCrop`` rounding.

All random numbers are drawn from the loader's generator in the calling thread, so batches are
reproducible whatever the thread count. torchvision is not needed.

Example::

    >>> ds = load_dataset("imagenet", "/data/imagenet", "train", workers=8)
    >>> loader = TensorLoader(ds, 256, train=True)     # x (256, 3, 224, 224)
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from biper.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from biper.data.folder import index_folder
from biper.data.images import CorruptImage, require_pillow, resize_center_crop
from biper.data.progress import notice
from biper.errors import BiperError

__all__ = ["LazyImageFolder", "open_imagenet"]

_ATTEMPTS = 10
_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))


def _rrc_box(w: int, h: int, u: np.ndarray) -> tuple[int, int, int, int]:
    """RandomResizedCrop box (left, top, right, bottom) from uniforms ``u`` (ATTEMPTS, 4)."""
    area = w * h
    for s, r, ut, ul in u:
        target = area * (0.08 + s * (1 - 0.08))
        ratio = math.exp(_LOG_RATIO[0] + r * (_LOG_RATIO[1] - _LOG_RATIO[0]))
        cw = int(round(math.sqrt(target * ratio)))
        ch = int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            top = min(int(ut * (h - ch + 1)), h - ch)
            left = min(int(ul * (w - cw + 1)), w - cw)
            return left, top, left + cw, top + ch
    ratio = w / h                                                        # fallback: central crop
    if ratio < 3 / 4:
        cw, ch = w, int(round(w / (3 / 4)))
    elif ratio > 4 / 3:
        ch, cw = h, int(round(h * (4 / 3)))
    else:
        cw, ch = w, h
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


class LazyImageFolder(torch.utils.data.Dataset):
    """Image files decoded per batch; same loader protocol as ``ImageTensorDataset``."""

    def __init__(self, paths: list[str], labels: list[int], classes: list[str], *,
                 image_size: int = 224, resize_size: int = 256, workers: int | None = None,
                 skip_corrupt: bool = False, source: str = ""):
        self.paths = list(paths)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.classes = list(classes)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.image_size, self.resize_size = int(image_size), int(resize_size)
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.skip_corrupt = skip_corrupt
        self.skipped: list[str] = []
        self.source = source

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        arr = np.array(self._decode(index, None, False))                # (S, S, 3), writable
        return torch.from_numpy(arr).permute(2, 0, 1), int(self.labels[index])

    def subset(self, n: int) -> LazyImageFolder:
        from biper.data.dataset import balanced_order
        keep = torch.sort(balanced_order(self.labels)[:n]).values.tolist()
        out = LazyImageFolder([self.paths[i] for i in keep], self.labels[keep].tolist(),
                              self.classes, image_size=self.image_size,
                              resize_size=self.resize_size, workers=self.workers,
                              skip_corrupt=self.skip_corrupt, source=self.source)
        return out

    def _decode(self, index: int, u: np.ndarray | None, flip: bool) -> np.ndarray:
        Image = require_pillow()
        path = self.paths[index]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if u is None:
                    im = resize_center_crop(im, (self.image_size, self.image_size), self.resize_size)
                else:
                    im = im.crop(_rrc_box(*im.size, u))          # crop, then resize (torchvision)
                    im = im.resize((self.image_size, self.image_size), Image.BILINEAR)
                arr = np.asarray(im)                                    # (S, S, 3)
        except Exception as err:  # noqa: BLE001
            if not self.skip_corrupt:
                raise BiperError(f"cannot decode image {path}: {type(err).__name__}: {err}; pass "
                                 f"skip_corrupt=True (CLI --skip-corrupt) to skip it") from None
            if path not in self.skipped:
                self.skipped.append(path)
                notice(f"skipping unreadable image {path} (using the next image instead; "
                       f"{len(self.skipped)} skipped so far)")
            if len(self.skipped) >= len(self.paths):
                raise CorruptImage(f"no readable image in {self.source}") from None
            return self._decode((index + 1) % len(self.paths), u, flip)
        return arr[:, ::-1] if flip else arr

    def fetch(self, indices: torch.Tensor, *, augment: bool,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 batch (B, 3, S, S): RandomResizedCrop + flip when ``augment``, else center crop."""
        idx = indices.tolist()
        if augment:
            u = torch.rand(len(idx), _ATTEMPTS, 4, generator=generator, dtype=torch.float64).numpy()
            flips = torch.randint(0, 2, (len(idx),), generator=generator).tolist()
            jobs = [(i, u[k], bool(flips[k])) for k, i in enumerate(idx)]
        else:
            jobs = [(i, None, False) for i in idx]
        if self.workers > 1 and len(jobs) > 1:
            with ThreadPoolExecutor(self.workers) as pool:
                arrays = list(pool.map(lambda j: self._decode(*j), jobs))
        else:
            arrays = [self._decode(*j) for j in jobs]
        batch = np.stack(arrays)                                       # (B, S, S, 3)
        return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()  # (B, 3, S, S)


def open_imagenet(data_dir: str | os.PathLike, split: str, *, skip_corrupt: bool = False,
                  image_size: int = 224, resize_size: int = 256,
                  workers: int | None = None) -> LazyImageFolder:
    """Index ``<data_dir>/train`` or ``<data_dir>/val`` (class folders) without decoding."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise BiperError(f"ImageNet folder {data_dir} does not exist (expected "
                         f"{data_dir}/train/<wnid>/*.JPEG and {data_dir}/val/<wnid>/*.JPEG)")
    for name, value in (("image_size", image_size), ("resize_size", resize_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BiperError(f"imagenet option {name} must be a positive integer, got {value!r}")
    index = index_folder(data_dir, split)
    if not Path(index.root).parent.samefile(data_dir):
        raise BiperError(f"ImageNet folder {data_dir} must hold train/ and val/ class folders "
                         f"(the flat ILSVRC val/ needs the usual valprep script first)")
    train_root = data_dir / "train"
    classes = index.classes
    if split != "train" and train_root.is_dir():
        train_classes = sorted(p.name for p in train_root.iterdir()
                               if p.is_dir() and not p.name.startswith("."))
        if train_classes != classes:
            extra = sorted(set(classes) - set(train_classes))[:3]
            raise BiperError(f"class folders of {index.root} differ from {train_root} "
                             f"(e.g. {extra or 'missing classes'}); both splits need the same classes")
    return LazyImageFolder([e[0] for e in index.entries], index.labels, classes,
                           image_size=image_size, resize_size=resize_size, workers=workers,
                           skip_corrupt=skip_corrupt, source=index.root)
