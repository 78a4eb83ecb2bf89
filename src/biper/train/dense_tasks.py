"""Dense-prediction tasks: per-pixel segmentation and CenterNet-style detection.

Like `biper.train.tasks.ClassificationTask`, a task turns ``(model, x, y)`` into
``(loss, output, parts)`` and adds ``tau`` times the quantizer regulariser; it also says what a
training step counts (`train_counts`), which test metrics it reports (`evaluate`) and which of
them ranks epochs (``main_metric``), so the engine never branches on the task.

- `SegmentationTask`: ``y`` int64 ``(B, H, W)`` with ignore value 255;
  ``loss = CE(logits, y) + dice * Dice(softmax(logits), y) + tau R`` where the soft Dice term is
  ``1 - mean_c (2 sum p_c t_c + 1) / (sum p_c + sum t_c + 1)`` over the classes, ignored
  pixels left out. Training counts pixel accuracy; the test metrics are ``test_loss`` (mean CE
  per pixel), ``test_miou`` and ``test_pixel_acc`` (%, `biper.analysis.dense_metrics`).
- `DetectionTask`: ``y`` float ``(B, M, 5)`` rows ``[cls, x0, y0, x1, y1]`` (cls -1 pads);
  ``loss = centernet_loss(out, y) + tau R`` (`biper.models.detection`), whose parts (heatmap,
  size, offset) are logged. No training accuracy; the test metrics are ``test_loss`` (mean
  per image), ``test_map50`` and ``test_map`` (COCO mAP@[.5:.95]) of the decoded boxes. The
  output stride is the input size over the output size, so packed models evaluate alike.

Example::

    >>> task = SegmentationTask(dice=0.5, tau=0.037)
    >>> loss, logits, parts = task.loss(model, x, y)       # parts: ce, dice, reg
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BiperError
from . import distributed as ddp
from .evaluate import eval_loop
from .regularizer import add_regularizer

__all__ = ["IGNORE_INDEX", "SegmentationTask", "DetectionTask", "soft_dice_loss"]

IGNORE_INDEX = 255


def soft_dice_loss(logits: torch.Tensor, y: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``1 - mean over classes of (2 sum p t + 1) / (sum p + sum t + 1)``, ignored pixels dropped."""
    k = logits.shape[1]
    valid = (y != ignore_index).unsqueeze(1).to(logits.dtype)                   # (B, 1, H, W)
    p = logits.float().softmax(dim=1) * valid
    t = F.one_hot(torch.where(y == ignore_index, 0, y), k).permute(0, 3, 1, 2).to(p.dtype) * valid
    dims = (0, 2, 3)
    score = (2.0 * (p * t).sum(dims) + 1.0) / (p.sum(dims) + t.sum(dims) + 1.0)
    return 1.0 - score.mean()


class _DenseTask:
    """What the dense tasks share: ``tau``, device placement, logged parts, the test metrics."""

    name = ""
    main_metric = ""
    train_metric: str | None = None

    def __init__(self, *, tau: float = 0.0):
        self.tau = float(tau)

    def to(self, device: torch.device):
        return self

    @staticmethod
    def log_parts(parts: dict) -> dict[str, float]:
        """The loss parts kept per epoch (``train_parts`` of the metrics row)."""
        return {k: float(v) for k, v in parts.items() if k != "reg"}

    def evaluate(self, model: nn.Module, loader, **kwargs) -> dict[str, float]:
        """The test metrics of ``model`` over ``loader`` (see the module docstring); ``kwargs``
        as `biper.train.evaluate.eval_loop` takes them."""
        state = self._start()
        eval_loop(model, loader, lambda out, y, hw: self._add(state, out.float(), y, hw), **kwargs)
        return self._finish(state)


