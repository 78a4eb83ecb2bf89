"""The CLI, the engine's Python API and a hand-written loop over `train_step` train the same
weights: one fixed-seed short run gives one ``weights_sha256`` on all three paths."""

from __future__ import annotations

import json

import torch
import yaml

from biper.cli import main
from biper.data import TensorLoader, load_dataset
from biper.data.loader import derive_seed
from biper.train import LRSchedule, build_optimizer, load_run_config, model_spec, train, weights_digest
from biper.train.step import train_step
from biper.train.tasks import ClassificationTask

RUN = {"model": {"name": "mlp"}, "threads": 1, "seed": 3,
       "data": {"dataset": "synthetic", "batch_size": 16, "eval_batch_size": 64, "augment": True,
                "options": {"size": 8, "length": 96, "num_classes": 4}},
       "binarize": {"weight_quantizer": "biper", "weight_params": {"omega0": 20.0, "stage": "sine"}},
       "stages": [{"name": "sine", "epochs": 2, "lr": 0.1, "tau": 0.037, "warmup_epochs": 1,
                   "grad_clip": 1.0, "max_steps": 9}]}


def _hand_loop(cfg) -> str:
    """The run written out with the public pieces: spec, loader, optimizer, schedule, train_step."""
    stage = cfg.stages[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # as the engine does: float sums depend on the thread count
    try:
        return _loop(cfg, stage)
    finally:
        torch.set_num_threads(threads)


def _loop(cfg, stage) -> str:
    train_set = load_dataset("synthetic", None, "train", **cfg.data.options)
    spec = model_spec(cfg, 0, num_classes=len(train_set.classes))
    torch.manual_seed(derive_seed(cfg.seed, "stage", 0))
    model = spec.build()
    loader = TensorLoader(train_set, cfg.data.batch_size, train=True, augment=True,
                          seed=derive_seed(cfg.seed, "data", 0))
    total = min(stage.max_steps, len(loader) * stage.epochs)
    schedule, optimizer = LRSchedule.for_stage(stage, total), build_optimizer(model, stage)
    task = ClassificationTask(label_smoothing=stage.label_smoothing, tau=stage.tau)
    step = 0
    while step < total:
        loader.set_epoch(step // len(loader), start_batch=0)
        model.train()
        for x, y in loader:
            train_step(model, task, optimizer, x, y, progress=step / total, lr=schedule(step),
                       grad_clip=stage.grad_clip)
            step += 1
            if step % len(loader) == 0 or step >= total:
                break
    return weights_digest(model.state_dict())


def test_cli_api_and_train_step_give_the_same_weights(tmp_path, capsys):
    recipe = tmp_path / "run.yaml"
    recipe.write_text(yaml.safe_dump(RUN))
    assert main(["train", str(recipe), "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    cli = json.loads((tmp_path / "cli" / "summary.json").read_text())["weights_sha256"]
    api = train(load_run_config(str(recipe)), tmp_path / "api", quiet=True)["weights_sha256"]
    assert cli == api
    assert _hand_loop(load_run_config(str(recipe))) == api
    # and the digest is a function of the weights: another seed trains other weights
    other = train(load_run_config(str(recipe), ["seed=4"]), tmp_path / "other", quiet=True)["weights_sha256"]
    assert other != api
