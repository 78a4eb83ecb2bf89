"""Files of a run folder besides checkpoints: the resolved config, ``final.pt``, cleanup.

``config.yaml`` is the resolved run config (recipe + overrides + data-derived class count); it
is itself a valid recipe, so ``biper train runs/x/config.yaml`` repeats the run. On ``--resume``
the config must match the one stored in the checkpoint, apart from where the data lives and how
many threads run (`RESUME_MAY_DIFFER`).

Example::

    >>> check_resume_config({"seed": 0}, {"seed": 1}, "ckpt-000000010.pt")
    Traceback (most recent call last):
    ...
    biper.errors.BiperError: --resume: the config differs from the one in ckpt-000000010.pt at seed (run has 0, now 1); resume with the same recipe and overrides, or use another --out
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from ..errors import BiperError
from ..files import atomic_path, atomic_write, is_temp_name
from ..checkpoint_file import CheckpointWriteError

__all__ = ["write_config", "start_run_folder", "check_resume_config", "clean_temp_files", "link_final",
           "RESUME_MAY_DIFFER"]

RESUME_MAY_DIFFER = ("data.data_dir", "data.cache_dir", "threads", "description")


def write_config(out: Path, config) -> Path:
    import yaml

    text = yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
    return atomic_write(Path(out) / "config.yaml", text.encode(), error=CheckpointWriteError)


def _diff(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in list(a) + [k for k in b if k not in a]:
            out += _diff(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}.{i}")]
    return [] if a == b else [(path, a, b)]


def check_resume_config(saved: dict, current: dict, source) -> None:
    """Raise when ``current`` differs from the checkpoint's ``saved`` config (allowed keys aside)."""
    diffs = [d for d in _diff(saved, current) if d[0] not in RESUME_MAY_DIFFER]
    if diffs:
        key, was, now = diffs[0]
        more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
        raise BiperError(f"--resume: the config differs from the one in {Path(source).name} at {key} "
                         f"(run has {was!r}, now {now!r}){more}; resume with the same recipe and "
                         f"overrides, or use another --out")


def clean_temp_files(out: Path) -> None:
    """Remove temporary files left by a writer that was killed mid-write."""
    for folder in (Path(out), Path(out) / "checkpoints"):
        if folder.is_dir():
            for p in folder.iterdir():
                if is_temp_name(p.name) and not is_temp_name(p.name, pid=os.getpid()):
                    with contextlib.suppress(OSError):
                        p.unlink()


def link_final(source: Path | None, target: Path) -> None:
    """Make ``target`` (``final.pt``) the same file as the last checkpoint: a hard link when
    the filesystem allows it, else a copy; replaced atomically either way."""
    if source is None:
        raise BiperError("no checkpoint was written, so there is no final model to publish")
    try:
        with atomic_path(target, error=CheckpointWriteError) as tmp:
            os.link(source, tmp)
    except CheckpointWriteError:  # no hard links here: copy
        atomic_write(target, Path(source).read_bytes(), error=CheckpointWriteError)


def start_run_folder(out: Path, config) -> None:
    """Create ``out/checkpoints`` and write the resolved ``config.yaml`` of a fresh run."""
    folder = Path(out) / "checkpoints"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointWriteError(f"cannot create the run folder {folder}: {err.strerror or err}") from None
    write_config(out, config)
