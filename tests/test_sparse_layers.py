"""linear and conv2d with sparse weights (csr, csr_relative, block_csr) x every values
encoding (f32, f16, int8_channel, int4_group, codebook per tensor / per row) x Huffman,
run by the engine's spmm_f32 family and compared against torch.nn.functional (float64)
with the weights decoded by deepsqueeze.encode.decode_tensor.

Sparse layers always run in f32 (int8/int4/codebook values are decoded to f32 or kept as
codes into an f32 table; activations are never quantized), so every case is a float path
and the bound is the usual one for a float32 dot product:

    |y - y_ref| <= 1e-5 * (sum_k |w_nk| |x_k| + |b_n|)        (element-wise)

where y_ref is computed in float64 from the decoded weights; for a conv the sum runs over
the receptive field (it is conv2d(|x|, |W|) + |b|). A fused activation (clamp) does not
increase the error. An output whose bound is 0 (all-zero weights, no bias) must be exact.

Threads: the float path splits rows (spmv) or chunks of 256 batch/pixel rows (spmm)
between threads, each output element is one per-row sum computed the same way whatever
the split, so results must be bit-identical for 1, 2 and 3 threads (np.array_equal).

Cost: Model.counters['macs_f32'] after one run is M * S, M = batch rows (N for linear,
N*OH*OW for conv) and S = the stored value slots inside the matrix (csr: the nonzeros;
csr_relative: value entries, fillers excluded; block_csr: every slot of every stored block
that lies inside the matrix, zeros included, since the kernel multiplies them).
"""
from __future__ import annotations

import itertools
import platform
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

import deepsqueeze
from deepsqueeze import format as F
from deepsqueeze.builder import GraphBuilder
from deepsqueeze.encode import decode_stored, decode_tensor

torch = pytest.importorskip("torch")
TF = torch.nn.functional

THREADS = (1, 2, 3)
REL = 1e-5

# layout label -> encode_tensor keyword arguments
LAYOUTS = {
    "csr": dict(layout="csr"),
    "rel2": dict(layout="csr_relative", index_bits=2),
    "rel4": dict(layout="csr_relative", index_bits=4),
    "rel8": dict(layout="csr_relative", index_bits=8),
    "blk1x4": dict(layout="block_csr", block=(1, 4)),
    "blk4x1": dict(layout="block_csr", block=(4, 1)),
    "blk8x1": dict(layout="block_csr", block=(8, 1)),
}
# values label -> (encode_tensor values=, extra kwargs, codebook bits of the generator
# (None = continuous weights), per-row tables)
VALUES = {
    "f32": ("f32", {}, None, False),
    "f16": ("f16", {}, None, False),
    "int8": ("int8_channel", {}, None, False),
    "int4": ("int4_group", {"group_size": 8}, None, False),
    "cb1": ("codebook", {"codebook_bits": 1}, 1, False),
    "cb5": ("codebook", {"codebook_bits": 5}, 5, False),
    "cb8": ("codebook", {"codebook_bits": 8}, 8, False),
    "cbrow3": ("codebook", {"codebook_bits": 3, "codebook_per_row": True}, 3, True),
    "cbrow8": ("codebook", {"codebook_bits": 8, "codebook_per_row": True}, 8, True),
}
ACT = {0: lambda t: t, 1: torch.relu, 2: lambda t: torch.clamp(t, 0, 6)}


# ---------------------------------------------------------------------------------------
# weights, models, references
# ---------------------------------------------------------------------------------------


def sparse_matrix(rng, rows, cols, density, cb_bits=None, per_row=False, structure=True,
                  zero_in_table=False):
    """A (rows, cols) float32 matrix with about `density` nonzeros. With `structure`:
    row 0 holds only its first and last column (the longest gap the row allows, longer
    than any relative index holds when cols > 257), row 1 is empty, the last row is fully
    dense. With cb_bits: the nonzeros take at most 2^cb_bits distinct values (per row when
    per_row), none of them 0; with zero_in_table at most 2^cb_bits - 1 (block_csr stores
    the zeros inside its blocks, so 0.0 takes a table entry)."""
    mask = rng.random((rows, cols)) < density
    if structure and rows >= 3:
        mask[0] = False
        mask[0, 0] = mask[0, cols - 1] = True
        mask[1] = False
        mask[rows - 1] = True
    scale = 1.0 / np.sqrt(max(1.0, cols * density))
    if cb_bits is None:
        w = rng.standard_normal((rows, cols)) * scale
        w = np.where(np.abs(w) < 1e-3 * scale, 1e-3 * scale, w)  # stays nonzero after rounding
    else:
        n = max(1, (1 << cb_bits) - (1 if zero_in_table else 0))
        ntab = rows if per_row else 1
        tables = rng.uniform(0.1, 1.0, (ntab, n)) * rng.choice([-1.0, 1.0], (ntab, n)) * scale * 1.7
        idx = rng.integers(0, n, (rows, cols))
        w = tables[np.arange(rows)[:, None] % ntab, idx]
    return np.where(mask, w, 0.0).astype(np.float32)


def build(op, w, enc, *, bias=None, attrs=None, in_dims=None, values="f32", huffman=False):
    """One-node model. Returns (file bytes, weight Tensor, decoded dense weight, bias)."""
    g = GraphBuilder()
    x = g.add_input("x", in_dims)
    kw = dict(enc)
    wi = g.add_weight("w", w, values=values, huffman=huffman, **kw)
    bi = g.add_weight("b", bias) if bias is not None else None
    y = g.add_node(op, [x], weights=[wi, bi], attrs=attrs or {}, name="node0")
    g.mark_output(y, "y")
    f = g.build({"dsq.producer": "tests/test_sparse_layers"})
    t = f.tensors[wi]
    return F.to_bytes(f), t, decode_tensor(t), bias


