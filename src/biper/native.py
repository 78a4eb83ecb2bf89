"""Native helpers: C libraries compiled on first use and called through ctypes, and allocator tuning.

biper ships two small C files, each built once per (source, compiler, flags) with the system C
compiler into a per-user cache and loaded with ctypes:

* ``deploy/csrc/bitkernels.c``: XNOR-popcount inference (`biper.deploy.kernels`);
* ``quantizers/csrc/fused.c``: one-pass training kernels for the activation quantizers
  (`biper.quantizers.fused`).

Flags: ``-O3 -fPIC -shared -ffp-contract=off -fopenmp`` (never ``-march=native``: the cache may
be shared by machines; per-function ``target`` attributes and run-time dispatch pick the ISA),
then the same without OpenMP, then without AVX-512. The libraries link the OpenMP runtime that
torch already loaded, so they share its thread pool. When no compiler is found, the build fails
or ``BIPER_DISABLE_KERNELS=1`` is set, `NativeLibrary.load` returns None, the callers use their
pure-PyTorch path and one line says why. ``BIPER_CACHE_DIR`` moves the cache.

`tune_allocator` keeps glibc from returning large freed blocks to the kernel, so that the large
activations of a CPU training step reuse heap pages instead of faulting in fresh ``mmap`` ones
(docs/training.md has the measurements).

Example::

    >>> from biper.native import cache_dir
    >>> cache_dir().name
    'kernels'
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from .files import FileWriteError, atomic_path

__all__ = ["NativeLibrary", "cache_dir", "compiler", "writable_cache", "tune_allocator", "FLAG_SETS"]

log = logging.getLogger("biper")
FLAG_SETS = (
    ["-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fopenmp"],
    ["-O3", "-fPIC", "-shared", "-ffp-contract=off"],  # compilers without OpenMP (Apple clang)
    ["-O3", "-fPIC", "-shared", "-ffp-contract=off", "-DBIPER_NO_AVX512"],  # old assemblers
)


def source_bytes(path: Path) -> bytes:
    """The C file and, in order, the local files it includes (``#include "x.h"`` beside it, one
    level deep): what the build cache key covers."""
    data = path.read_bytes()
    parts = [data]
    for name in re.findall(rb'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"', data, flags=re.M):
        included = path.parent / name.decode()
        if included.is_file():
            parts.append(included.read_bytes())
    return b"\0".join(parts)


def cache_dir() -> Path:
    """Per-user directory holding compiled kernels (``BIPER_CACHE_DIR`` overrides)."""
    if os.environ.get("BIPER_CACHE_DIR"):
        return Path(os.environ["BIPER_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "biper" / "kernels"


def compiler() -> tuple[str, str] | None:
    """(path, first line of ``--version``) of the first of $CC, cc, gcc, clang that runs."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        path = shutil.which(name) if name else None
        if path:
            try:
                out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.SubprocessError):
                continue
            return path, (out.stdout.splitlines() or [""])[0]
    return None


def writable_cache() -> Path:
    """`cache_dir`, or a per-user folder in the temporary directory when it is not writable."""
    user = os.getuid() if hasattr(os, "getuid") else "user"
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / f"biper-kernels-{user}"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    raise RuntimeError(f"no writable cache directory (tried {cache_dir()} and the temporary directory)")



class _BuildFailed(Exception):
    """The compiler ran and reported an error (its stderr is kept by the caller)."""

