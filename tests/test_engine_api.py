"""The engine's Python API (deepsqueeze.load / Model): loading, I/O description, input
validation (typed errors with useful messages), dynamic batch, counters, threads,
summary, concurrent use, forced kernels and the error types of unrunnable files."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import deepsqueeze
from deepsqueeze import format as F
from deepsqueeze.builder import GraphBuilder
from deepsqueeze.encode import decode_tensor

from conftest import fake_quant, load, one_op


def conv_file(enc="f32", cin=3, cout=8, hw=8, path=None):
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.add_input("image", (-1, cin, hw, hw))
    w = b.add_weight("conv.w", rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) * 0.3, enc, 8)
    bias = b.add_weight("conv.b", rng.standard_normal(cout).astype(np.float32))
    y = b.add_node("conv2d", [x], [w, bias], {"padding": [1, 1], "activation": "relu"}, name="conv")
    y = b.add_node("max_pool2d", [y], attrs={"kernel": [2, 2]}, name="pool")
    y = b.add_node("flatten", [y], name="flat")
    w2 = b.add_weight("fc.w", rng.standard_normal((10, cout * (hw // 2) ** 2)).astype(np.float32) * 0.1, enc, 16)
    y = b.add_node("linear", [y], [w2], name="fc")
    b.mark_output(y, "logits")
    f = b.build({"dsq.producer": "tests", "n": 3, "acc": 0.5})
    data = F.to_bytes(f)
    if path is not None:
        F.write(f, path)
    return data, f


def linear_file(enc="f32", K=50, N=37):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    data, f, dec = one_op("linear", [("x", (-1, K))], [(w, enc, 16), (b, "f32")])
    return data, dec


@pytest.fixture(scope="module")
def conv_bytes():
    return conv_file()[0]


@pytest.fixture(scope="module")
def x8():
    return np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)


# ---------------------------------------------------------------------------------------
# loading and description
# ---------------------------------------------------------------------------------------


def test_load_path_and_bytes_agree(tmp_path, x8):
    p = tmp_path / "m.dsq"
    data, _ = conv_file(path=p)
    assert p.read_bytes() == data
    m1 = deepsqueeze.load(p, threads=1)
    m2 = deepsqueeze.load(str(p), threads=1)
    m3 = deepsqueeze.load(data, threads=1)
    m4 = deepsqueeze.load(bytearray(data), threads=1)
    m5 = deepsqueeze.load(memoryview(data), threads=1)
    assert m1.path == str(p) and m3.path is None
    ref = m3.run(x8)
    for m in (m1, m2, m4, m5):
        assert np.array_equal(m.run(x8), ref)
    assert "image" in repr(m1)


def test_file_changed_after_load_does_not_matter(tmp_path, x8):
    p = tmp_path / "m.dsq"
    conv_file(path=p)
    m = deepsqueeze.load(p, threads=1)
    ref = m.run(x8)
    p.write_bytes(b"garbage")
    os.remove(p)
    assert np.array_equal(m.run(x8), ref)


def test_inputs_outputs_description(conv_bytes):
    m = load(conv_bytes)
    assert m.inputs == [{"name": "image", "shape": (None, 3, 8, 8), "dtype": "float32"}]
    assert m.outputs == [{"name": "logits", "shape": (None, 10), "dtype": "float32"}]
    # The properties are copies: mutating them does not change the model.
    m.inputs[0]["name"] = "zzz"
    assert m.inputs[0]["name"] == "image"
    assert m.metadata == {"dsq.producer": "tests", "n": 3, "acc": 0.5}


def test_static_shapes_description():
    data, _, _ = one_op("add", [("a", (4, 3)), ("b", (3,))])
    m = load(data)
    assert [i["shape"] for i in m.inputs] == [(4, 3), (3,)]
    assert [i["name"] for i in m.inputs] == ["a", "b"]
    assert m.outputs == [{"name": "y", "shape": (4, 3), "dtype": "float32"}]


def test_run_array_list_dict(conv_bytes, x8):
    m = load(conv_bytes)
    y = m.run(x8)
    assert isinstance(y, np.ndarray) and y.shape == (2, 10) and y.dtype == np.float32
    assert np.array_equal(m(x8), y)
    r = m.run([x8])
    assert list(r) == ["logits"] and np.array_equal(r["logits"], y)
    r = m.run((x8,))
    assert np.array_equal(r["logits"], y)
    r = m.run({"image": x8})
    assert np.array_equal(r["logits"], y)


def test_outputs_are_fresh_arrays(conv_bytes, x8):
    m = load(conv_bytes)
    y1 = m.run(x8)
    keep = y1.copy()
    y2 = m.run(x8 * 3 + 1)
    assert np.array_equal(y1, keep), "a later run overwrote an earlier result"
    assert not np.shares_memory(y1, y2)
    y1[:] = 0  # results are writable and owned by the caller
    assert np.array_equal(m.run(x8), keep)


def test_graph_output_that_is_a_graph_input():
    b = GraphBuilder()
    x = b.add_input("x", (-1, 2, 3, 4))
    v = b.add_input("v", (-1, 5))
    y = b.add_node("relu", [x], name="r")
    b.mark_output(y, "y")
    b.mark_output(x)
    b.mark_output(v)
    m = load(F.to_bytes(b.build({})))
    xa = np.random.default_rng(0).standard_normal((2, 2, 3, 4)).astype(np.float32)
    va = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    r = m.run({"x": xa, "v": va})
    assert np.array_equal(r["x"], xa) and np.array_equal(r["v"], va)
    assert np.array_equal(r["y"], np.maximum(xa, 0))
    assert not np.shares_memory(r["v"], va)


# ---------------------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", (np.float64, np.int32, np.float16, np.uint8))
def test_wrong_dtype(conv_bytes, x8, dtype):
    m = load(conv_bytes)
    with pytest.raises(ValueError) as e:
        m.run(x8.astype(dtype))
    msg = str(e.value)
    assert "image" in msg and "float32" in msg and np.dtype(dtype).name in msg, msg


@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 3, 8, 8, 1), (2, 4, 8, 8), (2, 3, 8, 9), (2, 3, 7, 8),
                                   (0, 3, 8, 8)], ids=str)
def test_wrong_shape(conv_bytes, shape):
    m = load(conv_bytes)
    with pytest.raises(ValueError) as e:
        m.run(np.zeros(shape, np.float32))
    msg = str(e.value)
    assert "image" in msg, msg
    assert "3, 8, 8" in msg, f"expected shape missing: {msg}"
    got = ", ".join(str(d) for d in shape)
    assert got in msg, f"actual shape {shape} missing: {msg}"


def test_wrong_number_of_inputs(conv_bytes, x8):
    m = load(conv_bytes)
    with pytest.raises(ValueError, match="1 input"):
        m.run([x8, x8])
    with pytest.raises(ValueError):
        m.run([])
    with pytest.raises(ValueError, match="missing"):
        m.run({})
    with pytest.raises(ValueError, match="unexpected"):
        m.run({"image": x8, "other": x8})


def test_not_an_array(conv_bytes, x8):
    m = load(conv_bytes)
    with pytest.raises(ValueError, match="image"):
        m.run([x8.tolist()])
    with pytest.raises(ValueError):
        m.run([None])


@pytest.mark.parametrize("kind", ("strided", "transposed", "fortran", "readonly", "offset"))
def test_non_contiguous_input(conv_bytes, kind):
    m = load(conv_bytes, threads=2)
    rng = np.random.default_rng(3)
    if kind == "strided":
        big = rng.standard_normal((2, 3, 16, 8)).astype(np.float32)
        x = big[:, :, ::2, :]
    elif kind == "transposed":
        x = np.ascontiguousarray(rng.standard_normal((8, 8, 3, 2)).astype(np.float32)).transpose(3, 2, 1, 0)
    elif kind == "fortran":
        x = np.asfortranarray(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    elif kind == "readonly":
        x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
        x.setflags(write=False)
    else:
        buf = np.zeros(2 * 3 * 64 + 1, np.float32)
        x = buf[1:].reshape(2, 3, 8, 8)  # 4-byte aligned but not 64-byte aligned
        x[:] = rng.standard_normal(x.shape)
    if kind in ("strided", "transposed", "fortran"):
        assert not x.flags.c_contiguous
    before = x.copy()
    y = m.run(x)
    assert np.array_equal(y, m.run(np.ascontiguousarray(x)))
    assert np.array_equal(x, before), "the input was modified"


def test_dynamic_batch_sequence():
    data, dec = linear_file()
    m = load(data, threads=2)
    rng = np.random.default_rng(4)
    for batch in (1, 7, 64, 1, 7):
        x = rng.standard_normal((batch, 50)).astype(np.float32)
        y = m.run(x)
        assert y.shape == (batch, 37)
        ref = x.astype(np.float64) @ dec[0].T.astype(np.float64) + dec[1]
        assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max() + 1e-5


def test_dynamic_batch_quantized_conv():
    data, f = conv_file("int8_channel")
    m = load(data, threads=2)
    rng = np.random.default_rng(5)
    for batch in (1, 7, 64, 2):
        x = rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)
        assert m.run(x).shape == (batch, 10)


# ---------------------------------------------------------------------------------------
# counters, threads, summary
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("enc,key", [("f32", "macs_f32"), ("f16", "macs_f32"), ("int8_channel", "macs_int8"),
                                     ("int4_group", "macs_int4")])
def test_counters_linear(enc, key):
    data, _ = linear_file(enc)
    m = load(data)
    c = m.counters
    assert c["runs"] == 0 and c["macs_f32"] == c["macs_int8"] == c["macs_int4"] == 0
    x = np.ones((5, 50), np.float32)
    m.run(x)
    c = m.counters
    assert c["runs"] == 1
    assert c[key] == 5 * 37 * 50, c
    for other in {"macs_f32", "macs_int8", "macs_int4"} - {key}:
        assert c[other] == 0, c
    m.run(np.ones((3, 50), np.float32))
    c = m.counters
    assert c["runs"] == 2 and c[key] == 8 * 37 * 50
    assert c["activation_bytes"] > 0 and c["weight_bytes"] > 0
    m.reset_counters()
    c = m.counters
    assert c["runs"] == 0 and c[key] == 0
    m.run(x)
    assert m.counters["runs"] == 1 and m.counters[key] == 5 * 37 * 50


@pytest.mark.parametrize("enc,key", [("f32", "macs_f32"), ("int8_channel", "macs_int8"), ("int4_group", "macs_int4")])
def test_counters_conv(enc, key):
    # conv 3 -> 8, 3x3, pad 1 on 8x8: M = N * 64, N = 8, K = 27; then fc 10 x 128.
    data, _ = conv_file(enc)
    m = load(data)
    m.run(np.ones((2, 3, 8, 8), np.float32))
    c = m.counters
    assert c[key] == 2 * 64 * 8 * 27 + 2 * 10 * 128, c
    layers = m.layers([(2, 3, 8, 8)])
    assert [l["name"] for l in layers] == ["conv", "pool", "flat", "fc"]
    assert layers[0]["cost"][key] == 2 * 64 * 8 * 27
    assert layers[3]["cost"][key] == 2 * 10 * 128
    assert layers[0]["output_shapes"] == [(2, 8, 8, 8)]


def test_counters_grouped_conv():
    w = np.ones((12, 2, 3, 3), np.float32)
    data, _, _ = one_op("conv2d", [("x", (-1, 6, 7, 7))], [(w, "f32")], {"groups": 3, "stride": [2, 2]})
    m = load(data)
    m.run(np.ones((1, 6, 7, 7), np.float32))
    # out 3x3 pixels; per group M=9, N=4, K=18 -> 3 groups
    assert m.counters["macs_f32"] == 9 * 12 * 18


def test_threads_property(conv_bytes, x8):
    m = load(conv_bytes, threads=2)
    assert m.threads == 2
    y = m.run(x8)
    m.threads = 3
    assert m.threads == 3
    assert np.allclose(m.run(x8), y, rtol=1e-6, atol=1e-6)
    m.threads = 1
    assert m.threads == 1
    assert deepsqueeze.load(conv_bytes).threads >= 1
    m.threads = 0  # 0 = all hardware threads
    assert m.threads >= 1
    with pytest.raises(ValueError):
        deepsqueeze.load(conv_bytes, threads=-1)


def test_summary_names_every_kernel():
    for enc in ("f32", "int8_channel", "int4_group"):
        m = load(conv_file(enc)[0])
        s = m.summary()
        assert isinstance(s, str)
        layers = m.layers()
        assert len(layers) == 4
        for l in layers:
            assert l["kernel"], l
            assert l["name"] in s and l["kernel"] in s, (l["kernel"], s)
        fam = {"f32": "gemm_f32", "int8_channel": "gemm_qu8", "int4_group": "gemm_q4"}[enc]
        assert layers[0]["kernel"].startswith(fam) and layers[3]["kernel"].startswith(fam)
        assert isinstance(m.summary([(4, 3, 8, 8)]), str)


def test_concurrent_runs_match_serial():
    data, _ = conv_file("int8_channel", cin=4, cout=16, hw=12)
    m = load(data, threads=2)
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((1 + i % 3, 4, 12, 12)).astype(np.float32) for i in range(12)]
    serial = [m.run(x) for x in xs]
    m.reset_counters()
    results = [[None] * len(xs) for _ in range(4)]
    errors = []

    def worker(t):
        try:
            for rep in range(3):
                for i in range(len(xs)):
                    j = (i + t * 5 + rep) % len(xs)
                    results[t][j] = m.run(xs[j])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for t in range(4):
        for i, x in enumerate(xs):
            assert np.array_equal(results[t][i], serial[i]), f"thread {t} input {i}"
    assert m.counters["runs"] == 4 * 3 * len(xs)


# ---------------------------------------------------------------------------------------
# forced kernels: every supported variant gives the same model output
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("enc,fam", [("f32", "gemm_f32"), ("int8_channel", "gemm_qu8"), ("int4_group", "gemm_q4")])
def test_force_kernel(enc, fam):
    data, f = conv_file(enc, cin=5, cout=19, hw=10)
    x = np.random.default_rng(7).standard_normal((3, 5, 10, 10)).astype(np.float32)
    ks = [k for k in deepsqueeze.kernels() if k["family"] == fam and k["supported"]]
    ref = None
    for k in ks:
        m = load(data, threads=2, force_kernel=k["name"])
        assert m.layers()[0]["kernel"].startswith(k["name"])
        y = m.run(x)
        if ref is None:
            ref = y
        elif fam == "gemm_f32":
            assert np.allclose(y, ref, rtol=1e-5, atol=1e-5), k["name"]
        else:
            assert np.array_equal(y, ref), f"{k['name']} differs from {ks[0]['name']}"


def test_force_unknown_kernel_is_unsupported(conv_bytes):
    with pytest.raises(deepsqueeze.UnsupportedModelError, match="gemm_f32_nope"):
        deepsqueeze.load(conv_bytes, force_kernel="gemm_f32_nope")


# ---------------------------------------------------------------------------------------
# error types at load
# ---------------------------------------------------------------------------------------


def test_missing_file_is_oserror(tmp_path):
    with pytest.raises(OSError):
        deepsqueeze.load(tmp_path / "nope.dsq")
    with pytest.raises(OSError):
        deepsqueeze.load(tmp_path)  # a directory


def test_empty_file_is_format_error(tmp_path):
    p = tmp_path / "empty.dsq"
    p.write_bytes(b"")
    with pytest.raises(deepsqueeze.FormatError) as e:
        deepsqueeze.load(p)
    assert e.value.section == "header"
    with pytest.raises(deepsqueeze.FormatError):
        deepsqueeze.load(b"")


def test_format_error_is_value_error():
    assert issubclass(deepsqueeze.FormatError, ValueError)


def test_unsupported_linear_weight_rank3():
    w = np.ones((4, 5, 6), np.float32)
    data, _, _ = one_op("linear", [("x", (-1, 30))], [(w, "f32")])
    F.from_bytes(data)  # a valid file
    with pytest.raises(deepsqueeze.UnsupportedModelError, match="2-D"):
        deepsqueeze.load(data)


def test_unsupported_conv_groups_do_not_divide():
    w = np.ones((4, 1, 3, 3), np.float32)
    data, _, _ = one_op("conv2d", [("x", (-1, 3, 8, 8))], [(w, "f32")], {"groups": 3})
    F.from_bytes(data)
    with pytest.raises(deepsqueeze.UnsupportedModelError, match="groups"):
        deepsqueeze.load(data)


def test_unsupported_conv_bias_size():
    w = np.ones((4, 3, 3, 3), np.float32)
    data, _, _ = one_op("conv2d", [("x", (-1, 3, 8, 8))], [(w, "f32"), (np.ones(5), "f32")])
    with pytest.raises(deepsqueeze.UnsupportedModelError, match="bias"):
        deepsqueeze.load(data)


def test_unsupported_bad_static_input_quant():
    w = np.ones((4, 3), np.float32)
    for iq in ((0.0, 3.0), (0.1, 256.0), (0.1, 2.5), (float("nan"), 1.0)):
        data, _, _ = one_op("linear", [("x", (-1, 3))], [(w, "int8_channel")], {"input_quant": list(iq)})
        with pytest.raises(deepsqueeze.UnsupportedModelError, match="input_quant"):
            deepsqueeze.load(data)


def test_unsupported_batch_norm_parameter_sizes():
    ws = [(np.ones(4), "f32"), (np.ones(4), "f32"), (np.ones(3), "f32"), (np.ones(4), "f32")]
    data, _, _ = one_op("batch_norm", [("x", (-1, 4))], ws)
    with pytest.raises(deepsqueeze.UnsupportedModelError):
        deepsqueeze.load(data)


@pytest.mark.parametrize("case", ["conv_channels", "linear_features"])
def test_weight_input_mismatch_is_unsupported(case):
    """A valid file whose declared input can never feed its first layer: the engine cannot
    run it, so load() must say UnsupportedModelError (engine.load docstring), not a
    ValueError that reads like a caller mistake at run time."""
    if case == "conv_channels":
        data, _, _ = one_op("conv2d", [("x", (-1, 5, 8, 8))], [(np.ones((4, 3, 3, 3), np.float32), "f32")])
    else:
        data, _, _ = one_op("linear", [("x", (-1, 7))], [(np.ones((4, 6), np.float32), "f32")])
    F.from_bytes(data)
    with pytest.raises(deepsqueeze.UnsupportedModelError):
        deepsqueeze.load(data)
