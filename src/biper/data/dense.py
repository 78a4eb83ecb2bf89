"""Dense-prediction datasets in memory: images with per-pixel masks and object boxes.

A :class:`DenseDataset` holds, for N images,

- ``images`` uint8 (N, 3, H, W);
- ``masks`` uint8 (N, H, W): 0 = background, ``c + 1`` = object class ``c``, 255 = ignore;
- ``boxes`` float32 (N, M, 5): rows ``[cls, x0, y0, x1, y1]`` in pixels, ``x1``/``y1`` exclusive
  (the box covers ``x0 <= x < x1``), ``cls`` in ``0..K-1``; unused rows are ``[-1, 0, 0, 0, 0]``
  and come after the used ones. M (``max_objects``) is fixed per dataset;
- optionally ``instances`` uint8 (N, H, W): 0 = background, ``k + 1`` = the object of box row k
  (for generated scenes, so boxes can be checked against the visible pixels), and ``objects``
  (N, M, C) int64 per-box records of a generator (one row per box row).

``target`` chooses what a batch's ``y`` is: ``"mask"`` -> int64 (B, H, W) (task
``"segmentation"``, ``classes`` = ``["background", *object classes]``) or ``"boxes"`` -> float32
(B, M, 5) (task ``"detection"``, ``classes`` = the object classes).

Augmentation (:meth:`DenseDataset.fetch_pair`) is one geometric transform per sample applied
identically to image, mask and boxes: a translation by up to ``pad`` pixels (the image is padded
with black, the mask with background, then cropped back at a random offset, as the
classification crop) and a horizontal flip with probability 1/2. Boxes are mapped by the same
formula, clipped to the image and dropped (set to the padding row) when nothing is left;
remaining rows are moved to the front. Random numbers are drawn in the order top, left, flip
from the caller's generator, like :func:`biper.data.augment.random_crop_flip`.

Example::

    >>> ds = DenseDataset(images, masks, boxes, ["cat", "dog"], target="boxes")
    >>> x, y = ds.fetch_pair(torch.arange(8), augment=False)    # uint8 (8,3,H,W), (8,M,5)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from biper.data.augment import crop_flip
from biper.data.dataset import channel_stats
from biper.errors import BiperError

__all__ = ["TARGETS", "DenseDataset", "transform_boxes", "compact_boxes"]

TARGETS = {"mask": "segmentation", "boxes": "detection"}


def compact_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Rows with ``cls >= 0`` first (in their order), padding rows ``[-1, 0, 0, 0, 0]`` after."""
    valid = boxes[..., 0] >= 0                                          # (B, M)
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices
    out = torch.gather(boxes, 1, order[..., None].expand_as(boxes))
    pad = ~torch.gather(valid, 1, order)
    out[pad] = torch.tensor([-1.0, 0, 0, 0, 0], dtype=out.dtype, device=out.device)
    return out


def transform_boxes(boxes: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                    flip: torch.Tensor, padding: int, size: tuple[int, int]) -> torch.Tensor:
    """Boxes (B, M, 5) under :func:`crop_flip` with the same offsets: mirrored where ``flip``
    (``[x0, x1) -> [W - x1, W - x0)``), shifted by ``(left - p)`` (flipped) or ``(p - left)``
    horizontally and ``(p - top)`` vertically, clipped to the image; empty boxes are dropped."""
    h, w = size
    out = boxes.clone()
    cls, x0, y0, x1, y1 = out.unbind(-1)
    flip = flip.to(out.device, torch.bool)[:, None]
    left = left.to(out.device, out.dtype)[:, None]
    top = top.to(out.device, out.dtype)[:, None]
    fx0, fx1 = torch.where(flip, w - x1, x0), torch.where(flip, w - x0, x1)
    dx = torch.where(flip, left - padding, padding - left)
    dy = padding - top
    nx0, nx1 = (fx0 + dx).clamp(0, w), (fx1 + dx).clamp(0, w)
    ny0, ny1 = (y0 + dy).clamp(0, h), (y1 + dy).clamp(0, h)
    keep = (cls >= 0) & (nx1 > nx0) & (ny1 > ny0)
    out = torch.stack([torch.where(keep, cls, -1.0)] +
                      [torch.where(keep, v, 0.0) for v in (nx0, ny0, nx1, ny1)], -1)
    return compact_boxes(out)


