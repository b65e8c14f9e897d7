"""Shared helpers for the deepsqueeze benchmarks (pytest-benchmark).

Every benchmark goes through `measure(...)`, which runs it with benchmark.pedantic,
fills extra_info (impl, encoding, threads, batch, MACs, GFLOP/s, weight bytes, ...) and
keeps a record for the ratio table that is written to bench/results/first_bench.md and
printed at the end of the session (the table code lives in bench/report.py, which can
rebuild the same table later from the --benchmark-json file).

The machine is shared and noisy: the numbers to trust are the ratios between the
implementations of one group (same layer, batch, threads, cache state), measured back to
back in one run; the absolute times are only a sanity check.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import platform
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pytest

import deepsqueeze
from deepsqueeze.builder import GraphBuilder
from deepsqueeze.format import to_bytes

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
L3_BYTES = 32 * 1024 * 1024
# Cold (memory-bound) variants rotate through copies until the weights touched per
# cycle are at least this much: twice the L3, so no copy is still cached when it is
# used again.
COLD_TOTAL_BYTES = 2 * L3_BYTES

ENCODINGS = ("f32", "int8_channel", "int4_group")
ENC_SHORT = {"f32": "f32", "int8_channel": "int8", "int4_group": "int4",
             "int8_channel_static": "int8s"}

_report_spec = importlib.util.spec_from_file_location("_dsq_bench_report", BENCH_DIR / "report.py")
report = importlib.util.module_from_spec(_report_spec)
_report_spec.loader.exec_module(report)


# --------------------------------------------------------------------------- torch
def torch_mod():
    """torch, imported lazily, with the deprecation noise of torch.ao silenced."""
    import torch

    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\..*")
    warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated.*")
    warnings.filterwarnings("ignore", message=r".*TypedStorage is deprecated.*")
    return torch


def set_threads(threads: int) -> None:
    """One place that sets the thread count of every peer (torch intra-op pool)."""
    torch = torch_mod()
    torch.set_num_threads(int(threads))


# --------------------------------------------------------------------------- weights
def make_weights(shape: Sequence[int], copy_index: int, seed: int = 1234):
    """Deterministic, distinct weights (and bias) per copy; Kaiming-uniform-like scale
    so that activations stay O(1) as in a real layer."""
    rng = np.random.default_rng(seed + 7919 * copy_index)
    fan_in = int(np.prod(shape[1:]))
    bound = 1.0 / np.sqrt(fan_in)
    w = rng.uniform(-bound, bound, size=tuple(shape)).astype(np.float32)
    b = rng.uniform(-bound, bound, size=(shape[0],)).astype(np.float32)
    return w, b


def linear_dsq_bytes(w: np.ndarray, b: np.ndarray, values: str, group_size: int = 64) -> bytes:
    g = GraphBuilder()
    x = g.add_input("x", (-1, w.shape[1]))
    wi = g.add_weight("fc.weight", w, values=values, group_size=group_size)
    bi = g.add_weight("fc.bias", b)
    y = g.add_node("linear", [x], weights=[wi, bi])
    g.mark_output(y, "y")
    return to_bytes(g.build({"dsq.producer": "bench"}))


def conv2d_dsq_bytes(w: np.ndarray, b: np.ndarray, values: str, padding: int,
                     input_quant: Optional[Sequence[float]] = None, group_size: int = 64) -> bytes:
    g = GraphBuilder()
    x = g.add_input("x", (-1, w.shape[1], -1, -1))
    wi = g.add_weight("conv.weight", w, values=values, group_size=group_size)
    bi = g.add_weight("conv.bias", b)
    attrs = {"padding": [padding, padding]}
    if input_quant is not None:
        attrs["input_quant"] = [float(input_quant[0]), float(input_quant[1])]
    y = g.add_node("conv2d", [x], weights=[wi, bi], attrs=attrs)
    g.mark_output(y, "y")
    return to_bytes(g.build({"dsq.producer": "bench"}))


def u8_quant_params(x: np.ndarray):
    """(scale, zero_point) of an asymmetric u8 quantization covering x (static calibration)."""
    lo = min(float(x.min()), 0.0)
    hi = max(float(x.max()), 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zp = int(round(-lo / scale))
    return scale, min(max(zp, 0), 255)


@dataclass
class LayerSpec:
    kind: str                   # "linear" | "conv2d"
    weight_shape: tuple         # (out, in) or (out, in, kh, kw)
    input_shape: tuple          # the shape of x, batch included
    padding: int = 0

    @property
    def batch(self) -> int:
        return int(self.input_shape[0])

    @property
    def macs(self) -> int:
        if self.kind == "linear":
            return self.batch * self.weight_shape[0] * self.weight_shape[1]
        n, _, h, w = self.input_shape
        cout, cin, kh, kw = self.weight_shape
        oh = h + 2 * self.padding - kh + 1
        ow = w + 2 * self.padding - kw + 1
        return n * cout * oh * ow * cin * kh * kw

    @property
    def key(self) -> str:
        return f"{self.kind}{self.weight_shape}p{self.padding}"


def make_input(spec: LayerSpec, seed: int = 99) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(rng.standard_normal(spec.input_shape).astype(np.float32))


# --------------------------------------------------------------------------- models
class Rotating:
    """Cycles through several distinct loaded copies of one layer (separate models with
    separate weights), one copy per call, so that with enough copies every call reads
    its weights from memory, not from the last-level cache."""

    def __init__(self, fns: Sequence[Callable], weight_bytes_per_copy: int):
        self.fns = list(fns)
        self.weight_bytes_per_copy = int(weight_bytes_per_copy)
        self._i = 0

    @property
    def copies(self) -> int:
        return len(self.fns)

    @property
    def total_weight_bytes(self) -> int:
        return self.copies * self.weight_bytes_per_copy

    def __call__(self, x):
        fn = self.fns[self._i]
        self._i = (self._i + 1) % len(self.fns)
        return fn(x)


def copies_for_cold(weight_bytes_per_copy: int, min_copies: int = 2) -> int:
    return max(min_copies, -(-COLD_TOTAL_BYTES // max(1, weight_bytes_per_copy)))


class ModelCache:
    """Loaded models (ours and torch) per (layer, impl, copy), kept for the whole layer so
    that the warm variant and the thread-count params reuse the cold variant's copies.
    Dropped when the benchmarks move to another layer to keep memory bounded."""

    def __init__(self):
        self._key = None
        self._items: Dict[tuple, object] = {}
        self._weights: Dict[tuple, tuple] = {}

    def _switch(self, spec: LayerSpec):
        if spec.key != self._key:
            self._key = spec.key
            self._items.clear()
            self._weights.clear()

    def weights(self, spec: LayerSpec, i: int):
        self._switch(spec)
        k = ("w", i)
        if k not in self._weights:
            self._weights[k] = make_weights(spec.weight_shape, i)
        return self._weights[k]

    def get(self, spec: LayerSpec, impl: str, i: int, build: Callable):
        self._switch(spec)
        k = (impl, i)
        if k not in self._items:
            self._items[k] = build()
        return self._items[k]


CACHE = ModelCache()


def _calibration_input(spec: LayerSpec) -> np.ndarray:
    return make_input(spec)


def dsq_model(spec: LayerSpec, values: str, i: int, static_quant: bool = False):
    """A deepsqueeze Model of copy i (threads are set per benchmark via Model.threads)."""
    impl = f"dsq:{values}:{'static' if static_quant else 'dyn'}"

    def build():
        w, b = CACHE.weights(spec, i)
        if spec.kind == "linear":
            data = linear_dsq_bytes(w, b, values)
        else:
            iq = u8_quant_params(_calibration_input(spec)) if static_quant else None
            data = conv2d_dsq_bytes(w, b, values, spec.padding, input_quant=iq)
        m = deepsqueeze.load(data, threads=1)
        return m

    return CACHE.get(spec, impl, i, build)


def dsq_weight_bytes(model, spec: LayerSpec) -> int:
    """Payload bytes of the layer's weights as the engine reports them (weight + bias)."""
    layers = model.layers([spec.input_shape])
    return int(sum(w["payload_bytes"] for L in layers for w in L["weights"]))


