"""Reader and writer of the .dsq file format (docs/FORMAT.md), in numpy.

This module is the Python half of the format; csrc/format/ is the C++ half. Both
implement docs/FORMAT.md exactly, and the tests check they agree byte for byte.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

MAGIC = b"DSQF"
VERSION_MAJOR = 1
VERSION_MINOR = 2  # the newest minor version this module reads and writes
ALIGNMENT = 64
ABSENT = 0xFFFFFFFF

SECTION_KINDS = {"META": 1, "GRAPH": 2, "TENSORS": 3, "PAYLOAD": 4}

OPS = {
    "conv2d": 1, "linear": 2, "relu": 3, "relu6": 4, "hardswish": 5, "sigmoid": 6,
    "max_pool2d": 7, "avg_pool2d": 8, "global_avg_pool2d": 9, "add": 10, "mul": 11,
    "concat": 12, "flatten": 13, "reshape": 14, "softmax": 15, "batch_norm": 16,
}
ATTRS = {
    "stride": 1, "padding": 2, "dilation": 3, "groups": 4, "kernel": 5, "activation": 6,
    "ceil_mode": 7, "count_include_pad": 8, "axis": 9, "start_dim": 10, "end_dim": 11,
    "shape": 12, "eps": 13, "input_quant": 14,
}
# Attributes stored as f32 lists; all others are i64 lists.
FLOAT_ATTRS = {"eps", "input_quant"}
ACTIVATIONS = {"none": 0, "relu": 1, "relu6": 2}

LAYOUTS = {"dense": 0, "csr": 1, "csr_relative": 2, "block_csr": 3}
VALUES = {"f32": 0, "f16": 1, "int8_channel": 2, "int4_group": 3, "codebook": 4}
ENTROPY = {"none": 0, "huffman": 1}
ROLES = {"values": 1, "scales": 2, "row_ptr": 3, "col_idx": 4, "codebook": 5, "indices": 6}
ELEM_TYPES = {"f32": 1, "f16": 2, "i8": 3, "u8": 4, "i4": 5, "u16": 6, "u32": 7, "i32": 8,
              "bits": 9}
DTYPES = {"f32": 1}


class FormatError(ValueError):
    """A .dsq file (or bytes) that does not follow docs/FORMAT.md.

    `section` names the section ("header", "directory", "META", "GRAPH", "TENSORS",
    "PAYLOAD") and `offset` the absolute file offset of the offending field.
    """

    def __init__(self, message: str, section: str = "", offset: int = -1):
        super().__init__(message)
        self.section = section
        self.offset = offset


@dataclass
class Stream:
    role: str  # key of ROLES
    elem_type: str  # key of ELEM_TYPES
    count: int  # number of elements (i4: nibbles; Huffman coded: decoded symbols)
    data: np.ndarray  # the stored bytes as a 1-D uint8 array (nbytes long; coded if Huffman)
    entropy: str = "none"  # key of ENTROPY
    bits: int = 0  # elem_type "bits": the width 1..16; 0 for every other elem_type


@dataclass
class Tensor:
    name: str
    dims: Tuple[int, ...]
    values: str = "f32"  # key of VALUES
    layout: str = "dense"
    entropy: str = "none"
    group_size: int = 0
    codebook_bits: int = 0
    block_rows: int = 0
    block_cols: int = 0
    streams: List[Stream] = field(default_factory=list)


@dataclass
class Node:
    op: str  # key of OPS
    name: str
    inputs: List[int]  # value indices
    outputs: List[int]
    weights: List[Optional[int]] = field(default_factory=list)  # tensor indices, None = absent
    attrs: Dict[str, Union[List[int], List[float]]] = field(default_factory=dict)


@dataclass
class GraphInput:
    value: int
    dims: Tuple[int, ...]  # -1 = any size


@dataclass
class Graph:
    values: List[str]  # value names; dtype f32 for all in 1.0
    inputs: List[GraphInput]
    outputs: List[int]
    nodes: List[Node]


@dataclass
class DsqFile:
    metadata: Dict[str, Union[str, int, float]]
    graph: Graph
    tensors: List[Tensor]


# ---------------------------------------------------------------------------------------
# Constants derived from docs/FORMAT.md
# ---------------------------------------------------------------------------------------

HEADER_SIZE = 64
DIRECTORY_ENTRY_SIZE = 32
SECTION_COUNT = 4
MAX_STRING = 4096
MAX_META_STRING = 1 << 20  # metadata string values (e.g. the exporter's JSON config)
MAX_RANK = 8
MAX_NUMEL = 1 << 40  # numel < 2^40
MAX_INPUT_DIM = 1 << 32  # graph input dims: -1 or 1..2^32 (same bound as csrc/format)
MAX_ATTR_VALUES = 64  # variable-count attributes (reshape's shape) hold 1..64 values

SECTION_NAMES = {v: k for k, v in SECTION_KINDS.items()}
OP_NAMES = {v: k for k, v in OPS.items()}
ATTR_NAMES = {v: k for k, v in ATTRS.items()}
VALUES_NAMES = {v: k for k, v in VALUES.items()}
LAYOUT_NAMES = {v: k for k, v in LAYOUTS.items()}
ENTROPY_NAMES = {v: k for k, v in ENTROPY.items()}
ROLE_NAMES = {v: k for k, v in ROLES.items()}
ELEM_NAMES = {v: k for k, v in ELEM_TYPES.items()}
META_TYPES = {1: "string", 2: "i64", 3: "f64"}
# The minor version that introduced each code (codes absent here are 1.0). A file may
# use a code only when its version_minor is at least this.
LAYOUT_MINOR = {"csr": 1, "csr_relative": 1, "block_csr": 1}
VALUES_MINOR = {"codebook": 1}
ENTROPY_MINOR = {"huffman": 1}
ROLE_MINOR = {"row_ptr": 1, "col_idx": 1, "codebook": 1, "indices": 1}
ELEM_MINOR = {"bits": 1}
# Elem types a stream may Huffman-code (FORMAT.md 1.1); bits streams only up to 8 wide.
HUFFMAN_ELEMS = ("u8", "i8", "i4", "bits")
MAX_HUFFMAN_BITS = 8

# Attributes each op accepts and how many values each holds (0 = any count 1..64).
OP_ATTRS: Dict[str, Dict[str, int]] = {
    "conv2d": {"stride": 2, "padding": 2, "dilation": 2, "groups": 1, "activation": 1,
               "input_quant": 2},
    "linear": {"activation": 1, "input_quant": 2},
    "relu": {}, "relu6": {}, "hardswish": {}, "sigmoid": {},
    "max_pool2d": {"kernel": 2, "stride": 2, "padding": 2, "dilation": 2, "ceil_mode": 1},
    "avg_pool2d": {"kernel": 2, "stride": 2, "padding": 2, "ceil_mode": 1,
                   "count_include_pad": 1},
    "global_avg_pool2d": {},
    "add": {"activation": 1},
    "mul": {},
    "concat": {"axis": 1},
    "flatten": {"start_dim": 1, "end_dim": 1},
    "reshape": {"shape": 0},
    "softmax": {"axis": 1},
    "batch_norm": {"eps": 1},
}

# Bytes per element (i4 is handled by elem_nbytes).
_ELEM_SIZE = {"f32": 4, "f16": 2, "i8": 1, "u8": 1, "u16": 2, "u32": 4, "i32": 4}


def elem_nbytes(elem_type: str, count: int, bits: int = 0) -> int:
    """Bytes that `count` raw elements of `elem_type` take (i4: two per byte, rounded up;
    bits: `bits` bits each, packed, rounded up to whole bytes)."""
    if elem_type == "i4":
        return (count + 1) // 2
    if elem_type == "bits":
        return (count * bits + 7) // 8
    return count * _ELEM_SIZE[elem_type]


def huffman_alphabet(elem_type: str, bits: int = 0) -> int:
    """The Huffman alphabet size of a stream of this elem_type (FORMAT.md 1.1)."""
    if elem_type in ("u8", "i8"):
        return 256
    if elem_type == "i4":
        return 16
    if elem_type == "bits":
        return 1 << bits
    raise ValueError(f"elem_type {elem_type!r} cannot be Huffman coded")


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned values < 2^bits LSB-first: element i occupies bits [i*b, i*b+b) of
    the little-endian bit string. Returns ceil(n*b/8) bytes."""
    v = np.asarray(values).reshape(-1).astype(np.uint32)
    n = int(v.size)
    if n == 0:
        return np.zeros(0, dtype=np.uint8)
    shifts = np.arange(bits, dtype=np.uint32)
    bitarr = ((v[:, None] >> shifts[None, :]) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(bitarr, bitorder="little")[:(n * bits + 7) // 8]


def unpack_bits(data: np.ndarray, count: int, bits: int) -> np.ndarray:
    """The inverse of pack_bits: `count` values as uint16 (uint8 when bits <= 8)."""
    b = np.asarray(data, dtype=np.uint8).reshape(-1)
    if count == 0:
        return np.zeros(0, dtype=np.uint8 if bits <= 8 else np.uint16)
    bitarr = np.unpackbits(b, bitorder="little")[:count * bits].reshape(count, bits)
    weights = (np.uint32(1) << np.arange(bits, dtype=np.uint32))
    v = (bitarr.astype(np.uint32) * weights[None, :]).sum(axis=1)
    return v.astype(np.uint8 if bits <= 8 else np.uint16)


def tensor_matrix_shape(dims: Sequence[int]) -> Tuple[int, int]:
    """(rows, cols) of the matrix view of a tensor: rows = dims[0], cols = numel / rows;
    a rank-1 tensor is one row (FORMAT.md), i.e. rows = 1, cols = dims[0]."""
    numel = 1
    for d in dims:
        numel *= int(d)
    rows = int(dims[0]) if len(dims) > 1 else 1
    return rows, (numel // rows if rows else 0)


def expected_streams(values: str, dims: Sequence[int], group_size: int) -> List[Tuple[str, str, int]]:
    """The (role, elem_type, count) streams a dense tensor with this encoding needs."""
    rows, cols = tensor_matrix_shape(dims)
    numel = rows * cols
    if values == "f32":
        return [("values", "f32", numel)]
    if values == "f16":
        return [("values", "f16", numel)]
    if values == "int8_channel":
        return [("values", "i8", numel), ("scales", "f32", rows)]
    if values == "int4_group":
        return [("values", "i4", numel),
                ("scales", "f32", rows * ((cols + group_size - 1) // group_size))]
    raise ValueError(f"unknown values encoding {values!r}")


def block_grid(rows: int, cols: int, block_rows: int, block_cols: int) -> Tuple[int, int]:
    """(R, C): block rows and block columns of a block_csr matrix."""
    return -(-rows // block_rows), -(-cols // block_cols)


@dataclass(frozen=True)
class StreamSlot:
    """One stream an encoding needs: its role, the elem types, widths and counts allowed."""
    role: str
    elem_types: Tuple[str, ...]
    bits: Tuple[int, ...]  # allowed widths of a bits stream; (0,) otherwise
    counts: Tuple[int, ...]


def stream_plan(layout: str, values: str, dims: Sequence[int], group_size: int = 0,
                codebook_bits: int = 0, block_rows: int = 0, block_cols: int = 0,
                entries: int = 0, minor: int = VERSION_MINOR) -> List[StreamSlot]:
    """The streams of a tensor with this encoding, in file order (FORMAT.md).

    `entries` is the layout's entry count N (the col_idx stream's count: nonzeros for
    csr, entries with fillers for csr_relative, blocks for block_csr); unused for dense.
    `minor` is the file's minor version: 1.2 adds u16 row_ptr and a single int8 scale.
    """
    rows, cols = tensor_matrix_shape(dims)
    slots: List[StreamSlot] = []
    row_ptr_types = ("u32", "u16") if minor >= 2 else ("u32",)
    if layout == "dense":
        stored = rows * cols
    elif layout in ("csr", "csr_relative"):
        slots.append(StreamSlot("row_ptr", row_ptr_types, (0,), (rows + 1,)))
        if layout == "csr":
            slots.append(StreamSlot("col_idx", ("u16",) if cols <= 65536 else ("u32",), (0,), (entries,)))
        else:
            slots.append(StreamSlot("col_idx", ("bits",), tuple(range(2, 9)), (entries,)))
        stored = entries
    elif layout == "block_csr":
        nbr, nbc = block_grid(rows, cols, block_rows, block_cols)
        slots.append(StreamSlot("row_ptr", row_ptr_types, (0,), (nbr + 1,)))
        slots.append(StreamSlot("col_idx", ("u16",) if nbc <= 65536 else ("u32",), (0,), (entries,)))
        stored = entries * block_rows * block_cols
    else:
        raise ValueError(f"unknown layout {layout!r}")
    if values == "f32":
        slots.append(StreamSlot("values", ("f32",), (0,), (stored,)))
    elif values == "f16":
        slots.append(StreamSlot("values", ("f16",), (0,), (stored,)))
    elif values == "int8_channel":
        slots.append(StreamSlot("values", ("i8",), (0,), (stored,)))
        slots.append(StreamSlot("scales", ("f32",), (0,), (rows, 1) if minor >= 2 and rows > 1 else (rows,)))
    elif values == "int4_group":
        slots.append(StreamSlot("values", ("i4",), (0,), (stored,)))
        slots.append(StreamSlot("scales", ("f32",), (0,), (rows * -(-cols // group_size),)))
    elif values == "codebook":
        k = 1 << codebook_bits
        slots.append(StreamSlot("codebook", ("f32", "f16"), (0,), (k, rows * k) if rows > 1 else (k,)))
        slots.append(StreamSlot("indices", ("bits",), (codebook_bits,), (stored,)))
    else:
        raise ValueError(f"unknown values encoding {values!r}")
    return slots


def _huffman_form(s: "Stream") -> int:
    """The lengths_form byte of a Huffman stream (0 when its data are not at hand)."""
    try:
        data = _stream_bytes(s, "")
    except ValueError:
        return 0
    return int(data[1]) if data.size > 1 else 0


def tensor_minor(t: "Tensor") -> int:
    """The minor version a tensor needs: 2 when it uses any code of format 1.2, 1 when it
    uses any code of format 1.1."""
    rows = tensor_matrix_shape(t.dims)[0] if t.dims else 1
    if any((s.role == "row_ptr" and s.elem_type == "u16")
           or (s.role == "scales" and t.values == "int8_channel" and s.count == 1 and rows > 1)
           or (s.entropy == "huffman" and _huffman_form(s) != 0)
           for s in t.streams):
        return 2
    if (t.layout in LAYOUT_MINOR or t.values in VALUES_MINOR or t.entropy in ENTROPY_MINOR
            or any(s.role in ROLE_MINOR or s.elem_type in ELEM_MINOR or s.entropy in ENTROPY_MINOR
                   for s in t.streams)):
        return 1
    return 0


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


# ---------------------------------------------------------------------------------------
# CRC32C
# ---------------------------------------------------------------------------------------

_CRC_POLY = 0x82F63B78


def _make_crc_table() -> List[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (_CRC_POLY if c & 1 else 0)
        table.append(c)
    return table


_CRC_TABLE = _make_crc_table()
_CRC_TABLE_NP = np.array(_CRC_TABLE, dtype=np.uint32)


def _crc_update_py(crc: int, data: bytes) -> int:
    """Raw (no pre/post inversion) reflected CRC32C update, one byte at a time."""
    t = _CRC_TABLE
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


# A linear operator on the 32-bit CRC state, as the images of the 32 unit vectors.
def _op_apply(op: List[int], v: int) -> int:
    r = 0
    b = 0
    while v:
        if v & 1:
            r ^= op[b]
        v >>= 1
        b += 1
    return r


def _op_compose(a: List[int], b: List[int]) -> List[int]:  # a after b
    return [_op_apply(a, x) for x in b]


_ZERO_BYTE_OP = [(_CRC_TABLE[(1 << i) & 0xFF] ^ ((1 << i) >> 8)) for i in range(32)]


def _shift_op(n: int) -> List[int]:
    """The operator that feeds n zero bytes into the raw CRC state."""
    result = [1 << i for i in range(32)]
    base = _ZERO_BYTE_OP
    while n:
        if n & 1:
            result = _op_compose(base, result)
        n >>= 1
        if n:
            base = _op_compose(base, base)
    return result


def _op_tables(op: List[int]) -> List[List[int]]:
    """Four 256-entry lookup tables: op(v) = T0[v&255] ^ T1[v>>8&255] ^ T2[..] ^ T3[..]."""
    tables = []
    for byte in range(4):
        t = [0]
        for bit in range(8):
            col = op[8 * byte + bit]
            t = t + [x ^ col for x in t]
        tables.append(t)
    return tables


_SHIFT_CACHE: Dict[int, List[List[int]]] = {}


def _shift_tables(n: int) -> List[List[int]]:
    tables = _SHIFT_CACHE.get(n)
    if tables is None:
        if len(_SHIFT_CACHE) > 64:
            _SHIFT_CACHE.clear()
        tables = _SHIFT_CACHE[n] = _op_tables(_shift_op(n))
    return tables


def _crc_raw_lanes(arr: np.ndarray) -> int:
    """Raw CRC (initial state 0, no final xor) of a uint8 array, computed over many
    interleaved lanes with numpy and then combined (CRC is linear over GF(2))."""
    n = arr.size
    lane = max(64, int(np.sqrt(n / 6.0)))
    k = -(-n // lane)
    pad = k * lane - n
    # Leading zero bytes do not change a raw CRC that starts at 0.
    buf = np.zeros(k * lane, dtype=np.uint8)
    buf[pad:] = arr
    cols = np.ascontiguousarray(buf.reshape(k, lane).T)  # (lane, k): row j = byte j of every lane
    del buf
    table = _CRC_TABLE_NP
    state = np.zeros(k, dtype=np.uint32)
    idx = np.empty(k, dtype=np.uint32)
    for j in range(lane):
        np.bitwise_and(state, 0xFF, out=idx)
        np.bitwise_xor(idx, cols[j], out=idx)
        np.right_shift(state, 8, out=state)
        np.bitwise_xor(state, table[idx], out=state)
    t0, t1, t2, t3 = _shift_tables(lane)
    crc = 0
    for s in state.tolist():
        crc = t0[crc & 0xFF] ^ t1[(crc >> 8) & 0xFF] ^ t2[(crc >> 16) & 0xFF] ^ t3[crc >> 24] ^ s
    return crc


_CORE_CRC = None
_CORE_CHECKED = False


def _core_crc32c():
    global _CORE_CRC, _CORE_CHECKED
    if not _CORE_CHECKED:
        _CORE_CHECKED = True
        try:
            from . import _core  # type: ignore[attr-defined]
        except Exception:  # the extension is optional here
            _core = None
        fn = getattr(_core, "crc32c", None) if _core is not None else None
        if callable(fn):
            try:
                if int(fn(b"123456789")) == 0xE3069283:
                    _CORE_CRC = fn
            except Exception:
                _CORE_CRC = None
    return _CORE_CRC


def _as_u8(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        a = data.reshape(-1)
        if a.dtype != np.uint8:
            a = np.ascontiguousarray(a).view(np.uint8)
        return a
    return np.frombuffer(data, dtype=np.uint8)


def crc32c(data) -> int:
    """CRC32C (Castagnoli) of a bytes-like object or uint8 numpy array.

    Uses deepsqueeze._core.crc32c when the extension provides it; otherwise a table
    driven pure-Python/numpy implementation (vectorized across lanes for large inputs).
    """
    core = _core_crc32c()
    if core is not None:
        try:
            return int(core(data)) & 0xFFFFFFFF
        except TypeError:
            return int(core(_as_u8(data).tobytes())) & 0xFFFFFFFF
    arr = _as_u8(data)
    n = int(arr.size)
    if n < 4096:
        return _crc_update_py(0xFFFFFFFF, arr.tobytes()) ^ 0xFFFFFFFF
    raw = 0
    block = 1 << 26  # bound the temporary copies of the lane transposition
    for start in range(0, n, block):
        part = arr[start:start + block]
        if start:
            t0, t1, t2, t3 = _shift_tables(int(part.size))
            raw = t0[raw & 0xFF] ^ t1[(raw >> 8) & 0xFF] ^ t2[(raw >> 16) & 0xFF] ^ t3[raw >> 24]
        raw ^= _crc_raw_lanes(part)
    # CRC with initial state 0xFFFFFFFF = raw CRC ^ (0xFFFFFFFF shifted through n bytes).
    return raw ^ _op_apply(_shift_op(n), 0xFFFFFFFF) ^ 0xFFFFFFFF


# ---------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------

_EMPTY = np.zeros(0, dtype=np.uint8)
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")
_HEADER = struct.Struct("<4sHHIIQII32s")
_DIR_ENTRY = struct.Struct("<IIQQII")
_NODE_HEAD = struct.Struct("<HH")
_NODE_COUNTS = struct.Struct("<HHHH")
_ATTR_HEAD = struct.Struct("<HBBI")
_TENSOR_HEAD = struct.Struct("<BBBB")
_TENSOR_PARAMS = struct.Struct("<IIII")
_STREAM = struct.Struct("<BBBBIQQQ")


class _Out:
    """A byte builder whose packers name the field in their errors."""

    def __init__(self):
        self.buf = bytearray()

    def pack(self, st: struct.Struct, what: str, *vals):
        try:
            self.buf += st.pack(*vals)
        except (struct.error, TypeError, OverflowError) as e:
            raise ValueError(f"cannot write {what} = {vals!r}: {e}") from None

    def string(self, s: str, what: str, limit: int = MAX_STRING):
        if not isinstance(s, str):
            raise ValueError(f"{what} must be a str, got {type(s).__name__}")
        b = s.encode("utf-8")
        if len(b) > limit:
            raise ValueError(f"{what} is {len(b)} bytes of UTF-8, more than {limit}")
        self.buf += _U32.pack(len(b))
        self.buf += b


def _code(table: Dict[str, int], name, what: str) -> int:
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown {what} {name!r} (known: {', '.join(table)})") from None


def _stream_bytes(s: Stream, what: str) -> np.ndarray:
    data = s.data
    if not isinstance(data, np.ndarray):
        try:
            data = np.frombuffer(data, dtype=np.uint8)
        except TypeError:
            raise ValueError(f"{what}: data must be a uint8 numpy array") from None
    if data.dtype != np.uint8:
        data = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).reshape(-1).view(np.uint8)
    return data.reshape(-1)


def _meta_bytes(metadata: Dict[str, Union[str, int, float]]) -> bytes:
    out = _Out()
    out.pack(_U32, "metadata count", len(metadata))
    for key, value in metadata.items():
        out.string(key, "metadata key")
        if isinstance(value, (bool, np.bool_)):
            raise ValueError(f"metadata {key!r}: bool values are not supported (use int or str)")
        if isinstance(value, str):
            out.pack(_U8, "metadata type", 1)
            out.string(value, f"metadata {key!r} value", MAX_META_STRING)
        elif isinstance(value, (int, np.integer)):
            out.pack(_U8, "metadata type", 2)
            out.pack(_I64, f"metadata {key!r} value", int(value))
        elif isinstance(value, (float, np.floating)):
            out.pack(_U8, "metadata type", 3)
            out.pack(_F64, f"metadata {key!r} value", float(value))
        else:
            raise ValueError(f"metadata {key!r}: unsupported value type {type(value).__name__} "
                             "(str, int or float)")
    return bytes(out.buf)


def _graph_bytes(g: Graph) -> bytes:
    out = _Out()
    out.pack(_U32, "value count", len(g.values))
    for i, name in enumerate(g.values):
        out.string(name, f"value {i} name")
        out.pack(_U8, "value dtype", DTYPES["f32"])
    out.pack(_U32, "input count", len(g.inputs))
    for i, inp in enumerate(g.inputs):
        out.pack(_U32, f"graph input {i} value", inp.value)
        out.pack(_U8, f"graph input {i} rank", len(inp.dims))
        for d in inp.dims:
            out.pack(_I64, f"graph input {i} dim", int(d))
    out.pack(_U32, "output count", len(g.outputs))
    for i, v in enumerate(g.outputs):
        out.pack(_U32, f"graph output {i}", v)
    out.pack(_U32, "node count", len(g.nodes))
    for i, node in enumerate(g.nodes):
        where = f"node {i} ({node.name!r})"
        out.pack(_NODE_HEAD, f"{where} op", _code(OPS, node.op, f"{where} op"), 0)
        out.string(node.name, f"{where} name")
        out.pack(_NODE_COUNTS, f"{where} counts", len(node.inputs), len(node.outputs),
                 len(node.weights), len(node.attrs))
        for v in node.inputs:
            out.pack(_U32, f"{where} input", v)
        for v in node.outputs:
            out.pack(_U32, f"{where} output", v)
        for w in node.weights:
            out.pack(_U32, f"{where} weight", ABSENT if w is None else w)
        for key, vals in node.attrs.items():
            code = _code(ATTRS, key, f"{where} attribute")
            if isinstance(vals, (int, float, np.integer, np.floating)):
                vals = [vals]
            vals = list(vals)
            is_float = key in FLOAT_ATTRS
            out.pack(_ATTR_HEAD, f"{where} attribute {key}", code, 2 if is_float else 1, 0, len(vals))
            if is_float:
                out.pack(struct.Struct(f"<{len(vals)}f"), f"{where} attribute {key}",
                         *[float(x) for x in vals])
            else:
                for x in vals:
                    if isinstance(x, (float, np.floating)) and not float(x).is_integer():
                        raise ValueError(f"{where} attribute {key}: {x!r} is not an integer")
                out.pack(struct.Struct(f"<{len(vals)}q"), f"{where} attribute {key}",
                         *[int(x) for x in vals])
    return bytes(out.buf)


def _tensors_bytes(tensors: List[Tensor]) -> Tuple[bytes, List[Tuple[int, np.ndarray]], int]:
    """The TENSORS section, the (payload offset, bytes) of every stream, and the payload size."""
    out = _Out()
    placed: List[Tuple[int, np.ndarray]] = []
    pos = 0
    out.pack(_U32, "tensor count", len(tensors))
    for i, t in enumerate(tensors):
        where = f"tensor {i} ({t.name!r})"
        out.string(t.name, f"{where} name")
        out.pack(_TENSOR_HEAD, f"{where} rank/layout/values/entropy", len(t.dims),
                 _code(LAYOUTS, t.layout, f"{where} layout"),
                 _code(VALUES, t.values, f"{where} values encoding"),
                 _code(ENTROPY, t.entropy, f"{where} entropy"))
        for d in t.dims:
            out.pack(_U64, f"{where} dim", int(d))
        out.pack(_TENSOR_PARAMS, f"{where} parameters", t.group_size, t.codebook_bits,
                 t.block_rows, t.block_cols)
        out.pack(_U32, f"{where} stream count", len(t.streams))
        for k, s in enumerate(t.streams):
            sw = f"{where} stream {k}"
            data = _stream_bytes(s, sw)
            off = _align(pos)
            out.pack(_STREAM, sw, _code(ROLES, s.role, f"{sw} role"),
                     _code(ELEM_TYPES, s.elem_type, f"{sw} elem_type"),
                     _code(ENTROPY, s.entropy, f"{sw} entropy"), int(s.bits), 0, int(s.count), off,
                     int(data.size))
            placed.append((off, data))
            pos = off + int(data.size)
    return bytes(out.buf), placed, pos


def _serialize(f: DsqFile, verify: bool = True) -> List[Union[bytes, np.ndarray]]:
    """The file as a list of chunks (bytes and uint8 arrays) to concatenate."""
    meta = _meta_bytes(f.metadata)
    graph = _graph_bytes(f.graph)
    tensors, placed, payload_size = _tensors_bytes(f.tensors)
    payload = np.zeros(payload_size, dtype=np.uint8)
    for off, data in placed:
        payload[off:off + data.size] = data

    dir_end = HEADER_SIZE + SECTION_COUNT * DIRECTORY_ENTRY_SIZE
    offsets = []
    pos = _align(dir_end)
    for content in (meta, graph, tensors, payload):
        offsets.append(pos)
        pos = _align(pos + len(content))
    file_size = offsets[3] + payload_size

    directory = bytearray()
    for kind, (off, content) in enumerate(zip(offsets, (meta, graph, tensors, payload)), start=1):
        directory += _DIR_ENTRY.pack(kind, 0, off, len(content), crc32c(content), 0)
    # 1.0 files stay 1.0 byte for byte; a file that uses any 1.1 code is 1.1.
    minor = max((tensor_minor(t) for t in f.tensors), default=0)
    header = bytearray(_HEADER.pack(MAGIC, VERSION_MAJOR, minor, 0, SECTION_COUNT,
                                    file_size, crc32c(bytes(directory)), 0, bytes(32)))
    header[28:32] = _U32.pack(crc32c(bytes(header)))

    chunks: List[Union[bytes, np.ndarray]] = [bytes(header), bytes(directory)]
    pos = dir_end
    for off, content in zip(offsets, (meta, graph, tensors, payload)):
        if off > pos:
            chunks.append(bytes(off - pos))
        chunks.append(content)
        pos = off + len(content)

    if verify:
        # The writer emits only files the reader accepts: run the structural checks of
        # the reader (not the CRCs, which the writer just computed) over what we built.
        # The payload is not needed for that: parse everything before it, with the
        # file's full size, and skip the stream views.
        head = b"".join(chunks[:-1])
        try:
            parsed = _parse(head, check_crc=False, payload_probe=True, virtual_size=file_size)
            # The payload's content rules (row_ptr, col_idx, gaps, Huffman streams),
            # checked on the streams as they will be written.
            payload_at = offsets[3]
            k = 0
            for i, (pt, t) in enumerate(zip(parsed.tensors, f.tensors)):
                for ps, s in zip(pt.streams, t.streams):
                    ps.data = _stream_bytes(s, "")
                abs_offsets = [payload_at + placed[k + j][0] for j in range(len(pt.streams))]
                k += len(pt.streams)
                _check_payload(pt, i, abs_offsets, minor)
        except FormatError as e:
            raise ValueError(f"refusing to write an invalid .dsq file: {e}") from None
    return chunks


def to_bytes(f: DsqFile) -> bytes:
    """Serialize a DsqFile into the canonical bytes of docs/FORMAT.md."""
    return b"".join(c if isinstance(c, bytes) else c.tobytes() for c in _serialize(f))


def write(f: DsqFile, path) -> None:
    """Write a DsqFile to `path` (canonical layout, same bytes as to_bytes)."""
    chunks = _serialize(f)
    with open(path, "wb") as fh:
        for c in chunks:
            fh.write(c if isinstance(c, bytes) else memoryview(c))


# ---------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------


def _fail(section: str, offset: int, message: str):
    raise FormatError(f"{section} at offset {offset}: {message}", section, offset)


class _Cursor:
    def __init__(self, mv: memoryview, begin: int, end: int, section: str):
        self.mv = mv
        self.pos = begin
        self.end = end
        self.section = section

    def fail(self, message: str, at: Optional[int] = None):
        _fail(self.section, self.pos if at is None else at, message)

    def left(self) -> int:
        return self.end - self.pos

    def need(self, n: int, what: str):
        if n > self.end - self.pos:
            self.fail(f"truncated: {what} needs {n} bytes, {self.end - self.pos} left in section")

    def read(self, st: struct.Struct, what: str):
        self.need(st.size, what)
        v = st.unpack_from(self.mv, self.pos)
        self.pos += st.size
        return v

    def u8(self, what: str) -> int:
        return self.read(_U8, what)[0]

    def u16(self, what: str) -> int:
        return self.read(_U16, what)[0]

    def u32(self, what: str) -> int:
        return self.read(_U32, what)[0]

    def u64(self, what: str) -> int:
        return self.read(_U64, what)[0]

    def i64(self, what: str) -> int:
        return self.read(_I64, what)[0]

    def string(self, what: str, limit: int = MAX_STRING) -> str:
        at = self.pos
        n = self.u32(f"{what} length")
        if n > limit:
            self.fail(f"{what} length {n} exceeds {limit}", at)
        self.need(n, what)
        raw = bytes(self.mv[self.pos:self.pos + n])
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.fail(f"{what} is not valid UTF-8 ({e.reason} at byte {e.start})", self.pos)
        self.pos += n
        return s

    def count(self, what: str, min_item_bytes: int) -> int:
        """A u32 count of items that take at least min_item_bytes each; rejects counts
        the rest of the section cannot hold before anything is allocated."""
        at = self.pos
        n = self.u32(what)
        if n * min_item_bytes > self.left():
            self.fail(f"{what} {n} cannot fit in the {self.left()} bytes left in section "
                      f"(each takes at least {min_item_bytes})", at)
        return n


def _parse_meta(c: _Cursor) -> Dict[str, Union[str, int, float]]:
    n = c.count("metadata count", 4 + 1 + 4)
    meta: Dict[str, Union[str, int, float]] = {}
    for i in range(n):
        at = c.pos
        key = c.string(f"metadata entry {i} key")
        if not key:
            c.fail(f"metadata entry {i}: empty key", at)
        if key in meta:
            c.fail(f"duplicate metadata key {key!r}", at)
        type_at = c.pos
        t = c.u8("metadata type")
        if t == 1:
            meta[key] = c.string(f"metadata {key!r} string value", MAX_META_STRING)
        elif t == 2:
            meta[key] = c.i64(f"metadata {key!r} int value")
        elif t == 3:
            meta[key] = c.read(_F64, f"metadata {key!r} float value")[0]
        else:
            c.fail(f"metadata key {key!r}: unknown value type {t}", type_at)
    return meta


def _parse_graph(c: _Cursor, weight_refs: List[Tuple[int, str, int, int]]) -> Graph:
    """Parse GRAPH. Weight indices are range-checked later, against the tensor table
    (TENSORS is parsed after GRAPH): they are appended to weight_refs as
    (offset, "node i ('name')", k, index)."""
    nv = c.count("value_count", 4 + 1)
    values: List[str] = []
    names = set()
    for i in range(nv):
        at = c.pos
        name = c.string(f"value {i} name")
        if not name:
            c.fail(f"value {i}: empty name", at)
        if name in names:
            c.fail(f"value {i}: duplicate value name {name!r}", at)
        names.add(name)
        dt_at = c.pos
        dtype = c.u8("value dtype")
        if dtype != DTYPES["f32"]:
            c.fail(f"value {i} ({name!r}): unknown dtype {dtype}", dt_at)
        values.append(name)

    def check_value(at: int, v: int, where: str):
        if v >= nv:
            c.fail(f"{where}: value {v} out of range (value_count {nv})", at)

    produced = bytearray(nv)  # 1 = graph input, 2 = node output
    inputs: List[GraphInput] = []
    in_at = c.pos
    ni = c.count("input_count", 4 + 1 + 8)
    if ni == 0:
        c.fail("graph has no inputs", in_at)
    for i in range(ni):
        at = c.pos
        v = c.u32(f"graph input {i} value")
        check_value(at, v, f"graph input {i}")
        if produced[v]:
            c.fail(f"graph input {i}: value {v} ({values[v]!r}) is a graph input twice", at)
        produced[v] = 1
        rank_at = c.pos
        rank = c.u8(f"graph input {i} rank")
        if not 1 <= rank <= MAX_RANK:
            c.fail(f"graph input {i} ({values[v]!r}): rank {rank} not in 1..{MAX_RANK}", rank_at)
        dims = []
        for _ in range(rank):
            dim_at = c.pos
            d = c.i64(f"graph input {i} dim")
            if d == 0 or d < -1 or d > MAX_INPUT_DIM:
                c.fail(f"graph input {i} ({values[v]!r}): bad dim {d} (-1 or 1..2^32)", dim_at)
            dims.append(d)
        inputs.append(GraphInput(value=v, dims=tuple(dims)))

    out_at = c.pos
    no = c.count("output_count", 4)
    if no == 0:
        c.fail("graph has no outputs", out_at)
    outputs: List[int] = []
    output_at: List[int] = []
    for i in range(no):
        at = c.pos
        v = c.u32(f"graph output {i} value")
        check_value(at, v, f"graph output {i}")
        outputs.append(v)
        output_at.append(at)

    nn = c.count("node_count", 2 + 2 + 4 + 8)
    nodes: List[Node] = []
    node_names = set()
    for i in range(nn):
        at = c.pos
        op_code = c.u16(f"node {i} op")
        op = OP_NAMES.get(op_code)
        if op is None:
            c.fail(f"node {i}: unknown op {op_code}", at)
        if c.u16(f"node {i} reserved") != 0:
            c.fail(f"node {i}: reserved field not zero", at + 2)
        name_at = c.pos
        name = c.string(f"node {i} name")
        where = f"node {i} ({name!r})"
        if not name:
            c.fail(f"{where}: empty name", name_at)
        if name in node_names:
            c.fail(f"{where}: duplicate node name", name_at)
        node_names.add(name)
        n_in, n_out, n_w, n_attr = c.read(_NODE_COUNTS, f"{where} counts")
        c.need((n_in + n_out + n_w) * 4 + n_attr * 8, f"{where} lists")
        node_inputs = []
        for k in range(n_in):
            vat = c.pos
            v = c.u32(f"{where} input")
            check_value(vat, v, f"{where}: input {k}")
            if not produced[v]:
                c.fail(f"{where}: input {k} value {v} ({values[v]!r}) is used before it is "
                       "produced (nodes must be in topological order; no cycles)", vat)
            node_inputs.append(v)
        node_outputs = []
        for k in range(n_out):
            vat = c.pos
            v = c.u32(f"{where} output")
            check_value(vat, v, f"{where}: output {k}")
            if produced[v]:
                kind = "a graph input" if produced[v] == 1 else "already produced"
                c.fail(f"{where}: output {k} value {v} ({values[v]!r}) is {kind}", vat)
            produced[v] = 2
            node_outputs.append(v)
        weights: List[Optional[int]] = []
        for k in range(n_w):
            wat = c.pos
            w = c.u32(f"{where} weight")
            if w == ABSENT:
                weights.append(None)
                continue
            weight_refs.append((wat, where, k, w))
            weights.append(w)
        rules = OP_ATTRS[op]
        attrs: Dict[str, Union[List[int], List[float]]] = {}
        for k in range(n_attr):
            aat = c.pos
            key_code, atype, reserved, cnt = c.read(_ATTR_HEAD, f"{where} attribute")
            key = ATTR_NAMES.get(key_code)
            if key is None:
                c.fail(f"{where}: unknown attribute key {key_code}", aat)
            if key not in rules:
                c.fail(f"{where}: attribute {key} (key {key_code}) is not defined for op {op}", aat)
            if key in attrs:
                c.fail(f"{where}: duplicate attribute {key}", aat)
            is_float = key in FLOAT_ATTRS
            if atype != (2 if is_float else 1):
                c.fail(f"{where}: attribute {key} has type {atype}, expected "
                       f"{'2 (f32 list)' if is_float else '1 (i64 list)'}", aat + 2)
            if reserved != 0:
                c.fail(f"{where}: attribute {key}: reserved byte not zero", aat + 3)
            want = rules[key]
            if (want and cnt != want) or cnt == 0 or cnt > MAX_ATTR_VALUES:
                expect = str(want) if want else f"1..{MAX_ATTR_VALUES}"
                c.fail(f"{where}: attribute {key} has {cnt} values, expected {expect}", aat + 4)
            if is_float:
                vals = list(c.read(struct.Struct(f"<{cnt}f"), f"{where} attribute {key} values"))
            else:
                vals = list(c.read(struct.Struct(f"<{cnt}q"), f"{where} attribute {key} values"))
            if key == "activation" and vals[0] not in ACTIVATIONS.values():
                c.fail(f"{where}: unknown activation {vals[0]}", aat + 8)
            attrs[key] = vals
        nodes.append(Node(op=op, name=name, inputs=node_inputs, outputs=node_outputs,
                          weights=weights, attrs=attrs))

    for i, v in enumerate(outputs):
        if not produced[v]:
            c.fail(f"graph output {i}: value {v} ({values[v]!r}) is never produced", output_at[i])
    return Graph(values=values, inputs=inputs, outputs=outputs, nodes=nodes)


def _parse_tensors(c: _Cursor, stream_refs: List[tuple], minor: int = VERSION_MINOR) -> List[Tensor]:
    """Parse TENSORS. Stream bounds are checked against the payload afterwards: each
    stream is appended to stream_refs as (entry offset, tensor index, name, k, role,
    offset, nbytes, Stream). Content rules (row_ptr, col_idx, Huffman) come later too."""
    nt = c.count("tensor_count", 4 + 4 + 8 + 16 + 4)
    tensors: List[Tensor] = []
    names = set()

    def newer(code_name: str, table: Dict[str, int]) -> bool:
        return table.get(code_name, 0) > minor

    for i in range(nt):
        at = c.pos
        name = c.string(f"tensor {i} name")
        where = f"tensor {i} ({name!r})"
        if not name:
            c.fail(f"{where}: empty name", at)
        if name in names:
            c.fail(f"{where}: duplicate tensor name", at)
        names.add(name)
        enc_at = c.pos
        rank, layout_code, values_code, entropy_code = c.read(_TENSOR_HEAD, f"{where} encoding")
        if not 1 <= rank <= MAX_RANK:
            c.fail(f"{where}: rank {rank} not in 1..{MAX_RANK}", enc_at)
        layout = LAYOUT_NAMES.get(layout_code)
        if layout is None or newer(layout, LAYOUT_MINOR):
            extra = f" ({layout} needs format 1.{LAYOUT_MINOR[layout]}, file is 1.{minor})" if layout else ""
            c.fail(f"{where}: unknown layout {layout_code}{extra}", enc_at + 1)
        values = VALUES_NAMES.get(values_code)
        if values is None or newer(values, VALUES_MINOR):
            extra = f" ({values} needs format 1.{VALUES_MINOR[values]}, file is 1.{minor})" if values else ""
            c.fail(f"{where}: unknown values encoding {values_code}{extra}", enc_at + 2)
        entropy = ENTROPY_NAMES.get(entropy_code)
        if entropy is None or newer(entropy, ENTROPY_MINOR):
            extra = f" ({entropy} needs format 1.{ENTROPY_MINOR[entropy]}, file is 1.{minor})" if entropy else ""
            c.fail(f"{where}: unknown entropy coding {entropy_code}{extra}", enc_at + 3)
        dims = []
        numel = 1
        for _ in range(rank):
            dat = c.pos
            d = c.u64(f"{where} dim")
            if d < 1 or numel * d >= MAX_NUMEL:
                c.fail(f"{where}: dim {d} out of range (dims >= 1, numel below 2^40)", dat)
            numel *= d
            dims.append(d)
        rows, cols = tensor_matrix_shape(dims)
        params_at = c.pos
        group_size, codebook_bits, block_rows, block_cols = c.read(_TENSOR_PARAMS, f"{where} parameters")
        if values == "codebook":
            if not 1 <= codebook_bits <= 8:
                c.fail(f"{where}: codebook_bits {codebook_bits} not in 1..8", params_at + 4)
        elif codebook_bits:
            c.fail(f"{where}: codebook_bits must be 0 for {values}, found {codebook_bits}", params_at + 4)
        if layout == "block_csr":
            if not 1 <= block_rows <= 16:
                c.fail(f"{where}: block_rows {block_rows} not in 1..16", params_at + 8)
            if not 1 <= block_cols <= 16:
                c.fail(f"{where}: block_cols {block_cols} not in 1..16", params_at + 12)
            if block_rows == 1 and block_cols == 1:
                c.fail(f"{where}: block_csr with 1x1 blocks is not allowed (use csr)", params_at + 8)
        else:
            if block_rows:
                c.fail(f"{where}: block_rows must be 0 for layout {layout}, found {block_rows}", params_at + 8)
            if block_cols:
                c.fail(f"{where}: block_cols must be 0 for layout {layout}, found {block_cols}", params_at + 12)
        if values == "int4_group":
            if not (8 <= group_size <= 65536 and group_size & (group_size - 1) == 0):
                c.fail(f"{where}: int4 group_size {group_size} is not a power of two in 8..65536",
                       params_at)
        elif group_size:
            c.fail(f"{where}: group_size must be 0 for {values}, found {group_size}", params_at)
        ns_at = c.pos
        ns = c.count(f"{where} stream_count", _STREAM.size)
        entries_raw = []
        for k in range(ns):
            sat = c.pos
            entries_raw.append((sat,) + tuple(c.read(_STREAM, f"{where} stream {k}")))
        # The layout's entry count N is the col_idx stream's count (stream 1).
        entries = 0
        if layout != "dense" and ns >= 2:
            entries = entries_raw[1][6]
            if layout == "block_csr":
                nbr, nbc = block_grid(rows, cols, block_rows, block_cols)
                limit, what = nbr * nbc, f"the {nbr}x{nbc} block grid"
            else:
                limit, what = numel, f"the {rows}x{cols} matrix"
            if entries > limit:
                c.fail(f"{where}: stream 1: col_idx count {entries} is more entries than {what} "
                       f"holds ({limit})", entries_raw[1][0] + 8)
        want = stream_plan(layout, values, dims, group_size, codebook_bits, block_rows, block_cols,
                           entries, minor)
        if ns != len(want):
            c.fail(f"{where}: layout {layout} with values {values} needs {len(want)} streams, "
                   f"found {ns} (expected: {', '.join(w.role for w in want)})", ns_at)
        streams: List[Stream] = []
        any_huffman = False
        for k, (sat, role, et, sent, bits, r1, count, off, nbytes) in enumerate(entries_raw):
            sw = f"{where}: stream {k}"
            slot = want[k]
            role_name = ROLE_NAMES.get(role)
            if role_name is None or newer(role_name, ROLE_MINOR):
                c.fail(f"{sw}: unknown role {role}", sat)
            et_name = ELEM_NAMES.get(et)
            if et_name is None or newer(et_name, ELEM_MINOR):
                c.fail(f"{sw}: unknown elem_type {et}", sat + 1)
            if role_name != slot.role:
                c.fail(f"{sw}: role {role} ({role_name}), expected {ROLES[slot.role]} ({slot.role})", sat)
            if et_name not in slot.elem_types:
                c.fail(f"{sw}: elem_type {et} ({et_name}), expected "
                       f"{' or '.join(f'{ELEM_TYPES[e]} ({e})' for e in slot.elem_types)}", sat + 1)
            ent = ENTROPY_NAMES.get(sent)
            if ent is None or newer(ent, ENTROPY_MINOR):
                c.fail(f"{sw}: unknown entropy coding {sent}", sat + 2)
            if et_name == "bits":
                if bits not in slot.bits:
                    lo, hi = min(slot.bits), max(slot.bits)
                    c.fail(f"{sw}: bits width {bits}, expected "
                           f"{lo if lo == hi else f'{lo}..{hi}'}", sat + 3)
            elif bits != 0:
                c.fail(f"{sw}: reserved byte not zero (the bits width is only for elem_type bits)", sat + 3)
            if r1 != 0:
                c.fail(f"{sw}: reserved field not zero", sat + 4)
            if count not in slot.counts:
                c.fail(f"{sw}: count {count} but the tensor needs "
                       f"{' or '.join(str(n) for n in slot.counts)}", sat + 8)
            if ent == "huffman":
                any_huffman = True
                if et_name not in HUFFMAN_ELEMS or (et_name == "bits" and bits > MAX_HUFFMAN_BITS):
                    c.fail(f"{sw}: a {et_name}{bits if et_name == 'bits' else ''} stream cannot be "
                           f"Huffman coded (only u8, i8, i4 and bits up to {MAX_HUFFMAN_BITS} wide)", sat + 2)
                if count == 0:
                    c.fail(f"{sw}: an empty stream cannot be Huffman coded", sat + 2)
            elif nbytes != elem_nbytes(et_name, count, bits):
                c.fail(f"{sw}: nbytes {nbytes} does not match count {count} of {et_name} "
                       f"({elem_nbytes(et_name, count, bits)})", sat + 24)
            if off % ALIGNMENT:
                c.fail(f"{sw}: offset {off} is not a multiple of {ALIGNMENT}", sat + 16)
            st = Stream(role=role_name, elem_type=et_name, count=count, data=_EMPTY, entropy=ent,
                        bits=bits)
            stream_refs.append((sat, i, name, k, role_name, off, nbytes, st))
            streams.append(st)
        if (entropy == "huffman") != any_huffman:
            c.fail(f"{where}: tensor entropy {entropy_code} ({entropy}) but "
                   f"{'some' if any_huffman else 'no'} stream is Huffman coded", enc_at + 3)
        tensors.append(Tensor(name=name, dims=tuple(dims), values=values, layout=layout,
                              entropy=entropy, group_size=group_size, codebook_bits=codebook_bits,
                              block_rows=block_rows, block_cols=block_cols, streams=streams))
    return tensors


def stream_symbols(s: Stream, at: int = -1, where: str = "") -> np.ndarray:
    """The elements of a u8 / i8 / i4 / bits stream (bits up to 8 wide) as one unsigned
    symbol per element (uint8): i8 as its byte, i4 as its nibble, bits as the b-bit
    value; Huffman streams decoded. A bad Huffman stream is a FormatError (PAYLOAD, `at`)."""
    data = np.asarray(s.data, dtype=np.uint8).reshape(-1)
    count = int(s.count)
    if s.entropy == "huffman":
        from . import huffman
        alphabet = huffman_alphabet(s.elem_type, s.bits)
        try:
            sym = huffman.decode(data, count, alphabet)
        except (ValueError, IndexError, OverflowError) as e:
            # The codec names the byte inside the stream ("... at byte N: ...").
            msg = str(e)
            off = at
            if at >= 0 and "at byte " in msg:
                try:
                    off = at + int(msg.split("at byte ", 1)[1].split(":", 1)[0])
                except ValueError:
                    off = at
            _fail("PAYLOAD", off, f"{where}: bad Huffman stream: {msg}")
        sym = np.asarray(sym).reshape(-1)
        if sym.size != count or (sym.size and int(sym.max()) >= alphabet):
            _fail("PAYLOAD", at, f"{where}: Huffman stream decoded to {sym.size} symbols, expected {count}")
        return sym.astype(np.uint8, copy=False)
    if s.elem_type in ("u8", "i8"):
        return data[:count]
    if s.elem_type == "i4":
        out = np.empty(data.size * 2, dtype=np.uint8)
        out[0::2] = data & 0x0F
        out[1::2] = data >> 4
        return out[:count]
    if s.elem_type == "bits":
        return unpack_bits(data, count, s.bits)
    raise ValueError(f"{where}: elem_type {s.elem_type} has no symbols")


def _u_array(s: Stream, dtype: str) -> np.ndarray:
    return np.frombuffer(np.asarray(s.data, dtype=np.uint8).tobytes(), dtype=dtype)


def _check_increasing(col: np.ndarray, row_ptr: np.ndarray, limit: int) -> Tuple[int, str]:
    """First entry whose column is >= limit or not above the previous column of its row:
    (entry index, reason) or (-1, "")."""
    n = int(col.size)
    if n == 0:
        return -1, ""
    col = col.astype(np.int64)
    over = np.flatnonzero(col >= limit)
    first_bad, reason = (int(over[0]), f"column {int(col[over[0]])} >= {limit}") if over.size else (n, "")
    starts = np.zeros(n, dtype=bool)
    rs = row_ptr[:-1].astype(np.int64)
    starts[rs[rs < n]] = True
    bad = np.flatnonzero((np.diff(col) <= 0) & ~starts[1:]) + 1
    if bad.size and int(bad[0]) < first_bad:
        j = int(bad[0])
        first_bad, reason = j, f"column {int(col[j])} is not above the previous column {int(col[j - 1])} of its row"
    return (first_bad, reason) if first_bad < n else (-1, "")


def relative_columns(gaps: np.ndarray, row_ptr: np.ndarray, bits: int) -> Tuple[np.ndarray, np.ndarray]:
    """Columns of csr_relative entries and the filler mask. A value entry is at
    c_e = c_(e-1) + 1 + g_e, a filler (g_e = 2^b - 1) at c_(e-1) + g_e; c_(-1) = -1."""
    g = gaps.astype(np.int64)
    filler = g == (1 << bits) - 1
    step = g + (~filler)
    cs = np.cumsum(step)
    counts = np.diff(row_ptr.astype(np.int64))
    base = np.concatenate([[0], cs])[row_ptr[:-1].astype(np.int64)]
    cols = cs - np.repeat(base, counts) - 1
    return cols, filler


def _check_payload(t: Tensor, i: int, at: List[int], minor: int = VERSION_MINOR) -> None:
    """The content rules of FORMAT.md for one tensor whose stream data are set:
    Huffman streams decode (sparse code lengths only from 1.2 on); row_ptr starts at 0,
    never decreases and ends at the entry count; col_idx in range and strictly increasing
    within a row; relative gaps never run past the last column. `at` holds each stream's
    absolute file offset."""
    where = f"tensor {i} ({t.name!r})"
    for k, s in enumerate(t.streams):
        if s.entropy == "huffman":
            form = _huffman_form(s)
            if form != 0 and minor < 2:
                _fail("PAYLOAD", at[k] + 1, f"{where} stream {k} ({s.role}): Huffman lengths_form {form} "
                                            f"unknown in format 1.{minor} (sparse code lengths need 1.2)")
            stream_symbols(s, at[k], f"{where} stream {k} ({s.role})")
    if t.layout == "dense":
        return
    rows, cols = tensor_matrix_shape(t.dims)
    if t.layout == "block_csr":
        rows, cols = block_grid(rows, cols, t.block_rows, t.block_cols)
    rp_s, ci_s = t.streams[0], t.streams[1]
    n = int(ci_s.count)
    rp_size = 2 if rp_s.elem_type == "u16" else 4
    row_ptr = _u_array(rp_s, "<u2" if rp_size == 2 else "<u4").astype(np.int64)
    sw = f"{where} stream 0 (row_ptr)"
    if row_ptr[0] != 0:
        _fail("PAYLOAD", at[0], f"{sw}: row_ptr[0] is {row_ptr[0]}, must be 0")
    dec = np.flatnonzero(np.diff(row_ptr) < 0)
    if dec.size:
        j = int(dec[0]) + 1
        _fail("PAYLOAD", at[0] + rp_size * j, f"{sw}: row_ptr decreases at {j} ({row_ptr[j - 1]} -> {row_ptr[j]})")
    if row_ptr[-1] != n:
        _fail("PAYLOAD", at[0] + rp_size * rows, f"{sw}: row_ptr[{rows}] is {row_ptr[-1]} but col_idx holds {n} entries")
    sw = f"{where} stream 1 (col_idx)"
    if t.layout == "csr_relative":
        gaps = stream_symbols(ci_s, at[1], sw)
        cols_of, filler = relative_columns(gaps, row_ptr, ci_s.bits)
        over = np.flatnonzero(cols_of >= cols)
        if over.size:
            j = int(over[0])
            off = at[1] if ci_s.entropy == "huffman" else at[1] + j * ci_s.bits // 8
            kind = "filler" if filler[j] else "entry"
            _fail("PAYLOAD", off, f"{sw}: {kind} {j} lands on column {int(cols_of[j])}, past the "
                                  f"last column {cols - 1} (gaps run past cols)")
        return
    esize = 2 if ci_s.elem_type == "u16" else 4
    col = _u_array(ci_s, "<u2" if esize == 2 else "<u4")
    j, reason = _check_increasing(col, row_ptr, cols)
    if j >= 0:
        what = "block column" if t.layout == "block_csr" else "column"
        _fail("PAYLOAD", at[1] + esize * j, f"{sw}: entry {j}: {reason.replace('column', what, 1)}")


def _parse(buf, check_crc: bool = True, payload_probe: bool = False,
           virtual_size: Optional[int] = None) -> DsqFile:
    """Parse and validate. The writer's self-check passes payload_probe=True with the
    bytes before the payload and the file's virtual_size: CRCs and stream views are
    skipped then, every structural rule is checked."""
    if isinstance(buf, np.ndarray):
        arr = buf.reshape(-1)
        if arr.dtype != np.uint8 or not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
    else:
        try:
            arr = np.frombuffer(buf, dtype=np.uint8)
        except (TypeError, ValueError) as e:
            raise TypeError(f"from_bytes needs a bytes-like object or uint8 array: {e}") from None
    mv = memoryview(arr)
    size = int(arr.size) if virtual_size is None else int(virtual_size)

    # Header.
    prefix = bytes(mv[0:min(size, 4)])
    if prefix != MAGIC[:len(prefix)]:
        _fail("header", 0, f"bad magic {prefix!r} (not a .dsq file)")
    if size < HEADER_SIZE:
        _fail("header", 0, f"file is {size} bytes, shorter than the {HEADER_SIZE}-byte header")
    (magic, major, minor, flags, section_count, file_size, dir_crc, header_crc,
     reserved) = _HEADER.unpack_from(mv, 0)
    if major != VERSION_MAJOR:
        _fail("header", 4, f"format version {major}.{minor}: this reader reads only major "
                           f"version {VERSION_MAJOR}")
    if minor > VERSION_MINOR:
        _fail("header", 6, f"format version {major}.{minor} is newer than this reader "
                           f"({VERSION_MAJOR}.{VERSION_MINOR})")
    if check_crc:
        head = bytearray(mv[0:HEADER_SIZE])
        head[28:32] = b"\0\0\0\0"
        got = crc32c(bytes(head))
        if got != header_crc:
            _fail("header", 28, f"header CRC32C mismatch (stored 0x{header_crc:08X}, computed "
                                f"0x{got:08X}): corrupt header")
    if flags != 0:
        _fail("header", 8, f"unknown flags 0x{flags:08X} (all bits are reserved and must be zero)")
    if any(reserved):
        first = next(i for i, b in enumerate(reserved) if b)
        _fail("header", 32 + first, "reserved header bytes must be zero")
    if file_size != size:
        _fail("header", 16, f"header says the file has {file_size} bytes but it has {size} "
                            "(truncated or padded)")
    if section_count != SECTION_COUNT:
        _fail("header", 12, f"section_count {section_count}, format 1.0 has {SECTION_COUNT}")

    # Section directory.
    dir_end = HEADER_SIZE + section_count * DIRECTORY_ENTRY_SIZE
    if dir_end > size:
        _fail("directory", HEADER_SIZE, f"section directory ({dir_end - HEADER_SIZE} bytes) runs "
                                        f"past the end of the file ({size} bytes)")
    if check_crc:
        got = crc32c(arr[HEADER_SIZE:dir_end])
        if got != dir_crc:
            _fail("directory", HEADER_SIZE, f"section directory CRC32C mismatch (stored "
                                            f"0x{dir_crc:08X}, computed 0x{got:08X})")
    sections: Dict[str, Tuple[int, int, int]] = {}
    for i in range(section_count):
        at = HEADER_SIZE + i * DIRECTORY_ENTRY_SIZE
        kind, sflags, off, ssize, crc, sres = _DIR_ENTRY.unpack_from(mv, at)
        name = SECTION_NAMES.get(kind)
        if name is None:
            _fail("directory", at, f"entry {i}: unknown section kind {kind}")
        if name in sections:
            _fail("directory", at, f"entry {i}: section {name} appears twice")
        if sflags:
            _fail("directory", at + 4, f"section {name}: flags 0x{sflags:08X} must be zero")
        if sres:
            _fail("directory", at + 28, f"section {name}: reserved field must be zero")
        if off % ALIGNMENT:
            _fail("directory", at + 8, f"section {name}: offset {off} is not a multiple of {ALIGNMENT}")
        if off < dir_end:
            _fail("directory", at + 8, f"section {name}: offset {off} lies inside the header or "
                                       f"directory (which end at {dir_end})")
        if off > size or ssize > size - off:
            _fail("directory", at + 16, f"section {name}: range [{off}, {off + ssize}) runs past "
                                        f"the end of the file ({size} bytes)")
        sections[name] = (off, ssize, crc)
    ordered = sorted(((o, s, n) for n, (o, s, _) in sections.items()), key=lambda x: (x[0], x[1]))
    for (o1, s1, n1), (o2, s2, n2) in zip(ordered, ordered[1:]):
        if s1 and s2 and o1 + s1 > o2:
            entry = list(sections).index(n2)
            _fail("directory", HEADER_SIZE + entry * DIRECTORY_ENTRY_SIZE + 8,
                  f"sections {n1} [{o1}, {o1 + s1}) and {n2} [{o2}, {o2 + s2}) overlap")

    if check_crc:
        for name in ("META", "GRAPH", "TENSORS", "PAYLOAD"):
            off, ssize, crc = sections[name]
            got = crc32c(arr[off:off + ssize])
            if got != crc:
                _fail(name, off, f"section CRC32C mismatch (stored 0x{crc:08X}, computed "
                                 f"0x{got:08X}): corrupt data")

    def cursor(name: str) -> _Cursor:
        off, ssize, _ = sections[name]
        return _Cursor(mv, off, off + ssize, name)

    c = cursor("META")
    metadata = _parse_meta(c)
    if c.left():
        c.fail(f"{c.left()} trailing bytes after the last metadata entry")
    c = cursor("GRAPH")
    weight_refs: List[Tuple[int, str, int, int]] = []
    graph = _parse_graph(c, weight_refs)
    if c.left():
        c.fail(f"{c.left()} trailing bytes after the last node")
    c = cursor("TENSORS")
    stream_refs: List[tuple] = []
    tensors = _parse_tensors(c, stream_refs, minor)
    if c.left():
        c.fail(f"{c.left()} trailing bytes after the last tensor")

    # Streams must lie inside the payload.
    payload_off, payload_size, _ = sections["PAYLOAD"]
    for sat, i, name, k, role, off, nbytes, st in stream_refs:
        if off > payload_size or nbytes > payload_size - off:
            _fail("PAYLOAD", payload_off + min(off, payload_size),
                  f"tensor {i} ({name!r}) stream {k} ({role}): bytes [{off}, {off + nbytes}) "
                  f"run past the PAYLOAD section ({payload_size} bytes); stream entry at "
                  f"TENSORS offset {sat}")
        if not payload_probe:
            st.data = arr[payload_off + off:payload_off + off + nbytes]
    # Content rules of the streams (FORMAT.md 1.1), before anything uses them.
    if not payload_probe:
        k = 0
        for i, t in enumerate(tensors):
            abs_offsets = [payload_off + ref[5] for ref in stream_refs[k:k + len(t.streams)]]
            k += len(t.streams)
            _check_payload(t, i, abs_offsets, minor)
    # Weight references of the nodes.
    for wat, where, k, w in weight_refs:
        if w >= len(tensors):
            _fail("GRAPH", wat, f"{where}: weight {k}: tensor {w} out of range "
                                f"(tensor_count {len(tensors)})")
    return DsqFile(metadata=metadata, graph=graph, tensors=tensors)


def from_bytes(buf) -> DsqFile:
    """Parse and validate a .dsq file held in memory (bytes, bytearray, memoryview or a
    uint8 numpy array). Stream data are uint8 views into `buf`. Raises FormatError."""
    try:
        return _parse(buf)
    except FormatError:
        raise
    except (struct.error, IndexError, KeyError, ValueError, OverflowError, MemoryError,
            UnicodeDecodeError) as e:  # a safety net: bad bytes only ever give FormatError
        raise FormatError(f"file at offset -1: malformed file ({type(e).__name__}: {e})",
                          "file", -1) from e


def read(path, mmap: bool = True) -> DsqFile:
    """Read and validate a .dsq file. With mmap=True the stream data are read-only views
    of a memory map of the file (the map lives as long as any of them)."""
    size = os.path.getsize(path)
    if size == 0:
        _fail("header", 0, "file is 0 bytes, shorter than the 64-byte header")
    if mmap:
        arr = np.memmap(path, dtype=np.uint8, mode="r")
    else:
        arr = np.fromfile(path, dtype=np.uint8)
    return from_bytes(arr)
