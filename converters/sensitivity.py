"""Choosing per-layer compression ratios (Level 4-lite): a sensitivity scan and a greedy
choice under a size budget.

`scan` measures, one layer at a time with every other layer untouched, the validation
accuracy after magnitude pruning that layer to each sparsity and after quantizing it to
each bit width (k-means weight sharing of its nonzeros via cluster.cluster_tensor, as in
Deep Compression, or, with method="uniform", uniform symmetric per-channel
quantization via quantize.quantize_tensor). The model itself is not changed.

`choose` assumes the accuracy drops of different layers add up (the usual first-order
assumption of sensitivity analysis) and that a layer's drop for (sparsity s, bits b) is
its pruning drop at s plus its quantization drop at b. It then greedily trades accuracy
for bytes (see `estimate_layer_bytes` for the size model). `apply_choice` applies the
result with prune + cluster (or quantize).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .core import LayerSelection, baked_copy, evaluate, record, select_layers
from .prune import PruneConfig, prune
from .quantize import QuantizeConfig, quantize, quantize_tensor

__all__ = ["SensitivityTable", "scan", "choose", "apply_choice", "estimate_layer_bytes",
           "estimate_bytes", "predicted_drop", "INDEX_BITS", "METHODS"]

METHODS = ("kmeans", "uniform")
# Size model: bits per stored relative column index of a sparse layer (the exporter's
# csr_relative tries 4 and 5; Deep Compression used 5 for fc layers, 4 for conv).
INDEX_BITS = 5
_ROW_POINTER_BYTES = 4
_FLOAT_BYTES = 4


@dataclasses.dataclass
class SensitivityTable:
    """Accuracies of a scan. `prune[layer][s]` / `bits[layer][b]`: validation accuracy
    with only that layer pruned to sparsity s / quantized to b bits; `baseline`: the
    untouched model's accuracy; `numel`, `nonzeros`, `rows`: each layer's weight size,
    nonzero count and output channels at scan time."""
    baseline: float
    layers: List[str]
    sparsities: Tuple[float, ...]
    bit_widths: Tuple[int, ...]
    prune: Dict[str, Dict[float, float]]
    bits: Dict[str, Dict[int, float]]
    numel: Dict[str, int]
    nonzeros: Dict[str, int]
    rows: Dict[str, int]
    method: str = "kmeans"
    samples: int = 0

    def drop(self, layer: str, sparsity: float = 0.0, bits: Optional[int] = None) -> float:
        """Estimated accuracy drop (>= 0) of `layer` at (sparsity, bits): the scanned
        pruning drop plus the scanned quantization drop (0 for sparsity 0 / bits None);
        negative drops (noise: a setting that happened to help) count as 0."""
        if layer not in self.prune:
            raise KeyError(f"layer {layer!r} is not in the table (layers: {', '.join(self.layers)})")
        d = 0.0
        if sparsity:
            if sparsity not in self.prune[layer]:
                raise KeyError(f"sparsity {sparsity} was not scanned (scanned: {self.sparsities})")
            d += max(0.0, self.baseline - self.prune[layer][sparsity])
        if bits is not None:
            if bits not in self.bits[layer]:
                raise KeyError(f"bits {bits} were not scanned (scanned: {self.bit_widths})")
            d += max(0.0, self.baseline - self.bits[layer][bits])
        return d

    def to_dict(self) -> Dict[str, Any]:
        return {"baseline": self.baseline, "method": self.method, "samples": self.samples,
                "layers": {n: {"numel": self.numel[n], "nonzeros": self.nonzeros[n],
                               "prune": {str(s): a for s, a in self.prune[n].items()},
                               "bits": {str(b): a for b, a in self.bits[n].items()}}
                           for n in self.layers}}

    def markdown(self) -> str:
        head = ["layer"] + [f"s={s:g}" for s in self.sparsities] + [f"{b} bits" for b in self.bit_widths]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for n in self.layers:
            cells = [f"{self.prune[n][s]:.4f}" for s in self.sparsities]
            cells += [f"{self.bits[n][b]:.4f}" for b in self.bit_widths]
            lines.append("| " + " | ".join([n] + cells) + " |")
        return f"baseline accuracy {self.baseline:.4f}\n\n" + "\n".join(lines)


def _check_sparsities(sparsities: Sequence[float]) -> Tuple[float, ...]:
    out = tuple(float(s) for s in sparsities)
    for s in out:
        if not 0.0 < s < 1.0:
            raise ValueError(f"scan: sparsities must be in (0, 1), got {s}")
    return out


def _check_bits(bits: Sequence[int]) -> Tuple[int, ...]:
    out = tuple(bits)
    for b in out:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 8:
            raise ValueError(f"scan: bits must be ints in 1..8, got {b!r}")
    return out


def _pruned(w: torch.Tensor, s: float) -> torch.Tensor:
    """w with its smallest-magnitude weights zeroed to sparsity s (never fewer zeros
    than it has)."""
    k = int(round(s * w.numel()))
    out = w.clone()
    if k > 0:
        order = torch.argsort(w.abs().reshape(-1), stable=True)
        out.view(-1)[order[:k]] = 0.0
    return out


def _quantized(w: torch.Tensor, bits: int, method: str) -> torch.Tensor:
    if method == "uniform":
        return quantize_tensor(w, QuantizeConfig(bits=max(bits, 2), granularity="channel"))
    from .cluster import cluster_tensor
    if not bool((w != 0).any()):
        return w.clone()
    centroids, idx = cluster_tensor(w, bits)
    return torch.where(idx >= 0, centroids[idx.clamp_min(0)], torch.zeros_like(w))


@torch.no_grad()
def scan(model: nn.Module, val_loader: Iterable, layers: LayerSelection = None,
         sparsities: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95),
         bits: Sequence[int] = (8, 6, 5, 4, 3, 2), max_batches: Optional[int] = None,
         method: str = "kmeans") -> SensitivityTable:
    """Accuracy on `val_loader` (at most max_batches batches) with one selected layer at a
    time pruned to each of `sparsities` or quantized to each of `bits` (method "kmeans":
    k-means sharing of the nonzeros, 2^b values; "uniform": symmetric per-channel grid,
    2^b - 1 values, bits >= 2). Runs on a copy of the model; `model` is unchanged."""
    if method not in METHODS:
        raise ValueError(f"scan: method must be one of {METHODS}, got {method!r}")
    sparsities = _check_sparsities(sparsities)
    bits = _check_bits(bits)
    if method == "uniform" and any(b < 2 for b in bits):
        raise ValueError("scan: method='uniform' needs bits >= 2")
    work = baked_copy(model)
    if work is model:
        import copy
        work = copy.deepcopy(model)
    work.eval()
    chosen = select_layers(work, layers)
    if not chosen:
        raise ValueError(f"scan: no Conv2d / Linear layer of {type(model).__name__} is selected")
    base = evaluate(work, val_loader, max_batches)
    table = SensitivityTable(baseline=base["accuracy"], layers=[n for n, _ in chosen],
                             sparsities=sparsities, bit_widths=bits, prune={}, bits={},
                             numel={}, nonzeros={}, rows={}, method=method, samples=int(base["n"]))
    for name, m in chosen:
        original = m.weight.detach().clone()
        table.numel[name] = original.numel()
        table.nonzeros[name] = int((original != 0).sum())
        table.rows[name] = int(original.shape[0])
        table.prune[name], table.bits[name] = {}, {}
        try:
            for s in sparsities:
                m.weight.copy_(_pruned(original, s))
                table.prune[name][s] = evaluate(work, val_loader, max_batches)["accuracy"]
            for b in bits:
                m.weight.copy_(_quantized(original, b, method))
                table.bits[name][b] = evaluate(work, val_loader, max_batches)["accuracy"]
        finally:
            m.weight.copy_(original)
    return table


def estimate_layer_bytes(numel: int, rows: int, nonzeros: int, bits: Optional[int]) -> int:
    """Estimated stored bytes of one weight: values of `bits` bits (None: 32-bit floats)
    plus a 2^bits-entry f32 codebook; stored dense (numel values) or sparse (nonzeros
    values with an INDEX_BITS relative index each and a 4-byte row pointer per row),
    whichever is smaller, as the exporter's "auto" picks. Huffman coding, index filler
    zeros and stream padding are ignored: an estimate, not the file size."""
    value_bits = 32 if bits is None else bits
    codebook = 0 if bits is None else (2 ** bits) * _FLOAT_BYTES
    dense = math.ceil(numel * value_bits / 8)
    sparse = math.ceil(nonzeros * (value_bits + INDEX_BITS) / 8) + rows * _ROW_POINTER_BYTES
    return min(dense, sparse) + codebook


def _option_nonzeros(table: SensitivityTable, name: str, s: float) -> int:
    return min(table.nonzeros[name], int(round((1.0 - s) * table.numel[name])))


def _other_bytes(model: nn.Module, table: SensitivityTable) -> int:
    """f32 bytes of every parameter and buffer except the scanned layers' weights."""
    plain = baked_copy(model)
    total = sum(p.numel() for p in plain.parameters()) + \
        sum(b.numel() for b in plain.buffers() if b.is_floating_point())
    return (total - sum(table.numel[n] for n in table.layers)) * _FLOAT_BYTES


