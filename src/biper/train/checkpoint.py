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

import hashlib
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import BiperError
from ..files import FileWriteError, atomic_write

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointWriteError",
    "state_digest",
    "weights_digest",
    "save_checkpoint",
    "load_checkpoint",
    "load_state_file",
    "list_checkpoints",
    "latest_checkpoint",
]

FORMAT = "biper-checkpoint"
FORMAT_VERSION = 1
_NAME = re.compile(r"^(?:ckpt|stage(\d+)-final)-(\d{9})\.pt$")


class CheckpointError(BiperError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, refused or foreign."""


class CheckpointWriteError(FileWriteError):
    """A checkpoint (or run file) could not be written; existing files were left untouched."""


# -- digests -------------------------------------------------------------------------------------
def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for key in sorted(obj, key=repr):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)};".encode())
        for item in obj:
            _feed(h, item)
    elif isinstance(obj, bool) or obj is None:
        h.update(f"B{obj};".encode())
    elif isinstance(obj, int):
        h.update(f"I{obj};".encode())
    elif isinstance(obj, float):
        h.update(f"F{obj.hex()};".encode())
    elif isinstance(obj, str):
        data = obj.encode()
        h.update(f"S{len(data)};".encode() + data)
    elif isinstance(obj, torch.dtype | torch.device):
        h.update(f"O{obj};".encode())
    else:
        raise TypeError(f"cannot digest a value of type {type(obj).__name__}")


def state_digest(obj: Any) -> str:
    """SHA-256 (hex) of a nested structure of tensors and plain values; key order irrelevant."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def weights_digest(state_dict: dict[str, Any]) -> str:
    """SHA-256 of a model ``state_dict``: equal digests mean bit-identical weights and buffers."""
    return state_digest({k: v for k, v in state_dict.items()})


# -- writing -------------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Add ``format``, ``version`` and ``checksum`` to ``payload`` and write it atomically."""
    from ..version import __version__

    body = {k: v for k, v in payload.items() if k != "checksum"}
    body.update(format=FORMAT, format_version=FORMAT_VERSION, version=__version__,
                torch_version=str(torch.__version__))
    body["checksum"] = state_digest(body)
    return atomic_write(path, writer=lambda f: torch.save(body, f), error=CheckpointWriteError)


# -- reading -------------------------------------------------------------------------------------
def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        garbage = "Unsupported operand" in str(err)  # not a pickle at all: bad opcode byte
        if not garbage and ("weights only" in str(err).lower() or "weights_only" in str(err).lower()):
            detail = next((line.strip() for line in str(err).splitlines()
                           if "GLOBAL" in line or "Unsupported" in line), first)
            raise CheckpointError(f"refusing to load {path}: unpickling it would import or run code "
                                  f"that plain weights do not need ({detail}); only tensors and "
                                  f"plain values are accepted") from None
        if garbage:
            detail = next(line.strip() for line in str(err).splitlines() if "Unsupported operand" in line)
            raise CheckpointError(f"checkpoint {path} is corrupt: not a torch file ({detail})") from None
        raise CheckpointError(f"checkpoint {path} is corrupt ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({first})") from None


def load_checkpoint(path: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """Load a biper checkpoint on CPU with ``weights_only=True`` and verify its checksum.

    Raises `CheckpointError` for a missing, truncated, corrupt or code-carrying file, or a file
    that is not a biper checkpoint.
    """
    path = Path(path)
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a biper checkpoint (no format: {FORMAT!r} key)")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {ckpt.get('format_version')!r}; "
                              f"this biper reads version {FORMAT_VERSION}")
    if verify:
        stored = ckpt.get("checksum")
        actual = state_digest({k: v for k, v in ckpt.items() if k != "checksum"})
        if stored != actual:
            raise CheckpointError(f"checkpoint {path} is corrupt: checksum mismatch (stored "
                                  f"{str(stored)[:12]}..., computed {actual[:12]}...)")
    return ckpt


def load_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Model weights from a biper checkpoint or from a plain ``state_dict`` file (weights only)."""
    path = Path(path)
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return load_checkpoint(path)["model"]
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{path} holds neither a biper checkpoint nor a state_dict")
    return obj


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
