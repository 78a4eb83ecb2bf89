"""Exact resume: from any checkpoint (mid-epoch, end of epoch, end of stage) and after SIGTERM,
a resumed CPU run ends with the same weights (SHA-256) and metrics as an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest

from biper.train import TrainingInterrupted, load_checkpoint, load_run_config, train
from biper.train.checkpoint import list_checkpoints
from biper.train.tasks import ClassificationTask

TINY = {"model": {"name": "mlp"}, "threads": 1, "checkpoint_every_steps": 3, "keep_checkpoints": 100,
        "data": {"dataset": "synthetic", "batch_size": 32, "eval_batch_size": 128,
                 "options": {"size": 8, "length": 200, "num_classes": 4}},
        "binarize": {"weight_quantizer": "biper", "weight_params": {"omega0": 20.0}},
        "stages": [{"name": "sine", "epochs": 2, "lr": 0.1, "tau": 0.037, "warmup_epochs": 1,
                    "binarize": {"weight_params": {"stage": "sine"}}},
                   {"name": "square", "epochs": 2, "lr": 0.02, "tau": 0.0468,
                    "task": {"name": "distillation", "teacher": "previous"}}]}
TIMELESS = ("epoch_time", "wall_time")


def rows(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMELESS} for line in lines]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    summary = train(load_run_config(TINY), out, quiet=True)
    return out, summary


def test_reference_has_mid_epoch_and_stage_final_checkpoints(reference):
    out, summary = reference
    found = list_checkpoints(out / "checkpoints")
    steps = [s for s, _, _ in found]
    assert summary["steps"] == 28 and steps[-1] == 28  # 2 stages x 2 epochs x 7 batches (200 / 32)
    assert [s for s, final, _ in found if final] == [14, 28]
    assert {s % 7 for s in steps} > {0}  # some are mid-epoch


@pytest.mark.parametrize("keep_up_to", [3, 6, 7, 13, 14, 15, 21, 27])
def test_resume_from_a_checkpoint_matches_the_uninterrupted_run(reference, tmp_path, keep_up_to):
    ref_out, ref = reference
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(ref_out / "config.yaml", out)
    for step, _, path in list_checkpoints(ref_out / "checkpoints"):
        if step <= keep_up_to:  # as if the process had died right after writing this one
            shutil.copy(path, out / "checkpoints")
    resumed = train(load_run_config(TINY), out, resume=True, quiet=True)
    assert resumed["weights_sha256"] == ref["weights_sha256"]
    assert rows(out) == rows(ref_out)
    assert resumed["best_test_acc"] == ref["best_test_acc"] and resumed["steps"] == ref["steps"]


def test_sigterm_writes_a_checkpoint_and_resume_matches(reference, tmp_path, monkeypatch):
    ref_out, ref = reference
    calls = {"n": 0}
    original = ClassificationTask.loss

    def loss(self, model, x, y):  # deliver SIGTERM to ourselves during the 10th step
        calls["n"] += 1
        if calls["n"] == 10:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, model, x, y)

    monkeypatch.setattr(ClassificationTask, "loss", loss)
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as info:
        train(load_run_config(TINY), out, quiet=True)
    assert info.value.exit_code == 128 + signal.SIGTERM and "SIGTERM" in str(info.value)
    ckpt = load_checkpoint(info.value.path)
    assert ckpt["progress"]["global_step"] == 10 and not ckpt["progress"]["stage_done"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    monkeypatch.setattr(ClassificationTask, "loss", original)
    resumed = train(load_run_config(TINY), out, resume=True, quiet=True)
    assert resumed["weights_sha256"] == ref["weights_sha256"] and rows(out) == rows(ref_out)


def test_resume_of_a_finished_run_only_rewrites_the_summary(reference, tmp_path):
    ref_out, ref = reference
    out = tmp_path / "run"
    shutil.copytree(ref_out, out)
    (out / "summary.json").unlink()
    again = train(load_run_config(TINY), out, resume=True, quiet=True)
    assert again["weights_sha256"] == ref["weights_sha256"] and again["wall_time"] == ref["wall_time"]


def test_resume_refuses_a_different_config(reference, tmp_path):
    ref_out, _ = reference
    out = tmp_path / "run"
    shutil.copytree(ref_out, out)
    with pytest.raises(Exception, match=r"--resume: the config differs .* at stages.0.lr \(run has 0.1, now 0.2\)"):
        train(load_run_config(TINY, ["stages.0.lr=0.2"]), out, resume=True, quiet=True)
