"""Dense codebook weights (layout=dense, values=codebook: k-means weight sharing without
pruning) on linear and conv2d (groups 1) run on the spmm_f32 family with the codes kept
as u8: batch 1 pointwise on the dense code tiles (gemv_cb_*), batch > 1 / kxk conv on the
CSR codebook kernels (spmm_cb_*). Compared against torch.nn.functional (float64) with the
weights decoded by deepsqueeze.encode.decode_tensor, element-wise within
1e-5 * (sum |w||x| + |b|); 1..3 threads bit-identical; kernel names in Model.layers();
counters['macs_f32'] == M * n * k. Grouped (non-depthwise) and depthwise convolutions
keep the decode-to-dense path."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import deepsqueeze
from test_sparse_layers import ACT, build, check_close, check_threads, ref_conv, ref_linear, run_threads

torch = pytest.importorskip("torch")

CASES = [(b, per_row, huff) for b in (1, 5, 8) for per_row in (False, True) for huff in (False, True)]


def _id(p):
    return f"b{p[0]}-{'row' if p[1] else 'tensor'}-{'huff' if p[2] else 'raw'}"


def cb_matrix(rng, rows, cols, bits, per_row):
    n = 1 << bits
    ntab = rows if per_row else 1
    scale = 1.0 / np.sqrt(cols)
    tables = rng.uniform(0.1, 1.0, (ntab, n)) * rng.choice([-1.0, 1.0], (ntab, n)) * scale * 1.7
    idx = rng.integers(0, n, (rows, cols))
    return tables[np.arange(rows)[:, None] % ntab, idx].astype(np.float32)


def enc(bits, per_row):
    e = dict(layout="dense", codebook_bits=bits)
    if per_row:
        e["codebook_per_row"] = True
    return e


def kernel_of(m, shape):
    L = m.layers([shape])
    assert len(L) == 1
    return L[0]["kernel"], L[0]["cost"]["macs_f32"]


def check_macs(data, x, want):
    m = deepsqueeze.load(data, threads=1)
    m.reset_counters()
    m.run(x)
    assert m.counters["macs_f32"] == want


@pytest.mark.parametrize("bits,per_row,huff", CASES, ids=[_id(p) for p in CASES])
def test_linear(bits, per_row, huff):
    """Linear 37 x 300 (n not a multiple of 16, k not of 32), bias, activation, batch 1
    (gemv_cb) and 1, 2, 19 (spmm_cb)."""
    seed = zlib.crc32(f"lin/{bits}/{per_row}/{huff}".encode())
    rng = np.random.default_rng(seed)
    N, K = 37, 300
    w = cb_matrix(rng, N, K, bits, per_row)
    b = rng.standard_normal(N).astype(np.float32)
    act = seed % 3
    data, t, wd, _ = build("linear", w, enc(bits, per_row), bias=b, attrs={"activation": act},
                           in_dims=(-1, K), values="codebook", huffman=huff)
    assert (t.layout, t.values) == ("dense", "codebook")
    assert np.array_equal(wd, w)
    for batch in (1, 2, 19):
        x = rng.standard_normal((batch, K)).astype(np.float32)
        what = f"linear b={bits} per_row={per_row} huff={huff} batch={batch}"
        outs, m = run_threads(data, x)
        k, macs = kernel_of(m, x.shape)
        if batch == 1:
            assert k.startswith("gemv_cb_f32"), f"{what}: {k!r}"
        else:
            assert k.split(" | ")[1].startswith("spmm_cb_f32"), f"{what}: {k!r}"
        assert "decoded" not in k
        assert macs == batch * N * K
        ref, mag = ref_linear(x, wd, b, act)
        check_close(outs[0], ref, mag, what)
        check_threads(outs, what)
        check_macs(data, x, batch * N * K)


@pytest.mark.parametrize("K", [1, 31, 32, 33, 64])
def test_linear_edges(K):
    """k = 1 and around the 32-column window; n = 1, 16, 17."""
    rng = np.random.default_rng(K)
    for N in (1, 16, 17):
        w = cb_matrix(rng, N, K, 5, False)
        data, _, wd, _ = build("linear", w, enc(5, False), in_dims=(-1, K), values="codebook")
        x = rng.standard_normal((1, K)).astype(np.float32)
        outs, m = run_threads(data, x)
        assert kernel_of(m, x.shape)[0].startswith("gemv_cb_f32")
        ref, mag = ref_linear(x, wd, None)
        check_close(outs[0], ref, mag, f"N={N} K={K}")
        check_threads(outs)


@pytest.mark.parametrize("bits,per_row", [(1, False), (5, False), (8, True), (5, True)])
def test_conv1x1(bits, per_row):
    rng = np.random.default_rng(bits * 10 + per_row)
    w = cb_matrix(rng, 40, 24, bits, per_row).reshape(40, 24, 1, 1)
    b = rng.standard_normal(40).astype(np.float32)
    data, _, wd, _ = build("conv2d", w, enc(bits, per_row), bias=b, in_dims=(-1, 24, -1, -1), values="codebook")
    for shape in ((1, 24, 1, 1), (1, 24, 5, 7), (2, 24, 3, 3)):
        x = rng.standard_normal(shape).astype(np.float32)
        outs, m = run_threads(data, x)
        k, macs = kernel_of(m, x.shape)
        rows = shape[0] * shape[2] * shape[3]
        assert k.startswith("gemv_cb_f32") and "decoded" not in k, k
        assert macs == rows * 40 * 24
        ref, mag = ref_conv(x, wd, b, 1, 0, 1)
        check_close(outs[0], ref, mag, f"conv1x1 {shape}")
        check_threads(outs)
        check_macs(data, x, rows * 40 * 24)


@pytest.mark.parametrize("bits,per_row", [(1, False), (5, False), (8, True)])
def test_conv3x3(bits, per_row):
    rng = np.random.default_rng(100 + bits)
    w = cb_matrix(rng, 13, 6 * 9, bits, per_row).reshape(13, 6, 3, 3)
    b = rng.standard_normal(13).astype(np.float32)
    attrs = {"stride": [2, 1], "padding": [1, 1], "activation": 1}
    data, _, wd, _ = build("conv2d", w, enc(bits, per_row), bias=b, attrs=attrs, in_dims=(-1, 6, -1, -1), values="codebook")
    for shape in ((1, 6, 9, 11), (2, 6, 5, 4), (1, 6, 3, 3)):
        x = rng.standard_normal(shape).astype(np.float32)
        outs, m = run_threads(data, x)
        k, macs = kernel_of(m, x.shape)
        assert "im2col" in k and "decoded" not in k and "cb" in k, k
        ref, mag = ref_conv(x, wd, b, (2, 1), (1, 1), 1, 1)
        rows = ref.shape[0] * ref.shape[2] * ref.shape[3]
        assert macs == rows * 13 * 54
        check_close(outs[0], ref, mag, f"conv3x3 {shape}")
        check_threads(outs)
        check_macs(data, x, rows * 13 * 54)


def test_grouped_and_depthwise_stay_decoded():
    rng = np.random.default_rng(7)
    for groups, cin, cout in ((2, 8, 6), (8, 8, 8)):
        w = cb_matrix(rng, cout, (cin // groups) * 9, 4, False).reshape(cout, cin // groups, 3, 3)
        data, _, wd, _ = build("conv2d", w, enc(4, False), attrs={"groups": groups, "padding": [1, 1]}, in_dims=(-1, cin, -1, -1),
                               values="codebook")
        x = rng.standard_normal((1, cin, 5, 5)).astype(np.float32)
        outs, m = run_threads(data, x)
        assert "decoded from" in kernel_of(m, x.shape)[0] and "codebook" in kernel_of(m, x.shape)[0]
        y = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(wd).double(),
                                       padding=1, groups=groups).numpy()
        mag = torch.nn.functional.conv2d(torch.from_numpy(np.abs(x)).double(),
                                         torch.from_numpy(np.abs(wd)).double(), padding=1, groups=groups).numpy()
        check_close(outs[0], y, mag, f"groups={groups}")


def test_forced_kernels():
    rng = np.random.default_rng(3)
    w = cb_matrix(rng, 33, 70, 5, False)
    data, _, wd, _ = build("linear", w, enc(5, False), in_dims=(-1, 70), values="codebook")
    x = rng.standard_normal((1, 70)).astype(np.float32)
    ref, mag = ref_linear(x, wd, None)
    for force in ("gemv_cb_f32__scalar", "spmv_cb_f32__scalar", "spmm_cb_f32_4__scalar"):
        m = deepsqueeze.load(data, threads=2, force_kernel=force)
        assert kernel_of(m, x.shape)[0].startswith(force)
        check_close(m.run(x), ref, mag, force)
    m = deepsqueeze.load(data, threads=1, force_kernel="gemm_f32_4x8__scalar")
    k = kernel_of(m, x.shape)[0]
    assert "decoded from dense:codebook" in k, k
    check_close(m.run(x), ref, mag, "forced gemm_f32")
