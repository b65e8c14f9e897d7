"""Hardening of the Python side (docs/HARDENING.md): golden files of every encoding keep
loading with the same outputs, max_memory limits at load and run, bad inputs (NaN/Inf,
empty and huge batches, broadcast views), files changed under a loaded model, mutated
files ending in typed errors only, and many threads on one Model."""
from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

import deepsqueeze
from deepsqueeze import _core
from deepsqueeze import format as F
from deepsqueeze.builder import GraphBuilder
from deepsqueeze import format as F

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"
CORPUS = ROOT / "tests" / "fuzz" / "corpus"
GOLDEN_FILES = sorted(GOLDEN.glob("*.dsq"))


def linear_file(values="f32", n_in=48, n_out=10, activation=None, layout="dense", input_quant=None):
    rng = np.random.default_rng(11)
    b = GraphBuilder()
    x = b.add_input("x", (-1, n_in))
    w = np.round(rng.standard_normal((n_out, n_in)), 1).astype(np.float32)  # < 256 levels (codebook)
    if layout != "dense":
        w[rng.random(w.shape) < 0.7] = 0.0
    w = b.add_weight("fc.w", w, values, 8, layout=layout)
    bias = b.add_weight("fc.b", rng.standard_normal(n_out).astype(np.float32))
    attrs = {"activation": activation} if activation else {}
    if input_quant:
        attrs["input_quant"] = list(input_quant)
    attrs = attrs or None
    y = b.add_node("linear", [x], [w, bias], attrs, name="fc")
    b.mark_output(y, "y")
    return F.to_bytes(b.build({"dsq.producer": "test_hardening"}))


# ---------------------------------------------------------------------------------------
# compatibility: golden files (written by tests/fuzz/make_corpus.py, never rewritten)
# ---------------------------------------------------------------------------------------


def test_golden_set_covers_every_encoding_and_version_1_0():
    names = {p.stem for p in GOLDEN_FILES}
    for layout in ("dense", "csr", "csr_relative", "block_csr"):
        for values in ("f32", "f16", "int8_channel", "int4_group", "codebook"):
            assert f"{layout}-{values}" in names and f"{layout}-{values}-huffman" in names, (layout, values)
    minors = {struct.unpack_from("<H", p.read_bytes(), 6)[0] for p in GOLDEN_FILES}
    assert minors == {0, 1, 2}, f"golden files should include format 1.0, 1.1 and 1.2 files, have 1.{minors}"


def test_golden_set_covers_every_1_2_code():
    """Each code 1.2 adds appears in a golden file, and only the v1.2-* files are 1.2."""
    seen = set()
    for p in GOLDEN_FILES:
        f = F.read(p)
        minor = struct.unpack_from("<H", p.read_bytes(), 6)[0]
        assert (minor == 2) == p.stem.startswith("v1.2-"), p.stem
        for t in f.tensors:
            rows = F.tensor_matrix_shape(t.dims)[0]
            for s in t.streams:
                if s.role == "row_ptr" and s.elem_type == "u16":
                    seen.add("u16 row_ptr")
                if s.role == "scales" and t.values == "int8_channel" and s.count == 1 and rows > 1:
                    seen.add("one int8 scale")
                if s.entropy == "huffman" and int(np.asarray(s.data)[1]) == 1:
                    seen.add("sparse Huffman lengths")
    assert seen == {"u16 row_ptr", "one int8 scale", "sparse Huffman lengths"}, seen


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden_file_output(path):
    x = np.load(GOLDEN / "input.npy")
    want = np.load(path.with_suffix(".npy"))
    y = deepsqueeze.load(path, threads=1).run(x)
    # Kernels differ by CPU (AVX-512, AVX2, scalar): same math, other summation order.
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------
# max_memory
# ---------------------------------------------------------------------------------------


def test_max_memory_default_and_property():
    m = deepsqueeze.load(linear_file(), threads=1)
    assert m.max_memory == deepsqueeze.DEFAULT_MAX_MEMORY
    assert 48 * 10 * 4 <= m.weight_memory < m.max_memory
    assert deepsqueeze.load(linear_file(), threads=1, max_memory=12345).max_memory == 12345
    assert deepsqueeze.load(linear_file(), threads=1, max_memory=1 << 80).max_memory == (1 << 64) - 1


def test_max_memory_refuses_a_model_at_load():
    with pytest.raises(deepsqueeze.ResourceLimitError) as e:
        deepsqueeze.load(linear_file(), threads=1, max_memory=1000)
    assert isinstance(e.value, MemoryError) and isinstance(e.value, deepsqueeze.UnsupportedModelError)
    assert "max_memory" in str(e.value) and "1000 bytes" in str(e.value), str(e.value)


@pytest.mark.parametrize("bad,err", [("1GB", TypeError), (1.5, TypeError), (True, TypeError), (0, ValueError),
                                     (-1, ValueError)], ids=repr)
