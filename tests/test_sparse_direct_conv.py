"""The direct path of stride-1 sparse convolutions (csrc/ops/sparse.cc run_direct): no
im2col, the spmm kernels read shifted windows of one zero-padded input plane per image.

Every case checks, for one conv layer with sparse weights:
- the layer reports "direct conv" by default and "im2col" with force_kernel="im2col";
- the output is close to torch.nn.functional.conv2d in float64 on the decoded weights
  (the float32 dot-product bound of test_sparse_layers.check_close);
- it is bit-identical to the im2col path (same products summed in the same order), to
  decode="stream" (which keeps im2col), and across 1 and 2 threads.
The geometry grid covers kernel sizes 1x1 (padded), 3x3, 5x5, 1x3, dilation 2, paddings
0/1/2, H != W, output widths that are not a multiple of any vector width, cin 1/3/16/128,
cout 1/17/64, batch 1/2/5, f32 and codebook values, planes whose offsets exceed 65535
(u32 columns) and k > 1024 (the AVX-512 kernels block the columns for L2).
"""
from __future__ import annotations

import threading
import zlib

import numpy as np
import pytest

import deepsqueeze
from test_sparse_layers import VALUES, build, check_close, ref_conv, sparse_matrix

# (label, kh, kw, cin, cout, padding, dilation, H, W, batch, values, layout)
CASES = [
    ("1x1-pad1", 1, 1, 3, 17, (1, 1), (1, 1), 5, 7, 2, "f32", "csr"),
    ("3x3-p1-c16-o64", 3, 3, 16, 64, (1, 1), (1, 1), 9, 11, 5, "cb5", "csr"),
    ("5x5-p0-lenet-conv1", 5, 5, 1, 20, (0, 0), (1, 1), 28, 28, 1, "cb8", "csr"),
    ("5x5-p2", 5, 5, 3, 17, (2, 2), (1, 1), 12, 13, 2, "f32", "rel4"),
    ("1x3-p01-cout1", 1, 3, 16, 1, (0, 1), (1, 1), 6, 19, 1, "f32", "csr"),
    ("3x3-d2-p2", 3, 3, 3, 17, (2, 2), (2, 2), 10, 9, 2, "cbrow3", "csr"),
    ("3x3-p0-ow5", 3, 3, 16, 17, (0, 0), (1, 1), 7, 7, 5, "f16", "csr"),
    ("3x3-p1-1x1-input", 3, 3, 3, 17, (1, 1), (1, 1), 1, 1, 2, "f32", "csr"),
    ("3x3-p1-u32-offsets", 3, 3, 16, 4, (1, 1), (1, 1), 64, 63, 1, "cb5", "csr"),
    ("3x3-k1152-blocked-u32", 3, 3, 128, 8, (1, 1), (1, 1), 22, 23, 1, "f32", "csr"),
]


def _make(case, any_size=False, input_quant=None):
    label, kh, kw, cin, cout, pad, dil, H, W, batch, vals, layout = case
    rng = np.random.default_rng(zlib.crc32(label.encode()))
    values, extra, cb_bits, per_row = VALUES[vals]
    enc = {"layout": "csr"} if layout == "csr" else {"layout": "csr_relative", "index_bits": 4}
    enc.update(extra)
    w = sparse_matrix(rng, cout, cin * kh * kw, 0.3, cb_bits, per_row,
                      structure=cout >= 3).reshape(cout, cin, kh, kw)
    b = rng.standard_normal(cout).astype(np.float32)
    act = len(label) % 3
    attrs = {"padding": list(pad), "dilation": list(dil), "activation": act}
    if input_quant is not None:
        attrs["input_quant"] = list(input_quant)
    data, _, wd, _ = build("conv2d", w, enc, bias=b, attrs=attrs, in_dims=(-1, cin, -1 if any_size else H, -1 if any_size else W),
                           values=values)
    x = rng.standard_normal((batch, cin, H, W)).astype(np.float32)
    return data, wd, b, x, attrs


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_direct_matches_reference_and_im2col(case):
    label = case[0]
    data, wd, b, x, attrs = _make(case)
    runs = {}
    for path, kw in (("direct", {}), ("im2col", {"force_kernel": "im2col"}), ("stream", {"decode": "stream"})):
        for t in (1, 2):
            m = deepsqueeze.load(data, threads=t, **kw)
            kernel = m.layers([x.shape])[0]["kernel"]
            assert kernel.startswith(("spmm", "spmv", "stream-decode")), f"{label} {path}: {kernel}"
            assert ("direct conv" in kernel) == (path == "direct"), f"{label} {path}: {kernel}"
            assert ("im2col" in kernel) == (path != "direct"), f"{label} {path}: {kernel}"
            runs[path, t] = m.run(x)
    ref, mag = ref_conv(x, wd, b, (1, 1), tuple(attrs["padding"]), tuple(attrs["dilation"]), attrs["activation"])
    check_close(runs["direct", 1], ref, mag, label)
    for key, y in runs.items():
        assert np.array_equal(y, runs["direct", 1]), (
            f"{label}: {key} differs from direct/1 thread in {int(np.sum(y != runs['direct', 1]))} places")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_int8_direct_matches_im2col(case):
    """Sparse int8 convs (int8 CSR + input_quant: spmm_qu8 on u8 activations) run direct
    on a zero-point padded u8 plane; integer sums make them bit-identical to the im2col
    path, at 1 and 2 threads."""
    label = case[0]
    data, _, _, x, _ = _make(case[:10] + ("int8", case[11]), input_quant=(0.03, 120.0))
    runs = {}
    for path, kw in (("direct", {}), ("im2col", {"force_kernel": "im2col"})):
        for t in (1, 2):
            m = deepsqueeze.load(data, threads=t, **kw)
            kernel = m.layers([x.shape])[0]["kernel"]
            assert "spmm_qu8" in kernel and (("direct conv" in kernel) == (path == "direct")), f"{label} {path}: {kernel}"
            runs[path, t] = m.run(x)
    assert np.isfinite(runs["direct", 1]).all()
    for key, y in runs.items():
        assert np.array_equal(y.view(np.uint32), runs["direct", 1].view(np.uint32)), (
            f"{label}: {key} differs from direct/1 thread in {int(np.sum(y != runs['direct', 1]))} places")


def test_direct_counts_the_same_work():
    """The padded-grid columns the direct path computes and drops are not counted: the
    MACs are N*OH*OW times the nonzeros, as on the im2col path."""
    data, wd, _, x, _ = _make(CASES[3])
    nnz = int(np.count_nonzero(wd))
    for kw in ({}, {"force_kernel": "im2col"}):
        m = deepsqueeze.load(data, threads=1, **kw)
        m.reset_counters()
        y = m.run(x)
        assert m.counters["macs_f32"] == y.shape[0] * y.shape[2] * y.shape[3] * nnz, kw


def test_direct_concurrent_runs_of_different_shapes():
    """One Model run from several Python threads at once on different input sizes (the
    column remap depends on H and W and lives in each run's scratch): every result equals
    the same input run alone."""
    data, _, _, _, _ = _make(CASES[1], any_size=True)
    m = deepsqueeze.load(data, threads=1)
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((2, 16, h, w)).astype(np.float32) for h, w in ((9, 11), (5, 17), (12, 4), (3, 3))]
    alone = [m.run(x) for x in inputs]
    results = {}
    errors = []

    def worker(i):
        try:
            for _ in range(20):
                y = m.run(inputs[i])
                if not np.array_equal(y, alone[i]):
                    results[i] = y
                    return
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert not results, f"concurrent runs differ for inputs {sorted(results)}"
