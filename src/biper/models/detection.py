"""CenterNet targets, loss, box decoding and NMS for `centernet_resnet20`-style outputs.

Pure functions, no training loop. Conventions (shared with the data and metrics):

- boxes: float ``(B, M, 5)`` rows ``[cls, x0, y0, x1, y1]`` in input pixels, x1 / y1 exclusive
  (a box covers ``x0 <= x < x1``), so its centre is ``((x0 + x1) / 2, (y0 + y1) / 2)`` and its
  size ``(x1 - x0, y1 - y0)`` in continuous pixel coordinates; rows with ``cls < 0`` are padding
  and are ignored.
- model output ``out``: ``(B, K + 4, h, w)`` at output stride ``stride``: ``[0:K]`` heatmap
  logits, ``[K:K+2]`` size (w, h) linear in input pixels, ``[K+2:K+4]`` centre offset (x, y) in
  output cells.

`centernet_targets` puts, for each object, a Gaussian peak of value exactly 1 at its centre
cell ``floor(centre / stride)`` on its class's heatmap (element-wise max over objects),
truncated to the ``(2 r + 1)^2`` window around the centre, ``sigma = (2 r + 1) / 6``. The
radius ``r`` is the one CenterNet's reference implementation uses for a minimum IoU of 0.7:
the smallest of three expressions from the corner-shift cases (one corner in and one out,
both in, both out), on the box size in output cells, floored. It is larger than the exact
geometric bound, which for objects of a few cells would give single-cell peaks: a 4x4-cell
box gets r = 1, a 10x10-cell box r = 2. Offset target: ``centre / stride - floor(centre / stride)``.

`centernet_loss` = penalty-reduced pixel-wise focal loss (alpha 2, beta 4) over the heatmap,
normalised by the number of objects, + 0.1 x L1 on sizes + 1 x L1 on offsets, both read at the
objects' centre cells and averaged over objects and the two coordinates.

`decode_detections`: sigmoid heatmap, peaks = cells equal to the 3x3 max-pool of their
neighbourhood, the ``topk`` highest peaks over all classes, boxes from the offset and size at
the peak (clipped to the image ``(w * stride, h * stride)``), scores below
``score_threshold`` dropped, then class-wise `nms`.

`nms`: greedy; repeatedly keep the highest-scoring box left and drop every remaining box whose
IoU with it is strictly greater than ``iou_threshold`` (a box at exactly the threshold stays).
IoU of xyxy boxes uses continuous areas ``(x1 - x0) * (y1 - y0)``.

Reference: Zhou et al., "Objects as Points", 2019; Law & Deng, "CornerNet", ECCV 2018.

Example::

    >>> import torch
    >>> from biper.models.detection import nms
    >>> boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
    >>> nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist()
    [0, 2]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import BiperError

__all__ = ["FOCAL_ALPHA", "FOCAL_BETA", "SIZE_WEIGHT", "OFFSET_WEIGHT", "gaussian_radius",
           "centernet_targets", "focal_loss", "centernet_loss", "decode_detections", "box_iou", "nms"]

FOCAL_ALPHA, FOCAL_BETA = 2.0, 4.0
SIZE_WEIGHT, OFFSET_WEIGHT = 0.1, 1.0
MIN_OVERLAP = 0.7


def gaussian_radius(height: float, width: float, min_overlap: float = MIN_OVERLAP) -> float:
    """Gaussian radius of a ``height`` x ``width`` box (in output cells), as CenterNet's reference
    implementation computes it (see the module docstring)."""
    h, w, o = float(height), float(width), float(min_overlap)
    b1, c1 = h + w, w * h * (1 - o) / (1 + o)                 # one corner in, one out
    b2, c2 = 2 * (h + w), (1 - o) * w * h                     # both corners in
    b3, c3 = -2 * o * (h + w), (o - 1) * w * h                # both corners out
    r1 = (b1 + math.sqrt(max(b1 * b1 - 4 * c1, 0.0))) / 2
    r2 = (b2 + math.sqrt(max(b2 * b2 - 16 * c2, 0.0))) / 2
    r3 = (b3 + math.sqrt(max(b3 * b3 - 16 * o * c3, 0.0))) / 2
    return min(r1, r2, r3)


def _check_boxes(boxes: torch.Tensor) -> torch.Tensor:
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 3 or boxes.shape[-1] != 5:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise BiperError(f"boxes must be a (B, M, 5) tensor of [cls, x0, y0, x1, y1] rows, got {shape}")
    return boxes.detach().to(torch.float64).cpu()


def centernet_targets(boxes: torch.Tensor, num_classes: int, out_hw: tuple[int, int],
                      stride: int) -> dict[str, torch.Tensor]:
    """Training targets for ``boxes`` (B, M, 5): ``heatmap`` (B, K, h, w) float32, ``size``
    (B, M, 2) and ``offset`` (B, M, 2) float32, ``index`` (B, M) int64 (flat cell ``y * w + x``)
    and ``mask`` (B, M) bool (real objects)."""
    rows = _check_boxes(boxes)
    b, m = rows.shape[:2]
    oh, ow = int(out_hw[0]), int(out_hw[1])
    heatmap = torch.zeros(b, num_classes, oh, ow, dtype=torch.float64)
    size = torch.zeros(b, m, 2)
    offset = torch.zeros(b, m, 2)
    index = torch.zeros(b, m, dtype=torch.int64)
    mask = torch.zeros(b, m, dtype=torch.bool)
    ys = torch.arange(oh, dtype=torch.float64).view(-1, 1)
    xs = torch.arange(ow, dtype=torch.float64).view(1, -1)
    for i in range(b):
        for j in range(m):
            cls, x0, y0, x1, y1 = rows[i, j].tolist()
            if cls < 0:
                continue
            if cls >= num_classes or cls != int(cls):
                raise BiperError(f"box class {cls} is not an integer in 0..{num_classes - 1}")
            cx, cy = (x0 + x1) / 2 / stride, (y0 + y1) / 2 / stride
            px, py = min(max(int(math.floor(cx)), 0), ow - 1), min(max(int(math.floor(cy)), 0), oh - 1)
            r = max(0, int(gaussian_radius((y1 - y0) / stride, (x1 - x0) / stride)))
            sigma = (2 * r + 1) / 6
            g = torch.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * sigma * sigma))
            g = torch.where(((xs - px).abs() <= r) & ((ys - py).abs() <= r), g, torch.zeros(()))
            heatmap[i, int(cls)] = torch.maximum(heatmap[i, int(cls)], g)
            size[i, j] = torch.tensor([x1 - x0, y1 - y0])
            offset[i, j] = torch.tensor([cx - px, cy - py])
            index[i, j] = py * ow + px
            mask[i, j] = True
    return {"heatmap": heatmap.float(), "size": size, "offset": offset, "index": index, "mask": mask}


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Penalty-reduced focal loss (sum over cells / number of cells where ``target == 1``, at
    least 1): ``-(1-p)^a log p`` at peaks, ``-(1-t)^b p^a log(1-p)`` elsewhere, p clamped to
    [1e-4, 1 - 1e-4]."""
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    pos = target == 1
    pos_loss = (1 - p) ** FOCAL_ALPHA * torch.log(p)
    neg_loss = (1 - target) ** FOCAL_BETA * p ** FOCAL_ALPHA * torch.log(1 - p)
    n = pos.sum().clamp(min=1)
    return -(torch.where(pos, pos_loss, neg_loss)).sum() / n


