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


# -- the engine on in-memory dense data (no scene generator needed) ----------------------------

class _DenseData:
    """A tiny dataset whose ``labels`` are masks (N, H, W) or boxes (N, M, 5)."""

    def __init__(self, n: int, task: str):
        g = torch.Generator().manual_seed(n)
        self.images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        self.task, self.mean, self.std = task, (0.5,) * 3, (0.25,) * 3
        if task == "segmentation":
            self.classes = ["background", *CLASSES]
            self.labels = torch.randint(0, 11, (n, 32, 32), generator=g)
        else:
            self.classes = list(CLASSES)
            self.labels = torch.full((n, 2, 5), -1.0)
            self.labels[:, 0] = torch.tensor([3.0, 2.0, 2.0, 20.0, 18.0])

    def __len__(self):
        return len(self.images)

    def fetch(self, indices, *, augment, generator=None):
        return self.images[indices]


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_engine_trains_dense_tasks_and_eval_repeats_the_numbers(tmp_path, monkeypatch, capsys, task):
    import biper.data

    if task == "detection":
        pytest.importorskip("pycocotools")
    monkeypatch.setattr(biper.data, "load_dataset", lambda name, d, split, **k: _DenseData(
        16 if split == "train" else 8, task))
    from biper.train import train

    cfg = RunConfig.from_dict({
        "model": {"name": "segnet_resnet20" if task == "segmentation" else "centernet_resnet20"},
        "binarize": {"weight_quantizer": "biper", "input_quantizer": "recu_sign"},
        "data": {"dataset": "synthetic", "batch_size": 8, "eval_batch_size": 8}, "threads": 1,
        "stages": [{"epochs": 1, "lr": 0.01, "tau": 0.03,
                    "task": {"name": task, **({"dice": 0.5} if task == "segmentation" else {})}}]})
    summary = train(cfg, tmp_path / "run", quiet=True)
    line = capsys.readouterr().out
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    keys = ("test_miou", "test_pixel_acc") if task == "segmentation" else ("test_map50", "test_map")
    assert summary["main_metric"] == keys[0] and summary["final_test_acc"] is None
    for key in keys:
        assert summary[f"final_{key}"] == row[key] and 0.0 <= row[key] <= 100.0
    if task == "segmentation":
        assert 0.0 < row["train_acc"] < 100.0 and set(row["train_parts"]) == {"ce", "dice"}
        assert "mIoU" in line and "pixel acc" in line
    else:
        assert row["train_acc"] is None and set(row["train_parts"]) == {"heatmap", "size", "offset"}
        assert "mAP@0.5" in line and " acc " not in line.split("|")[0]
    assert main(["eval", str(tmp_path / "run" / "final.pt"), "--json", "--quiet"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["task"] == task
    for key in keys + ("test_loss",):
        assert got[key[len("test_"):]] == pytest.approx(row[key], rel=1e-6)


# -- the CLI on tiny scenes ----------------------------------------------------------------------

Image = pytest.importorskip("PIL.Image")


def _fake_cifar_tar(folder, per_class: int = 2) -> None:
    """A CIFAR-10 JPEG tar (``cifar10-jpeg/<split>/<class>/<n>.jpg``, 32x32) of blobs on grey."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "cifar10-jpeg.tar", "w") as tf:
        for split in ("train", "test"):
            for c, name in enumerate(CLASSES):
                for i in range(per_class):
                    arr = np.full((32, 32, 3), 128, np.uint8)
                    arr[6:26, 6:26] = rng.integers(0, 256, 3, dtype=np.uint8)     # an object on a border
                    buf = io.BytesIO()
                    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
                    info = tarfile.TarInfo(f"cifar10-jpeg/{split}/{name}/{i:04d}.jpg")
                    info.size = len(buf.getvalue())
                    tf.addfile(info, io.BytesIO(buf.getvalue()))


TINY = ["data.options.image_size=32", "data.options.train_size=16", "data.options.test_size=8",
        "data.options.min_scale=10", "data.options.max_scale=16", "data.options.max_objects=2",
        "data.batch_size=8", "data.eval_batch_size=8", "threads=1", "channels_last=false"]


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
    pytest.importorskip("pycocotools")
    root = tmp_path_factory.mktemp("scenes")
    _fake_cifar_tar(root / "data")
    return root


def _train(root, recipe, name, *extra):
    out = root / name
    if not (out / "summary.json").is_file():
        argv = ["train", recipe, "--data-dir", str(root / "data"), "--max-steps", "2", "--out", str(out),
                "--quiet", *TINY, f"data.cache_dir={root / 'cache'}", *extra]
        assert main(argv) == 0
    return out


def _eval_json(capsys, path, root):
    capsys.readouterr()
    assert main(["eval", str(path), "--data-dir", str(root / "data"), "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("kind, keys", [("seg", ("miou", "pixel_acc")), ("det", ("map50", "map"))])
def test_train_eval_export_on_tiny_scenes(scenes_dir, capsys, kind, keys):
    out = _train(scenes_dir, f"scenes-{kind}-biper-cpu", kind)
    summary = json.loads((out / "summary.json").read_text())
    main_key = "test_miou" if kind == "seg" else "test_map50"
    assert summary["main_metric"] == main_key
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2                                       # one epoch per stage (max_steps split)
    for key in keys:
        value = summary[f"final_test_{key}"]
        assert value == rows[-1][f"test_{key}"] and 0.0 <= value <= 100.0
    assert summary[f"best_{main_key}"] == max(r[main_key] for r in rows)
    if kind == "seg":
        assert all(0.0 <= r["train_acc"] <= 100.0 for r in rows)
    else:
        assert all(r["train_acc"] is None for r in rows)
        assert set(rows[0]["train_parts"]) >= {"heatmap", "size", "offset"}
    ckpt_eval = _eval_json(capsys, out / "final.pt", scenes_dir)
    assert ckpt_eval["task"] == ("segmentation" if kind == "seg" else "detection")
    for key in keys:
        assert ckpt_eval[key] == pytest.approx(summary[f"final_test_{key}"], abs=1e-9)
    capsys.readouterr()
    assert main(["summary", str(out / "final.pt"), "--json"]) == 0
    tests = json.loads(capsys.readouterr().out)["test_metrics"]
    assert all(tests[f"test_{key}"] == summary[f"final_test_{key}"] for key in keys)
    packed = scenes_dir / f"{kind}.biper"
    assert main(["export", str(out / "final.pt"), "-o", str(packed)]) == 0
    packed_eval = _eval_json(capsys, packed, scenes_dir)
    for key in keys:  # same predictions: the packed kernels equal the training model
        assert packed_eval[key] == pytest.approx(ckpt_eval[key], abs=1e-6)


@pytest.mark.parametrize("name", ["scenes-seg-biper", "scenes-det-biper", "scenes-seg-bnn-cpu", "scenes-det-bnn-cpu"])
def test_every_scenes_recipe_runs_one_step_per_stage(scenes_dir, name):
    from biper.recipes import list_recipes
    from biper.train import load_run_config

    assert {n for n in list_recipes() if n.startswith("scenes-")} == {
        f"scenes-{t}-{m}" for t in ("seg", "det") for m in ("biper", "biper-cpu", "bnn-cpu")}
    out = scenes_dir / f"one-{name}"
    assert main(["train", name, "--data-dir", str(scenes_dir / "data"), "--max-steps", "1", "--out", str(out),
                 "--quiet", *TINY, f"data.cache_dir={scenes_dir / 'cache'}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["epochs"] == 2 and summary["main_metric"] in ("test_miou", "test_map50")
    cfg = load_run_config(name)
    method = "bnn" if "bnn" in name else "biper"
    assert [cfg.stage_binarize(i).weight_quantizer for i in (0, 1)] == [method, method]


def test_compare_two_methods_reports_miou(scenes_dir, capsys):
    out = scenes_dir / "cmp"
    assert main(["compare", "scenes-seg-biper-cpu", *TINY, f"data.cache_dir={scenes_dir / 'cache'}",
                 "--methods", "biper,fp", "--max-steps", "2", "--out", str(out), "--data-dir",
                 str(scenes_dir / "data"), "--quiet", "--no-plot"]) == 0
    table = (out / "results.md").read_text()
    assert "final test mIoU %" in table and "| fp |" in table and "| biper |" in table
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert "final_test_miou" in header and "best_test_miou" in header
    results = json.loads((out / "results.json").read_text())
    assert results["metric"] == "test_miou"
    for run in results["runs"]:
        summary = json.loads((scenes_dir / "cmp" / "runs" / f"{run['method']}-seed0" / "summary.json").read_text())
        assert run["final_test_miou"] == summary["final_test_miou"]


def test_infer_writes_masks_boxes_and_plots(scenes_dir, capsys):
    seg = _train(scenes_dir, "scenes-seg-biper-cpu", "seg")
    packed = scenes_dir / "seg-infer.biper"
    assert main(["export", str(seg / "final.pt"), "-o", str(packed)]) == 0
    out = scenes_dir / "infer-seg"
    capsys.readouterr()
    assert main(["infer", str(packed), "--test-images", "3", "--data-dir", str(scenes_dir / "data"),
                 "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "segmentation" and len(result["predictions"]) == 3
    # the mask PNG holds the class indices the model predicts (its argmax)
    from biper.data import TensorLoader, load_dataset
    from biper.deploy import load_packed

    ds = load_dataset("scenes", scenes_dir / "data", "test", subset=3, cache_dir=scenes_dir / "cache",
                      progress=False, target="mask", image_size=32, train_size=16, test_size=8,
                      min_scale=10, max_scale=16, max_objects=2)
    x, _ = next(iter(TensorLoader(ds, 3, train=False)))
    with torch.no_grad():
        want = load_packed(packed)(x).argmax(1)
    for i in range(3):
        got = np.array(Image.open(out / f"test-{i:04d}-mask.png"))
        assert got.shape == (32, 32) and np.array_equal(got, want[i].numpy())
    det = _train(scenes_dir, "scenes-det-biper-cpu", "det")
    out = scenes_dir / "infer-det"
    capsys.readouterr()
    assert main(["infer", str(det / "final.pt"), "--test-images", "2", "--data-dir", str(scenes_dir / "data"),
                 "--out", str(out), "--score-threshold", "0"]) == 0
    text = capsys.readouterr().out
    boxes = json.loads((out / "test-0000-boxes.json").read_text())
    assert boxes and set(boxes[0]) == {"label", "class", "score", "xyxy"} and boxes[0]["label"] in CLASSES
    assert boxes == sorted(boxes, key=lambda b: -b["score"]) and "test-0000:" in text
    pytest.importorskip("matplotlib")
    for model, name in ((packed, "seg"), (det / "final.pt", "det")):
        plots = scenes_dir / f"plots-{name}"
        assert main(["infer", str(model), "--test-images", "1", "--data-dir", str(scenes_dir / "data"),
                     "--out", str(plots), "--plot"]) == 0
        img = Image.open(plots / "test-0000-plot.png")
        assert img.format == "PNG" and img.size[0] > 2 * img.size[1]   # input | prediction | truth


def test_dense_bad_inputs_exit_2_with_one_line(scenes_dir, capsys):
    data = str(scenes_dir / "data")
    cases = [
        (["train", "scenes-seg-biper-cpu", "--data-dir", data, "--max-steps", "1", "--out", str(scenes_dir / "bad"),
          *TINY, f"data.cache_dir={scenes_dir / 'cache'}", "stages.*.task.name=detection"],
         "stages.0.task.name: detection needs a detection dataset, but data.dataset scenes gives segmentation"),
        (["infer", str(_train(scenes_dir, "scenes-seg-biper-cpu", "seg") / "final.pt"), "--test-images", "1",
          "--data-dir", data], "segmentation masks need --out DIR"),
        (["infer", str(scenes_dir / "seg" / "final.pt")], "give the inputs as --input PATH... or as --test-images N"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
