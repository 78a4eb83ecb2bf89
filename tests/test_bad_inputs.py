"""Table-driven bad input across the whole CLI: one clear line naming what is wrong, exit code 2,
no traceback. Each row is (argv, substring of the message). Files the rows need are made here."""

from __future__ import annotations

import pytest

from biper.cli import main

R = "cifar10-resnet20-biper"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "empty").mkdir()
    for cls in ("a", "b"):
        (root / "cls" / "train" / cls).mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(root / "cls" / "train" / "a" / "x.png")
    (root / "bad_key.yaml").write_text("model: {name: mlp}\nstages: [{epochs: 1, lr: 0.1, lrr: 2}]\n")
    (root / "bad_syntax.yaml").write_text("model: {name: mlp\nstages: [\n")
    (root / "not_map.yaml").write_text("- 1\n- 2\n")
    (root / "corrupt.pt").write_bytes(b"garbage\n")
    return root


CASES = [
    # recipes, overrides and YAML files
    (["train", "cifar10-resnet20-bipr"], "unknown recipe 'cifar10-resnet20-bipr' (did you mean 'cifar10-resnet20-biper'?)"),
    (["train", R, "stages.0.lr"], "override 'stages.0.lr' must look like key=value"),
    (["train", R, "stages.0.lr=-1"], "stages.0.lr: must be a finite number >= 0"),
    (["train", R, "stages.0.lr=fast"], "stages.0.lr: must be a finite number >= 0, got 'fast'"),
    (["train", R, "stages.0.epochs=0"], "stages.0.epochs: must be an integer >= 1, got 0"),
    (["train", R, "data.batch_size=0"], "data.batch_size: must be an integer >= 1, got 0"),
    (["train", R, "binarize.weight_params.omega0=0"], "biper omega0 must be > 0"),
    (["train", R, "binarize.weight_params.omega0=-20"], "biper omega0 must be > 0"),
    (["train", R, "binarize.weight_quantizer=bipr"], "unknown quantizer 'bipr' (did you mean 'biper'?)"),
    (["train", R, "binarize.weight_quantizer=approx_sign"], "is an activation quantizer"),
    (["train", R, "binarize.scalling=none"], "unknown binarize config key 'scalling' (did you mean 'scaling'?)"),
    (["train", R, "stages.0.optimizer=sdg"], "stages.0.optimizer: must be one of sgd, adam, adamw, got 'sdg' (did you mean 'sgd'?)"),
    (["train", R, "stages.0.lrr=0.1"], "stages.0.lrr: unknown key (did you mean 'lr'?)"),
    (["train", R, "stages.9.lr=0.1"], "stages.9: index out of range"),
    (["train", R, "data.dataset=cifar100"], "data.dataset: must be one of cifar10, folder, imagenet, synthetic"),
    (["train", R, "model.name=resnet99"], "model.name: must be one of"),
    (["train", R, "precision=fp16"], "precision: must be one of fp32, bf16, amp, got 'fp16'"),
    (["train", R, "device=tpu"], "device: must be auto, cpu, cuda or cuda:N"),
    (["train", R, "seed=-1"], "seed: must be an integer >= 0"),
    (["train", R, "stages.0.momentum=1.5"], "stages.0.momentum: must be a finite number in [0, 1)"),
    (["train", R, "omega0_init={target_qe: -1}"], "omega0_init.target_qe must be > 0"),
    (["train", "{files}/bad_key.yaml"], "stages.0.lrr: unknown key (did you mean 'lr'?)"),
    (["train", "{files}/bad_syntax.yaml"], "is not valid YAML at line 2"),
    (["train", "{files}/not_map.yaml"], "must be a mapping of keys to values, got list"),
    # data folders
    (["train", R, "--data-dir", "{files}/missing", "--out", "{files}/o1"], "no CIFAR-10 found at"),
    (["train", R, "--data-dir", "{files}/empty", "--out", "{files}/o2"], "no CIFAR-10 found at"),
    (["train", R, "data.dataset=folder", "--data-dir", "{files}/cls", "--out", "{files}/o3"], "/cls/train/b has no images"),
    # checkpoints and packed models
    (["eval", "{files}/nope.pt"], "checkpoint {files}/nope.pt does not exist"),
    (["eval", "{files}/corrupt.pt"], "checkpoint {files}/corrupt.pt is corrupt"),
    (["export", "{files}/nope.pt", "-o", "{files}/x.biper"], "checkpoint {files}/nope.pt does not exist"),
    (["export", "{files}/corrupt.pt", "-o", "{files}/x.biper"], "checkpoint {files}/corrupt.pt is corrupt"),
    (["infer", "{files}/nope.biper", "--input", "{files}/cls"], "cannot read packed model {files}/nope.biper"),
    (["infer", "{files}/corrupt.pt", "--input", "{files}/cls"], "not a valid biper packed model (wrong magic bytes"),
    (["analyze", "{files}/nope.pt"], "does not exist"),
    (["summary", "resnet99"], "'resnet99' is not a file, a model"),
    # analysis
    (["qe", "--omega", "0", "--b", "0.05"], "--omega must be > 0, got 0.0"),
    (["qe", "--omega", "20", "--b", "-1"], "--b must be > 0, got -1.0"),
    (["qe", "--b", "0.05", "--target-qe", "2"], "target_qe 2 is not reachable"),
    (["qe", "--surrogate", "sawtooth", "--omega", "20", "--b", "0.05"], "unknown surrogate 'sawtooth'"),
    (["qe", "--surrogate", "tanh:-1", "--omega", "20", "--b", "0.05"], "beta must be > 0 and finite"),
    (["train", "cifar10-resnet20-biper-fourier-cpu", "binarize.weight_params.K=0.5"], "K must be in [1, 4096]"),
    (["train", "cifar10-resnet20-biper-tanh-cpu", "binarize.weight_params.target_qe=0.5"],
     "target_qe must be in [0, 0.1)"),
    (["plot-flips", "/nonexistent-run", "--out", "x.png"], "cannot read /nonexistent-run/metrics.jsonl"),
]

ARGPARSE_CASES = [
    ["train", R, "--max-steps", "0"],
    ["train", R, "--subset", "-5"],
    ["quantizers", "--kind", "bogus"],
    ["frobnicate"],
]


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_one_line_exit_2(argv, message, files, capsys):
    argv = [a.replace("{files}", str(files)) for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert message.replace("{files}", str(files)) in lines[0]


@pytest.mark.parametrize("argv", ARGPARSE_CASES, ids=[" ".join(a) for a in ARGPARSE_CASES])
def test_bad_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_debug_shows_the_traceback():
    with pytest.raises(ValueError, match="unknown recipe"):
        main(["--debug", "train", "cifar10-resnet20-bipr"])


def test_unwritable_run_folder_is_one_line(files, capsys):
    # the folder cannot be created (a file stands in its path): an I/O failure, exit 1, one line
    blocker = files / "a_file"
    blocker.write_text("x")
    code = main(["train", R, "model.name=mlp", "data.dataset=synthetic", "data.options={size: 8, length: 32}",
                 "--max-steps", "1", "--out", str(blocker / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and f"cannot create the run folder {blocker}/run" in lines[0], err
