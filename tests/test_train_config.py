"""Run configs: validation messages, dict/YAML round trips, overrides, recipes' base/set, CLI exit 2."""

from __future__ import annotations

import math

import pytest
import yaml

from biper.cli import main
from biper.errors import BiperError
from biper.train import ConfigError, RunConfig, StageConfig, apply_overrides, load_run_config, parse_override
from biper.train.optim import LRSchedule, param_groups

BASE = {"model": {"name": "mlp"}, "data": {"dataset": "synthetic"},
        "binarize": {"weight_quantizer": "biper", "weight_params": {"omega0": 20.0}},
        "stages": [{"epochs": 2, "lr": 0.1, "binarize": {"weight_params": {"stage": "sine"}}},
                   {"epochs": 1, "lr": 0.01}]}

# (override, substring the message must contain: the full key path and what is allowed)
BAD = [
    ("stages.0.lr=-0.1", "stages.0.lr: must be a finite number >= 0"),
    ("stages.0.lr=abc", "stages.0.lr: must be a finite number >= 0, got 'abc'"),
    ("stages.0.lr=.nan", "stages.0.lr: must be a finite number"),
    ("stages.0.epochs=0", "stages.0.epochs: must be an integer >= 1, got 0"),
    ("stages.0.epochs=2.5", "stages.0.epochs: must be an integer >= 1"),
    ("stages.0.epochs=true", "stages.0.epochs: must be an integer >= 1, got True"),
    ("stages.1.lrr=0.1", "stages.1.lrr: unknown key (did you mean 'lr'?)"),
    ("stages.0.optimizer=sdg", "stages.0.optimizer: must be one of sgd, adam, adamw, bop, got 'sdg' (did you mean 'sgd'?)"),
    ("stages.0.momentum=1.0", "stages.0.momentum: must be a finite number in [0, 1)"),
    ("stages.0.warmup_epochs=3", "stages.0.warmup_epochs: must be <= epochs (2)"),
    ("stages.0.label_smoothing=1", "stages.0.label_smoothing: must be a finite number in [0, 1)"),
    ("stages.0.tau=-1", "stages.0.tau: must be a finite number >= 0"),
    ("stages.0.weight_decay_on=conv", "stages.0.weight_decay_on: must be one of all, conv_linear, no_bias_norm"),
    ("stages.0.betas=[0.9]", "stages.0.betas: must be a list of two numbers"),
    ("stages.0.nesterov=true", None),  # fine with sgd + momentum
    ("stages.1.task.name=distill", "stages.1.task.name: must be one of classification, distillation"),
    ("stages.1.task={name: distillation}", "stages.1.task.teacher: distillation needs a teacher"),
    ("stages.0.task={name: distillation, teacher: previous}", "stages.0.task.teacher: 'previous' needs an earlier stage"),
    ("stages.1.task={name: distillation, teacher: previous, temperature: 0}", "stages.1.task.temperature: must be a finite number > 0"),
    ("stages.5.lr=0.1", "stages.5: index out of range: stages has 2 entries (0..1)"),
    ("stages.x.lr=0.1", "stages.x: stages is a list"),
    ("stages=[]", "stages: must be a non-empty list"),
    ("data.batch_size=0", "data.batch_size: must be an integer >= 1, got 0"),
    ("data.batch_size=-3", "data.batch_size: must be an integer >= 1, got -3"),
    ("data.subset=0", "data.subset: must be an integer >= 1, got 0"),
    ("data.dataset=cifar100", "data.dataset: must be one of cifar10, folder, imagenet, synthetic"),
    ("data.datset=cifar10", "data.datset: unknown key (did you mean 'dataset'?)"),
    ("model.name=resnet20", "model.name: must be one of"),
    ("model.name=resnet20_cifa", "did you mean 'resnet20_cifar'?"),
    ("model.num_classes=0", "model.num_classes: must be an integer >= 1, got 0"),
    ("binarize.weight_params.omega0=0", "binarize: biper omega0 must be > 0"),
    ("binarize.weight_params.omega0=-5", "binarize: biper omega0 must be > 0"),
    ("binarize.weight_quantizer=bipr", "binarize: unknown quantizer 'bipr' (did you mean 'biper'?)"),
    ("binarize.scalling=none", "binarize: unknown binarize config key 'scalling' (did you mean 'scaling'?)"),
    ("stages.0.binarize.weight_params.stage=cosine", "stages.0.binarize: biper stage must be one of sine, square"),
    ("precision=fp16", "precision: must be one of fp32, bf16, amp, got 'fp16'"),
    ("precision=amp | device=cpu", "precision: amp (float16 + GradScaler) needs a CUDA device"),
    ("device=tpu", "device: must be auto, cpu, cuda or cuda:N"),
    ("seed=-1", "seed: must be an integer >= 0"),
    ("threads=0", "threads: must be an integer >= 1, got 0"),
    ("checkpoint_every_steps=0", "checkpoint_every_steps: must be an integer >= 1, got 0"),
    ("keep_checkpoints=0", "keep_checkpoints: must be an integer >= 1"),
    ("channels_last=yes please", "channels_last: must be true or false"),
    ("omega0_init={target_qe: -1}", "omega0_init: omega0_init.target_qe must be > 0"),
    ("omega0_init={target: 0.05}", "omega0_init: unknown omega0_init key 'target'"),
    ("epochs=3", "epochs: unknown key"),
]


