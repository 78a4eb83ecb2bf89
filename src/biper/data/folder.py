"""Class-folder image datasets, from a directory or straight from a ``.tar`` file.

Layout (the torchvision ``ImageFolder`` convention)::

    <root>/<class>/<...>/<image>.jpg        one sub-folder per class, images at any depth
    <root>/{train,test}/<class>/...         a root holding splits ("val", "valid" and
                                            "validation" also answer split "test")

Classes are the sorted sub-folder names (label = position); examples are ordered by class, then
by path. Hidden files and folders (``.name``, ``__MACOSX``) are ignored; allowed extensions are
:data:`biper.data.images.IMAGE_EXTENSIONS`. A tar (plain or compressed) is read without
extraction: its common leading folder is skipped, so ``cifar10-jpeg.tar`` with
``cifar10-jpeg/train/<class>/NNNN.jpg`` works for both splits. Members are decoded in archive
order, which keeps reads sequential even for ``.tar.gz``.

Problems raise ``BiperError`` naming the path and what is allowed: a missing or empty folder, a
folder with images but no class sub-folders, a class folder with zero images, an unreadable image.

Example::

    >>> images, labels, classes, skipped = read_folder("data/cifar10-jpeg.tar", "test")
    >>> images.shape                         # (10000, 3, 32, 32) uint8
"""

from __future__ import annotations

import functools
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biper.data.images import IMAGE_EXTENSIONS, decode_many, is_image_name
from biper.errors import BiperError

__all__ = ["SPLIT_DIRS", "FolderIndex", "index_folder", "read_folder"]

SPLIT_DIRS = {"train": ("train",), "test": ("test", "val", "valid", "validation")}
_ALL_SPLIT_DIRS = {d for names in SPLIT_DIRS.values() for d in names}
_LAYOUT = "<root>/<class>/<image> or <root>/{train,test}/<class>/<image>"
_EXTS = ", ".join(IMAGE_EXTENSIONS)


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _pick_split(children: set[str], split: str, where: str) -> str | None:
    """Name of the split sub-folder among ``children``, or None when ``where`` is the split root."""
    for name in SPLIT_DIRS[split]:
        if name in children:
            return name
    others = sorted(children & _ALL_SPLIT_DIRS)
    if others:
        raise BiperError(f"no '{split}' folder in {where} (found {', '.join(others)}; "
                         f"allowed for {split}: {', '.join(SPLIT_DIRS[split])})")
    return None


@dataclass
class FolderIndex:
    """The images of one split: ``entries`` are ``(where, read_bytes, decode_key)`` in dataset
    order (``decode_key`` orders reads: archive offset for tars), ``labels`` index ``classes``.
    ``close()`` releases an open tar."""

    entries: list[tuple[str, Callable[[], bytes], int]]
    labels: list[int]
    classes: list[str]
    root: str
    close: Callable[[], None] = field(default=lambda: None)


def index_folder(path: str | os.PathLike, split: str) -> FolderIndex:
    """Find the split root, the classes and every image file under ``path`` (folder or tar)."""
    path = Path(path)
    if split not in SPLIT_DIRS:
        raise BiperError(f"split must be one of train, test, got {split!r}")
    if not path.exists():
        raise BiperError(f"data folder {path} does not exist (expected {_LAYOUT}, or a .tar of it)")
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise BiperError(f"{path} is a file but not a tar archive (expected a folder {_LAYOUT} "
                             f"or a .tar of it)")
        return _index_tar(path, split)
    return _index_dir(path, split)


def _index_dir(root: Path, split: str):
    children = {p.name for p in root.iterdir() if p.is_dir() and not _hidden(p.name)}
    sub = _pick_split(children, split, str(root))
    if sub is not None:
        root = root / sub
        children = {p.name for p in root.iterdir() if p.is_dir() and not _hidden(p.name)}
    if not children:
        if any(is_image_name(p.name) for p in root.iterdir() if p.is_file()):
            raise BiperError(f"{root} holds images but no class sub-folders: put each class in its "
                             f"own folder, {root}/<class>/<image>")
        raise BiperError(f"data folder {root} is empty: expected {_LAYOUT} with image files "
                         f"({_EXTS})")
    classes = sorted(children)
    entries, labels = [], []
    for label, cls in enumerate(classes):
        files = []
        for dirpath, dirnames, filenames in os.walk(root / cls):
            dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
            files += [os.path.join(dirpath, f) for f in filenames if is_image_name(f)]
        if not files:
            raise BiperError(f"class folder {root / cls} has no images (allowed extensions: {_EXTS})")
        for f in sorted(files):
            entries.append((f, functools.partial(Path(f).read_bytes), len(entries)))
            labels.append(label)
    return FolderIndex(entries, labels, classes, str(root))


