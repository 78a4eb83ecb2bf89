"""Decode-once cache of uint8 arrays: ``.npy`` files plus a JSON sidecar, never pickle.

An entry ``<cache_dir>/<key>`` is ``<key>.<array>.npy`` per array (read back with
``np.load(allow_pickle=False)``) and ``<key>.json``::

    {"format": 1, "source": {"path", "kind", "size", "mtime_ns", "files"},
     "arrays": {"images": {"shape", "dtype", "sha256"}, ...}, "meta": {...}}

The sidecar is written last (atomically, like every file), so it marks a complete entry. On load
the source fingerprint (size and mtime of a file; count, total size and newest mtime of a
folder's files) must match, and every array must match its recorded shape, dtype and SHA-256;
otherwise a one-line notice is printed and the caller rebuilds the entry.

The default cache folder is ``<data_dir>/.biper-cache`` when that can be created, otherwise
``$XDG_CACHE_HOME/biper`` (``~/.cache/biper``). A data folder without write permission bits is
treated as read-only even when running as root.

Example::

    >>> fp = fingerprint("data/cifar10-jpeg.tar")
    >>> save_entry(cache, "folder-test-1a2b", fp, {"images": x, "labels": y}, {"classes": c})
    >>> arrays, meta = load_entry(cache, "folder-test-1a2b", fp)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..files import FileWriteError, atomic_write
from .progress import notice

__all__ = ["CACHE_FORMAT", "default_cache_dir", "fingerprint", "load_entry", "save_entry",
           "entry_key"]

CACHE_FORMAT = 1


def _writable_dir(path: Path) -> bool:
    """Writable for us *and* not marked read-only: a folder without any write permission bit
    counts as read-only even for root, who could write there anyway."""
    try:
        return path.is_dir() and os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)
    except OSError:
        return False


def default_cache_dir(data_dir: str | os.PathLike | None) -> Path:
    """``<data_dir>/.biper-cache`` if it is (or can be made) a writable folder, else the user
    cache folder ``$XDG_CACHE_HOME/biper`` (``~/.cache/biper``)."""
    if data_dir is not None:
        base = Path(data_dir)
        base = base.parent if base.is_file() else base
        candidate = base / ".biper-cache"
        if _writable_dir(candidate):
            return candidate
        if not candidate.exists() and _writable_dir(base):
            try:
                candidate.mkdir()
                return candidate
            except OSError:
                pass
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "biper"


def entry_key(kind: str, split: str, source: str | os.PathLike) -> str:
    """Cache entry name: ``<kind>-<split>-<12 hex of the absolute source path>``."""
    digest = hashlib.sha1(str(Path(source).resolve()).encode()).hexdigest()[:12]
    return f"{kind}-{split}-{digest}"


def fingerprint(source: str | os.PathLike) -> dict:
    """Identity of the source data: size and mtime of a file, or count/size/newest mtime of
    the files under a folder (hidden ones and the cache folder excluded)."""
    path = Path(source).resolve()
    if path.is_file():
        st = path.stat()
        return {"path": str(path), "kind": "file", "size": st.st_size,
                "mtime_ns": st.st_mtime_ns, "files": 1}
    count = size = newest = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            st = os.stat(os.path.join(dirpath, name))
            count += 1
            size += st.st_size
            newest = max(newest, st.st_mtime_ns)
    return {"path": str(path), "kind": "dir", "size": size, "mtime_ns": newest, "files": count}


def _sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(arr)).cast("B")).hexdigest()


def save_entry(cache_dir: str | os.PathLike, key: str, source_fp: dict,
               arrays: dict[str, np.ndarray], meta: dict) -> bool:
    """Write an entry; returns False (after a notice) when the folder is not writable."""
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        described = {}
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            atomic_write(cache_dir / f"{key}.{name}.npy",
                         writer=lambda f, a=arr: np.save(f, a, allow_pickle=False))
            described[name] = {"shape": list(arr.shape), "dtype": arr.dtype.str,
                               "sha256": _sha256(arr)}
        sidecar = {"format": CACHE_FORMAT, "source": source_fp, "arrays": described, "meta": meta}
        text = json.dumps(sidecar, indent=1).encode()
        atomic_write(cache_dir / f"{key}.json", text)
    except (OSError, FileWriteError) as err:
        notice(f"cannot write cache in {cache_dir} ({err}); continuing without a cache")
        return False
    return True


def load_entry(cache_dir: str | os.PathLike, key: str, source_fp: dict
               ) -> tuple[dict[str, np.ndarray], dict] | None:
    """Arrays and meta of a valid entry, or None (with a notice if it was stale or corrupt)."""
    sidecar_path = Path(cache_dir) / f"{key}.json"
    if not sidecar_path.is_file():
        return None
    try:
        sidecar = json.loads(sidecar_path.read_text())
        fmt = sidecar.get("format") if isinstance(sidecar, dict) else None
        if fmt != CACHE_FORMAT:
            raise ValueError(f"unknown cache format {fmt!r}")
        if sidecar.get("source") != source_fp:
            notice(f"source {source_fp['path']} changed since cache {sidecar_path} was built; "
                   f"rebuilding")
            return None
        arrays = {}
        for name, desc in sidecar["arrays"].items():
            arr = np.load(Path(cache_dir) / f"{key}.{name}.npy", allow_pickle=False)
            if list(arr.shape) != desc["shape"] or arr.dtype.str != desc["dtype"]:
                raise ValueError(f"{name} has shape {arr.shape} {arr.dtype.str}, sidecar says "
                                 f"{desc['shape']} {desc['dtype']}")
            if _sha256(arr) != desc["sha256"]:
                raise ValueError(f"{name} fails its sha256 check")
            arrays[name] = arr
        return arrays, dict(sidecar.get("meta") or {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        notice(f"cache {sidecar_path} is corrupt ({err}); rebuilding")
        return None
