"""Packed binary layers: `PackedConv2d` and `PackedLinear`.

A trained binary layer computes ``y = op(pad(Qa(x), pad_value), Qw(w)) * scale[c] + bias[c]``,
usually followed by BatchNorm. Its packed counterpart keeps:

- ``weight_bits``: ``Qw(w)`` at 1 bit per weight, int64 words, shape ``(Cout, KH*KW*CW)``
  (tap-major, ``CW = ceil(Cin/64)`` words of input channels per tap; linear: ``(Cout, CW)``);
- ``out_scale``, ``out_shift``: one per-channel affine that absorbs the scale, the bias and a
  following BatchNorm: ``z = acc * out_scale + out_shift``;
- ``in_threshold`` (optional): ReActNet's per-channel RSign threshold, ``Qa(x) = sign(x - t)``.

W1A1 layers (binary inputs) run XNOR + popcount with integer accumulation::

    acc = K - 2 popcount(bits(x) XOR bits(w)),     K = Cin * KH * KW

Zero padding is not a +-1 value: padded taps are packed as +1 (bit 0) and each output pixel
next to the border gets the exact correction ``corr[p, c] = sum over its padded taps t of
sum_ci Qw[c, ci, t]``, so ``acc`` equals the training-time integer convolution bit for bit.
``pad_value = +-1`` needs no correction (its bits are just packed). W1A32 layers (real inputs,
binary weights) run a float convolution with the unpacked +-1 weights and the same affine.

Convolution outputs are returned as NCHW tensors in ``channels_last`` memory format (the kernel
writes one row of channels per pixel); values equal the training-time model's.

Example::

    >>> import torch
    >>> from biper.nn import BinaryConv2d
    >>> from biper.deploy.modules import PackedConv2d
    >>> conv = BinaryConv2d(64, 64, 3, padding=1, bias=False).eval()
    >>> packed = PackedConv2d.from_binary(conv)
    >>> x = torch.randn(1, 64, 8, 8)
    >>> bool((packed(x) - conv(x)).abs().max() < 1e-5)
    True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BiperError
from ..nn import BinaryConv2d, BinaryLinear
from . import kernels
from .bitpack import n_words, popcount, unpack_bits, valid_bits_mask

__all__ = ["PackedConv2d", "PackedLinear", "PACKED_TYPES", "fold_affine", "conv_padding"]


@torch.no_grad()
def fold_affine(layer: nn.Module, bn: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) equal to the layer's scale and bias followed by ``bn`` (eval)."""
    cout = layer.weight.shape[0]
    scale = layer.scale().detach().to(torch.float64).expand(cout).clone()
    if layer.scaling == "none":
        scale = torch.ones(cout, dtype=torch.float64)
    shift = torch.zeros(cout, dtype=torch.float64)
    if layer.bias is not None:
        shift = layer.bias.detach().to(torch.float64).clone()
    if bn is not None:
        g = bn.weight.detach().double() if bn.weight is not None else torch.ones(cout, dtype=torch.float64)
        b = bn.bias.detach().double() if bn.bias is not None else torch.zeros(cout, dtype=torch.float64)
        inv = g / torch.sqrt(bn.running_var.double() + bn.eps)
        scale, shift = scale * inv, (shift - bn.running_mean.double()) * inv + b
    return scale.float(), shift.float()


@torch.no_grad()
def _input_threshold(q: nn.Module, channels: int, conv: bool) -> torch.Tensor | None:
    """The per-channel t with ``q.binary(x) == sign(x - t)``; verified on probe values."""
    t = getattr(q, "threshold", None)
    thr = t.detach().float().reshape(-1).clone() if isinstance(t, torch.Tensor) else torch.zeros(1)
    if thr.numel() == 1:
        thr = thr.expand(channels).clone()
    if thr.numel() != channels:
        raise BiperError(f"activation quantizer {q.name!r} has a threshold of {thr.numel()} values "
                         f"for {channels} channels")
    gen = torch.Generator().manual_seed(0)
    shape = (4, channels, 2, 2) if conv else (16, channels)
    view = (1, channels, 1, 1) if conv else (1, channels)
    probe = torch.randn(shape, generator=gen) * (thr.abs().view(view) + 1.0) + thr.view(view)
    probe[0] = thr.view(view)[0]  # exactly at the threshold: sign(0) = +1
    probe[1] = torch.where(thr == 0, -0.0, thr).view(view)[0]  # -0.0 where t = 0
    expected = torch.where(probe - thr.view(view) < 0, -1.0, 1.0)
    was_training = q.training
    q.eval()
    got = q.binary(probe)
    q.train(was_training)
    if not torch.equal(got.float(), expected):
        raise BiperError(f"activation quantizer {q.name!r} does not deploy as sign(x - t); "
                         "only sign-type activation quantizers can be packed")
    return thr if bool(thr.any()) else None


