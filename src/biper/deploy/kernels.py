"""Fast XNOR-popcount kernels with run-time dispatch, and the pure-PyTorch reference path.

The operations of a binary layer (see `biper.deploy.modules`):

* ``pack(x, thr)`` / ``pack_rows(x, thr)``: signs of a float tensor ``(B, C, HW)`` (channels
  first) or ``(R, C)`` (channels last) -> words ``(B, HW, ceil(C/64))`` / ``(R, ceil(C/64))``,
  bit = ``(x - thr[c]) < 0``;
* ``im2col(words, ...)``: gather the packed pixels under each 3x3 (or any) window into rows
  ``(B*OH*OW, KH*KW*CW)``, the padding positions filled with a given word pattern;
* ``gemm(A, panels, N, K, ...)``: ``acc[m, n] = K - 2 popcount(A[m] ^ Wt[n]) - corr[m % P, n]``
  as int32 and/or the per-channel affine output ``y = acc * scale[n] + shift[n]`` as float32
  (optionally ``+ residual`` and clamped), both row-major ``(M, N)`` (NHWC for convolutions).
  The weights come as `panel` s of 32 output channels so that each SIMD lane accumulates one
  output (no horizontal sums);
* ``conv2d(...)``: pack + GEMM in one native call, the GEMM reading each output pixel's taps in
  place (implicit im2col); the reference path composes the three functions above.

Build: one translation unit, ``csrc/bitkernels.c`` with its ``bitkernels_*.h`` parts, compiled
on first use with the system C compiler (`biper.native`: per-user cache keyed by the sources,
compiler and flags) and called through ctypes
on tensor data pointers; per-function ``target`` attributes put AVX-512 VPOPCNTDQ, AVX2 and
portable variants in one binary and ``__builtin_cpu_supports`` picks one at run time. It shares
torch's OpenMP thread pool. docs/deploy.md has the measured speeds and the alternatives weighed.

When no compiler is found, the build or load fails, or ``BIPER_DISABLE_KERNELS=1`` is set,
every operation runs the pure-PyTorch reference below (bit-exact with the C path) and a
one-line notice is logged once. ``BIPER_KERNEL_ISA=avx512|avx2|portable`` caps the dispatch and
``BIPER_CACHE_DIR`` moves the cache. Loading the kernels also applies `biper.native.tune_allocator`
(``BIPER_MALLOC_TUNING=0`` keeps glibc's defaults).

Example::

    >>> from biper.deploy import kernels
    >>> kernels.info()["backend"] in ("native", "reference")
    True
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import torch

from ..native import NativeLibrary, tune_allocator
from .bitpack import WORD_BITS, n_words, pack_bits, unpack_bits

__all__ = [
    "info", "backend", "set_isa", "reset", "pack", "pack_rows", "im2col", "panel", "unpanel", "gemm",
    "conv2d", "conv_output_size",
    "ISA_NAMES", "PANEL",
]

log = logging.getLogger("biper.deploy")
SOURCE = Path(__file__).with_name("csrc") / "bitkernels.c"
ABI = 5
PANEL = 32  # output channels per weight panel (matches csrc)
ISA_NAMES = ("portable", "avx2", "avx512")


# -- loading (build and cache: biper.native) --------------------------------------------------
def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.biper_pack.argtypes = [p, i64, i64, i64, p, p, i32]
    lib.biper_pack_rows.argtypes = [p, i64, i64, p, p, i32]
    lib.biper_im2col.argtypes = [p] + [i64] * 14 + [p, p, i32]
    f32 = ctypes.c_float
    lib.biper_gemm.argtypes = [p, p, i64, i64, i64, i64, i64, p, p, p, p, p, p, i32, f32, f32, i32]
    lib.biper_conv2d.argtypes = [p, i32] + [i64] * 4 + [p, p] + [i64] * 9 + [p] * 7 + [i32, f32, f32, i32]
    lib.biper_conv2d.restype = ctypes.c_int
    for fn in (lib.biper_pack, lib.biper_pack_rows, lib.biper_im2col, lib.biper_gemm):
        fn.restype = None
    for name in ("biper_openmp", "biper_cpu_isa", "biper_get_isa"):
        getattr(lib, name).restype = ctypes.c_int
    lib.biper_set_isa.argtypes = [ctypes.c_int]
    lib.biper_set_isa.restype = ctypes.c_int


def _isa_index(name: str) -> int:
    if name not in ISA_NAMES:
        raise ValueError(f"unknown ISA {name!r}; valid: {', '.join(ISA_NAMES)}")
    return ISA_NAMES.index(name)


def _on_load(lib: ctypes.CDLL) -> None:
    """On load: apply ``BIPER_KERNEL_ISA`` (an unknown name fails the load, hence the fallback),
    and keep large freed blocks in the heap (`tune_allocator`; ``BIPER_MALLOC_TUNING=0`` opts
    out) so that each layer's output does not fault in fresh pages."""
    cap = os.environ.get("BIPER_KERNEL_ISA")
    if cap:
        lib.biper_set_isa(_isa_index(cap))
    tune_allocator()