def test_max_memory_argument_checked(bad, err):
    with pytest.raises(err, match="max_memory"):
        deepsqueeze.load(linear_file(), max_memory=bad)


def test_huge_batch_is_a_memory_error_before_any_copy():
    m = deepsqueeze.load(linear_file(), threads=1, max_memory=1 << 20)
    x = np.ones((4, 48), np.float32)
    ref = m.run(x)
    # 2^20 rows of a zero-stride view: 192 MiB if it were copied; refused first.
    huge = np.broadcast_to(np.ones(48, np.float32), (1 << 20, 48))
    with pytest.raises(deepsqueeze.ResourceLimitError) as e:
        m.run(huge)
    msg = str(e.value)
    assert "1048576, 48" in msg and "max_memory" in msg, msg
    assert np.array_equal(m.run(x), ref), "the model must keep working after a refused run"


def test_huge_batch_under_the_default_limit():
    m = deepsqueeze.load(linear_file(), threads=1)
    huge = np.broadcast_to(np.ones(48, np.float32), (1 << 30, 48))  # 192 GiB of activations
    with pytest.raises(MemoryError, match="max_memory"):
        m.run(huge)


# ---------------------------------------------------------------------------------------
# bad inputs not covered by test_engine_api (dtype, rank, shape, strided are there)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [(0, 48), (0, 0)], ids=str)
def test_empty_batch_is_rejected(batch):
    m = deepsqueeze.load(linear_file(), threads=1)
    with pytest.raises(ValueError, match=r"expected shape \(N, 48\)"):
        m.run(np.zeros(batch, np.float32))


@pytest.mark.parametrize("values", ["f32", "f16", "codebook", "int8_channel", "int4_group"])
@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_nan_inf_inputs(values, special):
    """Documented (docs/HARDENING.md): NaN/Inf inputs are not rejected. Float layers
    propagate them by IEEE rules to the rows that hold them only; quantized layers (one
    activation scale per input) make their whole output NaN rather than silently
    quantizing NaN to 0 or scaling everything by infinity."""
    m = deepsqueeze.load(linear_file(values), threads=1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 48)).astype(np.float32)
    clean = m.run(x)
    x[1, 5] = special
    y = m.run(x)
    if values in ("int8_channel", "int4_group"):
        assert np.isnan(y).all(), y
    else:
        assert not np.isfinite(y[1]).any(), f"row 1 holds {special} but its output is {y[1]}"
        np.testing.assert_array_equal(y[[0, 2]], clean[[0, 2]])


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("special", [np.nan, np.inf], ids=["nan", "inf"])
def test_nan_inf_inputs_sparse_int8(batch, special):
    """The sparse int8 layers (CSR int8 weights + input_quant; batch 1 runs the row-tile
    kernel) follow the dense int8 rule: a NaN/Inf anywhere makes the whole output NaN."""
    m = deepsqueeze.load(linear_file("int8_channel", layout="csr", input_quant=(0.05, 128.0)), threads=1)
    assert "spmm_qu8" in m.layers()[0]["kernel"], m.layers()[0]["kernel"]
    x = np.random.default_rng(3).standard_normal((batch, 48)).astype(np.float32)
    assert np.isfinite(m.run(x)).all()
    x[-1, 7] = special
    y = m.run(x)
    assert np.isnan(y).all(), y


def test_object_and_subclass_arrays():
    m = deepsqueeze.load(linear_file(), threads=1)
    with pytest.raises(ValueError, match="float32"):
        m.run(np.zeros((1, 48), object))
    x = np.ma.masked_array(np.ones((2, 48), np.float32))  # a subclass: read as its data
    np.testing.assert_array_equal(m.run(x), m.run(np.ones((2, 48), np.float32)))


# ---------------------------------------------------------------------------------------
# the file under a loaded model (the load copies what it needs and unmaps)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["truncate", "overwrite_in_place", "delete"])
def test_file_changed_under_a_loaded_model(tmp_path, change):
    path = tmp_path / "m.dsq"
    path.write_bytes(linear_file("int8_channel"))
    m = deepsqueeze.load(path, threads=1)
    x = np.ones((2, 48), np.float32)
    ref = m.run(x)
    if change == "truncate":  # would be SIGBUS if the mapping were still in use
        os.truncate(path, 0)
    elif change == "overwrite_in_place":
        with open(path, "r+b") as f:
            f.write(b"\xff" * os.path.getsize(path))
    else:
        os.remove(path)
    assert np.array_equal(m.run(x), ref)


def test_bytes_buffer_changed_after_load():
    buf = bytearray(linear_file())
    m = deepsqueeze.load(buf, threads=1)
    x = np.ones((1, 48), np.float32)
    ref = m.run(x)
    buf[:] = b"\0" * len(buf)
    del buf
    assert np.array_equal(m.run(x), ref)


# ---------------------------------------------------------------------------------------
# mutated files: only typed errors (a Python-side companion of the libFuzzer target)
# ---------------------------------------------------------------------------------------


