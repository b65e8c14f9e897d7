"""Edge cases of format 1.1 (docs/FORMAT.md: layouts csr / csr_relative / block_csr,
codebook values, per-stream Huffman) shared by test_format_python and test_format_cpp:
matrices, encodings, one-tensor files, and corrupted files with the error they must give.
numpy + deepsqueeze's Python half only."""
from __future__ import annotations

import itertools
import struct
from typing import Callable, Dict, List, Tuple

import numpy as np

from deepsqueeze import format as F
from deepsqueeze.builder import GraphBuilder
from deepsqueeze.encode import encode_tensor

LAYOUTS = ("dense", "csr", "csr_relative", "block_csr")
VALUES = ("f32", "f16", "int8_channel", "int4_group", "codebook")
ENTROPIES = (False, True, "auto")


def _sparse(rng, shape, density, lo=-7, hi=7):
    m = rng.integers(lo, hi + 1, size=shape).astype(np.float32)
    m[rng.random(shape) >= density] = 0
    return m


def matrices() -> Dict[str, np.ndarray]:
    """Small integer-valued matrices (exact in f16) covering the layout edge cases."""
    rng = np.random.default_rng(2024)
    out: Dict[str, np.ndarray] = {}
    out["all_zero"] = np.zeros((5, 9), np.float32)  # nnz 0
    full = rng.integers(1, 8, size=(6, 11)).astype(np.float32)
    full[rng.random(full.shape) < 0.5] *= -1
    out["fully_dense"] = full  # every element nonzero: CSR of a dense matrix
    m = _sparse(rng, (9, 23), 0.3)
    m[[0, 4, 8]] = 0
    out["empty_rows"] = m  # first, middle and last rows empty
    out["single_column"] = np.array([[1], [0], [-3], [0], [7]], np.float32)
    gaps = np.zeros((4, 700), np.float32)  # gaps longer than 2^8 - 1: fillers even at 8 bits
    gaps[0, 699] = 3
    gaps[1, [0, 3, 4, 8, 11, 300, 301, 555]] = [1, -2, 5, 6, -7, 2, 2, 4]
    gaps[3, [254, 255, 511]] = [2, -1, 6]
    out["long_gaps"] = gaps
    out["odd_blocks"] = _sparse(rng, (7, 10), 0.25)  # k not a multiple of the block
    out["rank1"] = np.array([0, 0, 2, 0, -5, 0, 0, 0, 1], np.float32)
    out["conv4d"] = _sparse(rng, (4, 3, 3, 3), 0.4)
    out["same_value"] = np.full((3, 70), 2.5, np.float32)  # Huffman one-symbol streams
    return out


def encodings() -> List[Tuple[str, dict]]:
    """(id, encode_tensor keyword arguments) for every layout x values x entropy, plus
    the variants that matter per layout (index widths, block shapes, codebook tables)."""
    out = []
    for layout, values, huff in itertools.product(LAYOUTS, VALUES, ENTROPIES):
        base = {"layout": layout, "values": values, "huffman": huff, "group_size": 8}
        variants = [{}]
        if layout == "csr_relative":
            variants = [{"index_bits": 2}, {"index_bits": 8}]
        if layout == "block_csr":
            variants = [{"block": (1, 4)}, {"block": (3, 4)}, {"block": (16, 1)}]
        if values == "codebook":
            variants = [dict(v, **c) for v in variants for c in ({}, {"codebook_per_row": True})]
        for v in variants:
            kw = dict(base, **v)
            tag = "-".join(f"{k}={kw[k]}" for k in sorted(kw) if k != "group_size")
            out.append((tag, kw))
    return out


def one_tensor_file(tensor: F.Tensor) -> F.DsqFile:
    """A minimal valid file holding one tensor (the graph does not use it)."""
    b = GraphBuilder()
    x = b.add_input("x", (1, 4))
    b.add_tensor(tensor)
    y = b.add_node("relu", [x], name="relu")
    b.mark_output(y, "y")
    return b.build({"dsq.producer": "tests"})


def encode(name: str, m: np.ndarray, kw: dict) -> F.Tensor:
    return encode_tensor(name, m, **kw)


def raw_bytes(f: F.DsqFile) -> bytes:
    """Serialize WITHOUT the writer's self-check (all CRCs valid): structurally bad files."""
    return b"".join(c if isinstance(c, bytes) else c.tobytes() for c in F._serialize(f, verify=False))


