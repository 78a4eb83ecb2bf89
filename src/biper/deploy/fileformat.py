"""The packed-model file: a versioned container of raw tensors and a JSON header, no pickle.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic  b"BIPERPK\\x00"
    8       4     format version (uint32), currently 1
    12      4     reserved, 0
    16      8     header length H in bytes (uint64)
    24      H     header: UTF-8 JSON object
    ...           zero padding to a multiple of 64
    D       ...   data: raw little-endian tensor buffers, each at a 64-byte aligned offset

The header holds ``"tensors": {name: {"dtype", "shape", "offset", "nbytes"}}`` (offsets relative
to D) next to free-form metadata (model config, layer structure, library version). Reading
parses JSON and copies bytes into tensors of whitelisted dtypes; it never imports, evaluates or
unpickles anything, and it checks every size and offset against the file before using it.

Example::

    >>> import os, tempfile, torch
    >>> from biper.deploy.fileformat import read_file, write_file
    >>> path = os.path.join(tempfile.mkdtemp(), "m.biper")
    >>> size = write_file(path, {"w": torch.arange(3)}, {"note": "hi"})
    >>> meta, tensors = read_file(path)
    >>> meta["note"], tensors["w"].tolist()
    ('hi', [0, 1, 2])
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from pathlib import Path
from typing import Any

import torch

from ..errors import BiperError
from ..files import atomic_write

__all__ = ["MAGIC", "FORMAT_VERSION", "DTYPES", "write_file", "read_file", "is_packed_file"]

MAGIC = b"BIPERPK\x00"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIIQ")  # magic, version, reserved, header length
_ALIGN = 64
MAX_HEADER = 64 << 20  # 64 MiB of JSON is far beyond any real model
DTYPES = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32,
    "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}
_NAMES = {v: k for k, v in DTYPES.items()}


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _little_endian() -> None:
    if sys.byteorder != "little":
        raise BiperError("packed model files are little-endian; this host is big-endian")


def write_file(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> int:
    """Write ``tensors`` and the JSON-able ``meta`` atomically; returns the file size in bytes."""
    _little_endian()
    if "tensors" in meta:
        raise BiperError("meta must not contain the reserved key 'tensors'")
    table, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or t.dtype not in _NAMES:
            raise BiperError(f"tensor {name!r} has unsupported type/dtype; allowed: {', '.join(DTYPES)}")
        data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        table[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "offset": offset,
                       "nbytes": len(data)}
        blobs.append((offset, data))
        offset = _align(offset + len(data))
    try:
        header = json.dumps({**meta, "tensors": table}, sort_keys=True, allow_nan=False,
                            separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise BiperError(f"model metadata is not JSON-serialisable: {exc}") from None
    start = _align(_PREFIX.size + len(header))
    path = Path(path)

    def write(f) -> None:
        f.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(header)))
        f.write(header)
        f.write(b"\0" * (start - _PREFIX.size - len(header)))
        for off, data in blobs:
            f.write(b"\0" * (start + off - f.tell()))
            f.write(data)

    atomic_write(path, writer=write)
    return path.stat().st_size


def is_packed_file(path: str | os.PathLike) -> bool:
    """True when ``path`` starts with the packed-model magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _bad(path, why: str) -> BiperError:
    return BiperError(f"{path}: not a valid biper packed model ({why})")


def read_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(meta, tensors) of a packed-model file; raises `BiperError` on anything malformed."""
    _little_endian()
    try:
        buf = Path(path).read_bytes()
    except OSError as exc:
        raise BiperError(f"cannot read packed model {path}: {exc.strerror or exc}") from None
    if len(buf) < _PREFIX.size or buf[: len(MAGIC)] != MAGIC:
        raise _bad(path, "wrong magic bytes; pickles and torch.save files are refused")
    _, version, _, hlen = _PREFIX.unpack_from(buf)
    if version != FORMAT_VERSION:
        raise _bad(path, f"format version {version}, this biper reads version {FORMAT_VERSION}")
    if hlen > MAX_HEADER or _PREFIX.size + hlen > len(buf):
        raise _bad(path, f"header length {hlen} exceeds the file")
    try:
        header = json.loads(buf[_PREFIX.size:_PREFIX.size + hlen].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(path, f"header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), dict):
        raise _bad(path, "header has no tensor table")
    start = _align(_PREFIX.size + hlen)
    size = len(buf) - start
    tensors = {}
    for name, entry in header.pop("tensors").items():
        if not isinstance(entry, dict) or entry.get("dtype") not in DTYPES:
            raise _bad(path, f"tensor {name!r} has dtype {entry.get('dtype') if isinstance(entry, dict) else entry!r}; allowed: {', '.join(DTYPES)}")
        shape, off, nbytes = entry.get("shape"), entry.get("offset"), entry.get("nbytes")
        ints = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0  # noqa: E731
        if not (isinstance(shape, list) and all(ints(s) for s in shape) and ints(off) and ints(nbytes)):
            raise _bad(path, f"tensor {name!r} has a malformed shape/offset/nbytes")
        dtype = DTYPES[entry["dtype"]]
        if math.prod(shape) * dtype.itemsize != nbytes or off + nbytes > size:
            raise _bad(path, f"tensor {name!r} ({entry['dtype']} {shape}) does not fit the data section")
        data = bytearray(buf[start + off:start + off + nbytes])
        t = torch.frombuffer(data, dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)
        tensors[name] = t.view(dtype).reshape(shape)
    return header, tensors
