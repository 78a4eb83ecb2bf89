"""The ``scenes`` dataset: options, generation from CIFAR-10, cache, :class:`DenseDataset`.

Options (all with defaults; every generator parameter is part of the cache key):

=============== ============ ==========================================================
option          default      meaning
=============== ============ ==========================================================
``target``      ``"mask"``   ``"mask"`` (segmentation) or ``"boxes"`` (detection)
``image_size``  64           scene side in pixels (>= 16)
``train_size``  20000        scenes in the train split
``test_size``   2000         scenes in the test split
``min_objects`` 1            objects per scene, drawn uniformly in
``max_objects`` 4            ``[min_objects, max_objects]`` (M = ``max_objects``)
``min_scale``   size // 4    object side in pixels, uniform in ``[min_scale, max_scale]``
``max_scale``   size * 5 // 8
``seed``        0            generator seed
``background``  ``texture``  ``"texture"`` or ``"plain"``
``mask``        ``estimate`` ``"estimate"`` (foreground estimate) or ``"square"``
``threshold``   40           colour distance of the foreground estimate (0..255)
``min_visible`` 24           objects with fewer visible pixels are dropped
``pad``         4            augmentation: translation range in pixels (0 = flip only)
=============== ============ ==========================================================

Train scenes paste train-split CIFAR-10 images only, test scenes test-split images only. The
cache entry holds ``images`` (N, 3, H, W) uint8, ``instances`` (N, H, W) uint8 and ``objects``
(N, M, 9) int32 ``[cls, source index, x0, y0, x1, y1, x, y, side]``, keyed by the parameters and the source
archive's path and fingerprint; ``target`` and ``pad`` only change how batches are served.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from biper.data import cache as _cache
from biper.data.dataset import CIFAR10_CLASSES, channel_stats
from biper.data.dense import TARGETS, DenseDataset
from biper.data.progress import notice
from biper.data.scenes import GENERATOR_VERSION, SceneParams, generate_scenes
from biper.errors import BiperError

__all__ = ["SCENE_OPTIONS", "scene_options", "scenes_from_arrays", "load_scenes"]

SCENE_OPTIONS = ("target", "image_size", "train_size", "test_size", "min_objects", "max_objects",
                 "min_scale", "max_scale", "seed", "background", "mask", "threshold",
                 "min_visible", "pad")
_CHOICES = {"target": tuple(TARGETS), "background": ("texture", "plain"),
            "mask": ("estimate", "square")}


def _int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or \
            (hi is not None and value > hi):
        want = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise BiperError(f"scenes option {name} must be an integer {want}, got {value!r}")
    return value


def scene_options(target: str = "mask", image_size: int = 64, train_size: int = 20000,
                  test_size: int = 2000, min_objects: int = 1, max_objects: int = 4,
                  min_scale: int | None = None, max_scale: int | None = None, seed: int = 0,
                  background: str = "texture", mask: str = "estimate", threshold: int = 40,
                  min_visible: int = 24, pad: int = 4) -> dict:
    """Checked options: ``{"params": SceneParams, "target", "sizes": {split: n}, "seed", "pad"}``."""
    for name, value in (("target", target), ("background", background), ("mask", mask)):
        if value not in _CHOICES[name]:
            raise BiperError(f"scenes option {name} must be one of {', '.join(_CHOICES[name])}, "
                             f"got {value!r}")
    size = _int("image_size", image_size, 16)
    min_scale = _int("min_scale", size // 4 if min_scale is None else min_scale, 4, size)
    max_scale = _int("max_scale", size * 5 // 8 if max_scale is None else max_scale, 4, size)
    if min_scale > max_scale:
        raise BiperError(f"scenes option min_scale ({min_scale}) must be <= max_scale "
                         f"({max_scale})")
    max_objects = _int("max_objects", max_objects, 1, 255)
    min_objects = _int("min_objects", min_objects, 1, 255)
    if min_objects > max_objects:
        raise BiperError(f"scenes option min_objects ({min_objects}) must be <= max_objects "
                         f"({max_objects})")
    params = SceneParams(image_size=size, min_objects=min_objects, max_objects=max_objects,
                         min_scale=min_scale, max_scale=max_scale, background=background,
                         mask=mask, threshold=_int("threshold", threshold, 0, 255),
                         min_visible=_int("min_visible", min_visible, 1))
    return {"params": params, "target": target, "seed": _int("seed", seed, 0),
            "sizes": {"train": _int("train_size", train_size, 1),
                      "test": _int("test_size", test_size, 1)},
            "pad": _int("pad", pad, 0, size // 2)}


def scenes_from_arrays(arrays: dict[str, np.ndarray], *, target: str, pad: int,
                       mean=None, std=None, source: str = "", meta: dict | None = None
                       ) -> DenseDataset:
    """A :class:`DenseDataset` from generator output: box rows are the used slots in paste
    order, instance ids are renumbered to match (``k + 1`` = box row k), semantic masks derived.
    The dataset's ``objects`` attribute keeps the reordered (N, M, 9) table (int64)."""
    images = torch.from_numpy(arrays["images"])
    inst = torch.from_numpy(arrays["instances"])
    table = torch.from_numpy(arrays["objects"]).to(torch.int64)        # (N, M, 6)
    n, m = table.shape[:2]
    order = torch.sort((table[..., 0] < 0).to(torch.int8), dim=1, stable=True).indices
    table = torch.gather(table, 1, order[..., None].expand_as(table))  # used slots first
    cls = table[..., 0]
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(m).expand(n, m).contiguous())  # slot -> box row
    zero = torch.zeros(n, 1, dtype=torch.int64)
    inst = torch.gather(torch.cat([zero, rank + 1], 1), 1, inst.view(n, -1).to(torch.int64))
    lut = torch.cat([zero, (cls + 1).clamp_min(0)], 1)
    masks = torch.gather(lut, 1, inst).view(n, *images.shape[2:]).to(torch.uint8)
    boxes = torch.cat([cls[..., None], table[..., 2:6]], -1).to(torch.float32)
    boxes[cls < 0] = torch.tensor([-1.0, 0, 0, 0, 0])
    return DenseDataset(images, masks, boxes, CIFAR10_CLASSES, target=target, mean=mean,
                        std=std, pad=pad, instances=inst.view(masks.shape).to(torch.uint8),
                        objects=table, source=source, meta=meta)