class SegmentationTask(_DenseTask):
    """Per-pixel cross-entropy (ignore 255), optional soft Dice, plus ``tau`` R."""

    name = "segmentation"
    main_metric = "test_miou"
    train_metric = "pixel acc"

    def __init__(self, *, dice: float = 0.0, tau: float = 0.0):
        super().__init__(tau=tau)
        self.dice = float(dice or 0.0)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        logits = model(x)                                                   # (B, K, H, W)
        ce = F.cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX)
        parts = {"ce": ce.detach()}
        loss = ce
        if self.dice:
            dice = soft_dice_loss(logits, y)
            loss = loss + self.dice * dice
            parts["dice"] = dice.detach()
        loss, reg = add_regularizer(model, loss, self.tau)
        parts["reg"] = reg.detach()
        return loss, logits, parts

    @staticmethod
    def train_counts(logits: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        """(correctly classified pixels, labelled pixels) of a batch."""
        valid = y != IGNORE_INDEX
        return int(((logits.argmax(dim=1) == y) & valid).sum()), int(valid.sum())

    def _start(self) -> dict:
        return {"cm": None, "loss": 0.0}

    def _add(self, state: dict, logits: torch.Tensor, y: torch.Tensor, hw) -> None:
        from ..analysis.dense_metrics import confusion_matrix

        state["loss"] += F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum").item()
        cm = confusion_matrix(logits.argmax(dim=1).cpu(), y.cpu(), logits.shape[1], ignore_index=IGNORE_INDEX)
        state["cm"] = cm if state["cm"] is None else state["cm"] + cm

    def _finish(self, state: dict) -> dict[str, float]:
        from ..analysis.dense_metrics import segmentation_scores

        cm = state["cm"]
        if cm is None:
            raise BiperError("segmentation evaluation got no batches (empty test set)")
        sums = ddp.all_reduce_sums([state["loss"]] + cm.flatten().tolist())  # over the shards
        cm = torch.tensor(sums[1:], dtype=torch.float64).round().to(torch.int64).view_as(cm)
        scores = segmentation_scores(cm)
        return {"test_loss": sums[0] / max(int(cm.sum()), 1), "test_miou": float(scores["miou"]),
                "test_pixel_acc": float(scores["pixel_acc"])}


def output_stride(x_hw, out: torch.Tensor) -> int:
    """The detector's output stride: input height over output height."""
    stride = int(x_hw[-2]) // int(out.shape[-2])
    if stride < 1 or int(out.shape[-2]) * stride != int(x_hw[-2]):
        raise BiperError(f"detector output {tuple(out.shape[-2:])} does not divide the input {tuple(x_hw)}")
    return stride


class DetectionTask(_DenseTask):
    """CenterNet losses (focal heatmap, L1 size and offset) plus ``tau`` R; mAP on decoded boxes."""

    name = "detection"
    main_metric = "test_map50"
    train_metric = None

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        from ..models.detection import centernet_loss

        out = model(x)                                                      # (B, K + 4, h, w)
        loss, parts = centernet_loss(out.float(), y, stride=output_stride(x.shape, out))
        parts = {k: v.detach() for k, v in parts.items()}
        loss, reg = add_regularizer(model, loss, self.tau)
        parts["reg"] = reg.detach()
        return loss, out, parts

    @staticmethod
    def train_counts(out: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        """(0, images): detection has no per-step accuracy; the count weights the loss."""
        return 0, int(y.shape[0])

    def _start(self) -> dict:
        if ddp.rank_world()[1] > 1:
            raise BiperError("detection evaluation runs in one process (mAP needs every image's boxes); "
                             "evaluate with biper eval after training")
        return {"loss": 0.0, "count": 0, "pred": [], "target": []}

    def _add(self, state: dict, out: torch.Tensor, y: torch.Tensor, hw) -> None:
        from ..models.detection import centernet_loss, decode_detections

        stride = output_stride(hw, out)
        loss, _ = centernet_loss(out, y, stride=stride)
        state["loss"] += float(loss) * len(y)
        state["count"] += len(y)
        state["pred"] += [{k: v.cpu() for k, v in d.items()} for d in decode_detections(out, stride=stride)]
        state["target"] += list(y.cpu())

    def _finish(self, state: dict) -> dict[str, float]:
        from ..analysis.dense_metrics import detection_map

        if not state["count"]:
            raise BiperError("detection evaluation got no batches (empty test set)")
        scores = detection_map(state["pred"], state["target"])
        return {"test_loss": state["loss"] / state["count"], "test_map50": float(scores["map50"]),
                "test_map": float(scores["map"])}