def _u32(values) -> np.ndarray:
    return np.asarray(values, dtype="<u4").view(np.uint8)


def _row_ptr(t: F.Tensor, values) -> F.Tensor:
    """Sets the row_ptr stream's elements (u16 or u32, as the writer chose)."""
    dtype = "<u2" if t.streams[0].elem_type == "u16" else "<u4"
    return _set(t, 0, data=np.asarray(values, dtype=dtype).view(np.uint8))


def _tensor(layout, values="f32", huffman=False, m=None, **kw):
    if m is None:
        m = np.zeros((4, 10), np.float32)
        m[0, [1, 5]] = [1, 2]
        m[2, [0, 3, 9]] = [3, 4, 5]
        m[3, 7] = 6
    return encode_tensor("w", m, values=values, layout=layout, huffman=huffman, **kw)


def _set(t: F.Tensor, k: int, **changes) -> F.Tensor:
    s = t.streams[k]
    for key, v in changes.items():
        setattr(s, key, v)
    return t


def _huffman_lengths_kraft(t: F.Tensor, k: int) -> F.Tensor:
    data = np.array(t.streams[k].data, dtype=np.uint8)
    alphabet = int(struct.unpack_from("<H", data.tobytes(), 2)[0])
    if data[1] == 0:
        data[12:12 + alphabet] = 1  # every symbol a 1-bit code: Kraft sum alphabet/2 > 1
    else:  # sparse form (1.2): every listed symbol a 1-bit code
        listed = int(data[12]) + 1
        assert listed > 2
        data[14:13 + 2 * listed:2] = 1
    return _set(t, k, data=data)