def load_scenes(source: Path, split: str, *, cache_dir: Path | None,
                load_objects: Callable[[], object], progress: bool = True,
                **options) -> DenseDataset:
    """Scenes of ``split`` generated from the CIFAR-10 copy at ``source``; ``load_objects()``
    returns that split as an ``ImageTensorDataset`` (called only when the cache misses).
    ``cache_dir=None`` disables the cache."""
    opts = scene_options(**options)
    params, count, seed = opts["params"], opts["sizes"][split], opts["seed"]
    record = {"version": GENERATOR_VERSION, "params": params.to_dict(), "count": count,
              "seed": seed, "split": split}
    digest = hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()[:10]
    key = fp = None
    if cache_dir is not None:
        key = _cache.entry_key(f"scenes-{digest}", split, source)
        fp = _cache.fingerprint(source)
        entry = _cache.load_entry(cache_dir, key, fp)
        if entry is not None:
            arrays, meta = entry
            return scenes_from_arrays(arrays, target=opts["target"], pad=opts["pad"],
                                      mean=meta["mean"], std=meta["std"],
                                      source=str(source), meta=meta)
    objects = load_objects()
    if progress:
        notice(f"generating {count} {split} scenes from {source}")
    arrays = generate_scenes(objects.images, objects.labels, count, params, seed=seed,
                             split=split)
    mean, std = channel_stats(torch.from_numpy(arrays["images"]))
    meta = {**record, "mean": list(mean), "std": list(std), "classes": list(CIFAR10_CLASSES),
            "num_sources": len(objects)}
    if key is not None:
        _cache.save_entry(cache_dir, key, fp, arrays, meta)
    return scenes_from_arrays(arrays, target=opts["target"], pad=opts["pad"], mean=mean,
                              std=std, source=str(source), meta=meta)
