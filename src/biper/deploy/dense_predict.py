"""What `biper infer` writes for dense models: class-index mask PNGs and box lists.

- `write_mask_png`: a mask ``(H, W)`` of class indices as an 8-bit palette PNG whose pixel
  values ARE the class indices (read back with ``numpy.array(Image.open(path))``) and whose
  palette is `biper.analysis.dense_plots.class_palette`, so it also looks right in a viewer.
- `box_records`: decoded detections (`biper.models.detection.decode_detections`) as JSON-ready
  rows ``{"label": name, "class": index, "score": s, "xyxy": [x0, y0, x1, y1]}`` in input
  pixels (x1, y1 exclusive), best score first.
- `unnormalize`: a normalised input batch back to uint8 pixels for pictures.

Example::

    >>> write_mask_png("out/scene-0000-mask.png", logits[0].argmax(0))
    >>> box_records(decode_detections(out, stride=4)[0], classes)[:1]
    [{'label': 'cat', 'class': 3, 'score': 0.91, 'xyxy': [4.0, 10.5, 30.0, 33.0]}]
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..analysis.dense_plots import class_palette
from ..errors import BiperError

__all__ = ["write_mask_png", "box_records", "unnormalize", "output_name"]


def write_mask_png(path: str | os.PathLike, mask: torch.Tensor, num_classes: int | None = None) -> Path:
    """Save a class-index mask as a palette PNG (pixel value = class index)."""
    from ..data.images import require_pillow

    Image = require_pillow()
    m = mask.detach().cpu().to(torch.int64)
    if m.dim() != 2 or (m.numel() and (int(m.min()) < 0 or int(m.max()) > 255)):
        raise BiperError(f"a mask PNG needs an (H, W) tensor of class indices 0..255, got {tuple(m.shape)}")
    k = max(int(num_classes or 0), int(m.max()) + 1 if m.numel() else 1)
    palette = np.zeros((256, 3), np.uint8)
    palette[:min(k, 256)] = class_palette(min(k, 256))
    img = Image.fromarray(m.numpy().astype(np.uint8), mode="P")
    img.putpalette(palette.flatten().tolist())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


def box_records(detection: dict, classes: Sequence[str] | None = None) -> list[dict]:
    """One decoded image's boxes as JSON-ready rows, best score first."""
    boxes = detection["boxes"].detach().cpu().double().reshape(-1, 4)
    scores = detection["scores"].detach().cpu().double().reshape(-1)
    labels = detection["labels"].detach().cpu().to(torch.int64).reshape(-1)
    order = torch.argsort(scores, descending=True, stable=True)
    return [{"label": classes[c] if classes and 0 <= c < len(classes) else str(c), "class": c,
             "score": round(float(scores[i]), 6), "xyxy": [round(float(v), 3) for v in boxes[i]]}
            for i in order.tolist() for c in [int(labels[i])]]


def unnormalize(x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    """``(N, C, H, W)`` normalised floats back to uint8 pixels (min-max scaled without mean/std)."""
    x = x.detach().float().cpu()
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    else:
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (x.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(1e-12)
    return (x * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)


def output_name(name: str) -> str:
    """A file stem for an input's outputs: ``imgs/cat.png`` -> ``cat``, ``x.npy[3]`` -> ``x-3``."""
    base, _, index = name.partition("[")
    stem = Path(base).stem + (f"-{index.rstrip(']')}" if index else "")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) or "input"
