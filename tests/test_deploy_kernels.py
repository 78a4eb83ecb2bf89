"""Native kernels vs the pure-PyTorch reference and brute force, every ISA; the fallback path."""

import logging
import os

import pytest
import torch
import torch.nn.functional as F

from biper import native as native_build
from biper.deploy import kernels
from biper.deploy.bitpack import n_words, pack_bits, popcount
from biper.deploy.modules import PackedConv2d
from biper.nn import BinaryConv2d


@pytest.fixture
def native():
    if kernels.backend() != "native":
        pytest.skip(f"native kernels unavailable: {kernels.info().get('reason')}")
    yield
    kernels.set_isa("avx512")  # back to the best the CPU has


@pytest.fixture
def reference(monkeypatch):
    """The pure-PyTorch path, as when BIPER_DISABLE_KERNELS=1 is set before the first call."""
    monkeypatch.setenv("BIPER_DISABLE_KERNELS", "1")
    kernels.reset()
    yield
    kernels.reset()  # the next call re-reads the environment (restored by monkeypatch)


def _run_reference(fn, *args, **kwargs):
    saved = dict(kernels._state)
    kernels._state.update(lib=None, tried=True, noticed=True)
    try:
        return fn(*args, **kwargs)
    finally:
        kernels._state.update(saved)


def _isas():
    return [pytest.param(isa, id=isa) for isa in kernels.ISA_NAMES]


def _use_isa(isa):
    if kernels.set_isa(isa) != isa:
        pytest.skip(f"this CPU does not support {isa}")


def _brute_force(a_bits, w_bits, k):
    """K - 2 popcount(a ^ w) for every pair, with the byte-table popcount."""
    xor = a_bits.unsqueeze(1) ^ w_bits.unsqueeze(0)  # (M, N, L)
    return (k - 2 * popcount(xor).sum(-1)).to(torch.int32)


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (3, 5, 63), (7, 33, 65), (9, 31, 130), (5, 70, 600),
                                   (1, 40, 4096), (13, 64, 64 * 9)])
def test_gemm_equals_brute_force_and_reference(native, isa, m, n, k):
    _use_isa(isa)
    gen = torch.Generator().manual_seed(m * 1000 + n + k)
    a, w = pack_bits(torch.randn(m, k, generator=gen)), pack_bits(torch.randn(n, k, generator=gen))
    scale, shift = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    corr = torch.randint(-50, 50, (m, n), generator=gen, dtype=torch.int32)
    acc, y = kernels.gemm(a, kernels.panel(w), n, k, pixels=m, corr=corr, scale=scale, shift=shift)
    expected = _brute_force(a, w, k) - corr
    assert torch.equal(acc, expected)
    ref_acc, ref_y = _run_reference(kernels.gemm, a, kernels.panel(w), n, k, pixels=m, corr=corr,
                                    scale=scale, shift=shift)
    assert torch.equal(ref_acc, expected)
    assert torch.equal(y, ref_y)  # same float operations (multiply, then add) in both paths


@pytest.mark.parametrize("isa", _isas())
def test_conv_and_im2col_native_equal_reference(native, isa):
    _use_isa(isa)
    gen = torch.Generator().manual_seed(7)
    for c, kernel, stride, pad, dil in [(3, (3, 3), (1, 1), (1, 1), (1, 1)), (65, (3, 2), (2, 1), (2, 0), (1, 2)),
                                        (130, (1, 1), (1, 1), (0, 0), (1, 1)), (64, (5, 5), (2, 2), (2, 2), (1, 1)),
                                        (5, (9, 9), (1, 1), (4, 4), (1, 1))]:  # > 64 taps: explicit im2col
        x = torch.randn(2, c, 9, 11, generator=gen)
        words = pack_bits(x.permute(0, 2, 3, 1))
        fill = torch.randint(-2 ** 62, 2 ** 62, (n_words(c),), generator=gen)
        args = (kernel, stride, pad, dil, fill)
        assert torch.equal(kernels.im2col(words, *args), _run_reference(kernels.im2col, words, *args))
        n = 37
        w = pack_bits(torch.randn(n, kernel[0] * kernel[1], c, generator=gen)).reshape(n, -1)
        panels = kernels.panel(w)
        oh, ow = kernels.conv_output_size(9, 11, kernel, stride, pad, dil)
        corr = torch.randint(-9, 9, (oh, ow, n), generator=gen, dtype=torch.int32)
        ih0, iw0 = torch.arange(oh) * stride[0] - pad[0], torch.arange(ow) * stride[1] - pad[1]
        inside_h = (ih0 >= 0) & (ih0 + (kernel[0] - 1) * dil[0] < 9)
        inside_w = (iw0 >= 0) & (iw0 + (kernel[1] - 1) * dil[1] < 11)
        corr[inside_h[:, None] & inside_w[None, :]] = 0  # a padding correction: zero inside
        corr = corr.view(oh * ow, n)
        scale, shift = torch.rand(n, generator=gen), torch.randn(n, generator=gen)
        thr = torch.randn(c, generator=gen) * 0.2
        for xin in (x, x.contiguous(memory_format=torch.channels_last)):
            call = (xin, thr, panels, n, kernel, stride, pad, dil, torch.zeros(n_words(c), dtype=torch.int64),
                    corr, scale, shift, True)
            acc, y = kernels.conv2d(*call)
            ref_acc, ref_y = _run_reference(kernels.conv2d, *call)
            assert torch.equal(acc, ref_acc) and torch.equal(y, ref_y)


