"""Dense-prediction metrics: confusion matrix, mIoU and pixel accuracy; COCO-style box mAP.

Segmentation (computed here): `confusion_matrix` counts ``cm[t, p]`` = pixels of target class
``t`` predicted as ``p`` over the pixels whose target is not ``ignore_index``;
`segmentation_scores` turns it into

- ``iou[c] = TP / (TP + FP + FN)`` in percent, ``None`` for a class absent from both target and
  prediction (``TP + FP + FN = 0``);
- ``miou``: the mean of ``iou`` over the classes present in the target *or* the prediction
  (the background class counts like any other); a class only predicted has IoU 0 and lowers
  the mean, a class nowhere is left out;
- ``pixel_acc = trace(cm) / sum(cm)`` in percent.

With no counted pixel at all both scores are 0.

Detection (`detection_map`) uses pycocotools' ``COCOeval`` (bbox, 101-point interpolated
precision, up to 100 detections per image) on in-memory COCO dicts: ``map50`` is AP at IoU 0.5,
``map`` the mean over IoU 0.5:0.05:0.95, both averaged over the classes that have ground truth,
in percent. Predictions are `biper.models.detection.decode_detections` dicts (xyxy pixels),
targets ``(M, 5)`` rows ``[cls, x0, y0, x1, y1]`` (``cls < 0``: padding). No ground-truth box
at all gives 0. pycocotools is the optional extra ``dense``.

Example::

    >>> import torch
    >>> from biper.analysis.dense_metrics import confusion_matrix, segmentation_scores
    >>> cm = confusion_matrix(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [0, 1]]), 2)
    >>> segmentation_scores(cm)["miou"]
    58.333333333333336
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import torch

from ..errors import BiperError

__all__ = ["confusion_matrix", "segmentation_scores", "detection_map", "require_pycocotools"]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """(K, K) int64 counts ``cm[target, pred]``; ``pred`` are labels shaped like ``target`` or
    logits with the class dimension at 1 (then argmax)."""
    if pred.dim() == target.dim() + 1:
        pred = pred.argmax(1)
    if pred.shape != target.shape:
        raise BiperError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    pred, target = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    bad = (target < 0) | (target >= num_classes) | (pred < 0) | (pred >= num_classes)
    if bool(bad.any()):
        raise BiperError(f"labels must lie in 0..{num_classes - 1} (or be {ignore_index} in the target)")
    return torch.bincount(target * num_classes + pred, minlength=num_classes ** 2).view(num_classes, num_classes)


def segmentation_scores(cm: torch.Tensor) -> dict:
    """{"miou": %, "pixel_acc": %, "iou": [% or None per class]} of a confusion matrix."""
    cm = cm.to(torch.float64)
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    iou = [float(100 * tp[c] / union[c]) if present[c] else None for c in range(cm.shape[0])]
    total = float(cm.sum())
    miou = float((100 * tp[present] / union[present]).mean()) if bool(present.any()) else 0.0
    return {"miou": miou, "pixel_acc": 100 * float(tp.sum()) / total if total else 0.0, "iou": iou}


def require_pycocotools():
    """The pycocotools ``(COCO, COCOeval)`` classes, or a clear error naming the extra."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise BiperError("detection mAP needs pycocotools: pip install 'biper[dense]'") from None
    return COCO, COCOeval


def _xywh(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def detection_map(predictions: Sequence[dict], targets: Sequence[torch.Tensor] | torch.Tensor) -> dict:
    """{"map50": %, "map": %} of per-image ``predictions`` against per-image ``targets``."""
    if len(predictions) != len(targets):
        raise BiperError(f"{len(predictions)} prediction dicts for {len(targets)} target images")
    COCO, COCOeval = require_pycocotools()
    images, anns, dets, classes = [], [], [], set()
    for i, (pred, rows) in enumerate(zip(predictions, targets)):
        images.append({"id": i + 1})
        for cls, x0, y0, x1, y1 in torch.as_tensor(rows).reshape(-1, 5).tolist():
            if cls < 0:
                continue
            box = _xywh(x0, y0, x1, y1)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(cls) + 1, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
            classes.add(int(cls))
        boxes, scores, labels = (torch.as_tensor(pred[k]) for k in ("boxes", "scores", "labels"))
        for box, score, label in zip(boxes.reshape(-1, 4).tolist(), scores.reshape(-1).tolist(),
                                     labels.reshape(-1).tolist()):
            dets.append({"image_id": i + 1, "category_id": int(label) + 1, "bbox": _xywh(*box),
                         "score": float(score)})
            classes.add(int(label))
    if not anns or not dets:
        return {"map50": 0.0, "map": 0.0}
    gt = {"images": images, "annotations": anns, "info": {},
          "categories": [{"id": c + 1, "name": str(c)} for c in sorted(classes)]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(dets), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return {"map50": max(0.0, 100 * float(stats[1])), "map": max(0.0, 100 * float(stats[0]))}
