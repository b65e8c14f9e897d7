"""`deepsqueeze demo`: export LeNet-5 to .dsq in several encodings, inspect, run, compare.

The weights are random (seeded) until the toolkit ships a trained model; the point here
is the whole path: PyTorch module -> .dsq file -> engine, and how close the engine's
outputs are to PyTorch's.
"""
from __future__ import annotations

import os
import time

import numpy as np


def _best_time(fn, repeat: int = 20) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run_demo(out_dir: str = "deepsqueeze-demo", threads=None, batch: int = 64) -> int:
    try:
        import torch
    except ImportError:
        from .cli import UserError

        raise UserError("the demo needs PyTorch: pip install 'deepsqueeze[convert]' "
                        "(or pip install torch==2.13.0)") from None
    import deepsqueeze
    from deepsqueeze.convert import export, models
    from .inspect import layer_table

    torch.manual_seed(0)
    net = models.lenet5().eval()
    os.makedirs(out_dir, exist_ok=True)
    example = torch.randn(1, 1, 28, 28)
    x = torch.rand(batch, 1, 28, 28)  # MNIST-like: pixels in [0, 1)
    with torch.inference_mode():
        reference = net(x).numpy()
    torch_threads = threads or os.cpu_count() or 1
    torch.set_num_threads(torch_threads)
    with torch.inference_mode():
        t_torch = _best_time(lambda: net(x))
    xn = x.numpy()
    print(f"LeNet-5 (Caffe), random weights, batch {batch}; PyTorch f32: {t_torch * 1e3:.3f} ms "
          f"({torch_threads} thread(s))\n")
    summary = []
    for weights in ("fp32", "int8", "int4"):
        path = os.path.join(out_dir, f"lenet5_{weights}.dsq")
        export(net, example, path, weights=weights)
        model = deepsqueeze.load(path, threads=threads)
        print(f"== {path}")
        print(layer_table(model.layers(), file_bytes=os.path.getsize(path), tensors=path))
        y = model.run(xn)
        err = float(np.abs(y - reference).max() / np.abs(reference).max())
        agree = float((y.argmax(1) == reference.argmax(1)).mean())
        t = _best_time(lambda: model.run(xn))
        summary.append((weights, os.path.getsize(path), err, agree, t))
        print()
    print(f"{'weights':8} {'file bytes':>11} {'max rel err':>12} {'top-1 agree':>12} {'latency':>10} {'vs torch':>9}")
    for weights, size, err, agree, t in summary:
        print(f"{weights:8} {size:>11,} {err:>12.2e} {agree:>12.1%} {t * 1e3:>8.3f}ms {t_torch / t:>8.2f}x")
    print("\nmax rel err = max|engine - PyTorch f32| / max|PyTorch f32| over the batch; "
          "int8/int4 include the weight and activation quantization error.")
    return 0
