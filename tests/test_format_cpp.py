"""The C++ half of the .dsq format (csrc/format/) against the Python half and against bad
files: the Python writer and the C++ reader/writer agree byte for byte, and every bad
file through deepsqueeze.load(bytes) is a FormatError naming the right section, a real
offset and the key fact. Never a crash (checked in a subprocess)."""
from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import deepsqueeze
from deepsqueeze import _core
from deepsqueeze import format as F
from deepsqueeze.builder import GraphBuilder

from conftest import (SECTIONS, directory, fix_crcs, fix_directory_crc, fix_header_crc, raw_bytes,
                      rebuild, section_bytes, set_file_size)

RNG = np.random.default_rng(77)
ENCS = ("f32", "f16", "int8_channel", "int4_group")


def all_ops_file(metadata=None) -> F.DsqFile:
    """A runnable graph that uses every op of FORMAT.md and every weight encoding."""
    b = GraphBuilder()
    x = b.add_input("x", (-1, 3, 9, 9))
    side = b.add_input("side", (-1, 6, 1, 1))
    w = {e: b.add_weight(f"conv.{e}", RNG.standard_normal((6, 3, 3, 3)), e, 8) for e in ENCS}
    cb = b.add_weight("conv.bias", RNG.standard_normal(6), "f16")
    branches = []
    for i, e in enumerate(ENCS):
        attrs = {"padding": [1, 1], "activation": i % 3}
        if e == "int8_channel":
            attrs["input_quant"] = [0.03, 100.0]
        branches.append(b.add_node("conv2d", [x], [w[e], cb if i % 2 else None], attrs, name=f"conv_{e}"))
    y = b.add_node("add", branches[:2], attrs={"activation": "relu6"})
    y2 = b.add_node("mul", branches[2:])
    y = b.add_node("add", [y, y2])
    y = b.add_node("mul", [y, side])
    bn = [b.add_weight(f"bn.{n}", RNG.uniform(0.5, 1.5, 6), "f32") for n in ("g", "b", "m", "v")]
    y = b.add_node("batch_norm", [y], bn, {"eps": 1e-3})
    y = b.add_node("relu", [y])
    y = b.add_node("hardswish", [y])
    a = b.add_node("max_pool2d", [y], attrs={"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1],
                                            "dilation": [1, 1], "ceil_mode": 1})
    c = b.add_node("avg_pool2d", [y], attrs={"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1],
                                            "ceil_mode": True, "count_include_pad": 0})
    y = b.add_node("concat", [a, c], attrs={"axis": 1})
    y = b.add_node("relu6", [y])
    g = b.add_node("global_avg_pool2d", [y])
    fl = b.add_node("flatten", [y], attrs={"start_dim": 1, "end_dim": -1})
    fc = b.add_weight("fc.w", RNG.standard_normal((10, 12 * 25)), "int4_group", 32)
    fcb = b.add_weight("fc.b", RNG.standard_normal(10), "int8_channel")
    y = b.add_node("linear", [fl], [fc, fcb], {"activation": 0})
    y = b.add_node("sigmoid", [y])
    y = b.add_node("reshape", [y], attrs={"shape": [0, 2, -1]})
    y = b.add_node("softmax", [y], attrs={"axis": -1})
    b.mark_output(y, "probs")
    b.mark_output(g, "pooled")
    md = {"dsq.producer": "deepsqueeze.tests 0.1.0", "dsq.source_model": "AllOps",
          "dsq.export_config": json.dumps({"weights": "mixed"}), "dsq.notes": "ünïcödé ✓ 🚀",
          "int_max": 2 ** 63 - 1, "int_min": -(2 ** 63), "zero": 0, "f_pi": math.pi,
          "f_neg0": -0.0, "f_inf": float("inf"), "f_nan": float("nan"), "f_tiny": 5e-324,
          "empty": "", "big": "x" * 70000}
    return b.build(md if metadata is None else metadata)


@pytest.fixture(scope="module")
def good():
    return F.to_bytes(all_ops_file())


def expect_error(data, section, *facts, offset_range=None):
    with pytest.raises(deepsqueeze.FormatError) as e:
        deepsqueeze.load(data, threads=1)
    err = e.value
    msg = str(err)
    assert err.section == section, f"section {err.section!r}, expected {section!r}: {msg}"
    assert isinstance(err.offset, int) and err.offset >= 0, msg
    if offset_range is not None:
        lo, hi = offset_range
        assert lo <= err.offset < hi, f"offset {err.offset} not in [{lo}, {hi}): {msg}"
    for fact in facts:
        assert fact.lower() in msg.lower(), f"{fact!r} not in: {msg}"
    assert msg.startswith(f"{section} at offset {err.offset}"), msg
    return err


def section_range(data, name):
    if name == "header":
        return 0, 64
    if name == "directory":
        return 64, 64 + 4 * 32
    _, off, size = directory(data)[name]
    return off, off + size


# ---------------------------------------------------------------------------------------
# round trip
# ---------------------------------------------------------------------------------------