class DenseDataset:
    """Images with masks and boxes; see the module docstring for the layout.

    Attributes beyond the arrays: ``classes``, ``num_classes``, ``task``, ``target``,
    ``object_classes`` (the K object names), ``max_objects`` (M), ``image_size`` ((H, W)),
    ``mean``/``std`` (per channel in [0, 1] units), ``labels`` (int64 (N,): objects per image),
    ``crop_padding`` (the translation range ``pad``), ``source`` and ``meta`` (generator record).
    """

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
                 object_classes: Sequence[str], *, target: str = "mask",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 pad: int = 4, instances: torch.Tensor | None = None,
                 objects: torch.Tensor | None = None, source: str = "", meta: dict | None = None):
        if target not in TARGETS:
            raise BiperError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise BiperError(f"images must be a uint8 tensor (N, 3, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        n, _, h, w = images.shape
        if masks.dtype != torch.uint8 or tuple(masks.shape) != (n, h, w):
            raise BiperError(f"masks must be uint8 ({n}, {h}, {w}), got {masks.dtype} "
                             f"{tuple(masks.shape)}")
        if boxes.dim() != 3 or boxes.shape[0] != n or boxes.shape[2] != 5:
            raise BiperError(f"boxes must be ({n}, M, 5), got {tuple(boxes.shape)}")
        if instances is not None and tuple(instances.shape) != (n, h, w):
            raise BiperError(f"instances must be ({n}, {h}, {w}), got {tuple(instances.shape)}")
        if isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad < min(h, w):
            raise BiperError(f"pad must be an integer in [0, {min(h, w) - 1}], got {pad!r}")
        self.images = images
        self.masks = masks
        self.boxes = boxes.to(torch.float32)
        self.instances = instances
        self.objects = objects
        self.object_classes = [str(c) for c in object_classes]
        self.target = target
        self.task = TARGETS[target]
        self.classes = (["background"] + self.object_classes if target == "mask"
                        else list(self.object_classes))
        self.num_classes = len(self.classes)
        self.max_objects = int(boxes.shape[1])
        self.labels = (self.boxes[..., 0] >= 0).sum(1).to(torch.int64)   # objects per image
        if mean is None or std is None:
            mean, std = channel_stats(images)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.crop_padding = pad
        self.source = source
        self.meta = dict(meta or {})
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        n, _, h, w = self.images.shape
        return (f"DenseDataset(n={n}, size={h}x{w}, task={self.task}, classes={self.num_classes}, "
                f"max_objects={self.max_objects}, source={self.source!r})")

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.images.shape[2], self.images.shape[3])

    def _replace(self, fn) -> DenseDataset:
        out = DenseDataset.__new__(DenseDataset)
        out.__dict__.update(self.__dict__)
        for name in ("images", "masks", "boxes", "instances", "objects", "labels"):
            value = getattr(self, name)
            setattr(out, name, None if value is None else fn(value))
        return out

    def subset(self, n: int) -> DenseDataset:
        """The first ``n`` images (all of them when ``n >= len(self)``)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise BiperError(f"subset must be a positive integer, got {n!r}")
        return self if n >= len(self) else self._replace(lambda t: t[:n])

    def to(self, device: torch.device | str) -> DenseDataset:
        """Same dataset with every tensor on ``device`` (augmentation runs there)."""
        return self._replace(lambda t: t.to(device))

    def fetch_pair(self, indices: torch.Tensor, *, augment: bool,
                   generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x uint8 (B, 3, H, W), y)`` for ``indices``; ``y`` is the mask (int64 (B, H, W)) or
        the boxes (float32 (B, M, 5)) after the same augmentation as ``x``."""
        idx = indices.to(self.images.device)
        x = self.images[idx]
        if self.target == "mask":
            y = self.masks[idx]
        else:
            y = self.boxes[idx]
        if augment:
            p, b = self.crop_padding, x.shape[0]
            top = torch.randint(0, 2 * p + 1, (b,), generator=generator)
            left = torch.randint(0, 2 * p + 1, (b,), generator=generator)
            flip = torch.randint(0, 2, (b,), generator=generator).bool()
            x = crop_flip(x, top, left, flip, p)
            if self.target == "mask":
                y = crop_flip(y[:, None], top, left, flip, p)[:, 0]
            else:
                y = transform_boxes(y, top, left, flip, p, self.image_size)
        return x, (y.to(torch.int64) if self.target == "mask" else y)

    def fetch(self, indices: torch.Tensor, *, augment: bool,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """Images only (same augmentation as :meth:`fetch_pair`)."""
        return self.fetch_pair(indices, augment=augment, generator=generator)[0]
