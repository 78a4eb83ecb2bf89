"""Decoding image files to uint8 RGB arrays with Pillow (an optional extra: ``biper[data]``).

Every file is decoded fully (``Image.load``), so a truncated JPEG or PNG fails here with its
path instead of yielding a half-grey image. Palette, greyscale, CMYK and alpha images are
converted to RGB. :func:`decode_many` decodes a list of sources into one preallocated
(N, H, W, 3) array; all images must share one size. With ``skip_corrupt=True`` unreadable files
are skipped and listed instead of raising.

Example::

    >>> arr = decode_rgb(open("cat.png", "rb").read(), "cat.png")   # (H, W, 3) uint8
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np

from biper.data.progress import Progress, notice
from biper.errors import BiperError

__all__ = ["IMAGE_EXTENSIONS", "require_pillow", "is_image_name", "decode_rgb", "decode_many",
           "CorruptImage", "resize_center_crop", "eval_resize"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
EVAL_RESIZE_RATIO = 256 / 224  # short side before the centre crop, over the crop (ImageNet eval)


class CorruptImage(Exception):
    """An image file that Pillow cannot decode; ``str()`` names the path and the reason."""


def require_pillow():
    """Import Pillow's ``Image`` module or raise a clear error naming the extra to install."""
    try:
        from PIL import Image
    except ImportError:
        raise BiperError("reading image folders needs Pillow: pip install 'biper[data]' "
                         "(or pip install pillow)") from None
    return Image


def is_image_name(name: str) -> bool:
    """True for a non-hidden file name with an allowed image extension (case-insensitive)."""
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def decode_rgb(data: bytes, where: str) -> np.ndarray:
    """Decode encoded image bytes to uint8 (H, W, 3); raises ``CorruptImage`` naming ``where``."""
    Image = require_pillow()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im)
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for bad data
        raise CorruptImage(f"{where}: {type(err).__name__}: {err}") from None


def decode_many(sources: Sequence[tuple[str, Callable[[], bytes]]], *, skip_corrupt: bool,
                progress: bool, desc: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode ``(where, read_bytes)`` pairs in order.

    Returns ``images`` uint8 (M, H, W, 3) of the readable ones, a bool mask (N,) of which sources
    were kept, and the list of skipped ``where`` strings (empty unless ``skip_corrupt``).
    """
    n = len(sources)
    kept = np.zeros(n, dtype=bool)
    skipped: list[str] = []
    out: np.ndarray | None = None
    first = ""
    m = 0
    bar = Progress(n, desc, enabled=progress, unit="img")
    for i, (where, read) in enumerate(sources):
        try:
            try:
                data = read()
            except OSError as err:
                raise CorruptImage(f"{where}: {type(err).__name__}: {err}") from None
            arr = decode_rgb(data, where)                               # (H, W, 3)
        except CorruptImage as err:
            if not skip_corrupt:
                bar.close()
                raise BiperError(f"cannot decode image {err}; fix or remove the file, or pass "
                                 f"skip_corrupt=True (CLI --skip-corrupt) to skip it") from None
            skipped.append(where)
            bar.update()
            continue
        if out is None:
            out = np.empty((n,) + arr.shape, dtype=np.uint8)           # (N, H, W, 3)
            first = where
        elif arr.shape != out.shape[1:]:
            bar.close()
            raise BiperError(f"image {where} is {arr.shape[1]}x{arr.shape[0]} but {first} is "
                             f"{out.shape[2]}x{out.shape[1]}: an in-memory folder dataset needs one "
                             f"image size (resize the images, or use name 'imagenet' for lazy "
                             f"resized decoding)")
        out[m] = arr
        kept[i] = True
        m += 1
        bar.update()
    bar.close()
    if skipped:
        notice(f"skipped {len(skipped)} unreadable image(s) (first: {skipped[0]})")
    if out is None:
        out = np.empty((0, 1, 1, 3), dtype=np.uint8)
    return out[:m], kept, skipped


def resize_center_crop(im, size: tuple[int, int], resize_size: int):
    """torchvision's ``Resize(resize_size)`` + ``CenterCrop(size)`` geometry (bilinear) on a
    Pillow image: the short side becomes ``resize_size``, then the central ``(H, W)`` box."""
    Image = require_pillow()
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize_size, int(resize_size * long / short)
    new = (new_short, new_long) if w <= h else (new_long, new_short)
    im = im.resize(new, Image.BILINEAR)
    ch, cw = size
    left = int(round((new[0] - cw) / 2.0))
    top = int(round((new[1] - ch) / 2.0))
    return im.crop((left, top, left + cw, top + ch))


def eval_resize(im, size: tuple[int, int], resize_size: int | None = None):
    """The evaluation geometry of an image for a model of input ``(H, W)``: ImageNet-style
    (`resize_center_crop`, short side ``resize_size``, default ``round(min(H, W) * 256 / 224)``)
    for inputs of 64 pixels or more, a plain bilinear resize for smaller (CIFAR-sized) inputs."""
    Image = require_pillow()
    h, w = size
    if min(h, w) >= 64:
        if resize_size is None:
            resize_size = round(min(h, w) * EVAL_RESIZE_RATIO)
        return resize_center_crop(im, (h, w), resize_size)
    return im.resize((w, h), Image.BILINEAR)