def _epilogue(y: torch.Tensor, residual: torch.Tensor | None, clamp) -> torch.Tensor:
    """The fused tail in plain torch: ``clamp(y + residual, lo, hi)`` (each part optional)."""
    if residual is not None:
        y = y + residual
    return torch.clamp(y, clamp[0], clamp[1]) if clamp is not None else y


class _Packed(nn.Module):
    """Shared buffers, caches and conversion of the packed layers."""

    def _init_common(self, out_features: int, words: int, binary_input: bool, in_channels: int,
                     has_threshold: bool) -> None:
        self.binary_input = bool(binary_input)
        self.register_buffer("weight_bits", torch.zeros(out_features, words, dtype=torch.int64))
        self.register_buffer("out_scale", torch.ones(out_features))
        self.register_buffer("out_shift", torch.zeros(out_features))
        self.register_buffer("in_threshold", torch.zeros(in_channels) if has_threshold else None)
        self._cache: dict[Any, torch.Tensor] = {}

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache = {}
        return super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def accumulate(self, x: torch.Tensor) -> torch.Tensor:
        """W1A1 integer accumulations, int32, before the per-channel affine: (B, Cout, OH, OW)
        for convolutions, (..., Cout) for linears."""
        if not self.binary_input:
            raise BiperError("accumulate() is for W1A1 layers; this layer has real inputs")
        return self._gemm(x, want_acc=True, affine=False)[0]

    def _panels(self) -> torch.Tensor:
        if "panels" not in self._cache:
            self._cache["panels"] = kernels.panel(self.weight_bits)
        return self._cache["panels"]

    def _set_from(self, layer: nn.Module, bn: nn.Module | None, wq: torch.Tensor) -> None:
        if not bool((wq.abs() == 1).all()):
            raise BiperError("the weight quantizer's deployment values are not all +-1")
        with torch.no_grad():
            rows = wq.reshape(-1, wq.shape[-1]).to(torch.float32).contiguous()  # (Cout*taps, Cin)
            self.weight_bits.copy_(kernels.pack_rows(rows).reshape(wq.shape[0], -1))
            scale, shift = fold_affine(layer, bn)
            self.out_scale.copy_(scale)
            self.out_shift.copy_(shift)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able), stored in exported files."""
        raise NotImplementedError

    @property
    def n_binary_weights(self) -> int:
        raise NotImplementedError


def conv_padding(layer: nn.Conv2d) -> tuple[int, int]:
    """The layer's padding as two ints ('valid' and odd-extent 'same' resolved)."""
    padding = layer.padding
    if not isinstance(padding, str):
        return tuple(int(p) for p in padding)
    kh, kw = layer.kernel_size
    dh, dw = layer.dilation
    if padding == "valid":
        return (0, 0)
    if (dh * (kh - 1)) % 2 or (dw * (kw - 1)) % 2:
        raise BiperError("padding='same' with an even kernel extent pads unevenly; use ints")
    return (dh * (kh - 1) // 2, dw * (kw - 1) // 2)


class PackedConv2d(_Packed):
    """Bit-packed binary convolution (groups=1); see the module docstring."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, *, pad_value: float = 0.0, binary_input: bool = True,
                 has_threshold: bool = False) -> None:
        super().__init__()
        pair = lambda v: tuple(int(i) for i in (v if isinstance(v, (tuple, list)) else (v, v)))  # noqa: E731
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride = pair(kernel_size), pair(stride)
        self.padding, self.dilation = pair(padding), pair(dilation)
        self.pad_value = float(pad_value)
        if binary_input and self.pad_value not in (0.0, 1.0, -1.0):
            raise BiperError(f"a W1A1 packed conv pads with 0, +1 or -1, got pad_value={pad_value}")
        taps = self.kernel_size[0] * self.kernel_size[1]
        self._init_common(self.out_channels, taps * n_words(self.in_channels), binary_input,
                          self.in_channels, has_threshold)

    @classmethod
    def from_binary(cls, layer: BinaryConv2d, bn: nn.Module | None = None) -> "PackedConv2d":
        """Pack a trained `BinaryConv2d` (and fold the BatchNorm ``bn`` that follows it)."""
        if layer.groups != 1:
            raise BiperError(f"packed convolutions support groups=1, got groups={layer.groups}")
        if layer.padding_mode != "zeros":
            raise BiperError(f"packed convolutions support padding_mode='zeros', got {layer.padding_mode!r}")
        if layer.weight_quantizer is None:
            raise BiperError("a layer without a weight quantizer has real weights and cannot be packed")
        padding = conv_padding(layer)
        q = layer.input_quantizer
        thr = _input_threshold(q, layer.in_channels, conv=True) if q is not None else None
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, padding,
                  layer.dilation, pad_value=layer.pad_value, binary_input=q is not None,
                  has_threshold=thr is not None)
        with torch.no_grad():
            wq = layer.weight_quantizer.binary(layer.weight.detach())  # (Cout, Cin, KH, KW)
            new._set_from(layer, bn, wq.permute(0, 2, 3, 1))  # bits: (Cout, KH, KW, Cin)
            if thr is not None:
                new.in_threshold.copy_(thr)
        return new

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "dilation": list(self.dilation),
                "pad_value": self.pad_value, "binary_input": self.binary_input,
                "has_threshold": self.in_threshold is not None}

    @property
    def n_binary_weights(self) -> int:
        return self.out_channels * self.in_channels * self.kernel_size[0] * self.kernel_size[1]

    def weight_pm1(self) -> torch.Tensor:
        """The +-1 weights as a float tensor (Cout, Cin, KH, KW)."""
        kh, kw = self.kernel_size
        w = unpack_bits(self.weight_bits.view(self.out_channels, kh * kw, -1), self.in_channels)
        return w.view(self.out_channels, kh, kw, self.in_channels).permute(0, 3, 1, 2).contiguous()

    def _plan(self, h: int, w: int) -> tuple[int, int, torch.Tensor | None]:
        """(OH, OW, padding correction) for an H x W input, cached."""
        key = ("plan", h, w)
        if key not in self._cache:
            oh, ow = kernels.conv_output_size(h, w, self.kernel_size, self.stride, self.padding, self.dilation)
            self._cache[key] = (oh, ow, self._correction(h, w))
        return self._cache[key]

    def _correction(self, h: int, w: int) -> torch.Tensor | None:
        """(OH*OW, Cout) int32: contribution of the zero-padded taps that were packed as +1."""
        if self.pad_value != 0.0 or not any(self.padding):
            return None
        key = ("corr", h, w)
        if key not in self._cache:
            kh, kw = self.kernel_size
            ph, pw = self.padding
            bits = self.weight_bits.view(self.out_channels, kh * kw, -1)
            tap_sum = self.in_channels - 2 * popcount(bits).sum(-1)  # (Cout, KH*KW)
            outside = F.pad(torch.zeros(1, 1, h, w, dtype=torch.float64), (pw, pw, ph, ph), value=1.0)
            corr = F.conv2d(outside, tap_sum.view(-1, 1, kh, kw).double(), stride=self.stride,
                            dilation=self.dilation)  # (1, Cout, OH, OW), exact small integers
            self._cache[key] = corr[0].permute(1, 2, 0).reshape(-1, self.out_channels).round().to(torch.int32).contiguous()
        return self._cache[key]

    def _gemm(self, x: torch.Tensor, want_acc: bool, affine: bool, residual=None, clamp=None):
        b, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got shape {tuple(x.shape)}")
        thr = self.in_threshold
        if "fill" not in self._cache:  # the padding value's bits: -1 -> all valid bits set
            ones = self.pad_value == -1.0
            self._cache["fill"] = valid_bits_mask(c) if ones else torch.zeros(n_words(c), dtype=torch.int64)
        oh, ow, corr = self._plan(h, w)
        if x.dtype != torch.float32:  # exact sign on any dtype: pack here, then the float32 path
            shifted = x if thr is None else x - thr.to(x.dtype).view(1, -1, 1, 1)
            x = torch.where(shifted < 0, -1.0, 1.0).to(torch.float32)
            thr = None
        if residual is not None:  # (B, Cout, OH, OW) -> NHWC rows; a view when channels_last
            residual = residual.permute(0, 2, 3, 1).reshape(b * oh * ow, self.out_channels)
        acc, y = kernels.conv2d(x, thr, self._panels(), self.out_channels, self.kernel_size,
                                self.stride, self.padding, self.dilation, self._cache["fill"],
                                corr, self.out_scale if affine else None,
                                self.out_shift if affine else None, want_acc, residual, clamp)
        to_nchw = lambda t: t.view(b, oh, ow, self.out_channels).permute(0, 3, 1, 2)  # noqa: E731
        return (to_nchw(acc) if acc is not None else None), (to_nchw(y) if y is not None else None)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                clamp: tuple[float, float] | None = None) -> torch.Tensor:
        """(B, Cin, H, W) -> (B, Cout, OH, OW); with ``residual`` / ``clamp`` (the fused tail of
        a residual block, see `biper.deploy.optimize`): ``clamp(y + residual, lo, hi)``."""
        if self.binary_input:
            fusable = residual is None or (residual.dtype == torch.float32 and residual.shape == (
                x.shape[0], self.out_channels, *self._plan(x.shape[2], x.shape[3])[:2]))
            if x.dtype == torch.float32 and fusable:
                return self._gemm(x, False, True, residual, clamp)[1]
            return _epilogue(self._gemm(x, False, True)[1].to(x.dtype), residual, clamp)
        if "weight" not in self._cache:
            self._cache["weight"] = self.weight_pm1()
        weight = self._cache["weight"].to(x.dtype)
        if self.pad_value != 0.0 and any(self.padding):
            ph, pw = self.padding
            y = F.conv2d(F.pad(x, (pw, pw, ph, ph), value=self.pad_value), weight, None,
                         self.stride, 0, self.dilation)
        else:
            y = F.conv2d(x, weight, None, self.stride, self.padding, self.dilation)
        y = y * self.out_scale.view(1, -1, 1, 1).to(y.dtype) + self.out_shift.view(1, -1, 1, 1).to(y.dtype)
        return _epilogue(y, residual, clamp)

    def extra_repr(self) -> str:
        mode = "W1A1" if self.binary_input else "W1A32"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"pad_value={self.pad_value}, {mode}")


class PackedLinear(_Packed):
    """Bit-packed binary linear layer; see the module docstring."""

    def __init__(self, in_features: int, out_features: int, *, binary_input: bool = True,
                 has_threshold: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_common(self.out_features, n_words(self.in_features), binary_input,
                          self.in_features, has_threshold)

    @classmethod
    def from_binary(cls, layer: BinaryLinear, bn: nn.Module | None = None) -> "PackedLinear":
        """Pack a trained `BinaryLinear` (and fold the BatchNorm1d ``bn`` that follows it)."""
        if layer.weight_quantizer is None:
            raise BiperError("a layer without a weight quantizer has real weights and cannot be packed")
        q = layer.input_quantizer
        thr = _input_threshold(q, layer.in_features, conv=False) if q is not None else None
        new = cls(layer.in_features, layer.out_features, binary_input=q is not None,
                  has_threshold=thr is not None)
        with torch.no_grad():
            new._set_from(layer, bn, layer.weight_quantizer.binary(layer.weight.detach()))
            if thr is not None:
                new.in_threshold.copy_(thr)
        return new

    def config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "binary_input": self.binary_input, "has_threshold": self.in_threshold is not None}

    @property
    def n_binary_weights(self) -> int:
        return self.out_features * self.in_features

    def weight_pm1(self) -> torch.Tensor:
        """The +-1 weights as a float tensor (Cout, Cin)."""
        return unpack_bits(self.weight_bits, self.in_features)

    def _gemm(self, x: torch.Tensor, want_acc: bool, affine: bool):
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected {self.in_features} input features, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)  # (M, K)
        thr = self.in_threshold
        if x.dtype != torch.float32:  # exact sign on any dtype, then the float32 path
            rows = torch.where((rows if thr is None else rows - thr.to(x.dtype)) < 0, -1.0, 1.0).float()
            thr = None
        if "fill" not in self._cache:
            self._cache["fill"] = torch.zeros(n_words(self.in_features), dtype=torch.int64)
        # a linear layer is a 1x1 convolution of M one-pixel images: one native call
        acc, y = kernels.conv2d(rows.view(-1, self.in_features, 1, 1), thr, self._panels(),
                                self.out_features, (1, 1), (1, 1), (0, 0), (1, 1), self._cache["fill"],
                                None, self.out_scale if affine else None,
                                self.out_shift if affine else None, want_acc)
        shape = (*lead, self.out_features)
        return (acc.view(shape) if acc is not None else None), (y.view(shape) if y is not None else None)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                clamp: tuple[float, float] | None = None) -> torch.Tensor:
        """(..., in) -> (..., out); ``residual`` / ``clamp`` as for `PackedConv2d`."""
        if self.binary_input:
            return _epilogue(self._gemm(x, want_acc=False, affine=True)[1].to(x.dtype), residual, clamp)
        if "weight" not in self._cache:
            self._cache["weight"] = self.weight_pm1()
        y = F.linear(x, self._cache["weight"].to(x.dtype))
        return _epilogue(y * self.out_scale.to(y.dtype) + self.out_shift.to(y.dtype), residual, clamp)

    def extra_repr(self) -> str:
        mode = "W1A1" if self.binary_input else "W1A32"
        return f"in_features={self.in_features}, out_features={self.out_features}, {mode}"


PACKED_TYPES = {"PackedConv2d": PackedConv2d, "PackedLinear": PackedLinear}
