"""Checkpoints: atomic writes, SHA-256 checksums, loading without code execution.

A checkpoint is one ``torch.save`` file holding a plain dict (tensors, numbers, strings, lists,
dicts), so ``torch.load(path, weights_only=True)`` reads it and a file whose unpickling would
run code is refused. Keys:

==================  ===========================================================================
``format``          ``"biper-checkpoint"``; ``format_version`` 1
``version``         biper version that wrote it; ``torch_version``
``model``           the model's ``state_dict`` (latent weights, BN buffers, alpha, and each
                    quantizer's numeric parameters such as a per-layer omega0 as extra state)
``model_config``    ``{"name", "num_classes", "kwargs", "binarize"}``: rebuild the model with
                    `biper.train.build_model_from_config` (the binarize config of *this* stage)
``config``          the resolved run config (`RunConfig.to_dict`), JSON-able
``stage``           index of the stage the weights belong to; ``stage_name``
``progress``        ``stage``, ``stage_step``, ``global_step``, ``epoch``, ``batch``,
                    ``steps_per_epoch``, ``stage_done``, ``run_done``
``optimizer``       optimizer ``state_dict``; ``scaler`` (GradScaler, amp only) or None
``rng``             ``{"torch": ByteTensor, "cuda": [ByteTensor, ...]}``
``metrics``         ``history`` (per-epoch rows), ``epoch`` (running sums of the current
                    epoch), ``best``, ``wall_time``
``checksum``        SHA-256 over every other key (`state_digest`), verified on load
==================  ===========================================================================

Writes go through `biper.files.atomic_write`: a reader sees the old file or the new one, never
half of one; a failed write raises `CheckpointWriteError` and leaves existing checkpoints as
they were.

Example::

    >>> ckpt = load_checkpoint("runs/r20/final.pt")
    >>> model = build_model_from_config(ckpt["model_config"])
    >>> model.load_state_dict(ckpt["model"])
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import torch  # noqa: F401 (the torch whose save writes checkpoints; tests patch it here)

from ..checkpoint_file import *  # noqa: F403 (the file format lives in the base layer)
from ..checkpoint_file import __all__ as _FORMAT
from ..errors import BiperError
from .run_files import clean_temp_files

__all__ = [
    *_FORMAT,
    "list_checkpoints",
    "latest_checkpoint",
    "checkpoint_name",
    "find_resume_point",
    "stage_final_state",
    "prune_rolling",
]

_NAME = re.compile(r"^(?:ckpt|stage(\d+)-final)-(\d{9})\.pt$")


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, bool, Path]]:
    """``(global_step, is_stage_final, path)`` of the checkpoint files in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(2)), m.group(1) is not None, p))
    return sorted(found)


def latest_checkpoint(folder: str | os.PathLike, *, report=None) -> tuple[Path, dict] | None:
    """The newest checkpoint of ``folder`` that loads and verifies, or None.

    Corrupt or truncated files are skipped, newest first; ``report(message)`` is called for
    each one skipped (e.g. to print "falling back to the previous checkpoint").
    """
    for _, _, path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as err:
            if report is not None:
                report(f"{err}; falling back to the previous checkpoint")
    return None


def checkpoint_name(global_step: int, stage_final: int | None = None) -> str:
    """File name of a rolling checkpoint, or of the final checkpoint of stage ``stage_final``."""
    if stage_final is None:
        return f"ckpt-{global_step:09d}.pt"
    return f"stage{stage_final + 1}-final-{global_step:09d}.pt"


def find_resume_point(out: Path, resume: bool, *, report=None) -> tuple[Path, dict] | None:
    """Where a run in ``out`` starts: None for a fresh run, else the newest good checkpoint
    (with ``resume``). A fresh run refuses a folder that already holds one."""
    folder = out / "checkpoints"
    if out.exists() and not out.is_dir():
        raise BiperError(f"--out {out} is a file; give a folder for the run")
    existing = list_checkpoints(folder)
    if not resume:
        if existing or (out / "summary.json").exists():
            raise BiperError(f"{out} already holds a run; pass --resume to continue it or "
                             f"choose another --out")
        return None
    clean_temp_files(out)
    found = latest_checkpoint(folder, report=report)
    if found is None and existing:
        raise BiperError(f"every checkpoint in {folder} is unreadable; move them away to start over")
    if found is None and report is not None:
        report(f"no checkpoint in {folder}; starting the run from the beginning")
    return found


def stage_final_state(folder: Path, index: int) -> dict:
    """The weights of the final checkpoint of stage ``index`` (0-based) in ``folder``."""
    finals = [p for _, final, p in list_checkpoints(folder)
              if final and p.name.startswith(f"stage{index + 1}-final-")]
    if not finals:
        raise BiperError(f"the final checkpoint of stage {index + 1} is missing from {folder}")
    return load_checkpoint(finals[-1])["model"]


def prune_rolling(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` rolling checkpoints of ``folder`` (stage-final ones stay)."""
    rolling = [p for _, final, p in list_checkpoints(folder) if not final]
    for old in rolling[: max(len(rolling) - keep, 0)]:
        with contextlib.suppress(OSError):
            old.unlink()
