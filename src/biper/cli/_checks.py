"""Checks shared by the commands before they do slow work: can an output file be written?"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import BiperError

__all__ = ["writable_file"]


def writable_file(path: str | os.PathLike, what: str = "output") -> Path:
    """``path`` if a file can be created there; else a `BiperError` naming the problem (missing
    or non-folder parent, a folder in the way, no permission)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise BiperError(f"{what} {path} is a folder; give a file name")
    if not parent.exists():
        raise BiperError(f"{what} folder {parent} does not exist")
    if not parent.is_dir():
        raise BiperError(f"{what} {path}: {parent} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BiperError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise BiperError(f"cannot write {what} {path}: the file is read-only")
    return path
