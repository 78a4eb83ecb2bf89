"""mIoU / pixel accuracy and COCO mAP (`biper.analysis.dense_metrics`) on hand-computed cases.

mAP reference values are derived by hand from COCO's definition: greedy matching by score, the
precision envelope read at the 101 recall points 0, 0.01, ..., 1, averaged over IoU thresholds
0.5:0.05:0.95 for ``map``.
"""

import sys

import pytest
import torch

from biper.analysis.dense_metrics import confusion_matrix, detection_map, segmentation_scores
from biper.errors import BiperError


def _mask(rows):
    return torch.tensor(rows, dtype=torch.int64)


def test_perfect_segmentation():
    target = _mask([[0, 0, 1, 1], [0, 2, 2, 1], [0, 0, 0, 0]])
    scores = segmentation_scores(confusion_matrix(target.clone(), target, 4))
    assert scores["miou"] == 100 and scores["pixel_acc"] == 100
    assert scores["iou"] == [100, 100, 100, None]  # class 3 appears nowhere: left out of the mean


def test_empty_prediction_all_background():
    target = _mask([[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    scores = segmentation_scores(confusion_matrix(torch.zeros_like(target), target, 3))
    # background: TP 12, FP 4 -> 12/16; class 1: TP 0 -> 0; class 2 absent
    assert scores["iou"] == [75.0, 0.0, None]
    assert scores["miou"] == 37.5 and scores["pixel_acc"] == 75.0


def test_partial_overlap_ignore_and_logits():
    target = _mask([[0, 1, 1, 255], [0, 1, 2, 255]])
    pred = _mask([[0, 1, 2, 2], [1, 1, 2, 0]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 1], [0, 0, 1]]  # the two 255 pixels are not counted
    scores = segmentation_scores(cm)
    # IoU: bg 1/(1+1+0)=1/2, cls1 2/(2+1+1)=1/2, cls2 1/(1+1+0)=1/2
    assert scores["iou"] == pytest.approx([50.0, 50.0, 50.0])
    assert scores["miou"] == pytest.approx(50.0) and scores["pixel_acc"] == pytest.approx(400 / 6)
    logits = torch.nn.functional.one_hot(pred.clamp(max=2), 3).permute(2, 0, 1).unsqueeze(0).float()
    assert torch.equal(confusion_matrix(logits, target.unsqueeze(0), 3), cm)
    # a class only predicted counts with IoU 0
    scores = segmentation_scores(confusion_matrix(_mask([[0, 2]]), _mask([[0, 0]]), 3))
    assert scores["iou"] == [50.0, None, 0.0] and scores["miou"] == 25.0


def test_no_counted_pixel_and_bad_labels():
    target = torch.full((2, 3), 255)
    assert segmentation_scores(confusion_matrix(torch.zeros(2, 3), target, 2)) == {
        "miou": 0.0, "pixel_acc": 0.0, "iou": [None, None]}
    with pytest.raises(BiperError, match="0..1"):
        confusion_matrix(_mask([[0, 2]]), _mask([[0, 1]]), 2)
    with pytest.raises(BiperError, match="shape"):
        confusion_matrix(_mask([[0, 1, 1]]), _mask([[0, 1]]), 2)


# ---- detection mAP (pycocotools) ------------------------------------------------------------

def _det(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels, dtype=torch.int64)}


TARGETS = [torch.tensor([[0, 0, 0, 10, 10], [0, 20, 20, 30, 30], [-1, 0, 0, 0, 0]], dtype=torch.float32),
           torch.tensor([[3, 5, 5, 25, 15], [-1, 0, 0, 0, 0], [-1, 0, 0, 0, 0]], dtype=torch.float32)]


@pytest.fixture
def coco():
    pytest.importorskip("pycocotools", reason="pycocotools (extra 'dense') is not installed")


def test_map_perfect(coco):
    preds = [_det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [0, 0]), _det([[5, 5, 25, 15]], [0.7], [3])]
    assert detection_map(preds, TARGETS) == {"map50": pytest.approx(100.0), "map": pytest.approx(100.0)}


def test_map_no_predictions(coco):
    preds = [_det([], [], []), _det([], [], [])]
    assert detection_map(preds, TARGETS) == {"map50": 0.0, "map": 0.0}
    # predictions of the wrong class only: nothing matches
    preds = [_det([[0, 0, 10, 10]], [0.9], [1]), _det([], [], [])]
    assert detection_map(preds, TARGETS) == {"map50": 0.0, "map": 0.0}


def test_map_partial_hand_derived(coco):
    # class 0, image 0: a false positive (score 0.9), then a hit on the first box with IoU 0.64
    # (score 0.8); the second box is never found. Precision/recall: (0, 0), (1/2, 1/2); the
    # envelope is 1/2 for recall <= 1/2 (51 of the 101 points), 0 above: AP = 51 * 0.5 / 101.
    # IoU 0.64 counts at the thresholds 0.5, 0.55, 0.6 only: mAP = 3/10 of that.
    preds = [_det([[40, 40, 50, 50], [0, 0, 10, 6.4]], [0.9, 0.8], [0, 0]), _det([], [], [])]
    ap0 = 100 * 51 * 0.5 / 101
    # class 3 (image 1) is not detected: AP 0; the mean is over the two classes with ground truth
    got = detection_map(preds, TARGETS)
    assert got["map50"] == pytest.approx(ap0 / 2, abs=1e-9)
    assert got["map"] == pytest.approx(ap0 * 3 / 10 / 2, abs=1e-9)
    # class 3 found perfectly too: the class mean becomes (ap0 + 100) / 2
    preds[1] = _det([[5, 5, 25, 15]], [0.7], [3])
    got = detection_map(preds, TARGETS)
    assert got["map50"] == pytest.approx((ap0 + 100) / 2, abs=1e-9)
    assert got["map"] == pytest.approx((ap0 * 3 / 10 + 100) / 2, abs=1e-9)


def test_map_without_pycocotools_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(BiperError, match=r"pip install 'biper\[dense\]'"):
        detection_map([_det([], [], [])], TARGETS[:1])
    with pytest.raises(BiperError, match="prediction dicts"):
        detection_map([], TARGETS)
