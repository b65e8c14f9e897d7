"""Dense single-layer benchmarks: deepsqueeze (f32, int8_channel, int4_group) vs PyTorch.

One group = one layer shape x batch x threads (x cache state for the big linear); every
implementation of a group runs back to back, and the table at the end of the session
(bench/results/first_bench.md) gives the ratios. Run:

    python3 -m pytest bench/ --benchmark-only --benchmark-json=bench/results/first_bench.json -q
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import (CACHE, LayerSpec, Rotating, copies_for_cold, dsq_model, dsq_weight_bytes,
                      make_input, measure, modeled_energy, plan_rounds, record_peer_failure, report,
                      set_threads, torch_dynamic_int8, torch_float_module, torch_mod,
                      torch_static_int8_conv, torch_weight_bytes)

OURS, TORCH = report.OURS, report.TORCH
THREADS = (1, 2)
BUDGET_S = 1.5  # measuring time per benchmark (rounds are planned from one timed call)

# our encoding label -> (values encoding in the file, static input_quant)
OUR_VALUES = {"f32": ("f32", False), "int8": ("int8_channel", False),
              "int8_static": ("int8_channel", True), "int4": ("int4_group", False)}
# relative L2 error bound vs torch f32 (a sanity check that the benchmark runs real math)
REL_ERR = {"f32": 1e-4, "int8": 0.05, "int8_static": 0.05, "int4": 0.25}

LINEAR_IMPLS = [(OURS, "f32"), (OURS, "int8"), (OURS, "int4"),
                (TORCH, "f32"), (TORCH, "int8_dynamic")]
CONV_IMPLS = [(OURS, "f32"), (OURS, "int8"), (OURS, "int8_static"), (OURS, "int4"),
              (TORCH, "f32"), (TORCH, "int8_static")]


def _cases():
    out = []

    def add(label, spec, cache, impls):
        for t in THREADS:
            for impl, enc in impls:
                cid = f"{label}-b{spec.batch}-t{t}{'-' + cache if cache else ''}-{impl}-{enc}"
                cid = cid.replace(" ", "_").replace("->", "to")
                out.append(pytest.param(label, spec, t, cache, impl, enc, id=cid))

    for batch in (64, 1):
        add(report.LINEAR_1024, LayerSpec("linear", (1024, 1024), (batch, 1024)), "",
            LINEAR_IMPLS)
    for batch in (1, 64):
        for cache in ("cold", "warm"):
            add(report.LINEAR_4096, LayerSpec("linear", (4096, 4096), (batch, 4096)), cache,
                LINEAR_IMPLS)
    add(report.CONV_3X3, LayerSpec("conv2d", (64, 64, 3, 3), (1, 64, 56, 56), padding=1), "",
        CONV_IMPLS)
    add(report.CONV_1X1, LayerSpec("conv2d", (256, 256, 1, 1), (1, 256, 28, 28)), "",
        CONV_IMPLS)
    return out


def _reference(spec: LayerSpec, x: np.ndarray) -> np.ndarray:
    torch = torch_mod()
    with torch.inference_mode():
        return torch_float_module(spec, 0)(torch.from_numpy(x)).numpy()


def _rel_err(y, ref) -> float:
    y = np.asarray(y, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))


@pytest.mark.parametrize("label,spec,threads,cache,impl,enc", _cases())
def test_dense(benchmark, label, spec, threads, cache, impl, enc):
    torch = torch_mod()
    group = report.group_name(label, spec.batch, threads, cache)
    x = make_input(spec)
    set_threads(threads)
    kernel = ""

    if impl == OURS:
        values, static = OUR_VALUES[enc]
        first = dsq_model(spec, values, 0, static_quant=static)
        wbytes = dsq_weight_bytes(first, spec)
        copies = copies_for_cold(wbytes) if cache == "cold" else 1
        models = [dsq_model(spec, values, i, static_quant=static) for i in range(copies)]
        for m in models:
            m.threads = threads
        kernel = first.layers([spec.input_shape])[0].get("kernel", "")
        fn = Rotating([m.run for m in models], wbytes) if copies > 1 else first.run
        arg = x
    else:
        builders = {"f32": torch_float_module, "int8_dynamic": torch_dynamic_int8,
                    "int8_static": torch_static_int8_conv}
        try:
            first = builders[enc](spec, 0)
            with torch.inference_mode():
                first(torch.from_numpy(x))
        except Exception as e:  # the peer cannot run this layer: record it, loudly
            record_peer_failure(benchmark, group=group, impl=impl, encoding=enc,
                                threads=threads, spec=spec, error=e)
            return
        wbytes = torch_weight_bytes(first)
        copies = copies_for_cold(wbytes) if cache == "cold" else 1
        mods = [builders[enc](spec, i) for i in range(copies)]
        fn = Rotating(mods, wbytes) if copies > 1 else first
        arg = torch.from_numpy(x)

    with torch.inference_mode():
        rounds, iterations = plan_rounds(fn, arg, budget_s=BUDGET_S, calls=copies)
        y = measure(benchmark, fn, arg, spec=spec, group=group, impl=impl, encoding=enc,
                    threads=threads, weight_bytes=wbytes, rounds=rounds,
                    iterations=iterations, cache=cache or "warm", copies=copies,
                    kernel=kernel)
    if impl == OURS:
        benchmark.extra_info["energy_J"] = modeled_energy(first, x, cache == "cold")
        err = _rel_err(first.run(x), _reference(spec, x))
        benchmark.extra_info["rel_err_vs_torch_f32"] = err
        assert err <= REL_ERR[enc], f"{group} {impl}:{enc}: relative error {err:.3g}"
