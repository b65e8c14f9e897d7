"""Weight encodings of docs/FORMAT.md, in numpy: layout (dense, csr, csr_relative,
block_csr) x values (f32, f16, int8_channel, int4_group, codebook) x entropy (none,
Huffman per stream).

`encode_tensor` turns a float array into a format.Tensor with the streams the encoding
needs; `decode_tensor` turns any valid Tensor back into float32 with the original dims.

Quantization choices (FORMAT.md leaves them to the encoder):

- The matrix view is FORMAT.md's: rows = dims[0], cols = numel / rows, and a rank-1
  tensor is one row (rows = 1, cols = dims[0]).
- int8_channel: per row r, scale[r] = max|w[r]| / 127 rounded to f32,
  q = clip(rint(w / scale), -127, 127). A row whose max |w| is 0 (or so small that
  max/127 underflows to 0 in f32) gets scale 1.0, so every stored scale is positive and
  finite; its q are 0 (or rint of a subnormal value, i.e. 0). With int8_scale="tensor"
  every row takes the tensor's scale, max|w| / 127: weights shared among 2^b values
  (k-means) then keep at most 2^b distinct codes, which Huffman codes in about b bits.
- int4_group: per (row, group of group_size consecutive columns; the last group of a
  row may be partial) scale = max|w| / 7 rounded to f32, q = clip(rint(w / scale), -7, 7)
  (the code -8 is never produced, so the grid is symmetric); all-zero groups get scale 1.0.
- The division uses the stored f32 scale (in float64), so |w - scale * q| <= scale / 2
  holds for the scale that is actually in the file.
- Quantized encodings reject non-finite weights (ValueError); f32/f16 store anything
  (f16 overflows to inf as numpy does).
- codebook: no rounding at all. The table is exactly the distinct f32 values (compared
  bit for bit) that the tensor stores, sorted by bit pattern and padded with 0.0 to 2^b
  entries; one table per tensor or, with codebook_per_row, one per row.

Sparse layouts add no rounding: the values are computed as for dense (scales from the
whole row), and an element is stored when its stored value is nonzero (f32/f16: the
value in that precision; int8/int4: q; codebook: the f32 value). -0.0 counts as zero.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from .format import (LAYOUTS, VALUES, Stream, Tensor, block_grid, elem_nbytes, expected_streams,
                     huffman_alphabet, pack_bits, relative_columns, stream_symbols,
                     tensor_matrix_shape, unpack_bits, HUFFMAN_ELEMS, MAX_HUFFMAN_BITS)

__all__ = ["encode_tensor", "decode_tensor", "payload_bytes", "check_group_size",
           "bits_per_nonzero", "pack_int4", "unpack_int4"]


def check_group_size(group_size) -> int:
    gs = int(group_size)
    if gs != group_size or gs < 8 or gs > 65536 or gs & (gs - 1):
        raise ValueError(f"group_size must be a power of two in 8..65536, got {group_size!r}")
    return gs


def _bytes_of(a: np.ndarray, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.dtype(dtype)).reshape(-1).view(np.uint8)


def _matrix(a: np.ndarray) -> Tuple[np.ndarray, int, int]:
    rows, cols = tensor_matrix_shape(a.shape)  # a rank-1 tensor is one row
    return a.reshape(rows, cols), rows, cols


def _quantize(w: np.ndarray, amax: np.ndarray, qmax: int) -> Tuple[np.ndarray, np.ndarray]:
    """Symmetric quantization of w (float64) with one scale per entry of amax
    (broadcast against w): returns (q as int8, scale as float32)."""
    scale = (amax / qmax).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(w / scale.astype(np.float64)), -qmax, qmax).astype(np.int8)
    return q, scale


# ---------------------------------------------------------------------------------------
# layouts: which matrix positions are stored, in file order
# ---------------------------------------------------------------------------------------


class _Layout:
    """The stored positions of a layout: for each stored slot its row and column and
    whether it is real (fillers and block positions outside the matrix are not)."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, real: np.ndarray, streams):
        self.rows = rows
        self.cols = cols
        self.real = real
        self.streams = streams  # the layout's own streams (row_ptr, col_idx)