def estimate_bytes(model: nn.Module, table: SensitivityTable,
                   choice: Mapping[str, Mapping[str, Any]]) -> int:
    """Estimated model bytes with `choice` applied: estimate_layer_bytes for the scanned
    layers (unchosen ones as f32 with their current zeros) plus 4 bytes per other
    parameter / buffer value."""
    total = _other_bytes(model, table)
    for n in table.layers:
        c = choice.get(n, {})
        s = float(c.get("sparsity", 0.0) or 0.0)
        total += estimate_layer_bytes(table.numel[n], table.rows[n],
                                      _option_nonzeros(table, n, s), c.get("bits"))
    return total


def predicted_drop(table: SensitivityTable, choice: Mapping[str, Mapping[str, Any]]) -> float:
    """Sum of the scanned per-layer drops of `choice` (the additivity assumption)."""
    return sum(table.drop(n, float(c.get("sparsity", 0.0) or 0.0), c.get("bits"))
               for n, c in choice.items())


def choose(table: SensitivityTable, model: nn.Module, budget_bytes: Optional[int] = None,
           ratio: Optional[float] = None,
           max_accuracy_drop: Optional[float] = None) -> Dict[str, Dict[str, Any]]:
    """Per-layer {"sparsity": s, "bits": b} (s 0.0 = not pruned, b None = not quantized)
    that fits the model in `budget_bytes` (or in its f32 size / `ratio`) with the least
    predicted accuracy drop, by greedy descent: starting from every layer untouched, take
    repeatedly the move (one layer to a smaller option) with the least added drop per
    byte saved, until the estimate (estimate_bytes) fits. With max_accuracy_drop alone,
    shrink the model the same way as long as the predicted drop stays within it; with a
    budget too, raise ValueError if meeting the budget needs a larger drop. Raises
    ValueError when even the smallest options do not fit."""
    if not isinstance(table, SensitivityTable):
        raise TypeError(f"choose: expected a SensitivityTable, got {type(table).__name__}")
    if budget_bytes is not None and ratio is not None:
        raise ValueError("choose: give budget_bytes or ratio, not both")
    if budget_bytes is None and ratio is None and max_accuracy_drop is None:
        raise ValueError("choose: give budget_bytes, ratio or max_accuracy_drop")
    if ratio is not None:
        if not (isinstance(ratio, (int, float)) and ratio >= 1):
            raise ValueError(f"choose: ratio must be a number >= 1, got {ratio!r}")
        dense = _other_bytes(model, table) + sum(n * _FLOAT_BYTES for n in table.numel.values())
        budget_bytes = int(dense / ratio)
    if budget_bytes is not None and (isinstance(budget_bytes, bool) or budget_bytes <= 0):
        raise ValueError(f"choose: budget_bytes must be > 0, got {budget_bytes!r}")
    if max_accuracy_drop is not None and not max_accuracy_drop >= 0:
        raise ValueError(f"choose: max_accuracy_drop must be >= 0, got {max_accuracy_drop!r}")
    fixed = _other_bytes(model, table)

    # options per layer: (bytes, drop, sparsity, bits)
    options: Dict[str, List[Tuple[int, float, float, Optional[int]]]] = {}
    for n in table.layers:
        opts = []
        for s in (0.0,) + table.sparsities:
            for b in (None,) + table.bit_widths:
                size = estimate_layer_bytes(table.numel[n], table.rows[n],
                                            _option_nonzeros(table, n, s), b)
                opts.append((size, table.drop(n, s, b), s, b))
        options[n] = opts
    current = {n: next(o for o in options[n] if o[2] == 0.0 and o[3] is None) for n in table.layers}

    def total_bytes():
        return fixed + sum(o[0] for o in current.values())

    def total_drop():
        return sum(o[1] for o in current.values())

    smallest = fixed + sum(min(o[0] for o in opts) for opts in options.values())
    if budget_bytes is not None and smallest > budget_bytes:
        raise ValueError(f"choose: the budget of {budget_bytes} bytes cannot be met: the smallest "
                         f"scanned settings give about {smallest} bytes; scan higher sparsities "
                         "or fewer bits")
    while budget_bytes is None or total_bytes() > budget_bytes:
        best = None
        for n, opts in options.items():
            cur = current[n]
            for o in opts:
                saved = cur[0] - o[0]
                if saved <= 0:
                    continue
                added = o[1] - cur[1]
                if budget_bytes is None and total_drop() + added > max_accuracy_drop + 1e-12:
                    continue
                # least added drop per byte saved; ties: the bigger saving
                key = (max(added, 0.0) / saved, -saved)
                if best is None or key < best[0]:
                    best = (key, n, o)
        if best is None:
            break
        current[best[1]] = best[2]
    if budget_bytes is not None and max_accuracy_drop is not None and total_drop() > max_accuracy_drop:
        raise ValueError(f"choose: meeting {budget_bytes} bytes costs a predicted accuracy drop of "
                         f"{total_drop():.4f}, more than max_accuracy_drop={max_accuracy_drop}")
    return {n: {"sparsity": o[2], "bits": o[3]} for n, o in current.items()}