def torch_float_module(spec: LayerSpec, i: int):
    torch = torch_mod()

    def build():
        w, b = CACHE.weights(spec, i)
        if spec.kind == "linear":
            m = torch.nn.Linear(w.shape[1], w.shape[0])
        else:
            m = torch.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], padding=spec.padding)
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(w))
            m.bias.copy_(torch.from_numpy(b))
        return m.eval()

    return CACHE.get(spec, "torch:f32", i, build)


def torch_dynamic_int8(spec: LayerSpec, i: int):
    """torch.ao dynamic int8 (fbgemm/x86 backend) of nn.Sequential(nn.Linear)."""
    torch = torch_mod()

    def build():
        f = copy.deepcopy(torch_float_module(spec, i))
        return torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(f), {torch.nn.Linear}, dtype=torch.qint8).eval()

    return CACHE.get(spec, "torch:dyn_int8", i, build)


def torch_static_int8_conv(spec: LayerSpec, i: int):
    """torch.ao eager static int8: QuantStub -> Conv2d -> DeQuantStub, x86 backend,
    calibrated on the benchmark input. Raises whatever torch raises when it cannot."""
    torch = torch_mod()

    def build():
        class QConv(torch.nn.Module):
            def __init__(self, conv):
                super().__init__()
                self.quant = torch.ao.quantization.QuantStub()
                self.conv = conv
                self.dequant = torch.ao.quantization.DeQuantStub()

            def forward(self, x):
                return self.dequant(self.conv(self.quant(x)))

        engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
        torch.backends.quantized.engine = engine
        m = QConv(copy.deepcopy(torch_float_module(spec, i))).eval()
        m.qconfig = torch.ao.quantization.get_default_qconfig(engine)
        prepared = torch.ao.quantization.prepare(m)
        with torch.inference_mode():
            prepared(torch.from_numpy(_calibration_input(spec)))
        return torch.ao.quantization.convert(prepared).eval()

    return CACHE.get(spec, "torch:static_int8", i, build)


