"""Every GEMM kernel variant of deepsqueeze._core against numpy references over edge cases
(tile remainders in M and N, tiny and odd K, bias, fused clamps), plus the activation
quantization helpers. Integer families must be bit-exact with their scalar reference, and
the scalar reference must match a float32 model of the documented epilogue."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import deepsqueeze
from deepsqueeze import _core
from deepsqueeze.encode import pack_int4

from conftest import choose_params_np, quantize_np

KERNELS = deepsqueeze.kernels()
KS = (1, 3, 5, 17, 64, 577)
INF = float("inf")
CLAMPS = {"none": (-INF, INF), "relu": (0.0, INF), "relu6": (0.0, 6.0)}


def kid(k):
    return k["name"]


def family(name):
    ks = [k for k in KERNELS if k["family"] == name]
    assert ks, f"no {name} kernels"
    return ks


def scalar_of(fam):
    s = [k for k in KERNELS if k["family"] == fam and k["isa"] == "scalar"]
    assert len(s) == 1, s
    return s[0]


def require(k):
    if not k["supported"]:
        pytest.skip(f"{k['name']}: this CPU lacks {k['isa']}")


def dims(k):
    mr, nr = k["mr"], k["nr"]
    ms = sorted({m for m in (1, 2, mr - 1, mr, mr + 1, 37) if m > 0})
    ns = sorted({n for n in (1, 7, nr - 1, nr, nr + 1, 65) if n > 0})
    return ms, ns


def test_kernel_list_is_sane():
    names = [k["name"] for k in KERNELS]
    assert len(names) == len(set(names))
    for fam in ("gemm_f32", "gemm_qu8", "gemm_q4"):
        assert scalar_of(fam)["supported"]
    for k in KERNELS:
        assert k["mr"] >= 1 and k["nr"] >= 1
        # the sparse family's kernels say their variant: spmm_*, spmm_cb_*, spmv_*, gemv_cb_*
        prefixes = {"spmm_f32": ("spmm_", "spmv_", "gemv_cb_"), "spmm_qu8": ("spmm_qu8", "spmv_qu8")}.get(
            k["family"], (k["family"],))
        assert k["name"].startswith(prefixes)
        assert isinstance(k["supported"], bool)


# ---------------------------------------------------------------------------------------
# float32 model of the integer epilogues: a correctly rounded float32 fma
# ---------------------------------------------------------------------------------------


def fma_f32(a, b, c):
    """float32 fma(a, b, c) = round_f32(a * b + c), vectorized and correctly rounded.

    a * b of two float32 is exact in float64; the float64 sum s is corrected for double
    rounding with its exact error (TwoSum) when s falls on a float32 midpoint."""
    a = np.asarray(a, np.float32).astype(np.float64)
    b = np.asarray(b, np.float32).astype(np.float64)
    c = np.asarray(c, np.float32).astype(np.float64)
    p = a * b
    s = p + c
    bb = s - p
    e = (p - (s - bb)) + (c - bb)
    r0 = s.astype(np.float32)
    r0d = r0.astype(np.float64)
    toward = np.where(s > r0d, np.float32(INF), np.float32(-INF)).astype(np.float32)
    r1 = np.nextafter(r0, toward)
    mid = (r0d + r1.astype(np.float64)) / 2
    is_mid = (s != r0d) & (s == mid) & (e != 0)
    up = np.maximum(r0, r1)
    down = np.minimum(r0, r1)
    return np.where(is_mid, np.where(e > 0, up, down), r0).astype(np.float32)


def test_fma_f32_model():
    # a * b = 1 + 2^-24 - 2^-47 (exact), c = 2^-47 + 2^-70: the exact sum 1 + 2^-24 + 2^-70
    # lies just above a float32 midpoint, so fma rounds up, while float64 then float32
    # (double rounding) would give the even neighbour 1.0.
    a = np.float32(1 + 2.0 ** -23)
    b = np.float32(1 - 2.0 ** -24)
    c = np.float32(2.0 ** -47 + 2.0 ** -70)
    assert np.float32(np.float64(a) * np.float64(b) + np.float64(c)) == np.float32(1.0)
    assert fma_f32(a, b, c) == np.float32(1 + 2.0 ** -23)
    assert fma_f32(a, b, -c) == np.float32(1.0)
    one = np.float32(1.0)
    assert fma_f32(one, one, one) == np.float32(2)


def clamp(v, lo, hi):
    v = np.where(v > np.float32(lo), v, np.float32(lo))
    return np.where(v < np.float32(hi), v, np.float32(hi)).astype(np.float32)


def qu8_model(qa, qw, w_scale, bias, a_zero, a_scale, lo, hi):
    acc = qa.astype(np.int64) @ qw.astype(np.int64).T
    colsum = qw.astype(np.int64).sum(axis=1)
    x = (acc - a_zero * colsum[None, :]).astype(np.float32)
    scale = (np.float32(a_scale) * w_scale.astype(np.float32)).astype(np.float32)
    b = np.zeros(qw.shape[0], np.float32) if bias is None else bias.astype(np.float32)
    return clamp(fma_f32(x, scale[None, :], b[None, :]), lo, hi)


def q4_model(qa, qw, group, w_scale, bias, a_zero, a_scale, lo, hi):
    m, k = qa.shape
    n = qw.shape[0]
    groups = -(-k // group)
    ws = w_scale.reshape(n, groups).astype(np.float32)
    s = np.zeros((m, n), np.float32)
    for g in range(groups):
        sl = slice(g * group, min(k, (g + 1) * group))
        acc = qa[:, sl].astype(np.int64) @ qw[:, sl].astype(np.int64).T
        gsum = qw[:, sl].astype(np.int64).sum(axis=1)
        x = (acc - a_zero * gsum[None, :]).astype(np.float32)
        scale = (np.float32(a_scale) * ws[:, g]).astype(np.float32)
        s = fma_f32(x, scale[None, :], s)
    b = np.zeros(n, np.float32) if bias is None else bias.astype(np.float32)
    return clamp((s + b[None, :]).astype(np.float32), lo, hi)


def cases(k, kval, rng):
    """(M, N, bias?, clamp) combinations for one kernel and K: every (M, N) pair of the
    edge grid, cycling through bias and clamp choices so every combination appears."""
    ms, ns = dims(k)
    extras = list(itertools.product((False, True), CLAMPS))
    for i, (m, n) in enumerate(itertools.product(ms, ns)):
        has_bias, cl = extras[(i + kval) % len(extras)]
        yield m, n, has_bias, cl


# ---------------------------------------------------------------------------------------
# gemm_f32
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("kernel", family("gemm_f32"), ids=kid)
def test_gemm_f32(kernel, K):
    require(kernel)
    rng = np.random.default_rng(K)
    for m, n, has_bias, cl in cases(kernel, K, rng):
        a = rng.standard_normal((m, K)).astype(np.float32)
        w = rng.standard_normal((n, K)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32) * 3 if has_bias else None
        lo, hi = CLAMPS[cl]
        got = _core.gemm_f32(kernel["name"], a, w, bias, lo, hi)
        assert got.shape == (m, n) and got.dtype == np.float32
        b64 = np.zeros(n) if bias is None else bias.astype(np.float64)
        ref = np.clip(a.astype(np.float64) @ w.astype(np.float64).T + b64, lo, hi)
        tol = 1e-5 * (np.abs(a).astype(np.float64) @ np.abs(w).astype(np.float64).T + np.abs(b64)) + 1e-6
        err = np.abs(got - ref)
        assert np.all(err <= tol), (
            f"{kernel['name']} M={m} N={n} K={K} bias={has_bias} clamp={cl}: "
            f"max err {err.max():.3g} at {np.unravel_index(np.argmax(err - tol), err.shape)}")


@pytest.mark.parametrize("kernel", family("gemm_f32"), ids=kid)
def test_gemm_f32_strided_and_zero_weights(kernel):
    """Non-contiguous inputs are forcecast; all-zero weights give exactly the clamped bias."""
    require(kernel)
    rng = np.random.default_rng(7)
    m, n, K = kernel["mr"] + 1, kernel["nr"] + 1, 17
    a = rng.standard_normal((m, 2 * K)).astype(np.float32)[:, ::2]
    w = np.zeros((n, K), np.float32)
    bias = np.linspace(-8, 8, n).astype(np.float32)
    got = _core.gemm_f32(kernel["name"], a, w, bias, 0.0, 6.0)
    assert np.array_equal(got, np.broadcast_to(np.clip(bias, 0, 6), (m, n)))


# ---------------------------------------------------------------------------------------
# gemm_qu8
# ---------------------------------------------------------------------------------------


def qu8_operands(rng, m, n, K, a_zero):
    qa = rng.integers(0, 256, (m, K), dtype=np.uint8)
    qa.flat[:: 7] = 255
    qa.flat[3:: 11] = 0
    qw = rng.integers(-128, 128, (n, K), dtype=np.int8)
    qw.flat[:: 5] = 127
    qw.flat[2:: 9] = -128
    if n > 1:
        qw[-1, :] = -128  # a whole column at the negative extreme
    w_scale = (rng.uniform(0.5, 2.0, n) * 1e-2).astype(np.float32)
    return qa, qw, w_scale


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("kernel", family("gemm_qu8"), ids=kid)
def test_gemm_qu8(kernel, K):
    require(kernel)
    ref_name = scalar_of("gemm_qu8")["name"]
    rng = np.random.default_rng(100 + K)
    for i, (m, n, has_bias, cl) in enumerate(cases(kernel, K, rng)):
        a_zero = (0, 128, 255)[i % 3]
        a_scale = np.float32(rng.uniform(0.001, 0.05))
        qa, qw, w_scale = qu8_operands(rng, m, n, K, a_zero)
        bias = rng.standard_normal(n).astype(np.float32) if has_bias else None
        lo, hi = CLAMPS[cl]
        args = (qa, qw, w_scale, bias, a_zero, float(a_scale), lo, hi)
        got = _core.gemm_qu8(kernel["name"], *args)
        ref = _core.gemm_qu8(ref_name, *args)
        where = f"{kernel['name']} M={m} N={n} K={K} a_zero={a_zero} bias={has_bias} clamp={cl}"
        assert got.shape == (m, n)
        assert np.array_equal(got, ref), (
            f"{where}: not bit-identical to {ref_name}; {np.sum(got != ref)} differ, "
            f"max |diff| {np.abs(got - ref).max():.3g}")
        if kernel["isa"] == "scalar":
            model = qu8_model(qa, qw, w_scale, bias, a_zero, a_scale, lo, hi)
            assert np.array_equal(ref, model), (
                f"{where}: scalar reference differs from the documented epilogue in "
                f"{np.sum(ref != model)} places, max |diff| {np.abs(ref - model).max():.3g}")


# ---------------------------------------------------------------------------------------
# gemm_q4
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("group", (8, 32, 128))
@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("kernel", family("gemm_q4"), ids=kid)
def test_gemm_q4(kernel, K, group):
    require(kernel)
    ref_name = scalar_of("gemm_q4")["name"]
    rng = np.random.default_rng(1000 + K * 7 + group)
    ms, ns = dims(kernel)
    # Sample the (M, N) grid (the q4 grid is 3x larger because of the group sizes).
    pairs = list(itertools.product(ms, ns))
    pairs = pairs[(K + group) % 2::2] + [(ms[-1], ns[-1])]
    extras = list(itertools.product((False, True), CLAMPS))
    for i, (m, n) in enumerate(pairs):
        has_bias, cl = extras[(i + K + group) % len(extras)]
        a_zero = (0, 128, 255)[(i + group) % 3]
        a_scale = np.float32(rng.uniform(0.001, 0.05))
        qa = rng.integers(0, 256, (m, K), dtype=np.uint8)
        qa.flat[::7] = 255
        qw = rng.integers(-8, 8, (n, K), dtype=np.int8)
        qw.flat[::5] = 7
        qw.flat[1::6] = -8
        groups = -(-K // group)
        w_scale = (rng.uniform(0.5, 2.0, n * groups) * 1e-1).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32) if has_bias else None
        lo, hi = CLAMPS[cl]
        nib = pack_int4(qw.reshape(-1))
        args = (qa, nib, n, K, group, w_scale, bias, a_zero, float(a_scale), lo, hi)
        got = _core.gemm_q4(kernel["name"], *args)
        ref = _core.gemm_q4(ref_name, *args)
        where = (f"{kernel['name']} M={m} N={n} K={K} group={group} a_zero={a_zero} "
                 f"bias={has_bias} clamp={cl}")
        assert got.shape == (m, n)
        assert np.array_equal(got, ref), (
            f"{where}: not bit-identical to {ref_name}; {np.sum(got != ref)} differ, "
            f"max |diff| {np.abs(got - ref).max():.3g}")
        if kernel["isa"] == "scalar":
            model = q4_model(qa, qw, group, w_scale, bias, a_zero, a_scale, lo, hi)
            assert np.array_equal(ref, model), (
                f"{where}: scalar reference differs from the documented epilogue in "
                f"{np.sum(ref != model)} places, max |diff| {np.abs(ref - model).max():.3g}")


def test_gemm_hooks_reject_unknown_kernel():
    a = np.zeros((1, 4), np.float32)
    with pytest.raises(ValueError, match="not available"):
        _core.gemm_f32("gemm_f32_no_such_kernel", a, a, None, -INF, INF)


# ---------------------------------------------------------------------------------------
# activation quantization
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("K", (1, 3, 15, 16, 17, 63, 64, 65, 577))
def test_quantize_u8_matches_numpy(K):
    rng = np.random.default_rng(K)
    m = 5
    x = (rng.standard_normal((m, K)) * 3).astype(np.float32)
    x.flat[::4] *= 100  # values far outside the range: clamp to 0 / 255
    for lo, hi in ((float(x.min()), float(x.max())), (-1.0, 1.0), (0.0, 2.5), (-4.0, 0.0)):
        scale, zero = _core.choose_quant_params(lo, hi)
        q = _core.quantize_u8(x, scale, zero)
        kp = (K + 3) // 4 * 4
        assert q.shape == (m, kp) and q.dtype == np.uint8
        assert np.array_equal(q[:, :K], quantize_np(x, scale, zero)), (lo, hi, scale, zero)
        assert not q[:, K:].any(), "k padding must be zero"


@pytest.mark.parametrize("K", (1, 7, 16, 33, 64, 100))
def test_quantize_u8_ties_round_half_to_even(K):
    """x / scale exactly halfway between integers rounds to the even one (np.rint)."""
    scale = 0.25
    for zero in (0, 128, 255):
        n = np.arange(-600, 600)
        vals = ((n + 0.5) * scale).astype(np.float32)  # exact in float32
        x = np.resize(vals, (len(vals) // K + 1) * K).reshape(-1, K).astype(np.float32)
        q = _core.quantize_u8(x, scale, zero)[:, :K]
        assert np.array_equal(q, quantize_np(x, scale, zero))
        # spot check the tie rule itself: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> -0
        t = np.array([[0.125, 0.375, 0.625, -0.125]], np.float32)
        got = _core.quantize_u8(t, scale, 128)[0, :4].astype(int) - 128
        assert list(got) == [0, 2, 2, 0]


@pytest.mark.parametrize("K", (3, 16, 37))
def test_quantize_u8_non_finite(K):
    """Documented (gemm_qu8.h quantize_scalar): NaN -> 0; +inf clamps to 255, -inf to 0."""
    x = np.zeros((2, K), np.float32)
    x[0, 0] = np.nan
    x[0, 1] = np.inf
    x[0, 2] = -np.inf
    x[1, -1] = np.nan
    q = _core.quantize_u8(x, 0.1, 7)[:, :K]
    assert q[0, 0] == 0 and q[0, 1] == 255 and q[0, 2] == 0 and q[1, -1] == 0
    assert np.all(q[1, :-1] == 7)


def test_quantize_u8_non_power_of_two_scale():
    rng = np.random.default_rng(3)
    x = rng.uniform(-10, 10, (9, 131)).astype(np.float32)
    scale = np.float32(20.0 / 255.0)
    # Values exactly at k * scale (+ half a step) in float32, where x / scale may land on a tie.
    k = rng.integers(-127, 128, x.shape)
    x[::2] = (k[::2] * scale + scale / 2).astype(np.float32)
    q = _core.quantize_u8(x, float(scale), 127)[:, :131]
    assert np.array_equal(q, quantize_np(x, scale, 127))


def test_choose_quant_params_properties():
    rng = np.random.default_rng(11)
    ranges = [(0.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (-1.0, 1.0), (-3e38, 3e38), (1.0, 2.0),
              (-2.0, -1.0), (-1e-30, 1e-30), (-0.001, 1000.0), (-1000.0, 0.001)]
    ranges += [tuple(sorted(rng.standard_normal(2) * 10.0 ** rng.integers(-3, 4))) for _ in range(200)]
    for lo, hi in ranges:
        scale, zero = _core.choose_quant_params(lo, hi)
        assert isinstance(zero, int) and 0 <= zero <= 255, (lo, hi, zero)
        assert np.isfinite(scale) and scale > 0, (lo, hi, scale)
        ws, wz = choose_params_np(lo, hi)
        assert np.float32(scale) == ws and zero == wz, ((lo, hi), (scale, zero), (ws, wz))
        lo0, hi0 = min(lo, 0.0), max(hi, 0.0)
        if hi0 > lo0 and hi0 - lo0 < 3e38:
            # The u8 grid [(0 - zero) * scale, (255 - zero) * scale] covers [lo0, hi0] to
            # within one step, and 0.0 is exactly representable (q = zero).
            assert (0 - zero) * scale <= lo0 + scale * 1.001, (lo, hi, scale, zero)
            assert (255 - zero) * scale >= hi0 - scale * 1.001, (lo, hi, scale, zero)
        q0 = _core.quantize_u8(np.zeros((1, 1), np.float32), scale, zero)[0, 0]
        assert q0 == zero
    assert _core.choose_quant_params(0.0, 0.0) == (1.0, 0)
    assert _core.choose_quant_params(0.0, 5.0)[1] == 0
    assert _core.choose_quant_params(-5.0, 0.0)[1] == 255
    assert _core.choose_quant_params(3.0, 5.0)[1] == 0  # the range is widened to contain 0
