"""Micro-batching (runtime/model.cc plan_slices): a batch runs as slices of samples, each
through the whole graph, so a slice's activations stay in cache; at 2+ threads the slices
run at once, one per thread. Only graphs whose every layer treats samples apart are
sliced, and their outputs must be the same bits as the whole batch's.
DSQ_MICRO_BATCH=n forces slices of about n samples (0: never)."""
from __future__ import annotations

import math
import threading

import numpy as np
import pytest

import deepsqueeze
from deepsqueeze import format as F
from deepsqueeze.builder import GraphBuilder

CIN, HW, CLASSES = 8, 12, 10


def _weight(b, rng, name, shape, values, layout):
    w = (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
    enc = {}
    if layout != "dense":
        cin = shape[1]
        keep = rng.random((shape[0], cin // 4) + tuple(shape[2:])) >= 0.7  # blocks of 4 channels
        w *= np.repeat(keep, 4, axis=1)
        enc["layout"] = layout
    if values == "codebook":
        levels = np.linspace(-1.0, 1.0, 16, dtype=np.float32) * np.abs(w).max()
        nz = w != 0
        w = np.where(nz, levels[np.abs(w[..., None] - levels).argmin(-1)], 0).astype(np.float32)
        enc["codebook_bits"] = 4
    return b.add_weight(name, w, values=values, **enc)


def mixed_net(values="f32", layout="dense", *, static=True, softmax_axis=1, fixed_batch=None):
    """conv 3x3 (relu) -> depthwise 3x3 (relu6) -> conv 1x1 + residual -> maxpool (an
    output) -> conv 3x3 stride 2 -> global pool -> flatten -> linear -> softmax (output)."""
    rng = np.random.default_rng(3)
    b = GraphBuilder()
    quantized = values not in ("f32", "f16", "codebook")
    iq = {"input_quant": [0.05, 100.0]} if quantized and static else {}

    def conv(x, cin, cout, name, k=3, stride=1, act=0, groups=1, vals=values, lay=layout):
        wi = _weight(b, rng, f"{name}.w", (cout, cin // groups, k, k), vals, lay)
        bi = b.add_weight(f"{name}.b", (rng.standard_normal(cout) * 0.1).astype(np.float32))
        attrs = {"stride": [stride, stride], "padding": [k // 2, k // 2], "activation": act, "groups": groups}
        if vals == values:
            attrs.update(iq)
        return b.add_node("conv2d", [x], weights=[wi, bi], attrs=attrs, name=name)

    x = b.add_input("x", (fixed_batch or -1, CIN, HW, HW))
    a = conv(x, CIN, 16, "a", act=1)
    # int8 runs the depthwise int8 kernels (static) or decodes to f32 (dynamic)
    d = conv(a, 16, 16, "dw", act=2, groups=16, vals=values if values == "int8_channel" else "f32", lay="dense")
    p = conv(d, 16, 16, "pw", k=1)
    r = b.add_node("add", [p, d], attrs={"activation": 1}, name="add")
    m = b.add_node("max_pool2d", [r], attrs={"kernel": [2, 2], "stride": [2, 2]}, name="pool")
    s = conv(m, 16, 16, "s2", stride=2, act=1)
    g = b.add_node("global_avg_pool2d", [s], name="gap")
    f = b.add_node("flatten", [g], attrs={"start_dim": 1}, name="flat")
    wi = _weight(b, rng, "fc.w", (CLASSES, 16), values, layout)
    bi = b.add_weight("fc.b", np.zeros(CLASSES, np.float32))
    logits = b.add_node("linear", [f], weights=[wi, bi], attrs=dict(iq), name="fc")
    y = b.add_node("softmax", [logits], attrs={"axis": softmax_axis}, name="softmax")
    b.mark_output(m, "pooled")
    b.mark_output(y, "probs")
    return F.to_bytes(b.build({"dsq.producer": "test_micro_batch"}))


def _load(data, threads, rows, monkeypatch):
    """A model whose plans slice batches into about `rows` samples (None: automatic)."""
    if rows is None:
        monkeypatch.delenv("DSQ_MICRO_BATCH", raising=False)
    else:
        monkeypatch.setenv("DSQ_MICRO_BATCH", str(rows))
    return deepsqueeze.load(data, threads=threads)


def _run(model, x):
    """The outputs by name and the layer counters of one run."""
    model.reset_counters()
    out = model.run({"x": x})
    return out, model.layer_counters


ENCODINGS = [("f32", "dense"), ("int8_channel", "dense"), ("int4_group", "dense"), ("codebook", "dense"),
             ("f32", "csr"), ("int8_channel", "csr"), ("codebook", "csr_relative")]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("values,layout", ENCODINGS)
def test_slices_give_the_whole_batch_bits(values, layout, threads, monkeypatch):
    data = mixed_net(values, layout)
    x = np.random.default_rng(5).standard_normal((7, CIN, HW, HW)).astype(np.float32)
    whole, whole_counts = _run(_load(data, threads, 0, monkeypatch), x)
    assert all(c["calls"] == 1 for c in whole_counts)
    # Slices of 1 (2, 2, 2, 1 for sparse f32 / codebook layers, whose batch-1 kernels sum
    # in another order) and of 3, 2, 2.
    batch1_differs = values == "codebook" or (values == "f32" and layout != "dense")
    for rows in (1, 3):
        sliced, counts = _run(_load(data, threads, rows, monkeypatch), x)
        for name in whole:
            assert np.array_equal(sliced[name], whole[name]), (name, rows)
        slices = 3 if batch1_differs and rows == 1 else math.ceil(7 / rows)
        for c, w in zip(counts, whole_counts):
            assert c["calls"] == slices
            # The arithmetic is the batch's; the weights are read once per slice.
            assert (c["macs_f32"], c["macs_int8"], c["macs_int4"]) == (w["macs_f32"], w["macs_int8"], w["macs_int4"])
            assert c["activation_bytes"] == w["activation_bytes"]
            if values == "f32" or layout == "dense":  # sparse int8 reads other bytes at batch 1
                assert c["weight_bytes"] == slices * w["weight_bytes"]


@pytest.mark.parametrize("case", ["dynamic_quant", "softmax_axis0", "fixed_batch"])
def test_layers_that_read_the_batch_run_it_whole(case, monkeypatch):
    if case == "dynamic_quant":  # one activation scale per call, from the whole batch
        data, n = mixed_net("int8_channel", static=False), 6
    elif case == "softmax_axis0":
        data, n = mixed_net("f32", softmax_axis=0), 6
    else:  # the file fixes the batch: a slice would not be a valid input
        data, n = mixed_net("f32", fixed_batch=4), 4
    x = np.random.default_rng(1).standard_normal((n, CIN, HW, HW)).astype(np.float32)
    for threads in (1, 2):
        out, counts = _run(_load(data, threads, 1, monkeypatch), x)
        assert all(c["calls"] == 1 for c in counts)
        ref, _ = _run(_load(data, threads, 0, monkeypatch), x)
        for name in ref:
            assert np.array_equal(out[name], ref[name])


def _wide_conv_net():
    """Activations of about 0.6 MiB per sample: a batch of 16 overflows the slice budget."""
    rng = np.random.default_rng(2)
    b = GraphBuilder()
    x = b.add_input("x", (-1, 16, 48, 48))
    w = b.add_weight("c.w", (rng.standard_normal((32, 16, 3, 3)) * 0.1).astype(np.float32))
    y = b.add_node("conv2d", [x], weights=[w], attrs={"padding": [1, 1], "activation": 1}, name="c")
    b.mark_output(y, "y")
    return F.to_bytes(b.build({})), rng.standard_normal((16, 16, 48, 48)).astype(np.float32)


def _big_fc_net():
    """16 MiB of f32 weights and little activation: re-reading the weights per slice would
    cost more than slicing saves."""
    rng = np.random.default_rng(4)
    b = GraphBuilder()
    x = b.add_input("x", (-1, 2048))
    w = b.add_weight("fc.w", (rng.standard_normal((2048, 2048)) * 0.02).astype(np.float32))
    y = b.add_node("linear", [x], weights=[w], name="fc")
    b.mark_output(y, "y")
    return F.to_bytes(b.build({})), rng.standard_normal((64, 2048)).astype(np.float32)


def test_automatic_slicing(monkeypatch):
    data, x = _wide_conv_net()
    whole, _ = _run(_load(data, 1, 0, monkeypatch), x)
    for threads in (1, 2):
        out, counts = _run(_load(data, threads, None, monkeypatch), x)
        assert counts[0]["calls"] > 1, threads  # sliced for the cache at 1 thread already
        assert np.array_equal(out["y"], whole["y"])
    # Small activations: whole at 1 thread; one slice per thread at 2 (no per-layer sync).
    small = mixed_net("int8_channel")
    xs = np.random.default_rng(0).standard_normal((8, CIN, HW, HW)).astype(np.float32)
    assert _run(_load(small, 1, None, monkeypatch), xs)[1][0]["calls"] == 1
    assert _run(_load(small, 2, None, monkeypatch), xs)[1][0]["calls"] == 2
    # Weights that dominate the traffic: never sliced.
    big, xb = _big_fc_net()
    assert _run(_load(big, 2, None, monkeypatch), xb)[1][0]["calls"] == 1
    # Batch 1 has nothing to slice.
    assert _run(_load(data, 2, 1, monkeypatch), x[:1])[1][0]["calls"] == 1


def test_concurrent_callers_of_a_sliced_model(monkeypatch):
    data = mixed_net("int8_channel", "csr")
    model = _load(data, 2, 2, monkeypatch)
    rng = np.random.default_rng(9)
    xs = [rng.standard_normal((5, CIN, HW, HW)).astype(np.float32) for _ in range(4)]
    ref = [_load(data, 1, 0, monkeypatch).run({"x": x}) for x in xs]
    errors = []

    def worker(k):
        try:
            for _ in range(5):
                out = model.run({"x": xs[k]})
                if not all(np.array_equal(out[n], ref[k][n]) for n in out):
                    errors.append(k)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
