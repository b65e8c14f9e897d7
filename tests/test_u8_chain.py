"""u8 activation chaining (runtime/model.cc plan_u8_chains): an int8 layer whose only
reader is an int8 layer with a static input quantization writes that reader's u8 codes
from its kernels' epilogue, and the reader takes them as they are. The codes are the
bytes the reader's own quantize would give, so results are bit-identical to running with
f32 activations between the layers (force_kernel="unchained"), NaN rule included: a
producer that meets a NaN or Inf flags the edge and the reader's output is all NaN."""
from __future__ import annotations

import numpy as np
import pytest

import deepsqueeze
from deepsqueeze import _core
from deepsqueeze import format as F
from deepsqueeze.builder import GraphBuilder

IQ = (0.05, 100.0)  # every layer's static input quantization (scale, zero point)


def _conv(b, rng, x, cin, cout, name, values, act, k=1, stride=1):
    """A kxk conv; values "int8_channel" (dense GEMM) or "csr-int8" (70% pruned in blocks
    of 4 input channels: the sparse quad kernels)."""
    w = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
    encoding = {}
    if values == "csr-int8":
        w *= np.repeat(rng.random((cout, cin // 4, k, k)) >= 0.7, 4, axis=1)
        encoding = {"layout": "csr"}
    wi = b.add_weight(f"{name}.w", w, values="int8_channel", **encoding)
    bi = b.add_weight(f"{name}.b", rng.standard_normal(cout).astype(np.float32) * 0.1)
    return b.add_node("conv2d", [x], weights=[wi, bi], name=name,
                      attrs={"stride": [stride, stride], "padding": [k // 2, k // 2], "activation": act,
                             "input_quant": list(IQ)})


def _pointwise(b, rng, x, cin, cout, name, values, act):
    return _conv(b, rng, x, cin, cout, name, values, act)


def _depthwise(b, rng, x, c, name, stride, act, k=3, weight_scale=None):
    w = rng.standard_normal((c, 1, k, k)) / 3
    if weight_scale is not None:  # the largest weight at this magnitude
        w *= weight_scale / np.abs(w).max()
    w = w.astype(np.float32)
    wi = b.add_weight(f"{name}.w", w, values="int8_channel")
    bi = b.add_weight(f"{name}.b", rng.standard_normal(c).astype(np.float32) * 0.1)
    return b.add_node("conv2d", [x], weights=[wi, bi], name=name,
                      attrs={"groups": c, "stride": [stride, stride], "padding": [k // 2, k // 2],
                             "activation": act, "input_quant": list(IQ)})


def inverted_residual_net(values, *, stride=1, dw_act=2, k=3, dw_weight_scale=None, second_block=True):
    """MobileNetV2's shape: expand 1x1 (relu6) -> depthwise kxk (dw_act) -> project 1x1,
    then a second block whose project output is added to its input (a residual the
    project's own conv folds in, so that edge stays f32)."""
    rng = np.random.default_rng(11)
    b = GraphBuilder()
    x = b.add_input("x", (-1, 16, 9, 10))
    e = _pointwise(b, rng, x, 16, 64, "expand", values, act=2)
    d = _depthwise(b, rng, e, 64, "dw", stride, dw_act, k=k, weight_scale=dw_weight_scale)
    p = _pointwise(b, rng, d, 64, 24, "project", values, act=0)
    y = p
    if second_block:
        e2 = _pointwise(b, rng, p, 24, 96, "expand2", values, act=2)
        d2 = _depthwise(b, rng, e2, 96, "dw2", 1, 2)
        p2 = _pointwise(b, rng, d2, 96, 24, "project2", values, act=0)
        y = b.add_node("add", [p2, p], name="add")
    b.mark_output(y, "y")
    return F.to_bytes(b.build({"dsq.producer": "test_u8_chain"}))


def _kernels(model, shape):
    return {L["name"]: L["kernel"] for L in model.layers([shape])}


def _same_bits(a, b):
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _input(batch, seed=3):
    return np.random.default_rng(seed).standard_normal((batch, 16, 9, 10)).astype(np.float32)


@pytest.mark.parametrize("values", ["int8_channel", "csr-int8"])
@pytest.mark.parametrize("stride", [1, 2])
def test_chained_edges(values, stride):
    data = inverted_residual_net(values, stride=stride)
    kernels = _kernels(deepsqueeze.load(data), (1, 16, 9, 10))
    # project's output is read twice (expand2 and the add) and project2's goes to the add:
    # those stay f32.
    want = {"expand": "[u8 out]", "dw": "[u8 in, out]", "project": "[u8 in]", "expand2": "[u8 out]",
            "dw2": "[u8 in, out]", "project2": "[u8 in]", "add": None}
    for name, tag in want.items():
        if tag is None:
            assert "[u8" not in kernels[name], (name, kernels[name])
        else:
            assert kernels[name].endswith(tag), (name, kernels[name])
    unchained = _kernels(deepsqueeze.load(data, force_kernel="unchained"), (1, 16, 9, 10))
    assert not any("[u8" in k for k in unchained.values())


@pytest.mark.parametrize("values", ["int8_channel", "csr-int8"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("batch", [1, 3, 40])
def test_bit_identical_to_unchained(values, stride, batch):
    data = inverted_residual_net(values, stride=stride)
    x = _input(batch)
    ref = deepsqueeze.load(data, threads=1, force_kernel="unchained").run(x)
    assert np.isfinite(ref).all() and np.abs(ref).max() > 0.1
    for threads in (1, 2):
        got = deepsqueeze.load(data, threads=threads).run(x)
        assert _same_bits(got, ref), f"threads={threads}"


DW_KERNELS = [k["name"] for k in _core.kernels() if k["family"] == "dwconv_qu8" and k["supported"]]


@pytest.mark.parametrize("kernel", DW_KERNELS)
def test_bit_identical_on_every_depthwise_kernel(kernel):
    """Every depthwise variant this CPU runs, the scalar references included, writes the
    codes (3x3: the packed pair where the variant has one, else the row kernel; 5x5: the
    row kernels)."""
    for k in (3, 5):
        data = inverted_residual_net("int8_channel", stride=1, k=k, second_block=False)
        x = _input(2)
        ref = deepsqueeze.load(data, threads=1, force_kernel="unchained").run(x)
        m = deepsqueeze.load(data, threads=2, force_kernel=kernel)
        assert _kernels(m, x.shape)["dw"].startswith(kernel) and _kernels(m, x.shape)["dw"].endswith("[u8 in, out]")
        assert _same_bits(m.run(x), ref), k


@pytest.mark.parametrize("values", ["int8_channel", "csr-int8"])
@pytest.mark.parametrize("where", ["input", "overflow"])
@pytest.mark.parametrize("threads", [1, 2])
def test_nan_rule_crosses_the_chain(values, where, threads):
    """A NaN in the input, or a depthwise layer (no activation) whose weights overflow its
    outputs to +-Inf: the reader of the flagged u8 edge gives all NaN, as with f32 edges
    (per call: a micro-batched run's slices apart)."""
    data = inverted_residual_net(values, dw_act=0, dw_weight_scale=3e38 if where == "overflow" else None,
                                 second_block=False)
    x = _input(2)
    if where == "input":
        x[1, 5, 4, 4] = np.nan
    m = deepsqueeze.load(data, threads=threads)
    assert "[u8 in" in _kernels(m, x.shape)["project"]
    ref = deepsqueeze.load(data, threads=threads, force_kernel="unchained").run(x)
    got = m.run(x)
    assert np.isnan(ref[1]).all() and (where == "input" or np.isnan(ref).all())
    assert _same_bits(got, ref)
    # The flag belongs to that run only: a finite input runs clean again.
    if where == "input":
        x2 = _input(2)
        assert _same_bits(m.run(x2), deepsqueeze.load(data, threads=threads, force_kernel="unchained").run(x2))


@pytest.mark.parametrize("values", ["int8_channel", "csr-int8"])
def test_activation_bytes_count_one_byte_per_chained_element(values):
    """The energy model's activation traffic: 4 bytes per element read or written, 1 on a
    chained edge (written once by its producer, read once by its reader)."""
    data = inverted_residual_net(values, stride=1)
    x = _input(1)
    counts = {}
    for fk in ("", "unchained"):
        m = deepsqueeze.load(data, threads=1, force_kernel=fk)
        m.run(x)
        counts[fk] = m.counters["activation_bytes"]
    layers = {L["name"]: L for L in deepsqueeze.load(data).layers([x.shape])}
    chained_elements = 0
    for name, L in layers.items():
        if L["kernel"].endswith("out]"):
            chained_elements += int(np.prod(L["output_shapes"][0]))
    assert chained_elements > 0
    assert counts["unchained"] - counts[""] == 6 * chained_elements


def test_micro_batched_runs_chain_per_slice():
    """A micro-batched run plans each slice itself; the slices chain the same edges."""
    data = inverted_residual_net("csr-int8", stride=1)
    x = _input(64)
    ref = deepsqueeze.load(data, threads=1, force_kernel="unchained").run(x)
    for threads in (1, 2):
        assert _same_bits(deepsqueeze.load(data, threads=threads).run(x), ref)


def test_edges_that_stay_f32():
    """No chaining into a pointwise layer whose rows would need padding (cin not a multiple
    of 4), into a layer without a static input quantization, or of a graph output."""
    rng = np.random.default_rng(5)
    b = GraphBuilder()
    x = b.add_input("x", (-1, 16, 6, 7))
    e = _pointwise(b, rng, x, 16, 30, "expand", "int8_channel", act=2)
    d = _depthwise(b, rng, e, 30, "dw", 1, 2)
    p = _pointwise(b, rng, d, 30, 16, "project", "int8_channel", act=1)  # cin 30: padded rows
    wq = b.add_weight("dyn.w", (rng.standard_normal((16, 16, 1, 1)) / 4).astype(np.float32), values="int8_channel")
    dyn = b.add_node("conv2d", [p], weights=[wq], name="dyn", attrs={"activation": 1})  # dynamic quantization
    out = _pointwise(b, rng, dyn, 16, 8, "out", "int8_channel", act=0)
    b.mark_output(out, "y")
    b.mark_output(dyn, "dyn_out")  # also read by "out": two readers
    data = F.to_bytes(b.build({"dsq.producer": "test_u8_chain"}))
    xv = np.random.default_rng(1).standard_normal((2, 16, 6, 7)).astype(np.float32)
    kernels = _kernels(deepsqueeze.load(data), xv.shape)
    assert kernels["expand"].endswith("[u8 out]") and kernels["dw"].endswith("[u8 in]"), kernels
    for name in ("project", "dyn", "out"):
        assert "[u8" not in kernels[name], (name, kernels[name])
    ref = deepsqueeze.load(data, threads=1, force_kernel="unchained").run(xv)
    got = deepsqueeze.load(data, threads=2).run(xv)
    for g, r in zip(got, ref):
        assert _same_bits(g, r)


def basic_block_net(values, stride, act=1):
    """ResNet's block: conv1 3x3 (act: 1 relu, 2 relu6) -> conv2 3x3, + skip, relu. The dense
    int8 convs run as implicit GEMM, the block-pruned sparse ones direct on quads (stride 1)."""
    rng = np.random.default_rng(13)
    b = GraphBuilder()
    x = b.add_input("x", (-1, 16, 10, 10))
    c1 = _conv(b, rng, x, 16, 32, "conv1", values, act=act, k=3, stride=stride)
    c2 = _conv(b, rng, c1, 32, 32, "conv2", values, act=0, k=3)
    skip = _pointwise(b, rng, x, 16, 32, "down", "int8_channel", act=0)
    if stride == 2:
        skip = b.add_node("avg_pool2d", [skip], attrs={"kernel": [2, 2], "stride": [2, 2]}, name="pool")
    y = b.add_node("add", [c2, skip], attrs={"activation": 1}, name="add")
    b.mark_output(y, "y")
    return F.to_bytes(b.build({"dsq.producer": "test_u8_chain"}))


@pytest.mark.parametrize("values", ["int8_channel", "csr-int8"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("act", [1, 2], ids=["relu", "relu6"])
def test_basic_block(values, stride, act):
    data = basic_block_net(values, stride, act)
    x = np.random.default_rng(2).standard_normal((3, 16, 10, 10)).astype(np.float32)
    kernels = _kernels(deepsqueeze.load(data), x.shape)
    # A strided sparse conv runs on im2col patches (f32 edge); the direct path chains, and
    # the implicit GEMM where its range quantizes inside 0..255 for the reader (relu6 over
    # scale 0.05, zero 100: codes 100..220; a relu's open top: no).
    chained = not (values == "csr-int8" and stride == 2) and not (values == "int8_channel" and act == 1)
    assert kernels["conv1"].endswith("[u8 out]") == chained, kernels["conv1"]
    assert kernels["conv2"].endswith("[u8 in]") == chained, kernels["conv2"]
    ref = deepsqueeze.load(data, threads=1, force_kernel="unchained").run(x)
    assert np.isfinite(ref).all() and (ref > 0).any()
    for threads in (1, 2):
        assert _same_bits(deepsqueeze.load(data, threads=threads).run(x), ref), threads
