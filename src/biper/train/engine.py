"""The training engine: stages, epochs, steps, checkpoints, resume, signals.

`train(config, out_dir)` runs every stage of a `RunConfig` in order. A stage builds its model
with the stage's binarize config, initialises it (the previous stage's final weights, a file,
or fresh), and trains it for ``epochs`` (or ``max_steps``) with its own optimizer, schedule and
task. Every step::

    set_progress(model, s / S)           # annealed quantizer parameters (mu, omega0, ...)
    lr = schedule(s)                     # warm-up + cosine, a pure function of the step
    loss = task.loss(model, x, y)        # under the precision context (fp32 / bf16 / amp)
    stop if loss is NaN or Inf           # before touching the weights
    backward, clip grad, optimizer step, clip_latent_weights_(model)

After each epoch: evaluate on the test split, append a metrics row, write a checkpoint (the
last one of a stage is kept as ``stageN-final-*.pt``), print one line. With
``checkpoint_every_steps`` extra checkpoints are written mid-epoch.

Resume is exact: the loader replays batch ``b`` of epoch ``e`` bit for bit, the schedule and
the quantizer progress are functions of the step, and the checkpoint holds the optimizer,
the RNG and the running epoch sums. On CPU with a fixed seed, a run interrupted at any moment
(even SIGKILL) and resumed ends with exactly the weights of an uninterrupted one;
``summary.json`` carries their SHA-256 (``weights_sha256``).

SIGINT / SIGTERM finish the current step, write a checkpoint and raise `TrainingInterrupted`
(a second SIGINT stops at once). A NaN/Inf loss raises `NonFiniteLoss`; the last good
checkpoint is kept. The run folder::

    config.yaml  metrics.jsonl  metrics.csv  checkpoints/  final.pt  summary.json

Example::

    >>> from biper.train import load_run_config, train
    >>> cfg = load_run_config("cifar10-resnet20-biper-cpu", data_dir="../shared/data")
    >>> summary = train(cfg, "runs/r20")
    >>> summary["final_test_acc"], summary["weights_sha256"][:12]
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch

from ..data.loader import TensorLoader, derive_seed
from ..data.progress import Progress, notice
from ..errors import BiperError
from ..native import tune_allocator
from ..nn import clip_latent_weights_
from ..analysis.flips import FlipTracker
from ..quantizers import fused, set_progress
from . import checkpoint as ck
from . import distributed as ddp
from .config import RunConfig
from .evaluate import evaluate
from .metrics import epoch_line, is_main_process, log, progress_enabled, rank_world, write_json, write_metrics
from .model import autocast_context, build_model_from_config, load_init_state, model_spec
from .optim import LRSchedule, build_optimizer, set_lr
from .run_files import check_resume_config, clean_temp_files, link_final, write_config
from .stops import NonFiniteLoss, TrainingInterrupted, TrainingStopped
from .tasks import ClassificationTask, DistillationTask
from .validate import wrap_errors

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


EPOCH_SUMS = ("loss", "reg", "correct", "count")  # running sums of an epoch, added up over ranks


def _fresh_epoch() -> dict[str, float]:
    return {"loss": 0.0, "reg": 0.0, "correct": 0, "count": 0, "time": 0.0, "lr": 0.0}


def _global_sums(acc: dict) -> dict:
    """``acc`` with its `EPOCH_SUMS` added up over all ranks (collective)."""
    sums = ddp.all_reduce_sums([acc[k] for k in EPOCH_SUMS])
    return dict(acc, **{k: (int(v) if k in ("correct", "count") else v) for k, v in zip(EPOCH_SUMS, sums)})


class Trainer:
    """One training run in ``out_dir`` (see module docstring)."""

    def __init__(self, config: RunConfig, out_dir: str | os.PathLike, *, resume: bool = False,
                 quiet: bool = False):
        if not isinstance(config, RunConfig):
            raise BiperError(f"train expects a RunConfig (see load_run_config), got {type(config).__name__}")
        self.config = config
        self.out = Path(out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.resume, self.quiet = resume, quiet
        self.device = ddp.rank_device(config.device)  # cuda:LOCAL_RANK under torchrun
        autocast_context(config.precision, self.device)  # validates precision for the device
        self.rank, self.world = rank_world()
        self.main = is_main_process()
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.global_step = 0
        self.wall_base = 0.0
        self.last_path: Path | None = None
        self._signal: int | None = None
        self.flips = FlipTracker()
        self._t0 = self._last_beat = time.perf_counter()

    # -- the run ------------------------------------------------------------------------------
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
        cfg = self.config
        start = self._find_start()
        self._t0 = time.perf_counter()
        self.train_set, self.test_set = self._load_data()
        if cfg.model.num_classes is None:
            cfg = self.config = dataclasses.replace(
                cfg, model=dataclasses.replace(cfg.model, num_classes=len(self.train_set.classes)))
        self._check_models()
        if start is not None:
            check_resume_config(start[1].get("config", {}), cfg.to_dict(), start[0])
        elif self.main:
            try:
                self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ck.CheckpointWriteError(f"cannot create the run folder {self.ckpt_dir}: "
                                              f"{err.strerror or err}") from None
            write_config(self.out, cfg)
        prev_state, ckpt, first = None, None, 0
        if start is not None:
            self.last_path, ckpt = start
            metrics = ckpt["metrics"]
            self.history, self.best = list(metrics["history"]), metrics["best"]
            self.flips.load_state_dict(ckpt.get("flips") or {})
            self.wall_base, self.global_step = float(metrics["wall_time"]), int(ckpt["progress"]["global_step"])
            progress = ckpt["progress"]
            first = progress["stage"]
            if progress["stage_done"]:
                first, prev_state, ckpt = first + 1, ckpt["model"], None
            log(f"resuming {self.out} from {self.last_path.name} (stage {progress['stage'] + 1}, "
                f"global step {self.global_step})")
        with self._signals():
            for index in range(first, len(cfg.stages)):
                prev_state = self._run_stage(index, ckpt, prev_state)
                ckpt = None
        return self._finish(prev_state)

    def _find_start(self) -> tuple[Path, dict] | None:
        """Rank 0 picks the checkpoint and sends it to every rank: all resume from the same one."""
        return ddp.run_on_main(self._find_start_main)

    def _find_start_main(self) -> tuple[Path, dict] | None:
        if self.out.exists() and not self.out.is_dir():
            raise BiperError(f"--out {self.out} is a file; give a folder for the run")
        existing = ck.list_checkpoints(self.ckpt_dir)
        if not self.resume:
            if existing or (self.out / "summary.json").exists():
                raise BiperError(f"{self.out} already holds a run; pass --resume to continue it or "
                                 f"choose another --out")
            return None
        clean_temp_files(self.out)
        found = ck.latest_checkpoint(self.ckpt_dir, report=notice)
        if found is None and existing:
            raise BiperError(f"every checkpoint in {self.ckpt_dir} is unreadable; move them away "
                             f"to start over")
        if found is None:
            notice(f"no checkpoint in {self.ckpt_dir}; starting the run from the beginning")
        return found

    def _load_data(self):
        from ..data import load_dataset

        d = self.config.data
        kwargs = dict(subset=d.subset, cache_dir=d.cache_dir, skip_corrupt=d.skip_corrupt,
                      progress=not self.quiet and self.main, **d.options)
        def load():
            with wrap_errors("data"):
                return (load_dataset(d.dataset, d.data_dir, "train", **kwargs),
                        load_dataset(d.dataset, d.data_dir, "test", **kwargs))

        return ddp.main_first(load)  # rank 0 fills the cache before the others read it

    def _check_models(self) -> None:
        """Surface layer-selection errors of later stages now rather than after hours of
        training: build (on the meta device) each later stage whose binarize config selects
        layers differently from the stages before it. Stage 0 is built right away anyway."""
        seen = {self._selection(0)}
        for i in range(1, len(self.config.stages)):
            key = self._selection(i)
            if key not in seen:
                seen.add(key)
                with wrap_errors(f"stages.{i}"), torch.device("meta"):
                    build_model_from_config(model_spec(self.config, i))

    def _selection(self, index: int) -> tuple:
        b = self.config.stage_binarize(index)
        if b is None:
            return (None,)
        return (b.include, b.exclude, b.layer_types, b.keep_first, b.keep_last, b.input_quantizer,
                tuple(sorted(b.input_params)))

    # -- one stage ----------------------------------------------------------------------------
    def _run_stage(self, index: int, ckpt: dict | None, prev_state: dict | None) -> dict:
        cfg, stage = self.config, self.config.stages[index]
        spec = model_spec(cfg, index)
        torch.manual_seed(derive_seed(cfg.seed, "stage", index))
        with wrap_errors("model" if index == 0 else f"stages.{index}"):
            model = build_model_from_config(spec)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
        else:
            self._init_weights(model, index, prev_state)
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        net = self._wrap(model)
        batch = ddp.per_rank_batch(cfg.data.batch_size, self.world)  # the recipe's batch is global
        loader = TensorLoader(self.train_set, batch, train=True, augment=cfg.data.augment,
                              seed=derive_seed(cfg.seed, "data", index), drop_last=cfg.data.drop_last,
                              rank=self.rank, world_size=self.world, channels_last=cfg.channels_last)
        test_loader = TensorLoader(self.test_set, -(-cfg.data.eval_batch_size // self.world), train=False,
                                   rank=self.rank, world_size=self.world, channels_last=cfg.channels_last)
        spe = len(loader)
        total = spe * stage.epochs if stage.max_steps is None else min(stage.max_steps, spe * stage.epochs)
        schedule = LRSchedule.for_stage(stage, total)
        optimizer = build_optimizer(model, stage)
        scaler = torch.amp.GradScaler("cuda") if cfg.precision == "amp" else None
        task = self._build_task(index, prev_state).to(self.device)
        step, acc = 0, _fresh_epoch()
        if ckpt is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            step, acc = int(ckpt["progress"]["stage_step"]), dict(ckpt["metrics"]["epoch"])
            if not self.main:  # the checkpoint holds the sums over all ranks: count them once
                acc.update({k: _fresh_epoch()[k] for k in EPOCH_SUMS})
            if ckpt["progress"]["steps_per_epoch"] != spe:
                raise BiperError(f"checkpoint has {ckpt['progress']['steps_per_epoch']} steps per epoch, "
                                 f"this run {spe}: the data or batch size changed")
            torch.set_rng_state(ckpt["rng"]["torch"])
            ddp.set_cuda_rng_states(ckpt["rng"].get("cuda") or [])
        else:
            log(f"stage {index + 1}/{len(cfg.stages)} '{stage.name}': {math.ceil(total / spe)} epoch(s), "
                f"{total} steps of batch {cfg.data.batch_size}"
                f"{f' ({self.world} processes x {batch})' if self.world > 1 else ''}, {stage.optimizer} lr {stage.lr:g}, "
                f"{'binary' if spec['binarize'] else 'full precision'} model, {cfg.precision}"
                f"{', channels_last' if cfg.channels_last else ''}, {torch.get_num_threads()} thread(s)"
                f"{f', quantizer kernels {fused.backend()}' if spec['binarize'] and self.device.type == 'cpu' else ''}")
        state = dict(index=index, model=model, net=net, optimizer=optimizer, scaler=scaler, task=task,
                     schedule=schedule, spec=spec, total=total, spe=spe)
        self._maybe_stop(state, step, acc)
        while step < total:
            epoch, batch = divmod(step, spe)
            loader.set_epoch(epoch, start_batch=batch)
            net.train()
            t_start, lr = time.perf_counter(), acc["lr"]
            n_batches = min(spe, total - epoch * spe) - batch
            bar = Progress(n_batches, f"{stage.name} epoch {epoch + 1}", enabled=progress_enabled(self.quiet),
                           unit="step")
            for x, y in loader:
                lr = self._step(state, step, x, y, acc)
                step += 1
                self.global_step += 1
                bar.update()
                self._heartbeat(stage.name, epoch, step - epoch * spe, min(spe, total - epoch * spe), acc)
                if step % spe == 0 or step >= total:
                    break
                every = cfg.checkpoint_every_steps
                acc_now = dict(acc, time=acc["time"] + time.perf_counter() - t_start, lr=lr)
                self._maybe_stop(state, step, acc_now)  # after a signal: save and stop, all ranks together
                if every and self.global_step % every == 0:
                    self._save(state, step, acc_now, stage_done=False)
            bar.close()
            acc["time"] += time.perf_counter() - t_start
            ddp.sync_buffers(model)  # rank 0's BatchNorm statistics everywhere: eval and checkpoint agree
            ddp.check_in_sync(model, f"after epoch {epoch + 1} of stage '{stage.name}'")
            test_loss, test_acc = evaluate(net, test_loader, device=self.device, precision=cfg.precision,
                                           desc=f"{stage.name} eval", quiet=self.quiet)
            row = self._row(index, epoch, lr, _global_sums(acc), test_loss, test_acc)
            row.update(self.flips.update(model))  # flip rate, mean |B'|, soft fraction per binary layer
            acc = _fresh_epoch()
            self._save(state, step, acc, stage_done=step >= total)
            if self.main:
                write_metrics(self.out, self.history)
            log(epoch_line(dict(row, epochs=math.ceil(total / spe))))
            self._maybe_stop(state, step, acc, save=False)
        return model.state_dict()

    def _step(self, s: dict, step: int, x: torch.Tensor, y: torch.Tensor, acc: dict) -> float:
        cfg, stage = self.config, self.config.stages[s["index"]]
        model, optimizer, scaler = s["model"], s["optimizer"], s["scaler"]
        set_progress(model, step / s["total"])
        lr = s["schedule"](step)
        set_lr(optimizer, lr)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with autocast_context(cfg.precision, self.device):
            loss, logits, parts = s["task"].loss(s["net"], x, y)
        value = loss.item()
        if not math.isfinite(ddp.all_reduce_sums([value])[0]):  # every rank stops together
            value = value if not math.isfinite(value) else "non-finite on another rank"
            last = self.last_path or "none (no checkpoint was written yet)"
            raise NonFiniteLoss(f"loss is {value} at stage '{stage.name}' step {step + 1} (global step "
                                f"{self.global_step + 1}); stopped before updating the weights; last good "
                                f"checkpoint: {last}; lower the learning rate or use precision fp32")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if stage.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), stage.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if stage.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), stage.grad_clip)
            optimizer.step()
        clip_latent_weights_(model)
        n = y.numel()
        acc["loss"] += value * n
        acc["reg"] += float(parts["reg"]) * n
        acc["correct"] += int((logits.detach().argmax(dim=1) == y).sum())
        acc["count"] += n
        return lr

    def _heartbeat(self, stage: str, epoch: int, done: int, steps: int, acc: dict) -> None:
        """Without a terminal (logs, nohup), a progress line every `HEARTBEAT_SECONDS`."""
        now = time.perf_counter()
        if self.quiet or progress_enabled(False) or now - self._last_beat < HEARTBEAT_SECONDS:
            return
        self._last_beat = now
        n = max(acc["count"], 1)
        log(f"  [{stage} epoch {epoch + 1}] step {done}/{steps}, running loss {acc['loss'] / n:.4f} "
            f"acc {100.0 * acc['correct'] / n:.2f}%{' (rank 0)' if self.world > 1 else ''}, "
            f"{self._wall():.0f}s elapsed")

    def _row(self, index: int, epoch: int, lr: float, acc: dict, test_loss: float, test_acc: float) -> dict:
        n = max(acc["count"], 1)
        row = {"stage": self.config.stages[index].name, "stage_index": index, "epoch": epoch + 1,
               "global_step": self.global_step, "lr": lr, "train_loss": acc["loss"] / n,
               "train_acc": 100.0 * acc["correct"] / n, "reg": acc["reg"] / n, "test_loss": test_loss,
               "test_acc": test_acc, "epoch_time": acc["time"], "wall_time": self._wall()}
        self.history.append(row)
        if self.best is None or test_acc > self.best["test_acc"]:
            self.best = {"test_acc": test_acc, "stage": row["stage"], "epoch": row["epoch"]}
        return row

    # -- initialisation, tasks, wrapping --------------------------------------------------------
    def _stage_final_state(self, index: int) -> dict:
        finals = [p for _, final, p in ck.list_checkpoints(self.ckpt_dir)
                  if final and p.name.startswith(f"stage{index + 1}-final-")]
        if not finals:
            raise BiperError(f"the final checkpoint of stage {index + 1} is missing from {self.ckpt_dir}")
        return ck.load_checkpoint(finals[-1])["model"]

    def _init_weights(self, model: torch.nn.Module, index: int, prev_state: dict | None) -> None:
        cfg, stage = self.config, self.config.stages[index]
        if stage.init_from == "previous" and index > 0:
            state = prev_state if prev_state is not None else self._stage_final_state(index - 1)
            load_init_state(model, state, f"stage '{cfg.stages[index - 1].name}'")
        elif stage.init_from not in (None, "previous"):
            with wrap_errors(f"stages.{index}.init_from"):
                load_init_state(model, ck.load_state_file(stage.init_from), stage.init_from)
        if index == 0 and cfg.omega0_init is not None:
            from ..analysis.flexible_init import FlexibleInit

            with wrap_errors("omega0_init"):
                chosen = FlexibleInit.from_dict(dict(cfg.omega0_init)).apply(model)
            values = sorted(chosen.values())
            log(f"omega0_init: {len(chosen)} layer(s), omega0 from {values[0]:.4g} to {values[-1]:.4g}")

    def _build_task(self, index: int, prev_state: dict | None):
        stage = self.config.stages[index]
        if stage.task.name == "classification":
            return ClassificationTask(label_smoothing=stage.label_smoothing, tau=stage.tau)
        source = stage.task.teacher
        if source == "previous":
            teacher = build_model_from_config(model_spec(self.config, index - 1))
            teacher.load_state_dict(prev_state if prev_state is not None else self._stage_final_state(index - 1))
        else:
            with wrap_errors(f"stages.{index}.task.teacher"):
                teacher = build_model_from_config(ck.load_checkpoint(source))
        teacher.to(self.device)
        if self.config.channels_last:
            teacher.to(memory_format=torch.channels_last)
        return DistillationTask(teacher, alpha=stage.task.alpha, temperature=stage.task.temperature,
                                label_smoothing=stage.label_smoothing, tau=stage.tau)

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The one place the model is wrapped for execution: DDP (several processes), then
        torch.compile. ``model`` itself stays the unwrapped module (state dicts, quantizers)."""
        net = ddp.wrap_model(model, self.device, sync_bn=self.config.sync_bn)
        if self.config.compile:
            return torch.compile(net)
        return net

    # -- checkpoints, signals, the end ----------------------------------------------------------
    def _wall(self) -> float:
        return self.wall_base + time.perf_counter() - self._t0

    def _save(self, s: dict, step: int, acc: dict, *, stage_done: bool) -> Path | None:
        """Collective: rank 0 writes the checkpoint (epoch sums over all ranks); every rank
        continues once it is on disk and knows its path."""
        acc = _global_sums(acc)
        self.last_path = ddp.run_on_main(lambda: self._write_checkpoint(s, step, acc, stage_done=stage_done))
        return self.last_path

    def _write_checkpoint(self, s: dict, step: int, acc: dict, *, stage_done: bool) -> Path:
        index, spe = s["index"], s["spe"]
        epoch, batch = divmod(step, spe)
        run_done = stage_done and index == len(self.config.stages) - 1
        payload = {
            "model": s["model"].state_dict(), "model_config": s["spec"], "config": self.config.to_dict(),
            "stage": index, "stage_name": self.config.stages[index].name,
            "progress": {"stage": index, "stage_step": step, "global_step": self.global_step,
                         "epoch": epoch, "batch": batch, "steps_per_epoch": spe,
                         "stage_done": stage_done, "run_done": run_done},
            "optimizer": s["optimizer"].state_dict(),
            "scaler": s["scaler"].state_dict() if s["scaler"] is not None else None,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": ddp.cuda_rng_states()},  # this GPU's only under DDP
            "metrics": {"history": self.history, "epoch": acc, "best": self.best, "wall_time": self._wall()},
            "flips": self.flips.state_dict(),  # last epoch-end deployed signs, so a resume is exact
        }
        name = ck.checkpoint_name(self.global_step, index if stage_done else None)
        self.last_path = ck.save_checkpoint(self.ckpt_dir / name, payload)
        rolling = [p for _, final, p in ck.list_checkpoints(self.ckpt_dir) if not final]
        for old in rolling[: max(len(rolling) - self.config.keep_checkpoints, 0)]:
            with contextlib.suppress(OSError):
                old.unlink()
        return self.last_path

    def _maybe_stop(self, s: dict, step: int, acc: dict, save: bool = True) -> None:
        signum = ddp.agree_signal(self._signal)  # collective: all ranks stop after the same step
        if signum is None:
            return
        path = self._save(s, step, acc, stage_done=False) if save else self.last_path
        raise TrainingInterrupted(signum, path)

    @contextlib.contextmanager
    def _signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._signal = signum
            notice(f"{signal.Signals(signum).name} received: finishing the current step, writing a "
                   f"checkpoint and exiting (press Ctrl-C again to stop at once)")

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _finish(self, final_state: dict) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        per_stage: dict[str, int] = {}
        for row in self.history:
            per_stage[row["stage"]] = per_stage.get(row["stage"], 0) + 1
        from .. import __version__

        summary = {
            "name": self.config.name, "version": __version__, "torch_version": str(torch.__version__),
            "final_test_acc": last.get("test_acc"), "final_test_loss": last.get("test_loss"),
            "best_test_acc": None if self.best is None else self.best["test_acc"],
            "best": self.best, "epochs": len(self.history), "epochs_per_stage": per_stage,
            "steps": self.global_step,
            "wall_time": self.history[-1]["wall_time"] if self.history else self._wall(),
            "weights_sha256": ck.weights_digest(final_state), "final_checkpoint": "final.pt",
            "device": str(self.device), "precision": self.config.precision,
            "threads": torch.get_num_threads(), "world_size": self.world,
        }
        if self.main:
            link_final(self.last_path, self.out / "final.pt")
            write_metrics(self.out, self.history)
            write_json(self.out / "summary.json", summary)
            log(f"done: final test acc {summary['final_test_acc']:.2f}%, best {summary['best_test_acc']:.2f}%, "
                f"{summary['steps']} steps in {summary['wall_time']:.0f}s; {self.out / 'summary.json'}")
        return summary