@pytest.mark.parametrize("override, message", BAD)
def test_bad_values_are_named_with_what_is_allowed(override, message):
    if message is None:
        load_run_config(BASE, override.split(" | "))
        return
    with pytest.raises(BiperError) as info:
        load_run_config(BASE, override.split(" | "))
    text = str(info.value)
    assert message in text, text
    assert "\n" not in text


def test_required_keys_and_types():
    with pytest.raises(ConfigError, match=r"^stages.0.lr: is required$"):
        RunConfig.from_dict({**BASE, "stages": [{"epochs": 1}]})
    with pytest.raises(ConfigError, match=r"^model: is required$"):
        RunConfig.from_dict({"stages": [{"epochs": 1, "lr": 0.1}]})
    with pytest.raises(ConfigError, match=r"^stages.0: must be a mapping"):
        RunConfig.from_dict({**BASE, "stages": [3]})
    with pytest.raises(ConfigError, match=r"^config: must be a mapping"):
        RunConfig.from_dict([1, 2])
    with pytest.raises(ConfigError, match=r"stages.1.name: duplicate stage name 'a'"):
        RunConfig.from_dict({**BASE, "stages": [{"epochs": 1, "lr": 0.1, "name": "a"},
                                                {"epochs": 1, "lr": 0.1, "name": "a"}]})


def test_python_construction_validates_too():
    with pytest.raises(ConfigError, match=r"^lr: must be a finite number >= 0, got -1"):
        StageConfig(epochs=1, lr=-1)
    cfg = RunConfig(model="mlp", stages=[StageConfig(epochs=1, lr=0.1)])
    assert cfg.stages[0].name == "stage1" and cfg.model.name == "mlp"


def test_round_trip_through_dict_and_yaml():
    cfg = load_run_config(BASE, ["stages.*.warmup_epochs=1", "stages.1.betas=[0.8, 0.9]"])
    again = RunConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg and again.to_dict() == cfg.to_dict()
    assert [s.warmup_epochs for s in cfg.stages] == [1, 1] and cfg.stages[1].betas == (0.8, 0.9)


def test_stage_binarize_merges_overrides():
    cfg = load_run_config(BASE)
    assert cfg.stage_binarize(0).weight_params == {"omega0": 20.0, "stage": "sine"}
    assert cfg.stage_binarize(1).weight_params == {"omega0": 20.0}
    fp = load_run_config(BASE, ["binarize=null"])
    assert fp.stage_binarize(0) is None and fp.stage_binarize(1) is None
    frozen = load_run_config(BASE, ["stages.1.full_precision=true"])
    assert frozen.stage_binarize(1) is None and frozen.stage_binarize(0) is not None


def test_override_parsing():
    assert parse_override("stages.0.lr=1e-4") == (["stages", "0", "lr"], 1e-4)
    assert parse_override("a={x: [1, 2.5e3]}") == (["a"], {"x": [1, 2500.0]})
    assert parse_override("a=null") == (["a"], None)
    for bad, msg in (("lr", "must look like key=value"), ("lr=", "write lr=null"), ("a..b=1", "empty key"),
                     ("a=[1, 2", "not valid YAML")):
        with pytest.raises(BiperError, match=msg):
            parse_override(bad)
    data = apply_overrides(BASE, ["stages.*.epochs=7", "binarize.input_params.eps=0.001"])
    assert [s["epochs"] for s in data["stages"]] == [7, 7] and data["binarize"]["input_params"] == {"eps": 0.001}
    assert BASE["stages"][0]["epochs"] == 2  # the input is not mutated
    with pytest.raises(ConfigError, match=r"stages.0.lr: is a value"):
        apply_overrides(BASE, ["stages.0.lr.x=1"])