def corruptions() -> List[Tuple[str, Callable[[], bytes], str, Tuple[str, ...]]]:
    """(id, make bad file bytes, section, facts in the message)."""
    cases = []

    def add(name, section, facts, make_tensor):
        cases.append((name, lambda: raw_bytes(one_tensor_file(make_tensor())), section, facts))

    add("row_ptr_decreasing", "PAYLOAD", ("row_ptr", "decreases"),
        lambda: _row_ptr(_tensor("csr"), [0, 2, 1, 5, 6]))
    add("row_ptr_first_nonzero", "PAYLOAD", ("row_ptr[0]",),
        lambda: _row_ptr(_tensor("csr"), [1, 2, 2, 5, 6]))
    add("row_ptr_last_not_nnz", "PAYLOAD", ("row_ptr[4]", "6 entries"),
        lambda: _row_ptr(_tensor("csr"), [0, 2, 2, 5, 5]))
    add("row_ptr_u32_decreasing", "PAYLOAD", ("row_ptr", "decreases at 2"),
        lambda: _set(_tensor("csr"), 0, elem_type="u32", data=_u32([0, 2, 1, 5, 6])))
    add("col_out_of_range", "PAYLOAD", ("col_idx", "10 >= 10"),
        lambda: _set(_tensor("csr"), 1, data=np.asarray([1, 5, 0, 3, 10, 7], "<u2").view(np.uint8)))
    add("col_not_increasing", "PAYLOAD", ("col_idx", "not above"),
        lambda: _set(_tensor("csr"), 1, data=np.asarray([1, 5, 3, 3, 9, 7], "<u2").view(np.uint8)))
    add("block_col_out_of_range", "PAYLOAD", ("block column",),
        lambda: _set(_tensor("block_csr", block=(2, 4)), 1,
                     data=np.asarray([0, 1, 0, 1, 3], "<u2").view(np.uint8)))
    # csr_relative, 2-bit gaps: row 2 holds columns 0, 3, 9 -> make its gaps run past 10.
    add("gap_past_cols", "PAYLOAD", ("col_idx", "past"),
        lambda: _set(_tensor("csr_relative", index_bits=2), 1,
                     data=F.pack_bits(np.full(_tensor("csr_relative", index_bits=2).streams[1].count, 2), 2)))
    add("filler_past_cols", "PAYLOAD", ("filler", "past"),
        lambda: _set(_tensor("csr_relative", index_bits=2), 1,
                     data=F.pack_bits(np.full(_tensor("csr_relative", index_bits=2).streams[1].count, 3), 2)))
    add("huffman_kraft", "PAYLOAD", ("Kraft",),
        lambda: _huffman_lengths_kraft(_tensor("csr_relative", "codebook", True, index_bits=3), 3))
    add("huffman_truncated", "PAYLOAD", ("Huffman",),
        lambda: _set(_tensor("dense", "int8_channel", True, m=np.arange(-60, 60, dtype=np.float32).reshape(4, 30)),
                     0, data=np.array(_tensor("dense", "int8_channel", True,
                                              m=np.arange(-60, 60, dtype=np.float32).reshape(4, 30)).streams[0].data[:-3])))
    add("huffman_gap_stream_truncated", "PAYLOAD", ("Huffman",),
        lambda: _set(_tensor("csr_relative", huffman=True, index_bits=4), 1,
                     data=np.array(_tensor("csr_relative", huffman=True, index_bits=4).streams[1].data[:-1])))
    add("codebook_count_wrong", "TENSORS", ("count",),
        lambda: _set(_tensor("csr", "codebook", codebook_bits=3), 2, count=9,
                     data=np.zeros(36, np.uint8)))
    add("codebook_bits_zero", "TENSORS", ("codebook_bits",),
        lambda: setattr_ret(_tensor("csr", "codebook", codebook_bits=3), "codebook_bits", 0))
    add("index_width_wrong", "TENSORS", ("bits width",),
        lambda: _set(_tensor("csr", "codebook", codebook_bits=3), 3, bits=2,
                     data=F.pack_bits(np.zeros(6), 2)))
    add("relative_width_too_small", "TENSORS", ("bits width 1",),
        lambda: _set(_tensor("csr_relative", index_bits=2), 1, bits=1, data=F.pack_bits(np.zeros(9), 1)))
    add("huffman_on_f32", "TENSORS", ("cannot be Huffman",),
        lambda: setattr_ret(_set(_tensor("csr"), 2, entropy="huffman"), "entropy", "huffman"))
    add("entropy_summary_wrong", "TENSORS", ("no stream is Huffman",),
        lambda: setattr_ret(_tensor("csr"), "entropy", "huffman"))
    add("col_idx_count_absurd", "TENSORS", ("col_idx count",),
        lambda: _set(_tensor("csr"), 1, count=41))
    add("block_1x1", "TENSORS", ("1x1",),
        lambda: setattr_ret(setattr_ret(_tensor("block_csr", block=(1, 2)), "block_cols", 1), "block_rows", 1))
    add("block_rows_on_csr", "TENSORS", ("block_rows",),
        lambda: setattr_ret(_tensor("csr"), "block_rows", 2))
    add("missing_row_ptr", "TENSORS", ("role",),
        lambda: _set(_tensor("csr"), 0, role="scales"))

    def as_minor(tensor_maker, minor):
        def make():
            b = bytearray(raw_bytes(one_tensor_file(tensor_maker())))
            b[6:8] = struct.pack("<H", minor)  # mark the file 1.<minor> (CRC of the header fixed below)
            b[28:32] = b"\0\0\0\0"
            b[28:32] = struct.pack("<I", F.crc32c(bytes(b[:64])))
            return bytes(b)
        return make

    cases.append(("csr_in_a_1_0_file", as_minor(lambda: _set(_tensor("csr"), 0, elem_type="u32",
                                                                data=_u32([0, 2, 2, 5, 6])), 0),
                  "TENSORS", ("needs format 1.1",)))
    # The codes of 1.2 in a file that says 1.1.
    cases.append(("u16_row_ptr_in_a_1_1_file", as_minor(lambda: _tensor("csr"), 1), "TENSORS",
                  ("stream 0", "elem_type 6 (u16), expected 7 (u32)")))
    cases.append(("one_int8_scale_in_a_1_1_file",
                  as_minor(lambda: _tensor("dense", "int8_channel", int8_scale="tensor"), 1), "TENSORS",
                  ("stream 1", "count 1 but the tensor needs 4")))
    sparse_lengths = lambda: _tensor("dense", "int8_channel", True, m=np.arange(-60, 60, dtype=np.float32).reshape(4, 30))
    cases.append(("sparse_huffman_lengths_in_a_1_1_file", as_minor(sparse_lengths, 1), "PAYLOAD",
                  ("lengths_form 1", "need 1.2")))
    return cases


def setattr_ret(obj, name, value):
    setattr(obj, name, value)
    return obj
