"""Dense tasks in training: losses against hand-computed values, task/config validation, and the
CLI path on tiny scenes (train one step, summary, eval of checkpoint and packed file, compare,
infer masks / boxes / plots)."""

from __future__ import annotations

import io
import json
import math
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from biper.cli import main
from biper.errors import BiperError
from biper.train.config import RunConfig
from biper.train.dense_tasks import DetectionTask, SegmentationTask, output_stride, soft_dice_loss
from biper.train.tasks import ClassificationTask, build_task, check_task_data, eval_task
from biper.validate import ConfigError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _Const(torch.nn.Module):
    """A 'model' that returns fixed logits (plus a parameter so a regulariser could see it)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.logits + 0 * self.w


# -- losses and counts against hand-computed values --------------------------------------------

def test_segmentation_loss_is_pixel_ce_ignoring_255_and_dice_matches_hand_value():
    # two pixels, two classes; pixel 0 has p = (0.5, 0.5), pixel 1 p(class 1) = e/(1+e); pixel 2 ignored
    logits = torch.tensor([[[[0.0, 0.0, 5.0]], [[0.0, 1.0, -5.0]]]])      # (1, 2, 1, 3)
    y = torch.tensor([[[0, 1, 255]]])
    task = SegmentationTask(dice=0.5)
    loss, out, parts = task.loss(_Const(logits), torch.zeros(1, 3, 1, 3), y)
    p1 = math.e / (1 + math.e)
    ce = (-math.log(0.5) - math.log(p1)) / 2
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-6)
    # Dice by hand: class 0: p = (0.5, 1 - p1), t = (1, 0); class 1: p = (0.5, p1), t = (0, 1)
    d0 = (2 * 0.5 + 1) / ((0.5 + 1 - p1) + 1 + 1)
    d1 = (2 * p1 + 1) / ((0.5 + p1) + 1 + 1)
    assert parts["dice"].item() == pytest.approx(1 - (d0 + d1) / 2, rel=1e-6)
    assert loss.item() == pytest.approx(ce + 0.5 * (1 - (d0 + d1) / 2), rel=1e-6)
    assert task.train_counts(logits, y) == (2, 2)   # argmax (first on ties) 0, 1; the ignored pixel not counted
    assert task.train_counts(logits, torch.tensor([[[1, 0, 1]]])) == (0, 3)  # argmax 0, 1, 0
    assert set(task.log_parts(parts)) == {"ce", "dice"}


def test_dice_of_a_confident_perfect_prediction_is_near_zero_and_of_the_opposite_near_one():
    y = torch.tensor([[[0, 1], [1, 0]]])
    perfect = F.one_hot(y, 2).permute(0, 3, 1, 2).float() * 40 - 20
    assert soft_dice_loss(perfect, y).item() == pytest.approx(1 - (2 * 2 + 1) / (2 + 2 + 1), abs=1e-6)
    assert soft_dice_loss(-perfect, y).item() == pytest.approx(1 - 1 / 5, abs=1e-6)


def test_classification_counts_are_unchanged_and_detection_counts_images():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert ClassificationTask.train_counts(logits, torch.tensor([0, 0, 0])) == (2, 3)
    assert DetectionTask.train_counts(torch.zeros(5, 14, 2, 2), torch.zeros(5, 4, 5)) == (0, 5)
    assert output_stride((1, 3, 64, 64), torch.zeros(1, 14, 16, 16)) == 4
    with pytest.raises(BiperError, match="does not divide"):
        output_stride((1, 3, 30, 30), torch.zeros(1, 14, 8, 8))


def test_segmentation_evaluate_equals_hand_counted_miou():
    # one 2x2 image, 3 classes: pred (0, 1 / 1, 2), truth (0, 1 / 2, 2)
    pred = torch.tensor([[[0, 1], [1, 2]]])
    logits = F.one_hot(pred, 3).permute(0, 3, 1, 2).float() * 10
    y = torch.tensor([[[0, 1], [2, 2]]])

    class Loader(list):
        num_real = 1

    got = SegmentationTask().evaluate(_Const(logits), Loader([(torch.zeros(1, 3, 2, 2), y)]),
                                      device=torch.device("cpu"))
    # IoU: class 0 1/1, class 1 1/2, class 2 1/2 -> mIoU 66.67 %; pixel acc 3/4
    assert got["test_miou"] == pytest.approx(200 / 3, rel=1e-6)
    assert got["test_pixel_acc"] == pytest.approx(75.0)
    ref = F.cross_entropy(logits, y, reduction="mean").item()
    assert got["test_loss"] == pytest.approx(ref, rel=1e-6)


# -- config and task selection -----------------------------------------------------------------

def _cfg(task, dataset="synthetic"):
    return RunConfig.from_dict({"model": {"name": "mlp"}, "data": {"dataset": dataset},
                                "stages": [{"epochs": 1, "lr": 0.1, "tau": 0.5, "task": task}]})


def test_task_names_build_the_dense_tasks():
    seg = build_task(_cfg({"name": "segmentation", "dice": 0.25}), 0, dict, torch.device("cpu"))
    assert isinstance(seg, SegmentationTask) and seg.dice == 0.25 and seg.tau == 0.5
    det = build_task(_cfg({"name": "detection"}), 0, dict, torch.device("cpu"))
    assert isinstance(det, DetectionTask) and det.main_metric == "test_map50"
    assert eval_task(_cfg({"name": "segmentation"})).main_metric == "test_miou"
    assert eval_task(_cfg({})).main_metric == "test_acc"


@pytest.mark.parametrize("task, message", [
    ({"name": "segmentaton"}, "stages.0.task.name: must be one of classification, distillation, segmentation, "
                              "detection"),
    ({"name": "classification", "dice": 0.5}, "stages.0.task.dice: the Dice weight belongs to the segmentation"),
    ({"name": "segmentation", "dice": -1}, "stages.0.task.dice: must be"),
    ({"name": "detection", "teacher": "previous"}, "stages.0.task.teacher: only the distillation task"),
])
def test_bad_task_configs_name_the_key(task, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        _cfg(task)


def test_task_and_dataset_must_agree():
    class Scenes:
        task = "segmentation"

    check_task_data(_cfg({"name": "segmentation"}), Scenes())
    with pytest.raises(BiperError, match="stages.0.task.name: detection needs a detection dataset, but data.dataset "
                                         "synthetic gives segmentation targets"):
        check_task_data(_cfg({"name": "detection"}), Scenes())
    with pytest.raises(BiperError, match="classification dataset"):
        check_task_data(_cfg({}), Scenes())
    with pytest.raises(BiperError, match="needs a segmentation dataset.*gives classification"):
        check_task_data(_cfg({"name": "segmentation"}), object())
