"""Run-folder bookkeeping: per-epoch metrics (JSONL + CSV), the epoch line, progress, rank 0.

The metric history lives in every checkpoint, and ``metrics.jsonl`` / ``metrics.csv`` are
rewritten atomically from it after each epoch, so a resumed run never shows a duplicated or a
missing epoch. Only the main process (rank 0) writes files or prints; distributed training
(one process per device) plugs in through `is_main_process`.

Row keys: ``stage``, ``stage_index``, ``epoch`` (1-based within the stage), ``global_step``,
``lr``, ``train_loss``, ``train_acc``, ``reg``, ``test_loss``, ``test_acc`` (accuracies in %),
``epoch_time`` (s), ``wall_time`` (s since the run started, excluding lost work); binary models
add ``flip_rate``, ``mean_abs_bprime``, ``soft_frac`` and the per-layer ``layers``
(`biper.analysis.flips`).

Example::

    >>> print(epoch_line({"stage": "sine", "epoch": 3, "epochs": 14, "train_loss": 1.2,
    ...                   "train_acc": 55.0, "test_loss": 1.1, "test_acc": 60.0, "lr": 0.02,
    ...                   "epoch_time": 61.0}))
    [sine 3/14] train loss 1.2000 acc 55.00% | test loss 1.1000 acc 60.00% | lr 0.02 | 61.0s
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["COLUMNS", "write_metrics", "epoch_line", "is_main_process", "rank_world",
           "write_json", "log"]

COLUMNS = ("stage", "stage_index", "epoch", "global_step", "lr", "train_loss", "train_acc", "reg",
           "test_loss", "test_acc", "epoch_time", "wall_time",
           "flip_rate", "mean_abs_bprime", "soft_frac", "layers")


def rank_world() -> tuple[int, int]:
    """(rank, world_size) of this process: torch.distributed when initialised, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_world()[0] == 0


def log(message: str) -> None:
    """One line on stdout from the main process."""
    if is_main_process():
        print(message, flush=True)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    from .checkpoint import atomic_write_bytes

    return atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def write_metrics(run_dir: str | os.PathLike, history: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` and ``metrics.csv`` of ``run_dir`` from ``history``."""
    from .checkpoint import atomic_write_bytes

    run_dir = Path(run_dir)
    jsonl = "".join(json.dumps({k: row.get(k) for k in COLUMNS}) + "\n" for row in history)
    atomic_write_bytes(run_dir / "metrics.jsonl", jsonl.encode())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: json.dumps(row[k]) if isinstance(row.get(k), dict) else row.get(k) for k in COLUMNS})
    atomic_write_bytes(run_dir / "metrics.csv", buf.getvalue().encode())


def epoch_line(row: dict[str, Any]) -> str:
    """The one-line summary printed after each epoch."""
    return (f"[{row['stage']} {row['epoch']}/{row['epochs']}] "
            f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% | "
            f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.2f}% | "
            f"lr {row['lr']:.4g} | {row['epoch_time']:.1f}s")


def progress_enabled(quiet: bool) -> bool:
    """Progress bars only on an interactive terminal, never in quiet mode or off rank 0."""
    return not quiet and sys.stderr.isatty() and is_main_process()
