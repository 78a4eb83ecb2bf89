"""``load_dataset``: one entry point from a dataset name and a folder to decoded tensors.

Names (see :data:`DATASETS`):

- ``cifar10``: looks under ``data_dir`` (or at ``data_dir`` itself) for, in order, the extracted
  ``cifar-10-batches-py/`` folder, ``cifar-10-python.tar.gz``, ``cifar10-jpeg.tar`` and an
  extracted ``cifar10-jpeg/`` folder; with ``download=True`` and none found, downloads the
  official archive (md5 checked). Normalised with the usual CIFAR-10 mean/std.
- ``folder``: class folders, or a ``.tar`` of them; ``data_dir`` is the split root, a folder
  holding ``train/`` and ``test/`` (or ``val/``), or the tar. Mean/std are measured on the
  loaded split and cached.
- ``imagenet``: ``data_dir/train`` and ``data_dir/val`` class folders, decoded lazily per batch
  (:mod:`biper.data.imagenet`); options ``image_size``, ``resize_size``, ``workers``.
- ``synthetic``: deterministic random images (:mod:`biper.data.synthetic`); ``data_dir`` is
  ignored; options ``num_classes``, ``size``, ``length``, ``seed``.
- ``scenes``: CIFAR-10 objects (found under ``data_dir`` as for ``cifar10``) pasted on textured
  backgrounds, with masks and boxes (:mod:`biper.data.scenes_load`); returns a
  :class:`~biper.data.dense.DenseDataset`; ``subset=N`` keeps the first N scenes.
- ``coco``: a COCO-style ``annotations/instances_<split>.json`` + images folder
  (:mod:`biper.data.coco`), into the same :class:`~biper.data.dense.DenseDataset`.

Decoded splits are cached as ``.npy`` + JSON (:mod:`biper.data.cache`) in ``cache_dir``
(default ``<data_dir>/.biper-cache`` or ``~/.cache/biper``; ``cache_dir=False`` disables it).

Example::

    >>> train = load_dataset("cifar10", "../shared/data", "train")
    >>> test = load_dataset("cifar10", "../shared/data", "test", subset=1000)   # 100 per class
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import torch

from biper.data import cache as _cache
from biper.data.cifar import ARCHIVE_NAME, FOLDER_NAME, download_cifar10, read_cifar10
from biper.data.coco import COCO_OPTIONS, load_coco
from biper.data.dataset import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    ImageTensorDataset,
    channel_stats,
)
from biper.data.folder import read_folder
from biper.data.imagenet import open_imagenet
from biper.data.scenes_load import SCENE_OPTIONS, load_scenes, scene_options
from biper.data.synthetic import make_synthetic
from biper.errors import BiperError, did_you_mean

__all__ = ["DATASETS", "SPLITS", "load_dataset", "find_cifar10"]

DATASETS = ("cifar10", "folder", "imagenet", "synthetic", "scenes", "coco")
SPLITS = {"train": "train", "test": "test", "val": "test"}
_OPTIONS = {"cifar10": (), "folder": (), "imagenet": ("image_size", "resize_size", "workers"),
            "synthetic": ("num_classes", "size", "length", "seed"), "scenes": SCENE_OPTIONS,
            "coco": COCO_OPTIONS}
JPEG_TAR_NAME = "cifar10-jpeg.tar"


def find_cifar10(data_dir: str | os.PathLike) -> tuple[str, Path] | None:
    """``("official", path)`` or ``("jpeg", path)`` for the first CIFAR-10 copy found, else None."""
    root = Path(data_dir)
    if root.is_file():
        return (_tar_kind(root), root) if tarfile.is_tarfile(root) else None
    if not root.is_dir():
        return None
    if (root / "data_batch_1").is_file() or (root / "test_batch").is_file():
        return "official", root
    for kind, candidate in (("official", root / FOLDER_NAME), ("official", root / ARCHIVE_NAME),
                            ("jpeg", root / JPEG_TAR_NAME), ("jpeg", root / "cifar10-jpeg")):
        if candidate.exists():
            return kind, candidate
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "jpeg", root
    return None


def _tar_kind(path: Path) -> str:
    """'official' when the archive's first member is the cifar-10-batches-py folder."""
    try:
        with tarfile.open(path, "r:*") as tf:
            first = tf.next()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise BiperError(f"cannot read archive {path}: {err}") from None
    return "official" if first is not None and first.name.lstrip("./").startswith(FOLDER_NAME) \
        else "jpeg"


