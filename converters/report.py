"""What a compressed model costs on disk, layer by layer, measured on the real file.

`size_report` exports the model with the real exporter (export_to_bytes), loads the
bytes in the engine for its per-layer view (Model.layers, as `deepsqueeze inspect`),
and reads every weight back with the format reader, so each number is a count of the
bytes the file holds, not an estimate. Bits are given per weight (every element of the
layer's main weight, zeros included) and per nonzero, before and after Huffman coding
("raw" = the streams at their fixed widths; "coded" = as stored).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import torch.nn as nn

import deepsqueeze
from deepsqueeze import format as dsqformat
from deepsqueeze.encode import bits_per_nonzero, decode_tensor
from deepsqueeze.inspect import layer_rows

from .export import export_to_bytes

__all__ = ["size_report", "format_size_report"]


def _layer_row(row: dict, layer: dict, tensors: Dict[str, Any]) -> dict:
    main = tensors[layer["weights"][0]["name"]]
    dense = decode_tensor(main)
    numel = int(dense.size)
    nz = dense[dense != 0]
    cost = bits_per_nonzero(main)
    nnz = cost["nnz"]
    coded = int(cost["values_bytes"] + cost["index_bytes"])
    raw = cost["total_before_huffman"] * nnz / 8.0 if nnz else float(
        sum(dsqformat.elem_nbytes(s.elem_type, int(s.count), s.bits) for s in main.streams))
    return {
        "name": row["name"], "op": row["op"], "encoding": row["encoding"],
        "params": row["params"],                 # every weight of the layer, bias included
        "weight_numel": numel,                   # the main (conv / linear) weight
        "nonzeros": nnz, "density": nnz / numel,
        "distinct_nonzero": int(np.unique(nz).size),
        "weight_bytes_raw": raw, "weight_bytes": coded,
        "bits_per_weight_raw": 8.0 * raw / numel, "bits_per_weight": 8.0 * coded / numel,
        "bits_per_nonzero_raw": 8.0 * raw / nnz if nnz else None,
        "bits_per_nonzero": 8.0 * coded / nnz if nnz else None,
        "huffman": bool(cost["huffman"]),
        "bytes": row["payload_bytes"],           # payload of all the layer's weights
        "f32_bytes": row["f32_bytes"],
        "ratio": row["f32_bytes"] / row["payload_bytes"] if row["payload_bytes"] else None,
        "total": False,
    }


def size_report(model: nn.Module, example_inputs, weights="auto", compare_fp32: bool = True,
                **export_kwargs) -> List[Dict[str, Any]]:
    """Per-layer size of `model` exported with `weights` (any export WeightSpec).

    Returns one dict per layer with weights: name, op, encoding, params (bias included),
    weight_numel, nonzeros, density, distinct_nonzero (distinct nonzero values stored),
    weight_bytes_raw / weight_bytes (main weight before / after Huffman),
    bits_per_weight_raw / bits_per_weight, bits_per_nonzero_raw / bits_per_nonzero,
    huffman, bytes (payload of every weight of the layer), f32_bytes, ratio (f32 / bytes);
    then a last row with "total": True summing them, plus file_bytes (the whole .dsq
    file) and, with compare_fp32, fp32_file_bytes (the same model exported with
    weights="fp32") and file_ratio (fp32 file / this file).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"size_report: model is a {type(model).__name__}, expected a torch.nn.Module")
    data = export_to_bytes(model, example_inputs, weights=weights, **export_kwargs)
    dsq = dsqformat.from_bytes(data)
    tensors = {t.name: t for t in dsq.tensors}
    layers = deepsqueeze.load(data, threads=1).layers()
    rows = [_layer_row(row, layer, tensors)
            for row, layer in zip(layer_rows(layers, dsq), layers) if layer["weights"]]

    def total(key):
        return sum(r[key] for r in rows)

    numel, nnz = total("weight_numel"), total("nonzeros")
    raw, coded = total("weight_bytes_raw"), total("weight_bytes")
    payload, f32 = total("bytes"), total("f32_bytes")
    summary: Dict[str, Any] = {
        "name": "total", "op": "", "encoding": "", "total": True,
        "params": total("params"), "weight_numel": numel, "nonzeros": nnz,
        "density": nnz / numel if numel else None,
        "distinct_nonzero": None,
        "weight_bytes_raw": raw, "weight_bytes": coded,
        "bits_per_weight_raw": 8.0 * raw / numel if numel else None,
        "bits_per_weight": 8.0 * coded / numel if numel else None,
        "bits_per_nonzero_raw": 8.0 * raw / nnz if nnz else None,
        "bits_per_nonzero": 8.0 * coded / nnz if nnz else None,
        "huffman": any(r["huffman"] for r in rows),
        "bytes": payload, "f32_bytes": f32, "ratio": f32 / payload if payload else None,
        "file_bytes": len(data), "fp32_file_bytes": None, "file_ratio": None,
    }
    if compare_fp32:
        dense = len(export_to_bytes(model, example_inputs, weights="fp32", **export_kwargs))
        summary["fp32_file_bytes"] = dense
        summary["file_ratio"] = dense / len(data)
    return rows + [summary]


def _bits(raw: Optional[float], coded: Optional[float]) -> str:
    if raw is None or coded is None:
        return "-"
    if f"{raw:.2f}" == f"{coded:.2f}":
        return f"{coded:.2f}"
    return f"{raw:.2f}->{coded:.2f}"


def format_size_report(rows: List[Dict[str, Any]]) -> str:
    """The rows of `size_report` as a text table (bits shown "raw->coded" when Huffman
    coding changed them) with a closing line on the whole file."""
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise TypeError("format_size_report: expected the list of dicts size_report returns")
    header = ["layer", "encoding", "params", "nonzeros", "density", "distinct", "bits/weight",
              "bits/nonzero", "bytes", "x f32"]
    body = []
    for r in rows:
        body.append([
            r["name"], r["encoding"], f"{r['params']:,}", f"{r['nonzeros']:,}",
            f"{r['density']:.3f}" if r["density"] is not None else "-",
            str(r["distinct_nonzero"]) if r["distinct_nonzero"] is not None else "",
            _bits(r["bits_per_weight_raw"], r["bits_per_weight"]),
            _bits(r["bits_per_nonzero_raw"], r["bits_per_nonzero"]),
            f"{r['bytes']:,}", f"{r['ratio']:.1f}" if r["ratio"] else "-",
        ])
    widths = [max(len(x) for x in col) for col in zip(header, *body)]

    def line(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(header), rule]
    for r, cells in zip(rows, body):
        if r.get("total"):
            out.append(rule)
        out.append(line(cells))
    tot = next((r for r in rows if r.get("total")), None)
    if tot is not None and tot.get("file_bytes"):
        msg = f"file: {tot['file_bytes']:,} bytes"
        if tot.get("fp32_file_bytes"):
            msg += (f"; fp32 file: {tot['fp32_file_bytes']:,} bytes; "
                    f"{tot['file_ratio']:.1f}x smaller")
        out.append(msg)
    return "\n".join(out)