def test_reference_conv_equals_float_convolution(reference):
    """The reference im2col + gemm with zero fill equals a float conv of +-1 padded with +1."""
    gen = torch.Generator().manual_seed(8)
    x, wf = torch.randn(1, 70, 6, 7, generator=gen), torch.randn(5, 70, 3, 3, generator=gen)
    words = pack_bits(wf.permute(0, 2, 3, 1)).reshape(5, -1)
    acc, _ = kernels.conv2d(x, None, kernels.panel(words), 5, (3, 3), (1, 1), (1, 1), (1, 1),
                            torch.zeros(2, dtype=torch.int64), None, None, None, True)
    sx, sw = torch.where(x < 0, -1.0, 1.0).double(), torch.where(wf < 0, -1.0, 1.0).double()
    expected = F.conv2d(F.pad(sx, (1, 1, 1, 1), value=1.0), sw)  # (1, 5, 6, 7)
    assert torch.equal(acc.view(1, 6, 7, 5).permute(0, 3, 1, 2).double(), expected)


def test_disabled_kernels_fall_back_with_one_notice(reference, caplog):
    caplog.set_level(logging.WARNING, logger="biper.deploy")
    assert kernels.backend() == "reference"
    assert kernels.info() == {"backend": "reference", "reason": "BIPER_DISABLE_KERNELS is set"}
    kernels.backend()
    notices = [r for r in caplog.records if "pure-PyTorch path" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0].getMessage()
    # and the packed layer is still exact on that path
    torch.manual_seed(0)
    layer = BinaryConv2d(65, 9, 3, padding=1, input_quantizer="approx_sign").eval()
    x = torch.randn(2, 65, 7, 7)
    assert torch.equal(PackedConv2d.from_binary(layer)(x), layer(x))


def test_missing_compiler_falls_back(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("BIPER_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("BIPER_DISABLE_KERNELS", raising=False)
    monkeypatch.setattr(kernels._LIB, "compiler", lambda: None)
    kernels.reset()
    caplog.set_level(logging.WARNING, logger="biper.deploy")
    try:
        assert kernels.backend() == "reference"
        assert "no C compiler" in kernels.info()["reason"]
        assert any("no C compiler" in r.getMessage() for r in caplog.records)
    finally:
        kernels.reset()


def test_build_is_cached_and_portable(native):
    first = kernels._LIB.build()
    assert kernels._LIB.build() == first and first.exists()
    assert not any("march" in flag for flags in native_build.FLAG_SETS for flag in flags)
    info = kernels.info()
    assert info["isa"] in kernels.ISA_NAMES and info["openmp"] in (True, False)
    with pytest.raises(ValueError, match="unknown ISA"):
        kernels.set_isa("sse9")


def test_gemm_checks_shapes():
    a = torch.zeros(4, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match="do not match"):
        kernels.gemm(a, kernels.panel(torch.zeros(3, 5, dtype=torch.int64)), 3, 64)
    with pytest.raises(ValueError, match="whole number"):
        kernels.gemm(a, kernels.panel(torch.zeros(3, 2, dtype=torch.int64)), 3, 64, pixels=3)
    with pytest.raises(ValueError, match="int64"):
        kernels.gemm(a.int(), kernels.panel(torch.zeros(3, 2, dtype=torch.int64)), 3, 64)


def test_unwritable_cache_falls_back_to_temp(native, monkeypatch, tmp_path):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")
    monkeypatch.setenv("BIPER_CACHE_DIR", str(blocked / "kernels"))  # cannot be created
    monkeypatch.setattr(native_build.tempfile, "gettempdir", lambda: str(tmp_path))
    assert native_build.writable_cache() == tmp_path / f"biper-kernels-{os.getuid()}"


def test_inconsistent_arguments_are_refused_before_native_code():
    words = torch.zeros(1, 4, 4, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match="fill"):
        kernels.im2col(words, (3, 3), (1, 1), (1, 1), (1, 1), torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match="threshold"):
        kernels.pack_rows(torch.zeros(3, 70), torch.zeros(69))
    x = torch.zeros(1, 70, 4, 4)
    panels = kernels.panel(torch.zeros(5, 9 * 2, dtype=torch.int64))
    args = [x, None, panels, 5, (3, 3), (1, 1), (1, 1), (1, 1), torch.zeros(2, dtype=torch.int64), None,
            None, None, True]
    kernels.conv2d(*args)  # consistent: runs
    for index, bad in [(2, kernels.panel(torch.zeros(5, 9, dtype=torch.int64))),
                       (9, torch.zeros(3, 5, dtype=torch.int32)), (10, torch.ones(4))]:
        wrong = list(args)
        wrong[index] = bad
        if index == 10:
            wrong[11] = torch.zeros(5)
        with pytest.raises(ValueError):
            kernels.conv2d(*wrong)
