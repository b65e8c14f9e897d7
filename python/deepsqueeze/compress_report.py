"""Printing the result of a compression job (`deepsqueeze compress` / `demo`)."""
from __future__ import annotations

import os
from typing import Any, Dict


def print_summary(s: Dict[str, Any], model_name: str = "model") -> None:
    import deepsqueeze
    from .inspect import layer_table

    engine = deepsqueeze.load(s["path"], threads=1)
    print(f"\n== {s['path']}")
    print(layer_table(engine.layers(), file_bytes=os.path.getsize(s["path"]), tensors=s["path"]))
    print(f"\n{model_name}, recipe {s['recipe']} ({s['seconds']:.0f} s of compression); "
          "errors: top-1 on the 10k MNIST test set, both files run by the engine")
    print(f"{'':14} {'file bytes':>11} {'test error':>11}")
    print(f"{'dense fp32':14} {s['dense_bytes']:>11,} {s['dense_error']:>11.2%}")
    print(f"{'compressed':14} {s['compressed_bytes']:>11,} {s['compressed_error']:>11.2%}")
    print(f"{s['ratio']:.1f}x smaller; error {100 * (s['compressed_error'] - s['dense_error']):+.2f} "
          "percentage points")
    print(f"\nlatency ({s['threads']} thread(s), best of many runs):")
    print(f"{'batch':>6} {'PyTorch f32 dense':>18} {'deepsqueeze .dsq':>17} {'speed-up':>9}")
    for batch, t in sorted(s["latency"].items()):
        print(f"{batch:>6} {t['torch_f32_ms']:>16.3f}ms {t['engine_ms']:>15.3f}ms "
              f"{t['torch_f32_ms'] / t['engine_ms']:>8.2f}x")
