"""Bit packing of +-1 tensors into 64-bit words, in plain PyTorch.

A binary value takes one bit. biper uses the same predicate as `biper.functional.sign`::

    bit = (x < 0)          +1 -> 0,  -1 -> 1,  0.0 and -0.0 -> 0 (they are +1)

Along the packed dimension, element ``64 w + j`` is bit ``j`` of word ``w`` (little-endian bit
order); the unused high bits of the last word are 0 (= +1). Words are stored as ``torch.int64``
(the bit pattern of an unsigned 64-bit word). The dot product of two packed vectors of K
values is::

    a . w = K - 2 popcount(a XOR w)

because equal signs contribute +1 and differing signs -1; padding bits are 0 in both operands
so they never count. This module is the reference the C kernels are tested against.

Example::

    >>> import torch
    >>> from biper.deploy.bitpack import pack_bits, unpack_bits
    >>> x = torch.tensor([[1.0, -2.0, 0.0, -0.0, -1.0]])
    >>> words = pack_bits(x)            # (1, 1): bits 1 and 4 set -> 0b10010 = 18
    >>> int(words)
    18
    >>> unpack_bits(words, 5)
    tensor([[ 1., -1.,  1.,  1., -1.]])
"""

from __future__ import annotations

import sys

import torch

from ..functional import negative_bits

__all__ = ["WORD_BITS", "n_words", "pack_bits", "unpack_bits", "popcount", "valid_bits_mask"]

WORD_BITS = 64
_SHIFTS = torch.arange(8, dtype=torch.uint8)  # bit positions inside a byte
_POP8 = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)


def n_words(k: int) -> int:
    """Number of 64-bit words holding ``k`` bits."""
    return (int(k) + WORD_BITS - 1) // WORD_BITS


def _bytes_to_words(b: torch.Tensor) -> torch.Tensor:
    """(..., 8 W) uint8, least significant byte first -> (..., W) int64 words."""
    b = b.reshape(*b.shape[:-1], b.shape[-1] // 8, 8)
    if sys.byteorder != "little":
        b = b.flip(-1)
    return b.contiguous().view(torch.int64).squeeze(-1)


def _words_to_bytes(words: torch.Tensor) -> torch.Tensor:
    """(..., W) int64 -> (..., W, 8) uint8, least significant byte first."""
    b = words.contiguous().unsqueeze(-1).view(torch.uint8)
    return b.flip(-1) if sys.byteorder != "little" else b


def pack_bits(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Pack the signs of ``x`` along ``dim`` into int64 words; that dim becomes ``n_words(K)``
    long and is moved last. Any real tensor works: only ``x < 0`` matters."""
    if x.dim() == 0:
        raise ValueError("pack_bits needs a tensor with at least one dimension, got a scalar")
    x = x.movedim(dim, -1)
    k = x.shape[-1]
    bits = negative_bits(x).to(torch.uint8)  # (..., K)
    pad = n_words(k) * WORD_BITS - k
    if pad:
        bits = torch.nn.functional.pad(bits, (0, pad))
    bits = bits.reshape(*bits.shape[:-1], n_words(k) * 8, 8)  # (..., 8 W, 8)
    byte = (bits << _SHIFTS.to(bits.device)).sum(-1, dtype=torch.int32).to(torch.uint8)
    return _bytes_to_words(byte)  # (..., W)


def unpack_bits(words: torch.Tensor, k: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of `pack_bits` along the last dim: (..., W) words -> (..., k) values in {+1, -1}."""
    if words.dtype != torch.int64:
        raise ValueError(f"packed words must be torch.int64, got {words.dtype}")
    if not 0 <= k <= words.shape[-1] * WORD_BITS:
        raise ValueError(f"k={k} does not fit in {words.shape[-1]} words of {WORD_BITS} bits")
    nbytes = words.shape[-1] * 8
    byte = _words_to_bytes(words).reshape(*words.shape[:-1], nbytes)  # (..., 8 W)
    bits = (byte.unsqueeze(-1) >> _SHIFTS.to(byte.device)) & 1  # (..., 8 W, 8)
    bits = bits.reshape(*words.shape[:-1], nbytes * 8)[..., :k]
    return (1 - 2 * bits.to(torch.int8)).to(dtype)


def popcount(words: torch.Tensor) -> torch.Tensor:
    """Number of set bits of each int64 word (byte lookup table), as int64."""
    byte = _words_to_bytes(words).to(torch.int64)  # (..., 8)
    return _POP8.to(words.device)[byte].sum(-1)


def valid_bits_mask(k: int) -> torch.Tensor:
    """(n_words(k),) int64 words with the low ``k`` bits set: the packed form of k values -1."""
    return pack_bits(-torch.ones(int(k)))
