"""Run-folder bookkeeping: per-epoch metrics (JSONL + CSV), the epoch line, progress, rank 0.

The metric history lives in every checkpoint, and ``metrics.jsonl`` / ``metrics.csv`` are
rewritten atomically from it after each epoch, so a resumed run never shows a duplicated or a
missing epoch. Only the main process (rank 0) writes files or prints; distributed training
(one process per device) plugs in through `is_main_process`.

Row keys: ``stage``, ``stage_index``, ``epoch`` (1-based within the stage), ``global_step``,
``lr``, ``train_loss``, ``train_acc``, ``reg``, ``test_loss``, ``test_acc`` (accuracies in %),
``epoch_time`` (s), ``wall_time`` (s since the run started, excluding lost work); binary models
add ``flip_rate``, ``mean_abs_bprime``, ``soft_frac`` and the per-layer ``layers``
(`biper.analysis.flips`). Dense tasks report their own test metrics instead of ``test_acc``
(`DENSE_COLUMNS`: ``test_miou``, ``test_pixel_acc`` for segmentation, ``test_map50``,
``test_map`` for detection, in %) and may log ``train_parts`` (mean loss parts); these columns
are written only when some row has them. ``train_acc`` is the task's step accuracy (pixel
accuracy for segmentation; null for detection).

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

__all__ = ["COLUMNS", "DENSE_COLUMNS", "METRIC_LABELS", "metric_label", "final_line", "best_epoch", "write_metrics", "epoch_line",
           "epoch_row", "heartbeat_line", "is_main_process", "rank_world", "write_json", "log"]

COLUMNS = ("stage", "stage_index", "epoch", "global_step", "lr", "train_loss", "train_acc", "reg",
           "test_loss", "test_acc", "epoch_time", "wall_time",
           "flip_rate", "mean_abs_bprime", "soft_frac", "layers")
DENSE_COLUMNS = ("test_miou", "test_pixel_acc", "test_map50", "test_map", "train_parts")
METRIC_LABELS = {"test_acc": "acc", "test_miou": "mIoU", "test_pixel_acc": "pixel acc",
                 "test_map50": "mAP@0.5", "test_map": "mAP@[.5:.95]"}


def metric_label(key: str) -> str:
    """How a test metric is named in lines and tables (``test_miou`` -> ``mIoU``)."""
    return {"test_acc": "accuracy"}.get(key, METRIC_LABELS.get(key, key))


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
    from ..files import atomic_write
    from .checkpoint import CheckpointWriteError

    return atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), error=CheckpointWriteError)


def write_metrics(run_dir: str | os.PathLike, history: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` and ``metrics.csv`` of ``run_dir`` from ``history``."""
    from ..files import atomic_write
    from .checkpoint import CheckpointWriteError

    run_dir = Path(run_dir)
    columns = COLUMNS + tuple(c for c in DENSE_COLUMNS if any(c in row for row in history))
    jsonl = "".join(json.dumps({k: row.get(k) for k in columns}) + "\n" for row in history)
    atomic_write(run_dir / "metrics.jsonl", jsonl.encode(), error=CheckpointWriteError)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: json.dumps(row[k]) if isinstance(row.get(k), dict) else row.get(k) for k in columns})
    atomic_write(run_dir / "metrics.csv", buf.getvalue().encode(), error=CheckpointWriteError)


def epoch_line(row: dict[str, Any]) -> str:
    """The one-line summary printed after each epoch."""
    train = f"train loss {row['train_loss']:.4f}"
    if row.get("train_acc") is not None:
        train += f" acc {row['train_acc']:.2f}%"
    if row.get("train_parts"):
        train += " (" + ", ".join(f"{k} {v:.4f}" for k, v in row["train_parts"].items()) + ")"
    tests = "".join(f" {label} {row[key]:.2f}%" for key, label in METRIC_LABELS.items()
                    if row.get(key) is not None)
    return (f"[{row['stage']} {row['epoch']}/{row['epochs']}] {train} | "
            f"test loss {row['test_loss']:.4f}{tests} | "
            f"lr {row['lr']:.4g} | {row['epoch_time']:.1f}s")


def progress_enabled(quiet: bool) -> bool:
    """Progress bars only on an interactive terminal, never in quiet mode or off rank 0."""
    return not quiet and sys.stderr.isatty() and is_main_process()