def load_dataset(name: str, data_dir: str | os.PathLike | None, split: str, *,
                 subset: int | None = None, cache_dir: str | os.PathLike | bool | None = None,
                 skip_corrupt: bool = False, progress: bool = True, download: bool = False,
                 **options):
    """Load split ``split`` ("train", "test"; "val" = "test") of dataset ``name``.

    Returns an :class:`ImageTensorDataset` (a ``LazyImageFolder`` for ``imagenet``, a
    :class:`~biper.data.dense.DenseDataset` for ``scenes`` and ``coco``). ``subset=N``
    keeps the first N examples of the round-robin class order (N = k * classes gives k per
    class), in dataset order. Bad names, paths or data raise ``BiperError``.
    """
    if name not in DATASETS:
        raise BiperError(f"unknown dataset {name!r}{did_you_mean(name, DATASETS)}; "
                         f"valid: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise BiperError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    split = SPLITS[split]
    unknown = sorted(set(options) - set(_OPTIONS[name]))
    if unknown:
        allowed = ", ".join(_OPTIONS[name]) or "none"
        raise BiperError(f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; "
                         f"allowed: {allowed}")
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
        raise BiperError(f"subset must be a positive integer or None, got {subset!r}")
    if name == "synthetic":
        ds = make_synthetic(split, **options)
    else:
        if data_dir is None:
            raise BiperError(f"dataset {name!r} needs a data folder (data_dir / --data-dir)")
        if name == "imagenet":
            ds = open_imagenet(data_dir, split, skip_corrupt=skip_corrupt, **options)
        elif name == "cifar10":
            ds = _load_cifar10(Path(data_dir), split, cache_dir, skip_corrupt, progress, download)
        elif name == "coco":
            ds = load_coco(data_dir, split, **options)
        elif name == "scenes":
            ds = _load_scenes(Path(data_dir), split, cache_dir, skip_corrupt, progress, download,
                              options)
        else:
            ds = _load_cached("folder", Path(data_dir), split, cache_dir, skip_corrupt, progress)
    return ds.subset(subset) if subset is not None else ds


def _load_cifar10(data_dir: Path, split: str, cache_dir, skip_corrupt: bool, progress: bool,
                  download: bool) -> ImageTensorDataset:
    found = find_cifar10(data_dir)
    if found is None:
        if not download:
            raise BiperError(
                f"no CIFAR-10 found at {data_dir} (looked for {FOLDER_NAME}/, {ARCHIVE_NAME}, "
                f"{JPEG_TAR_NAME}, cifar10-jpeg/); put one there or pass download=True "
                f"(CLI --download) to fetch the official archive")
        found = ("official", download_cifar10(data_dir, progress=progress))
    kind, source = found
    ds = _load_cached("cifar10-" + kind, source, split, cache_dir, skip_corrupt, progress,
                      data_dir=data_dir)
    if list(ds.classes) != list(CIFAR10_CLASSES) or ds.image_size != (32, 32):
        raise BiperError(f"{source} is not CIFAR-10: expected 32x32 images in classes "
                         f"{', '.join(CIFAR10_CLASSES)}, found {ds.image_size[0]}x{ds.image_size[1]} "
                         f"images in {', '.join(ds.classes[:12])}")
    return ds


def _load_scenes(data_dir: Path, split: str, cache_dir, skip_corrupt: bool, progress: bool,
                 download: bool, options: dict):
    def objects():
        return _load_cifar10(data_dir, split, cache_dir, skip_corrupt, progress, download)

    scene_options(**options)                         # bad options fail before any reading
    found = find_cifar10(data_dir)
    if found is None:
        objects()                                    # raises the cifar10 error, or downloads
        found = find_cifar10(data_dir)
    source = found[1]
    where = None if cache_dir is False else Path(cache_dir) if cache_dir not in (None, True) \
        else _cache.default_cache_dir(data_dir)
    return load_scenes(source, split, cache_dir=where, load_objects=objects, progress=progress,
                       **options)


def _decode(kind: str, source: Path, split: str, skip_corrupt: bool, progress: bool):
    if kind == "cifar10-official":
        images, labels, classes = read_cifar10(source, split)
        return images, labels, classes, []
    return read_folder(source, split, skip_corrupt=skip_corrupt, progress=progress)


def _load_cached(kind: str, source: Path, split: str, cache_dir, skip_corrupt: bool,
                 progress: bool, data_dir: Path | None = None) -> ImageTensorDataset:
    if not source.exists():
        raise BiperError(f"data folder {source} does not exist (expected class folders "
                         f"<root>/<class>/<image>, or a .tar of them)")
    cifar = kind.startswith("cifar10")
    key = fp = None
    if cache_dir is not False:
        cache_dir = Path(cache_dir) if cache_dir not in (None, True) else \
            _cache.default_cache_dir(data_dir or source)
        key, fp = _cache.entry_key(kind, split, source), _cache.fingerprint(source)
        entry = _cache.load_entry(cache_dir, key, fp)
        if entry is not None:
            arrays, meta = entry
            skipped = list(meta.get("skipped", []))
            if skipped and not skip_corrupt:
                raise BiperError(f"cannot decode image {skipped[0]} ({len(skipped)} unreadable, "
                                 f"recorded in cache {cache_dir}); fix or remove it, or pass "
                                 f"skip_corrupt=True (CLI --skip-corrupt)")
            return ImageTensorDataset(torch.from_numpy(arrays["images"]),
                                      torch.from_numpy(arrays["labels"]), meta["classes"],
                                      mean=meta["mean"], std=meta["std"], source=str(source),
                                      skipped=skipped)
    images, labels, classes, skipped = _decode(kind, source, split, skip_corrupt, progress)
    images_t = torch.from_numpy(images)
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if cifar else channel_stats(images_t)
    if key is not None:
        meta = {"classes": list(classes), "mean": list(mean), "std": list(std),
                "skipped": list(skipped), "split": split, "kind": kind}
        _cache.save_entry(cache_dir, key, fp, {"images": images,
                                               "labels": np.asarray(labels, dtype=np.int64)}, meta)
    return ImageTensorDataset(images_t, torch.from_numpy(np.asarray(labels, dtype=np.int64)),
                              classes, mean=mean, std=std, source=str(source), skipped=skipped)