def torch_weight_bytes(module) -> int:
    """Bytes of the weights a torch module holds (float params, or packed int8 weights)."""
    torch = torch_mod()
    total = 0
    for sub in module.modules():
        params = list(sub.parameters(recurse=False))
        if params:
            total += sum(p.numel() * p.element_size() for p in params)
            continue
        wfn = getattr(sub, "weight", None)
        if callable(wfn):  # torch.ao quantized Linear/Conv: weight() unpacks a qint8 tensor
            try:
                w = wfn()
                total += w.numel() * w.element_size()
                b = sub.bias() if callable(getattr(sub, "bias", None)) else None
                if b is not None:
                    total += b.numel() * b.element_size()
            except Exception:  # pragma: no cover - best effort accounting
                pass
    return total


# --------------------------------------------------------------------------- measuring
def plan_rounds(fn: Callable, x, *, budget_s: float = 0.6, min_round_s: float = 2e-4,
                min_rounds: int = 5, max_rounds: int = 300, calls: int = 1):
    """Time a few calls of fn(x) (after `calls` untimed ones, e.g. one per rotated copy)
    and return (rounds, iterations) so that one round lasts >= min_round_s and the whole
    benchmark about budget_s."""
    import time

    for _ in range(max(1, calls)):
        fn(x)
    n = max(1, calls)
    t0 = time.perf_counter()
    for _ in range(n):
        fn(x)
    per_call = max((time.perf_counter() - t0) / n, 1e-7)
    iterations = max(1, int(np.ceil(min_round_s / per_call)))
    rounds = int(budget_s / (per_call * iterations))
    return max(min_rounds, min(max_rounds, rounds)), iterations


