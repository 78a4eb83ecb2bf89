"""The one way biper writes a file: all of it or none of it.

`atomic_write` (bytes or a ``writer(file)`` callback) and `atomic_path` (a temporary path for a
program that writes the file itself, such as a compiler) both work the same way: the data goes
to a temporary file ``.NAME.tmp-PID-N`` in the target's folder, is flushed and fsync'ed, then
renamed over the target (``os.replace``) and the folder is fsync'ed. A reader sees the old file
or the new one, never half of one. The new file gets the permissions of any file the user
creates (``0666 & ~umask``). A failure (missing or read-only folder, disk full) removes the
temporary file, leaves the target untouched and raises `FileWriteError`, a one-line
`BiperError` naming the file and the reason.

Example::

    >>> atomic_write("/no/such/folder/x.bin", b"abc")
    Traceback (most recent call last):
    ...
    biper.files.FileWriteError: could not write /no/such/folder/x.bin: the folder /no/such/folder does not exist; existing files were left untouched
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import BiperError

__all__ = ["FileWriteError", "atomic_write", "atomic_path", "temp_name", "is_temp_name"]

_COUNTER = itertools.count()
_TEMP_MARK = ".tmp-"


class FileWriteError(BiperError):
    """A file could not be written; any previous version of it was left untouched."""


def temp_name(path: Path) -> Path:
    """A temporary name in ``path``'s folder, unique within this process."""
    return path.with_name(f".{path.name}{_TEMP_MARK}{os.getpid()}-{next(_COUNTER)}")


def is_temp_name(name: str, *, pid: int | None = None) -> bool:
    """True for a name made by `temp_name` (by process ``pid`` when given)."""
    if not name.startswith(".") or _TEMP_MARK not in name:
        return False
    return pid is None or name.rsplit(_TEMP_MARK, 1)[1].split("-")[0] == str(pid)


def _reason(err: OSError, path: Path) -> str:
    if not path.parent.is_dir():
        return f"the folder {path.parent} does not exist"
    return err.strerror or str(err)


def _fsync_folder(folder: Path) -> None:
    try:  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, error: type[FileWriteError] = FileWriteError) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a normal exit it is fsync'ed and renamed onto
    ``path``, on an exception it is removed. ``error`` is the `FileWriteError` subclass raised."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise error(f"could not write {path}: {_reason(err, path)}; existing files were left "
                    f"untouched") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_folder(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes | None = None, *,
                 writer: Callable[[BinaryIO], object] | None = None,
                 error: type[FileWriteError] = FileWriteError) -> Path:
    """Write ``data`` (or whatever ``writer(file)`` writes) to ``path`` atomically; returns it."""
    path = Path(path)
    with atomic_path(path, error=error) as tmp:
        # O_EXCL: never write through a file someone else put there; 0o666 & ~umask like open().
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            if writer is not None:
                writer(f)
            else:
                f.write(data)
            f.flush()
    return path
