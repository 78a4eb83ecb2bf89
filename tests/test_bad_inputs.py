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
    _deploy_files(root)
    return root


def _deploy_files(root):
    """Packed models (a 3-channel ResNet-20; an MLP with its training config on a folder of 8x8
    images), arrays of the wrong shape and dtype, 16x16 images, and non-model files."""
    import numpy as np
    from PIL import Image

    import biper
    from biper.deploy import export_model
    from biper.train import load_run_config

    export_model(biper.create_model("resnet20_cifar", binarize=biper.BinarizeConfig()).eval(), root / "r20.biper")
    cfg = load_run_config(R, ["model.name=mlp", "data.dataset=folder", f"data.cache_dir={root / 'cache'}"],
                          data_dir=str(root / "cls")).to_dict()
    export_model(biper.create_model("mlp", binarize=biper.BinarizeConfig()).eval(), root / "mlp.biper", config=cfg)
    np.save(root / "gray.npy", np.zeros((2, 1, 32, 32), np.float32))
    np.save(root / "ints.npy", np.zeros((3, 32, 32), np.int64))
    np.save(root / "cplx.npy", np.zeros((3, 32, 32), np.complex64))
    np.save(root / "flat.npy", np.zeros((3, 32), np.float32))
    np.save(root / "big.npy", np.zeros((1, 3, 16, 16), np.float32))
    for split in ("train", "test"):
        (root / "big" / split / "a").mkdir(parents=True)
        noise = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(noise).save(root / "big" / split / "a" / "x.png")
    (root / "m.onnx").write_bytes(b"\x08\x09\x12\x07pytorch\x1a\x03")
    (root / "blocker").write_text("a file, not a folder")


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
    (["train", R, "stages.0.optimizer=sdg"], "stages.0.optimizer: must be one of sgd, adam, adamw, bop, got 'sdg' (did you mean 'sgd'?)"),
    (["train", R, "stages.0.lrr=0.1"], "stages.0.lrr: unknown key (did you mean 'lr'?)"),
    (["train", R, "stages.9.lr=0.1"], "stages.9: index out of range"),
    (["train", R, "data.dataset=cifar100"], "data.dataset: must be one of cifar10, folder, imagenet, synthetic"),
    (["train", R, "model.name=resnet99"], "model.name: must be one of"),
    (["train", R, "precision=fp16"], "precision: must be one of fp32, bf16, amp, got 'fp16'"),
    (["train", R, "device=tpu"], "device: must be auto, cpu, cuda or cuda:N"),
    (["train", R, "seed=-1"], "seed: must be an integer >= 0"),
    (["train", R, "stages.0.momentum=1.5"], "stages.0.momentum: must be a finite number in [0, 1)"),
    (["train", R, "omega0_init={target_qe: -1}"], "omega0_init.target_qe must be > 0"),
    (["train", R, "stages.0.bop={gama: 1}"], "stages.0.bop.gama: unknown key (did you mean 'gamma'?)"),
    (["train", R, "stages.0.task.name=segmentaton"], "stages.0.task.name: must be one of classification, distillation, segmentation, detection, got 'segmentaton'"),
    (["train", R, "stages.0.task.dice=0.5"], "stages.0.task.dice: the Dice weight belongs to the segmentation task, not classification"),
    (["train", R, "stages.*.task.name=segmentation", "data.dataset=synthetic", "--out", "{files}/o4"], "stages.0.task.name: segmentation needs a segmentation dataset, but data.dataset synthetic gives classification targets"),
    (["compare", R, "--methods", "biper,bnnn", "--out", "{files}/c1"], "unknown method 'bnnn' (did you mean 'bnn'?)"),
    (["compare", R, "--methods", "bnn,bnn", "--out", "{files}/c2"], "a method is listed twice"),
    (["compare", R, "--methods", "biper", "--epochs", "1", "--out", "{files}/c3"], "a budget of 1 cannot be split over 2 stages"),
    (["train", "{files}/bad_key.yaml"], "stages.0.lrr: unknown key (did you mean 'lr'?)"),
    (["train", "{files}/bad_syntax.yaml"], "is not valid YAML at line 2"),
    (["train", "{files}/not_map.yaml"], "must be a mapping of keys to values, got list"),
    # data folders
    (["train", R, "--data-dir", "{files}/missing", "--out", "{files}/o1"], "no CIFAR-10 found at"),
    (["train", R, "--data-dir", "{files}/empty", "--out", "{files}/o2"], "no CIFAR-10 found at"),
    (["train", R, "data.dataset=folder", "--data-dir", "{files}/cls", "--out", "{files}/o3"], "/cls/train/b has no images"),
    # dense datasets: generator options, missing sources and annotation files
    (["train", R, "data.dataset=scenes", "data.options={image_size: 8}", "--data-dir", "{files}/empty"],
     "scenes option image_size must be an integer >= 16, got 8"),
    (["train", R, "data.dataset=scenes", "data.options={min_scale: 30, max_scale: 20}", "--data-dir", "{files}/empty"],
     "scenes option min_scale (30) must be <= max_scale (20)"),
    (["train", R, "data.dataset=scenes", "data.options={max_objects: 0}", "--data-dir", "{files}/empty"],
     "scenes option max_objects must be an integer in [1, 255], got 0"),
    (["train", R, "data.dataset=scenes", "data.options={target: points}", "--data-dir", "{files}/empty"],
     "scenes option target must be one of mask, boxes, got 'points'"),
    (["train", R, "data.dataset=scenes", "data.options={colour: 3}", "--data-dir", "{files}/empty"],
     "unknown option(s) colour for dataset 'scenes'; allowed: target, image_size"),
    (["train", R, "data.dataset=scenes", "--data-dir", "{files}/empty", "--out", "{files}/o4"], "no CIFAR-10 found at"),
    (["train", R, "data.dataset=coco", "--data-dir", "{files}/empty", "--out", "{files}/o5"],
     "no COCO annotation file for split 'train' in {files}/empty (looked for annotations/instances_train.json"),
    (["train", R, "data.dataset=coco", "data.options={image_size: 4}", "--data-dir", "{files}/empty"],
     "coco option image_size must be an integer >= 16, got 4"),
    # checkpoints and packed models
    (["eval", "{files}/nope.pt"], "{files}/nope.pt does not exist"),
    (["eval", "{files}/corrupt.pt"], "{files}/corrupt.pt is a text file; expected a packed model (.biper) or a biper checkpoint (.pt)"),
    (["export", "{files}/nope.pt", "-o", "{files}/x.biper"], "{files}/nope.pt does not exist"),
    (["export", "{files}/corrupt.pt", "-o", "{files}/x.biper"], "{files}/corrupt.pt is a text file; expected a biper checkpoint (.pt)"),
    (["infer", "{files}/nope.biper", "--input", "{files}/cls"], "cannot read packed model {files}/nope.biper"),
    (["infer", "{files}/r20.biper"], "give the inputs as --input PATH... or as --test-images N (not both)"),
    (["infer", "{files}/corrupt.pt", "--input", "{files}/cls"], "not a valid biper packed model (wrong magic bytes"),
    (["analyze", "{files}/nope.pt"], "does not exist"),
    (["summary", "resnet99"], "'resnet99' is not a file, a model"),
    # deploy commands: file types, shapes, channels, dtypes, output paths
    (["eval", "{files}/m.onnx"], "{files}/m.onnx is an ONNX model; expected a packed model (.biper) or a biper checkpoint (.pt)"),
    (["eval", "{files}/gray.npy"], "{files}/gray.npy is a NumPy array (.npy); expected"),
    (["eval", "{files}/cls"], "{files}/cls is a folder; expected"),
    (["eval", "{files}/r20.biper"], "r20.biper holds no training config, so its dataset is unknown"),
    (["eval", "{files}/mlp.biper", "--device", "cuda:0"], "packed models run on the CPU kernels; use --device cpu"),
    (["eval", "{files}/mlp.biper", "--data-dir", "{files}/big", "--quiet"], "mlp.biper cannot run on folder inputs of shape (3, 16, 16)"),
    (["eval", "{files}/mlp.biper", "--data-dir", "{files}/missing"], "data folder {files}/missing does not exist"),
    (["eval", "{files}/mlp.biper", "--device", "tpu"], "packed models run on the CPU kernels"),
    (["export", "{files}/r20.biper", "-o", "{files}/x.biper"], "r20.biper is a packed model (.biper); expected a biper checkpoint (.pt)"),
    (["export", "{files}/corrupt.pt", "-o", "{files}/missing/x.biper"], "output folder {files}/missing does not exist"),
    (["export", "{files}/corrupt.pt", "-o", "{files}/empty"], "output {files}/empty is a folder; give a file name"),
    (["export", "{files}/corrupt.pt", "-o", "{files}/blocker/x.biper"], "{files}/blocker is not a folder"),
    (["export", "{files}/r20.biper", "--format", "onnx", "-o", "{files}/missing/x.onnx"], "output folder {files}/missing does not exist"),
    (["export", "{files}/m.onnx", "--format", "onnx", "-o", "{files}/x.onnx"], "m.onnx is an ONNX model; expected a packed model (.biper) or a biper checkpoint (.pt)"),
    (["infer", "{files}/r20.biper", "--input", "{files}/gray.npy"], "the model takes 3-channel inputs (3x32x32), got shape (1, 32, 32)"),
    (["infer", "{files}/r20.biper", "--input", "{files}/ints.npy"], "ints.npy: expected a float tensor (C, H, W) or (N, C, H, W), got torch.int64"),
    (["infer", "{files}/r20.biper", "--input", "{files}/cplx.npy"], "cplx.npy: expected a float array (C, H, W) or (N, C, H, W), got dtype complex64"),
    (["infer", "{files}/r20.biper", "--input", "{files}/flat.npy"], "flat.npy: expected a float tensor (C, H, W) or (N, C, H, W), got torch.float32 (3, 32)"),
    (["infer", "{files}/mlp.biper", "--input", "{files}/big.npy"], "the model cannot run on inputs of shape (3, 16, 16) (it takes 3x8x8)"),
    (["infer", "{files}/r20.biper", "--input", "{files}/cls", "--mean", "0.5,0.5", "--std", "1,1,1"], "--mean needs 3 finite values (one per RGB channel), got [0.5, 0.5]"),
    (["infer", "{files}/r20.biper", "--input", "{files}/cls", "--mean", "0.5,0.5,0.5", "--std", "0,1,1"], "--std values must be > 0"),
    (["infer", "{files}/r20.biper", "--input", "{files}/cls", "--input-size", "3,32", "--mean", "0,0,0", "--std", "1,1,1"], "input size must be C,H,W with positive values, got 3,32"),
    (["infer", "{files}/r20.biper", "--input", "{files}/cls", "--input-size", "1,32,32", "--mean", "0,0,0", "--std", "1,1,1"], "images are read as RGB (3 channels) but the input size has 1"),
    (["infer", "{files}/r20.biper", "--input", "{files}/m.onnx"], "unsupported input type '.onnx'"),
    (["summary", "{files}/r20.biper", "--input-size", "1,32,32"], "cannot run r20.biper (packed) on input (1, 32, 32)"),
    (["summary", "mlp", "--input-size", "3,16,16"], "cannot run mlp on input (3, 16, 16)"),
    (["summary", "mlp", "--input-size", "3,0,8"], "input_size must be positive integers like 3,32,32, got (3, 0, 8)"),
    (["bench", "--json", "{files}/missing/b.json"], "--json folder {files}/missing does not exist"),
    (["bench", "--json", "{files}/empty"], "--json {files}/empty is a folder; give a file name"),
    (["bench", "--threads", "0"], "--threads and --rounds must be >= 1"),
    (["bench", "--threads", "2", "--clock", "cpu"], "--clock cpu measures one thread's CPU time; use it with --threads 1"),
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
    ["export", "x.pt", "-o", "x.tflite", "--format", "tflite"],
    ["infer", "m.biper", "--input", "x.npy", "--input-size", "3,a,32"],
    ["summary", "mlp", "--input-size", "three"],
    ["bench", "--only", "vgg"],
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


def test_unknown_device_name_is_one_line():
    from biper.errors import BiperError
    from biper.train.model import resolve_device

    with pytest.raises(BiperError, match="device: must be auto, cpu, cuda or cuda:N, got 'tpu'"):
        resolve_device("tpu")