_LIB = NativeLibrary(SOURCE, ABI, "biper_abi", _declare, "fast binary kernels", log, on_load=_on_load)
_state = _LIB.state
_load = _LIB.load
reset = _LIB.reset


def backend() -> str:
    """``"native"`` when the C kernels are in use, else ``"reference"``."""
    return "native" if _load() is not None else "reference"


def set_isa(name: str) -> str:
    """Cap the native dispatch at ``name`` in ISA_NAMES (the CPU may support less); returns
    the ISA now in use."""
    index = _isa_index(name)
    lib = _load()
    if lib is None:
        return "reference"
    return ISA_NAMES[lib.biper_set_isa(index)]


def info() -> dict:
    """Backend, ISA in use, CPU's best ISA, OpenMP, library path or the fallback reason."""
    lib = _load()
    if lib is None:
        return {"backend": "reference", "reason": _state["reason"]}
    return {
        "backend": "native",
        "isa": ISA_NAMES[lib.biper_get_isa()],
        "cpu_isa": ISA_NAMES[lib.biper_cpu_isa()],
        "openmp": bool(lib.biper_openmp()),
        "path": str(_state["path"]),
    }


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check(t: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    if t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {t.dtype}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU for packed inference, got {t.device}")
    return t.contiguous()


# -- the three operations --------------------------------------------------------------------
def pack(x: torch.Tensor, thr: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, HW) float32 -> (B, HW, CW) int64 words, bit = (x - thr[c]) < 0."""
    x = _check(x, torch.float32, "activations")
    thr = None if thr is None else _check(thr, torch.float32, "threshold")
    b, c, hw = x.shape
    if thr is not None and thr.shape != (c,):
        raise ValueError(f"threshold must have shape ({c},), got {tuple(thr.shape)}")
    lib = _load()
    if lib is None:
        shifted = x if thr is None else x - thr.view(1, c, 1)
        return pack_bits(shifted.transpose(1, 2))  # (B, HW, CW)
    out = torch.empty(b, hw, n_words(c), dtype=torch.int64)
    lib.biper_pack(x.data_ptr(), b, c, hw, _ptr(thr), out.data_ptr(), torch.get_num_threads())
    return out


def pack_rows(x: torch.Tensor, thr: torch.Tensor | None = None) -> torch.Tensor:
    """(R, C) float32 (channels last) -> (R, CW) int64 words, bit = (x - thr[c]) < 0."""
    x = _check(x, torch.float32, "activations")
    thr = None if thr is None else _check(thr, torch.float32, "threshold")
    r, c = x.shape
    if thr is not None and thr.shape != (c,):
        raise ValueError(f"threshold must have shape ({c},), got {tuple(thr.shape)}")
    lib = _load()
    if lib is None:
        return pack_bits(x if thr is None else x - thr)
    out = torch.empty(r, n_words(c), dtype=torch.int64)
    lib.biper_pack_rows(x.data_ptr(), r, c, _ptr(thr), out.data_ptr(), torch.get_num_threads())
    return out


def im2col(words: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
           padding: tuple[int, int], dilation: tuple[int, int], fill: torch.Tensor) -> torch.Tensor:
    """(B, H, W, CW) words -> (B*OH*OW, KH*KW*CW); out-of-range taps take the ``fill`` words."""
    words = _check(words, torch.int64, "packed activations")
    fill = _check(fill, torch.int64, "fill words")
    b, h, w, cw = words.shape
    if fill.shape != (cw,):
        raise ValueError(f"fill must have shape ({cw},), got {tuple(fill.shape)}")
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh, ow = conv_output_size(h, w, kernel, stride, padding, dilation)
    lib = _load()
    if lib is None:
        padded = fill.view(1, 1, 1, cw).repeat(b, h + 2 * ph, w + 2 * pw, 1)
        padded[:, ph:ph + h, pw:pw + w] = words
        taps = [padded[:, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
                for i in range(kh) for j in range(kw)]  # each (B, OH, OW, CW)
        return torch.stack(taps, dim=3).reshape(b * oh * ow, kh * kw * cw)
    out = torch.empty(b * oh * ow, kh * kw * cw, dtype=torch.int64)
    lib.biper_im2col(words.data_ptr(), b, h, w, cw, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow,
                     fill.data_ptr(), out.data_ptr(), torch.get_num_threads())
    return out


def panel(wt: torch.Tensor) -> torch.Tensor:
    """Weights (N, L) words -> (ceil(N/32), L, 32) panels, channels past N zero-filled."""
    n, length = wt.shape
    nb = (n + PANEL - 1) // PANEL
    padded = torch.zeros(nb * PANEL, length, dtype=wt.dtype)
    padded[:n] = wt
    return padded.view(nb, PANEL, length).transpose(1, 2).contiguous()


def unpanel(panels: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `panel`: (NB, L, 32) -> (n, L)."""
    return panels.transpose(1, 2).reshape(panels.shape[0] * PANEL, panels.shape[1])[:n]


def _epilogue_args(residual, clamp, m: int, n: int):
    if residual is None and clamp is None:
        return None, 0, 0.0, 0.0
    if residual is not None:
        residual = _check(residual, torch.float32, "residual")
        if residual.shape != (m, n):
            raise ValueError(f"residual must have shape {(m, n)}, got {tuple(residual.shape)}")
    lo, hi = clamp if clamp is not None else (0.0, 0.0)
    return residual, int(clamp is not None), float(lo), float(hi)


def _reference_epilogue(y, residual, clamp):
    if residual is not None:
        y = y + residual
    if clamp is not None:
        y = torch.clamp(y, clamp[0], clamp[1])
    return y


def gemm(a: torch.Tensor, panels: torch.Tensor, n: int, k: int, *, pixels: int = 1,
         corr: torch.Tensor | None = None, scale: torch.Tensor | None = None,
         shift: torch.Tensor | None = None, want_acc: bool = True,
         residual: torch.Tensor | None = None, clamp: tuple[float, float] | None = None):
    """XNOR-popcount product of packed rows with packed weights.

    a (M, L) int64 words and ``panels = panel(wt)`` for weights wt (n, L), each row holding
    ``k`` valid bits (all other bits 0). Returns ``(acc, y)``: acc (M, n) int32 =
    ``k - 2 popcount(a ^ wt) - corr[m % pixels]`` (None unless ``want_acc``) and, when
    ``scale``/``shift`` (n,) are given, y (M, n) float32 = ``acc * scale + shift`` (else None),
    then ``+ residual`` (M, n) and clamped to ``clamp = (lo, hi)`` when those are given.
    """
    a, panels = _check(a, torch.int64, "packed rows"), _check(panels, torch.int64, "weight panels")
    m, length = a.shape
    if panels.shape[1:] != (length, PANEL) or panels.shape[0] * PANEL < n:
        raise ValueError(f"weight panels {tuple(panels.shape)} do not match {n} rows of {length} words")
    if pixels < 1 or m % pixels:
        raise ValueError(f"{m} rows are not a whole number of samples of {pixels} pixels")
    if corr is not None:
        corr = _check(corr, torch.int32, "padding correction")
        if corr.shape != (pixels, n):
            raise ValueError(f"corr must have shape {(pixels, n)}, got {tuple(corr.shape)}")
    affine = scale is not None
    if affine:
        scale, shift = _check(scale, torch.float32, "scale"), _check(shift, torch.float32, "shift")
        if scale.shape != (n,) or shift.shape != (n,):
            raise ValueError(f"scale and shift must both have shape ({n},)")
    residual, do_clamp, lo, hi = _epilogue_args(residual, clamp, m, n)
    lib = _load()
    if lib is None:
        total = length * WORD_BITS
        dtype = torch.float32 if total < 2 ** 24 else torch.float64  # exact integer sums
        wt = unpanel(panels, n)
        dot = unpack_bits(a, total, dtype) @ unpack_bits(wt, total, dtype).T  # (M, n)
        acc = (dot - (total - k)).to(torch.int32)
        if corr is not None:
            acc = (acc.view(m // pixels, pixels, n) - corr.view(1, pixels, n)).view(m, n)
        y = _reference_epilogue(acc.to(torch.float32) * scale + shift, residual, clamp) if affine else None
        return (acc if want_acc else None), y
    acc = torch.empty(m, n, dtype=torch.int32) if want_acc else None
    y = torch.empty(m, n, dtype=torch.float32) if affine else None
    lib.biper_gemm(a.data_ptr(), panels.data_ptr(), m, n, length, k, pixels, _ptr(corr), _ptr(acc),
                   _ptr(y), _ptr(scale), _ptr(shift), _ptr(residual), do_clamp, lo, hi,
                   torch.get_num_threads())
    return acc, y


def conv_output_size(h: int, w: int, kernel, stride, padding, dilation) -> tuple[int, int]:
    """(OH, OW) of a convolution, as torch computes it."""
    oh = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"input {h}x{w} is too small for kernel {tuple(kernel)} with padding {tuple(padding)}")
    return oh, ow


def conv2d(x: torch.Tensor, thr: torch.Tensor | None, panels: torch.Tensor, n: int,
           kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
           dilation: tuple[int, int], fill: torch.Tensor, corr: torch.Tensor | None,
           scale: torch.Tensor | None, shift: torch.Tensor | None, want_acc: bool,
           residual: torch.Tensor | None = None, clamp: tuple[float, float] | None = None):
    """W1A1 convolution of float32 x (B, C, H, W) (contiguous or channels_last): pack, im2col
    and `gemm` in one call. Returns ``(acc, y)`` row-major (B*OH*OW, n) like `gemm`;
    ``residual`` is (B*OH*OW, n) row-major (an NHWC tensor). ``corr`` (OH*OW, n) is the
    zero-padding correction: it must be zero for pixels whose window lies inside the input
    (the native kernel does not read those rows)."""
    b, c, h, w = x.shape
    oh, ow = conv_output_size(h, w, kernel, stride, padding, dilation)
    cw = n_words(c)
    if panels.shape != ((n + PANEL - 1) // PANEL, kernel[0] * kernel[1] * cw, PANEL):
        raise ValueError(f"weight panels {tuple(panels.shape)} do not match {n} outputs of "
                         f"{kernel[0]}x{kernel[1]} taps x {cw} words")
    if fill.shape != (cw,) or (corr is not None and corr.shape != (oh * ow, n)):
        raise ValueError(f"fill must be ({cw},) and corr ({oh * ow}, {n}); got {tuple(fill.shape)}, "
                         f"{None if corr is None else tuple(corr.shape)}")
    if scale is not None and (scale.shape != (n,) or shift is None or shift.shape != (n,)):
        raise ValueError(f"scale and shift must both have shape ({n},)")
    if thr is not None and thr.shape != (c,):
        raise ValueError(f"threshold must have shape ({c},), got {tuple(thr.shape)}")
    if x.device.type != "cpu":
        raise ValueError(f"activations must be on the CPU for packed inference, got {x.device}")
    lib = _load()
    if h * w == 1:  # one-pixel images (linear layers) are rows in both layouts: the row packer
        x, channels_last = x.contiguous(), True
    else:
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if lib is None or x.dtype != torch.float32:
        if channels_last:
            words = pack_rows(x.permute(0, 2, 3, 1).reshape(b * h * w, c), thr)
        else:
            words = pack(x.contiguous().view(b, c, h * w), thr)
        rows = im2col(words.view(b, h, w, n_words(c)), kernel, stride, padding, dilation, fill)
        return gemm(rows, panels, n, c * kernel[0] * kernel[1], pixels=oh * ow, corr=corr,
                    scale=scale, shift=shift, want_acc=want_acc, residual=residual, clamp=clamp)
    residual, do_clamp, lo, hi = _epilogue_args(residual, clamp, b * oh * ow, n)
    x = x if channels_last else x.contiguous()
    panels, fill = _check(panels, torch.int64, "weight panels"), _check(fill, torch.int64, "fill words")
    corr = None if corr is None else _check(corr, torch.int32, "padding correction")
    thr = None if thr is None else _check(thr, torch.float32, "threshold")
    if scale is not None:
        scale, shift = _check(scale, torch.float32, "scale"), _check(shift, torch.float32, "shift")
    acc = torch.empty(b * oh * ow, n, dtype=torch.int32) if want_acc else None
    y = torch.empty(b * oh * ow, n, dtype=torch.float32) if scale is not None else None
    status = lib.biper_conv2d(x.data_ptr(), int(channels_last), b, c, h, w, _ptr(thr), panels.data_ptr(),
                              n, *kernel, *stride, *padding, *dilation, fill.data_ptr(), _ptr(corr),
                              _ptr(acc), _ptr(y), _ptr(scale), _ptr(shift), _ptr(residual), do_clamp,
                              lo, hi, torch.get_num_threads())
    if status != 0:
        raise MemoryError("biper_conv2d could not allocate its workspace")
    return acc, y
