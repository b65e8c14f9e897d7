"""Tests of the Python half of the .dsq format (docs/FORMAT.md): format.py, encode.py,
builder.py. numpy + pytest only; no compiled extension needed."""
from __future__ import annotations

import struct
import time

import numpy as np
import pytest

from deepsqueeze import format as F
from deepsqueeze.builder import GraphBuilder
from deepsqueeze.encode import decode_tensor, encode_tensor, pack_int4, payload_bytes, unpack_int4
from deepsqueeze.format import FormatError, crc32c

SECTIONS = ("META", "GRAPH", "TENSORS", "PAYLOAD")
RNG = np.random.default_rng(1234)


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def sample_file() -> F.DsqFile:
    b = GraphBuilder()
    x = b.add_input("x", (-1, 3, 8, 8))
    w1 = b.add_weight("conv1.weight", RNG.standard_normal((4, 3, 3, 3)), "int8_channel")
    b1 = b.add_weight("conv1.bias", RNG.standard_normal(4), "f32")
    y = b.add_node("conv2d", [x], [w1, b1], {"padding": [1, 1], "activation": "relu",
                                            "input_quant": (0.05, 128)}, name="conv1")
    g, be, m, v = (b.add_weight(f"bn.{n}", RNG.standard_normal(4), "f16")
                   for n in ("gamma", "beta", "mean", "var"))
    y = b.add_node("batch_norm", [y], [g, be, m, v], {"eps": 1e-5})
    y = b.add_node("max_pool2d", [y], attrs={"kernel": [2, 2]})
    y2 = b.add_node("relu6", [y])
    y = b.add_node("add", [y, y2])
    y = b.add_node("flatten", [y], attrs={"start_dim": 1})
    # cols = 64 with group 8 -> 8 full groups; also a tensor with a partial last group.
    w2 = b.add_weight("fc.weight", RNG.standard_normal((10, 64)), "int4_group", group_size=8)
    y = b.add_node("linear", [y], [w2, None], {"activation": 0}, name="fc")
    w3 = b.add_weight("odd.weight", RNG.standard_normal((3, 37)), "int4_group", group_size=16)
    y = b.add_node("reshape", [y], attrs={"shape": [0, -1]})
    y = b.add_node("softmax", [y], attrs={"axis": -1})
    b.mark_output(y, "probs")
    assert w3 == 7
    return b.build({"dsq.producer": "deepsqueeze.test 0.1.0", "n_classes": 10,
                    "accuracy": 0.875, "negative": -(2 ** 63), "unicodé": "ünï"})


@pytest.fixture(scope="module")
def sample():
    f = sample_file()
    return f, F.to_bytes(f)


def directory(b: bytes):
    """{name: (entry_index, offset, size)} from a file's section directory."""
    out = {}
    for i in range(4):
        kind, _, off, size, _, _ = struct.unpack_from("<IIQQII", b, 64 + 32 * i)
        out[F.SECTION_NAMES.get(kind, f"kind{kind}")] = (i, off, size)
    return out


def fix_crcs(b) -> bytes:
    """Recompute every section CRC, the directory CRC and the header CRC."""
    b = bytearray(b)
    for name, (i, off, size) in directory(b).items():
        if off + size > len(b):
            continue
        b[64 + 32 * i + 24:64 + 32 * i + 28] = struct.pack("<I", crc32c(bytes(b[off:off + size])))
    b[24:28] = struct.pack("<I", crc32c(bytes(b[64:192])))
    b[28:32] = b"\0\0\0\0"
    b[28:32] = struct.pack("<I", crc32c(bytes(b[:64])))
    return bytes(b)


def rebuild(b: bytes, name: str, content: bytes) -> bytes:
    """The file with one section's content replaced, laid out canonically, all sizes and
    CRCs valid (so only the structural checks can fire)."""
    d = directory(b)
    contents = {n: b[off:off + size] for n, (_, off, size) in d.items()}
    contents[name] = content
    out = bytearray(192)
    entries = []
    for kind, n in enumerate(SECTIONS, start=1):
        out += bytes(-len(out) % 64)
        entries.append(struct.pack("<IIQQII", kind, 0, len(out), len(contents[n]), 0, 0))
        out += contents[n]
    out[64:192] = b"".join(entries)
    out[0:24] = struct.pack("<4sHHIIQ", b"DSQF", 1, 0, 0, 4, len(out))
    return fix_crcs(out)


def section(b: bytes, name: str) -> bytes:
    _, off, size = directory(b)[name]
    return b[off:off + size]


def raw(f: F.DsqFile) -> bytes:
    """Serialize without the writer's self-check, to produce structurally bad files."""
    return b"".join(c if isinstance(c, bytes) else c.tobytes() for c in F._serialize(f, verify=False))


def expect_error(b, sect: str, *words) -> FormatError:
    with pytest.raises(FormatError) as info:
        F.from_bytes(b)
    e = info.value
    assert e.section == sect, str(e)
    assert str(e).startswith(f"{sect} at offset {e.offset}: "), str(e)
    for w in words:
        assert w in str(e), str(e)
    return e


# ---------------------------------------------------------------------------------------
# CRC32C
# ---------------------------------------------------------------------------------------


