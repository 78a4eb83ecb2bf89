"""Every packaged recipe parses and runs one step of each stage through the CLI; `biper recipes`."""

from __future__ import annotations

import json

import pytest

from biper.cli import main
from biper.recipes import describe_recipes, list_recipes, load_recipe
from biper.train import load_checkpoint, load_run_config

# Tiny synthetic data with the size each model family expects; batch 2, eval on 4 images.
SYNTHETIC = ["data.dataset=synthetic", "data.data_dir=null", "data.options={size: 32, length: 8, num_classes: 10}",
             "data.batch_size=2", "data.eval_batch_size=4", "threads=1"]

PAPER = {  # BiPer released hyper-parameters (SPEC section 2)
    "cifar10-resnet18-biper": ("resnet18_cifar", [600, 300], [0.021, 0.0037], 256, [1.6e-3, 1.6e-4], "all"),
    "imagenet-resnet18-biper": ("resnet18_imagenet", [200, 100], [0.1, 0.01], 512, [1e-4, 1e-4], "conv_linear"),
}


def test_required_recipes_exist():
    names = set(list_recipes())
    for required in ("cifar10-resnet20-biper", "cifar10-resnet18-biper", "cifar10-vgg-small-biper",
                     "imagenet-resnet18-biper", "imagenet-resnet34-biper", "cifar10-resnet20-biper-cpu",
                     "cifar10-vit-tiny-pcpp", "cifar10-vit-tiny-pcpp-kd"):
        assert required in names
    methods = {load_run_config(n).binarize.weight_quantizer if load_run_config(n).binarize else "fp"
               for n in names if n.startswith("cifar10-resnet20-") and not n.startswith("cifar10-resnet20-biper")}
    assert methods == {"bc", "bnn", "bnn+", "bnn++", "pc", "rpc", "fp"}


@pytest.mark.parametrize("name", [n for n in list_recipes() if n.startswith("cifar10-resnet20-")
                                  and n not in ("cifar10-resnet20-bc", "cifar10-resnet20-bop") and "biper" not in n])
def test_baselines_are_one_key_away_from_bc(name):
    base, this = load_recipe("cifar10-resnet20-bc"), load_recipe(name)
    diff = [k for k in set(base) | set(this) if base.get(k) != this.get(k) and k != "description"]
    assert diff == ["binarize"]
    if this["binarize"] is not None:
        assert [k for k in base["binarize"] if base["binarize"][k] != this["binarize"][k]] == ["weight_quantizer"]


@pytest.mark.parametrize("name, expected", PAPER.items())
def test_paper_hyper_parameters(name, expected):
    model, epochs, lrs, batch, wds, wd_on = expected
    cfg = load_run_config(name)
    assert cfg.model.name == model and cfg.data.batch_size == batch
    assert [s.epochs for s in cfg.stages] == epochs and [s.lr for s in cfg.stages] == lrs
    assert [s.weight_decay for s in cfg.stages] == pytest.approx(wds)
    assert {s.weight_decay_on for s in cfg.stages} == {wd_on}
    assert all(s.optimizer == "sgd" and s.momentum == 0.9 and s.lr_schedule == "cosine" for s in cfg.stages)
    sine, square = cfg.stage_binarize(0), cfg.stage_binarize(1)
    assert sine.weight_params == {"omega0": 20.0, "stage": "sine"}
    assert square.weight_params == {"omega0": 20.0, "stage": "square"}
    assert cfg.stages[1].init_from == "previous"
    if name.startswith("cifar10"):
        assert [s.tau for s in cfg.stages] == [0.037, 0.0468] and {s.warmup_epochs for s in cfg.stages} == {5}
    else:
        assert {s.tau for s in cfg.stages} == {0.0} and {s.warmup_epochs for s in cfg.stages} == {0}


def test_cpu_recipe_is_a_short_two_stage_biper_run():
    cfg = load_run_config("cifar10-resnet20-biper-cpu")
    assert cfg.precision in ("bf16", "fp32") and cfg.channels_last and len(cfg.stages) == 2
    assert sum(s.epochs for s in cfg.stages) <= 14 and cfg.stages[1].init_from == "previous"
    assert cfg.stage_binarize(0).weight_params["stage"] == "sine"
    assert cfg.stage_binarize(1).weight_params["stage"] == "square"


@pytest.mark.parametrize("name", [n for n in list_recipes() if not n.startswith("scenes-")])  # dense: test_dense_train
def test_recipe_runs_one_step_per_stage(name, tmp_path, capsys):
    out = tmp_path / "run"
    overrides = SYNTHETIC + (["precision=fp32"] if load_run_config(name).precision == "amp" else [])
    rc = main(["train", name, *overrides, "--max-steps", "1", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    n_stages = len(load_run_config(name).stages)
    assert summary["steps"] == n_stages and summary["epochs"] == n_stages
    assert len(summary["weights_sha256"]) == 64
    final = load_checkpoint(out / "final.pt")
    assert final["progress"]["run_done"] and final["stage"] == n_stages - 1
    assert final["config"]["model"]["name"] == load_run_config(name).model.name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage_index"] for r in rows] == list(range(n_stages))
    assert all(0.0 <= r["test_acc"] <= 100.0 and r["train_loss"] > 0 for r in rows)


def test_recipes_command_lists_and_shows(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in list_recipes())
    assert main(["recipes", "cifar10-resnet20-bnn", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["binarize"]["weight_quantizer"] == "bnn" and "base" not in data
    rows = describe_recipes()
    assert {r["name"] for r in rows} == set(list_recipes())


def test_kd_recipe_sets_only_the_task():
    plain, kd = load_recipe("cifar10-vit-tiny-pcpp"), load_recipe("cifar10-vit-tiny-pcpp-kd")
    assert kd["stages"][0] == plain["stages"][0]
    assert {k: v for k, v in kd["stages"][1].items() if k != "task"} == plain["stages"][1]
    cfg = load_run_config("cifar10-vit-tiny-pcpp-kd")
    assert cfg.stages[1].task.name == "distillation" and cfg.stages[1].task.teacher == "previous"
    assert cfg.stage_binarize(0) is None and cfg.stage_binarize(1).input_quantizer is None


def test_unknown_recipe_suggests(capsys):
    assert main(["train", "cifar10-resnet20-bipper", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'cifar10-resnet20-biper'" in err and "Traceback" not in err