def fix_checksums(b: bytearray) -> None:
    """As csrc/fuzz/fuzz_common.cc: fresh CRCs so that mutations reach the parser."""
    struct.pack_into("<Q", b, 16, len(b))
    for e in range(64, 64 + 4 * 32, 32):
        off, size = struct.unpack_from("<QQ", b, e + 8)
        if off <= len(b) and size <= len(b) - off:
            struct.pack_into("<I", b, e + 24, _core.crc32c(bytes(b[off:off + size])))
    struct.pack_into("<I", b, 24, _core.crc32c(bytes(b[64:192])))
    struct.pack_into("<I", b, 28, 0)
    struct.pack_into("<I", b, 28, _core.crc32c(bytes(b[:64])))


MUTATIONS = 2000


def test_mutated_files_end_in_typed_errors():
    seeds = [p.read_bytes() for p in sorted(CORPUS.glob("*.dsq"))]
    rng = np.random.default_rng(123)
    outcomes = {"loaded": 0, "format": 0, "unsupported": 0}
    x = np.ones((1, 2, 6, 6), np.float32)
    for i in range(MUTATIONS):
        b = bytearray(seeds[i % len(seeds)])
        kind = i % 4
        if kind == 0:  # flip bytes
            for pos in rng.integers(0, len(b), size=int(rng.integers(1, 4))):
                b[pos] ^= int(rng.integers(1, 256))
        elif kind == 1:  # a u32 field set to an extreme
            pos = int(rng.integers(64, len(b) - 4)) & ~3
            struct.pack_into("<I", b, pos, [0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x10000][int(rng.integers(0, 5))])
        elif kind == 2:  # a u64 field set to an extreme
            pos = int(rng.integers(64, len(b) - 8)) & ~7
            struct.pack_into("<Q", b, pos, [0, 1 << 40, (1 << 64) - 1, 1 << 32][int(rng.integers(0, 4))])
        else:  # truncation
            del b[int(rng.integers(0, len(b))):]
        if len(b) >= 192 and rng.random() < 0.9:
            fix_checksums(b)
        try:
            m = deepsqueeze.load(bytes(b), threads=1, max_memory=64 << 20)
        except deepsqueeze.FormatError:
            outcomes["format"] += 1
            continue
        except deepsqueeze.UnsupportedModelError:
            outcomes["unsupported"] += 1
            continue
        outcomes["loaded"] += 1
        if m.inputs[0]["shape"][1:] == (2, 6, 6):
            try:
                m.run(x)
            except ValueError:  # a mutated graph may take other shapes
                pass
    print(outcomes)
    assert sum(outcomes.values()) == MUTATIONS
    assert outcomes["format"] > MUTATIONS // 3 and outcomes["loaded"] > 0, outcomes


# ---------------------------------------------------------------------------------------
# concurrency: many Python threads on one Model (the GIL is released in run)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["csr_relative-codebook-huffman", "block_csr-int4_group", "dense-int8_channel",
                                  "all-ops"])
def test_many_threads_one_model_match_serial(name):
    m = deepsqueeze.load(GOLDEN / f"{name}.dsq", threads=2)
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((1 + i % 4, 2, 6, 6)).astype(np.float32) for i in range(8)]
    serial = [m.run(x) for x in xs]
    n_threads, reps = 8, 6
    bad, errors = [], []
    start = threading.Barrier(n_threads)

    def worker(t):
        try:
            start.wait()
            for r in range(reps):
                j = (t + r) % len(xs)
                if not np.array_equal(m.run(xs[j]), serial[j]):
                    bad.append((t, j))
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and not bad, (errors, bad)


def test_fuzz_regressions_end_in_typed_errors():
    """Every input the fuzzer found (tests/fuzz/regressions) loads or fails with a typed
    error, checksums fixed as the fuzz target does."""
    files = sorted(p for p in (ROOT / "tests" / "fuzz" / "regressions").iterdir() if not p.name.startswith("."))
    assert files
    for p in files:
        b = bytearray(p.read_bytes())
        if len(b) >= 192:
            fix_checksums(b)
        try:
            deepsqueeze.load(bytes(b), threads=1, max_memory=64 << 20)
        except (deepsqueeze.FormatError, deepsqueeze.UnsupportedModelError):
            pass


def test_sparse_with_huge_column_count_is_refused_before_unpacking():
    """Found by the fuzzer: 163 entries claiming 117M columns made the sparse layer
    allocate ~900 MB of per-column arrays before max_memory was checked."""
    b = bytearray((ROOT / "tests" / "fuzz" / "regressions" / "sparse-117M-columns-unpack-900MB").read_bytes())
    fix_checksums(b)
    with pytest.raises(deepsqueeze.ResourceLimitError, match="node 'fc'.*to unpack"):
        deepsqueeze.load(bytes(b), threads=1, max_memory=64 << 20)