def test_crc32c_check_values():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    # RFC 3720 (iSCSI) B.4 test vectors.
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
    assert crc32c(np.frombuffer(b"123456789", np.uint8)) == 0xE3069283


def test_crc32c_large_matches_bytewise():
    data = RNG.integers(0, 256, 100_003, dtype=np.uint8)
    expect = F._crc_update_py(0xFFFFFFFF, data.tobytes()) ^ 0xFFFFFFFF
    assert crc32c(data) == expect
    assert crc32c(data.tobytes()) == expect
    assert crc32c(data[5:]) == F._crc_update_py(0xFFFFFFFF, data[5:].tobytes()) ^ 0xFFFFFFFF


# ---------------------------------------------------------------------------------------
# round trip
# ---------------------------------------------------------------------------------------


def test_round_trip_bytes_and_file(sample, tmp_path):
    f, b = sample
    g = F.from_bytes(b)
    assert F.to_bytes(g) == b
    assert g.metadata == f.metadata
    assert list(g.metadata) == list(f.metadata)
    assert type(g.metadata["n_classes"]) is int and type(g.metadata["accuracy"]) is float
    assert g.graph.values == f.graph.values
    assert g.graph.outputs == f.graph.outputs
    assert [(i.value, tuple(i.dims)) for i in g.graph.inputs] == [(0, (-1, 3, 8, 8))]
    for n1, n2 in zip(f.graph.nodes, g.graph.nodes):
        assert (n1.op, n1.name, n1.inputs, n1.outputs, n1.weights) == \
            (n2.op, n2.name, n2.inputs, n2.outputs, n2.weights)
        assert list(n1.attrs) == list(n2.attrs)
        for k in n1.attrs:
            np.testing.assert_allclose(n1.attrs[k], n2.attrs[k], rtol=1e-7)
    assert g.graph.nodes[6].weights == [6, None]
    for t1, t2 in zip(f.tensors, g.tensors):
        assert (t1.name, tuple(t1.dims), t1.values, t1.group_size) == \
            (t2.name, tuple(t2.dims), t2.values, t2.group_size)
        np.testing.assert_array_equal(decode_tensor(t1), decode_tensor(t2))
        assert payload_bytes(t1) == payload_bytes(t2)
    path = tmp_path / "m.dsq"
    F.write(f, path)
    assert path.read_bytes() == b
    for mmap in (True, False):
        h = F.read(path, mmap=mmap)
        assert F.to_bytes(h) == b
    # other buffer types
    assert F.to_bytes(F.from_bytes(bytearray(b))) == b
    assert F.to_bytes(F.from_bytes(np.frombuffer(b, np.uint8))) == b


