"""CIFAR-10 in the official python format (``cifar-10-python.tar.gz``).

The archive (170 MB, md5 ``c58f30108f718f92721af3b95e74349a``) holds ``cifar-10-batches-py/``
with ``data_batch_1`` .. ``data_batch_5`` (train, 10,000 images each), ``test_batch`` and
``batches.meta``. Each batch is a pickled dict: ``b'data'`` uint8 (N, 3072) in channel-major
order (1024 red, 1024 green, 1024 blue values, each row-major 32x32) and ``b'labels'`` (N ints
in 0..9). Batches are read with :func:`biper.data.safe_pickle.safe_load`, which refuses any
global other than plain numpy array reconstruction, so a tampered archive cannot run code.

:func:`download_cifar10` streams the archive to ``<root>/cifar-10-python.tar.gz.part``,
verifies its md5 and only then renames it. Archives found on disk are checked structurally
(shapes, dtypes, label range) instead, so re-packed or truncated copies fail with a clear error.

Reference: A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009,
https://www.cs.toronto.edu/~kriz/cifar.html

Example::

    >>> images, labels, classes = read_cifar10("data/cifar-10-python.tar.gz", "test")
    >>> images.shape, images.dtype          # (10000, 3, 32, 32) uint8
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from biper.data.dataset import CIFAR10_CLASSES
from biper.data.progress import Progress
from biper.data.safe_pickle import safe_load
from biper.errors import BiperError
from biper.files import atomic_path

__all__ = ["CIFAR10_URL", "CIFAR10_MD5", "ARCHIVE_NAME", "FOLDER_NAME",
           "download_cifar10", "md5_file", "read_cifar10"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
SPLIT_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def md5_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex md5 of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_cifar10(root: str | os.PathLike, *, url: str | None = None, md5: str | None = None,
                     progress: bool = True, opener: Callable | None = None,
                     timeout: float = 60.0) -> Path:
    """Download the official archive into ``root`` and verify its md5; returns its path.

    ``url`` and ``md5`` default to :data:`CIFAR10_URL` and :data:`CIFAR10_MD5`. An existing file
    with the right md5 is reused. On a checksum mismatch the partial file is deleted and
    ``BiperError`` reports both digests. ``opener`` (default ``urllib.request.urlopen``) may be
    replaced, e.g. in tests; ``file://`` URLs work too.
    """
    url = CIFAR10_URL if url is None else url
    md5 = CIFAR10_MD5 if md5 is None else md5
    if opener is None:
        import urllib.request
        opener = urllib.request.urlopen
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / ARCHIVE_NAME
    if target.is_file() and md5_file(target) == md5:
        return target
    with atomic_path(target) as part:  # renamed onto target only once the md5 matches
        h = hashlib.md5()
        try:
            with opener(url, timeout=timeout) as resp, open(part, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0) if hasattr(resp, "headers") else 0
                bar = Progress(total, f"download {url}", enabled=progress, unit="MB", scale=1 / 2**20)
                while block := resp.read(1 << 20):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
                bar.close()
        except OSError as err:
            raise BiperError(f"cannot download {url} to {root}: {err}; place {ARCHIVE_NAME} in "
                             f"{root} by hand (md5 {md5})") from None
        if h.hexdigest() != md5:
            raise BiperError(f"checksum mismatch for {url}: md5 {h.hexdigest()}, expected {md5}; "
                             f"the download was deleted")
    return target


def read_cifar10(source: str | os.PathLike, split: str
                 ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read one split from the archive or the extracted folder.

    Returns ``images`` uint8 (N, 3, 32, 32), ``labels`` int64 (N,) and the class names.
    """
    source = Path(source)
    if split not in SPLIT_BATCHES:
        raise BiperError(f"split must be 'train' or 'test', got {split!r}")
    names = SPLIT_BATCHES[split]
    if source.is_dir():
        blobs = {}
        for name in names + ["batches.meta"]:
            p = source / name
            if p.is_file():
                blobs[name] = (p.read_bytes(), str(p))
    elif source.is_file():
        blobs = _read_from_tar(source, names)
    else:
        raise BiperError(f"CIFAR-10 source {source} does not exist (expected {ARCHIVE_NAME} or "
                         f"a {FOLDER_NAME} folder)")
    missing = [n for n in names if n not in blobs]
    if missing:
        raise BiperError(f"{source} is missing CIFAR-10 batch file(s) {', '.join(missing)} "
                         f"(a complete archive has {', '.join(SPLIT_BATCHES['train'])}, test_batch)")
    images, labels = [], []
    for name in names:
        data, where = blobs[name]
        x, y = _parse_batch(safe_load(data, where), where)
        images.append(x)
        labels.append(y)
    classes = list(CIFAR10_CLASSES)
    if "batches.meta" in blobs:
        data, where = blobs["batches.meta"]
        meta = safe_load(data, where)
        meta = meta if isinstance(meta, dict) else {}
        names_meta = meta.get(b"label_names", meta.get("label_names"))
        if isinstance(names_meta, list) and len(names_meta) == 10:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names_meta]
    return np.concatenate(images), np.concatenate(labels), classes


def _read_from_tar(path: Path, names: list[str]) -> dict[str, tuple[bytes, str]]:
    wanted = set(names) | {"batches.meta"}
    out: dict[str, tuple[bytes, str]] = {}
    try:
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted and base not in out:
                    out[base] = (tf.extractfile(member).read(), f"{path}:{member.name}")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise BiperError(f"cannot read CIFAR-10 archive {path}: {err} (delete it and download "
                         f"again; md5 should be {CIFAR10_MD5})") from None
    return out


def _parse_batch(batch, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(batch, dict):
        raise BiperError(f"{where} is not a CIFAR-10 batch: expected a dict, got {type(batch).__name__}")
    batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise BiperError(f"{where}: 'data' must be a uint8 array (N, 3072), got {desc}")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise BiperError(f"{where}: 'labels' must be {data.shape[0]} integers in 0..9")
    return data.reshape(-1, 3, 32, 32), labels
