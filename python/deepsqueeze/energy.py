"""Modeled energy of the runs a Model did, from the engine's own counters (docs/ENERGY.md).

The model prices what the kernels really did (MACs by precision, MACs skipped on zero
activations, codebook look-ups, weight and activation bytes) with the 45 nm
per-operation figures of Horowitz (ISSCC 2014) that Han et al. use. Where Linux exposes
RAPL (/sys/class/powercap/intel-rapl*), `rapl_joules` also measures package energy.

Memory: a run reads each layer's weights once, or once per slice of a micro-batched run
(the engine's `weight_bytes`). Those reads count as DRAM reads when the weights the whole
model touches (one pass over every layer's) do not fit the
configured cache (default 32 MiB, the L3 of the reference machine: streaming more than
the cache through it every run evicts everything before its next use), and as SRAM reads
otherwise. Activations count as SRAM reads/writes, except for a layer whose own
activation traffic per call is larger than the cache (DRAM); a micro-batched run calls
each layer once per slice (the `calls` counter). Every access is priced per 32-bit word
(bytes / 4), as in the source table.
"""
from __future__ import annotations

import glob
import os
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

# Energy per operation, picojoules, 45 nm (Horowitz, ISSCC 2014; Han et al. 2016).
HOROWITZ_45NM_PJ: Dict[str, float] = {
    "dram_read_32b": 640.0,
    "sram_read_32b": 5.0,
    "f32_mult": 3.7,
    "f32_add": 0.9,
    "int32_add": 0.1,
    "int8_mult": 0.2,
    "int8_add": 0.03,
}
# A codebook look-up reads one 32-bit table entry; priced as an SRAM read (an upper
# bound: the batch-1 kernels hold small tables in registers).
DEFAULT_CACHE_BYTES = 32 * 1024 * 1024

# The energy components, in report order.
COMPONENTS = ("weights_dram", "weights_sram", "activations_dram", "activations_sram",
              "f32_macs", "int8_macs", "int4_macs", "table_lookups")


def _check_costs(costs: Optional[Mapping[str, float]]) -> Dict[str, float]:
    out = dict(HOROWITZ_45NM_PJ)
    if costs is None:
        return out
    if not isinstance(costs, Mapping):
        raise TypeError(f"costs must be a mapping of operation -> picojoules, got {type(costs).__name__}")
    for k, v in costs.items():
        if k not in HOROWITZ_45NM_PJ:
            raise ValueError(f"costs: unknown operation {k!r}; known: {sorted(HOROWITZ_45NM_PJ)}")
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
            raise ValueError(f"costs[{k!r}] must be a number >= 0 (picojoules), got {v!r}")
        out[k] = float(v)
    return out


def layer_energy_pj(counts: Mapping[str, float], *, weights_in_dram: bool, cache_bytes: int,
                    costs: Mapping[str, float]) -> Dict[str, float]:
    """Picojoules per component for one layer's per-run counts (see the module doc)."""
    pj = {c: 0.0 for c in COMPONENTS}
    skipped = float(counts.get("skipped_macs", 0))
    f32_macs = max(0.0, float(counts.get("macs_f32", 0)) - skipped)
    lookups = float(counts.get("table_lookups", 0))
    # Zero-skipping only exists in codebook/f32 sparse layers: a skipped MAC of a codebook
    # layer skips its look-up too.
    lookups = max(0.0, lookups - skipped) if lookups else 0.0
    words_w = float(counts.get("weight_bytes", 0)) / 4.0
    act_bytes = float(counts.get("activation_bytes", 0))
    words_a = act_bytes / 4.0
    act_bytes_per_call = act_bytes / max(1.0, float(counts.get("calls", 1)))
    if weights_in_dram:
        pj["weights_dram"] = words_w * costs["dram_read_32b"]
    else:
        pj["weights_sram"] = words_w * costs["sram_read_32b"]
    if act_bytes_per_call > cache_bytes:
        pj["activations_dram"] = words_a * costs["dram_read_32b"]
    else:
        pj["activations_sram"] = words_a * costs["sram_read_32b"]
    pj["f32_macs"] = f32_macs * (costs["f32_mult"] + costs["f32_add"])
    # int8 (and int4, unpacked to int8 in registers) products accumulate in int32.
    pj["int8_macs"] = float(counts.get("macs_int8", 0)) * (costs["int8_mult"] + costs["int32_add"])
    pj["int4_macs"] = float(counts.get("macs_int4", 0)) * (costs["int8_mult"] + costs["int32_add"])
    pj["table_lookups"] = lookups * costs["sram_read_32b"]
    return pj


