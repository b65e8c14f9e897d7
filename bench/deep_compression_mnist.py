"""Deep Compression's Table 1 on MNIST, reproduced with deepsqueeze.

    python bench/deep_compression_mnist.py [--models lenet_300_100,lenet5] [--quick]

For each model: train the dense network on the 60k MNIST training set, export it as
fp32 .dsq (the dense size), run the deep_compression recipe (gradual pruning with
fine-tuning -> k-means sharing, 5 bits for FC and 8 for conv -> centroid fine-tuning ->
export with relative-index CSR + codebook + Huffman), and evaluate both .dsq files in
the engine on the 10k test set. Sizes are the real file bytes; errors are fractions.
Writes bench/results/deep_compression_mnist.json and .md (next to the paper's numbers).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Dict, List

import torch

import deepsqueeze
from deepsqueeze.convert import core, data, export, models, recipes
from deepsqueeze.convert.pipeline import engine_error
from deepsqueeze.convert.prune import sparsity as sparsity_of

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

# Han, Mao, Dally (ICLR 2016), Table 1 and Tables 2-3 (weights kept per layer).
PAPER = {
    "lenet_300_100": {"baseline_error": 0.0164, "compressed_error": 0.0158,
                      "dense_bytes": 1070e3, "compressed_bytes": 27e3, "ratio": 40},
    "lenet5": {"baseline_error": 0.0080, "compressed_error": 0.0074,
               "dense_bytes": 1720e3, "compressed_bytes": 44e3, "ratio": 39},
}

# The recipe settings are recipes.MNIST_PRESETS (per-layer sparsity a little beyond the
# paper's 8% / 9% / 26% and 66% / 12% / 8% / 19% kept on the big FC layers, L2 during the
# pruning fine-tuning, a final retraining); here only the dense training.
SETTINGS: Dict[str, Dict[str, Any]] = {
    "lenet_300_100": {"build": models.lenet_300_100,
                      "dense": core.TrainConfig(epochs=30, lr=1e-3, lr_schedule="cosine")},
    "lenet5": {"build": models.lenet5,
               "dense": core.TrainConfig(epochs=12, lr=1e-3, lr_schedule="cosine")},
}


def quick(cfg: core.TrainConfig, factor: float) -> core.TrainConfig:
    import dataclasses
    return dataclasses.replace(cfg, epochs=max(cfg.epochs * factor, 0.05))


def run_model(name: str, loaders, out_dir: str, scale: float, seed: int, reuse_dense: bool = False,
              dense_only: bool = False) -> Dict[str, Any]:
    s = SETTINGS[name]
    torch.manual_seed(seed)
    model = s["build"](seed=seed)
    example = torch.zeros(1, 1, 28, 28)
    images, labels = loaders.test_arrays
    t0 = time.time()
    cache = os.path.join(out_dir, f"{name}_dense_seed{seed}{'_quick' if scale < 1 else ''}.pt")
    if reuse_dense and os.path.isfile(cache):
        saved = torch.load(cache)
        model.load_state_dict(saved["state"])
        dense_seconds = saved["seconds"]
        print(f"[{name}] dense model from {cache} (trained in {dense_seconds:.0f} s)", flush=True)
    else:
        print(f"[{name}] training the dense model", flush=True)
        core.fit(model, loaders.train, quick(s["dense"], scale), desc=f"{name} dense")
        dense_seconds = time.time() - t0
        torch.save({"state": model.state_dict(), "seconds": dense_seconds}, cache)
    if dense_only:
        return {}
    dense_path = os.path.join(out_dir, f"{name}_fp32.dsq")
    export(model, example, dense_path, weights="fp32")
    baseline = engine_error(dense_path, images, labels)
    print(f"[{name}] dense: test error {baseline:.4f} ({time.time() - t0:.0f} s)", flush=True)

    import dataclasses
    preset = recipes.MNIST_PRESETS[name]
    config = dataclasses.replace(
        preset, prune_train=quick(preset.prune_train, scale), retrain=quick(preset.retrain, scale),
        centroid_train=quick(preset.centroid_train, scale))
    path = os.path.join(out_dir, f"{name}_deep_compression.dsq")
    result = recipes.deep_compression(model, loaders.train, example, path, config,
                                      val_loader=loaders.test,
                                      log=lambda m: print(f"[{name}] {m}", flush=True))
    compressed = engine_error(path, images, labels)
    torch_error = core.evaluate(model, loaders.test)["error"]
    dense_bytes, compressed_bytes = os.path.getsize(dense_path), result.file_bytes
    record = {
        "model": name,
        "baseline_error": baseline,
        "compressed_error": compressed,
        "dense_bytes": dense_bytes,
        "compressed_bytes": compressed_bytes,
        "ratio": round(dense_bytes / compressed_bytes, 2),
        "torch_compressed_error": torch_error,
        "sparsity": {k: round(v, 4) for k, v in sparsity_of(model)["layers"].items()},
        "dense_train_seconds": round(dense_seconds, 1),
        "seconds": round(time.time() - t0 + (dense_seconds if reuse_dense else 0.0), 1),
        "stages": result.stages,
    }
    print(f"[{name}] compressed: error {compressed:.4f} (torch {torch_error:.4f}), "
          f"{dense_bytes} -> {compressed_bytes} bytes = {record['ratio']}x", flush=True)
    return record


def markdown(records: List[Dict[str, Any]], meta: Dict[str, Any]) -> str:
    lines = ["# Deep Compression on MNIST: the paper's Table 1 and deepsqueeze", "",
             f"Measured {meta['date']} on {meta['machine']} ({meta['threads']} threads), "
             f"torch {meta['torch']}, deepsqueeze {meta['deepsqueeze']}; "
             "errors are top-1 on the 10k MNIST test set, evaluated by running the .dsq files "
             "in the engine; sizes are the real .dsq file bytes (graph, metadata and biases "
             "included).", "",
             "| model | | top-1 error | compressed error | dense size | compressed size | ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        p = PAPER[r["model"]]
        lines.append(f"| {r['model']} | paper | {p['baseline_error']:.2%} | {p['compressed_error']:.2%} "
                     f"| {p['dense_bytes'] / 1e3:.0f} KB | {p['compressed_bytes'] / 1e3:.0f} KB "
                     f"| {p['ratio']}x |")
        lines.append(f"| | deepsqueeze | {r['baseline_error']:.2%} | {r['compressed_error']:.2%} "
                     f"| {r['dense_bytes'] / 1e3:.0f} KB | {r['compressed_bytes'] / 1e3:.1f} KB "
                     f"| {r['ratio']:.1f}x |")
    lines += ["", "Per-layer sparsity reached:", ""]
    for r in records:
        lines.append(f"- {r['model']}: " + ", ".join(f"{k} {v:.1%}" for k, v in r["sparsity"].items())
                     + f" (whole run {r['seconds']:.0f} s)")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet_300_100,lenet5")
    ap.add_argument("--quick", action="store_true", help="a few percent of the epochs (smoke run)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=os.path.join(RESULTS, "deep_compression_files"))
    ap.add_argument("--json", default=os.path.join(RESULTS, "deep_compression_mnist.json"))
    ap.add_argument("--reuse-dense", action="store_true",
                    help="start from the dense model a previous run saved in --out-dir")
    ap.add_argument("--dense-only", action="store_true", help="train and save the dense models, stop")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared machine more threads only fight)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    for n in names:
        if n not in SETTINGS:
            ap.error(f"unknown model {n!r}; choose from {', '.join(SETTINGS)}")
    os.makedirs(args.out_dir, exist_ok=True)
    loaders = data.mnist_loaders(batch_size=128, seed=args.seed)
    scale = 0.03 if args.quick else 1.0
    records = [run_model(n, loaders, args.out_dir, scale, args.seed, args.reuse_dense, args.dense_only)
               for n in names]
    if args.dense_only:
        return 0
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}",
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "deepsqueeze": getattr(deepsqueeze, "__version__", "?")}
    md_path = os.path.splitext(args.json)[0] + ".md"
    if args.quick:
        args.json = args.json.replace(".json", "_quick.json")
        md_path = md_path.replace(".md", "_quick.md")
    with open(args.json, "w") as f:
        json.dump(records, f, indent=1)
    with open(md_path, "w") as f:
        f.write(markdown(records, meta))
    print(markdown(records, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
