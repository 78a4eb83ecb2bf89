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


# -- random shapes: every tail of the register tiles, every ISA the CPU has ---------------------
def _random_gemm_shapes(count, seed):
    """(M, N, K): rows around the split threshold, the row tiles (2, 4) and task groups (64 rows),
    channels around the vector (4, 8, 16) and panel (32) widths, K not a multiple of 64 and past
    the 31 words a byte counter holds."""
    gen = torch.Generator().manual_seed(seed)
    pick = lambda values: values[int(torch.randint(len(values), (1,), generator=gen))]  # noqa: E731
    shapes = []
    for _ in range(count):
        m = pick([1, 2, 3, 5, 7, 8, 9, 11, 13, 63, 65, 66, 67, 130])
        n = pick([1, 3, 4, 7, 9, 15, 17, 31, 33, 40, 47, 64, 65, 100])
        k = pick([1, 63, 65, 127, 200, 64 * 31, 64 * 31 + 1, 64 * 32 - 3, 64 * 62 + 5, 64 * 70 - 1])
        shapes.append((m, n, k))
    return shapes


@pytest.mark.parametrize("isa", _isas())
def test_gemm_random_shapes_exact(native, isa):
    """Integer sums equal brute-force popcounts and the float epilogue equals the reference
    bit for bit (atol = 0), with correction rows, residual and clamp."""
    _use_isa(isa)
    for i, (m, n, k) in enumerate(_random_gemm_shapes(24, seed=11)):
        gen = torch.Generator().manual_seed(i)
        xa, xw = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
        xa[: (m + 1) // 2].abs_().neg_()  # all bits set against all clear: every byte counts 8
        xw[: (n + 1) // 2].abs_()
        a, w = pack_bits(xa), pack_bits(xw)
        pixels = 1 if m % 2 else 2 if m % 4 else m  # correction rows repeat every `pixels` rows
        corr = torch.randint(-40, 40, (pixels, n), generator=gen, dtype=torch.int32)
        scale, shift = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
        res = torch.randn(m, n, generator=gen)
        res[0, 0] = float("nan")  # NaN survives the clamp, as in torch.clamp
        kwargs = dict(pixels=pixels, corr=corr, scale=scale, shift=shift, residual=res, clamp=(-1.5, 2.0))
        acc, y = kernels.gemm(a, kernels.panel(w), n, k, **kwargs)
        expected = (_brute_force(a, w, k).view(m // pixels, pixels, n) - corr).view(m, n)
        assert torch.equal(acc, expected), (m, n, k)
        ref_acc, ref_y = _run_reference(kernels.gemm, a, kernels.panel(w), n, k, **kwargs)
        assert torch.equal(ref_acc, expected)
        assert torch.equal(y.view(torch.int32), ref_y.view(torch.int32)), (m, n, k)  # bit patterns, NaN too
        plain, none = kernels.gemm(a, kernels.panel(w), n, k)  # int32 only, no correction
        assert none is None and torch.equal(plain, _brute_force(a, w, k))


@pytest.mark.parametrize("isa", _isas())
def test_gemm_split_over_threads_exact(native, isa):
    """Work large enough to run in parallel (each thread with its own split panel buffer)."""
    _use_isa(isa)
    gen = torch.Generator().manual_seed(14)
    m, n, k = 301, 99, 64 * 40 - 7
    a, w = pack_bits(torch.randn(m, k, generator=gen)), pack_bits(torch.randn(n, k, generator=gen))
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        acc, _ = kernels.gemm(a, kernels.panel(w), n, k)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(acc, _brute_force(a, w, k))


@pytest.mark.parametrize("isa", _isas())
def test_conv_random_shapes_exact(native, isa):
    """Implicit-im2col convolutions of random geometry and batch: native = reference (atol = 0)."""
    _use_isa(isa)
    gen = torch.Generator().manual_seed(12)
    for i in range(14):
        c = [1, 3, 17, 64, 65, 100, 130, 200][i % 8]
        n = [1, 5, 16, 33, 70][i % 5]
        kh, kw = [(3, 3), (1, 1), (3, 1), (2, 3), (5, 5)][i % 5]
        stride, pad = (1 + i % 2, 1 + (i // 3) % 2), (i % 3, (i + 1) % 3)
        b, h, w = 1 + i % 3, 5 + i % 4, 6 + (i * 3) % 5
        x = torch.randn(b, c, h, w, generator=gen)
        x[0, 0, 0, :2] = torch.tensor([0.0, -0.0])
        words = pack_bits(torch.randn(n, kh * kw, c, generator=gen)).reshape(n, -1)
        oh, ow = kernels.conv_output_size(h, w, (kh, kw), stride, pad, (1, 1))
        scale, shift = torch.rand(n, generator=gen), torch.randn(n, generator=gen)
        thr = torch.randn(c, generator=gen) * 0.3 if i % 2 else None
        fill = torch.zeros(n_words(c), dtype=torch.int64)
        res = torch.randn(b * oh * ow, n, generator=gen)
        for xin in (x, x.contiguous(memory_format=torch.channels_last)):
            call = (xin, thr, kernels.panel(words), n, (kh, kw), stride, pad, (1, 1), fill, None, scale, shift, True)
            acc, y = kernels.conv2d(*call, residual=res, clamp=(-2.0, 2.0))
            ref_acc, ref_y = _run_reference(kernels.conv2d, *call, residual=res, clamp=(-2.0, 2.0))
            assert torch.equal(acc, ref_acc) and torch.equal(y, ref_y), (i, c, n, kh, kw, stride, pad, b)


@pytest.mark.parametrize("isa", _isas())
def test_packers_random_shapes_exact(native, isa):
    """Both packers, every channel tail, thresholds, zeros of both signs and NaN."""
    _use_isa(isa)
    gen = torch.Generator().manual_seed(13)
    for c in (1, 7, 8, 9, 63, 64, 65, 130, 257):
        for hw in (1, 5, 8, 63, 64, 65, 196):
            x = torch.randn(2, c, hw, generator=gen)
            flat = x.view(-1)
            flat[:: 7] = 0.0
            flat[3:: 11] = -0.0
            flat[5:: 13] = float("nan")
            thr = torch.randn(c, generator=gen) * 0.5
            for t in (None, thr):
                assert torch.equal(kernels.pack(x, t), _run_reference(kernels.pack, x, t)), (c, hw)
                rows = x.transpose(1, 2).reshape(-1, c).contiguous()
                assert torch.equal(kernels.pack_rows(rows, t), _run_reference(kernels.pack_rows, rows, t)), (c, hw)