def _row_ptr_stream(row_ptr: np.ndarray) -> Stream:
    """u16 when the entry count fits (format 1.2), else u32."""
    if int(row_ptr[-1]) <= 0xFFFF:
        return Stream("row_ptr", "u16", row_ptr.size, _bytes_of(row_ptr, "<u2"))
    return Stream("row_ptr", "u32", row_ptr.size, _bytes_of(row_ptr, "<u4"))


def row_ptr_of(s: Stream) -> np.ndarray:
    """The row_ptr stream as int64 (u16 or u32)."""
    return np.frombuffer(_raw(s).tobytes(), dtype="<u2" if s.elem_type == "u16" else "<u4").astype(np.int64)


def _csr_layout(nz: np.ndarray) -> _Layout:
    rows, cols = nz.shape
    r, c = np.nonzero(nz)
    n = int(r.size)
    if n >= 1 << 32:
        raise ValueError("csr holds at most 2^32 - 1 nonzeros (row_ptr is u32)")
    row_ptr = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=rows), out=row_ptr[1:])
    et = "u16" if cols <= 65536 else "u32"
    streams = [_row_ptr_stream(row_ptr),
               Stream("col_idx", et, n, _bytes_of(c, "<u2" if et == "u16" else "<u4"))]
    return _Layout(r, c, np.ones(n, dtype=bool), streams)


def _relative_layout(nz: np.ndarray, bits: int) -> _Layout:
    """EIE-style relative indices: gap g = zeros skipped before a value entry; a gap of
    2^b - 1 is a filler that advances the column by 2^b - 1 without a value."""
    rows, cols = nz.shape
    r, c = np.nonzero(nz)
    filler_gap = (1 << bits) - 1
    prev = np.full(r.size, -1, dtype=np.int64)
    if r.size > 1:
        same = r[1:] == r[:-1]
        prev[1:][same] = c[:-1][same]
    gap = c.astype(np.int64) - prev - 1
    nfill = gap // filler_gap  # fillers before each value entry
    last_gap = gap - nfill * filler_gap
    per_entry = nfill + 1
    total = int(per_entry.sum())
    if total >= 1 << 32:
        raise ValueError("csr_relative holds at most 2^32 - 1 entries (row_ptr is u32)")
    # Entry e of value k: fillers first, then the value entry.
    starts = np.concatenate([[0], np.cumsum(per_entry)[:-1]]).astype(np.int64)
    gaps = np.full(total, filler_gap, dtype=np.int64)
    value_pos = starts + nfill
    gaps[value_pos] = last_gap
    real = np.zeros(total, dtype=bool)
    real[value_pos] = True
    entry_rows = np.repeat(r, per_entry)
    entry_cols = np.zeros(total, dtype=np.int64)
    entry_cols[value_pos] = c
    row_ptr = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(entry_rows, minlength=rows), out=row_ptr[1:])
    streams = [_row_ptr_stream(row_ptr),
               Stream("col_idx", "bits", total, pack_bits(gaps, bits), bits=bits)]
    return _Layout(entry_rows, entry_cols, real, streams)


def _block_layout(nz: np.ndarray, br: int, bc: int) -> _Layout:
    rows, cols = nz.shape
    nbr, nbc = block_grid(rows, cols, br, bc)
    padded = np.zeros((nbr * br, nbc * bc), dtype=bool)
    padded[:rows, :cols] = nz
    any_nz = padded.reshape(nbr, br, nbc, bc).any(axis=(1, 3))
    R, C = np.nonzero(any_nz)
    nb = int(R.size)
    row_ptr = np.zeros(nbr + 1, dtype=np.int64)
    np.cumsum(np.bincount(R, minlength=nbr), out=row_ptr[1:])
    et = "u16" if nbc <= 65536 else "u32"
    streams = [_row_ptr_stream(row_ptr),
               Stream("col_idx", et, nb, _bytes_of(C, "<u2" if et == "u16" else "<u4"))]
    ii, jj = np.meshgrid(np.arange(br), np.arange(bc), indexing="ij")
    pr = (R[:, None, None] * br + ii[None]).reshape(-1)
    pc = (C[:, None, None] * bc + jj[None]).reshape(-1)
    real = (pr < rows) & (pc < cols)
    return _Layout(pr, pc, real, streams)


def _dense_layout(rows: int, cols: int) -> _Layout:
    r = np.repeat(np.arange(rows), cols)
    c = np.tile(np.arange(cols), rows)
    return _Layout(r, c, np.ones(rows * cols, dtype=bool), [])


