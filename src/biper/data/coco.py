"""COCO-style annotations (boxes and polygons / RLE) into a :class:`DenseDataset`.

Layout under ``data_dir``: ``annotations/instances_<name>.json`` where ``<name>`` is the first
that exists of ``train, train2017, train2014`` (split ``train``) or ``test, val, val2017,
val2014`` (split ``test``); an image's ``file_name`` is looked up in ``<data_dir>/<name>/``,
``<data_dir>/images/<name>/``, ``<data_dir>/images/`` and ``<data_dir>/``, in that order.
The JSON is read with ``pycocotools`` (extra ``dense``).

- Categories: ids sorted ascending and mapped to ``0..K-1``; names from the JSON.
- Images: decoded to RGB and resized (plain bilinear resize, aspect ratio not kept) to
  ``image_size`` x ``image_size``, in the JSON's image order.
- Masks: every annotation's polygons or RLE rasterised by ``pycocotools.mask`` at the original
  size (an annotation without a segmentation fills its box), painted in order of decreasing
  area so smaller objects stay on top; ``iscrowd`` regions are 255 (ignore). The mask is resized
  with nearest-neighbour sampling.
- Boxes: the annotations' ``bbox`` ``[x, y, w, h]`` scaled to the new size as ``[x0, y0, x1,
  y1]`` floats, clipped; crowd annotations and boxes empty after scaling are left out. M is the
  most boxes of one image in the split, or ``max_objects`` (keeping the largest boxes).

Options: ``target`` ("mask" | "boxes"), ``image_size`` (64), ``pad`` (4), ``max_objects``.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch

from biper.data.dense import TARGETS, DenseDataset
from biper.data.images import CorruptImage, decode_rgb, require_pillow
from biper.errors import BiperError

__all__ = ["COCO_OPTIONS", "COCO_SPLIT_NAMES", "load_coco"]

COCO_OPTIONS = ("target", "image_size", "pad", "max_objects")
COCO_SPLIT_NAMES = {"train": ("train", "train2017", "train2014"),
                    "test": ("test", "val", "val2017", "val2014")}


def _require_pycocotools():
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
    except ImportError:
        raise BiperError("dataset 'coco' needs pycocotools: pip install 'biper[dense]'") from None
    return COCO, mask_utils


def _rasterise(mask_utils, segmentation, h: int, w: int) -> np.ndarray:
    """bool (h, w) of a COCO segmentation: polygon list, uncompressed or compressed RLE."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, h, w)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def _find(root: Path, split: str) -> tuple[str, Path]:
    for name in COCO_SPLIT_NAMES[split]:
        path = root / "annotations" / f"instances_{name}.json"
        if path.is_file():
            return name, path
    looked = ", ".join(f"annotations/instances_{n}.json" for n in COCO_SPLIT_NAMES[split])
    raise BiperError(f"no COCO annotation file for split {split!r} in {root} (looked for {looked})")


def _image_path(root: Path, name: str, file_name: str) -> Path:
    for folder in (root / name, root / "images" / name, root / "images", root):
        if (folder / file_name).is_file():
            return folder / file_name
    raise BiperError(f"COCO image {file_name!r} not found in {root / name}, "
                     f"{root / 'images' / name}, {root / 'images'} or {root}")


def _check_int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise BiperError(f"coco option {name} must be an integer >= {lo}, got {value!r}")
    return value


def load_coco(data_dir: str | Path, split: str, *, target: str = "mask", image_size: int = 64,
              pad: int = 4, max_objects: int | None = None) -> DenseDataset:
    """Split ``split`` ("train" | "test") of the COCO-style dataset under ``data_dir``."""
    if target not in TARGETS:
        raise BiperError(f"coco option target must be one of {', '.join(TARGETS)}, "
                         f"got {target!r}")
    size = _check_int("image_size", image_size, 16)
    if max_objects is not None:
        _check_int("max_objects", max_objects, 1)
    root = Path(data_dir)
    if not root.is_dir():
        raise BiperError(f"COCO folder {root} does not exist (expected annotations/ and images)")
    name, ann_path = _find(root, split)
    COCO, mask_utils = _require_pycocotools()
    Image = require_pillow()
    try:
        with contextlib.redirect_stdout(io.StringIO()):                # pycocotools prints
            coco = COCO(str(ann_path))
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as err:
        raise BiperError(f"cannot read COCO annotations {ann_path}: {err}") from None
    cat_ids = sorted(coco.getCatIds())
    if not cat_ids:
        raise BiperError(f"{ann_path} has no categories")
    index = {c: k for k, c in enumerate(cat_ids)}
    names = [coco.loadCats(c)[0].get("name", str(c)) for c in cat_ids]
    image_ids = [img["id"] for img in coco.dataset.get("images", [])]
    if not image_ids:
        raise BiperError(f"{ann_path} lists no images")
    images, masks, rows = [], [], []
    for image_id in image_ids:
        info = coco.loadImgs(image_id)[0]
        path = _image_path(root, name, info["file_name"])
        try:
            rgb = decode_rgb(path.read_bytes(), str(path))
        except CorruptImage as err:
            raise BiperError(f"cannot decode image {err}") from None
        h, w = rgb.shape[:2]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None))
        anns = sorted(anns, key=lambda a: -float(a.get("area", a["bbox"][2] * a["bbox"][3])))
        sem = np.zeros((h, w), np.uint8)
        boxes = []
        sx, sy = size / w, size / h
        for ann in anns:
            if ann["category_id"] not in index:
                raise BiperError(f"{ann_path}: annotation {ann.get('id')} has unknown "
                                 f"category_id {ann['category_id']}")
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            if ann.get("segmentation"):
                try:
                    with warnings.catch_warnings():                    # numpy 2 copy= notice
                        warnings.simplefilter("ignore", DeprecationWarning)
                        m = _rasterise(mask_utils, ann["segmentation"], h, w)
                except (ValueError, TypeError, KeyError, AttributeError) as err:
                    raise BiperError(f"{ann_path}: bad segmentation in annotation "
                                     f"{ann.get('id')}: {err}") from None
            else:
                m = np.zeros((h, w), bool)
                m[int(y):int(np.ceil(y + bh)), int(x):int(np.ceil(x + bw))] = True
            crowd = bool(ann.get("iscrowd", 0))
            sem[m] = 255 if crowd else index[ann["category_id"]] + 1
            box = [min(max(x * sx, 0), size), min(max(y * sy, 0), size),
                   min(max((x + bw) * sx, 0), size), min(max((y + bh) * sy, 0), size)]
            if not crowd and box[2] > box[0] and box[3] > box[1]:
                boxes.append([index[ann["category_id"]]] + box)
        im = Image.fromarray(rgb).resize((size, size), Image.BILINEAR)
        images.append(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))
        masks.append(np.asarray(Image.fromarray(sem).resize((size, size), Image.NEAREST)))
        rows.append(boxes)
    m = max_objects or max(1, max(len(r) for r in rows))
    table = np.tile(np.array([-1, 0, 0, 0, 0], np.float32), (len(rows), m, 1))
    for i, r in enumerate(rows):
        r = sorted(r, key=lambda b: -(b[3] - b[1]) * (b[4] - b[2]))[:m] if len(r) > m else r
        if r:
            table[i, :len(r)] = np.asarray(r, np.float32)
    return DenseDataset(torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks)),
                        torch.from_numpy(table), names, target=target, pad=pad,
                        source=str(ann_path), meta={"split": split, "categories": cat_ids})
