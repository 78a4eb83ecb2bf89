"""One-pass C kernels for the activation quantizers' training passes (float32 on the CPU).

In eager PyTorch, ``sign(x)`` costs several passes over the activation tensor (docs/training.md
has the measured cost). The kernels in ``csrc/fused.c`` do each job in one pass (two for the
ReCU backward, whose second pass needs a per-sample sum from the first):

=========================  ======================================================  ======
function                   computes                                                passes
=========================  ======================================================  ======
`sign`                     sign(x), +1 at 0 and -0.0                                1
`approx_sign_backward`     g * max(0, 2 - 2|x|)                                     1
`clip_backward`            g * 1{|x| <= clip}                                       1
`recu_forward`             sign(x), r = (var(x) + eps)^-1/2, mean(x) per sample     1
`recu_backward`            d/dx of sign(x r) with the ApproxSign surrogate          2
=========================  ======================================================  ======

Every function returns None when its kernel does not apply (not float32, not on the CPU, not a
dense contiguous or channels-last tensor, inside ``torch.compile`` whose own fusion is used, an
autograd graph needed (double backward), or kernels unavailable: see `biper.native`); the caller
then runs its PyTorch formulas, which are the reference the tests compare against.

Example::

    >>> import torch
    >>> from biper.quantizers import fused
    >>> out = fused.sign(torch.tensor([-2.0, -0.0, 0.0, 3.0]))
    >>> out is None or out.tolist() == [-1.0, 1.0, 1.0, 1.0]
    True
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch

from ..native import NativeLibrary

__all__ = ["sign", "approx_sign_backward", "clip_backward", "recu_forward", "recu_backward", "backend"]

SOURCE = Path(__file__).with_name("csrc") / "fused.c"


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.biper_sign.argtypes = [p, p, i64, i32]
    lib.biper_approx_backward.argtypes = [p, p, p, i64, i32]
    lib.biper_clip_backward.argtypes = [p, p, p, i64, ctypes.c_float, i32]
    lib.biper_recu_forward.argtypes = [p, p, p, p, i64, i64, i32]
    lib.biper_recu_backward.argtypes = [p, p, p, p, p, i64, i64, i32]
    for fn in (lib.biper_sign, lib.biper_approx_backward, lib.biper_clip_backward, lib.biper_recu_forward,
               lib.biper_recu_backward):
        fn.restype = None


_LIB = NativeLibrary(SOURCE, 2, "biper_fused_abi", _declare, "fused training kernels",
                     logging.getLogger("biper.quantizers"))


def backend() -> str:
    """``"native"`` when the fused kernels are in use, else ``"reference"``."""
    return "native" if _LIB.load() is not None else "reference"


def _dense(x: torch.Tensor) -> bool:
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def _library(x: torch.Tensor, g: torch.Tensor | None = None):
    """The loaded library if ``x`` (and ``g``) suit the kernels, else None. Kernels build no
    autograd graph, so a call that would need one (e.g. ``backward(create_graph=True)``) gets None."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.numel() == 0 or not _dense(x):
        return None
    if torch.compiler.is_compiling():
        return None
    if torch.is_grad_enabled() and (x.requires_grad or (g is not None and g.requires_grad)):
        return None
    return _LIB.load()


PARALLEL_MIN = 1 << 15  # elements; below this one thread is faster than waking the others


def _threads(x: torch.Tensor) -> int:
    return torch.get_num_threads() if x.numel() >= PARALLEL_MIN else 1


def _like(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
    """``g`` laid out in memory exactly as ``x`` (a dense tensor), or None if it is not float32."""
    if g.dtype != torch.float32 or g.device != x.device or g.shape != x.shape:
        return None
    if g.stride() == x.stride():
        return g
    fmt = torch.contiguous_format if x.is_contiguous() else torch.channels_last
    return g.contiguous(memory_format=fmt)


def sign(x: torch.Tensor) -> torch.Tensor | None:
    """sign(x) with sign(0) = sign(-0.0) = +1, in the layout of ``x``; None if not applicable."""
    lib = _library(x)
    if lib is None:
        return None
    out = torch.empty_like(x)
    lib.biper_sign(x.data_ptr(), out.data_ptr(), x.numel(), _threads(x))
    return out


def approx_sign_backward(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
    """``g * max(0, 2 - 2|x|)``; None if not applicable."""
    lib = _library(x, g)
    g = None if lib is None else _like(g, x)
    if g is None:
        return None
    out = torch.empty_like(x)
    lib.biper_approx_backward(x.data_ptr(), g.data_ptr(), out.data_ptr(), x.numel(), _threads(x))
    return out


def clip_backward(x: torch.Tensor, g: torch.Tensor, clip: float) -> torch.Tensor | None:
    """``g * 1{|x| <= clip}``; None if not applicable."""
    lib = _library(x, g)
    g = None if lib is None else _like(g, x)
    if g is None:
        return None
    out = torch.empty_like(x)
    lib.biper_clip_backward(x.data_ptr(), g.data_ptr(), out.data_ptr(), x.numel(), float(clip),
                            _threads(x))
    return out


def recu_forward(x: torch.Tensor, eps: float):
    """(sign(x), r, mean) with per-sample ``r = (var + eps)^-1/2`` (unbiased variance over all
    non-batch dims) and ``mean``, both float32 of shape (B, 1, ..., 1); None if not applicable."""
    lib = _library(x)
    if lib is None or x.dim() < 2:
        return None
    batch, n = x.shape[0], x[0].numel()
    out = torch.empty_like(x)
    sums = torch.empty(batch, dtype=torch.float64)
    squares = torch.empty(batch, dtype=torch.float64)
    lib.biper_recu_forward(x.data_ptr(), out.data_ptr(), sums.data_ptr(), squares.data_ptr(), batch, n,
                           _threads(x))
    var = (squares - sums.square() / n).clamp_min(0.0) / max(n - 1, 1)
    shape = (batch,) + (1,) * (x.dim() - 1)
    r = torch.rsqrt(var.float() + eps).view(shape)
    return out, r, (sums / n).float().view(shape)


def recu_backward(x: torch.Tensor, g: torch.Tensor, r: torch.Tensor, mean: torch.Tensor) -> torch.Tensor | None:
    """The input gradient of `recu_forward` given the output gradient ``g``; None if not applicable."""
    lib = _library(x, g)
    g = None if lib is None else _like(g, x)
    if g is None or r.dtype != torch.float32:
        return None
    out = torch.empty_like(x)
    r, mean = r.contiguous(), mean.float().contiguous()
    lib.biper_recu_backward(x.data_ptr(), g.data_ptr(), r.data_ptr(), mean.data_ptr(), out.data_ptr(),
                            x.shape[0], x[0].numel(), _threads(x))
    return out