def epoch_row(stage: str, index: int, epoch: int, global_step: int, lr: float, totals, tests: dict[str, float],
              wall_time: float, *, train_acc: bool = True) -> dict[str, Any]:
    """The metrics row of an epoch from its running sums (`biper.train.state.EpochTotals`) and
    the task's test metrics ``tests`` (``test_loss``, ``test_acc`` or the dense ones);
    ``train_acc`` False (detection) leaves the step accuracy null."""
    n = max(totals.count, 1)
    row = {"stage": stage, "stage_index": index, "epoch": epoch + 1, "global_step": global_step, "lr": lr,
           "train_loss": totals.loss / n, "train_acc": 100.0 * totals.correct / n if train_acc else None,
           "reg": totals.reg / n, **tests, "epoch_time": totals.time, "wall_time": wall_time}
    if getattr(totals, "parts", None):
        row["train_parts"] = {k: v / n for k, v in totals.parts.items()}
    return row


def best_epoch(best: dict[str, Any] | None, row: dict[str, Any], key: str) -> dict[str, Any]:
    """The best epoch so far by metric ``key`` (higher is better; the earlier epoch on ties)."""
    if best is None or row[key] > best[key]:
        return {key: row[key], "stage": row["stage"], "epoch": row["epoch"]}
    return best


def heartbeat_line(stage: str, epoch: int, done: int, steps: int, totals, wall_time: float, world: int,
                   accuracy: bool = True) -> str:
    """The progress line printed into logs (no terminal) while an epoch runs (``accuracy``
    False: the task has no step accuracy)."""
    n = max(totals.count, 1)
    acc = f" acc {100.0 * totals.correct / n:.2f}%" if accuracy else ""
    return (f"  [{stage} epoch {epoch + 1}] step {done}/{steps}, running loss {totals.loss / n:.4f}"
            f"{acc}{' (rank 0)' if world > 1 else ''}, "
            f"{wall_time:.0f}s elapsed")


def stage_line(config, index: int, total: int, spe: int, world: int, *, binary: bool, kernels: str | None) -> str:
    """The line printed when a stage starts."""
    import math

    import torch

    stage = config.stages[index]
    per_rank = config.data.batch_size // world  # validated to split evenly
    procs = f" ({world} processes x {per_rank})" if world > 1 else ""
    return (f"stage {index + 1}/{len(config.stages)} '{stage.name}': {math.ceil(total / spe)} epoch(s), "
            f"{total} steps of batch {config.data.batch_size}{procs}, {stage.optimizer} lr {stage.lr:g}, "
            f"{'binary' if binary else 'full precision'} model, {config.precision}"
            f"{', channels_last' if config.channels_last else ''}, {torch.get_num_threads()} thread(s)"
            f"{f', quantizer kernels {kernels}' if kernels else ''}")


def run_summary(config, history: list[dict], best: dict | None, steps: int, wall_time: float, digest: str,
                device, world: int, main_metric: str = "test_acc") -> dict[str, Any]:
    """The ``summary.json`` of a finished run; a dense task adds ``main_metric`` (the key that
    ranks epochs), ``final_<metric>`` for each of its test metrics and ``best_<main_metric>``."""
    import torch

    from ..version import __version__

    last = history[-1] if history else {}
    per_stage: dict[str, int] = {}
    for row in history:
        per_stage[row["stage"]] = per_stage.get(row["stage"], 0) + 1
    dense = {}
    if main_metric != "test_acc":
        dense = {"main_metric": main_metric, f"best_{main_metric}": None if best is None else best[main_metric],
                 **{f"final_{k}": last[k] for k in DENSE_COLUMNS if k.startswith("test_") and k in last}}
    return {
        "name": config.name, "version": __version__, "torch_version": str(torch.__version__),
        "final_test_acc": last.get("test_acc"), "final_test_loss": last.get("test_loss"),
        "best_test_acc": None if best is None else best.get("test_acc"), **dense,
        "best": best, "epochs": len(history), "epochs_per_stage": per_stage,
        "steps": steps, "wall_time": wall_time, "weights_sha256": digest, "final_checkpoint": "final.pt",
        "device": str(device), "precision": config.precision,
        "threads": torch.get_num_threads(), "world_size": world,
    }


def final_line(summary: dict[str, Any]) -> str:
    """``final test acc 9.77%, best 11.91%`` (or the task's main metric, e.g. mIoU)."""
    key = summary.get("main_metric", "test_acc")
    label = "test acc" if key == "test_acc" else f"test {METRIC_LABELS.get(key, key)}"
    return f"final {label} {summary[f'final_{key}']:.2f}%, best {summary[f'best_{key}']:.2f}%"