RECORDS: List[dict] = []


def modeled_energy(model, x, cold: bool) -> float:
    """Modeled joules of one run of a deepsqueeze model on x (docs/ENERGY.md). Cold
    variants rotate their weights through more copies than the L3 holds, so their weight
    reads are priced as DRAM reads (cache_bytes=1); warm ones use the default 32 MiB."""
    model.reset_counters()
    model.run(x)
    e = model.energy(cache_bytes=1 if cold else None)
    model.reset_counters()
    return float(e["total_joules"])


def measure(benchmark, fn: Callable, x, *, spec: LayerSpec, group: str, impl: str,
            encoding: str, threads: int, weight_bytes: int, rounds: int, iterations: int = 1,
            cache: str = "warm", copies: int = 1, kernel: str = "", warmup_rounds: int = 1):
    """Run fn(x) under benchmark.pedantic and record extra_info plus the ratio-table row."""
    benchmark.group = group
    result = benchmark.pedantic(fn, args=(x,), rounds=rounds, iterations=iterations,
                                warmup_rounds=warmup_rounds)
    stats = benchmark.stats.stats
    info = {
        "impl": impl,
        "encoding": encoding,
        "threads": threads,
        "batch": spec.batch,
        "layer": spec.kind,
        "weight_shape": "x".join(map(str, spec.weight_shape)),
        "input_shape": "x".join(map(str, spec.input_shape)),
        "MACs": spec.macs,
        "GFLOP/s": round(2.0 * spec.macs / stats.mean / 1e9, 2),
        "GFLOP/s_median": round(2.0 * spec.macs / stats.median / 1e9, 2),
        "weight_bytes": int(weight_bytes),
        "cache": cache,
        "copies": copies,
        "rotated_weight_bytes": int(weight_bytes) * copies,
        "loadavg_1m": round(os.getloadavg()[0], 2),  # other processes on this shared machine
    }
    if kernel:
        info["kernel"] = kernel
    benchmark.extra_info.update(info)
    RECORDS.append({
        "group": group,
        "name": benchmark.name,
        "extra_info": dict(benchmark.extra_info),
        "stats": {"mean": stats.mean, "median": stats.median, "min": stats.min,
                  "stddev": stats.stddev, "rounds": stats.rounds},
    })
    return result


def record_peer_failure(benchmark, *, group: str, impl: str, encoding: str, threads: int,
                        spec: LayerSpec, error: BaseException):
    """A peer that cannot run this layer: recorded (extra_info, table), never silent."""
    msg = f"peer cannot run: {type(error).__name__}: {error}".splitlines()[0][:300]
    benchmark.group = group
    info = {"impl": impl, "encoding": encoding, "threads": threads, "batch": spec.batch,
            "MACs": spec.macs, "status": msg}
    benchmark.extra_info.update(info)
    # A trivial timed call keeps the entry (and its extra_info) in the JSON output;
    # report.py reads `status` and shows the peer as unable to run, not as a time.
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    RECORDS.append({"group": group, "name": benchmark.name, "extra_info": info, "stats": None})


# --------------------------------------------------------------------------- session end
def pytest_sessionfinish(session, exitstatus):
    if not RECORDS:
        return
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    text = report.render(RECORDS, report.machine_state())
    out = RESULTS_DIR / "first_bench.md"
    out.write_text(text)
    session.config._dsq_bench_table = (text, out)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    got = getattr(config, "_dsq_bench_table", None)
    if got is None and RECORDS:
        text = report.render(RECORDS, report.machine_state())
        out = RESULTS_DIR / "first_bench.md"
    elif got is None:
        return
    else:
        text, out = got
    terminalreporter.write_sep("=", f"deepsqueeze ratio table (written to {out})")
    terminalreporter.write_line(text)