def _index_tar(tar_path: Path, split: str):
    try:
        tf = tarfile.open(tar_path, "r:*")
        members = tf.getmembers()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise BiperError(f"cannot read tar archive {tar_path}: {err}") from None
    try:
        return _index_members(tf, members, tar_path, split)
    except BaseException:
        tf.close()
        raise


def _index_members(tf: tarfile.TarFile, members: list, tar_path: Path, split: str) -> FolderIndex:
    files, dirs = [], set()
    for m in members:
        parts = [p for p in m.name.split("/") if p not in ("", ".")]
        if not parts or any(_hidden(p) for p in parts):
            continue
        if m.isdir():
            dirs.add(tuple(parts))
        elif m.isfile() and is_image_name(parts[-1]):
            files.append((tuple(parts), m))
            dirs.update(tuple(parts[:k]) for k in range(1, len(parts)))
    if not files:
        raise BiperError(f"tar archive {tar_path} holds no images (expected {_LAYOUT} with "
                         f"extensions {_EXTS})")
    prefix = os.path.commonprefix([p[:-1] for p, _ in files])
    if all(len(p) == len(prefix) + 1 for p, _ in files):                # files sit in the prefix
        prefix = prefix[:-1]
    prefix = tuple(prefix)

    def children(of: tuple) -> set[str]:
        return {d[len(of)] for d in dirs if len(d) == len(of) + 1 and d[:len(of)] == of}

    where = f"{tar_path}:{'/'.join(prefix)}" if prefix else str(tar_path)
    sub = _pick_split(children(prefix), split, where)
    if sub is not None:
        prefix = prefix + (sub,)
        where = f"{tar_path}:{'/'.join(prefix)}"
    classes = sorted(children(prefix))
    if not classes:
        raise BiperError(f"{where} holds images but no class sub-folders (expected {_LAYOUT})")
    index = {c: i for i, c in enumerate(classes)}
    chosen = []
    for parts, m in files:
        if parts[:len(prefix)] != prefix:
            continue
        if len(parts) == len(prefix) + 1:
            raise BiperError(f"image {tar_path}:{m.name} is not inside a class folder "
                             f"(expected {_LAYOUT})")
        chosen.append((index[parts[len(prefix)]], "/".join(parts), m))
    counts = np.bincount([c for c, _, _ in chosen], minlength=len(classes))
    for cls, count in zip(classes, counts):
        if count == 0:
            raise BiperError(f"class folder {where}/{cls} has no images (allowed extensions: {_EXTS})")
    chosen.sort(key=lambda t: (t[0], t[1]))

    def reader(member):
        return tf.extractfile(member).read()

    entries = [(f"{tar_path}:{m.name}", functools.partial(reader, m), m.offset)
               for _, _, m in chosen]
    return FolderIndex(entries, [c for c, _, _ in chosen], classes, where, tf.close)


def read_folder(path: str | os.PathLike, split: str, *, skip_corrupt: bool = False,
                progress: bool = True):
    """Decode a class-folder split into arrays.

    Returns ``images`` uint8 (N, 3, H, W), ``labels`` int64 (N,), ``classes`` and the skipped
    paths. Raises ``BiperError`` if skipping leaves a class without images.
    """
    index = index_folder(path, split)
    entries, classes, root = index.entries, index.classes, index.root
    decode_order = np.argsort(np.array([e[2] for e in entries], dtype=np.int64), kind="stable")
    sources = [(entries[i][0], entries[i][1]) for i in decode_order]
    try:
        images, kept, skipped = decode_many(sources, skip_corrupt=skip_corrupt, progress=progress,
                                            desc=f"decode {root} ({len(sources)} images)")
    finally:
        index.close()
    positions = decode_order[kept]                                      # dataset positions
    perm = np.argsort(positions, kind="stable")
    images = np.ascontiguousarray(images[perm].transpose(0, 3, 1, 2))   # (N, 3, H, W)
    labels = np.asarray(index.labels, dtype=np.int64)[positions[perm]]
    counts = np.bincount(labels, minlength=len(classes))
    for cls, count in zip(classes, counts):
        if count == 0:
            raise BiperError(f"class folder {root}/{cls} has no readable images after skipping "
                             f"{len(skipped)} corrupt file(s)")
    return images, labels, classes, skipped
