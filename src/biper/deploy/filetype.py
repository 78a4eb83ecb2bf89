"""What a model file is, from its first bytes: a packed model, a torch checkpoint, or something else.

`sniff(path)` returns ``"packed"`` (the packed-model magic), ``"torch"`` (a ``torch.save`` ZIP
archive or a legacy pickle stream: possibly a biper checkpoint) or a short description of what
the file is otherwise (``"an ONNX model"``, ``"a text file"``, ``"an empty file"``, ...), so
commands can say what they were given instead of failing inside a loader. `require_model_file`
turns that into a one-line `BiperError` for files that are neither.

Example::

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "notes.txt")
    >>> _ = open(path, "w").write("hello\\n")
    >>> sniff(path)
    'a text file'
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from ..errors import BiperError
from .fileformat import MAGIC

__all__ = ["sniff", "require_model_file"]

_SIGNATURES = (  # (leading bytes, description)
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x93NUMPY", "a NumPy array (.npy)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"\x7fELF", "an executable (ELF)"),
    (b"%PDF", "a PDF document"),
    (b"\x89HDF", "an HDF5 file"),
)


def _is_onnx(head: bytes) -> bool:
    # an ONNX ModelProto starts with field 1 (ir_version, varint) then usually field 2..8
    return len(head) >= 4 and head[0] == 0x08 and 1 <= head[1] <= 20 and head[2] in (0x12, 0x1a, 0x22, 0x28, 0x32, 0x3a, 0x42)


def sniff(path: str | os.PathLike) -> str:
    """``"packed"``, ``"torch"`` or a description of the file at ``path`` (see the module doc)."""
    path = Path(path)
    if not path.exists():
        raise BiperError(f"{path} does not exist")
    if path.is_dir():
        return "a folder"
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise BiperError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head.startswith(MAGIC):
        return "packed"
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "torch"  # a truncated torch.save archive: the checkpoint loader says so
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        if any(n.endswith(".npy") for n in names):
            return "a NumPy archive (.npz)"
        return "a ZIP archive without torch data"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return "torch"  # a pickle stream (legacy torch.save); the loader refuses unsafe ones
    for sig, what in _SIGNATURES:
        if head.startswith(sig):
            return what
    if _is_onnx(head):
        return "an ONNX model"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
        if len(head) == 512:  # a multi-byte character may be cut at the end
            try:
                text = head[:-3].decode("utf-8")
            except UnicodeDecodeError:
                pass
    if text is not None and "\x00" not in text:
        return "a text file"
    return f"an unrecognised binary file (starts with {head[:8].hex(' ')})"


def require_model_file(path: str | os.PathLike, allowed: tuple[str, ...] = ("packed", "torch")) -> str:
    """`sniff` ``path`` and return ``"packed"`` or ``"torch"`` if allowed; otherwise raise a
    `BiperError` saying what the file is."""
    kind = sniff(path)
    if kind in allowed:
        return kind
    wanted = " or ".join({"packed": "a packed model (.biper)", "torch": "a biper checkpoint (.pt)"}[a]
                         for a in allowed)
    what = {"packed": "a packed model (.biper)", "torch": "a torch file (a checkpoint? `biper export` packs one)"}.get(kind, kind)
    raise BiperError(f"{path} is {what}; expected {wanted}")
