"""CenterNet targets, focal loss, decoding and NMS (`biper.models.detection`) on constructed cases.

References: boxes encoded then decoded from a perfect output; NMS against its definition
(greedy by score, a box dropped iff IoU > threshold with a kept higher-scoring box); the focal
loss against a value computed by hand from its formula.
"""

import math
import random

import pytest
import torch

from biper.errors import BiperError
from biper.models.detection import (box_iou, centernet_loss, centernet_targets, decode_detections,
                                    focal_loss, gaussian_radius, nms)

K, STRIDE, SIDE = 10, 4, 64


def _random_scene(seed, n):
    """n boxes (integer pixels, distinct centre cells, pairwise IoU < 0.3) in a SIDE image."""
    rng = random.Random(seed)
    rows, cells = [], set()
    while len(rows) < n:
        w, h = rng.randint(6, 30), rng.randint(6, 30)
        x0, y0 = rng.randint(0, SIDE - w), rng.randint(0, SIDE - h)
        box = [x0, y0, x0 + w, y0 + h]
        cell = (int((x0 + w / 2) // STRIDE), int((y0 + h / 2) // STRIDE))
        if cell in cells or any(box_iou(torch.tensor([box]), torch.tensor([r[1:]]))[0, 0] >= 0.3 for r in rows):
            continue
        cells.add(cell)
        rows.append([rng.randrange(K), *box])
    return rows


def _perfect_output(boxes, hw):
    """The output a perfect detector would give for ``boxes`` (B, M, 5)."""
    t = centernet_targets(boxes, K, hw, STRIDE)
    out = torch.zeros(boxes.shape[0], K + 4, *hw)
    out[:, :K] = torch.logit(t["heatmap"].clamp(1e-6, 1 - 1e-6))
    for i in range(boxes.shape[0]):
        for j in range(boxes.shape[1]):
            if t["mask"][i, j]:
                y, x = divmod(int(t["index"][i, j]), hw[1])
                out[i, K:K + 2, y, x] = t["size"][i, j]
                out[i, K + 2:, y, x] = t["offset"][i, j]
    return out, t


@pytest.mark.parametrize("seed", range(6))
def test_targets_decode_back_to_the_boxes(seed):
    scenes = [_random_scene(seed * 10 + i, n) for i, n in enumerate((1, 3, 4))]
    m = 5
    boxes = torch.full((len(scenes), m, 5), 0.0)
    boxes[..., 0] = -1  # padding rows
    for i, rows in enumerate(scenes):
        boxes[i, :len(rows)] = torch.tensor(rows, dtype=torch.float32)
    out, t = _perfect_output(boxes, (SIDE // STRIDE, SIDE // STRIDE))
    assert t["mask"].sum(1).tolist() == [1, 3, 4]
    dets = decode_detections(out, stride=STRIDE)
    for rows, det in zip(scenes, dets):
        want = sorted(rows, key=lambda r: r[1:])
        got = sorted(zip(det["labels"].tolist(), det["boxes"].tolist()), key=lambda r: r[1])
        assert [g[0] for g in got] == [w[0] for w in want]
        torch.testing.assert_close(torch.tensor([g[1] for g in got]), torch.tensor([w[1:] for w in want]).float(),
                                   atol=1e-4, rtol=0)
        assert torch.all(det["scores"] > 0.99)
    loss, parts = centernet_loss(out, boxes, stride=STRIDE)
    assert parts["size"] < 1e-6 and parts["offset"] < 1e-6
    assert loss < 0.1 * centernet_loss(torch.zeros_like(out), boxes, stride=STRIDE)[0]


def test_heatmap_peak_and_gaussian_width():
    # a 16 x 16 pixel box = 4 x 4 cells: CenterNet radius 1.09 -> r = 1, sigma = 1/2
    assert gaussian_radius(4, 4) == pytest.approx(1.0933, abs=1e-4)
    assert int(gaussian_radius(10, 10)) == 2
    boxes = torch.tensor([[[3, 8, 8, 24, 24], [-1, 0, 0, 0, 0]]], dtype=torch.float32)
    t = centernet_targets(boxes, K, (16, 16), STRIDE)
    hm = t["heatmap"][0, 3]
    assert hm[4, 4] == 1 and t["index"][0, 0] == 4 * 16 + 4 and t["mask"].tolist() == [[True, False]]
    assert hm[4, 5] == pytest.approx(math.exp(-2)) and hm[5, 5] == pytest.approx(math.exp(-4))
    assert hm[4, 6] == 0 and t["heatmap"][0, :3].sum() == 0  # outside the 3x3 window; other classes
    torch.testing.assert_close(t["offset"][0, 0], torch.tensor([0.0, 0.0]))  # centre (16, 16) = cell 4 corner
    torch.testing.assert_close(t["size"][0, 0], torch.tensor([16.0, 16.0]))
    with pytest.raises(BiperError, match="class"):
        centernet_targets(torch.tensor([[[10.0, 0, 0, 4, 4]]]), K, (16, 16), STRIDE)


def test_focal_loss_hand_computed():
    logits = torch.tensor([0.0, math.log(3.0), -1.0]).view(1, 1, 1, 3)
    target = torch.tensor([1.0, 0.5, 0.0]).view(1, 1, 1, 3)
    # p = 1/2, 3/4, 1/(1+e): one positive; negatives weighted by (1-t)^4 p^2
    p2 = 1 / (1 + math.e)
    expected = -(0.25 * math.log(0.5) + 0.0625 * 0.5625 * math.log(0.25) + p2 ** 2 * math.log(1 - p2))
    assert focal_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # no positive: normalised by 1
    assert focal_loss(logits[..., 1:], target[..., 1:]).item() == pytest.approx(
        -(0.0625 * 0.5625 * math.log(0.25) + p2 ** 2 * math.log(1 - p2)), rel=1e-6)


def test_loss_weights_size_and_offset():
    boxes = torch.tensor([[[0, 8, 8, 24, 24]]], dtype=torch.float32)
    out, _ = _perfect_output(boxes, (16, 16))
    out[0, K:K + 2, 4, 4] += torch.tensor([2.0, -4.0])   # size error 2 + 4 over 2 coordinates -> 3
    out[0, K + 2:, 4, 4] += torch.tensor([0.5, 0.25])    # offset error -> 0.375
    loss, parts = centernet_loss(out, boxes, stride=STRIDE)
    assert parts["size"].item() == pytest.approx(3.0) and parts["offset"].item() == pytest.approx(0.375)
    assert loss.item() == pytest.approx(parts["heatmap"].item() + 0.1 * 3.0 + 0.375, rel=1e-6)
    out.requires_grad_(True)
    centernet_loss(out, boxes, stride=STRIDE)[0].backward()
    assert out.grad[0, K:].abs().sum() > 0 and out.grad[0, :K].abs().sum() > 0


def test_nms_constructed_cases():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [30, 30, 40, 40], [0, 0, 2, 1], [0, 0, 1, 1]],
                         dtype=torch.float32)
    scores = torch.tensor([0.9, 0.95, 0.5, 0.4, 0.3])
    # box 1 (best) suppresses box 0 (IoU 9/11); [0,0,1,1] vs [0,0,2,1]: IoU exactly 0.5 -> kept at 0.5
    assert nms(boxes, scores, 0.5).tolist() == [1, 2, 3, 4]
    assert nms(boxes, scores, 0.49).tolist() == [1, 2, 3]
    assert nms(boxes, scores, 0.9).tolist() == [1, 0, 2, 3, 4]
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_its_definition(seed):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(40, 2, generator=gen) * 30
    boxes = torch.cat([xy, xy + 5 + torch.rand(40, 2, generator=gen) * 15], 1)
    scores = torch.rand(40, generator=gen)
    keep = nms(boxes, scores, 0.4).tolist()
    iou = box_iou(boxes, boxes)
    assert scores[keep].tolist() == sorted(scores[keep].tolist(), reverse=True)
    for a in keep:
        assert all(iou[a, b] <= 0.4 for b in keep if b != a)
    for d in set(range(40)) - set(keep):
        assert any(iou[d, a] > 0.4 and scores[a] > scores[d] for a in keep)


def test_decode_nms_is_class_wise_and_thresholds_scores():
    out = torch.full((1, K + 4, 16, 16), -10.0)
    out[:, K:] = 0.0  # sizes and offsets
    # two peaks of class 2 whose boxes overlap heavily, one of class 5 on the same spot
    for cls, (y, x), score in ((2, (4, 4), 3.0), (2, (4, 5), 2.0), (5, (8, 8), 1.0)):
        out[0, cls, y, x] = score
        out[0, K:K + 2, y, x] = torch.tensor([40.0, 40.0])
    out[0, 5, 4, 4] = 2.5
    out[0, K:K + 2, 4, 4] = torch.tensor([40.0, 40.0])
    dets = decode_detections(out, stride=STRIDE, score_threshold=0.5)[0]
    assert dets["labels"].tolist() == [2, 5, 5]  # class 2 duplicate suppressed, class 5 kept
    assert dets["scores"].tolist() == pytest.approx([torch.sigmoid(torch.tensor(v)).item() for v in (3.0, 2.5, 1.0)])
    torch.testing.assert_close(dets["boxes"][0], torch.tensor([0.0, 0.0, 36.0, 36.0]))  # clipped at 0
    dets = decode_detections(out, stride=STRIDE, score_threshold=0.8)[0]
    assert dets["labels"].tolist() == [2, 5]
    with pytest.raises(BiperError, match="K \\+ 4"):
        decode_detections(torch.zeros(1, 4, 2, 2), stride=STRIDE)