def stored_slots(t) -> int:
    """Value slots of the tensor that lie inside the matrix (fillers excluded)."""
    _, _, real, _ = decode_stored(t)
    return int(real.sum())


def T(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def ref_linear(x, w, b, act=0):
    y = TF.linear(T(x), T(w), None if b is None else T(b))
    mag = TF.linear(T(np.abs(x)), T(np.abs(w)), None if b is None else T(np.abs(b)))
    return ACT[act](y).numpy(), mag.numpy()


def ref_conv(x, w, b, stride, padding, dilation, act=0):
    kw = dict(stride=stride, padding=padding, dilation=dilation)
    y = TF.conv2d(T(x), T(w), None if b is None else T(b), **kw)
    mag = TF.conv2d(T(np.abs(x)), T(np.abs(w)), None if b is None else T(np.abs(b)), **kw)
    return ACT[act](y).numpy(), mag.numpy()


def check_close(got, ref, mag, what=""):
    assert got.dtype == np.float32, what
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite output"
    err = np.abs(got.astype(np.float64) - ref)
    bound = REL * mag
    bad = err > bound
    if bad.any():
        i = np.unravel_index(np.argmax(err - bound), err.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.size} outputs outside 1e-5*sum|w||x|; worst at {i}: "
            f"got {got[i]!r}, expected {ref[i]!r} (err {err[i]:.3g} > bound {bound[i]:.3g})")


def run_threads(data, x, force_kernel="", threads=THREADS):
    """Outputs for every thread count (bit-identical required) and the 1-thread model."""
    outs, first = [], None
    for t in threads:
        m = deepsqueeze.load(data, threads=t, force_kernel=force_kernel)
        assert m.threads == t
        outs.append(m.run(x))
        first = first or m
    return outs, first


def check_threads(outs, what=""):
    for t, o in zip(THREADS[1:], outs[1:]):
        assert np.array_equal(outs[0], o), (
            f"{what}: threads={t} differs from threads=1 in {int(np.sum(outs[0] != o))} places "
            f"(max {np.abs(outs[0].astype(np.float64) - o).max():.3g})")


def check_layer(model, in_shape, what=""):
    L = model.layers([in_shape])
    assert len(L) == 1, what
    k = L[0]["kernel"]
    assert k.startswith(("spmv", "spmm")), f"{what}: sparse layer runs on {k!r}"
    return L[0]


def check_macs(data, x, t, m_rows, what=""):
    m = deepsqueeze.load(data, threads=1)
    m.reset_counters()
    m.run(x)
    want = m_rows * stored_slots(t)
    got = m.counters["macs_f32"]
    assert got == want, f"{what}: counters['macs_f32'] = {got}, expected M*S = {m_rows}*{stored_slots(t)} = {want}"
    assert m.layers([x.shape])[0]["cost"]["macs_f32"] == want, what


# ---------------------------------------------------------------------------------------
# the layout x values x huffman grid
# ---------------------------------------------------------------------------------------

GRID = list(itertools.product(LAYOUTS, VALUES, (False, True)))


def _id(p):
    return f"{p[0]}-{p[1]}-{'huff' if p[2] else 'raw'}"


def encode_args(layout, vals, huff):
    values, extra, cb_bits, per_row = VALUES[vals]
    enc = dict(LAYOUTS[layout])
    enc.update(extra)
    return values, enc, cb_bits, per_row


@pytest.mark.parametrize("layout,vals,huff", GRID, ids=[_id(p) for p in GRID])
def test_linear_grid(layout, vals, huff):
    """Linear 37 x 300 (N not a multiple of 4/8, K of 4; row 0's gap 298 needs fillers
    for every index width), ~25 % dense, bias, batch 1 (spmv) and 67 (spmm, m remainder),
    1..3 threads, full layout x values x huffman product."""
    seed = zlib.crc32(f"{layout}/{vals}/{huff}".encode())
    rng = np.random.default_rng(seed)
    values, enc, cb_bits, per_row = encode_args(layout, vals, huff)
    N, K = 37, 300
    w = sparse_matrix(rng, N, K, 0.25, cb_bits, per_row,
                      zero_in_table=layout.startswith("blk"))
    b = rng.standard_normal(N).astype(np.float32)
    act = seed % 3
    data, t, wd, _ = build("linear", w, enc, bias=b, attrs={"activation": act}, in_dims=(-1, K),
                           values=values, huffman=huff)
    assert t.layout == enc["layout"]
    if huff and (layout.startswith("rel") or values in ("codebook", "int8_channel", "int4_group")):
        assert t.entropy == "huffman"
    for batch in (1, 67):
        x = rng.standard_normal((batch, K)).astype(np.float32)
        what = f"linear {layout} {vals} huffman={huff} batch={batch} act={act}"
        outs, m = run_threads(data, x)
        check_layer(m, x.shape, what)
        ref, mag = ref_linear(x, wd, b, act)
        check_close(outs[0], ref, mag, what)
        check_threads(outs, what)
        check_macs(data, x, t, batch, what)


CONV3_GEOMS = [  # (stride, padding, dilation, H, W)
    ((1, 1), (1, 1), (1, 1), 9, 11),
    ((2, 2), (0, 0), (1, 1), 12, 9),
    ((1, 1), (2, 2), (2, 2), 10, 8),
    ((2, 1), (1, 0), (1, 2), 11, 10),
    ((3, 2), (2, 3), (2, 1), 13, 7),
]


