"""The state of a stage in training, the running sums of an epoch, and the checkpoint payload.

`StageState` holds what a stage trains with (model, wrapped net, optimizer, scaler, task,
schedule, spec, step counts). `EpochTotals` are the sums the epoch row is computed from.
`checkpoint_payload` is the one place a training checkpoint's keys are written, and
`restore_stage` the one place they are read back into a stage (key table:
`biper.train.checkpoint`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import BiperError
from ..models import ModelSpec
from . import distributed as ddp

__all__ = ["StageState", "EpochTotals", "checkpoint_payload", "restore_stage"]

SUMS = ("loss", "reg", "correct", "count")  # added up over ranks


@dataclass
class StageState:
    """What one stage trains with; ``total`` steps in all, ``spe`` steps per epoch."""

    index: int
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    task: Any
    schedule: Any
    spec: ModelSpec
    total: int
    spe: int

    def __getitem__(self, key: str) -> Any:  # mapping-style reads, for hooks written that way
        return getattr(self, key)


@dataclass
class EpochTotals:
    """Running sums of the current epoch (loss and reg weighted by batch size), its time and lr."""

    loss: float = 0.0
    reg: float = 0.0
    correct: int = 0
    count: int = 0
    time: float = 0.0
    lr: float = 0.0
    parts: dict = dataclasses.field(default_factory=dict)  # loss parts a task logs, weighted like loss

    def add(self, loss: float, reg: float, correct: int, count: int, parts: dict | None = None) -> None:
        self.loss += loss * count
        self.reg += reg * count
        self.correct += correct
        self.count += count
        for key, value in (parts or {}).items():
            self.parts[key] = self.parts.get(key, 0.0) + value * count

    def global_sums(self) -> "EpochTotals":
        """A copy with the sums added up over all ranks (collective)."""
        keys = sorted(self.parts)
        sums = ddp.all_reduce_sums([getattr(self, k) for k in SUMS] + [self.parts[k] for k in keys])
        return dataclasses.replace(self, **{k: (int(v) if k in ("correct", "count") else v)
                                            for k, v in zip(SUMS, sums)},
                                   parts=dict(zip(keys, sums[len(SUMS):])))

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EpochTotals":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def checkpoint_payload(s: StageState, *, config, step: int, global_step: int, stage_done: bool,
                       totals: EpochTotals, history: list, best: dict | None, wall_time: float,
                       flips: dict | None = None) -> dict:
    """Everything a checkpoint of stage ``s`` after ``step`` of its steps holds (``flips``: the
    flip tracker's last epoch-end deployed signs, so that a resumed run's flip rates are exact)."""
    epoch, batch = divmod(step, s.spe)
    return {
        "model": s.model.state_dict(), "model_config": s.spec.to_dict(), "config": config.to_dict(),
        "stage": s.index, "stage_name": config.stages[s.index].name,
        "progress": {"stage": s.index, "stage_step": step, "global_step": global_step,
                     "epoch": epoch, "batch": batch, "steps_per_epoch": s.spe,
                     "stage_done": stage_done, "run_done": stage_done and s.index == len(config.stages) - 1},
        "optimizer": s.optimizer.state_dict(),
        "scaler": s.scaler.state_dict() if s.scaler is not None else None,
        "rng": {"torch": torch.get_rng_state(), "cuda": ddp.cuda_rng_states()},  # this GPU's only under DDP
        "metrics": {"history": history, "epoch": totals.to_dict(), "best": best, "wall_time": wall_time},
        "flips": flips or {},
    }


def restore_stage(s: StageState, ckpt: dict, *, main: bool) -> tuple[int, EpochTotals]:
    """Load optimizer, scaler and random state of ``ckpt`` into stage ``s`` (its weights are
    loaded when the model is built); returns the stage step and the epoch's running sums."""
    s.optimizer.load_state_dict(ckpt["optimizer"])
    if s.scaler is not None and ckpt.get("scaler"):
        s.scaler.load_state_dict(ckpt["scaler"])
    totals = EpochTotals.from_dict(ckpt["metrics"]["epoch"])
    if not main:  # the checkpoint holds the sums over all ranks: count them once
        totals = dataclasses.replace(totals, loss=0.0, reg=0.0, correct=0, count=0, parts={})
    if ckpt["progress"]["steps_per_epoch"] != s.spe:
        raise BiperError(f"checkpoint has {ckpt['progress']['steps_per_epoch']} steps per epoch, "
                         f"this run {s.spe}: the data or batch size changed")
    torch.set_rng_state(ckpt["rng"]["torch"])
    ddp.set_cuda_rng_states(ckpt["rng"].get("cuda") or [])
    return int(ckpt["progress"]["stage_step"]), totals