def _gather(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) values at flat cells ``index`` (B, M) -> (B, M, C)."""
    b, c = maps.shape[:2]
    flat = maps.reshape(b, c, -1)
    return flat.gather(2, index.to(maps.device).unsqueeze(1).expand(b, c, index.shape[1])).transpose(1, 2)


def centernet_loss(out: torch.Tensor, boxes: torch.Tensor, *, stride: int = 4) -> tuple[torch.Tensor, dict]:
    """(total loss, {"heatmap", "size", "offset"}) for model output ``out`` (B, K + 4, h, w) and
    ``boxes`` (B, M, 5) in input pixels; ``stride`` is the model's output stride."""
    if out.dim() != 4 or out.shape[1] < 5:
        raise BiperError(f"detector output must be (B, K + 4, h, w) with K >= 1, got {tuple(out.shape)}")
    k = out.shape[1] - 4
    t = centernet_targets(boxes, k, out.shape[-2:], stride)
    hm = focal_loss(out[:, :k], t["heatmap"].to(out.device))
    mask = t["mask"].to(out.device).unsqueeze(-1).float()  # (B, M, 1)
    n = (mask.sum() * 2).clamp(min=1)
    reg = _gather(out[:, k:].float(), t["index"])  # (B, M, 4)
    size = ((reg[..., :2] - t["size"].to(out.device)).abs() * mask).sum() / n
    offset = ((reg[..., 2:] - t["offset"].to(out.device)).abs() * mask).sum() / n
    total = hm + SIZE_WEIGHT * size + OFFSET_WEIGHT * offset
    return total, {"heatmap": hm.detach(), "size": size.detach(), "offset": offset.detach()}


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU (N, M) of xyxy boxes ``a`` (N, 4) and ``b`` (M, 4)."""
    a, b = a.double(), b.double()
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-300), torch.zeros(()))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices (int64) of the boxes greedy NMS keeps, by decreasing score (see module doc)."""
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise BiperError(f"nms needs boxes (N, 4) and scores (N,), got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    order = torch.argsort(scores, descending=True, stable=True)
    iou = box_iou(boxes[order], boxes[order])
    alive = torch.ones(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(int(order[i]))
        alive &= ~(iou[i] > iou_threshold)
    return torch.tensor(keep, dtype=torch.int64)


@torch.no_grad()
def decode_detections(out: torch.Tensor, *, stride: int, topk: int = 100, score_threshold: float = 0.05,
                      iou_threshold: float = 0.5) -> list[dict[str, torch.Tensor]]:
    """Per image ``{"boxes" (N, 4) xyxy input pixels, "scores" (N,), "labels" (N,) int64}``,
    by decreasing score (see the module docstring)."""
    if out.dim() != 4 or out.shape[1] < 5:
        raise BiperError(f"detector output must be (B, K + 4, h, w) with K >= 1, got {tuple(out.shape)}")
    out = out.detach().float().cpu()
    b, c, oh, ow = out.shape
    k = c - 4
    heat = torch.sigmoid(out[:, :k])
    peaks = heat * (heat == F.max_pool2d(heat, 3, stride=1, padding=1))
    scores, flat = peaks.reshape(b, -1).topk(min(topk, k * oh * ow), dim=1)
    labels, cell = flat // (oh * ow), flat % (oh * ow)
    reg = _gather(out[:, k:], cell)  # (B, topk, 4)
    cx = ((cell % ow).float() + reg[..., 2]) * stride
    cy = ((cell // ow).float() + reg[..., 3]) * stride
    w, h = reg[..., 0].clamp(min=0), reg[..., 1].clamp(min=0)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    limit = torch.tensor([ow * stride, oh * stride] * 2, dtype=xyxy.dtype)
    xyxy = torch.minimum(xyxy.clamp(min=0), limit)
    results = []
    for i in range(b):
        sel = scores[i] >= score_threshold
        bx, sc, lb = xyxy[i][sel], scores[i][sel], labels[i][sel]
        keep = nms(bx + lb[:, None].to(bx.dtype) * (2 * float(limit.max()) + 1), sc, iou_threshold)  # classes apart
        results.append({"boxes": bx[keep], "scores": sc[keep], "labels": lb[keep].to(torch.int64)})
    return results