@pytest.mark.parametrize("layout,vals,huff", GRID, ids=[_id(p) for p in GRID])
def test_conv3x3_grid(layout, vals, huff):
    """conv2d 3x3 (cin 6 -> cout 13, K = 54), full layout x values x huffman product, the
    geometry (stride / padding / dilation), bias and activation cycling, batch 1 and 3,
    1..3 threads."""
    i = (list(LAYOUTS).index(layout) * len(VALUES) + list(VALUES).index(vals)) * 2 + huff
    stride, pad, dil, H, W = CONV3_GEOMS[i % len(CONV3_GEOMS)]
    rng = np.random.default_rng(1000 + i)
    values, enc, cb_bits, per_row = encode_args(layout, vals, huff)
    cin, cout = 6, 13
    w = sparse_matrix(rng, cout, cin * 9, 0.3, cb_bits, per_row,
                      zero_in_table=layout.startswith("blk")).reshape(cout, cin, 3, 3)
    b = rng.standard_normal(cout).astype(np.float32) if i % 3 else None
    act = i % 3
    attrs = {"stride": list(stride), "padding": list(pad), "dilation": list(dil), "activation": act}
    data, t, wd, _ = build("conv2d", w, enc, bias=b, attrs=attrs, in_dims=(-1, cin, H, W),
                           values=values, huffman=huff)
    for batch in (1, 3):
        x = rng.standard_normal((batch, cin, H, W)).astype(np.float32)
        what = f"conv3x3 {layout} {vals} huffman={huff} s{stride} p{pad} d{dil} batch={batch}"
        outs, m = run_threads(data, x)
        L = check_layer(m, x.shape, what)
        # stride 1 runs the direct path (tests/test_sparse_direct_conv.py), others im2col
        assert ("direct conv" if stride == (1, 1) else "im2col") in L["kernel"], what
        ref, mag = ref_conv(x, wd, b, stride, pad, dil, act)
        check_close(outs[0], ref, mag, what)
        check_threads(outs, what)


@pytest.mark.parametrize("layout,vals,huff", GRID, ids=[_id(p) for p in GRID])
def test_conv1x1_grid(layout, vals, huff):
    """Pointwise conv2d (cin 21 -> cout 19), 17x17 pixels at batch 1 (M = 289 > one
    256-row chunk) and 1x1 pixels at batch 1 (M = 1: the spmv path) and 2."""
    i = (list(LAYOUTS).index(layout) * len(VALUES) + list(VALUES).index(vals)) * 2 + huff
    rng = np.random.default_rng(2000 + i)
    values, enc, cb_bits, per_row = encode_args(layout, vals, huff)
    cin, cout = 21, 19
    w = sparse_matrix(rng, cout, cin, 0.4, cb_bits, per_row,
                      zero_in_table=layout.startswith("blk")).reshape(cout, cin, 1, 1)
    b = rng.standard_normal(cout).astype(np.float32)
    act = (i + 1) % 3
    data, t, wd, _ = build("conv2d", w, enc, bias=b, attrs={"activation": act},
                           in_dims=(-1, cin, -1, -1), values=values, huffman=huff)
    for shape in ((1, cin, 17, 17), (1, cin, 1, 1), (2, cin, 1, 1)):
        x = rng.standard_normal(shape).astype(np.float32)
        what = f"conv1x1 {layout} {vals} huffman={huff} x{shape}"
        outs, m = run_threads(data, x)
        L = check_layer(m, x.shape, what)
        assert "im2col" not in L["kernel"], what
        ref, mag = ref_conv(x, wd, b, (1, 1), (0, 0), (1, 1), act)
        check_close(outs[0], ref, mag, what)
        check_threads(outs, what)


# ---------------------------------------------------------------------------------------
# edge cases
# ---------------------------------------------------------------------------------------

EDGE_ENCODINGS = [("csr", "f32"), ("rel2", "f16"), ("rel8", "cb5"), ("blk1x4", "int8"),
                  ("blk8x1", "cb8"), ("csr", "cbrow3"), ("rel4", "int4")]


def _edge(layout, vals, w, b, x, what, huff=True, op="linear", attrs=None):
    values, enc, _, _ = encode_args(layout, vals, huff)
    in_dims = (-1,) + tuple(x.shape[1:])
    data, t, wd, _ = build(op, w, enc, bias=b, attrs=attrs, in_dims=in_dims, values=values,
                           huffman=huff)
    outs, m = run_threads(data, x)
    check_layer(m, x.shape, what)
    if op == "linear":
        ref, mag = ref_linear(x, wd, b)
    else:
        a = attrs or {}
        ref, mag = ref_conv(x, wd, b, a.get("stride", (1, 1)), a.get("padding", (0, 0)),
                            a.get("dilation", (1, 1)))
    check_close(outs[0], ref, mag, what)
    check_threads(outs, what)
    return data, t, outs[0]


@pytest.mark.parametrize("layout,vals", EDGE_ENCODINGS, ids=[f"{a}-{b}" for a, b in EDGE_ENCODINGS])
@pytest.mark.parametrize("bias", (False, True), ids=("nobias", "bias"))
def test_all_zero_matrix(layout, vals, bias):
    """No stored value at all: the output is exactly the bias (or exactly 0)."""
    rng = np.random.default_rng(3)
    N, K = 20, 33
    w = np.zeros((N, K), dtype=np.float32)
    b = rng.standard_normal(N).astype(np.float32) if bias else None
    for batch in (1, 3):
        x = rng.standard_normal((batch, K)).astype(np.float32)
        data, t, y = _edge(layout, vals, w, b, x, f"all-zero {layout} {vals} bias={bias} batch={batch}")
        want = np.broadcast_to(b if bias else np.zeros(N, np.float32), (batch, N))
        assert np.array_equal(y, want), f"all-zero {layout} {vals}: output is not exactly the bias"
        check_macs(data, x, t, batch, f"all-zero {layout} {vals}")


