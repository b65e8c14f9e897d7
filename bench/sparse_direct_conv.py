"""Latency of the zoo's sparse conv nets (Deep Compression 'dc' and 'csr90' files of
resnet_cifar and lenet5), batch 1 and 64, one thread: stride-1 sparse convs on the direct
path (default) vs force_kernel="im2col".

    python bench/sparse_direct_conv.py [--force im2col] [--json out.json]

Uses the cached zoo files in DSQ_BENCH_CACHE (built by bench/zoo.py; run the zoo
benchmarks once first). Prints one line per (model, encoding, batch): the median and
min of the per-run wall time. To compare two builds, run it once per build (e.g. with
PYTHONPATH pointing at the other install) in the same session, alternating.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402

import deepsqueeze  # noqa: E402

CASES = [(name, enc, batch) for name in ("resnet_cifar", "lenet5") for enc in ("dc", "csr90") for batch in (1, 64)]


def time_runs(model, x, min_seconds=1.0, min_runs=15, max_runs=2000):
    for _ in range(3):
        model.run(x)
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < min_seconds and len(times) < max_runs):
        t0 = time.perf_counter()
        model.run(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times)), len(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--force", default="", help='force_kernel for every layer ("im2col": no direct path)')
    ap.add_argument("--json", default="", help="write the results here")
    args = ap.parse_args()
    out = {"engine": deepsqueeze.__file__, "force": args.force, "results": []}
    for name, enc, batch in CASES:
        path = zoo.CACHE_DIR / f"{name}_{enc}.dsq"
        if not path.exists():
            sys.exit(f"{path} is missing: build the zoo files first (bench/zoo.py dsq_file)")
        x = zoo.bench_input(name, batch)
        model = deepsqueeze.load(str(path), threads=1, force_kernel=args.force)
        med, best, n = time_runs(model, x)
        out["results"].append({"model": name, "encoding": enc, "batch": batch, "median_s": med, "min_s": best, "runs": n})
        print(f"{name:14s} {enc:6s} b{batch:<3d} median {med * 1e3:9.3f} ms  min {best * 1e3:9.3f} ms  ({n} runs)",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
