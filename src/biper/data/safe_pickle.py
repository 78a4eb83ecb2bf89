"""A restricted unpickler for the CIFAR-10 python batches.

Unpickling runs code: any ``GLOBAL``/``STACK_GLOBAL`` opcode imports a callable that ``REDUCE``
then calls, so a crafted file can run ``os.system``. The official CIFAR-10 archive is pickled
(Python 2 ``cPickle``), so biper reads it with an unpickler whose ``find_class`` resolves a fixed
allow-list and refuses everything else *before importing anything*:

- ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct`` (restricted to
  building plain ``numpy.ndarray``), ``numpy.ndarray``;
- ``numpy.dtype`` restricted to bool / integer / float / complex / byte-string kinds;
- ``_codecs.encode`` restricted to latin-1 (how Python 3 pickles ``bytes`` at protocol < 3).

Plain dict / list / tuple / str / bytes / int / float / bool / None need no globals. Object
arrays are refused, so the result holds data only.

Example::

    >>> import io, pickle
    >>> safe_load(io.BytesIO(pickle.dumps({b"labels": [1, 2]}, protocol=2)))
    {b'labels': [1, 2]}
"""

from __future__ import annotations

import codecs
import io
import pickle
from typing import BinaryIO

import numpy as np

from biper.errors import BiperError

__all__ = ["safe_load", "ALLOWED_GLOBALS"]

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

_DATA_KINDS = set("biufcS")


def _reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to rebuild array subtype {subtype!r}")
    return _np_reconstruct(np.ndarray, shape, _dtype(dtype))


def _dtype(spec, align=False, copy=False):
    dt = spec if isinstance(spec, np.dtype) else np.dtype(spec, align=bool(align), copy=bool(copy))
    if dt.kind not in _DATA_KINDS or dt.fields is not None:
        raise pickle.UnpicklingError(f"refusing numpy dtype {dt!r} (only numeric or byte strings)")
    return dt


def _encode(text, encoding="utf-8"):
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin-1")


ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed")


class _Refused(pickle.UnpicklingError):
    pass


def safe_load(fileobj: BinaryIO | bytes, where: str = "<pickle>"):
    """Unpickle data-only content (Python 2 strings come back as ``bytes``).

    Raises ``BiperError`` naming ``where`` and the refused global, or the parse error.
    """
    if isinstance(fileobj, (bytes, bytearray)):
        fileobj = io.BytesIO(fileobj)
    try:
        obj = _RestrictedUnpickler(fileobj, encoding="bytes").load()
    except _Refused as err:
        raise BiperError(f"refusing to load {where}: it references '{err}', which is not a plain "
                         f"data type (allowed: dict, list, str, bytes, int, numpy arrays)") from None
    except BiperError:
        raise
    except Exception as err:  # noqa: BLE001 - any parse failure is a bad file
        raise BiperError(f"cannot unpickle {where}: {type(err).__name__}: {err}") from None
    _check_plain(obj, where)
    return obj


def _check_plain(obj, where: str, depth: int = 0) -> None:
    """Verify the result only holds plain containers, scalars and numeric numpy arrays."""
    if depth > 20:
        raise BiperError(f"refusing to load {where}: nesting deeper than 20 levels")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, where, depth + 1)
            _check_plain(v, where, depth + 1)
    elif isinstance(obj, (list, tuple)):
        if len(obj) and all(type(v) is int for v in obj):
            return
        for v in obj:
            _check_plain(v, where, depth + 1)
    elif isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _DATA_KINDS:
            raise BiperError(f"refusing to load {where}: array of dtype {obj.dtype}")
    elif obj is None or type(obj) in (bool, int, float, complex, str, bytes):
        return
    else:
        raise BiperError(f"refusing to load {where}: unexpected object of type {type(obj).__name__}")
