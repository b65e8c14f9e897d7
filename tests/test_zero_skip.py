"""Batch-1 activation zero-skipping (EIE) in sparse pointwise layers (linear, 1x1 conv at
M == 1): when at least a per-layer fraction of the input column is exactly zero (shown by
Model.layers() as "... | zero-skip <kernel> at >= P% zeros": 50%, or 80% when the row
kernel it replaces is the fast AVX-512 row-tile codebook kernel) the layer runs the CSC scatter kernel (spmv_csc_*), which never touches the columns of zero inputs,
and reports the MACs it skipped in Model.counters['skipped_macs']:

    skipped_macs (per run, per layer) = sum over k with x[k] == 0 of nnz(W[:, k])

(0 when the layer ran the row kernel, i.e. fewer zeros than the threshold). macs_f32 stays
the static M * nnz of the plan; the MACs executed are macs_f32 - skipped_macs.

Outputs are compared against a dense float64 numpy reference with the bound of
test_sparse_layers.py: |y - y_ref| <= 1e-5 * (sum_k |w_nk| |x_k| + |b_n|). The CSC kernel
runs on one thread (a column split would make float results depend on the thread count),
so outputs and counters are identical for 1, 2 and 3 threads.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import deepsqueeze
from deepsqueeze import format as F
from deepsqueeze.builder import GraphBuilder
from deepsqueeze.encode import decode_tensor

THREADS = (1, 2, 3)
REL = 1e-5


def zero_skip_threshold(model, name, shape):
    """(CSC kernel, min zero fraction) that layers() reports for layer `name`."""
    k = [L for L in model.layers([shape]) if L["name"] == name][0]["kernel"]
    m = re.search(r"\| zero-skip (spmv_csc\w+) at >= (\d+)% zeros$", k)
    assert m, f"layer {name}: no zero-skip variant in {k!r}"
    return m.group(1), int(m.group(2)) / 100


def sparse_matrix(rng, rows, cols, density, cb_bits=None):
    mask = rng.random((rows, cols)) < density
    mask[:, 3] = False  # an empty column
    scale = 1.0 / np.sqrt(max(1.0, cols * density))
    if cb_bits is None:
        w = rng.standard_normal((rows, cols)) * scale
        w = np.where(np.abs(w) < 1e-3 * scale, 1e-3 * scale, w)
    else:
        n = 1 << cb_bits
        table = rng.uniform(0.1, 1.0, n) * rng.choice([-1.0, 1.0], n) * scale * 1.7
        w = table[rng.integers(0, n, (rows, cols))]
    return np.where(mask, w, 0.0).astype(np.float32)


def enc_args(vals):
    if vals == "f32":
        return "f32", {"layout": "csr"}, None
    return "codebook", {"layout": "csr", "codebook_bits": 5}, 5


def hidden_bias(rng, w1, x, zero_frac):
    """A bias for fc1 that puts exactly round(zero_frac * h) of the hidden units below 0
    (by a margin of >= 0.1, so float32 rounding cannot flip them) and the rest above."""
    pre = w1.astype(np.float64) @ x[0].astype(np.float64)
    h = pre.size
    zero = np.zeros(h, bool)
    zero[rng.permutation(h)[: int(round(zero_frac * h))]] = True
    off = rng.uniform(0.1, 1.0, h)
    return (np.where(zero, -off, off) - pre).astype(np.float32), zero


def ref(x, w1, b1, w2, b2):
    x64 = x.astype(np.float64)
    h = np.maximum(x64 @ w1.T.astype(np.float64) + b1, 0.0)
    y = h @ w2.T.astype(np.float64) + b2
    mag = np.maximum(h, 0) @ np.abs(w2.T.astype(np.float64)) + np.abs(b2)
    return y, mag, h


def check_close(got, want, mag, what):
    assert got.shape == want.shape, what
    err = np.abs(got.astype(np.float64) - want)
    bad = err > REL * mag
    assert not bad.any(), f"{what}: {int(bad.sum())} outputs off (max err {err.max():.3g})"


def build_with_bias(rng, vals, zero_frac, relu_node=False, k=120, h=200, o=30):
    """x (1, k) -> sparse linear + relu -> sparse linear, fc1's bias chosen so that
    `zero_frac` of the hidden units are zero on the returned x. Returns (bytes, x, W1, b1,
    W2, b2, zero mask) with W1/W2 decoded from the file."""
    values, enc, cb = enc_args(vals)
    x = rng.standard_normal((1, k)).astype(np.float32)
    x[x == 0] = 0.5
    w1 = sparse_matrix(rng, h, k, 0.2, cb)
    w2 = sparse_matrix(rng, o, h, 0.15, cb)
    b1, zero = hidden_bias(rng, w1, x, zero_frac)
    b2 = rng.standard_normal(o).astype(np.float32)
    g = GraphBuilder()
    xi = g.add_input("x", (-1, k))
    i1 = g.add_weight("w1", w1, values=values, **enc)
    ib1 = g.add_weight("b1", b1)
    i2 = g.add_weight("w2", w2, values=values, **enc)
    ib2 = g.add_weight("b2", b2)
    if relu_node:
        y = g.add_node("linear", [xi], weights=[i1, ib1], name="fc1")
        y = g.add_node("relu", [y], name="relu1")
    else:
        y = g.add_node("linear", [xi], weights=[i1, ib1], attrs={"activation": "relu"}, name="fc1")
    y = g.add_node("linear", [y], weights=[i2, ib2], name="fc2")
    g.mark_output(y, "y")
    f = g.build({"dsq.producer": "tests/test_zero_skip"})
    w1d, w2d = decode_tensor(f.tensors[i1]), decode_tensor(f.tensors[i2])
    assert np.allclose(w1d, w1, rtol=1e-6, atol=0)
    return F.to_bytes(f), x, w1d, b1, w2d, b2, zero


def expected_skipped(w, x_col, threshold):
    """sum over zero inputs of their column's nonzeros, when the zero fraction reaches the
    threshold (else the row kernel runs and nothing is skipped)."""
    zero = x_col == 0
    assert threshold in (0.5, 0.8), threshold
    if zero.sum() < threshold * zero.size:
        return 0
    return int(np.count_nonzero(w[:, zero]))


@pytest.mark.parametrize("relu_node", [False, True], ids=["fused-relu", "relu-node"])
@pytest.mark.parametrize("vals,frac", [("f32", 0.6), ("cb5", 0.6), ("cb5", 0.85)])
def test_mlp_zero_skip(vals, frac, relu_node):
    rng = np.random.default_rng(7 if vals == "f32" else 8)
    data, x, w1, b1, w2, b2, zero = build_with_bias(rng, vals, frac, relu_node)
    want, mag, h = ref(x, w1, b1, w2, b2)
    assert np.array_equal(h[0] == 0, zero)  # `frac` of the hidden units are zero
    _, thr = zero_skip_threshold(deepsqueeze.load(data, threads=1), "fc2", (1, 120))
    skip = expected_skipped(w2, h[0], thr)
    if frac >= thr:
        assert skip == int(np.count_nonzero(w2[:, zero])) > 0
    else:
        assert skip == 0  # cb5 vs the AVX-512 row-tile kernel: 60% is below its 80%
    outs, counters = [], []
    for t in THREADS:
        m = deepsqueeze.load(data, threads=t)
        m.reset_counters()
        outs.append(m.run(x))
        counters.append(dict(m.counters))
        check_close(outs[-1], want, mag, f"threads={t}")
        fc2 = [L for L in m.layers([(1, 120)]) if L["name"] == "fc2"][0]
        csc, _ = zero_skip_threshold(m, "fc2", (1, 120))
        assert ("_cb_" in csc) == (vals == "cb5"), fc2["kernel"]
        assert fc2["cost"]["skipped_macs"] == 0  # static cost: nothing skipped
    c = counters[0]
    assert c["skipped_macs"] == skip, (c["skipped_macs"], skip)
    assert c["macs_f32"] == np.count_nonzero(w1) + np.count_nonzero(w2)
    for key in ("runs", "macs_f32", "macs_int8", "macs_int4", "weight_bytes", "activation_bytes"):
        assert key in c
    for t, o, cc in zip(THREADS[1:], outs[1:], counters[1:]):
        assert np.array_equal(o, outs[0]), f"threads={t} output differs"
        assert cc == c, f"threads={t} counters {cc} != {c}"


def test_skipped_accumulates_and_resets():
    rng = np.random.default_rng(9)
    data, x, w1, b1, w2, b2, zero = build_with_bias(rng, "f32", 0.6)
    skip = int(np.count_nonzero(w2[:, zero]))
    m = deepsqueeze.load(data, threads=2)
    m.reset_counters()
    for _ in range(3):
        m.run(x)
    assert m.counters["runs"] == 3 and m.counters["skipped_macs"] == 3 * skip
    m.reset_counters()
    assert m.counters["skipped_macs"] == 0


def test_no_zeros_skips_nothing():
    rng = np.random.default_rng(10)
    data, x, w1, b1, w2, b2, zero = build_with_bias(rng, "cb5", 0.0)
    assert not zero.any()
    want, mag, h = ref(x, w1, b1, w2, b2)
    m = deepsqueeze.load(data, threads=1)
    m.reset_counters()
    check_close(m.run(x), want, mag, "no zeros")
    assert m.counters["skipped_macs"] == 0


def test_below_threshold_runs_row_kernel():
    """40% zeros: the row kernel runs, nothing is reported as skipped."""
    rng = np.random.default_rng(11)
    data, x, w1, b1, w2, b2, zero = build_with_bias(rng, "f32", 0.4)
    want, mag, h = ref(x, w1, b1, w2, b2)
    m = deepsqueeze.load(data, threads=1)
    m.reset_counters()
    check_close(m.run(x), want, mag, "40% zeros")
    assert m.counters["skipped_macs"] == 0


@pytest.mark.parametrize("frac", [0.5, 0.9, 1.0])
def test_zero_input_first_layer(frac):
    """Zeros in the graph input itself (fc1 skips too); all-zero input gives bias-only."""
    rng = np.random.default_rng(12)
    data, x, w1, b1, w2, b2, _ = build_with_bias(rng, "f32", 0.6)
    x = x.copy()
    x[0, rng.permutation(x.shape[1])[: int(round(frac * x.shape[1]))]] = 0.0
    want, mag, h = ref(x, w1, b1, w2, b2)
    m1 = deepsqueeze.load(data, threads=1)
    t1, t2 = (zero_skip_threshold(m1, n, x.shape)[1] for n in ("fc1", "fc2"))
    skip = expected_skipped(w1, x[0], t1) + expected_skipped(w2, h[0], t2)
    assert expected_skipped(w1, x[0], t1) > 0
    outs = []
    for t in THREADS:
        m = deepsqueeze.load(data, threads=t)
        m.reset_counters()
        outs.append(m.run(x))
        check_close(outs[-1], want, mag, f"frac={frac} threads={t}")
        assert m.counters["skipped_macs"] == skip, (t, m.counters["skipped_macs"], skip)
        assert np.array_equal(outs[-1], outs[0])


def test_batch_gt1_does_not_skip():
    rng = np.random.default_rng(13)
    data, x, w1, b1, w2, b2, _ = build_with_bias(rng, "f32", 0.6)
    xb = np.repeat(x, 3, axis=0)
    xb[1] = 0.0
    want, mag, _ = ref(xb, w1, b1, w2, b2)
    m = deepsqueeze.load(data, threads=2)
    m.reset_counters()
    check_close(m.run(xb), want, mag, "batch 3")
    assert m.counters["skipped_macs"] == 0


def test_conv1x1_batch1_zero_skip():
    rng = np.random.default_rng(14)
    cin, cout = 64, 48
    w = sparse_matrix(rng, cout, cin, 0.3).reshape(cout, cin, 1, 1)
    b = rng.standard_normal(cout).astype(np.float32)
    g = GraphBuilder()
    xi = g.add_input("x", (-1, cin, -1, -1))
    wi = g.add_weight("w", w, layout="csr")
    bi = g.add_weight("b", b)
    y = g.add_node("conv2d", [xi], weights=[wi, bi], name="conv")
    g.mark_output(y, "y")
    f = g.build({"dsq.producer": "tests/test_zero_skip"})
    wd = decode_tensor(f.tensors[wi]).reshape(cout, cin)
    data = F.to_bytes(f)
    x = rng.standard_normal((1, cin, 1, 1)).astype(np.float32)
    x[0, rng.permutation(cin)[:45], 0, 0] = 0.0
    want = wd.astype(np.float64) @ x[0, :, 0, 0].astype(np.float64) + b
    mag = np.abs(wd.astype(np.float64)) @ np.abs(x[0, :, 0, 0].astype(np.float64)) + np.abs(b)
    m = deepsqueeze.load(data, threads=3)
    assert "zero-skip spmv_csc_f32" in m.layers([(1, cin, 1, 1)])[0]["kernel"]
    m.reset_counters()
    check_close(m.run(x)[0, :, 0, 0], want, mag, "conv1x1")
    assert m.counters["skipped_macs"] == expected_skipped(wd, x[0, :, 0, 0], 0.5) > 0
    # 1x1 conv over 3x3 pixels (M = 9): the spmm path, nothing skipped
    m.reset_counters()
    m.run(np.zeros((1, cin, 3, 3), np.float32))
    assert m.counters["skipped_macs"] == 0
