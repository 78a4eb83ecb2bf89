"""Bit packing: layout, identity with zeros / -0.0 / odd lengths, popcount, native == reference."""

import pytest
import torch

from biper.deploy import kernels
from biper.deploy.bitpack import n_words, pack_bits, popcount, unpack_bits, valid_bits_mask
from biper.functional import sign

LENGTHS = [1, 3, 63, 64, 65, 127, 128, 130, 200, 4097]


@pytest.fixture
def native():
    if kernels.backend() != "native":
        pytest.skip(f"native kernels unavailable: {kernels.info().get('reason')}")


def _python_words(values):
    """Independent packer: Python ints, bit j of word w <- values[64 w + j] < 0."""
    words = []
    for start in range(0, len(values), 64):
        word = 0
        for j, v in enumerate(values[start:start + 64]):
            if v < 0:
                word |= 1 << j
        words.append(word - (1 << 64) if word >= 1 << 63 else word)  # as signed int64
    return words


@pytest.mark.parametrize("k", LENGTHS)
def test_pack_unpack_identity_with_zeros_and_negative_zero(k):
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(3, k, generator=gen)
    x[0, ::3] = 0.0
    x[1, ::2] = -0.0
    words = pack_bits(x)
    assert words.dtype == torch.int64 and words.shape == (3, n_words(k))
    assert torch.equal(unpack_bits(words, k), sign(x))
    # +-1 input round-trips exactly
    pm = sign(x)
    assert torch.equal(unpack_bits(pack_bits(pm), k), pm)


@pytest.mark.parametrize("k", [5, 64, 70, 130])
def test_bit_layout_matches_independent_packer(k):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(k, generator=gen)
    x[0] = -0.0
    assert pack_bits(x).tolist() == _python_words(x.tolist())


def test_unused_high_bits_are_zero_and_mask():
    x = -torch.ones(70)  # all bits set where valid
    words = pack_bits(x)
    assert words[0].item() == -1 and words[1].item() == (1 << 6) - 1
    assert torch.equal(valid_bits_mask(70), words)


def test_pack_along_other_dim():
    x = torch.randn(4, 65, 3)
    assert torch.equal(pack_bits(x, dim=1), pack_bits(x.transpose(1, 2)))


def test_popcount_matches_python():
    gen = torch.Generator().manual_seed(2)
    words = torch.randint(-2 ** 63, 2 ** 63 - 1, (100,), generator=gen, dtype=torch.int64)
    words[0], words[1], words[2] = 0, -1, -2 ** 63
    expected = [bin(w & ((1 << 64) - 1)).count("1") for w in words.tolist()]
    assert popcount(words).tolist() == expected


def test_dot_product_identity():
    gen = torch.Generator().manual_seed(3)
    a, w = torch.randn(130, generator=gen), torch.randn(130, generator=gen)
    dot = int((sign(a) * sign(w)).sum())
    assert dot == 130 - 2 * int(popcount(pack_bits(a) ^ pack_bits(w)).sum())


def test_bad_inputs():
    with pytest.raises(ValueError, match="int64"):
        unpack_bits(torch.zeros(2, dtype=torch.int32), 3)
    with pytest.raises(ValueError, match="does not fit"):
        unpack_bits(torch.zeros(1, dtype=torch.int64), 65)
    with pytest.raises(ValueError, match="scalar"):
        pack_bits(torch.tensor(1.0))


@pytest.mark.parametrize("channels", [1, 3, 64, 65, 130])
def test_native_packers_equal_reference(channels, native):
    gen = torch.Generator().manual_seed(channels)
    x = torch.randn(2, channels, 37, generator=gen)
    x[0, :, 0] = 0.0
    x[0, :, 1] = -0.0
    thr = torch.randn(channels, generator=gen) * 0.3
    expected = pack_bits((x - thr.view(1, -1, 1)).transpose(1, 2))
    assert torch.equal(kernels.pack(x, thr), expected)
    rows = x.transpose(1, 2).reshape(-1, channels).contiguous()
    assert torch.equal(kernels.pack_rows(rows, thr), expected.reshape(-1, n_words(channels)))
    assert torch.equal(kernels.pack_rows(rows), pack_bits(rows))