@pytest.mark.parametrize("layout", ("csr", "rel2", "blk4x1"))
@pytest.mark.parametrize("batch", (1, 67))
def test_codebook_f16_table(layout, batch):
    """FORMAT.md allows the codebook stream in f16 (the encoder writes f32): the table is
    rewritten as f16 (values chosen exactly representable) and must decode the same."""
    rng = np.random.default_rng(20)
    N, K = 40, 90
    w = sparse_matrix(rng, N, K, 0.3, 4, zero_in_table=layout.startswith("blk"))
    w = w.astype(np.float16).astype(np.float32)  # table values exact in f16
    values, enc, _, _ = encode_args(layout, "cb5", False)
    enc["codebook_bits"] = 4
    g = GraphBuilder()
    xi = g.add_input("x", (-1, K))
    wi = g.add_weight("w", w, values="codebook", **enc)
    t = g.tensors[wi]
    for k, st in enumerate(t.streams):
        if st.role == "codebook":
            tab = np.frombuffer(np.asarray(st.data).tobytes(), dtype="<f4").astype("<f2")
            t.streams[k] = F.Stream("codebook", "f16", st.count, tab.view(np.uint8).copy())
    g.mark_output(g.add_node("linear", [xi], weights=[wi, None]), "y")
    data = F.to_bytes(g.build())
    wd = decode_tensor(t)
    assert np.array_equal(wd, w)
    x = rng.standard_normal((batch, K)).astype(np.float32)
    outs, m = run_threads(data, x)
    check_layer(m, x.shape, "f16 codebook")
    ref, mag = ref_linear(x, wd, None)
    check_close(outs[0], ref, mag, f"f16 codebook {layout} batch={batch}")
    check_threads(outs, "f16 codebook")


@pytest.mark.parametrize("vals", ("f32", "f16", "int8", "cb8"))
@pytest.mark.parametrize("batch", (1, 3, 67))
def test_fully_dense_in_csr(vals, batch):
    rng = np.random.default_rng(4)
    N, K = 29, 70
    w = sparse_matrix(rng, N, K, 1.0, VALUES[vals][2], structure=False)
    assert np.count_nonzero(w) == N * K
    b = rng.standard_normal(N).astype(np.float32)
    x = rng.standard_normal((batch, K)).astype(np.float32)
    data, t, _ = _edge("csr", vals, w, b, x, f"dense-in-csr {vals} batch={batch}", huff=False)
    check_macs(data, x, t, batch, f"dense-in-csr {vals}")


