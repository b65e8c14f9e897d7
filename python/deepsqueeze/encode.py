"""Weight encodings of docs/FORMAT.md (values: f32, f16, int8_channel, int4_group), in numpy.

`encode_tensor` turns a float array into a format.Tensor with the streams the encoding
needs; `decode_tensor` turns a Tensor back into float32 with the original dims.

Quantization choices (FORMAT.md leaves them to the encoder):

- The matrix view is FORMAT.md's: rows = dims[0], cols = numel / rows, and a rank-1
  tensor is one row (rows = 1, cols = dims[0]).
- int8_channel: per row r, scale[r] = max|w[r]| / 127 rounded to f32,
  q = clip(rint(w / scale), -127, 127). A row whose max |w| is 0 (or so small that
  max/127 underflows to 0 in f32) gets scale 1.0, so every stored scale is positive and
  finite; its q are 0 (or rint of a subnormal value, i.e. 0).
- int4_group: per (row, group of group_size consecutive columns; the last group of a
  row may be partial) scale = max|w| / 7 rounded to f32, q = clip(rint(w / scale), -7, 7)
  (the code -8 is never produced, so the grid is symmetric); all-zero groups get scale 1.0.
- The division uses the stored f32 scale (in float64), so |w - scale * q| <= scale / 2
  holds for the scale that is actually in the file.
- Quantized encodings reject non-finite weights (ValueError); f32/f16 store anything
  (f16 overflows to inf as numpy does).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from .format import VALUES, Stream, Tensor, elem_nbytes, expected_streams, tensor_matrix_shape

__all__ = ["encode_tensor", "decode_tensor", "payload_bytes", "check_group_size"]


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


def encode_tensor(name: str, array, values: str = "f32", group_size: int = 64) -> Tensor:
    """Encode a float array as a dense Tensor with the given values encoding."""
    if values not in VALUES:
        raise ValueError(f"unknown values encoding {values!r} (known: {', '.join(VALUES)})")
    a = np.asarray(array)
    if a.dtype.kind not in "fiub":
        raise ValueError(f"tensor {name!r}: cannot encode an array of dtype {a.dtype}")
    if not 1 <= a.ndim <= 8:
        raise ValueError(f"tensor {name!r}: rank {a.ndim} not in 1..8")
    if a.size == 0:
        raise ValueError(f"tensor {name!r}: dims {a.shape} must all be >= 1")
    dims = tuple(int(d) for d in a.shape)

    if values == "f32":
        streams = [Stream("values", "f32", a.size, _bytes_of(a, "<f4"))]
        return Tensor(name=name, dims=dims, values=values, streams=streams)
    if values == "f16":
        streams = [Stream("values", "f16", a.size, _bytes_of(a, "<f2"))]
        return Tensor(name=name, dims=dims, values=values, streams=streams)

    w32 = a.astype(np.float32)  # what f32 storage would hold
    if not np.all(np.isfinite(w32)):
        raise ValueError(f"tensor {name!r}: {values} needs finite weights")
    m, rows, cols = _matrix(w32.astype(np.float64))

    if values == "int8_channel":
        amax = np.abs(m).max(axis=1, keepdims=True)
        q, scale = _quantize(m, amax, 127)
        streams = [Stream("values", "i8", a.size, _bytes_of(q, "i1")),
                   Stream("scales", "f32", rows, _bytes_of(scale, "<f4"))]
        return Tensor(name=name, dims=dims, values=values, streams=streams)

    # int4_group
    gs = check_group_size(group_size)
    ngroups = -(-cols // gs)
    padded = np.zeros((rows, ngroups * gs), dtype=np.float64)
    padded[:, :cols] = m
    g = padded.reshape(rows, ngroups, gs)
    amax = np.abs(g).max(axis=2, keepdims=True)
    q, scale = _quantize(g, amax, 7)
    q = q.reshape(rows, ngroups * gs)[:, :cols].reshape(-1)
    streams = [Stream("values", "i4", a.size, pack_int4(q)),
               Stream("scales", "f32", rows * ngroups, _bytes_of(scale, "<f4"))]
    return Tensor(name=name, dims=dims, values=values, group_size=gs, streams=streams)


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


def _stream(t: Tensor, role: str, elem_type: str, count: int) -> np.ndarray:
    for s in t.streams:
        if s.role == role:
            if s.elem_type != elem_type or int(s.count) != count:
                raise ValueError(f"tensor {t.name!r}: {role} stream is {s.elem_type} x {s.count}, "
                                 f"expected {elem_type} x {count}")
            data = np.asarray(s.data).reshape(-1)
            if data.dtype != np.uint8:
                data = np.ascontiguousarray(data).view(np.uint8)
            if data.size != elem_nbytes(elem_type, count):
                raise ValueError(f"tensor {t.name!r}: {role} stream has {data.size} bytes, "
                                 f"expected {elem_nbytes(elem_type, count)}")
            return data
    raise ValueError(f"tensor {t.name!r}: no {role} stream")


def decode_tensor(t: Tensor) -> np.ndarray:
    """Decode a dense Tensor to a float32 array of its dims."""
    if t.layout != "dense" or t.entropy != "none":
        raise ValueError(f"tensor {t.name!r}: layout {t.layout!r} / entropy {t.entropy!r} "
                         "not supported")
    dims = tuple(int(d) for d in t.dims)
    want = {role: (et, count) for role, et, count in expected_streams(t.values, dims, t.group_size or 1)}
    rows, cols = tensor_matrix_shape(dims)
    numel = rows * cols
    vet, vcount = want["values"]
    values = _stream(t, "values", vet, vcount)
    if t.values == "f32":
        return np.frombuffer(values.tobytes(), dtype="<f4").astype(np.float32).reshape(dims)
    if t.values == "f16":
        return np.frombuffer(values.tobytes(), dtype="<f2").astype(np.float32).reshape(dims)
    scales = np.frombuffer(_stream(t, "scales", "f32", want["scales"][1]).tobytes(), dtype="<f4")
    if t.values == "int8_channel":
        q = values.view(np.int8).reshape(rows, cols).astype(np.float32)
        return (q * scales.astype(np.float32)[:, None]).reshape(dims)
    if t.values == "int4_group":
        gs = check_group_size(t.group_size)
        ngroups = -(-cols // gs)
        q = unpack_int4(values, numel).reshape(rows, cols).astype(np.float32)
        s = np.repeat(scales.reshape(rows, ngroups), gs, axis=1)[:, :cols]
        return (q * s).reshape(dims)
    raise ValueError(f"tensor {t.name!r}: unknown values encoding {t.values!r}")


def payload_bytes(t: Tensor) -> int:
    """Bytes the tensor's streams take in the payload (sum of stream nbytes, no padding)."""
    return sum(int(np.asarray(s.data).nbytes) for s in t.streams)