class NativeLibrary:
    """One C source built on first use; ``load()`` gives the ctypes library or None (fallback).

    ``declare(lib)`` sets argument and result types; ``abi`` must equal what the library's
    ``<prefix>_abi()`` returns (``abi_symbol``). ``state`` holds ``lib``, ``tried``, ``reason``,
    ``path`` and ``noticed`` (tests may force the fallback through it).
    """

    def __init__(self, source: Path, abi: int, abi_symbol: str, declare: Callable[[ctypes.CDLL], None],
                 notice: str, logger: logging.Logger = log,
                 on_load: Callable[[ctypes.CDLL], None] | None = None) -> None:
        self.source, self.abi, self.abi_symbol = source, abi, abi_symbol
        self.declare, self.notice, self.logger, self.on_load = declare, notice, logger, on_load
        self.compiler: Callable[[], tuple[str, str] | None] = compiler
        self.state: dict = {}
        self.reset()

    def reset(self) -> None:
        """Forget the loaded library so that the next `load` re-reads the environment."""
        self.state.update(lib=None, tried=False, reason="", path=None, noticed=False)

    def build(self) -> Path:
        """Compile the source into the cache (once per source/compiler/flags); the .so path."""
        found = self.compiler()
        if found is None:
            raise RuntimeError("no C compiler found (tried $CC, cc, gcc, clang)")
        cc, version = found
        source = source_bytes(self.source)
        folder = writable_cache()
        errors = []
        for flags in FLAG_SETS:
            key = hashlib.sha256(
                source + version.encode() + " ".join(flags).encode() + platform.machine().encode()
            ).hexdigest()[:20]
            target = folder / f"{self.source.stem}-{key}.so"
            if target.exists():
                return target
            try:
                with atomic_path(target) as tmp:  # concurrent builders race harmlessly
                    try:
                        res = subprocess.run([cc, *flags, str(self.source), "-o", str(tmp)],
                                             capture_output=True, text=True, timeout=300)
                    except (OSError, subprocess.SubprocessError) as exc:
                        raise _BuildFailed(str(exc)) from None
                    if res.returncode != 0:
                        raise _BuildFailed((res.stderr.strip().splitlines() or ["failed"])[-1])
                return target
            except (_BuildFailed, FileWriteError) as exc:
                errors.append(str(exc))
        raise RuntimeError(f"compiling {self.source.name} failed: {errors[0]}")

    def load(self) -> ctypes.CDLL | None:
        """The loaded library, or None (pure-PyTorch path) with the reason logged once."""
        state = self.state
        if state["tried"]:
            return state["lib"]
        state["tried"] = True
        if os.environ.get("BIPER_DISABLE_KERNELS", "").strip() not in ("", "0"):
            state["reason"] = "BIPER_DISABLE_KERNELS is set"
        else:
            try:
                path = self.build()
                lib = ctypes.CDLL(str(path))
                self.declare(lib)
                getattr(lib, self.abi_symbol).restype = ctypes.c_int
                found = getattr(lib, self.abi_symbol)()
                if found != self.abi:
                    raise RuntimeError(f"kernel ABI {found} != expected {self.abi}")
                state["lib"], state["path"] = lib, path
                if self.on_load is not None:
                    self.on_load(lib)
            except Exception as exc:  # any failure means: use the pure-PyTorch path
                state["lib"] = None
                state["reason"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if state["lib"] is None and not state["noticed"]:
            state["noticed"] = True
            self.logger.warning("biper: %s unavailable (%s); using the pure-PyTorch path", self.notice,
                                state["reason"])
        return state["lib"]


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_allocator: dict = {"tuned": None}


def tune_allocator() -> bool:
    """Keep freed blocks up to 32 MiB in glibc's heap instead of unmapping them (once per process).

    Sets ``M_MMAP_THRESHOLD`` to 32 MiB (glibc's maximum) and ``M_TRIM_THRESHOLD`` to 1 GiB with
    ``mallopt``. Returns whether it applied: False on non-glibc systems or when
    ``BIPER_MALLOC_TUNING=0``. Memory stays with the process for reuse (bounded by its peak).
    """
    if _allocator["tuned"] is not None:
        return _allocator["tuned"]
    tuned = False
    if os.environ.get("BIPER_MALLOC_TUNING", "1").strip() != "0" and platform.system() == "Linux":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            tuned = bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
        except (OSError, AttributeError):
            tuned = False
    _allocator["tuned"] = tuned
    return tuned