def test_shortcuts_of_the_cli():
    cfg = load_run_config(BASE, (), data_dir="/data", max_steps=3, subset=50)
    assert cfg.data.data_dir == "/data" and cfg.data.subset == 50
    assert [s.max_steps for s in cfg.stages] == [3, 3]
    with pytest.raises(ConfigError, match=r"--max-steps: must be a positive integer"):
        load_run_config(BASE, (), max_steps=0)


def test_recipe_files_base_set_and_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("model: {name: mlp}\ndata: {dataset: synthetic}\n"
                                     "stages: [{epochs: 1, lr: 0.1}, {epochs: 1, lr: 0.2}]\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nseed: 3\nset:\n  stages.1.lr: 0.5\n")
    cfg = load_run_config(tmp_path / "b.yaml")
    assert cfg.seed == 3 and [s.lr for s in cfg.stages] == [0.1, 0.5]
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(BiperError, match="base chain loops"):
        load_run_config(tmp_path / "c.yaml")
    (tmp_path / "e.yaml").write_text("model: {name: mlp\n")
    with pytest.raises(BiperError, match=r"not valid YAML at line 2"):
        load_run_config(tmp_path / "e.yaml")
    (tmp_path / "f.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(BiperError, match="must be a mapping"):
        load_run_config(tmp_path / "f.yaml")
    with pytest.raises(BiperError, match="does not exist"):
        load_run_config(tmp_path / "missing.yaml")


def test_lr_schedule_closed_forms():
    s = LRSchedule(lr=0.2, total_steps=110, warmup_steps=10, kind="cosine", min_lr=0.02)
    assert [s(i) for i in range(10)] == pytest.approx([0.2 * (i + 1) / 10 for i in range(10)])
    for step in (10, 35, 60, 109, 110):
        t = (step - 10) / 100
        assert s(step) == pytest.approx(0.02 + 0.18 * 0.5 * (1 + math.cos(math.pi * t)))
    lin = LRSchedule(lr=1.0, total_steps=10, kind="linear")
    assert lin(5) == pytest.approx(0.5) and LRSchedule(lr=1.0, total_steps=10, kind="constant")(7) == 1.0
    stage = load_run_config(BASE, ["stages.0.warmup_epochs=1"]).stages[0]
    assert LRSchedule.for_stage(stage, 40).warmup_steps == 20  # 1 of 2 epochs, compressed with the stage


def test_weight_decay_groups():
    from biper.models import create_model

    model = create_model("resnet20_cifar", binarize={"weight_quantizer": "biper"})
    decay_of = lambda groups: {id(p): g["weight_decay"] for g in groups for p in g["params"]}  # noqa: E731
    names = {id(p): n for n, p in model.named_parameters()}
    conv = decay_of(param_groups(model, 1e-4, "conv_linear"))
    assert {names[i] for i, wd in conv.items() if wd > 0} == {n for n, p in model.named_parameters()
                                                               if n.endswith("weight") and p.dim() > 1}
    assert all(conv[id(p)] == 0 for n, p in model.named_parameters() if n.endswith("alpha") or "bn" in n)
    assert set(decay_of(param_groups(model, 1e-4, "all")).values()) == {1e-4}
    assert len(conv) == len(names)


def test_cli_bad_override_exits_2_without_traceback(capsys, tmp_path):
    assert main(["train", "cifar10-resnet20-biper", "stages.0.lr=-1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "biper train: error: stages.0.lr: must be a finite number >= 0, got -1"
    # overrides may also come after options
    assert main(["train", "cifar10-resnet20-biper", "--out", str(tmp_path), "--quiet", "data.batch_size=0"]) == 2
    assert "data.batch_size: must be an integer >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["train", "cifar10-resnet20-biper", "--max-steps", "0"])
    assert info.value.code == 2
    assert "--max-steps: must be a positive integer" in capsys.readouterr().err
