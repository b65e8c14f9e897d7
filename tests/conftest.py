"""Shared helpers of the engine test suites (test_kernels, test_ops, test_engine_api,
test_format_cpp): one-op graph builders, the engine's activation fake-quantization in
numpy, and the CRC/directory surgery used to make structurally bad but CRC-valid files."""
from __future__ import annotations

import os
import struct
from typing import Dict, List, Optional, Sequence, Tuple

# Layers smaller than this many MACs run on one thread (csrc/ops/conv.cc); the test
# models are tiny, so 0 keeps every threaded path under test. Read once, at first use.
os.environ.setdefault("DSQ_MIN_PARALLEL_MACS", "0")

import numpy as np
import pytest

import deepsqueeze
from deepsqueeze import _core
from deepsqueeze import format as F
from deepsqueeze.builder import GraphBuilder
from deepsqueeze.encode import decode_tensor

SECTIONS = ("META", "GRAPH", "TENSORS", "PAYLOAD")
HEADER_SIZE = 64
DIR_ENTRY = 32


# ---------------------------------------------------------------------------------------
# graph building
# ---------------------------------------------------------------------------------------


def one_op(op: str, inputs: Sequence[Tuple[str, Sequence[int]]], weights: Sequence = (),
           attrs: Optional[dict] = None, metadata: Optional[dict] = None):
    """A graph with one node `op` reading every graph input and one output 'y'.

    weights: entries None (absent) or (array, values) or (array, values, group_size).
    Returns (file bytes, DsqFile, decoded weights as float32 arrays (None when absent)).
    """
    b = GraphBuilder()
    ins = [b.add_input(name, dims) for name, dims in inputs]
    widx: List[Optional[int]] = []
    for k, w in enumerate(weights):
        if w is None:
            widx.append(None)
            continue
        arr, values = w[0], w[1]
        gs = w[2] if len(w) > 2 else 64
        widx.append(b.add_weight(f"w{k}", np.asarray(arr, dtype=np.float32), values=values, group_size=gs))
    y = b.add_node(op, ins, weights=widx, attrs=attrs or {}, name="node0")
    b.mark_output(y, "y")
    f = b.build(metadata or {"dsq.producer": "tests"})
    data = F.to_bytes(f)
    decoded = [None if i is None else decode_tensor(f.tensors[i]) for i in widx]
    return data, f, decoded


def load(data, threads=1, **kw):
    return deepsqueeze.load(data, threads=threads, **kw)


# ---------------------------------------------------------------------------------------
# activation quantization exactly as the engine does it (gemm_qu8.h)
# ---------------------------------------------------------------------------------------


def quant_params(x: np.ndarray) -> Tuple[float, int]:
    """Dynamic per-tensor parameters: choose_params over [min(x.min(), 0), max(x.max(), 0)]."""
    lo = min(float(np.min(x)), 0.0)
    hi = max(float(np.max(x)), 0.0)
    scale, zero = _core.choose_quant_params(lo, hi)
    return float(scale), int(zero)


def choose_params_np(lo: float, hi: float) -> Tuple[np.float32, int]:
    """numpy model of gemm_qu8::choose_params (documented in pack.cc / FORMAT input_quant)."""
    lo = np.float32(min(np.float32(lo), np.float32(0)))
    hi = np.float32(max(np.float32(hi), np.float32(0)))
    scale = np.float32((np.float64(hi) - np.float64(lo)) / 255.0)
    if not (scale > 0) or not np.isfinite(scale):
        return np.float32(1.0), 0
    zero = np.rint(np.float32(-lo) / scale)
    return scale, int(np.clip(zero, 0, 255))


def quantize_np(x: np.ndarray, scale: float, zero: int) -> np.ndarray:
    """q = clamp(rint(x / scale) + zero, 0, 255) with the quotient in float32 (IEEE),
    half to even, NaN -> 0."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        v = np.rint(x / np.float32(scale)) + np.float32(zero)
    v = np.where(np.isnan(v), 0, v)
    return np.clip(v, 0, 255).astype(np.uint8)


def fake_quant(x: np.ndarray, params: Optional[Tuple[float, int]] = None) -> np.ndarray:
    """x' = (q - zero) * scale, q the engine's u8 activation (dynamic unless params given)."""
    scale, zero = quant_params(x) if params is None else params
    q = quantize_np(x, scale, zero).astype(np.float64)
    return ((q - zero) * np.float64(np.float32(scale))).astype(np.float32)


# ---------------------------------------------------------------------------------------
# file surgery
# ---------------------------------------------------------------------------------------


def directory(b) -> Dict[str, Tuple[int, int, int]]:
    """{section name: (entry index, offset, size)} from a file's section directory."""
    out = {}
    for i in range(4):
        kind, _, off, size, _, _ = struct.unpack_from("<IIQQII", b, HEADER_SIZE + DIR_ENTRY * i)
        out[F.SECTION_NAMES.get(kind, f"kind{kind}")] = (i, off, size)
    return out


def fix_section_crcs(b) -> bytearray:
    """Recompute the CRC of every section whose range lies inside the file."""
    b = bytearray(b)
    for name, (i, off, size) in directory(b).items():
        if off + size <= len(b):
            at = HEADER_SIZE + DIR_ENTRY * i + 24
            b[at:at + 4] = struct.pack("<I", F.crc32c(bytes(b[off:off + size])))
    return b


def fix_directory_crc(b) -> bytearray:
    b = bytearray(b)
    count = struct.unpack_from("<I", b, 12)[0]
    end = min(len(b), HEADER_SIZE + DIR_ENTRY * count)
    b[24:28] = struct.pack("<I", F.crc32c(bytes(b[HEADER_SIZE:end])))
    return b


def fix_header_crc(b) -> bytearray:
    b = bytearray(b)
    b[28:32] = b"\0\0\0\0"
    b[28:32] = struct.pack("<I", F.crc32c(bytes(b[:HEADER_SIZE])))
    return b


def fix_crcs(b) -> bytes:
    """Recompute section CRCs, the directory CRC and the header CRC (in that order)."""
    return bytes(fix_header_crc(fix_directory_crc(fix_section_crcs(b))))


def set_file_size(b) -> bytearray:
    b = bytearray(b)
    b[16:24] = struct.pack("<Q", len(b))
    return b


def rebuild(b: bytes, name: str, content: bytes) -> bytes:
    """The file with one section's content replaced; sections re-laid out canonically
    (64-aligned, in order), sizes, offsets, file_size and every CRC recomputed."""
    d = directory(b)
    parts = {}
    for n in SECTIONS:
        _, off, size = d[n]
        parts[n] = bytes(b[off:off + size])
    parts[name] = bytes(content)
    out = bytearray(b[:HEADER_SIZE + DIR_ENTRY * 4])
    pos = len(out)
    for n in SECTIONS:
        pos = (pos + 63) // 64 * 64
        out += b"\0" * (pos - len(out))
        i = d[n][0]
        struct.pack_into("<QQ", out, HEADER_SIZE + DIR_ENTRY * i + 8, pos, len(parts[n]))
        out += parts[n]
        pos = len(out)
    return fix_crcs(set_file_size(out))


def section_bytes(b: bytes, name: str) -> bytes:
    _, off, size = directory(b)[name]
    return bytes(b[off:off + size])


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def raw_bytes(f) -> bytes:
    """Serialize a DsqFile WITHOUT the writer's validity self-check (all CRCs correct):
    how the tests make structurally invalid files."""
    return b"".join(c if isinstance(c, bytes) else c.tobytes() for c in F._serialize(f, verify=False))
