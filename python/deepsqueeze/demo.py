"""`deepsqueeze demo`: the main job on a built-in default.

Takes the LeNet-300-100 the package ships (trained on MNIST by bench/train_pretrained.py),
compresses it with the deep_compression recipe on MNIST (gradual pruning with
fine-tuning, 5-bit k-means weight sharing, centroid fine-tuning, export with
relative-index CSR + codebook + Huffman), prints the inspect table of the .dsq file, and
evaluates it in the engine against the dense model: sizes, test errors, latency.
"""
from __future__ import annotations

import os


def run_demo(out_dir: str = "deepsqueeze-demo", threads=None, epochs_scale: float = 1.0) -> int:
    from deepsqueeze.convert.pipeline import compress, load_model
    from .compress_report import print_summary

    model = load_model("lenet_300_100")
    print("LeNet-300-100 (784-300-100-10, 266,610 weights), pretrained on MNIST; "
          "compressing with deep_compression (pruned to 5% / 9% / 26% of the weights per "
          "layer, 5-bit codebooks, Huffman)")
    summary = compress(model, os.path.join(out_dir, "lenet_300_100.dsq"),
                       recipe="deep_compression", data="mnist", epochs_scale=epochs_scale,
                       preset="lenet_300_100",
                       threads=threads)
    print_summary(summary, model_name="LeNet-300-100")
    return 0