def apply_choice(model: nn.Module, choice: Mapping[str, Mapping[str, Any]],
                 method: str = "kmeans") -> nn.Module:
    """Apply a `choose` result in place: magnitude-prune each layer to its sparsity
    (a mask parametrization), then quantize it to its bits: "kmeans" = cluster.cluster
    (shared values of the nonzeros), "uniform" = quantize.quantize (symmetric per
    channel). Fine-tune afterwards as usual (masks and shared values are kept)."""
    if method not in METHODS:
        raise ValueError(f"apply_choice: method must be one of {METHODS}, got {method!r}")
    if not isinstance(choice, Mapping):
        raise TypeError(f"apply_choice: choice must be a dict layer -> settings, got {type(choice).__name__}")
    modules = dict(select_layers(model, list(choice)) if choice else [])
    for name, c in choice.items():
        if not isinstance(c, Mapping) or set(c) - {"sparsity", "bits"}:
            raise ValueError(f"apply_choice: {name!r}: expected {{'sparsity': s, 'bits': b}}, got {c!r}")
        if name not in modules:
            raise ValueError(f"apply_choice: {name!r} is not a Conv2d / Linear layer of the model")
    for name, c in choice.items():
        s = float(c.get("sparsity", 0.0) or 0.0)
        if s > 0:
            prune(model, PruneConfig(sparsity=s), layers=[name])
        b = c.get("bits")
        if b is None:
            continue
        if method == "uniform":
            quantize(model, QuantizeConfig(bits=b, granularity="channel"), layers=[name])
        else:
            from .cluster import ClusterConfig, cluster
            cluster(model, ClusterConfig(bits=b), layers=[name])
    record(model, "sensitivity_choice", None, choice=dict(choice), method=method)
    return model