def test_canonical_layout(sample):
    f, b = sample
    d = directory(b)
    assert [d[n][0] for n in SECTIONS] == [0, 1, 2, 3]
    pos = 192
    for n in SECTIONS:
        _, off, size = d[n]
        assert off == -(-pos // 64) * 64
        assert not any(b[pos:off])  # zero gaps
        pos = off + size
    assert pos == len(b) == struct.unpack_from("<Q", b, 16)[0]
    assert b[:4] == b"DSQF" and struct.unpack_from("<HHII", b, 4) == (1, 0, 0, 4)
    assert not any(b[32:64])
    # streams: 64-aligned, in tensor order then stream order, zero between them
    g = F.from_bytes(b)
    _, poff, psize = d["PAYLOAD"]
    end = 0
    for t in g.tensors:
        for s in t.streams:
            start = s.data.__array_interface__["data"][0] - np.frombuffer(b, np.uint8).__array_interface__["data"][0] - poff
            assert start % 64 == 0 and start >= end and not any(b[poff + end:poff + start])
            end = start + s.data.size
    assert end == psize


def test_quantization_error_bounds():
    w = RNG.standard_normal((7, 5, 3)).astype(np.float32) * 3
    w[2] = 0  # an all-zero row
    t = encode_tensor("w", w, "int8_channel")
    scales = np.frombuffer(t.streams[1].data.tobytes(), "<f4")
    assert scales[2] == 1.0 and np.all(scales > 0)
    err = np.abs(decode_tensor(t).astype(np.float64) - w).reshape(7, -1)
    assert np.all(err <= scales[:, None].astype(np.float64) / 2 * (1 + 1e-6))
    q = t.streams[0].data.view(np.int8)
    assert q.min() >= -127 and q.max() <= 127 and abs(q).max() == 127

    for gs, shape in ((8, (6, 40)), (16, (4, 3, 5)), (64, (33,)), (8, (1, 8))):
        w = RNG.standard_normal(shape).astype(np.float32)
        t = encode_tensor("w", w, "int4_group", group_size=gs)
        rows = shape[0] if len(shape) > 1 else 1
        cols = w.size // rows
        ng = -(-cols // gs)
        scales = np.frombuffer(t.streams[1].data.tobytes(), "<f4").reshape(rows, ng)
        assert t.streams[0].count == w.size and t.streams[0].data.size == (w.size + 1) // 2
        assert t.streams[1].count == rows * ng and t.group_size == gs
        per = np.repeat(scales, gs, axis=1)[:, :cols].astype(np.float64)
        err = np.abs(decode_tensor(t).astype(np.float64) - w).reshape(rows, cols)
        assert np.all(err <= per / 2 * (1 + 1e-6))
        q = unpack_int4(t.streams[0].data, w.size)
        assert q.min() >= -7 and q.max() <= 7
        assert decode_tensor(t).shape == shape and decode_tensor(t).dtype == np.float32

    # int8_scale="tensor": every row takes max|w| / 127 of the whole tensor.
    w = RNG.standard_normal((6, 10)).astype(np.float32) * np.arange(1, 7, dtype=np.float32)[:, None]
    t = encode_tensor("w", w, "int8_channel", int8_scale="tensor")
    scales = np.frombuffer(t.streams[1].data.tobytes(), "<f4")
    assert np.all(scales == np.float32(np.abs(w).max() / 127))
    assert np.all(np.abs(decode_tensor(t).astype(np.float64) - w) <= scales[0] / 2 * (1 + 1e-6))
    # 5 shared values stay 5 int8 codes (per-row scales would make up to 6 x 5)
    shared = np.array([-1.5, -0.4, 0.1, 0.7, 2.0], np.float32)[RNG.integers(0, 5, (6, 10))]
    q = encode_tensor("w", shared, "int8_channel", int8_scale="tensor").streams[0].data.view(np.int8)
    assert len(np.unique(q)) == 5
    with pytest.raises(ValueError, match="int8_scale"):
        encode_tensor("w", w, "int8_channel", int8_scale="row")

    w = RNG.standard_normal((3, 4)).astype(np.float32)
    assert np.array_equal(decode_tensor(encode_tensor("a", w, "f32")), w)
    assert np.array_equal(decode_tensor(encode_tensor("a", w, "f16")), w.astype(np.float16).astype(np.float32))
    assert payload_bytes(encode_tensor("a", w, "f16")) == 24
    assert payload_bytes(encode_tensor("a", w, "int8_channel")) == 12 + 12


def test_int4_nibble_layout():
    # scale = 7/7 = 1: q = w. Element i in byte i//2, low nibble for even i.
    w = np.array([[7, -7, 1, 0, -1, 2, 3, -3]], np.float32)
    t = encode_tensor("w", w, "int4_group", group_size=8)
    assert t.streams[0].data.tolist() == [0x97, 0x01, 0x2F, 0xD3]
    assert pack_int4(np.array([-8, 7, 5])).tolist() == [0x78, 0x05]
    assert unpack_int4(np.array([0x78, 0x05], np.uint8), 3).tolist() == [-8, 7, 5]


def test_encode_rejects():
    w = np.ones((2, 16), np.float32)
    for gs in (4, 12, 131072, 0):
        with pytest.raises(ValueError):
            encode_tensor("w", w, "int4_group", group_size=gs)
    with pytest.raises(ValueError):
        encode_tensor("w", w, "int2")
    with pytest.raises(ValueError):
        encode_tensor("w", np.array([np.inf, 1.0]), "int8_channel")
    with pytest.raises(ValueError):
        encode_tensor("w", np.float32(1.0), "f32")


# ---------------------------------------------------------------------------------------
# writer / builder validation
# ---------------------------------------------------------------------------------------


def test_writer_rejects_bad_models(sample):
    f, _ = sample
    g = F.from_bytes(F.to_bytes(f))
    g.metadata["flag"] = True
    with pytest.raises(ValueError, match="bool"):
        F.to_bytes(g)
    g = F.from_bytes(F.to_bytes(f))
    g.graph.nodes[0].inputs = [97]
    with pytest.raises(ValueError, match="out of range"):
        F.to_bytes(g)
    g = F.from_bytes(F.to_bytes(f))
    g.graph.nodes[0].op = "gelu"
    with pytest.raises(ValueError, match="unknown"):
        F.to_bytes(g)


def test_builder_validation():
    b = GraphBuilder()
    x = b.add_input("x", (-1, 4))
    with pytest.raises(ValueError, match="unknown op"):
        b.add_node("gelu", [x])
    with pytest.raises(ValueError, match="not defined"):
        b.add_node("relu", [x], attrs={"axis": 1})
    with pytest.raises(ValueError, match="ints"):
        b.add_node("softmax", [x], attrs={"axis": 1.5})
    with pytest.raises(ValueError, match="does not exist"):
        b.add_node("relu", [5])
    with pytest.raises(ValueError, match="inputs"):
        b.add_node("add", [x])
    with pytest.raises(ValueError, match="kernel"):
        b.add_node("max_pool2d", [x])
    with pytest.raises(ValueError, match="values"):
        b.add_node("max_pool2d", [x], attrs={"kernel": 3})
    with pytest.raises(ValueError):
        b.add_input("x", (1,))
    r1 = b.add_node("relu", [x])
    r2 = b.add_node("relu", [r1], name="act")
    r3 = b.add_node("relu", [r2], output_names=["act"])
    outs = b.add_node("concat", [r1, r2], n_outputs=2, attrs={"axis": 1})
    assert b.values == ["x", "relu_0", "act", "act_1", "concat_3:0", "concat_3:1"]
    assert [n.name for n in b.nodes] == ["relu_0", "act", "relu_2", "concat_3"]
    assert outs == [4, 5]
    s = b.add_node("softmax", [r3], attrs={"axis": -1})
    assert b.nodes[-1].attrs == {"axis": [-1]}
    b.mark_output(s, "y")
    f = b.build({"k": 1})
    assert F.from_bytes(F.to_bytes(f)).graph.values[-1] == "y"
    with pytest.raises(ValueError):
        GraphBuilder().build()


# ---------------------------------------------------------------------------------------
# reader: header and directory
# ---------------------------------------------------------------------------------------


def patch(b: bytes, off: int, fmt: str, *vals) -> bytearray:
    b = bytearray(b)
    struct.pack_into(fmt, b, off, *vals)
    return b


def test_bad_magic(sample):
    _, b = sample
    e = expect_error(b"DSQX" + b[4:], "header", "magic")
    assert e.offset == 0
    expect_error(b"PK\x03\x04" + bytes(100), "header", "magic")
    expect_error(b"", "header")
    expect_error(b"DS", "header", "shorter")


def test_versions_and_flags(sample):
    _, b = sample
    e = expect_error(fix_crcs(patch(b, 4, "<H", 2)), "header", "version")
    assert e.offset == 4
    expect_error(patch(b, 4, "<H", 2), "header", "version")  # before the CRC check
    e = expect_error(fix_crcs(patch(b, 6, "<H", 3)), "header", "version")
    assert e.offset == 6
    F.from_bytes(fix_crcs(patch(b, 6, "<H", 1)))  # a 1.2 reader reads a 1.0 file marked 1.1
    F.from_bytes(fix_crcs(patch(b, 6, "<H", 2)))  # or 1.2
    e = expect_error(fix_crcs(patch(b, 8, "<I", 1 << 7)), "header", "flags")
    assert e.offset == 8
    e = expect_error(fix_crcs(patch(b, 12, "<I", 5)), "header", "section_count")
    e = expect_error(fix_crcs(patch(b, 40, "<B", 1)), "header", "reserved")
    assert e.offset == 40


def test_truncation_everywhere(sample):
    _, b = sample
    d = directory(b)
    cuts = {1, 32, 63, 64, 100, 191, 192}
    for _, off, size in d.values():
        cuts |= {off, off + 1, off + size // 2, off + size - 1, off + size}
    for n in sorted(cuts):
        if n >= len(b):
            continue
        e = expect_error(b[:n], "header")
        if n >= 64:
            assert e.offset == 16 and "truncated" in str(e)
    # With the header's file_size fixed up, the directory notices the missing bytes.
    for name in SECTIONS:
        _, off, size = d[name]
        for n in (off, off + size // 2, off + size - 1):
            t = fix_crcs(patch(b[:n], 16, "<Q", n))
            expect_error(t, "directory", name)
    # Sections truncated inside with a consistent directory: the section reports it.
    for name in SECTIONS:
        content = section(b, name)
        for n in {0, 1, 3, 4, 5, len(content) // 3, len(content) // 2, len(content) - 1}:
            expect_error(rebuild(b, name, content[:n]), name)


def test_flipped_byte_in_every_section(sample):
    _, b = sample
    d = directory(b)
    cases = [("header", p) for p in (0 + 5, 12, 16, 24, 28, 33, 63)]
    cases += [("directory", p) for p in (64, 64 + 8, 64 + 32 + 16, 191)]
    for name in SECTIONS:
        _, off, size = d[name]
        cases += [(name, p) for p in (off, off + size // 2, off + size - 1)]
    for name, p in cases:
        t = bytearray(b)
        t[p] ^= 0x20
        e = expect_error(bytes(t), name)
        assert "CRC" in str(e) or name == "header", str(e)


def test_directory_rules(sample):
    _, b = sample
    d = directory(b)
    i, off, size = d["GRAPH"]
    e = expect_error(fix_crcs(patch(b, 64 + 32 * i + 8, "<Q", off + 8)), "directory", "multiple of 64")
    assert e.offset == 64 + 32 * i + 8
    expect_error(fix_crcs(patch(b, 64 + 32 * i, "<I", 1)), "directory", "twice")
    expect_error(fix_crcs(patch(b, 64 + 32 * i, "<I", 9)), "directory", "kind")
    expect_error(fix_crcs(patch(b, 64 + 32 * i + 4, "<I", 1)), "directory", "flags")
    expect_error(fix_crcs(patch(b, 64 + 32 * i + 8, "<Q", 128)), "directory")
    _, moff, msize = d["META"]
    expect_error(fix_crcs(patch(b, 64 + 32 * i + 8, "<Q", moff)), "directory", "overlap")
    expect_error(fix_crcs(patch(b, 64 + 32 * i + 16, "<Q", 1 << 62)), "directory", "past")


# ---------------------------------------------------------------------------------------
# reader: section contents
# ---------------------------------------------------------------------------------------


def test_absurd_counts_fail_fast(sample):
    _, b = sample
    t0 = time.perf_counter()
    for name in ("META", "GRAPH", "TENSORS"):
        content = section(b, name)
        bad = struct.pack("<I", 0xFFFFFFFF) + content[4:]
        e = expect_error(rebuild(b, name, bad), name, "4294967295", "cannot fit")
        assert e.offset == directory(b)[name][1]
    # a string length far beyond 4096
    content = section(b, "META")
    expect_error(rebuild(b, "META", content[:4] + struct.pack("<I", 0xFFFFFFF0) + content[8:]),
                 "META", "exceeds 4096")
    assert time.perf_counter() - t0 < 2.0


def graph_field_offsets(f: F.DsqFile):
    """Offsets (within GRAPH) of the input_count field and the first node."""
    pos = 4 + sum(4 + len(v.encode()) + 1 for v in f.graph.values)
    input_count_at = pos
    pos += 4 + sum(4 + 1 + 8 * len(i.dims) for i in f.graph.inputs)
    pos += 4 + 4 * len(f.graph.outputs)
    node_count_at = pos
    return input_count_at, node_count_at


def test_graph_structure_errors(sample):
    f, b = sample
    _, goff, _ = directory(b)["GRAPH"]
    # out-of-range value index: the message names node, value and value_count
    g = F.from_bytes(b)
    g.graph.nodes[3].inputs = [97]
    t = raw(g)
    e = expect_error(t, "GRAPH", "node 3", "input", "97 out of range", f"value_count {len(g.graph.values)}")
    assert struct.unpack_from("<I", t, e.offset)[0] == 97
    # a node using a value before it is produced (nodes out of order)
    g = F.from_bytes(b)
    g.graph.nodes[1], g.graph.nodes[2] = g.graph.nodes[2], g.graph.nodes[1]
    t = raw(g)
    e = expect_error(t, "GRAPH", "before it is produced")
    assert e.offset > goff
    # a value produced twice, and a graph input produced by a node
    g = F.from_bytes(b)
    g.graph.nodes[2].outputs = list(g.graph.nodes[1].outputs)
    expect_error(raw(g), "GRAPH", "already produced")
    g = F.from_bytes(b)
    g.graph.nodes[0].outputs = [0]
    expect_error(raw(g), "GRAPH", "graph input")
    # output never produced
    g = F.from_bytes(b)
    g.graph.values.append("dangling")
    g.graph.outputs = [len(g.graph.values) - 1]
    expect_error(raw(g), "GRAPH", "never produced")
    # weight index out of range
    g = F.from_bytes(b)
    g.graph.nodes[0].weights = [0, 42]
    expect_error(raw(g), "GRAPH", "tensor 42 out of range")
    # duplicate value names / empty names / duplicate node names
    g = F.from_bytes(b)
    g.graph.values[1] = g.graph.values[0]
    expect_error(raw(g), "GRAPH", "duplicate value name")
    g = F.from_bytes(b)
    g.graph.nodes[1].name = g.graph.nodes[0].name
    expect_error(raw(g), "GRAPH", "duplicate node name")
    # attributes: unknown for op, wrong count, wrong type, unknown activation
    g = F.from_bytes(b)
    g.graph.nodes[3].attrs = {"eps": [1.0]}
    expect_error(raw(g), "GRAPH", "not defined for op relu6")
    g = F.from_bytes(b)
    g.graph.nodes[0].attrs["padding"] = [1, 1, 1]
    expect_error(raw(g), "GRAPH", "padding has 3 values")
    g = F.from_bytes(b)
    g.graph.nodes[0].attrs["activation"] = [7]
    expect_error(raw(g), "GRAPH", "activation")
    g = F.from_bytes(b)
    g.graph.inputs[0].dims = (0, 3)
    expect_error(raw(g), "GRAPH", "bad dim")
    g = F.from_bytes(b)
    g.graph.inputs[0].dims = (1,) * 9
    expect_error(raw(g), "GRAPH", "rank 9")
    # no inputs / no outputs
    content = section(b, "GRAPH")
    ic, _ = graph_field_offsets(f)
    bad = bytearray(content)
    struct.pack_into("<I", bad, ic, 0)
    expect_error(rebuild(b, "GRAPH", bytes(bad)), "GRAPH", "no inputs")
    # unknown op code, nonzero reserved, wrong attr type code: patch the first node
    _, nc = graph_field_offsets(f)
    node0 = nc + 4
    for off, fmt, val, word in ((node0, "<H", 99, "unknown op 99"), (node0 + 2, "<H", 1, "reserved"),
                                (node0, "<H", 0, "unknown op 0")):
        bad = bytearray(content)
        struct.pack_into(fmt, bad, off, val)
        e = expect_error(rebuild(b, "GRAPH", bytes(bad)), "GRAPH", word)
        assert e.offset == directory(rebuild(b, "GRAPH", bytes(bad)))["GRAPH"][1] + off
    # trailing bytes
    expect_error(rebuild(b, "GRAPH", content + b"\0"), "GRAPH", "trailing")
    expect_error(rebuild(b, "META", section(b, "META") + b"\0"), "META", "trailing")
    expect_error(rebuild(b, "TENSORS", section(b, "TENSORS") + b"\0"), "TENSORS", "trailing")


def test_meta_errors(sample):
    f, b = sample
    for bad_meta, word in ((struct.pack("<I", 1) + struct.pack("<I", 0) + b"\x01" + struct.pack("<I", 0), "empty key"),
                           (struct.pack("<I", 2) + (struct.pack("<I", 1) + b"k\x02" + bytes(8)) * 2, "duplicate"),
                           (struct.pack("<I", 1) + struct.pack("<I", 1) + b"k\x04" + bytes(8), "unknown value type 4"),
                           (struct.pack("<I", 1) + struct.pack("<I", 2) + b"\xff\xfe\x02" + bytes(8), "UTF-8")):
        expect_error(rebuild(b, "META", bad_meta), "META", word)


def test_tensor_errors(sample):
    f, b = sample

    def bad(mutate, *words, sect="TENSORS"):
        g = F.from_bytes(b)
        mutate(g.tensors)
        return expect_error(raw(g), sect, *words)

    bad(lambda ts: setattr(ts[0], "group_size", 8), "group_size must be 0")
    bad(lambda ts: setattr(ts[7], "group_size", 12), "power of two")
    bad(lambda ts: setattr(ts[7], "group_size", 32), "count")  # scales count no longer matches
    bad(lambda ts: setattr(ts[0], "codebook_bits", 4), "codebook_bits")
    bad(lambda ts: setattr(ts[0], "dims", (4, 3, 3, 0)), "dim 0")
    bad(lambda ts: setattr(ts[0], "dims", (1 << 20, 1 << 20)), "2^40")
    bad(lambda ts: setattr(ts[1], "name", ts[0].name), "duplicate tensor name")
    bad(lambda ts: ts[0].streams.pop(), "needs 2 streams, found 1")
    bad(lambda ts: setattr(ts[0].streams[0], "count", 5), "count 5")
    bad(lambda ts: setattr(ts[0].streams[0], "data", ts[0].streams[0].data[:-1]), "nbytes")
    bad(lambda ts: setattr(ts[0].streams[1], "role", "values"), "role")
    bad(lambda ts: setattr(ts[0].streams[0], "elem_type", "u8"), "elem_type")
    # enum codes and stream bounds patched in the bytes
    content = section(b, "TENSORS")
    name0 = f.tensors[0].name.encode()
    enc = 4 + 4 + len(name0)  # rank, layout, values, entropy of tensor 0
    for off, val, word in ((enc, 9, "rank 9"), (enc + 1, 1, "layout 1 (csr needs format 1.1"),
                           (enc + 1, 4, "unknown layout 4"),
                           (enc + 2, 4, "values encoding 4 (codebook needs format 1.1"),
                           (enc + 2, 5, "values encoding 5"),
                           (enc + 3, 1, "entropy coding 1 (huffman needs format 1.1"),
                           (enc + 3, 2, "entropy coding 2")):
        t = bytearray(content)
        t[off] = val
        e = expect_error(rebuild(b, "TENSORS", bytes(t)), "TENSORS", word)
        assert e.offset == directory(b)["TENSORS"][1] + off
    # a stream offset past the payload / misaligned
    streams_at = enc + 4 + 8 * 4 + 16 + 4
    t = bytearray(content)
    struct.pack_into("<Q", t, streams_at + 16, 1 << 40)
    expect_error(rebuild(b, "TENSORS", bytes(t)), "PAYLOAD", "run past")
    struct.pack_into("<Q", t, streams_at + 16, 65)
    expect_error(rebuild(b, "TENSORS", bytes(t)), "TENSORS", "multiple of 64")
    struct.pack_into("<Q", t, streams_at + 16, 0)
    struct.pack_into("<I", t, streams_at + 4, 1)
    expect_error(rebuild(b, "TENSORS", bytes(t)), "TENSORS", "reserved")


def test_only_format_errors_from_mangled_sections(sample):
    """Every byte of META/GRAPH/TENSORS changed (CRCs recomputed so the parser sees it),
    and many truncations with a consistent directory: FormatError or a valid file, never
    another exception."""
    _, b = sample
    for name in ("META", "GRAPH", "TENSORS"):
        content = section(b, name)
        _, off, size = directory(b)[name]
        for p in range(size):
            for x in (0xFF, 0x01):
                t = bytearray(b)
                t[off + p] ^= x
                try:
                    F.from_bytes(fix_crcs(t))
                except FormatError as e:
                    assert e.section in (name, "PAYLOAD"), str(e)
        for n in range(0, len(content), 3):
            try:
                F.from_bytes(rebuild(b, name, content[:n]))
            except FormatError as e:
                assert e.section in (name, "PAYLOAD")


def test_graph_without_weights():
    b = GraphBuilder()
    x = b.add_input("x", (2, 3))
    b.mark_output(b.add_node("relu", [x]))
    f = b.build()
    data = F.to_bytes(f)
    _, off, size = directory(data)["PAYLOAD"]
    assert size == 0 and off == len(data)
    g = F.from_bytes(data)
    assert F.to_bytes(g) == data and g.tensors == [] and g.metadata == {}


# ---------------------------------------------------------------------------------------
# format 1.1: layouts x values x entropy (tests/format11_cases.py)
# ---------------------------------------------------------------------------------------

from format11_cases import (corruptions, encode, encodings, matrices,  # noqa: E402
                            one_tensor_file)
from deepsqueeze.encode import bits_per_nonzero  # noqa: E402

MATS = matrices()
ENCODINGS = encodings()


@pytest.mark.parametrize("mat", list(MATS))
def test_11_every_encoding_round_trips_exactly(mat):
    m = MATS[mat]
    dense_ref = {}
    for tag, kw in ENCODINGS:
        t = encode("w", m, kw)
        f = one_tensor_file(t)
        data = F.to_bytes(f)
        uses_11 = kw["layout"] != "dense" or kw["values"] == "codebook" or t.entropy == "huffman"
        uses_12 = any((s.role == "row_ptr" and s.elem_type == "u16")
                      or (s.entropy == "huffman" and int(np.asarray(s.data)[1]) == 1) for s in t.streams)
        assert struct.unpack_from("<H", data, 6)[0] == (2 if uses_12 else 1 if uses_11 else 0), tag
        assert uses_12 == (kw["layout"] != "dense" or F.tensor_minor(t) == 2), tag
        g = F.from_bytes(data)
        got = decode_tensor(g.tensors[0])
        assert got.dtype == np.float32 and got.shape == m.shape, tag
        if kw["values"] in ("f32", "f16", "codebook"):  # exact: integers are exact in f16 too
            assert np.array_equal(got, m), tag
        else:  # lossless against the dense encoding of the same values (no new rounding)
            key = kw["values"]
            if key not in dense_ref:
                dense_ref[key] = decode_tensor(encode_tensor("w", m, values=key, group_size=8))
            assert np.array_equal(got, dense_ref[key]), tag
        assert F.to_bytes(g) == data, tag  # read + write gives the same bytes
        if kw["huffman"] is True:
            assert all(s.entropy == "huffman" for s in t.streams
                       if s.elem_type in ("i8", "i4", "bits") and s.count), tag


def test_11_version_only_when_needed():
    m = MATS["empty_rows"]
    for values in ("f32", "f16", "int8_channel", "int4_group"):
        assert F.to_bytes(one_tensor_file(encode_tensor("w", m, values=values, group_size=8)))[6] == 0
    # int4 Huffman (alphabet 16): the dense code lengths are the shorter form -> 1.1
    assert F.to_bytes(one_tensor_file(encode_tensor("w", m, values="int4_group", group_size=8, huffman=True)))[6] == 1
    # int8 Huffman (alphabet 256, 15 symbols): sparse code lengths -> 1.2
    assert F.to_bytes(one_tensor_file(encode_tensor("w", m, values="int8_channel", huffman=True)))[6] == 2
    assert F.to_bytes(one_tensor_file(encode_tensor("w", m, layout="csr")))[6] == 2  # u16 row_ptr
    one = encode_tensor("w", m, values="int8_channel", int8_scale="tensor")
    assert F.to_bytes(one_tensor_file(one))[6] == 2 and one.streams[1].count == 1
    row = encode_tensor("w", m[:1], values="int8_channel", int8_scale="tensor")  # one row: 1.0
    assert F.to_bytes(one_tensor_file(row))[6] == 0


def test_12_row_ptr_width_and_single_scale():
    """u16 row_ptr exactly while the entry count fits; one int8 scale decodes like the
    per-row ones it replaces."""
    m = np.zeros((3, 70000), np.float32)
    m[0, :65535] = 1
    t = encode_tensor("w", m, layout="csr")
    assert t.streams[0].elem_type == "u16" and t.streams[1].count == 65535
    m[2, 5] = 2
    t = encode_tensor("w", m, layout="csr")
    assert t.streams[0].elem_type == "u32" and t.streams[1].count == 65536
    assert np.array_equal(decode_tensor(F.from_bytes(F.to_bytes(one_tensor_file(t))).tensors[0]), m)
    w = np.random.default_rng(3).standard_normal((6, 20)).astype(np.float32)
    per_row = encode_tensor("w", w, values="int8_channel", int8_scale="tensor", layout="csr_relative")
    assert per_row.streams[-1].count == 1
    scale = np.frombuffer(per_row.streams[-1].data.tobytes(), "<f4")[0]
    assert scale == np.float32(np.abs(w).max() / 127)
    got = decode_tensor(F.from_bytes(F.to_bytes(one_tensor_file(per_row))).tensors[0])
    np.testing.assert_array_equal(got, np.clip(np.rint(w / np.float64(scale)), -127, 127).astype(np.float32) * scale)


def test_11_csr_structure():
    m = MATS["empty_rows"]
    t = encode_tensor("w", m, layout="csr")
    assert [s.role for s in t.streams] == ["row_ptr", "col_idx", "values"]
    assert t.streams[0].elem_type == "u16"
    row_ptr = np.frombuffer(t.streams[0].data.tobytes(), "<u2")
    assert row_ptr[0] == 0 and row_ptr[-1] == np.count_nonzero(m)
    assert np.array_equal(np.diff(row_ptr), np.count_nonzero(m, axis=1))
    assert t.streams[1].elem_type == "u16"
    wide = np.zeros((2, 70000), np.float32)
    wide[1, 69999] = 1
    assert encode_tensor("w", wide, layout="csr").streams[1].elem_type == "u32"


def test_11_relative_fillers():
    """A filler (gap 2^b - 1) advances the column by 2^b - 1 and holds no value, so every
    gap is representable: gap g = f * (2^b - 1) + r with f fillers."""
    m = np.zeros((1, 40), np.float32)
    m[0, [2, 3, 6, 39]] = [1, 2, 3, 4]
    t = encode_tensor("w", m, layout="csr_relative", index_bits=2)
    gaps = F.unpack_bits(t.streams[1].data, t.streams[1].count, 2).tolist()
    # col 2: gap 2; col 3: gap 0; col 6: gap 2; col 39: gap 32 = 10 fillers (30) + 2
    assert gaps == [2, 0, 2] + [3] * 10 + [2]
    for g in range(0, 20):  # gaps of every residue, including 2^b - 1 and its multiples
        m = np.zeros((1, g + 2), np.float32)
        m[0, 0] = 1
        m[0, g + 1] = 2
        for b in (2, 3):
            assert np.array_equal(decode_tensor(encode_tensor("w", m, layout="csr_relative", index_bits=b)), m)


def test_11_block_padding_and_codebook_zero():
    m = MATS["odd_blocks"]
    t = encode_tensor("w", m, layout="block_csr", block=(3, 4), values="codebook")
    assert (t.block_rows, t.block_cols) == (3, 4)
    assert t.streams[0].count == -(-7 // 3) + 1
    assert np.array_equal(decode_tensor(t), m)


def test_11_codebook_bits():
    m = np.where(MATS["empty_rows"] != 0, 2.5, 0).astype(np.float32)
    t = encode_tensor("w", m, values="codebook")  # {0, 2.5}: one bit
    assert t.codebook_bits == 1 and t.streams[0].count == 2
    assert np.array_equal(decode_tensor(t), m)
    t = encode_tensor("w", m, values="codebook", layout="csr")  # only 2.5 stored
    assert t.codebook_bits == 1
    v = np.random.default_rng(5).standard_normal(256).astype(np.float32)
    m8 = np.concatenate([v, v[:64]]).reshape(16, 20)
    t = encode_tensor("w", m8, values="codebook")
    assert t.codebook_bits == 8 and np.array_equal(decode_tensor(t), m8)
    with pytest.raises(ValueError, match="distinct"):
        encode_tensor("w", m8, values="codebook", codebook_bits=7)
    with pytest.raises(ValueError, match="distinct"):
        encode_tensor("w", np.arange(257, dtype=np.float32), values="codebook")
    # per row: each row has its own table of at most 2^b values
    rows = np.arange(12, dtype=np.float32).reshape(6, 2)
    t = encode_tensor("w", rows, values="codebook", codebook_bits=1, codebook_per_row=True)
    assert t.streams[0].count == 6 * 2 and np.array_equal(decode_tensor(t), rows)
    with pytest.raises(ValueError):
        encode_tensor("w", rows, values="codebook", codebook_bits=1)


def test_11_huffman_one_symbol_and_auto():
    m = MATS["same_value"]
    t = encode_tensor("w", m, values="codebook", layout="csr_relative", huffman=True)
    assert t.entropy == "huffman"
    assert [s.entropy for s in t.streams] == ["none", "huffman", "none", "huffman"]
    assert np.array_equal(decode_tensor(F.from_bytes(F.to_bytes(one_tensor_file(t))).tensors[0]), m)
    # auto keeps a stream raw unless coding it saves bytes
    small = encode_tensor("w", np.array([[1.0, -2.0]]), values="int8_channel", huffman="auto")
    assert small.entropy == "none"
    big = encode_tensor("w", np.where(np.arange(4096) % 7 == 0, 1.0, 0.0).reshape(64, 64),
                        values="int8_channel", huffman="auto")
    assert big.entropy == "huffman" and payload_bytes(big) < 4096
    with pytest.raises(ValueError):
        encode_tensor("w", m, huffman="yes")


def test_11_bits_per_nonzero():
    m = MATS["long_gaps"]
    t = encode_tensor("w", m, values="codebook", layout="csr_relative", index_bits=4)
    r = bits_per_nonzero(t)
    nnz = np.count_nonzero(m)
    assert r["nnz"] == nnz
    assert r["values_bits"] == pytest.approx(8 * (t.streams[2].data.size + t.streams[3].data.size) / nnz)
    assert r["index_bits"] == pytest.approx(8 * (t.streams[0].data.size + t.streams[1].data.size) / nnz)
    assert r["total"] == pytest.approx(r["values_bits"] + r["index_bits"])
    h = bits_per_nonzero(encode_tensor("w", m, values="codebook", layout="csr_relative", huffman=True))
    assert h["huffman"] and h["total_before_huffman"] == pytest.approx(r["total"])


def test_11_encoder_rejects():
    m = MATS["odd_blocks"]
    for kw in ({"layout": "coo"}, {"layout": "csr_relative", "index_bits": 1},
               {"layout": "csr_relative", "index_bits": 9}, {"layout": "block_csr", "block": (1, 1)},
               {"layout": "block_csr", "block": (17, 1)}, {"values": "codebook", "codebook_bits": 0},
               {"values": "codebook", "codebook_bits": 9}):
        with pytest.raises(ValueError):
            encode_tensor("w", m, **kw)


@pytest.mark.parametrize("name,make,section,facts", corruptions(), ids=[c[0] for c in corruptions()])
def test_11_corrupt_files(name, make, section, facts):
    e = expect_error(make(), section, *facts)
    assert e.offset > 0


def test_11_writer_refuses_bad_content():
    from format11_cases import _row_ptr, _tensor
    t = _row_ptr(_tensor("csr"), [0, 2, 1, 5, 6])
    with pytest.raises(ValueError, match="decreases"):
        F.to_bytes(one_tensor_file(t))