def test_all_ops_file_runs(good):
    m = deepsqueeze.load(good, threads=2)
    x = RNG.standard_normal((2, 3, 9, 9)).astype(np.float32)
    s = RNG.standard_normal((2, 6, 1, 1)).astype(np.float32)
    r = m.run({"x": x, "side": s})
    assert r["probs"].shape == (2, 2, 5) and r["pooled"].shape == (2, 12, 1, 1)
    assert np.allclose(r["probs"].sum(-1), 1, atol=1e-5)
    used = {n.op for n in all_ops_file().graph.nodes}
    assert used == set(F.OPS), set(F.OPS) - used
    assert m.metadata["int_min"] == -(2 ** 63) and math.isnan(m.metadata["f_nan"])
    assert m.metadata["dsq.notes"] == "ünïcödé ✓ 🚀" and len(m.metadata["big"]) == 70000


def test_roundtrip_all_ops(good):
    out = _core.format_roundtrip(good)
    assert out == good, f"first difference at byte {next(i for i, (a, b) in enumerate(zip(out, good)) if a != b) if len(out) == len(good) else ('size', len(out), len(good))}"


@pytest.mark.parametrize("values", ENCS)
@pytest.mark.parametrize("dims", [(1,), (7,), (3, 5), (4, 3, 3, 3), (2, 1, 1, 1, 1, 1, 1, 3), (5, 129)], ids=str)
def test_roundtrip_each_encoding(values, dims):
    b = GraphBuilder()
    x = b.add_input("x", (-1, 5))
    t = b.add_weight("t", RNG.standard_normal(dims), values, 8 if values == "int4_group" else 64)
    b.add_weight("t2", RNG.standard_normal(dims), values, 65536 if values == "int4_group" else 64)
    y = b.add_node("relu", [x])
    b.mark_output(y)
    data = F.to_bytes(b.build({}))
    assert _core.format_roundtrip(data) == data


@pytest.mark.parametrize("metadata", [{}, {"a": 1}, {"a": 1.5}, {"a": ""}, {"ä": -1, "b": float("-inf"), "c": "z" * 4096},
                                      {"max": "m" * (1 << 20)}], ids=lambda m: ",".join(m)[:20] or "empty")
def test_roundtrip_metadata(metadata):
    b = GraphBuilder()
    x = b.add_input("x", (2, 3, 4, 5, 6, 7, 1, 2))
    b.mark_output(x)
    data = F.to_bytes(b.build(metadata))
    assert _core.format_roundtrip(data) == data
    m = deepsqueeze.load(data)
    assert set(m.metadata) == set(metadata)


def test_roundtrip_graph_features():
    """Absent weights, many attribute values, long names, many inputs/outputs."""
    b = GraphBuilder()
    ins = [b.add_input("n" * 4096 if i == 0 else f"in{i}", (-1, 4)) for i in range(5)]
    y = b.add_node("concat", ins, attrs={"axis": -1}, name="c" * 4096)
    y = b.add_node("reshape", [y], attrs={"shape": [0] + [1] * 62 + [-1]})
    b.mark_output(y, "o" * 4096)
    for v in ins[1:]:
        b.mark_output(v)
    data = F.to_bytes(b.build({"k" * 4096: "v"}))
    assert _core.format_roundtrip(data) == data


def test_roundtrip_rejects_bad_bytes(good):
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    with pytest.raises(deepsqueeze.FormatError):
        _core.format_roundtrip(bytes(bad))


def test_crc32c_agrees():
    assert _core.crc32c(b"123456789") == 0xE3069283
    data = RNG.integers(0, 256, 100003, dtype=np.uint8).tobytes()
    for n in (0, 1, 3, 8, 63, 64, 65, 4095, 4096, 100003):
        assert _core.crc32c(data[:n]) == F._crc_update_py(0xFFFFFFFF, data[:n]) ^ 0xFFFFFFFF


# ---------------------------------------------------------------------------------------
# truncation and flipped bytes
# ---------------------------------------------------------------------------------------


