"""Per-layer size accounting of a loaded model: what `deepsqueeze inspect` prints."""
from __future__ import annotations

from typing import List


def _fmt_shape(shape) -> str:
    return "x".join(str(d) for d in shape)


def _fmt_bytes(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.2f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n} B"


def layer_rows(layers: List[dict]) -> List[dict]:
    """One row per layer: payload bytes of its weights against their f32 size."""
    rows = []
    for layer in layers:
        weights = layer["weights"]
        params = sum(int(_numel(w["shape"])) for w in weights)
        payload = sum(w["payload_bytes"] for w in weights)
        f32 = sum(w["f32_bytes"] for w in weights)
        encoding = "/".join(dict.fromkeys(_encoding(w) for w in weights)) if weights else "-"
        rows.append({
            "name": layer["name"], "op": layer["op"],
            "output": _fmt_shape(layer["output_shapes"][0]) if layer["output_shapes"] else "-",
            "encoding": encoding, "params": params, "payload_bytes": payload, "f32_bytes": f32,
            "ratio": (f32 / payload) if payload else None, "kernel": layer["kernel"],
            "macs": layer["cost"]["macs_f32"] + layer["cost"]["macs_int8"] + layer["cost"]["macs_int4"],
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


def layer_table(layers: List[dict], file_bytes: int = 0) -> str:
    rows = layer_rows(layers)
    header = ["layer", "op", "output", "encoding", "params", "payload", "x f32", "MACs", "kernel"]
    body = []
    for r in rows:
        body.append([
            r["name"], r["op"], r["output"], r["encoding"], f"{r['params']:,}" if r["params"] else "-",
            _fmt_bytes(r["payload_bytes"]) if r["params"] else "-",
            f"{r['ratio']:.2f}" if r["ratio"] else "-", f"{r['macs']:,}" if r["macs"] else "-", r["kernel"],
        ])
    params = sum(r["params"] for r in rows)
    payload = sum(r["payload_bytes"] for r in rows)
    f32 = sum(r["f32_bytes"] for r in rows)
    macs = sum(r["macs"] for r in rows)
    body.append(["total", "", "", "", f"{params:,}", _fmt_bytes(payload),
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
