"""The engine: learning, the run folder, stage hand-over, schedules, tasks against their formulas."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

from biper.analysis.flexible_init import apply_flexible_init
from biper.cli import main
from biper.errors import BiperError
from biper.nn import binary_layers
from biper.data.loader import derive_seed
from biper.train import (ClassificationTask, DistillationTask, build_model_from_config, load_checkpoint,
                         load_run_config, train, weights_digest)

TINY = {"model": {"name": "mlp"}, "threads": 1,
        "data": {"dataset": "synthetic", "batch_size": 32, "eval_batch_size": 128, "augment": False,
                 "options": {"size": 8, "length": 256, "num_classes": 4}},
        "binarize": {"weight_quantizer": "biper", "weight_params": {"omega0": 20.0}},
        "stages": [{"name": "sine", "epochs": 2, "lr": 0.1, "tau": 0.037, "warmup_epochs": 1,
                    "binarize": {"weight_params": {"stage": "sine"}}},
                   {"name": "square", "epochs": 2, "lr": 0.02, "tau": 0.0468}]}


def run(tmp_path, overrides=(), name="run", **kw):
    return train(load_run_config(TINY, overrides), tmp_path / name, quiet=True, **kw)


def test_two_stage_biper_run_learns_and_fills_the_run_folder(tmp_path):
    summary = run(tmp_path)
    out = tmp_path / "run"
    assert summary["final_test_acc"] > 80.0  # chance is 25%
    assert summary["epochs"] == 4 and summary["steps"] == 32 and summary["epochs_per_stage"] == {"sine": 2, "square": 2}
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    with open(out / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == [1, 2, 1, 2] and [int(r["epoch"]) for r in table] == [1, 2, 1, 2]
    assert [r["global_step"] for r in rows] == [8, 16, 24, 32]
    assert float(table[-1]["test_acc"]) == pytest.approx(rows[-1]["test_acc"]) == summary["final_test_acc"]
    assert summary["best_test_acc"] == max(r["test_acc"] for r in rows)
    assert rows[0]["lr"] == pytest.approx(0.1)  # the last warm-up step reaches the base lr
    assert rows[1]["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    final = load_checkpoint(out / "final.pt")
    assert final["model_config"]["binarize"]["weight_params"] == {"omega0": 20.0}
    model = build_model_from_config(final)
    assert {layer.weight_quantizer.stage for _, layer in binary_layers(model)} == {"square"}
    assert weights_digest(model.state_dict()) == summary["weights_sha256"]
    again = load_run_config(str(out / "config.yaml"))
    assert again.to_dict() == dict(load_run_config(TINY).to_dict(), model={"name": "mlp", "num_classes": 4, "kwargs": {}})
    with pytest.raises(BiperError, match="already holds a run; pass --resume"):
        run(tmp_path)


def test_stage_two_starts_from_stage_one_final_weights(tmp_path):
    # a float stage, then a binary stage that cannot move (lr 0): its weights must be stage 1's
    run(tmp_path, ["stages.0.full_precision=true", "stages.1.lr=0.0", "stages.1.momentum=0.0",
                   "binarize.scaling=learnable"])
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("stage*-final-*.pt"))
    first, second = (load_checkpoint(p) for p in ckpts)
    assert first["model_config"]["binarize"] is None and second["model_config"]["binarize"] is not None
    shared = [k for k, v in first["model"].items() if k in second["model"] and v.is_floating_point()
              and "running" not in k]
    assert shared and all(torch.equal(first["model"][k], second["model"][k]) for k in shared)
    assert any(k.endswith("alpha") for k in second["model"]) and not any(k.endswith("alpha") for k in first["model"])


def test_annealed_mu_follows_its_schedule_per_step(tmp_path):
    run(tmp_path, ["binarize={weight_quantizer: bnn++, weight_params: {mu: {schedule: exp, start: 5, end: 250}}}",
                   "stages=[{epochs: 2, lr: 0.05}]"])
    final = load_checkpoint(tmp_path / "run" / "final.pt")
    states = [v for k, v in final["model"].items() if k.endswith("weight_quantizer._extra_state")]
    total = 16  # 2 epochs x 8 steps; the last step runs at progress 15/16
    assert states and all(s["mu"] == pytest.approx(5 * 50 ** (15 / total)) for s in states)


def test_omega0_init_is_applied_once_and_carried_to_stage_two(tmp_path):
    run(tmp_path, ["omega0_init={target_qe: 0.05, per_layer: true}"])
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("stage*-final-*.pt"))
    omegas = [[v["omega0"] for k, v in load_checkpoint(p)["model"].items()
               if k.endswith("weight_quantizer._extra_state")] for p in ckpts]
    assert omegas[0] == omegas[1] and len(set(omegas[0])) == len(omegas[0]) and 20.0 not in omegas[0]
    # the values are the flexible initialisation of the freshly initialised stage-1 model
    cfg = load_run_config(TINY)
    torch.manual_seed(derive_seed(cfg.seed, "stage", 0))
    fresh = build_model_from_config({"name": "mlp", "num_classes": 4, "kwargs": {},
                                     "binarize": cfg.stage_binarize(0).to_dict()})
    expected = apply_flexible_init(fresh, 0.05, per_layer=True)
    assert omegas[0] == pytest.approx(list(expected.values()))


def test_init_from_a_checkpoint_path_and_mismatch(tmp_path):
    run(tmp_path, ["stages=[{epochs: 1, lr: 0.1}]"], name="a")
    source = tmp_path / "a" / "final.pt"
    run(tmp_path, [f"stages=[{{epochs: 1, lr: 0.0, momentum: 0.0, init_from: '{source}'}}]"], name="b")
    a, b = load_checkpoint(source), load_checkpoint(tmp_path / "b" / "final.pt")
    assert torch.equal(a["model"]["body.3.weight"], b["model"]["body.3.weight"])
    with pytest.raises(BiperError, match=r"stages.0.init_from: cannot initialise from .*: key .* (missing|unexpected)"):
        run(tmp_path, [f"stages=[{{epochs: 1, lr: 0.1, init_from: '{source}'}}]", "model.kwargs={depth: 4}"], name="c")


def test_classification_task_matches_formula():
    torch.manual_seed(0)
    model = build_model_from_config({"name": "mlp", "num_classes": 5, "kwargs": {}, "binarize": {"weight_quantizer": "biper"}})
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    loss, logits, parts = ClassificationTask(label_smoothing=0.1, tau=0.5).loss(model, x, y)
    logp = logits.log_softmax(-1)
    ce = -(0.9 * logp.gather(1, y[:, None]).squeeze(1) + 0.1 * logp.mean(-1)).mean()
    reg = sum(torch.sin(layer.weight_quantizer.omega0 * layer.weight).pow(2).mean() for _, layer in binary_layers(model))
    assert loss.item() == pytest.approx((ce + 0.5 * reg).item(), rel=1e-5)
    assert parts["reg"].item() == pytest.approx(reg.item(), rel=1e-6)


def test_distillation_task_matches_formula():
    torch.manual_seed(1)
    student = torch.nn.Linear(6, 4)
    teacher = torch.nn.Linear(6, 4)
    x, y = torch.randn(10, 6), torch.randint(0, 4, (10,))
    task = DistillationTask(teacher, alpha=0.3, temperature=2.0)
    loss, logits, parts = task.loss(student, x, y)
    p_t = (teacher(x) / 2.0).softmax(-1)
    kl = (p_t * (p_t.log() - (logits / 2.0).log_softmax(-1))).sum(-1).mean()
    expected = 0.7 * F.cross_entropy(logits, y) + 0.3 * 4.0 * kl
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    loss.backward()
    assert student.weight.grad is not None and teacher.weight.grad is None


def test_distillation_stage_from_previous_and_eval_cli(tmp_path, capsys):
    task = "{name: distillation, teacher: previous, alpha: 0.5, temperature: 3.0}"
    summary = run(tmp_path, [f"stages.1.task={task}", "stages.1.max_steps=3"])
    assert summary["steps"] == 16 + 3 and summary["epochs_per_stage"] == {"sine": 2, "square": 1}
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run" / "final.pt"), "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == pytest.approx(summary["final_test_acc"]) and result["examples"] == 256
    assert main(["eval", str(tmp_path / "run" / "final.pt"), "--subset", "0"]) == 2


def test_max_steps_truncates_each_stage_and_compresses_its_schedule(tmp_path):
    summary = run(tmp_path, ["stages.*.max_steps=3"])
    assert summary["steps"] == 6 and summary["epochs"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows] == [3, 6]
    # stage 1: 3 steps, warm-up round(3 * 1 / 2) = 2 steps, so the last step is the cosine's start
    assert rows[0]["lr"] == pytest.approx(0.1)
    assert rows[1]["lr"] == pytest.approx(0.02 * 0.5 * (1 + math.cos(math.pi * 2 / 3)))


def test_logs_get_progress_lines_and_quiet_silences_them(tmp_path, capsys, monkeypatch):
    from biper.train import engine

    monkeypatch.setattr(engine, "HEARTBEAT_SECONDS", 0.0)
    train(load_run_config(TINY, ["stages.*.max_steps=2"]), tmp_path / "a", quiet=False)
    out = capsys.readouterr().out
    assert "[sine epoch 1] step 1/2, running loss" in out and out.count("[sine 1/1]") == 1
    train(load_run_config(TINY, ["stages.*.max_steps=2"]), tmp_path / "b", quiet=True)
    out = capsys.readouterr().out
    assert "running loss" not in out and out.count("[sine 1/1]") == 1
