"""Residual adds folded into the conv that produces one of their inputs (runtime/model.cc
plan_residual_adds): out = clamp(conv(x) + skip, add's range), computed in the conv's
output pass (row by row on the int8 implicit-GEMM path). The add's arithmetic is kept,
so results are bit-identical to running the add separately (force_kernel="unfused").
Folded only when the conv has no activation of its own, its output is read by the add
alone, the other input exists before the conv runs, and no broadcasting is involved."""
from __future__ import annotations

import numpy as np
import pytest

import deepsqueeze
from deepsqueeze import format as F
from deepsqueeze.builder import GraphBuilder


def _conv(b, rng, x, cin, cout, name, values, act=0, stride=1, k=3, input_quant=None):
    """values "csr-f32" / "csr-int8": 70% of the weights pruned in blocks of 4 input
    channels (the sparse layers' direct and quad paths), stored as CSR."""
    w = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
    encoding = {}
    if values.startswith("csr-"):
        keep = rng.random((cout, cin // 4, k, k)) >= 0.7
        w *= np.repeat(keep, 4, axis=1)
        values, encoding = {"csr-f32": "f32", "csr-int8": "int8_channel"}[values], {"layout": "csr"}
    wi = b.add_weight(f"{name}.w", w, values=values, **encoding)
    bi = b.add_weight(f"{name}.b", rng.standard_normal(cout).astype(np.float32) * 0.1)
    attrs = {"stride": [stride, stride], "padding": [k // 2, k // 2], "activation": act}
    if input_quant is not None and values != "f32":
        attrs["input_quant"] = list(input_quant)
    return b.add_node("conv2d", [x], weights=[wi, bi], attrs=attrs, name=name)


def block_model(values, *, downsample_last=True, conv_act=0, extra_reader=False, broadcast=False):
    """stem -> [conv a (relu) -> conv b] + skip -> add (relu) -> output, where skip is the
    block input, or a strided 1x1 downsample conv placed after conv b (downsample_last) or
    before it."""
    rng = np.random.default_rng(7)
    b = GraphBuilder()
    iq = (0.05, 100.0)
    x = b.add_input("x", (-1, 8, 10, 9))
    stem = _conv(b, rng, x, 8, 16, "stem", values, act=1, input_quant=iq)
    a = _conv(b, rng, stem, 16, 16, "a", values, act=1, stride=2, input_quant=iq)
    skip = None
    if not downsample_last:
        skip = _conv(b, rng, stem, 16, 16, "down", values, stride=2, k=1, input_quant=iq)
    c = _conv(b, rng, a, 16, 16, "b", values, act=conv_act, input_quant=iq)
    if downsample_last:
        skip = _conv(b, rng, stem, 16, 16, "down", values, stride=2, k=1, input_quant=iq)
    if broadcast:
        skip = b.add_node("global_avg_pool2d", [skip], name="pool")
    y = b.add_node("add", [c, skip], attrs={"activation": 1}, name="add")
    b.mark_output(y, "y")
    if extra_reader:
        b.mark_output(c, "b_out")  # the conv output is read outside the add too
    data = F.to_bytes(b.build({"dsq.producer": "test_residual_fusion"}))
    xv = rng.standard_normal((3, 8, 10, 9)).astype(np.float32)
    return data, xv


def _fused_into(model, shape):
    return {L["name"]: L["kernel"] for L in model.layers([shape]) if L["op"] == "add"}


@pytest.mark.parametrize("values", ["f32", "int8_channel", "csr-f32", "csr-int8"])
@pytest.mark.parametrize("downsample_last", [True, False], ids=["down-after-b", "down-before-b"])
def test_fused_add_is_bit_identical(values, downsample_last):
    data, x = block_model(values, downsample_last=downsample_last)
    kernel = _fused_into(deepsqueeze.load(data), x.shape)["add"]
    # The add goes into whichever producer runs last: the other input must exist by then.
    want = "down" if downsample_last else "b"
    assert f"(fused into '{want}')" in kernel, kernel
    assert "fused" not in _fused_into(deepsqueeze.load(data, force_kernel="unfused"), x.shape)["add"]
    ref = deepsqueeze.load(data, threads=1, force_kernel="unfused").run(x)
    outs = [deepsqueeze.load(data, threads=t).run(x) for t in (1, 2)]
    for t, y in zip((1, 2), outs):
        y = y[0] if isinstance(y, (list, tuple)) else y
        r = ref[0] if isinstance(ref, (list, tuple)) else ref
        assert np.array_equal(y.view(np.uint32), r.view(np.uint32)), f"{values} threads={t}"
    assert (outs[0] >= 0).all() and (outs[0] > 0).any()  # the add's relu was applied


@pytest.mark.parametrize("case", ["conv-activation", "output-read-twice", "broadcast"])
def test_not_fused(case):
    kw = {"conv-activation": dict(conv_act=1, downsample_last=False),
          "output-read-twice": dict(extra_reader=True, downsample_last=False),
          "broadcast": dict(broadcast=True, downsample_last=False)}[case]
    data, x = block_model("int8_channel", **kw)
    m = deepsqueeze.load(data)
    assert "fused" not in _fused_into(m, x.shape)["add"], case
    ys = m.run(x)
    refs = deepsqueeze.load(data, force_kernel="unfused").run(x)
    ys = ys if isinstance(ys, (list, tuple)) else [ys]
    refs = refs if isinstance(refs, (list, tuple)) else [refs]
    for y, r in zip(ys, refs):
        assert np.array_equal(y, r)
