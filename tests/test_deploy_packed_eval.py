"""`biper eval MODEL.biper` evaluates a packed model exactly like its checkpoint: same dataset,
same preprocessing, same keys; the checkpoint's float model is the reference."""

import json

import numpy as np
import pytest

from biper.cli import main

KEYS = {"checkpoint", "stage", "split", "examples", "accuracy", "loss", "global_step", "version"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A class-folder dataset of small PNGs written here, and a short BiPer run of the MLP on it."""
    from PIL import Image

    root = tmp_path_factory.mktemp("packed_eval")
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 21)):
        for c, cls in enumerate(("cat", "dog", "eel")):
            folder = root / "data" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
                img[..., c] //= 4  # a learnable colour cue per class
                Image.fromarray(img).save(folder / f"{i}.png")
    rc = main(["train", "cifar10-resnet20-biper-cpu", "--out", str(root / "run"), "--max-steps", "2", "--quiet",
               "--data-dir", str(root / "data"), "model.name=mlp", "model.num_classes=3", "data.dataset=folder",
               f"data.cache_dir={root / 'cache'}", "data.batch_size=16", "data.eval_batch_size=16",
               "stages.*.epochs=1", "precision=fp32", "channels_last=false"])
    assert rc == 0
    ckpt = root / "run" / "final.pt"
    assert main(["export", str(ckpt), "-o", str(root / "m.biper"), "--no-verify"]) == 0
    return root, ckpt, root / "m.biper"


def _eval(capsys, *argv):
    capsys.readouterr()
    assert main(["eval", *map(str, argv), "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("extra", [(), ("--split", "train", "--subset", "40", "--batch-size", "7")])
def test_packed_eval_equals_checkpoint_eval(run, capsys, extra):
    root, ckpt, packed = run
    want = _eval(capsys, ckpt, "--data-dir", root / "data", *extra)
    got = _eval(capsys, packed, "--data-dir", root / "data", *extra)
    assert set(got) == set(want) == KEYS
    assert got["checkpoint"] == str(packed)
    assert got["examples"] == want["examples"] == (40 if extra else 63)
    assert got["accuracy"] == want["accuracy"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6)
    for key in ("stage", "split", "global_step", "version"):
        assert got[key] == want[key], key
    assert got["global_step"] == 4  # two stages of two steps


def test_packed_eval_uses_the_stored_config_and_dataset_folder(run, capsys):
    root, ckpt, packed = run
    # without --data-dir: the dataset folder recorded in the training config
    got = _eval(capsys, packed)
    summary = json.loads((root / "run" / "summary.json").read_text())
    want = _eval(capsys, ckpt)
    assert got["accuracy"] == want["accuracy"]
    assert got["examples"] == 63
    # the trainer's own last evaluation of the same weights
    assert got["accuracy"] == pytest.approx(summary["final_test_acc"], abs=1e-9)
    assert got["loss"] == pytest.approx(summary["final_test_loss"], rel=1e-5)


def test_packed_eval_text_line(run, capsys):
    root, _, packed = run
    capsys.readouterr()
    assert main(["eval", str(packed), "--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{packed}: stage ") and "test accuracy" in line and "on 63 examples" in line


def test_packed_eval_refuses_gpu_and_foreign_files(run, capsys, tmp_path):
    _, _, packed = run
    capsys.readouterr()
    assert main(["eval", str(packed), "--device", "cuda"]) == 2
    assert "packed models run on the CPU kernels" in capsys.readouterr().err
    (tmp_path / "x.onnx").write_bytes(b"\x08\x09\x12\x05biper:\x00\x00")
    assert main(["eval", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "is an ONNX model; expected a packed model (.biper) or a biper checkpoint (.pt)" in err
    assert len(err.strip().splitlines()) == 1 and "Unsupported operand" not in err
