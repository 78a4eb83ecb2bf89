"""The COCO-style loader on a tiny dataset written here (3 PNG images, boxes, polygons, one
RLE and one crowd region): categories mapped in id order, masks from polygons, boxes scaled,
same dense interface as the scenes. References: rectangles drawn by hand, the scale factor."""

import json

import numpy as np
import pytest
import torch

from biper.data import TensorLoader, load_dataset
from biper.errors import BiperError

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("pycocotools", reason="the coco loader needs pycocotools (extra 'dense')")


def _rect(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture()
def coco(tmp_path):
    """Images 64x32 (w x h), 32x32 and 48x48; categories with ids 7 ("cat") and 3 ("dog")."""
    rng = np.random.default_rng(0)
    sizes = {1: (64, 32), 2: (32, 32), 3: (48, 48)}
    (tmp_path / "val2017").mkdir()
    for i, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            tmp_path / "val2017" / f"{i:012d}.png")
    rle_mask = np.zeros((48, 48), np.uint8, order="F")
    rle_mask[24:40, 8:24] = 1
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(rle_mask)
    rle["counts"] = rle["counts"].decode()
    anns = [
        # image 1 (64x32): a big dog and a small cat on top of it
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 32, 32], "area": 1024,
         "segmentation": _rect(0, 0, 32, 32), "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [16, 8, 16, 8], "area": 128,
         "segmentation": _rect(16, 8, 32, 16), "iscrowd": 0},
        # image 2: one cat and a crowd region (ignored in masks, no box)
        {"id": 3, "image_id": 2, "category_id": 7, "bbox": [4, 4, 8, 12], "area": 96,
         "segmentation": _rect(4, 4, 12, 16), "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 3, "bbox": [20, 20, 8, 8], "area": 64,
         "segmentation": _rect(20, 20, 28, 28), "iscrowd": 1},
        # image 3: an RLE dog
        {"id": 5, "image_id": 3, "category_id": 3, "bbox": [8, 24, 16, 16], "area": 256,
         "segmentation": rle, "iscrowd": 0},
    ]
    doc = {"images": [{"id": i, "file_name": f"{i:012d}.png", "width": w, "height": h}
                      for i, (w, h) in sizes.items()],
           "annotations": anns,
           "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))
    return tmp_path


def test_masks_boxes_and_categories(coco):
    seg = load_dataset("coco", coco, "test", image_size=32, pad=0)
    det = load_dataset("coco", coco, "val", image_size=32, target="boxes", pad=0)
    assert seg.classes == ["background", "dog", "cat"] and det.classes == ["dog", "cat"]
    assert (seg.task, det.task, len(seg), seg.max_objects) == ("segmentation", "detection", 3, 2)
    # image 1 is squeezed horizontally by 2: dog covers x < 16, cat x 8..16, y 8..16 on top
    m = np.zeros((32, 32), np.uint8)
    m[:, :16] = 1
    m[8:16, 8:16] = 2
    assert (seg.masks[0].numpy() == m).all()
    assert det.boxes[0].tolist() == [[0, 0, 0, 16, 32], [1, 8, 8, 16, 16]]
    m = np.zeros((32, 32), np.uint8)
    m[4:16, 4:12] = 2
    m[20:28, 20:28] = 255
    assert (seg.masks[1].numpy() == m).all()
    assert det.boxes[1].tolist() == [[1, 4, 4, 12, 16], [-1, 0, 0, 0, 0]]
    m = np.zeros((32, 32), np.uint8)
    m[16:27, 5:16] = 1                                                # 48 -> 32 nearest
    got = seg.masks[2].numpy()
    assert set(np.unique(got)) == {0, 1} and abs(int((got == 1).sum()) - 11 * 11) <= 12
    assert det.boxes[2, 0].tolist() == pytest.approx([0, 8 * 2 / 3, 16, 24 * 2 / 3, 80 / 3])
    ref = np.asarray(Image.open(coco / "val2017" / "000000000002.png"))
    assert (seg.images[1].numpy().transpose(1, 2, 0) == ref).all()     # 32x32: unchanged


def test_flip_batch_and_loader(coco):
    det = load_dataset("coco", coco, "test", image_size=32, target="boxes", pad=0)
    g = torch.Generator().manual_seed(3)
    x, y = det.fetch_pair(torch.arange(3), augment=True, generator=g)
    g2 = torch.Generator().manual_seed(3)                             # draws: top, left, flip
    torch.randint(0, 1, (3,), generator=g2), torch.randint(0, 1, (3,), generator=g2)
    flip = torch.randint(0, 2, (3,), generator=g2).bool()
    assert flip.any() and not flip.all()
    for b in range(3):
        ref = det.images[b].flip(-1) if flip[b] else det.images[b]
        assert torch.equal(x[b], ref)
        for row, orig in zip(y[b].tolist(), det.boxes[b].tolist()):
            if orig[0] < 0:
                assert row == [-1, 0, 0, 0, 0]
            elif flip[b]:
                assert row == pytest.approx([orig[0], 32 - orig[3], orig[2], 32 - orig[1], orig[4]])
            else:
                assert row == pytest.approx(orig)
    xs, ys = next(iter(TensorLoader(det, 2, train=False)))
    assert xs.shape == (2, 3, 32, 32) and ys.shape == (2, 2, 5)


def test_missing_files_and_bad_options_are_one_line_errors(coco, tmp_path):
    with pytest.raises(BiperError, match="no COCO annotation file for split 'train'.*"
                                         "annotations/instances_train.json"):
        load_dataset("coco", coco, "train")
    with pytest.raises(BiperError, match="COCO folder .* does not exist"):
        load_dataset("coco", tmp_path / "nope", "test")
    with pytest.raises(BiperError, match="image_size must be an integer >= 16"):
        load_dataset("coco", coco, "test", image_size=8)
    with pytest.raises(BiperError, match="target must be one of mask, boxes"):
        load_dataset("coco", coco, "test", target="points")
    with pytest.raises(BiperError, match="unknown option.*allowed: target, image_size"):
        load_dataset("coco", coco, "test", size=3)
    (coco / "val2017" / "000000000003.png").unlink()
    with pytest.raises(BiperError, match="COCO image '000000000003.png' not found"):
        load_dataset("coco", coco, "test")
    (coco / "annotations" / "instances_val2017.json").write_text("{not json")
    with pytest.raises(BiperError, match="cannot read COCO annotations"):
        load_dataset("coco", coco, "test")