def estimate(layers: Sequence[Mapping], layer_counters: Sequence[Mapping], runs: int, *,
             cache_bytes: int = DEFAULT_CACHE_BYTES,
             costs: Optional[Mapping[str, float]] = None) -> dict:
    """The energy of one run (the mean over `runs`) from per-layer counters summed over
    `runs` runs. `layers` gives each layer's name/op/kernel/weights (Model.layers())."""
    if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes <= 0:
        raise ValueError(f"cache_bytes must be a positive int, got {cache_bytes!r}")
    if not isinstance(runs, int) or runs <= 0:
        raise ValueError(f"energy needs at least one run (runs={runs!r}): run the model first")
    if len(layers) != len(layer_counters):
        raise ValueError(f"{len(layers)} layers but {len(layer_counters)} layer counters")
    c = _check_costs(costs)
    per_run = [{k: float(v) / runs for k, v in lc.items()} for lc in layer_counters]
    # The weights a run touches: one pass per layer (a micro-batched run makes one pass
    # per slice over the same weights).
    model_weight_bytes = sum(p.get("weight_bytes", 0.0) / max(1.0, p.get("calls", 1.0)) for p in per_run)
    in_dram = model_weight_bytes > cache_bytes
    out_layers: List[dict] = []
    totals = {k: 0.0 for k in COMPONENTS}
    for info, counts in zip(layers, per_run):
        pj = layer_energy_pj(counts, weights_in_dram=in_dram, cache_bytes=cache_bytes, costs=c)
        for k in COMPONENTS:
            totals[k] += pj[k]
        out_layers.append({
            "name": info.get("name", ""), "op": info.get("op", ""), "kernel": info.get("kernel", ""),
            "joules": sum(pj.values()) * 1e-12,
            "breakdown_joules": {k: v * 1e-12 for k, v in pj.items()},
            "counts_per_run": counts,
        })
    huffman = sum(int(w.get("huffman_symbols", 0)) for L in layers for w in L.get("weights", []))
    return {
        "total_joules": sum(totals.values()) * 1e-12,
        "breakdown_joules": {k: v * 1e-12 for k, v in totals.items()},
        "layers": out_layers,
        "runs": runs,
        "per": "run",
        "model_weight_bytes_per_run": model_weight_bytes,
        "cache_bytes": cache_bytes,
        "weights_in": "dram" if in_dram else "sram",
        "huffman_symbols_decoded_at_load": huffman,
        "costs_pj": c,
        "source": "Horowitz ISSCC 2014, 45 nm (docs/ENERGY.md)",
    }


# ------------------------------------------------------------------ RAPL (measured)
def rapl_zones() -> List[str]:
    """Package-level RAPL zones whose energy counter this process can read."""
    zones = []
    for d in sorted(glob.glob("/sys/class/powercap/intel-rapl:*")):
        if os.path.basename(d).count(":") != 1:  # subzones (core, uncore, dram) are inside
            continue
        path = os.path.join(d, "energy_uj")
        try:
            with open(path) as f:
                int(f.read())
        except (OSError, ValueError):
            continue
        zones.append(path)
    return zones


def _read_uj(paths: Sequence[str]) -> List[int]:
    out = []
    for p in paths:
        with open(p) as f:
            out.append(int(f.read()))
    return out


def _max_range(path: str) -> int:
    try:
        with open(os.path.join(os.path.dirname(path), "max_energy_range_uj")) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def rapl_joules(fn: Callable[[], object], min_seconds: float = 0.5) -> Optional[dict]:
    """Measured package joules per call of fn (whole package: includes everything else the
    machine runs), or None when RAPL is not readable here."""
    zones = rapl_zones()
    if not zones:
        return None
    calls = 0
    before = _read_uj(zones)
    t0 = time.perf_counter()
    while True:
        fn()
        calls += 1
        if time.perf_counter() - t0 >= min_seconds:
            break
    after = _read_uj(zones)
    total = 0
    for p, a, b in zip(zones, before, after):
        d = b - a
        if d < 0:  # the counter wrapped
            d += _max_range(p)
        total += d
    return {"joules_per_call": total * 1e-6 / calls, "calls": calls,
            "seconds": time.perf_counter() - t0, "zones": zones}


def rapl_status() -> str:
    zones = rapl_zones()
    return f"available ({len(zones)} package zone(s))" if zones else "not available"


def format_report(e: dict) -> str:
    """The per-layer and total table `deepsqueeze inspect --energy` prints."""
    def nj(j):
        return f"{j * 1e9:.4g}"

    comps = [k for k in COMPONENTS if e["breakdown_joules"][k] > 0]
    head = ["layer", "op", "total nJ"] + [f"{k} nJ" for k in comps]
    rows = []
    for L in e["layers"]:
        rows.append([L["name"], L["op"], nj(L["joules"])] + [nj(L["breakdown_joules"][k]) for k in comps])
    rows.append(["TOTAL", "", nj(e["total_joules"])] + [nj(e["breakdown_joules"][k]) for k in comps])
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    lines = ["  ".join(str(v).rjust(w) if i >= 2 else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
             for r in [head] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"modeled energy per run: {e['total_joules'] * 1e6:.3f} uJ ({e['source']}); "
                 f"weights {e['model_weight_bytes_per_run'] / 1024:.1f} KiB per run -> "
                 f"{e['weights_in'].upper()} (cache {e['cache_bytes'] / 2**20:.0f} MiB); "
                 f"Huffman symbols decoded at load: {e['huffman_symbols_decoded_at_load']}")
    return "\n".join(lines)
