"""Pictures of dense predictions: masks and boxes over the input, next to the ground truth.

`plot_segmentation` draws the input, the predicted mask blended over it and, when given, the
true mask; `plot_detection` the input, the predicted boxes (label and score) over it and, when
given, the true boxes. Colours come from `class_palette` (class 0 of a mask is the background,
drawn black; detection class ``c`` uses the colour of mask class ``c + 1``, so an object has
the same colour in both). Needs matplotlib (``pip install 'biper[plot]'``).

Example::

    >>> plot_segmentation("scene.png", image, pred_mask, true_mask, classes=dataset.classes)
    'scene.png'
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from .plots import _pyplot, _save

__all__ = ["class_palette", "colorize_mask", "plot_segmentation", "plot_detection"]

_BASE = np.array([[0, 0, 0], [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
                  [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]], np.uint8)


def class_palette(num_classes: int) -> np.ndarray:
    """``(num_classes, 3)`` uint8 RGB colours: black for class 0, then distinct hues."""
    if num_classes <= len(_BASE):
        return _BASE[:num_classes].copy()
    rng = np.random.default_rng(0)
    extra = rng.integers(40, 256, (num_classes - len(_BASE), 3), dtype=np.uint8)
    return np.concatenate([_BASE, extra])


def colorize_mask(mask, num_classes: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 colours of a class-index mask (ignore values > K drawn white)."""
    m = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).astype(np.int64)
    pal = np.concatenate([class_palette(num_classes), [[255, 255, 255]]]).astype(np.uint8)
    return pal[np.where((m >= 0) & (m < num_classes), m, num_classes)]


def _hwc(image) -> np.ndarray:
    """An image as ``(H, W, 3)`` uint8 (from ``(3, H, W)`` or ``(H, W, 3)`` uint8 / float in [0, 1])."""
    a = np.asarray(image.cpu() if isinstance(image, torch.Tensor) else image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.dtype != np.uint8:
        a = np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


def _legend(ax, present: Sequence[int], classes: Sequence[str] | None, pal: np.ndarray) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=pal[c] / 255.0, label=classes[c] if classes and c < len(classes) else str(c))
               for c in present]
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)


def _panels(n: int, titles: Sequence[str]):
    plt = _pyplot()
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 1.2, 3.4))
    axes = np.atleast_1d(axes)
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def plot_segmentation(path: str | os.PathLike, image, pred, target=None, *, classes: Sequence[str] | None = None,
                      alpha: float = 0.55, title: str = "") -> str:
    """Input | prediction over the input | ground truth (when ``target`` is given)."""
    num = len(classes) if classes else int(max(int(np.max(np.asarray(pred))), 0) + 1)
    img = _hwc(image)
    pal = class_palette(num)
    masks = [("prediction", pred)] + ([("ground truth", target)] if target is not None else [])
    fig, axes = _panels(1 + len(masks), ["input"] + [m[0] for m in masks])
    axes[0].imshow(img)
    present: set[int] = set()
    for ax, (_, m) in zip(axes[1:], masks):
        arr = np.asarray(m.cpu() if isinstance(m, torch.Tensor) else m)
        colours = colorize_mask(arr, num).astype(np.float32)
        fg = (arr > 0)[..., None]
        blend = np.where(fg, alpha * colours + (1 - alpha) * img, 0.35 * img).astype(np.uint8)
        ax.imshow(blend)
        present |= {int(c) for c in np.unique(arr) if 0 < c < num}
    _legend(axes[-1], sorted(present), classes, pal)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _draw_boxes(ax, rows, classes, pal, scores=None) -> set[int]:
    from matplotlib.patches import Rectangle

    seen = set()
    for i, (c, x0, y0, x1, y1) in enumerate(rows):
        c = int(c)
        if c < 0:
            continue
        colour = pal[(c + 1) % len(pal)] / 255.0
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour, lw=1.5))
        name = classes[c] if classes and c < len(classes) else str(c)
        text = name if scores is None else f"{name} {scores[i]:.2f}"
        ax.text(x0 - 0.5, y0 - 1.0, text, color="white", fontsize=6,
                bbox={"facecolor": colour, "alpha": 0.8, "pad": 0.5, "lw": 0})
        seen.add(c)
    return seen


def plot_detection(path: str | os.PathLike, image, detections: dict, target=None, *,
                   classes: Sequence[str] | None = None, title: str = "") -> str:
    """Input | predicted boxes over it (``detections``: boxes (N, 4) xyxy, scores, labels) |
    ground truth boxes (``target``: rows ``[cls, x0, y0, x1, y1]``, cls -1 = padding) when given."""
    img = _hwc(image)
    pal = class_palette(max(len(classes) + 1 if classes else 11, 2))
    fig, axes = _panels(2 if target is None else 3,
                        ["input", "prediction"] + (["ground truth"] if target is not None else []))
    boxes = np.asarray(detections["boxes"], dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(detections["labels"]).reshape(-1)
    scores = np.asarray(detections["scores"], dtype=np.float64).reshape(-1)
    rows = [(int(c), *b) for c, b in zip(labels, boxes)]
    for ax in axes:
        ax.imshow(img)
        ax.set_xlim(-0.5, img.shape[1] - 0.5)
        ax.set_ylim(img.shape[0] - 0.5, -0.5)
    _draw_boxes(axes[1], rows, classes, pal, scores)
    if target is not None:
        t = np.asarray(target.cpu() if isinstance(target, torch.Tensor) else target, dtype=np.float64).reshape(-1, 5)
        _draw_boxes(axes[2], [tuple(r) for r in t], classes, pal)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