def boundaries(data):
    cuts = {0, 1, 4, 32, 63, 64, 65, 191, 192, len(data) - 1}
    for name in SECTIONS:
        _, off, size = directory(data)[name]
        cuts |= {off, off + 1, off + size // 2, off + size - 1, off + size}
    return sorted(c for c in cuts if 0 <= c < len(data))


def test_truncated(good):
    for cut in boundaries(good):
        err = expect_error(good[:cut], "header", offset_range=(0, 64))
        assert ("shorter" in str(err)) if cut < 64 else ("truncated" in str(err) and str(cut) in str(err)), str(err)


def test_truncated_with_consistent_header(good):
    """file_size and the header CRC say the short size: the directory check fires."""
    d = directory(good)
    for name in SECTIONS:
        _, off, size = d[name]
        for cut in sorted({off + size // 2, off + size - 1, off}):
            if cut <= 192 or (name == "PAYLOAD" and cut == off and size == 0):
                continue
            data = bytes(fix_header_crc(set_file_size(good[:cut])))
            expect_error(data, "directory", "outside the file", offset_range=(64, 192))


def test_padded_file(good):
    expect_error(good + b"\0" * 64, "header", "padded", offset_range=(0, 64))


@pytest.mark.parametrize("where", ("header", "directory") + SECTIONS)
def test_flipped_byte(good, where):
    lo, hi = section_range(good, where)
    positions = sorted({lo, lo + 1, (lo + hi) // 2, hi - 1})
    for pos in positions:
        bad = bytearray(good)
        bad[pos] ^= 0x5A
        err = expect_error(bytes(bad), where, offset_range=(lo, hi))
        if where in SECTIONS:
            assert "CRC32C" in str(err) and err.offset == lo, str(err)


def test_flipped_byte_with_recomputed_crc_in_tensor_data(good):
    """With the CRC recomputed, a flip inside weight data is not a format error: it loads."""
    lo, hi = section_range(good, "PAYLOAD")
    bad = bytearray(good)
    bad[lo + 3] ^= 0x01
    deepsqueeze.load(fix_crcs(bad))


# ---------------------------------------------------------------------------------------
# header and directory fields (CRCs recomputed so the structural check fires)
# ---------------------------------------------------------------------------------------


def patch(data, offset, fmt, value):
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return b


def test_wrong_magic(good):
    for magic in (b"DSQG", b"\0\0\0\0", b"PK\x03\x04"):
        bad = bytearray(good)
        bad[:4] = magic
        expect_error(bytes(fix_header_crc(bad)), "header", "magic", offset_range=(0, 4))
    expect_error(b"DSQ", "header", offset_range=(0, 64))
    expect_error(b"GIF89a" + b"\0" * 100, "header", "magic", offset_range=(0, 4))


@pytest.mark.parametrize("major,minor,fact", [(2, 0, "2.0"), (0, 0, "0.0"), (1, 3, "1.3"), (1, 65535, "1.65535"),
                                              (65535, 0, "65535")])
def test_version(good, major, minor, fact):
    bad = patch(patch(good, 4, "<H", major), 6, "<H", minor)
    expect_error(bytes(fix_header_crc(bad)), "header", fact, offset_range=(4, 8))


def test_nonzero_flags(good):
    for flags in (1, 0x80000000):
        expect_error(bytes(fix_header_crc(patch(good, 8, "<I", flags))), "header", "flags", offset_range=(8, 12))


def test_reserved_header_bytes(good):
    bad = bytearray(good)
    bad[50] = 1
    expect_error(bytes(fix_header_crc(bad)), "header", "reserved", offset_range=(50, 51))


def test_section_count(good):
    for n in (0, 3, 5, 0xFFFFFFFF):
        expect_error(bytes(fix_header_crc(patch(good, 12, "<I", n))), "header", "section_count",
                     offset_range=(12, 16))


def test_bad_crc_fields(good):
    expect_error(bytes(patch(good, 28, "<I", 0)), "header", "CRC", offset_range=(0, 64))
    expect_error(bytes(fix_header_crc(patch(good, 24, "<I", 0))), "directory", "CRC", offset_range=(64, 192))
    i, off, _ = directory(good)["GRAPH"]
    bad = fix_header_crc(fix_directory_crc(patch(good, 64 + 32 * i + 24, "<I", 0)))
    expect_error(bytes(bad), "GRAPH", "CRC", offset_range=(off, off + 1))


def dir_patch(data, name, field, value):
    i, _, _ = directory(data)[name]
    at = 64 + 32 * i + {"kind": 0, "flags": 4, "offset": 8, "size": 16, "reserved": 28}[field]
    fmt = "<Q" if field in ("offset", "size") else "<I"
    return bytes(fix_header_crc(fix_directory_crc(patch(data, at, fmt, value))))


@pytest.mark.parametrize("name", SECTIONS)
def test_misaligned_section_offset(good, name):
    _, off, _ = directory(good)[name]
    expect_error(dir_patch(good, name, "offset", off + 8), "directory", "misaligned", str(off + 8),
                 offset_range=(64, 192))


def test_section_offsets_outside(good):
    expect_error(dir_patch(good, "META", "offset", 64), "directory", offset_range=(64, 192))
    expect_error(dir_patch(good, "PAYLOAD", "offset", len(good) + 64), "directory", "outside the file",
                 offset_range=(64, 192))
    expect_error(dir_patch(good, "PAYLOAD", "size", 2 ** 64 - 1), "directory", "outside the file",
                 offset_range=(64, 192))
    expect_error(dir_patch(good, "META", "offset", 2 ** 64 - 64), "directory", offset_range=(64, 192))


def test_overlapping_sections(good):
    _, meta_off, _ = directory(good)["META"]
    expect_error(dir_patch(good, "GRAPH", "offset", meta_off), "directory", "overlap", offset_range=(64, 192))
    _, t_off, _ = directory(good)["TENSORS"]
    expect_error(dir_patch(good, "GRAPH", "size", t_off - directory(good)["GRAPH"][1] + 1), "directory",
                 "overlap", offset_range=(64, 192))


def test_directory_kinds(good):
    expect_error(dir_patch(good, "GRAPH", "kind", 1), "directory", "twice", offset_range=(64, 192))
    expect_error(dir_patch(good, "GRAPH", "kind", 9), "directory", "kind", offset_range=(64, 192))
    expect_error(dir_patch(good, "GRAPH", "flags", 1), "directory", "flags", offset_range=(64, 192))
    expect_error(dir_patch(good, "GRAPH", "reserved", 1), "directory", offset_range=(64, 192))


def test_sections_in_another_order_still_load(good):
    """FORMAT.md: the reader finds sections through the directory (writers emit them in
    order, but the directory is the authority)."""
    d = directory(good)
    bad = bytearray(good)
    # swap the directory entries of META and GRAPH (entries, not the data)
    i, j = d["META"][0], d["GRAPH"][0]
    ei = bytes(bad[64 + 32 * i:96 + 32 * i])
    bad[64 + 32 * i:96 + 32 * i] = bad[64 + 32 * j:96 + 32 * j]
    bad[64 + 32 * j:96 + 32 * j] = ei
    deepsqueeze.load(bytes(fix_header_crc(fix_directory_crc(bad))))


# ---------------------------------------------------------------------------------------
# section contents (rebuilt with every size and CRC consistent)
# ---------------------------------------------------------------------------------------


def small_file(enc="int8_channel"):
    b = GraphBuilder()
    x = b.add_input("x", (-1, 3, 6, 6))
    w = b.add_weight("w", RNG.standard_normal((4, 3, 3, 3)), enc, 8)
    bias = b.add_weight("b", RNG.standard_normal(4))
    y = b.add_node("conv2d", [x], [w, bias], {"padding": [1, 1], "activation": 1}, name="conv")
    y = b.add_node("relu", [y], name="r")
    b.mark_output(y, "y")
    return b.build({"k": "v"})


def graph_fields(g: bytes):
    """Offsets (relative to the GRAPH section) of the fields the tests patch."""
    pos = 0
    out = {"value_count": 0}
    (nv,) = struct.unpack_from("<I", g, pos)
    pos += 4
    for _ in range(nv):
        (n,) = struct.unpack_from("<I", g, pos)
        pos += 4 + n + 1
    (ni,) = struct.unpack_from("<I", g, pos)
    out["input_count"] = pos
    pos += 4
    for k in range(ni):
        out.setdefault("input0_value", pos)
        rank = g[pos + 4]
        out.setdefault("input0_rank", pos + 4)
        out.setdefault("input0_dim0", pos + 5)
        pos += 5 + 8 * rank
    (no,) = struct.unpack_from("<I", g, pos)
    out["output_count"] = pos
    out["output0"] = pos + 4
    pos += 4 + 4 * no
    (nn,) = struct.unpack_from("<I", g, pos)
    out["node_count"] = pos
    pos += 4
    for i in range(nn):
        out[f"node{i}_op"] = pos
        (n,) = struct.unpack_from("<I", g, pos + 4)
        pos += 8 + n
        n_in, n_out, n_w, n_attr = struct.unpack_from("<HHHH", g, pos)
        pos += 8
        out[f"node{i}_input0"] = pos
        out[f"node{i}_output0"] = pos + 4 * n_in
        out[f"node{i}_weight0"] = pos + 4 * (n_in + n_out)
        pos += 4 * (n_in + n_out + n_w)
        for k in range(n_attr):
            key, typ, _, cnt = struct.unpack_from("<HBBI", g, pos)
            out[f"node{i}_attr{k}"] = pos
            out[f"node{i}_attr_{F.ATTR_NAMES[key]}"] = pos
            pos += 8 + cnt * (4 if typ == 2 else 8)
    assert pos == len(g)
    return out


def tensor_fields(t: bytes):
    pos = 4
    out = {"tensor_count": 0}
    (nt,) = struct.unpack_from("<I", t, 0)
    for i in range(nt):
        (n,) = struct.unpack_from("<I", t, pos)
        pos += 4 + n
        out[f"t{i}_rank"] = pos
        rank = t[pos]
        out[f"t{i}_dim0"] = pos + 4
        pos += 4 + 8 * rank
        out[f"t{i}_group_size"] = pos
        pos += 16
        (ns,) = struct.unpack_from("<I", t, pos)
        out[f"t{i}_stream_count"] = pos
        pos += 4
        for k in range(ns):
            out[f"t{i}_s{k}"] = pos
            pos += 32
    assert pos == len(t)
    return out


def graph_patch(data, field, fmt, value):
    g = bytearray(section_bytes(data, "GRAPH"))
    struct.pack_into(fmt, g, graph_fields(bytes(g))[field], value)
    return rebuild(data, "GRAPH", bytes(g))


def tensors_patch(data, field, fmt, value, delta=0):
    t = bytearray(section_bytes(data, "TENSORS"))
    struct.pack_into(fmt, t, tensor_fields(bytes(t))[field] + delta, value)
    return rebuild(data, "TENSORS", bytes(t))


def in_section(data, name, rel):
    _, off, _ = directory(data)[name]
    return off + rel


@pytest.fixture(scope="module")
def small():
    return F.to_bytes(small_file())


def test_small_file_is_good(small):
    deepsqueeze.load(small)
    assert _core.format_roundtrip(small) == small
    # rebuild with the same content must reproduce the file exactly
    assert rebuild(small, "GRAPH", section_bytes(small, "GRAPH")) == small


def test_value_count_absurd(small):
    bad = graph_patch(small, "value_count", "<I", 2 ** 32 - 1)
    expect_error(bad, "GRAPH", "value count", "4294967295", offset_range=section_range(bad, "GRAPH"))


@pytest.mark.parametrize("field,value,fact", [("input_count", 2 ** 32 - 1, "input count"),
                                              ("output_count", 2 ** 31, "output count"),
                                              ("node_count", 0xFFFFFFF0, "node count")])
def test_other_counts_absurd(small, field, value, fact):
    bad = graph_patch(small, field, "<I", value)
    expect_error(bad, "GRAPH", fact, offset_range=section_range(bad, "GRAPH"))


def test_tensor_count_absurd(small):
    bad = tensors_patch(small, "tensor_count", "<I", 2 ** 32 - 1)
    expect_error(bad, "TENSORS", "tensor count", offset_range=section_range(bad, "TENSORS"))


def test_meta_count_absurd(small):
    m = bytearray(section_bytes(small, "META"))
    struct.pack_into("<I", m, 0, 0x7FFFFFFF)
    bad = rebuild(small, "META", bytes(m))
    expect_error(bad, "META", "metadata count", offset_range=section_range(bad, "META"))


@pytest.mark.parametrize("extra", (0x80, 0xFFFFFFFF * 64 // 64))
def test_stream_offset_past_payload(small, extra):
    _, _, psize = directory(small)["PAYLOAD"]
    off = (psize + 63) // 64 * 64 if extra == 0x80 else 2 ** 64 - 64
    bad = tensors_patch(small, "t0_s0", "<Q", off, delta=16)
    expect_error(bad, "PAYLOAD", "payload", offset_range=section_range(bad, "PAYLOAD")[0:1] +
                 (section_range(bad, "PAYLOAD")[1] + 1,))


def test_stream_end_past_payload(small):
    # the weight values (108 bytes) moved onto the last 64-byte block of the payload
    # (which holds the 16-byte bias): it starts inside but ends past the payload
    _, _, psize = directory(small)["PAYLOAD"]
    bad = tensors_patch(small, "t0_s0", "<Q", (psize - 1) // 64 * 64, delta=16)
    expect_error(bad, "PAYLOAD", "payload", offset_range=section_range(bad, "PAYLOAD"))


@pytest.mark.parametrize("delta", (1, -1, 2 ** 40))
def test_stream_nbytes_mismatch(small, delta):
    t = section_bytes(small, "TENSORS")
    f = tensor_fields(t)
    nbytes = struct.unpack_from("<Q", t, f["t0_s0"] + 24)[0]
    bad = tensors_patch(small, "t0_s0", "<Q", nbytes + delta, delta=24)
    err = expect_error(bad, "TENSORS", "nbytes", offset_range=section_range(bad, "TENSORS"))
    assert err.offset == in_section(bad, "TENSORS", f["t0_s0"] + 24)


def test_stream_count_field_mismatch(small):
    t = section_bytes(small, "TENSORS")
    f = tensor_fields(t)
    count = struct.unpack_from("<Q", t, f["t0_s0"] + 8)[0]
    bad = tensors_patch(small, "t0_s0", "<Q", count + 1, delta=8)
    expect_error(bad, "TENSORS", "count", offset_range=section_range(bad, "TENSORS"))


def test_stream_offset_misaligned(small):
    bad = tensors_patch(small, "t0_s0", "<Q", 8, delta=16)
    expect_error(bad, "TENSORS", "aligned", offset_range=section_range(bad, "TENSORS"))


@pytest.mark.parametrize("field,delta,value,fact", [
    ("t0_rank", 0, 0, "rank 0"), ("t0_rank", 0, 9, "rank 9"), ("t0_rank", 1, 1, "layout"),
    ("t0_rank", 2, 4, "values"), ("t0_rank", 2, 200, "values"), ("t0_rank", 3, 1, "entropy"),
    ("t0_dim0", 0, 0, "dim 0"), ("t0_group_size", 0, 8, "group_size"), ("t0_group_size", 4, 1, "codebook"),
    ("t0_stream_count", 0, 1, "streams"), ("t0_stream_count", 0, 3, "stream"),
])
def test_tensor_fields(small, field, delta, value, fact):
    fmt = {"t0_rank": "<B", "t0_dim0": "<Q", "t0_group_size": "<I", "t0_stream_count": "<I"}[field]
    bad = tensors_patch(small, field, fmt, value, delta=delta)
    expect_error(bad, "TENSORS", fact, offset_range=section_range(bad, "TENSORS"))


def test_tensor_dim_numel_overflow(small):
    bad = tensors_patch(small, "t0_dim0", "<Q", 2 ** 40)
    expect_error(bad, "TENSORS", "dim", offset_range=section_range(bad, "TENSORS"))
    bad = tensors_patch(small, "t0_dim0", "<Q", 2 ** 64 - 1)
    expect_error(bad, "TENSORS", "dim", offset_range=section_range(bad, "TENSORS"))


def test_int4_group_size_rules():
    f = small_file("int4_group")
    data = F.to_bytes(f)
    for gs in (0, 4, 12, 2 ** 17):
        bad = tensors_patch(data, "t0_group_size", "<I", gs)
        expect_error(bad, "TENSORS", "group_size", str(gs), offset_range=section_range(bad, "TENSORS"))


@pytest.mark.parametrize("field,fmt,value,fact", [
    ("input0_rank", "<B", 0, "rank 0"),
    ("input0_rank", "<B", 9, "rank 9"),
    ("input0_dim0", "<q", 0, "dim 0"),
    ("input0_dim0", "<q", -2, "dim -2"),
    ("input0_dim0", "<q", 2 ** 40, "dim"),
    ("input0_value", "<I", 99, "value 99 out of range"),
    ("output0", "<I", 1000, "out of range"),
    ("node0_op", "<H", 0, "unknown op 0"),
    ("node0_op", "<H", 17, "unknown op 17"),
    ("node0_op", "<H", 0xFFFF, "unknown op 65535"),
    ("node0_input0", "<I", 500, "out of range"),
    ("node0_output0", "<I", 0, "already produced"),
    ("node0_weight0", "<I", 7, "tensor 7 out of range"),
    ("node0_attr_activation", "<Q", 7, "unknown activation 7"),
    ("node0_attr_activation", "<q", -1, "unknown activation -1"),
    ("node0_attr_padding", "<H", 99, "attribute key 99"),
    ("node0_attr_padding", "<H", 5, "attribute key 5"),
])
def test_graph_fields(small, field, fmt, value, fact):
    delta = 8 if field.startswith("node0_attr_activation") else 0
    g = bytearray(section_bytes(small, "GRAPH"))
    struct.pack_into(fmt, g, graph_fields(bytes(g))[field] + delta, value)
    bad = rebuild(small, "GRAPH", bytes(g))
    sec = "GRAPH"
    expect_error(bad, sec, fact, offset_range=section_range(bad, sec))


def test_attribute_type_and_count(small):
    g = bytearray(section_bytes(small, "GRAPH"))
    at = graph_fields(bytes(g))["node0_attr_padding"]
    g2 = bytearray(g)
    g2[at + 2] = 2  # i64 attribute claimed as f32
    expect_error(rebuild(small, "GRAPH", bytes(g2)), "GRAPH", "type")
    g3 = bytearray(g)
    struct.pack_into("<I", g3, at + 4, 3)  # padding with 3 values
    expect_error(rebuild(small, "GRAPH", bytes(g3)), "GRAPH", "padding", "3 values")
    g4 = bytearray(g)
    struct.pack_into("<I", g4, at + 4, 2 ** 32 - 1)
    expect_error(rebuild(small, "GRAPH", bytes(g4)), "GRAPH")


def test_trailing_bytes_in_sections(small):
    for name in ("META", "GRAPH", "TENSORS"):
        bad = rebuild(small, name, section_bytes(small, name) + b"\0")
        expect_error(bad, name, "trailing", offset_range=section_range(bad, name)[:1] + (section_range(bad, name)[1] + 1,))


def test_empty_sections(small):
    for name in ("META", "GRAPH", "TENSORS"):
        bad = rebuild(small, name, b"")
        expect_error(bad, name, "truncated")


# -- structural graph rules through the unchecked writer --------------------------------


def structural(mutate):
    f = small_file()
    mutate(f)
    return raw_bytes(f)


def test_node_input_used_before_produced():
    def m(f):
        f.graph.nodes.reverse()
    err = expect_error(structural(m), "GRAPH", "before it is produced")
    assert "'r'" in str(err) or "r" in str(err)


def test_cycle_is_rejected():
    def m(f):
        conv, relu = f.graph.nodes
        conv.inputs = [relu.outputs[0]]
    expect_error(structural(m), "GRAPH", "before it is produced")


def test_graph_output_never_produced():
    def m(f):
        f.graph.values.append("dangling")
        f.graph.outputs.append(len(f.graph.values) - 1)
    expect_error(structural(m), "GRAPH", "never produced", "dangling")


def test_value_produced_twice_and_graph_input_produced():
    def m(f):
        f.graph.nodes[1].outputs = list(f.graph.nodes[0].outputs)
    expect_error(structural(m), "GRAPH", "already produced")

    def m2(f):
        f.graph.nodes[0].outputs = [f.graph.inputs[0].value]
    expect_error(structural(m2), "GRAPH", "already produced")


@pytest.mark.parametrize("what", ["value", "node", "tensor", "meta"])
def test_duplicate_and_empty_names(what):
    def dup(f):
        if what == "value":
            f.graph.values[1] = f.graph.values[0]
        elif what == "node":
            f.graph.nodes[1].name = f.graph.nodes[0].name
        elif what == "tensor":
            f.tensors[1].name = f.tensors[0].name
    def empty(f):
        if what == "value":
            f.graph.values[1] = ""
        elif what == "node":
            f.graph.nodes[1].name = ""
        elif what == "tensor":
            f.tensors[1].name = ""
    sec = {"value": "GRAPH", "node": "GRAPH", "tensor": "TENSORS", "meta": "META"}[what]
    if what == "meta":
        data = F.to_bytes(small_file())
        m = struct.pack("<I", 2) + (struct.pack("<I", 1) + b"k" + b"\x02" + struct.pack("<q", 1)) * 2
        expect_error(rebuild(data, "META", m), "META", "duplicate")
        m = struct.pack("<I", 1) + struct.pack("<I", 0) + b"\x02" + struct.pack("<q", 1)
        expect_error(rebuild(data, "META", m), "META", "empty")
        m = struct.pack("<I", 1) + struct.pack("<I", 1) + b"k" + b"\x04" + struct.pack("<q", 1)
        expect_error(rebuild(data, "META", m), "META", "type 4")
        m = struct.pack("<I", 1) + struct.pack("<I", 2) + b"\xff\xfe" + b"\x02" + struct.pack("<q", 1)
        expect_error(rebuild(data, "META", m), "META", "UTF-8")
        return
    expect_error(structural(dup), sec, "duplicate")
    expect_error(structural(empty), sec, "empty")


def test_no_inputs_or_outputs():
    def m(f):
        f.graph.outputs = []
    expect_error(structural(m), "GRAPH", "no outputs")

    def m2(f):
        f.graph.inputs = []
    expect_error(structural(m2), "GRAPH", "no inputs")


def test_string_length_absurd(small):
    g = bytearray(section_bytes(small, "GRAPH"))
    struct.pack_into("<I", g, 4, 0xFFFFFFFF)  # first value name length
    expect_error(rebuild(small, "GRAPH", bytes(g)), "GRAPH", "exceeds")
    struct.pack_into("<I", g, 4, 4000)  # within the limit but past the section end
    expect_error(rebuild(small, "GRAPH", bytes(g)), "GRAPH", "truncated")


# ---------------------------------------------------------------------------------------
# never crash: random mutations in a subprocess
# ---------------------------------------------------------------------------------------

FUZZ = textwrap.dedent(r'''
    import json, struct, sys
    import numpy as np
    import deepsqueeze
    from deepsqueeze import format as F
    sys.path.insert(0, sys.argv[2])
    from conftest import fix_crcs

    good = open(sys.argv[1], "rb").read()
    rng = np.random.default_rng(20240601)
    stats = {"loaded": 0, "ran": 0, "FormatError": 0, "UnsupportedModelError": 0, "ValueError": 0}
    for it in range(300):
        b = bytearray(good)
        kind = it % 6
        n = int(rng.integers(1, 4))
        for _ in range(n):
            pos = int(rng.integers(0, len(b)))
            if kind in (0, 3):
                b[pos] ^= 1 << int(rng.integers(0, 8))
            elif kind in (1, 4):
                b[pos] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF, int(rng.integers(0, 256))]))
            elif kind == 2:
                b = b[:pos]
                break
            else:
                # a 4- or 8-byte field set to an extreme value
                w = int(rng.choice([4, 8]))
                pos = min(pos, len(b) - w)
                vals = [0, 1, 2**31, 2**32 - 1, 2**(8*w) - 1]
                b[pos:pos + w] = vals[int(rng.integers(0, len(vals)))].to_bytes(w, "little", signed=False)
        if kind >= 3 and len(b) >= 192:
            try:
                b = bytearray(fix_crcs(b))   # so the structural checks see the damage
            except Exception:
                pass
        try:
            m = deepsqueeze.load(bytes(b), threads=2)
        except deepsqueeze.FormatError as e:
            assert e.section in ("header", "directory", "META", "GRAPH", "TENSORS", "PAYLOAD"), e.section
            assert e.offset >= 0
            stats["FormatError"] += 1
            continue
        except deepsqueeze.UnsupportedModelError:
            stats["UnsupportedModelError"] += 1
            continue
        except ValueError:
            stats["ValueError"] += 1
            continue
        stats["loaded"] += 1
        shapes = [[1 if d is None else d for d in i["shape"]] for i in m.inputs]
        if all(int(np.prod(s)) <= 1 << 20 for s in shapes):
            try:
                m.run([np.ones(s, np.float32) for s in shapes])
                stats["ran"] += 1
            except ValueError:
                pass
    print(json.dumps(stats))
''')


def test_random_mutations_never_crash(tmp_path):
    f = all_ops_file({"dsq.producer": "fuzz"})
    p = tmp_path / "good.dsq"
    F.write(f, p)
    script = tmp_path / "fuzz.py"
    script.write_text(FUZZ)
    r = subprocess.run([sys.executable, str(script), str(p), str(Path(__file__).parent)],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, f"exit code {r.returncode}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-4000:]}"
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    assert sum(stats[k] for k in ("loaded", "FormatError", "UnsupportedModelError", "ValueError")) == 300, stats
    assert stats["FormatError"] > 100, stats


# ---------------------------------------------------------------------------------------
# format 1.1: Python writes -> C++ reads -> C++ writes, and C++ decoding (format11_cases)
# ---------------------------------------------------------------------------------------

from format11_cases import corruptions, encode, encodings, matrices, one_tensor_file  # noqa: E402
from deepsqueeze.encode import decode_tensor  # noqa: E402

MATS11 = matrices()
ENCODINGS11 = encodings()


@pytest.mark.parametrize("mat", list(MATS11))
def test_11_roundtrip_and_cpp_decode_every_encoding(mat):
    m = MATS11[mat]
    for tag, kw in ENCODINGS11:
        t = encode("w", m, kw)
        data = F.to_bytes(one_tensor_file(t))
        assert _core.format_roundtrip(data) == data, tag
        py = decode_tensor(t)
        cpp = _core.decode_tensor_dense(data, 0)
        assert cpp.dtype == np.float32 and cpp.shape == m.shape, tag
        assert np.array_equal(cpp, py), tag
        if kw["values"] in ("f32", "f16", "codebook"):
            assert np.array_equal(cpp, m), tag
        # decode_sparse: the stored entries row by row, consistent with the dense matrix
        sp = _core.decode_tensor_sparse(data, 0)
        rows, cols = sp["rows"], sp["cols"]
        assert rows * cols == m.size
        rp, col = sp["row_ptr"], sp["col"]
        assert rp[0] == 0 and rp[-1] == col.size and np.all(np.diff(rp.astype(np.int64)) >= 0)
        if sp["coded"]:
            table = sp["table"].reshape(-1, sp["table_entries"])
            assert sp["per_row"] == (table.shape[0] > 1)
            r_of = np.repeat(np.arange(rows), np.diff(rp.astype(np.int64)))
            vals = table[r_of if sp["per_row"] else np.zeros_like(r_of), sp["codes"]]
        else:
            vals = sp["values"]
        dense = np.zeros((rows, cols), np.float32)
        r_of = np.repeat(np.arange(rows), np.diff(rp.astype(np.int64)))
        dense[r_of, col] = vals
        assert np.array_equal(dense, py.reshape(rows, cols)), tag
        if kw["layout"] in ("csr", "csr_relative"):  # exactly the nonzeros, no fillers
            assert col.size == np.count_nonzero(py), tag


def test_11_sparse_entries_of_blocks():
    m = MATS11["odd_blocks"]
    t = encode("w", m, {"layout": "block_csr", "block": (3, 4), "values": "f32"})
    sp = _core.decode_tensor_sparse(F.to_bytes(one_tensor_file(t)), 0)
    # every in-matrix position of a stored block, the block's explicit zeros included
    nblocks = t.streams[1].count
    assert sp["col"].size <= nblocks * 12 and sp["col"].size >= np.count_nonzero(m)
    assert np.all(sp["col"] < 10)


def test_11_1_0_files_unchanged():
    """A file without 1.1 codes is still 1.0, byte for byte, through both writers."""
    data = F.to_bytes(all_ops_file())
    assert struct.unpack_from("<H", data, 6)[0] == 0
    assert _core.format_roundtrip(data) == data


@pytest.mark.parametrize("name,make,section,facts", corruptions(), ids=[c[0] for c in corruptions()])
def test_11_corrupt_files(name, make, section, facts):
    data = make()
    err = expect_error(data, section, *facts, offset_range=section_range(data, section))
    with pytest.raises(F.FormatError) as py:
        F.from_bytes(data)
    assert py.value.section == err.section
    with pytest.raises(deepsqueeze.FormatError):
        _core.format_roundtrip(data)


def test_11_model_runs_with_sparse_weights():
    """A linear layer whose weight is csr_relative + codebook + Huffman (or block-CSR f16)
    runs on the sparse kernels and matches the dense f32 model up to summation order."""
    rng = np.random.default_rng(3)
    w = np.where(rng.random((8, 40)) < 0.2, rng.integers(-3, 4, (8, 40)), 0).astype(np.float32)
    x = rng.standard_normal((2, 40)).astype(np.float32)
    outs = []
    for kw in ({}, {"values": "codebook", "layout": "csr_relative", "index_bits": 3, "huffman": True},
               {"values": "f16", "layout": "block_csr", "block": (2, 4)}):
        b = GraphBuilder()
        xi = b.add_input("x", (-1, 40))
        wi = b.add_weight("w", w, **({"values": "f32"} | kw))
        y = b.add_node("linear", [xi], [wi, None])
        b.mark_output(y, "y")
        outs.append(deepsqueeze.load(F.to_bytes(b.build({})), threads=1).run(x))
    for o in outs[1:]:
        np.testing.assert_allclose(np.asarray(list(o.values())[0] if isinstance(o, dict) else o[0]),
                                      np.asarray(list(outs[0].values())[0] if isinstance(outs[0], dict) else outs[0][0]), rtol=1e-5, atol=1e-5)
