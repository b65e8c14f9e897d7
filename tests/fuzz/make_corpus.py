"""Writes the fuzz seed corpus (tests/fuzz/corpus) and the compatibility golden files
(tests/data/golden: .dsq + expected output .npy) with deepsqueeze.builder.

Every file is a small conv -> relu -> flatten -> linear model whose two weights use one
encoding (layout x values x Huffman), plus one file with every other op. Golden outputs
are the engine's outputs at the time the files were written, checked here against a
pure numpy forward pass of the float weights (quantized encodings within their error).

Seeds and golden files are never rewritten (the older ones keep the 1.0 / 1.1 readers'
paths covered): this script writes only the ones missing. The `v1.2-*` files use the 1.2 codes (u16 row_ptr, sparse Huffman code
lengths, one int8 scale per tensor); the others were written by the 1.0 / 1.1 writer.

    python tests/fuzz/make_corpus.py        # adds missing seeds and golden files
"""
from __future__ import annotations

import itertools
import struct
import sys
from pathlib import Path

import numpy as np

import deepsqueeze
from deepsqueeze import format as F
from deepsqueeze.builder import GraphBuilder

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
GOLDEN = HERE.parent / "data" / "golden"

LAYOUTS = ("dense", "csr", "csr_relative", "block_csr")
VALUES = ("f32", "f16", "int8_channel", "int4_group", "codebook")
X_SHAPE = (2, 2, 6, 6)


def weights(rng, shape):
    """Half zeros, the rest from 6 levels: every encoding (codebook 3 bits too) can hold it."""
    levels = np.array([-1.5, -1.0, -0.5, 0.5, 1.0, 1.5], np.float32) * 0.25
    w = levels[rng.integers(0, 6, size=shape)]
    w[rng.random(shape) < 0.5] = 0
    return w.astype(np.float32)


def conv_linear(layout, values, huffman, rng, int8_scale="channel"):
    b = GraphBuilder()
    x = b.add_input("x", (-1,) + X_SHAPE[1:])
    wc = weights(rng, (4, 2, 3, 3))
    wl = weights(rng, (5, 64))
    bc = (rng.standard_normal(4) * 0.1).astype(np.float32)
    bl = (rng.standard_normal(5) * 0.1).astype(np.float32)
    enc = {"values": values, "layout": layout, "huffman": huffman, "group_size": 8}
    if layout == "block_csr":
        enc["block"] = (2, 2)
    if values == "int8_channel":
        enc["int8_scale"] = int8_scale
    cw = b.add_weight("conv.weight", wc, **enc)
    cb = b.add_weight("conv.bias", bc)
    y = b.add_node("conv2d", [x], weights=[cw, cb], attrs={"activation": [1]}, name="conv")
    y = b.add_node("flatten", [y], name="flatten")
    lw = b.add_weight("fc.weight", wl, **enc)
    lb = b.add_weight("fc.bias", bl)
    y = b.add_node("linear", [y], weights=[lw, lb], name="fc")
    b.mark_output(y, "y")
    return b.build({"dsq.producer": "tests/fuzz/make_corpus.py"}), (wc, bc, wl, bl)


def reference(x, wc, bc, wl, bl):
    n, c, h, w = x.shape
    out = np.zeros((n, 4, h - 2, w - 2), np.float64)
    for i in range(h - 2):
        for j in range(w - 2):
            patch = x[:, :, i:i + 3, j:j + 3].reshape(n, -1)
            out[:, :, i, j] = patch @ wc.reshape(4, -1).T + bc
    out = np.maximum(out, 0).reshape(n, -1)
    return (out @ wl.T + bl).astype(np.float32)