@pytest.mark.parametrize("layout,vals", EDGE_ENCODINGS, ids=[f"{a}-{b}" for a, b in EDGE_ENCODINGS])
def test_empty_rows(layout, vals):
    """Most rows empty (every other block of 8 rows, and the first and last rows)."""
    rng = np.random.default_rng(5)
    N, K = 45, 40
    w = sparse_matrix(rng, N, K, 0.3, VALUES[vals][2], VALUES[vals][3], structure=False,
                      zero_in_table=layout.startswith("blk"))
    for r in range(N):
        if (r // 8) % 2 == 0 or r in (0, N - 1):
            w[r] = 0
    b = rng.standard_normal(N).astype(np.float32)
    for batch in (1, 3):
        x = rng.standard_normal((batch, K)).astype(np.float32)
        _edge(layout, vals, w, b, x, f"empty rows {layout} {vals} batch={batch}")


@pytest.mark.parametrize("layout,vals", EDGE_ENCODINGS, ids=[f"{a}-{b}" for a, b in EDGE_ENCODINGS])
def test_single_input_column(layout, vals):
    """K = 1 (block 1x4: one partial block column)."""
    rng = np.random.default_rng(6)
    N, K = 11, 1
    w = sparse_matrix(rng, N, K, 0.6, VALUES[vals][2], VALUES[vals][3], structure=False,
                      zero_in_table=layout.startswith("blk"))
    w[0, 0] = w[0, 0] or np.float32(0.5)
    b = rng.standard_normal(N).astype(np.float32)
    for batch in (1, 3, 67):
        x = rng.standard_normal((batch, K)).astype(np.float32)
        _edge(layout, vals, w, b, x, f"K=1 {layout} {vals} batch={batch}")


@pytest.mark.parametrize("layout,vals", EDGE_ENCODINGS, ids=[f"{a}-{b}" for a, b in EDGE_ENCODINGS])
def test_one_output_row(layout, vals):
    """N = 1 (block 4x1/8x1: one partial block row)."""
    rng = np.random.default_rng(7)
    N, K = 1, 77
    w = sparse_matrix(rng, N, K, 0.5, VALUES[vals][2], VALUES[vals][3], structure=False,
                      zero_in_table=layout.startswith("blk"))
    b = rng.standard_normal(N).astype(np.float32)
    for batch in (1, 3, 67):
        x = rng.standard_normal((batch, K)).astype(np.float32)
        _edge(layout, vals, w, b, x, f"N=1 {layout} {vals} batch={batch}")


@pytest.mark.parametrize("batch", (1, 2, 3, 67, 300))
@pytest.mark.parametrize("vals", ("f32", "cb5"))
def test_linear_batches(vals, batch):
    """Odd batches, and 300 rows (two 256-row chunks, so several threads really split)."""
    rng = np.random.default_rng(8 + batch)
    N, K = 50, 96
    w = sparse_matrix(rng, N, K, 0.2, VALUES[vals][2])
    b = rng.standard_normal(N).astype(np.float32)
    x = rng.standard_normal((batch, K)).astype(np.float32)
    data, t, _ = _edge("rel4", vals, w, b, x, f"linear {vals} batch={batch}")
    check_macs(data, x, t, batch, f"linear {vals} batch={batch}")


def test_linear_rank3_input():
    """(N, T, K) input: the layer runs over N*T rows."""
    rng = np.random.default_rng(9)
    w = sparse_matrix(rng, 24, 40, 0.3)
    b = rng.standard_normal(24).astype(np.float32)
    g = GraphBuilder()
    xi = g.add_input("x", (-1, 5, 40))
    wi = g.add_weight("w", w, layout="csr")
    bi = g.add_weight("b", b)
    g.mark_output(g.add_node("linear", [xi], weights=[wi, bi]), "y")
    data = F.to_bytes(g.build())
    x = rng.standard_normal((3, 5, 40)).astype(np.float32)
    outs, m = run_threads(data, x)
    ref, mag = ref_linear(x, w, b)
    check_close(outs[0], ref, mag, "linear rank-3")
    check_threads(outs, "linear rank-3")


@pytest.mark.parametrize("vals", ("f32", "cb5"))
@pytest.mark.parametrize("layout", ("csr", "blk1x4"))
def test_wide_k_u32_columns(layout, vals):
    """K = 70000 > 65536: u32 column indices in the file (csr) and in the packed weights."""
    rng = np.random.default_rng(10)
    N, K = 5, 70000
    w = sparse_matrix(rng, N, K, 0.002, VALUES[vals][2], zero_in_table=True)
    w[2, K - 1] = w[2, 0] = w[w != 0][0]  # the first and last column (a value already in use)
    b = rng.standard_normal(N).astype(np.float32)
    for batch in (1, 3):
        x = rng.standard_normal((batch, K)).astype(np.float32)
        _edge(layout, vals, w, b, x, f"K=70000 {layout} {vals} batch={batch}", huff=False)


@pytest.mark.parametrize("vals", ("f32", "cb5", "cbrow3"))
def test_large_k_blocked(vals):
    """K = 2600 > the AVX-512 kernels' L2 block of x_t rows (1024 for mr 64, 2048 for mr
    32): partial sums kept in y_t across k blocks, 70 rows (> the 64-row chunk), with empty
    rows and a row whose nonzeros all sit in the last block."""
    rng = np.random.default_rng(11)
    N, K = 70, 2600
    w = sparse_matrix(rng, N, K, 0.05, VALUES[vals][2], VALUES[vals][3])
    w[5] = 0
    w[6, :2100] = 0
    w[7, 1000:] = 0
    b = rng.standard_normal(N).astype(np.float32)
    for batch in (1, 40, 67):
        x = rng.standard_normal((batch, K)).astype(np.float32)
        _edge("csr", vals, w, b, x, f"K=2600 {vals} batch={batch}", huff=False)


_ISOLATED = r"""
import sys, numpy as np, deepsqueeze
data = open(sys.argv[1], "rb").read()
x = np.load(sys.argv[2])
outs = []
for t in (1, 2, 3):
    outs.append(deepsqueeze.load(data, threads=t, force_kernel=sys.argv[4]).run(x))
np.save(sys.argv[3], np.stack(outs))
"""


def run_isolated(data, x, tmp_path, force_kernel=""):
    """Load and run the model with 1, 2 and 3 threads in a child process, so that an
    engine crash (segfault) fails this test instead of killing the whole session.
    Returns the stacked outputs."""
    import subprocess
    import sys

    (tmp_path / "m.dsq").write_bytes(data)
    np.save(tmp_path / "x.npy", x)
    p = subprocess.run([sys.executable, "-c", _ISOLATED, str(tmp_path / "m.dsq"),
                        str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), force_kernel],
                       capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        sig = f" (signal {-p.returncode})" if p.returncode < 0 else ""
        raise AssertionError(f"the engine process died with return code {p.returncode}{sig} "
                             f"running x{x.shape}: {p.stderr.strip()[-600:]}")
    return np.load(tmp_path / "y.npy")


@pytest.mark.parametrize("geom", [
    ("1x1 stride 2 on 1x1", (1, 1), (2, 2), (0, 0), (1, 1), (1, 1)),
    ("1x1 stride 2 on 2x2", (1, 1), (2, 2), (0, 0), (1, 1), (2, 2)),
    ("3x3 pad 1 on 1x1", (3, 3), (1, 1), (1, 1), (1, 1), (1, 1)),
    ("3x3 on 3x3", (3, 3), (1, 1), (0, 0), (1, 1), (3, 3)),
    ("3x3 stride 3 on 3x4", (3, 3), (3, 3), (0, 0), (1, 1), (3, 4)),
], ids=lambda g: g[0].replace(" ", "_"))
@pytest.mark.parametrize("vals", ("f32", "cb5"))
@pytest.mark.parametrize("batch", (1, 2))
def test_conv_single_output_pixel(geom, vals, batch, tmp_path):
    """A non-pointwise conv (im2col) whose output is one pixel per image: at batch 1
    M = 1 takes the im2col + spmm path (not spmv), which needs per-task scratch. Run in a
    child process (a crash must not take the session down)."""
    name, k, s, p, d, hw = geom
    rng = np.random.default_rng(12)
    cin, cout = 8, 10
    w = sparse_matrix(rng, cout, cin * k[0] * k[1], 0.4, VALUES[vals][2]).reshape(cout, cin, *k)
    b = rng.standard_normal(cout).astype(np.float32)
    attrs = {"stride": list(s), "padding": list(p), "dilation": list(d)}
    values, enc, _, _ = encode_args("csr", vals, False)
    data, t, wd, _ = build("conv2d", w, enc, bias=b, attrs=attrs, in_dims=(-1, cin) + hw,
                           values=values)
    x = rng.standard_normal((batch, cin) + hw).astype(np.float32)
    what = f"conv {name} {vals} batch={batch}"
    ref, mag = ref_conv(x, wd, b, s, p, d)
    assert ref.shape[2:] == (1, 1), what
    outs = run_isolated(data, x, tmp_path)
    check_close(outs[0], ref, mag, what)
    check_threads(list(outs), what)


@pytest.mark.parametrize("vals", ("f32", "cb5"))
def test_conv_many_chunks_threads(vals):
    """3x3 conv with 2 x 20 x 19 = 760 output pixels (3 chunks of 256, the last partial)."""
    rng = np.random.default_rng(13)
    cin, cout = 7, 17
    w = sparse_matrix(rng, cout, cin * 9, 0.3, VALUES[vals][2]).reshape(cout, cin, 3, 3)
    b = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((2, cin, 20, 19)).astype(np.float32)
    attrs = {"padding": [1, 1]}
    data, t, _ = _edge("rel4", vals, w, b, x, f"conv 760 px {vals}", op="conv2d", attrs=attrs)
    check_macs(data, x, t, 2 * 20 * 19, f"conv 760 px {vals}")


@pytest.mark.parametrize("batch", (1, 67, 300))
def test_threads_changed_after_load(batch):
    """Model.threads raised after loading with one thread (what a user or the benchmark
    does): same bits as a model loaded with that thread count."""
    rng = np.random.default_rng(14)
    w = sparse_matrix(rng, 64, 128, 0.2, 5)
    b = rng.standard_normal(64).astype(np.float32)
    data, _, wd, _ = build("linear", w, dict(layout="csr_relative", index_bits=5, codebook_bits=5),
                           bias=b, in_dims=(-1, 128), values="codebook", huffman=True)
    x = rng.standard_normal((batch, 128)).astype(np.float32)
    ref1 = deepsqueeze.load(data, threads=1).run(x)
    for t in (2, 3):
        m = deepsqueeze.load(data, threads=1)
        m.threads = t
        assert m.threads == t
        y = m.run(x)
        assert np.array_equal(y, ref1), f"threads 1 -> {t} after load, batch {batch}: results differ"
    ref, mag = ref_linear(x, wd, b)
    check_close(ref1, ref, mag, "threads after load")


# ---------------------------------------------------------------------------------------
# MAC counters and kernel names
# ---------------------------------------------------------------------------------------

MAC_CASES = [(lay, vals) for lay in LAYOUTS for vals in ("f32", "cb5")]


@pytest.mark.parametrize("layout,vals", MAC_CASES, ids=[f"{a}-{b}" for a, b in MAC_CASES])
def test_mac_counters(layout, vals):
    rng = np.random.default_rng(15)
    values, enc, cb_bits, per_row = encode_args(layout, vals, False)
    w = sparse_matrix(rng, 37, 300, 0.1, cb_bits, per_row,
                      zero_in_table=layout.startswith("blk"))
    data, t, wd, _ = build("linear", w, enc, in_dims=(-1, 300), values=values)
    if not layout.startswith("blk"):
        assert stored_slots(t) == np.count_nonzero(wd)
    for batch in (1, 3, 67):
        x = rng.standard_normal((batch, 300)).astype(np.float32)
        check_macs(data, x, t, batch, f"linear {layout} {vals} batch={batch}")
    # conv: M = N * OH * OW
    wc = sparse_matrix(rng, 12, 5 * 9, 0.3, cb_bits, per_row,
                      zero_in_table=layout.startswith("blk")).reshape(12, 5, 3, 3)
    data, t, _, _ = build("conv2d", wc, enc, attrs={"stride": [2, 1], "padding": [1, 1]},
                          in_dims=(-1, 5, 9, 8), values=values)
    x = rng.standard_normal((3, 5, 9, 8)).astype(np.float32)
    check_macs(data, x, t, 3 * 5 * 8, f"conv3x3 {layout} {vals}")


def test_counters_accumulate():
    rng = np.random.default_rng(16)
    w = sparse_matrix(rng, 30, 40, 0.2)
    data, t, _, _ = build("linear", w, dict(layout="csr"), in_dims=(-1, 40))
    m = deepsqueeze.load(data, threads=2)
    m.reset_counters()
    m.run(rng.standard_normal((1, 40)).astype(np.float32))
    m.run(rng.standard_normal((5, 40)).astype(np.float32))
    c = m.counters
    assert c["runs"] == 2
    assert c["macs_f32"] == 6 * np.count_nonzero(w)
    assert c["macs_int8"] == 0 and c["macs_int4"] == 0


def test_kernel_names_default():
    """Sparse layers name an spmv kernel for batch 1 and an spmm kernel for batches, the
    codebook ones for codebook values, the row-tile kernel for small per-tensor tables."""
    rng = np.random.default_rng(17)
    names = {}
    for vals in ("f32", "int8", "cb5", "cb8", "cbrow3"):
        values, enc, cb_bits, per_row = encode_args("csr", vals, False)
        w = sparse_matrix(rng, 20, 64, 0.3, cb_bits, per_row)
        data, _, _, _ = build("linear", w, enc, in_dims=(-1, 64), values=values)
        k = deepsqueeze.load(data, threads=1).layers([(1, 64)])[0]["kernel"]
        spmv, spmm, zs = [s.strip() for s in k.split("|")]
        assert zs.startswith("zero-skip spmv_csc"), k  # batch-1 zero-skipping (test_zero_skip.py)
        assert spmv.startswith("spmv") or spmv.startswith("spmm"), k
        assert spmm.startswith("spmm"), k
        names[vals] = (spmv, spmm)
        cb = values == "codebook"
        assert ("_cb_" in spmv) == cb and ("_cb_" in spmm) == cb, (vals, k)
    if "spmv_cb_f32_16x32__avx512" in spmm_kernels() and _cpu_has("avx512f"):
        assert names["cb5"][0] == "spmv_cb_f32_16x32__avx512", names
        assert names["cb8"][0] != "spmv_cb_f32_16x32__avx512", names  # 256 entries: no tiles
        assert names["cbrow3"][0] != "spmv_cb_f32_16x32__avx512", names  # per-row tables


def _cpu_has(flag):
    try:
        return flag in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


# ---------------------------------------------------------------------------------------
# every spmm_f32 kernel, forced by name
# ---------------------------------------------------------------------------------------

_INC = Path(__file__).resolve().parents[1] / "csrc" / "kernels" / "spmm_f32" / "kernels.inc"


def spmm_kernels():
    """The spmm_f32 variants: from deepsqueeze.kernels() when it lists the family, else
    from the kernel list in the source tree (csrc/kernels/spmm_f32/kernels.inc)."""
    names = [k["name"] for k in deepsqueeze.kernels() if k.get("family") == "spmm_f32"]
    if not names and _INC.exists():
        names = re.findall(r"^DSQ_SPMM_F32_UKERNEL\((\w+),", _INC.read_text(), re.M)
    return names or ["spmm_f32_4__scalar", "spmm_cb_f32_4__scalar", "spmv_f32__scalar",
                     "spmv_cb_f32__scalar"]


def kernel_info(name):
    """(name, codebook, spmv, row tiles) from the naming scheme of kernels.inc (gemv_cb_*:
    batch-1 dense codebook kernels, tested in test_dense_codebook.py)."""
    return (name, "_cb_" in name or name.startswith("gemv_cb"), name.startswith(("spmv", "gemv")),
            bool(re.search(r"_\d+x\d+__", name)))


def test_kernels_lists_spmm_family():
    """deepsqueeze.kernels() documents 'every built kernel variant'; the sparse family
    must be there (names as in kernels.inc, the scalar references always supported)."""
    listed = {k["name"]: k for k in deepsqueeze.kernels() if k.get("family") == "spmm_f32"}
    want = re.findall(r"^DSQ_SPMM_F32_UKERNEL\((\w+),", _INC.read_text(), re.M) if _INC.exists() else []
    # kernels.inc lists every architecture's variants under #if; only this one's are built
    other_arch = ("__neon",) if platform.machine() in ("x86_64", "AMD64", "i686") else ("__avx",)
    want = [n for n in want if not any(tag in n for tag in other_arch)]
    assert listed, ("deepsqueeze.kernels() lists no spmm_f32 kernel (families: "
                    f"{sorted({k['family'] for k in deepsqueeze.kernels()})}); expected {want}")
    assert set(want) <= set(listed), f"missing: {sorted(set(want) - set(listed))}"
    for n in ("spmm_f32_4__scalar", "spmm_cb_f32_4__scalar", "spmv_f32__scalar", "spmv_cb_f32__scalar"):
        assert listed[n]["supported"], n


# (id, op, values label, layout label, weight rows, K or (cin, kh, kw), batch shapes)
FORCE_CASES = [
    ("linear-f32-csr", "linear", "f32", "csr", 37, 300),
    ("linear-int4-blk4x1", "linear", "int4", "blk4x1", 37, 300),
    ("linear-cb5-rel4", "linear", "cb5", "rel4", 37, 300),
    ("linear-cb8-rel8", "linear", "cb8", "rel8", 37, 300),
    ("linear-cbrow3-csr", "linear", "cbrow3", "csr", 37, 300),
    ("linear-f32-K2600", "linear", "f32", "csr", 70, 2600),
    ("linear-cb5-K2600", "linear", "cb5", "csr", 70, 2600),
    ("conv1x1-f16-blk1x4", "conv1x1", "f16", "blk1x4", 19, 21),
    ("conv3x3-cb5-csr", "conv3x3", "cb5", "csr", 13, 6),
    ("conv3x3-f32-rel2", "conv3x3", "f32", "rel2", 13, 6),
]


def _force_model(case):
    cid, op, vals, layout, n, k = case
    rng = np.random.default_rng(zlib.crc32(cid.encode()))
    values, enc, cb_bits, per_row = encode_args(layout, vals, True)
    b = rng.standard_normal(n).astype(np.float32)
    if op == "linear":
        w = sparse_matrix(rng, n, k, 0.2 if k < 1000 else 0.05, cb_bits, per_row, zero_in_table=layout.startswith("blk"))
        data, t, wd, _ = build("linear", w, enc, bias=b, in_dims=(-1, k), values=values, huffman=True)
        shapes = [(1, k), (3, k), (67, k)]
    elif op == "conv1x1":
        w = sparse_matrix(rng, n, k, 0.4, cb_bits, per_row, zero_in_table=layout.startswith("blk")).reshape(n, k, 1, 1)
        data, t, wd, _ = build("conv2d", w, enc, bias=b, in_dims=(-1, k, -1, -1), values=values,
                               huffman=True)
        shapes = [(1, k, 1, 1), (1, k, 9, 7), (2, k, 17, 17)]
    else:
        w = sparse_matrix(rng, n, k * 9, 0.3, cb_bits, per_row, zero_in_table=layout.startswith("blk")).reshape(n, k, 3, 3)
        data, t, wd, _ = build("conv2d", w, enc, bias=b,
                               attrs={"stride": [2, 1], "padding": [1, 2], "dilation": [1, 2]},
                               in_dims=(-1, k, 9, 9), values=values, huffman=True)
        shapes = [(1, k, 9, 9), (3, k, 9, 9)]
    return data, t, wd, b, shapes, rng


def _compatible(kernel, case):
    """None when the kernel can run the case's weights, else the reason it cannot."""
    name, cb, spmv, tiles = kernel_info(kernel)
    _, op, vals, _, _, _ = case
    values, _, cb_bits, per_row = VALUES[vals]
    is_cb = values == "codebook"
    if name.startswith("gemv_cb"):
        return f"{name} reads dense codebook tiles, the weights are sparse"
    if cb != is_cb:
        return f"{name} reads {'codebook codes' if cb else 'f32 values'}, the weights are {values}"
    if spmv and op == "conv3x3":
        return f"{name} is a batch-1 kernel: it only replaces the spmv path of pointwise layers"
    if tiles and (per_row or (cb_bits or 9) > 5):
        return f"{name} needs one per-tensor table of <= 32 entries (row tiles), weights: {vals}"
    return None


FORCE_GRID = [(k, c) for k in spmm_kernels() for c in FORCE_CASES]


@pytest.mark.parametrize("kernel,case", FORCE_GRID, ids=[f"{k}-{c[0]}" for k, c in FORCE_GRID])
def test_forced_kernel(kernel, case):
    reason = _compatible(kernel, case)
    if reason is not None:
        pytest.skip(f"incompatible: {reason}")
    name, cb, spmv, tiles = kernel_info(kernel)
    data, t, wd, b, shapes, rng = _force_model(case)
    try:
        deepsqueeze.load(data, threads=1, force_kernel=kernel)
    except deepsqueeze.UnsupportedModelError as e:
        if "not available on this CPU" in str(e):
            pytest.skip(f"{kernel} not supported by this CPU")
        raise
    ran = False
    for shape in shapes:
        m_rows = shape[0] if case[1] == "linear" else None
        pointwise_m1 = (case[1] == "linear" and shape[0] == 1) or (case[1] == "conv1x1" and
                                                                  shape[0] * shape[2] * shape[3] == 1)
        if spmv and not pointwise_m1:
            continue  # a forced spmv kernel only replaces the batch-1 pointwise path
        x = rng.standard_normal(shape).astype(np.float32)
        what = f"{kernel} on {case[0]} x{shape}"
        outs, m = run_threads(data, x, force_kernel=kernel)
        k = m.layers([shape])[0]["kernel"]
        if spmv:
            assert k.split("|")[0].strip() == kernel, f"{what}: layers() says {k!r}"
        else:
            assert [s.strip() for s in k.split("+")[0].split("|")] == [kernel, kernel], (
                f"{what}: layers() says {k!r}")
        if case[1] == "linear":
            ref, mag = ref_linear(x, wd, b)
        elif case[1] == "conv1x1":
            ref, mag = ref_conv(x, wd, b, (1, 1), (0, 0), (1, 1))
        else:
            ref, mag = ref_conv(x, wd, b, (2, 1), (1, 2), (1, 2))
        check_close(outs[0], ref, mag, what)
        check_threads(outs, what)
        ran = True
    assert ran


@pytest.mark.parametrize("kernel", spmm_kernels())
def test_forced_kernel_incompatible_is_rejected(kernel):
    """A forced kernel that cannot read the weights fails at load with a clear error
    (never silently computes garbage)."""
    name, cb, spmv, tiles = kernel_info(kernel)
    rng = np.random.default_rng(18)
    if cb and not tiles:
        vals = "f32"  # a codebook kernel on f32 values
    elif tiles:
        vals = "cb8"  # 256 entries: no row tiles
    else:
        vals = "cb5"  # an f32 kernel on codebook codes
    values, enc, cb_bits, per_row = encode_args("csr", vals, False)
    w = sparse_matrix(rng, 20, 40, 0.3, cb_bits, per_row)
    data, _, _, _ = build("linear", w, enc, in_dims=(-1, 40), values=values)
    with pytest.raises(deepsqueeze.UnsupportedModelError) as ei:
        deepsqueeze.load(data, threads=1, force_kernel=kernel)
    msg = str(ei.value)
    if "not available on this CPU" in msg:
        pytest.skip(f"{kernel} not supported by this CPU")
    assert "cannot run these weights" in msg and kernel in msg, msg


def test_forced_unknown_kernel_is_rejected():
    rng = np.random.default_rng(19)
    w = sparse_matrix(rng, 8, 16, 0.5)
    data, _, _, _ = build("linear", w, dict(layout="csr"), in_dims=(-1, 16))
    with pytest.raises(deepsqueeze.UnsupportedModelError, match="spmm_f32_7__nonexistent"):
        deepsqueeze.load(data, threads=1, force_kernel="spmm_f32_7__nonexistent")
