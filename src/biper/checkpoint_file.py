"""The checkpoint file: SHA-256 digests, atomic save, and the one checksummed loader.

A checkpoint is one ``torch.save`` file holding a plain dict (tensors, numbers, strings, lists,
dicts) with ``format: "biper-checkpoint"``, ``format_version``, ``version``, ``torch_version``
and ``checksum`` (`state_digest` over every other key). `load_checkpoint` reads it with
``torch.load(weights_only=True)`` on CPU, so a file whose unpickling would run code is refused,
and verifies the checksum. `read_checkpoint` also accepts the dicts older tools saved (a plain
``state_dict`` or ``{"model": state_dict, ...}`` without the format keys), verifying the biper
ones. Writes go through `biper.files.atomic_write`: a reader sees the old file or the new one.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from .errors import BiperError
from .files import FileWriteError, atomic_write

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointWriteError",
    "state_digest",
    "weights_digest",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "load_state_file",
]

FORMAT = "biper-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(BiperError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, refused or foreign."""


class CheckpointWriteError(FileWriteError):
    """A checkpoint (or run file) could not be written; existing files were left untouched."""


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


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Add ``format``, ``version`` and ``checksum`` to ``payload`` and write it atomically."""
    from .version import __version__

    body = {k: v for k, v in payload.items() if k != "checksum"}
    body.update(format=FORMAT, format_version=FORMAT_VERSION, version=__version__,
                torch_version=str(torch.__version__))
    body["checksum"] = state_digest(body)
    return atomic_write(path, writer=lambda f: torch.save(body, f), error=CheckpointWriteError)


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


def _verified(path: Path, ckpt: Any, checksum: bool = True) -> dict[str, Any]:
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a biper checkpoint (no format: {FORMAT!r} key)")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {ckpt.get('format_version')!r}; "
                              f"this biper reads version {FORMAT_VERSION}")
    if not checksum:
        return ckpt
    stored = ckpt.get("checksum")
    actual = state_digest({k: v for k, v in ckpt.items() if k != "checksum"})
    if stored != actual:
        raise CheckpointError(f"checkpoint {path} is corrupt: checksum mismatch (stored "
                              f"{str(stored)[:12]}..., computed {actual[:12]}...)")
    return ckpt


def load_checkpoint(path: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """Load a biper checkpoint on CPU with ``weights_only=True`` and verify its checksum.

    Raises `CheckpointError` for a missing, truncated, corrupt or code-carrying file, or a file
    that is not a biper checkpoint.
    """
    path = Path(path)
    return _verified(path, _torch_load(path), checksum=verify)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Any weights file as a dict: a biper checkpoint (checksum verified) or, as saved by older
    tools, a plain ``state_dict`` or ``{"model": state_dict, ...}`` dict (weights-only load)."""
    path = Path(path)
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return _verified(path, obj)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds neither a biper checkpoint nor a state_dict "
                              f"(a {type(obj).__name__})")
    return obj


def load_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Model weights from a biper checkpoint or from a plain ``state_dict`` file (weights only)."""
    obj = read_checkpoint(path)
    if obj.get("format") == FORMAT:
        return obj["model"]
    if isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{path} holds neither a biper checkpoint nor a state_dict")
    return obj