def all_ops(rng):
    """Every other op once (softmax, pools, batchnorm, add, mul, concat, reshape, ...)."""
    b = GraphBuilder()
    x = b.add_input("x", (-1, 2, 6, 6))
    g = b.add_weight("bn.gamma", (rng.random(2) + 0.5).astype(np.float32))
    be = b.add_weight("bn.beta", rng.standard_normal(2).astype(np.float32))
    mu = b.add_weight("bn.mean", rng.standard_normal(2).astype(np.float32))
    var = b.add_weight("bn.var", (rng.random(2) + 0.5).astype(np.float32))
    y = b.add_node("batch_norm", [x], weights=[g, be, mu, var], attrs={"eps": [1e-5]})
    a = b.add_node("relu6", [y])
    c = b.add_node("hardswish", [y])
    s = b.add_node("sigmoid", [y])
    y = b.add_node("add", [a, c])
    y = b.add_node("mul", [y, s])
    m = b.add_node("max_pool2d", [y], attrs={"kernel": [2, 2], "stride": [2, 2]})
    p = b.add_node("avg_pool2d", [y], attrs={"kernel": [2, 2], "stride": [2, 2], "ceil_mode": [1]})
    y = b.add_node("concat", [m, p], attrs={"axis": [1]})
    gap = b.add_node("global_avg_pool2d", [y])
    y = b.add_node("reshape", [gap], attrs={"shape": [-1, 4]})
    y = b.add_node("softmax", [y], attrs={"axis": [1]})
    b.mark_output(y, "probs")
    return b.build({"dsq.producer": "tests/fuzz/make_corpus.py"})


def main() -> int:
    rng = np.random.default_rng(7)
    x = np.random.default_rng(8).standard_normal(X_SHAPE).astype(np.float32)
    for d in (CORPUS, GOLDEN):
        d.mkdir(parents=True, exist_ok=True)
    if not (GOLDEN / "input.npy").exists():
        np.save(GOLDEN / "input.npy", x)
    x = np.load(GOLDEN / "input.npy")
    ran = 0
    cases = [(f"{layout}-{values}{'-huffman' if huffman else ''}", layout, values, huffman, "channel")
             for layout, values, huffman in itertools.product(LAYOUTS, VALUES, (False, True))]
    # 1.2: the sparse layouts write u16 row_ptr and (Huffman, few symbols) sparse lengths.
    cases += [(f"v1.2-{layout}-{values}-huffman", layout, values, True, "channel")
              for layout, values in itertools.product(LAYOUTS[1:], VALUES)]
    cases += [(f"v1.2-{layout}-int8_channel-tensor{'-huffman' if huffman else ''}", layout, "int8_channel",
               huffman, "tensor") for layout, huffman in itertools.product(LAYOUTS, (False, True))]
    for name, layout, values, huffman, int8_scale in cases:
        f, ws = conv_linear(layout, values, huffman, rng, int8_scale)
        data = F.to_bytes(f)
        if not (CORPUS / f"{name}.dsq").exists():
            (CORPUS / f"{name}.dsq").write_bytes(data)
        try:
            model = deepsqueeze.load(data, threads=1)
        except deepsqueeze.UnsupportedModelError as e:
            print(f"{name}: seed only ({e})")
            continue
        y = model.run(x)
        want = reference(x, *ws)
        tol = {"int4_group": 0.15, "int8_channel": 0.05, "f16": 0.01}.get(values, 1e-4)
        err = float(np.max(np.abs(y - want)))
        assert err <= tol * (1 + np.max(np.abs(want))), f"{name}: engine differs from numpy by {err}"
        if name.startswith("v1.2-"):
            assert struct.unpack_from("<H", data, 6)[0] == 2, f"{name}: not a 1.2 file"
        if not (GOLDEN / f"{name}.dsq").exists():
            (GOLDEN / f"{name}.dsq").write_bytes(data)
            np.save(GOLDEN / f"{name}.npy", y)
            ran += 1
    data = F.to_bytes(all_ops(rng))
    if not (CORPUS / "all-ops.dsq").exists():
        (CORPUS / "all-ops.dsq").write_bytes(data)
    if not (GOLDEN / "all-ops.dsq").exists():
        (GOLDEN / "all-ops.dsq").write_bytes(data)
        np.save(GOLDEN / "all-ops.npy", deepsqueeze.load(data, threads=1).run(x))
        ran += 1
    print(f"{len(list(CORPUS.glob('*.dsq')))} seeds, {ran} new golden files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
