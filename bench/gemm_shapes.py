"""Dense GEMM kernel choice on narrow layers and batch 1: zoo models through the engine,
1 thread, median latency of many runs.

    python bench/gemm_shapes.py --json after.json          # measure the installed package
    python bench/gemm_shapes.py --compare before.json after.json

Run "before" and "after" in the same session (e.g. with PYTHONPATH pointing at a copy of
the old package) since the machine is noisy; the comparison prints after/before ratios.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

CASES = [  # (model, encoding, batch)
    ("resnet_cifar", "int8", 1), ("resnet_cifar", "int8", 64),
    ("resnet_cifar", "f32", 1), ("resnet_cifar", "f32", 64),
    ("lenet5", "int8", 1), ("lenet5", "int8", 64),
    ("lenet5", "f32", 1), ("lenet5", "f32", 64),
    ("lenet_300_100", "int8", 1),
]


def measure(min_seconds: float, min_runs: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import deepsqueeze
    import zoo

    out = {"package": deepsqueeze.__file__, "cases": {}}
    for name, enc, batch in CASES:
        model = deepsqueeze.load(str(zoo.dsq_file(name, enc)), threads=1)
        x = zoo.bench_input(name, batch)
        for _ in range(3):
            model.run(x)
        times = []
        start = time.perf_counter()
        while len(times) < min_runs or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            model.run(x)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        kernels = sorted({str(line.get("kernel", "")) for line in _layers(model)} - {""})
        key = f"{name} {enc} b{batch}"
        out["cases"][key] = {"median_ms": med * 1e3, "runs": len(times), "kernels": kernels}
        print(f"{key:28s} {med * 1e3:9.3f} ms  ({len(times)} runs)  {', '.join(kernels)}", flush=True)
    return out


def _layers(model):
    try:
        return list(model.layers())
    except (AttributeError, TypeError, RuntimeError, ValueError):
        return []


def compare(before: dict, after: dict) -> None:
    print(f"{'case':28s} {'before ms':>10s} {'after ms':>10s} {'after/before':>13s}")
    for key, b in before["cases"].items():
        a = after["cases"].get(key)
        if a:
            print(f"{key:28s} {b['median_ms']:10.3f} {a['median_ms']:10.3f} "
                  f"{a['median_ms'] / b['median_ms']:13.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the medians here")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    ap.add_argument("--seconds", type=float, default=2.0, help="minimum time per case")
    ap.add_argument("--runs", type=int, default=50, help="minimum runs per case")
    args = ap.parse_args()
    if args.compare:
        compare(*(json.loads(Path(p).read_text()) for p in args.compare))
        return
    res = measure(args.seconds, args.runs)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
