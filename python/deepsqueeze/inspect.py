"""Per-layer size accounting of a loaded model: what `deepsqueeze inspect` prints.

The engine's `Model.layers()` gives each layer's op, kernel, shapes and weights (name,
encoding, payload bytes). Density and bits per nonzero need the weights themselves:
pass `tensors` (the file's path or bytes, a DsqFile, a list of format.Tensor or a dict
by tensor name); weights are matched by tensor name. Without it these two columns show
"-".

Columns: density = nonzeros / numel of the layer's main weight (its first weight: the
conv / linear weight); bits/nz = bits per nonzero of that weight, values + indices
(every stream: values, scales, codebook, indices, row_ptr, col_idx), shown as "raw->coded"
when Huffman coding changes it ("9.0->6.4") and as one number otherwise; payload = bytes
of all the layer's weights (main weight and bias) in the file; x f32 = their f32 size
over payload.
"""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional

TensorSource = object  # path | bytes | DsqFile | Sequence[Tensor] | Mapping[str, Tensor]


def _fmt_shape(shape) -> str:
    return "x".join(str(d) for d in shape)


def _fmt_bytes(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.2f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n} B"


def _tensor_map(tensors) -> Dict[str, object]:
    """{tensor name: format.Tensor} from any accepted source (see the module doc)."""
    from . import format as fmt

    if tensors is None:
        return {}
    if isinstance(tensors, (str, os.PathLike)):
        tensors = fmt.read(os.fspath(tensors))
    elif isinstance(tensors, (bytes, bytearray, memoryview)):
        tensors = fmt.from_bytes(tensors)
    if isinstance(tensors, fmt.DsqFile):
        tensors = tensors.tensors
    if isinstance(tensors, Mapping):
        return dict(tensors)
    return {t.name: t for t in tensors}


def _weight_stats(tensor) -> dict:
    """nnz, numel and bits per nonzero (raw and as stored) of one format.Tensor."""
    from .encode import bits_per_nonzero

    numel = 1
    for d in tensor.dims:
        numel *= int(d)
    b = bits_per_nonzero(tensor)
    return {"nnz": b["nnz"], "numel": numel, "bits_raw": b["total_before_huffman"],
            "bits": b["total"], "bytes_raw": b["total_before_huffman"] * b["nnz"] / 8.0,
            "bytes": b["total"] * b["nnz"] / 8.0}


def layer_rows(layers: List[dict], tensors: Optional[TensorSource] = None) -> List[dict]:
    """One row per layer: payload bytes of its weights against their f32 size, and, when
    `tensors` is given, the density and bits per nonzero of its main weight."""
    by_name = _tensor_map(tensors)
    rows = []
    for layer in layers:
        weights = layer["weights"]
        params = sum(int(_numel(w["shape"])) for w in weights)
        payload = sum(w["payload_bytes"] for w in weights)
        f32 = sum(w["f32_bytes"] for w in weights)
        encoding = "/".join(dict.fromkeys(_encoding(w) for w in weights)) if weights else "-"
        stats = None
        if weights and weights[0]["name"] in by_name:
            stats = _weight_stats(by_name[weights[0]["name"]])
        rows.append({
            "name": layer["name"], "op": layer["op"],
            "output": _fmt_shape(layer["output_shapes"][0]) if layer["output_shapes"] else "-",
            "encoding": encoding, "params": params, "payload_bytes": payload, "f32_bytes": f32,
            "ratio": (f32 / payload) if payload else None, "kernel": layer["kernel"],
            "macs": layer["cost"]["macs_f32"] + layer["cost"]["macs_int8"] + layer["cost"]["macs_int4"],
            "density": (stats["nnz"] / stats["numel"]) if stats else None,
            "bits_per_nz_raw": stats["bits_raw"] if stats else None,
            "bits_per_nz": stats["bits"] if stats else None,
            "weight_stats": stats,
        })
    return rows


def _encoding(w: dict) -> str:
    """values, prefixed by a sparse layout and suffixed by +huffman (format 1.1)."""
    label = w["values"]
    layout = w.get("layout", "dense")
    if layout and layout != "dense":
        label = f"{layout}:{label}"
    if w.get("entropy", "none") not in ("none", None):
        label += f"+{w['entropy']}"
    return label


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _fmt_bits(raw: Optional[float], coded: Optional[float]) -> str:
    if raw is None or coded is None or raw != raw:  # no stats, or no nonzero (nan)
        return "-"
    if f"{raw:.1f}" == f"{coded:.1f}":
        return f"{coded:.1f}"
    return f"{raw:.1f}->{coded:.1f}"


def layer_table(layers: List[dict], file_bytes: int = 0, tensors: Optional[TensorSource] = None) -> str:
    """The per-layer table. `tensors` (the file's path, bytes, DsqFile, tensors) enables
    the density and bits/nz columns."""
    rows = layer_rows(layers, tensors)
    header = ["layer", "op", "output", "encoding", "params", "density", "bits/nz", "payload",
              "x f32", "MACs", "kernel"]
    body = []
    for r in rows:
        body.append([
            r["name"], r["op"], r["output"], r["encoding"], f"{r['params']:,}" if r["params"] else "-",
            f"{r['density']:.3f}" if r["density"] is not None else "-",
            _fmt_bits(r["bits_per_nz_raw"], r["bits_per_nz"]),
            _fmt_bytes(r["payload_bytes"]) if r["params"] else "-",
            f"{r['ratio']:.2f}" if r["ratio"] else "-", f"{r['macs']:,}" if r["macs"] else "-", r["kernel"],
        ])
    params = sum(r["params"] for r in rows)
    payload = sum(r["payload_bytes"] for r in rows)
    f32 = sum(r["f32_bytes"] for r in rows)
    macs = sum(r["macs"] for r in rows)
    stats = [r["weight_stats"] for r in rows if r["weight_stats"]]
    nnz = sum(s["nnz"] for s in stats)
    numel = sum(s["numel"] for s in stats)
    total_density = f"{nnz / numel:.3f}" if numel else ""
    total_bits = _fmt_bits(8 * sum(s["bytes_raw"] for s in stats) / nnz,
                           8 * sum(s["bytes"] for s in stats) / nnz) if nnz else ""
    body.append(["total", "", "", "", f"{params:,}", total_density, total_bits, _fmt_bytes(payload),
                 f"{f32 / payload:.2f}" if payload else "-", f"{macs:,}", ""])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    for i, row in enumerate(body):
        if i == len(body) - 1:
            lines.append("  ".join("-" * w for w in widths))
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    if file_bytes:
        lines.append(f"file: {file_bytes:,} bytes ({_fmt_bytes(file_bytes)}); weights as f32 would be "
                     f"{f32:,} bytes: {f32 / file_bytes:.2f}x smaller on disk")
    return "\n".join(lines)
