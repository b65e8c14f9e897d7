"""The end-to-end compression job behind `deepsqueeze compress` and `deepsqueeze demo`:
load a model, evaluate it, run a recipe on a built-in data set, export, evaluate the
.dsq file in the engine, and time both."""
from __future__ import annotations

import copy
import dataclasses
import os
import time
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
import torch.nn as nn

from . import core, models, recipes
from .export import export

__all__ = ["BUILTIN_MODELS", "DATASETS", "load_model", "engine_error", "compress", "best_time"]

# name -> constructor of a model with shipped trained weights
BUILTIN_MODELS: Dict[str, Callable[[], nn.Module]] = {
    "lenet_300_100": lambda: models.lenet_300_100(pretrained=True),
}
DATASETS = ("mnist",)


def load_model(spec: str) -> nn.Module:
    """A built-in pretrained model by name, or a whole nn.Module saved with torch.save."""
    if spec in BUILTIN_MODELS:
        return BUILTIN_MODELS[spec]()
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"{spec}: no such file, and not a built-in model "
                                f"({', '.join(BUILTIN_MODELS)})")
    # A pickled module runs code when loaded: only load files you trust.
    obj = torch.load(spec, map_location="cpu", weights_only=False)
    if isinstance(obj, dict):
        raise ValueError(f"{spec} holds a state_dict, not a model: save the whole module "
                         "(torch.save(model, path)) or use the Python API with your model class")
    if not isinstance(obj, nn.Module):
        raise ValueError(f"{spec} holds a {type(obj).__name__}, not a torch.nn.Module")
    return obj.eval()


def engine_error(path: str, images: np.ndarray, labels: np.ndarray, threads=None,
                 batch: int = 1000) -> float:
    """Top-1 error of the .dsq file at `path`, run by the engine."""
    import deepsqueeze
    model = deepsqueeze.load(path, threads=threads)
    wrong = 0
    for i in range(0, len(images), batch):
        wrong += int((model.run(images[i:i + batch]).argmax(axis=1) != labels[i:i + batch]).sum())
    return wrong / len(images)


def best_time(fn, repeat: int = 30, min_seconds: float = 0.3, max_calls: int = 100_000) -> float:
    """Best wall time of one call over at least `repeat` calls and `min_seconds` (a
    microsecond call needs thousands of calls to reach its warm steady state)."""
    fn()
    best, total, n = float("inf"), 0.0, 0
    while (n < repeat or total < min_seconds) and n < max_calls:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, total, n = min(best, dt), total + dt, n + 1
    return best


def _scaled(cfg: core.TrainConfig, scale: float, progress: bool) -> core.TrainConfig:
    return dataclasses.replace(cfg, epochs=max(cfg.epochs * scale, 0.02), progress=progress)


def compress(model: nn.Module, out_path: str, recipe: str = "deep_compression",
             data: str = "mnist", sparsity: Optional[recipes.Sparsity] = None, fc_bits: int = 5,
             conv_bits: int = 8, epochs_scale: float = 1.0, threads: Optional[int] = None,
             preset: Optional[str] = None, values: str = "codebook", block: int = 1,
             progress: bool = True, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Compress `model` with `recipe` on a built-in data set, export to `out_path`, and
    return the measured sizes, errors and latencies. preset: a recipes.MNIST_PRESETS name
    whose deep_compression settings to start from (sparsity given here overrides it).
    values: deep_compression's "codebook" (k-means, the paper), "int8" (sparse int8
    with calibrated activations) or "int8_shared" (both; see recipes.DeepCompressionConfig). block: deep_compression
    prunes in blocks of that many input channels (PruneConfig.block)."""
    if data not in DATASETS:
        raise ValueError(f"data={data!r}: the built-in data sets are {', '.join(DATASETS)}; "
                         "use the Python API (deepsqueeze.convert.recipes) for your own")
    if recipe not in ("deep_compression", "lowrank_int8"):
        raise ValueError(f"recipe={recipe!r}: the command line runs deep_compression or "
                         "lowrank_int8 (quantized_distillation needs a teacher: use the Python API)")
    from .data import mnist_loaders
    loaders = mnist_loaders(batch_size=128)
    images, labels = loaders.test_arrays
    example = torch.zeros(1, *images.shape[1:])
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)

    dense_path = os.path.splitext(out_path)[0] + ".fp32.dsq"
    export(model, example, dense_path, weights="fp32")
    dense_error = engine_error(dense_path, images, labels, threads)
    log(f"dense model: test error {dense_error:.2%}, {os.path.getsize(dense_path):,} bytes as fp32 .dsq")

    t0 = time.perf_counter()
    dense_net = copy.deepcopy(model)
    if recipe == "deep_compression":
        d = recipes.MNIST_PRESETS.get(preset or "", recipes.DeepCompressionConfig())
        config = dataclasses.replace(
            d, sparsity=d.sparsity if sparsity is None else sparsity, fc_bits=fc_bits,
            conv_bits=conv_bits, values=values, block=block, prune_train=_scaled(d.prune_train, epochs_scale, progress),
            retrain=None if d.retrain is None else _scaled(d.retrain, epochs_scale, progress),
            centroid_train=_scaled(d.centroid_train, epochs_scale, progress))
        result = recipes.deep_compression(model, loaders.train, example, out_path, config,
                                          val_loader=loaders.test, log=log)
    else:
        d = recipes.LowRankInt8Config()
        config = recipes.LowRankInt8Config(train=_scaled(d.train, epochs_scale, progress))
        result = recipes.lowrank_int8(model, loaders.train, example, out_path, config,
                                      val_loader=loaders.test, calibration=loaders.calibration(),
                                      log=log)
    seconds = time.perf_counter() - t0
    compressed_error = engine_error(out_path, images, labels, threads)

    import deepsqueeze
    engine = deepsqueeze.load(out_path, threads=threads)
    torch_threads = threads or os.cpu_count() or 1
    torch.set_num_threads(torch_threads)
    timings = {}
    net = dense_net.eval()  # PyTorch runs the dense model: what a user runs today
    for batch in (1, 64):
        x = images[:batch]
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            t_torch = best_time(lambda: net(xt))
        t_engine = best_time(lambda: engine.run(x))
        timings[batch] = {"torch_f32_ms": t_torch * 1e3, "engine_ms": t_engine * 1e3}
    dense_bytes, compressed_bytes = os.path.getsize(dense_path), os.path.getsize(out_path)
    return {
        "recipe": recipe, "dense_path": dense_path, "path": out_path,
        "dense_error": dense_error, "compressed_error": compressed_error,
        "dense_bytes": dense_bytes, "compressed_bytes": compressed_bytes,
        "ratio": dense_bytes / compressed_bytes, "seconds": seconds,
        "latency": timings, "threads": torch_threads, "stages": result.stages,
    }
