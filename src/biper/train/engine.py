"""The training engine: the stage loop of a run, its epochs and its checkpoints.

`train(config, out_dir)` runs the stages of a `RunConfig` in order. A stage builds its model from
its `ModelSpec`, initialises it (`init_stage_weights`) and runs ``epochs`` (or ``max_steps``)
steps of `train_step`; after each epoch it evaluates, appends a metrics row, writes a checkpoint
(the last of a stage is kept as ``stageN-final-*.pt``) and prints one line. Resume is exact (on
CPU an interrupted and resumed run ends with the same ``weights_sha256``). SIGINT / SIGTERM
write a checkpoint and raise `TrainingInterrupted`; a NaN/Inf loss raises `NonFiniteLoss`.

Example: ``summary = train(load_run_config("cifar10-resnet20-biper-cpu", data_dir="../shared/data"), "runs/r20")``.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..analysis.flips import FlipTracker
from ..data.loader import derive_seed
from ..data.progress import Progress, notice
from ..errors import BiperError
from ..native import tune_allocator
from ..quantizers import fused
from ..validate import wrap_errors
from . import checkpoint as ck
from . import distributed as ddp
from .config import RunConfig
from .evaluate import evaluate
from .data import load_run_data, stage_loaders
from .metrics import (best_epoch, epoch_line, epoch_row, final_line, heartbeat_line, is_main_process, log, progress_enabled,
                      rank_world, run_summary, stage_line, write_json, write_metrics)
from .model import autocast_context, check_stage_models, init_stage_weights, model_spec
from .optim import LRSchedule, build_optimizer
from .run_files import check_resume_config, link_final, start_run_folder
from .state import EpochTotals, StageState, checkpoint_payload, restore_stage
from .step import train_step
from .stops import NonFiniteLoss, SignalCatcher, TrainingInterrupted, TrainingStopped
from .tasks import build_task, eval_task

__all__ = ["train", "Trainer", "TrainingStopped", "TrainingInterrupted", "NonFiniteLoss", "evaluate"]

HEARTBEAT_SECONDS = 60.0  # progress lines in logs when stderr is not a terminal


def train(config: RunConfig, out_dir: str | os.PathLike, *, resume: bool = False,
          quiet: bool = False) -> dict[str, Any]:
    """Run (or with ``resume`` continue) a training run; returns the ``summary.json`` dict.
    Under torchrun every process calls it and they train together (`biper.train.distributed`)."""
    if not isinstance(config, RunConfig):
        raise BiperError(f"train expects a RunConfig (see load_run_config), got {type(config).__name__}")
    with ddp.process_group(config.device, sync_bn=config.sync_bn):
        return Trainer(config, out_dir, resume=resume, quiet=quiet).run()


class Trainer:
    """One training run in ``out_dir`` (see module docstring)."""

    def __init__(self, config: RunConfig, out_dir: str | os.PathLike, *, resume: bool = False,
                 quiet: bool = False):
        self.config, self.out, self.resume, self.quiet = config, Path(out_dir), resume, quiet
        self.ckpt_dir = self.out / "checkpoints"
        self.device = ddp.rank_device(config.device)  # cuda:LOCAL_RANK under torchrun
        autocast_context(config.precision, self.device)  # validates precision for the device
        self.rank, self.world = rank_world()
        self.main = is_main_process()
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.global_step, self.wall_base = 0, 0.0
        self.last_path: Path | None = None
        self.signals = SignalCatcher(notice)
        self.flips = FlipTracker()
        self._t0 = self._last_beat = time.perf_counter()

    def run(self) -> dict[str, Any]:
        tune_allocator()  # CPU steps otherwise fault in fresh pages for every large activation
        threads = torch.get_num_threads()
        if self.config.threads is not None:
            torch.set_num_threads(self.config.threads)
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> dict[str, Any]:
        start = ddp.run_on_main(lambda: ck.find_resume_point(self.out, self.resume, report=notice))
        self._t0 = time.perf_counter()
        self.train_set, self.test_set = load_run_data(self.config, progress=not self.quiet and self.main)
        if self.config.model.num_classes is None:
            self.config = self.config.with_num_classes(len(self.train_set.classes))
        cfg = self.config
        check_stage_models(cfg)
        prev_state, ckpt, first = None, None, 0
        if start is None:
            if self.main:
                start_run_folder(self.out, cfg)
        else:
            check_resume_config(start[1].get("config", {}), cfg.to_dict(), start[0])
            self.last_path, ckpt = start
            metrics, progress = ckpt["metrics"], ckpt["progress"]
            self.history, self.best = list(metrics["history"]), metrics["best"]
            self.wall_base, self.global_step = float(metrics["wall_time"]), int(progress["global_step"])
            self.flips.load_state_dict(ckpt.get("flips") or {})
            first = progress["stage"]
            if progress["stage_done"]:
                first, prev_state, ckpt = first + 1, ckpt["model"], None
            log(f"resuming {self.out} from {self.last_path.name} (stage {progress['stage'] + 1}, "
                f"global step {self.global_step})")
        with self.signals:
            for index in range(first, len(cfg.stages)):
                prev_state = self._run_stage(index, ckpt, prev_state)
                ckpt = None
        return self._finish(prev_state)

    def _build_stage(self, index: int, ckpt: dict | None, prev_state: dict | None):
        cfg, stage = self.config, self.config.stages[index]
        spec = model_spec(cfg, index)
        torch.manual_seed(derive_seed(cfg.seed, "stage", index))
        with wrap_errors("model" if index == 0 else f"stages.{index}"):
            model = spec.build()
        previous = (lambda: prev_state if prev_state is not None else ck.stage_final_state(self.ckpt_dir, index - 1))
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
        else:
            init_stage_weights(model, cfg, index, previous, log)
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        net = ddp.wrap_model(model, self.device, sync_bn=cfg.sync_bn)  # DDP (several processes), then compile
        net = torch.compile(net) if cfg.compile else net
        loader, test_loader = stage_loaders(cfg, index, self.train_set, self.test_set, self.rank, self.world)
        spe = len(loader)
        total = spe * stage.epochs if stage.max_steps is None else min(stage.max_steps, spe * stage.epochs)
        s = StageState(index, model, net, build_optimizer(model, stage),
                       torch.amp.GradScaler("cuda") if cfg.precision == "amp" else None,
                       build_task(cfg, index, previous, self.device), LRSchedule.for_stage(stage, total),
                       spec, total, spe)
        return s, loader, test_loader

    def _run_stage(self, index: int, ckpt: dict | None, prev_state: dict | None) -> dict:
        cfg, stage = self.config, self.config.stages[index]
        s, loader, test_loader = self._build_stage(index, ckpt, prev_state)
        step, acc = 0, EpochTotals()
        if ckpt is not None:
            step, acc = restore_stage(s, ckpt, main=self.main)
        else:
            kernels = fused.backend() if s.spec.binarize and self.device.type == "cpu" else None
            log(stage_line(cfg, index, s.total, s.spe, self.world, binary=s.spec.binarize is not None, kernels=kernels))
        self._maybe_stop(s, step, acc)
        while step < s.total:
            epoch, batch = divmod(step, s.spe)
            loader.set_epoch(epoch, start_batch=batch)
            s.net.train()
            t_start, lr = time.perf_counter(), acc.lr
            in_epoch = min(s.spe, s.total - epoch * s.spe)
            bar = Progress(in_epoch - batch, f"{stage.name} epoch {epoch + 1}", enabled=progress_enabled(self.quiet),
                           unit="step")
            for x, y in loader:
                lr = self._step(s, step, x, y, acc)
                step += 1
                self.global_step += 1
                bar.update()
                self._heartbeat(stage.name, epoch, step - epoch * s.spe, in_epoch, acc, s.task.train_metric is not None)
                if step % s.spe == 0 or step >= s.total:
                    break
                acc_now = EpochTotals(**{**acc.to_dict(), "time": acc.time + time.perf_counter() - t_start, "lr": lr})
                self._maybe_stop(s, step, acc_now)  # after a signal: save and stop, all ranks together
                if cfg.checkpoint_every_steps and self.global_step % cfg.checkpoint_every_steps == 0:
                    self._save(s, step, acc_now, stage_done=False)
            bar.close()
            acc.time += time.perf_counter() - t_start
            ddp.sync_buffers(s.model)  # rank 0's BatchNorm statistics everywhere: eval and checkpoint agree
            ddp.check_in_sync(s.model, f"after epoch {epoch + 1} of stage '{stage.name}'")
            tests = s.task.evaluate(s.net, test_loader, device=self.device, precision=cfg.precision,
                                    desc=f"{stage.name} eval", quiet=self.quiet)
            row = epoch_row(stage.name, index, epoch, self.global_step, lr, acc.global_sums(), tests,
                            self._wall(), train_acc=s.task.train_metric is not None)
            row.update(self.flips.update(s.model))  # flip rate, mean |B'|, soft fraction per binary layer
            self.history.append(row)
            self.best = best_epoch(self.best, row, s.task.main_metric)  # test_acc, test_miou or test_map50
            acc = EpochTotals()
            self._save(s, step, acc, stage_done=step >= s.total)
            if self.main:
                write_metrics(self.out, self.history)
            log(epoch_line(dict(row, epochs=math.ceil(s.total / s.spe))))
            self._maybe_stop(s, step, acc, save=False)
        return s.model.state_dict()

    def _step(self, s: StageState, step: int, x: torch.Tensor, y: torch.Tensor, acc: EpochTotals) -> float:
        stage = self.config.stages[s.index]
        lr = s.schedule(step)
        last = self.last_path or "none (no checkpoint was written yet)"
        r = train_step(s.model, s.task, s.optimizer, x.to(self.device, non_blocking=True),
                       y.to(self.device, non_blocking=True), progress=step / s.total, lr=lr, net=s.net,
                       grad_clip=stage.grad_clip, scaler=s.scaler, precision=self.config.precision,
                       all_finite=lambda v: math.isfinite(ddp.all_reduce_sums([v])[0]),  # all ranks stop together
                       context=f" at stage '{stage.name}' step {step + 1} (global step {self.global_step + 1}); "
                               f"stopped before updating the weights; last good checkpoint: {last}; lower "
                               f"the learning rate or use precision fp32")
        acc.add(r.loss, r.reg, r.correct, r.count, r.parts)
        return lr

    def _heartbeat(self, stage: str, epoch: int, done: int, steps: int, acc: EpochTotals, accuracy: bool) -> None:
        """Without a terminal (logs, nohup), a progress line every `HEARTBEAT_SECONDS`."""
        now = time.perf_counter()
        if self.quiet or progress_enabled(False) or now - self._last_beat < HEARTBEAT_SECONDS:
            return
        self._last_beat = now
        log(heartbeat_line(stage, epoch, done, steps, acc, self._wall(), self.world, accuracy))

    def _wall(self) -> float:  # seconds of this run, excluding work lost before a resume
        return self.wall_base + time.perf_counter() - self._t0

    def _save(self, s: StageState, step: int, acc: EpochTotals, *, stage_done: bool) -> Path | None:
        """Collective: rank 0 writes the checkpoint (epoch sums over all ranks); every rank
        continues once it is on disk and knows its path."""
        totals = acc.global_sums()
        self.last_path = ddp.run_on_main(lambda: self._write_checkpoint(s, step, totals, stage_done))
        return self.last_path

    def _write_checkpoint(self, s: StageState, step: int, totals: EpochTotals, stage_done: bool) -> Path:
        payload = checkpoint_payload(s, config=self.config, step=step, global_step=self.global_step,
                                     stage_done=stage_done, totals=totals, history=self.history,
                                     best=self.best, wall_time=self._wall(), flips=self.flips.state_dict())
        name = ck.checkpoint_name(self.global_step, s.index if stage_done else None)
        self.last_path = ck.save_checkpoint(self.ckpt_dir / name, payload)
        ck.prune_rolling(self.ckpt_dir, self.config.keep_checkpoints)
        return self.last_path

    def _maybe_stop(self, s: StageState, step: int, acc: EpochTotals, save: bool = True) -> None:
        signum = ddp.agree_signal(self.signals.signum)  # collective: all ranks stop after the same step
        if signum is not None:
            raise TrainingInterrupted(signum, self._save(s, step, acc, stage_done=False) if save else self.last_path)

    def _finish(self, final_state: dict) -> dict[str, Any]:
        wall = self.history[-1]["wall_time"] if self.history else self._wall()
        summary = run_summary(self.config, self.history, self.best, self.global_step, wall,
                              ck.weights_digest(final_state), self.device, self.world,
                              main_metric=eval_task(self.config).main_metric)
        if self.main:
            link_final(self.last_path, self.out / "final.pt")
            write_metrics(self.out, self.history)
            write_json(self.out / "summary.json", summary)
            log(f"done: {final_line(summary)}, "
                f"{summary['steps']} steps in {summary['wall_time']:.0f}s; {self.out / 'summary.json'}")
        return summary
