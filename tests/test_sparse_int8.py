"""The sparse int8 path (spmm_qu8 family): activations quantized per tensor to u8, sparse
weights as int8 per row, int32 accumulation, the dense int8 path's epilogue
    y = clamp(fma(float(acc - zero * rowsum[n]), a_scale * w_scale[n], bias[n]), lo, hi).
Chosen when the file asks for quantized activations (input_quant) on int8_channel
weights, or forced by kernel name (any values: they are quantized per row at load).

Checks: the VNNI kernel is bit-identical to the scalar reference, and both to themselves
over 1..3 threads; batch 1, odd batches and more than one 256-row chunk; kxk convs; the
result equals a numpy model of the same integer arithmetic (static input_quant, so the
quantization parameters are known) to 1 float32 ulp (numpy has no fused multiply-add);
MACs are counted as int8.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import deepsqueeze

from test_sparse_layers import build, encode_args, sparse_matrix

KERNELS = {k["name"]: k for k in deepsqueeze.kernels() if k["family"] == "spmm_qu8"}
SCALAR = "spmm_qu8_4__scalar"
VNNI = "spmm_qu8_64__avx512vnni"


def variants():
    """Every spmm_qu8 kernel this CPU runs (the scalar reference always); not the batch-1
    spmv_qu8 row-tile kernels, which the op layer picks for m == 1 itself."""
    return [n for n, k in KERNELS.items() if k["supported"] and not n.startswith("spmv_")]


def outputs(data, x, kernel, threads=(1, 2, 3)):
    outs = []
    for t in threads:
        m = deepsqueeze.load(data, threads=t, force_kernel=kernel)
        assert m.layers([x.shape])[0]["kernel"].startswith(kernel), m.layers([x.shape])[0]["kernel"]
        outs.append(m.run(x))
    for o in outs[1:]:
        assert np.array_equal(o, outs[0]), kernel
    return outs[0]


ENCODINGS = [("csr", "int8"), ("rel4", "cb5"), ("blk1x4", "f32"), ("rel8", "cbrow3"), ("blk8x1", "int4")]


@pytest.mark.parametrize("layout,vals", ENCODINGS, ids=[f"{a}-{b}" for a, b in ENCODINGS])
def test_linear_kernels_agree(layout, vals):
    rng = np.random.default_rng(abs(hash((layout, vals))) % 2**32)
    values, enc, cb_bits, per_row = encode_args(layout, vals, True)
    N, K = 45, 300
    w = sparse_matrix(rng, N, K, 0.25, cb_bits, per_row, zero_in_table=layout.startswith("blk"))
    b = rng.standard_normal(N).astype(np.float32)
    data, t, wd, _ = build("linear", w, enc, bias=b, attrs={"activation": 1}, in_dims=(-1, K), values=values,
                           huffman=True)
    for batch in (1, 3, 67, 300):
        x = rng.standard_normal((batch, K)).astype(np.float32)
        ref = outputs(data, x, SCALAR)
        for kname in variants():
            assert np.array_equal(outputs(data, x, kname), ref), (kname, batch)
        # Quantization error against the float layer: a few % of the output scale.
        yf = np.maximum(x.astype(np.float64) @ wd.T.astype(np.float64) + b, 0)
        assert np.abs(ref - yf).max() <= 0.05 * np.abs(yf).max() + 1e-6, (batch, np.abs(ref - yf).max())


def quantize_np(x, scale, zero):
    return np.clip(np.rint(x.astype(np.float32) / np.float32(scale)) + zero, 0, 255).astype(np.int64)


def test_static_input_quant_selects_int8_and_matches_integer_model():
    """A file with input_quant on int8_channel weights runs the int8 path by itself; the
    output equals the integer model computed in numpy."""
    rng = np.random.default_rng(21)
    values, enc, _, _ = encode_args("rel4", "int8", True)
    N, K = 33, 200
    w = sparse_matrix(rng, N, K, 0.3)
    b = rng.standard_normal(N).astype(np.float32)
    scale, zero = 0.02, 128
    data, t, wd, _ = build("linear", w, enc, bias=b, attrs={"input_quant": [scale, float(zero)]}, in_dims=(-1, K),
                           values=values, huffman=True)
    m = deepsqueeze.load(data, threads=2)
    L = m.layers()[0]
    assert "spmm_qu8" in L["kernel"] and "static act quant" in L["kernel"], L["kernel"]
    # stream decode does not apply to int8 layers: same path, same outputs
    assert deepsqueeze.load(data, decode="stream").layers()[0]["decode"] == "load"
    x = rng.standard_normal((70, K)).astype(np.float32) * 2
    y = m.run(x)
    # The integer model: the stored int8 values and per-row scales, u8 activations.
    scales = np.frombuffer(next(s.data for s in t.streams if s.role == "scales"), "<f4").astype(np.float64)
    q = np.where(scales[:, None] != 0, np.rint(wd / np.where(scales == 0, 1, scales)[:, None]), 0).astype(np.int64)
    qx = quantize_np(x, scale, zero)
    acc = qx @ q.T - zero * q.sum(axis=1)
    comb = (np.float32(scale) * scales.astype(np.float32)).astype(np.float64)
    want = (acc.astype(np.float32).astype(np.float64) * comb + b).astype(np.float32)
    ulp = np.spacing(np.abs(want).astype(np.float32))
    assert np.all(np.abs(y - want) <= ulp), np.abs(y - want).max()
    m.reset_counters()
    m.run(x)
    nnz = int(np.count_nonzero(wd))
    assert m.counters["macs_int8"] == 70 * nnz and m.counters["macs_f32"] == 0


@pytest.mark.parametrize("layout,vals", [("csr", "int8"), ("rel4", "cb5")])
def test_conv3x3(layout, vals):
    rng = np.random.default_rng(5)
    values, enc, cb_bits, per_row = encode_args(layout, vals, True)
    cin, cout = 5, 18
    w = sparse_matrix(rng, cout, cin * 9, 0.3, cb_bits, per_row).reshape(cout, cin, 3, 3)
    attrs = {"padding": [1, 1], "stride": [2, 1]}
    data, _, _, _ = build("conv2d", w, enc, bias=None, attrs=attrs, in_dims=(-1, cin, 9, 12), values=values,
                          huffman=False)
    x = rng.standard_normal((2, cin, 9, 12)).astype(np.float32)
    ref = outputs(data, x, SCALAR)
    for kname in variants():
        assert np.array_equal(outputs(data, x, kname), ref), kname


def test_vnni_listed():
    assert SCALAR in KERNELS and KERNELS[SCALAR]["supported"]
    assert VNNI in KERNELS  # built on x86; whether it runs depends on the CPU


QUAD = "spmm_qu8_quad_128x16__avx512vnni"


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("stride", [1, 2])
def test_block_pruned_conv_runs_quads(static, stride):
    """Weights pruned in blocks of 4 input channels fill their quads: a file with static
    input_quant picks the quad kernel by itself (on a CPU that runs it), on the direct path
    for stride 1 and on im2col patches otherwise; every variant (forced by name, which also
    covers dynamic quantization) is bit-identical to the scalar CSR reference, and a NaN
    input gives an all-NaN output as on the other int8 paths."""
    rng = np.random.default_rng(11 + stride)
    cin, cout = 16, 24
    keep = rng.random((cout, cin // 4, 3, 3)) >= 0.7
    w = (rng.standard_normal((cout, cin, 3, 3)) * np.repeat(keep, 4, axis=1)).astype(np.float32)
    attrs = {"padding": [1, 1], "stride": [stride, stride]}
    if static:
        attrs["input_quant"] = [0.03, 120.0]
    values, enc, _, _ = encode_args("csr", "int8", True)
    data, _, _, _ = build("conv2d", w, enc, bias=rng.standard_normal(cout).astype(np.float32), attrs=attrs,
                          in_dims=(-1, cin, 9, 11), values=values, huffman=True)
    auto = deepsqueeze.load(data).layers([(3, cin, 9, 11)])[0]["kernel"]
    if static and KERNELS[QUAD]["supported"]:
        fill = int(re.search(r"\(quads (\d+)% full\)", auto).group(1))  # int8 rounding may zero a few
        assert auto.startswith(QUAD) and fill >= 95, auto
        assert ("direct conv" if stride == 1 else "im2col") in auto, auto
    for batch in (1, 3):
        x = rng.standard_normal((batch, cin, 9, 11)).astype(np.float32)
        ref = outputs(data, x, SCALAR)
        for kname in variants():
            assert np.array_equal(outputs(data, x, kname), ref), (kname, batch)
        for t in (1, 2):
            if static:
                assert np.array_equal(deepsqueeze.load(data, threads=t).run(x), ref), (batch, t)
        x[batch - 1, 5, 4, 7] = np.nan
        for kname in ([""] if static else []) + ["spmm_qu8_quad_4__scalar"] + [k for k in [QUAD] if KERNELS[QUAD]["supported"]]:
            y = deepsqueeze.load(data, threads=2, force_kernel=kname).run(x)
            # A static layer may run micro-batched (a slice per thread): the NaN then
            # fills the bad sample's slice; unsliced, the whole output.
            assert np.isnan(y[batch - 1]).all(), kname
            if not static or batch == 1:
                assert np.isnan(y).all(), kname