# ---------------------------------------------------------------------------------------
# encoder
# ---------------------------------------------------------------------------------------


def _float_bits(v: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(v, dtype=np.float32).view(np.uint32)


def _codebook(stored: np.ndarray, table_of: np.ndarray, ntables: int, bits: Optional[int],
              name: str) -> Tuple[np.ndarray, np.ndarray, int]:
    """Tables of exactly the distinct values per table (by f32 bit pattern) and the index
    of each stored value. Returns (tables f32 (ntables, 2^b), indices, b)."""
    key = _float_bits(stored).astype(np.uint64) | (table_of.astype(np.uint64) << np.uint64(32))
    uniq, inverse = np.unique(key, return_inverse=True)
    utable = (uniq >> np.uint64(32)).astype(np.int64)
    # Position of each distinct value inside its table.
    first = np.searchsorted(utable, np.arange(ntables))
    pos_in_table = np.arange(uniq.size) - first[utable]
    need = int(np.bincount(utable, minlength=ntables).max()) if uniq.size else 0
    if bits is None:
        bits = max(1, int(np.ceil(np.log2(max(need, 1)))))
        if bits > 8:
            raise ValueError(f"tensor {name!r}: {need} distinct values in a table, more than a "
                             "codebook of 8-bit indices holds (256)")
    else:
        if int(bits) != bits or not 1 <= bits <= 8:
            raise ValueError(f"tensor {name!r}: codebook_bits must be 1..8, got {bits!r}")
        bits = int(bits)
        if need > 1 << bits:
            raise ValueError(f"tensor {name!r}: {need} distinct values in a table, more than "
                             f"2^{bits} = {1 << bits} (codebook_bits {bits}); the codebook is "
                             "exact, it does not round")
    tables = np.zeros((ntables, 1 << bits), dtype=np.uint32)
    tables[utable, pos_in_table] = (uniq & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    indices = pos_in_table[inverse.reshape(-1)] if stored.size else np.zeros(0, dtype=np.int64)
    return tables.view(np.float32), indices, bits


def _huffman_streams(streams, mode) -> None:
    """Huffman-code every eligible stream in place: always (mode True) or where it saves
    bytes (mode "auto")."""
    if mode is False or mode is None:
        return
    if mode not in (True, "auto"):
        raise ValueError(f"huffman must be False, True or 'auto', got {mode!r}")
    from . import huffman
    for k, s in enumerate(streams):
        if s.elem_type not in HUFFMAN_ELEMS or s.count == 0:
            continue
        if s.elem_type == "bits" and s.bits > MAX_HUFFMAN_BITS:
            continue
        symbols = stream_symbols(s)
        coded = np.frombuffer(huffman.encode(symbols, huffman_alphabet(s.elem_type, s.bits)),
                              dtype=np.uint8)
        if mode is True or coded.size < int(np.asarray(s.data).size):
            streams[k] = Stream(s.role, s.elem_type, s.count, coded, entropy="huffman", bits=s.bits)


def encode_tensor(name: str, array, values: str = "f32", group_size: int = 64,
                  layout: str = "dense", index_bits: int = 4, block: Sequence[int] = (1, 4),
                  codebook_bits: Optional[int] = None, codebook_per_row: bool = False,
                  huffman: Union[bool, str] = False, int8_scale: str = "channel") -> Tensor:
    """Encode a float array as a Tensor.

    values: f32 | f16 | int8_channel | int4_group (group_size) | codebook (codebook_bits
    b: the array must hold at most 2^b distinct stored values per table; None picks the
    smallest b; codebook_per_row: one table per row).
    layout: dense | csr | csr_relative (index_bits 2..8 per gap) | block_csr (block =
    (block_rows, block_cols), each 1..16, not 1x1).
    huffman: False, True (Huffman-code every eligible stream: indices, relative col_idx,
    i8/i4 values) or "auto" (only the streams where it saves bytes).
    int8_scale: "channel" (one scale per row) or "tensor" (every row the same scale), for
    int8_channel values.
    """
    if int8_scale not in ("channel", "tensor"):
        raise ValueError(f"tensor {name!r}: int8_scale must be 'channel' or 'tensor', got {int8_scale!r}")
    if values not in VALUES:
        raise ValueError(f"unknown values encoding {values!r} (known: {', '.join(VALUES)})")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    a = np.asarray(array)
    if a.dtype.kind not in "fiub":
        raise ValueError(f"tensor {name!r}: cannot encode an array of dtype {a.dtype}")
    if not 1 <= a.ndim <= 8:
        raise ValueError(f"tensor {name!r}: rank {a.ndim} not in 1..8")
    if a.size == 0:
        raise ValueError(f"tensor {name!r}: dims {a.shape} must all be >= 1")
    dims = tuple(int(d) for d in a.shape)
    rows, cols = tensor_matrix_shape(dims)

    gs = 0
    scale_streams = []
    if values in ("f32", "codebook"):
        elem = np.ascontiguousarray(a, dtype=np.float32).reshape(rows, cols)
    elif values == "f16":
        elem = np.ascontiguousarray(a, dtype=np.float16).reshape(rows, cols)
    else:
        w32 = a.astype(np.float32)  # what f32 storage would hold
        if not np.all(np.isfinite(w32)):
            raise ValueError(f"tensor {name!r}: {values} needs finite weights")
        m = w32.astype(np.float64).reshape(rows, cols)
        if values == "int8_channel":
            amax = np.abs(m).max(axis=1, keepdims=True)
            if int8_scale == "tensor":
                amax = np.full_like(amax, amax.max())
            elem, scale = _quantize(m, amax, 127)
            if int8_scale == "tensor":
                scale = scale.reshape(-1)[:1]  # one scale for every row (format 1.2)
            scale_streams = [Stream("scales", "f32", scale.size, _bytes_of(scale, "<f4"))]
        else:
            gs = check_group_size(group_size)
            ngroups = -(-cols // gs)
            padded = np.zeros((rows, ngroups * gs), dtype=np.float64)
            padded[:, :cols] = m
            g = padded.reshape(rows, ngroups, gs)
            amax = np.abs(g).max(axis=2, keepdims=True)
            q, scale = _quantize(g, amax, 7)
            elem = q.reshape(rows, ngroups * gs)[:, :cols]
            scale_streams = [Stream("scales", "f32", rows * ngroups, _bytes_of(scale, "<f4"))]

    br = bc = 0
    if layout == "dense":
        lay = _dense_layout(rows, cols)
    else:
        nz = elem != 0
        if layout == "csr":
            lay = _csr_layout(nz)
        elif layout == "csr_relative":
            if int(index_bits) != index_bits or not 2 <= index_bits <= 8:
                raise ValueError(f"tensor {name!r}: index_bits must be 2..8, got {index_bits!r}")
            lay = _relative_layout(nz, int(index_bits))
        else:
            try:
                br, bc = (int(x) for x in block)
            except (TypeError, ValueError):
                raise ValueError(f"tensor {name!r}: block must be (block_rows, block_cols), got {block!r}") from None
            if not (1 <= br <= 16 and 1 <= bc <= 16) or (br, bc) == (1, 1):
                raise ValueError(f"tensor {name!r}: block {block!r}: each side 1..16 and not 1x1 (use csr)")
            lay = _block_layout(nz, br, bc)

    # Values of the stored slots (zero where the slot is not real).
    real_r = np.where(lay.real, lay.rows, 0)
    real_c = np.where(lay.real, lay.cols, 0)
    stored = elem[real_r, real_c]
    stored = np.where(lay.real, stored, np.zeros((), dtype=stored.dtype))
    n = int(stored.size)

    cb_bits = 0
    if values == "f32":
        vstreams = [Stream("values", "f32", n, _bytes_of(stored, "<f4"))]
    elif values == "f16":
        vstreams = [Stream("values", "f16", n, _bytes_of(stored, "<f2"))]
    elif values == "int8_channel":
        vstreams = [Stream("values", "i8", n, _bytes_of(stored, "i1"))] + scale_streams
    elif values == "int4_group":
        vstreams = [Stream("values", "i4", n, pack_int4(stored))] + scale_streams
    else:
        ntables = rows if codebook_per_row else 1
        table_of = lay.rows[lay.real] if codebook_per_row else np.zeros(int(lay.real.sum()), dtype=np.int64)
        tables, idx_real, cb_bits = _codebook(stored[lay.real], table_of, ntables, codebook_bits, name)
        idx = np.zeros(n, dtype=np.int64)
        idx[lay.real] = idx_real  # fillers and outside-matrix slots: index 0
        vstreams = [Stream("codebook", "f32", tables.size, _bytes_of(tables, "<f4")),
                    Stream("indices", "bits", n, pack_bits(idx, cb_bits), bits=cb_bits)]

    streams = lay.streams + vstreams
    _huffman_streams(streams, huffman)
    entropy = "huffman" if any(s.entropy == "huffman" for s in streams) else "none"
    return Tensor(name=name, dims=dims, values=values, layout=layout, entropy=entropy,
                  group_size=gs, codebook_bits=cb_bits, block_rows=br, block_cols=bc,
                  streams=streams)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Pack int values in [-8, 7] two per byte: element i in byte i // 2, the low nibble
    when i is even, two's complement."""
    q = np.asarray(q, dtype=np.int8).reshape(-1)
    if q.size % 2:
        q = np.concatenate([q, np.zeros(1, dtype=np.int8)])
    u = q.view(np.uint8) & np.uint8(0x0F)
    return (u[0::2] | (u[1::2] << np.uint8(4))).astype(np.uint8)


def unpack_int4(data: np.ndarray, count: int) -> np.ndarray:
    """The inverse of pack_int4: `count` int8 values in [-8, 7]."""
    b = np.asarray(data, dtype=np.uint8).reshape(-1)
    out = np.empty(b.size * 2, dtype=np.int8)
    out[0::2] = ((b & 0x0F).astype(np.int8) ^ 8) - 8
    out[1::2] = ((b >> 4).astype(np.int8) ^ 8) - 8
    return out[:count]


# ---------------------------------------------------------------------------------------
# decoder
# ---------------------------------------------------------------------------------------


def _raw(s: Stream) -> np.ndarray:
    data = np.asarray(s.data).reshape(-1)
    if data.dtype != np.uint8:
        data = np.ascontiguousarray(data).view(np.uint8)
    if s.entropy == "none" and data.size != elem_nbytes(s.elem_type, int(s.count), s.bits):
        raise ValueError(f"{s.role} stream has {data.size} bytes, expected "
                         f"{elem_nbytes(s.elem_type, int(s.count), s.bits)}")
    return data


def _floats(s: Stream) -> np.ndarray:
    dt = "<f4" if s.elem_type == "f32" else "<f2"
    return np.frombuffer(_raw(s).tobytes(), dtype=dt).astype(np.float32)


def _ints(s: Stream) -> np.ndarray:
    if s.elem_type in ("u16", "u32"):
        return np.frombuffer(_raw(s).tobytes(), dtype="<u2" if s.elem_type == "u16" else "<u4").astype(np.int64)
    return stream_symbols(s).astype(np.int64)


def _find(t: Tensor, role: str) -> Stream:
    for s in t.streams:
        if s.role == role:
            return s
    raise ValueError(f"tensor {t.name!r}: no {role} stream")


def decode_stored(t: Tensor):
    """The stored slots of a tensor: (rows, cols, real mask, values as float32), one
    entry per stored value in file order; fillers and block positions outside the
    matrix have real = False."""
    rows, cols = tensor_matrix_shape(t.dims)
    if t.layout == "dense":
        lay_r = np.repeat(np.arange(rows), cols)
        lay_c = np.tile(np.arange(cols), rows)
        real = np.ones(rows * cols, dtype=bool)
    else:
        row_ptr = row_ptr_of(_find(t, "row_ptr"))
        ci = _find(t, "col_idx")
        if t.layout == "csr":
            lay_c = _ints(ci)
            lay_r = np.repeat(np.arange(rows), np.diff(row_ptr))
            real = np.ones(lay_c.size, dtype=bool)
        elif t.layout == "csr_relative":
            gaps = stream_symbols(ci)
            lay_c, filler = relative_columns(gaps, row_ptr, ci.bits)
            lay_r = np.repeat(np.arange(rows), np.diff(row_ptr))
            real = ~filler
        elif t.layout == "block_csr":
            br, bc = t.block_rows, t.block_cols
            nbr, _ = block_grid(rows, cols, br, bc)
            C = _ints(ci)
            R = np.repeat(np.arange(nbr), np.diff(row_ptr))
            ii, jj = np.meshgrid(np.arange(br), np.arange(bc), indexing="ij")
            lay_r = (R[:, None, None] * br + ii[None]).reshape(-1)
            lay_c = (C[:, None, None] * bc + jj[None]).reshape(-1)
            real = (lay_r < rows) & (lay_c < cols)
        else:
            raise ValueError(f"tensor {t.name!r}: unknown layout {t.layout!r}")
    n = int(lay_r.size)
    rr = np.where(real, lay_r, 0)
    cc = np.where(real, lay_c, 0)
    if t.values in ("f32", "f16"):
        v = _floats(_find(t, "values"))
    elif t.values == "int8_channel":
        q = stream_symbols(_find(t, "values")).view(np.int8).astype(np.float32)
        scales = _floats(_find(t, "scales"))
        v = q * (scales[rr] if scales.size > 1 else scales[0])
    elif t.values == "int4_group":
        gs = check_group_size(t.group_size)
        s = _find(t, "values")
        nib = stream_symbols(s).astype(np.int8)
        q = ((nib ^ 8) - 8).astype(np.float32)
        scales = _floats(_find(t, "scales")).reshape(rows, -(-cols // gs))
        v = q * scales[rr, cc // gs]
    elif t.values == "codebook":
        table = _floats(_find(t, "codebook")).reshape(-1, 1 << t.codebook_bits)
        idx = stream_symbols(_find(t, "indices")).astype(np.int64)
        v = table[rr if table.shape[0] > 1 else np.zeros_like(rr), idx]
    else:
        raise ValueError(f"tensor {t.name!r}: unknown values encoding {t.values!r}")
    if v.size != n:
        raise ValueError(f"tensor {t.name!r}: {v.size} values for {n} stored slots")
    return lay_r, lay_c, real, v.astype(np.float32, copy=False)


def decode_tensor(t: Tensor) -> np.ndarray:
    """Decode any Tensor (every layout, values encoding and entropy coding) to a dense
    float32 array of its dims."""
    dims = tuple(int(d) for d in t.dims)
    rows, cols = tensor_matrix_shape(dims)
    if t.layout == "dense" and t.entropy == "none" and t.values != "codebook":
        # The 1.0 path (checks each stream's type and count).
        want = {role: (et, count) for role, et, count in expected_streams(t.values, dims, t.group_size or 1)}
        for role, (et, count) in want.items():
            s = _find(t, role)
            single_scale = role == "scales" and t.values == "int8_channel" and int(s.count) == 1  # 1.2
            if s.elem_type != et or (int(s.count) != count and not single_scale):
                raise ValueError(f"tensor {t.name!r}: {role} stream is {s.elem_type} x {s.count}, "
                                 f"expected {et} x {count}")
    lay_r, lay_c, real, v = decode_stored(t)
    out = np.zeros((rows, cols), dtype=np.float32)
    out[lay_r[real], lay_c[real]] = v[real]
    return out.reshape(dims)


def payload_bytes(t: Tensor) -> int:
    """Bytes the tensor's streams take in the payload (sum of stream nbytes, no padding)."""
    return sum(int(np.asarray(s.data).nbytes) for s in t.streams)


_INDEX_ROLES = ("row_ptr", "col_idx")


def bits_per_nonzero(t: Tensor) -> Dict[str, Union[int, float, bool]]:
    """Storage cost per nonzero weight (nonzero in the decoded matrix), as stored (after
    Huffman): values_bits (values, scales, codebook, indices streams), index_bits
    (row_ptr, col_idx), total; plus nnz, the bytes of each part, and the raw (before
    Huffman) total for comparison."""
    dense = decode_tensor(t)
    nnz = int(np.count_nonzero(dense))
    index_bytes = sum(int(np.asarray(s.data).nbytes) for s in t.streams if s.role in _INDEX_ROLES)
    value_bytes = sum(int(np.asarray(s.data).nbytes) for s in t.streams if s.role not in _INDEX_ROLES)
    raw_bytes = sum(elem_nbytes(s.elem_type, int(s.count), s.bits) for s in t.streams)
    per = (8.0 / nnz) if nnz else float("nan")
    return {
        "nnz": nnz,
        "values_bits": value_bytes * per,
        "index_bits": index_bytes * per,
        "total": (value_bytes + index_bytes) * per,
        "values_bytes": value_bytes,
        "index_bytes": index_bytes,
        "huffman": t.entropy == "huffman",
        "total_before_huffman": raw_bytes * per,
    }
