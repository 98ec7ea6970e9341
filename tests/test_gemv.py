"""nanophi/gemv.py: the bf16- and int8-weight kernels against F.linear where they build, and the
one-line fallback where they do not."""
import os
import platform
import shutil
import sys
import warnings

import pytest
import torch
from torch.nn import functional as F

from nanophi import gemv


def gemv_expected():
    """Where the kernels must build and run (setup.sh builds them): x86-64 Linux, a C++ compiler, and
    AVX-512F or AVX2+FMA."""
    try:
        flags = set(" ".join(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split())
    except OSError:
        flags = set()
    isa = "avx512f" in flags or {"avx2", "fma"} <= flags
    return (sys.platform == "linux" and platform.machine() == "x86_64" and shutil.which("c++") is not None
            and isa and os.environ.get("NANOPHI_GEMV", "1") != "0")


@pytest.fixture(scope="module")
def gemv_op():
    op = gemv.kernel()
    if op is None:
        assert not gemv_expected(), "the bf16 gemv kernel should build here (see the warning above)"
        pytest.skip("no bf16 gemv kernel on this machine")
    return op


# odd sizes reach every path, for AVX-512's 32- and 16-wide steps and AVX2's 16 and 8: pairs of weight
# rows and a leftover one, both steps and the scalar K tail (53 = 32 + 16 + 5; 29 = 16 + 8 + 5), bands
# split between threads (N = 4099), pairs of x rows and a leftover one (M = 3)
@pytest.mark.parametrize("shape,K,N,bias", [
    ((1, 53), 53, 37, True), ((2, 771), 771, 130, True), ((1, 48), 48, 5, False), ((3, 100), 100, 7, True),
    ((2, 1, 67), 67, 9, False), ((1, 2, 67), 67, 9, True), ((1, 64), 64, 4099, True), ((2, 16), 16, 1, True),
    ((2, 29), 29, 11, True)])
def test_gemv_equals_fp32_linear(gemv_op, shape, K, N, bias):
    g = torch.Generator().manual_seed(K * N)
    x = torch.randn(shape, generator=g)
    w = torch.randn(N, K, generator=g).bfloat16()
    b = torch.randn(N, generator=g) if bias else None
    got = gemv_op(x, w, b)
    want = F.linear(x.double(), w.double(), None if b is None else b.double())
    assert got.dtype == torch.float32 and got.shape == (*shape[:-1], N)
    # fp32 accumulation of exact products: rounding only (activations rounded to bf16 would be ~1e-2 off)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * K ** 0.5)
    torch.testing.assert_close(got, F.linear(x, w.float(), b), rtol=1e-5, atol=1e-5 * K ** 0.5)


@pytest.fixture(scope="module")
def int8_op(gemv_op):
    op = gemv.int8_kernel()
    assert op is not None  # one extension: where the bf16 op builds, so does this one
    return op


# the same odd sizes, and K = 200 for the 64-wide step and the lane-wide one (200 = 3 * 64 + 8: AVX-512's
# 16-wide step and a scalar tail of 8, or AVX2's 8-wide step)
@pytest.mark.parametrize("shape,K,N,bias", [
    ((1, 53), 53, 37, True), ((2, 771), 771, 130, True), ((1, 48), 48, 5, False), ((3, 100), 100, 7, True),
    ((2, 1, 67), 67, 9, False), ((1, 2, 67), 67, 9, True), ((1, 64), 64, 4099, True), ((2, 16), 16, 1, True),
    ((1, 200), 200, 33, False), ((2, 7), 7, 3, True)])
def test_int8_gemv_equals_the_dequantized_weight(int8_op, shape, K, N, bias):
    g = torch.Generator().manual_seed(K * N + 1)
    x = torch.randn(shape, generator=g)
    w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    scale = torch.rand(N, generator=g) / 50
    b = torch.randn(N, generator=g) if bias else None
    got = int8_op(x, w, scale, b)
    want = F.linear(x.double(), w.double() * scale.double()[:, None], None if b is None else b.double())
    assert got.dtype == torch.float32 and got.shape == (*shape[:-1], N)
    # fp32 products of exact small integers and fp32 activations: rounding only
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * K ** 0.5)


# up to 8 rows share a pass (int8 and bf16 on AVX2: 4); 11 = one pass of 8 and one of 3 (or 4 + 4 + 3)
@pytest.mark.parametrize("M,K,N,bias", [(1, 53, 37, True), (3, 200, 33, False), (5, 771, 130, True), (8, 64, 4099, True),
                                        (11, 67, 9, False), (4, 7, 3, True)])
def test_fp32_gemv_equals_fp32_linear(int8_op, M, K, N, bias):
    g = torch.Generator().manual_seed(K * N + 2)
    x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
    b = torch.randn(N, generator=g) if bias else None
    got = torch.ops.nanophi.gemv_fp32(x, w, b)
    want = F.linear(x.double(), w.double(), None if b is None else b.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * K ** 0.5)
    scale = torch.rand(N, generator=g)
    q = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    want8 = F.linear(x.double(), q.double() * scale.double()[:, None], None if b is None else b.double())
    torch.testing.assert_close(int8_op(x, q, scale, b).double(), want8, rtol=1e-5, atol=1e-5 * K ** 0.5)
    wb = w.bfloat16()  # the bf16 rows op (batched decoding without native bf16): the same loop over 16-bit weights
    wantb = F.linear(x.double(), wb.double(), None if b is None else b.double())
    torch.testing.assert_close(gemv.bf16_rows_kernel()(x, wb, b).double(), wantb, rtol=1e-5, atol=1e-5 * K ** 0.5)


def test_int8_gemv_rejects_bad_input(int8_op):
    x, w, scale = torch.randn(1, 8), torch.zeros(4, 8, dtype=torch.int8), torch.ones(4)
    with pytest.raises(RuntimeError, match="int8 CPU tensor"):
        int8_op(x, w.float(), scale, None)
    with pytest.raises(RuntimeError, match="x has 9 features, the weight 8"):
        int8_op(torch.randn(1, 9), w, scale, None)
    with pytest.raises(RuntimeError, match="scale has 3 values, the weight 4 rows"):
        int8_op(x, w, torch.ones(3), None)
    with pytest.raises(RuntimeError, match="bias has 5 values"):
        int8_op(x, w, scale, torch.ones(5))
    with pytest.raises(RuntimeError, match="gemv_fp32: weight must be a contiguous 2-d fp32"):
        torch.ops.nanophi.gemv_fp32(x, w, None)


def test_nanophi_gemv_0_gives_none_after_one_warning(monkeypatch):
    monkeypatch.setenv("NANOPHI_GEMV", "0")
    monkeypatch.setattr(gemv, "_state", {})  # as a fresh process: the kernel not yet asked for
    with pytest.warns(UserWarning, match=r"^bf16 gemv kernel unavailable \(NANOPHI_GEMV=0\); bf16 weights use oneDNN"):
        assert gemv.kernel() is None
    with pytest.warns(UserWarning, match=r"^int8 gemv kernel unavailable \(NANOPHI_GEMV=0\); int8 weights use PyTorch"):
        assert gemv.int8_kernel() is None
    with pytest.warns(UserWarning, match=r"^fp32 gemv kernel unavailable \(NANOPHI_GEMV=0\); batched fp32"):
        assert gemv.fp32_kernel() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked again: the answer is remembered, no second warning
        assert gemv.kernel() is None and gemv.int8_kernel() is None and gemv.fp32_kernel() is None
