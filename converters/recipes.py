"""Recipes: the verbs chained into the compression pipelines users run end to end.

- `deep_compression`: gradual magnitude pruning with fine-tuning -> k-means weight
  sharing (8 bits for convs, 5 for fully connected layers, as Han et al.) -> centroid
  fine-tuning with the pruning mask fixed -> export with weights="auto" (relative-index
  CSR + codebook + Huffman, chosen losslessly per layer). With values="int8" the shared
  values are replaced by int8 per channel and calibrated u8 activations (the engine's
  sparse int8 kernels: int8 MACs on the nonzeros only, docs/ENERGY.md); values=
  "int8_shared" keeps the weight sharing and stores the shared values as int8 codes with
  one scale per layer, so the same kernels run a file whose values Huffman-code in about
  `bits` bits.
- `quantized_distillation`: a small student trained with quantized weights against a
  teacher (Polino et al.), exported as codebooks.
- `lowrank_int8`: truncated SVD / Tucker-2 factorization, fine-tuning, int8 export.

Each returns a RecipeResult with the compressed model, the exported file's path and
size, and the history of every stage.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from . import core
from .core import TrainConfig

__all__ = ["DeepCompressionConfig", "QuantizedDistillationRecipe", "LowRankInt8Config",
           "RecipeResult", "MNIST_PRESETS", "deep_compression", "quantized_distillation", "lowrank_int8",
           "RECIPES"]

Sparsity = Union[float, Mapping[str, float]]
# DeepCompressionConfig.values
VALUES = ("codebook", "int8", "int8_shared")


@dataclass(frozen=True)
class DeepCompressionConfig:
    """Deep Compression (Han, Mao, Dally 2016) as one configuration.

    sparsity: the final fraction of zero weights, for every layer or per layer name /
    pattern (a dict). prune_steps: pruning is reached in that many steps on a cubic
    schedule (Zhu & Gupta), each followed by `prune_train` fine-tuning; `retrain`, if
    given, is a longer fine-tuning of the final sparse network (mask fixed). conv_bits /
    fc_bits: k-means codebook sizes (2^bits shared values, non-zeros only) with linear
    initialization, then `centroid_train` fine-tunes the shared values (mask fixed).
    values: "codebook" (the paper) or "int8": no weight sharing; the nonzeros are exported
    as int8 per output channel (relative-index CSR + Huffman) with static u8 activation
    ranges calibrated on `calibration_batches` training batches, so every conv/linear runs
    the sparse int8 kernels (grouped convs keep "auto"). "int8_shared": as "int8", after
    the k-means sharing and centroid fine-tuning of "codebook"; each layer's int8 scale is
    max|w| / 127 over the whole layer (int8_scale="tensor"), so its 2^bits shared values
    stay 2^bits int8 codes (each rounded by at most max|w| / 254), which the Huffman
    coding of the values stream stores in about `bits` bits per nonzero. Fold BatchNorm
    into the weights before (e.g. torch.fx fuse): folding after sharing scales each output
    channel's values apart.
    block: prune in blocks of that many input channels (PruneConfig.block); 4 lets the
    sparse int8 kernels run the nonzeros as whole quads (values="int8").
    """
    sparsity: Sparsity = 0.9
    prune_steps: int = 3
    prune_train: TrainConfig = TrainConfig(epochs=2, lr=5e-4, lr_schedule="cosine")
    retrain: Optional[TrainConfig] = None
    conv_bits: int = 8
    fc_bits: int = 5
    cluster_init: str = "linear"
    centroid_train: TrainConfig = TrainConfig(epochs=2, lr=1e-4, lr_schedule="cosine")
    layers: Any = None
    values: str = "codebook"
    calibration_batches: int = 8
    block: int = 1

    def __post_init__(self):
        if self.prune_steps < 1:
            raise ValueError(f"prune_steps must be >= 1, got {self.prune_steps}")
        if self.values not in VALUES:
            raise ValueError(f"values must be one of {', '.join(map(repr, VALUES))}, got {self.values!r}")
        if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 1:
            raise ValueError(f"block must be an int >= 1, got {self.block!r}")
        if self.calibration_batches < 1:
            raise ValueError(f"calibration_batches must be >= 1, got {self.calibration_batches}")
        for name in ("conv_bits", "fc_bits"):
            b = getattr(self, name)
            if not 1 <= b <= 8:
                raise ValueError(f"{name} must be in 1..8, got {b}")


# Settings that reach Deep Compression's LeNet results on MNIST (bench/deep_compression_mnist.py):
# per-layer sparsity a little beyond the paper's on the big FC layers, L2 (weight decay)
# during the pruning fine-tuning, then a longer retraining of the final sparse network.
_L2 = dict(lr_schedule="cosine", weight_decay=1e-4)
MNIST_PRESETS: Dict[str, DeepCompressionConfig] = {
    "lenet_300_100": DeepCompressionConfig(
        sparsity={"fc1": 0.95, "fc2": 0.91, "fc3": 0.74}, prune_steps=4,
        prune_train=TrainConfig(epochs=4, lr=5e-4, **_L2),
        retrain=TrainConfig(epochs=15, lr=2.5e-4, **_L2),
        centroid_train=TrainConfig(epochs=3, lr=1e-4, lr_schedule="cosine")),
    "lenet5": DeepCompressionConfig(
        sparsity={"conv1": 0.34, "conv2": 0.9, "fc1": 0.96, "fc2": 0.85}, prune_steps=4,
        prune_train=TrainConfig(epochs=2, lr=5e-4, **_L2),
        retrain=TrainConfig(epochs=6, lr=2.5e-4, **_L2),
        centroid_train=TrainConfig(epochs=2, lr=1e-4, lr_schedule="cosine")),
}


@dataclass
class RecipeResult:
    model: nn.Module
    path: Optional[str]
    file_bytes: Optional[int]
    stages: List[Dict[str, Any]] = field(default_factory=list)

    def stage(self, name: str, seconds: float, **info) -> None:
        self.stages.append({"stage": name, "seconds": round(seconds, 2), **info})


def _bits_by_layer(model: nn.Module, layers, conv_bits: int, fc_bits: int) -> Dict[str, int]:
    return {name: (conv_bits if isinstance(m, nn.Conv2d) else fc_bits)
            for name, m in core.select_layers(model, layers)}


def _export(model: nn.Module, example_inputs, path: Optional[str], weights="auto", **kw):
    if path is None:
        return None, None
    from .export import export
    export(model, example_inputs, path, weights=weights, **kw)
    return os.fspath(path), os.path.getsize(path)


def _eval(model, loader) -> Optional[float]:
    return None if loader is None else core.evaluate(model, loader)["error"]


def deep_compression(model: nn.Module, train_loader: Iterable, example_inputs=None,
                     path: Optional[str] = None,
                     config: DeepCompressionConfig = DeepCompressionConfig(),
                     val_loader: Optional[Iterable] = None,
                     log: Callable[[str], None] = print) -> RecipeResult:
    """Prune -> fine-tune -> cluster -> fine-tune centroids -> export (path given) in place."""
    from .cluster import ClusterConfig, cluster, fine_tune_centroids
    from .prune import PruneConfig, prune_gradually, sparsity

    result = RecipeResult(model, None, None)
    t = time.perf_counter()
    history = prune_gradually(model, PruneConfig(sparsity=config.sparsity, block=config.block), train_loader,
                              train=config.prune_train, steps=config.prune_steps,
                              schedule="polynomial" if config.prune_steps > 1 else "one_shot",
                              val_loader=None, layers=config.layers)
    if config.retrain is not None:
        core.fit(model, train_loader, config.retrain, desc="retrain pruned")
    err = _eval(model, val_loader)
    result.stage("prune", time.perf_counter() - t, sparsity=sparsity(model), error=err)
    log(f"pruned: sparsity {sparsity(model)['total']:.3f}"
        + (f", error {err:.4f}" if err is not None else ""))

    if config.values in ("codebook", "int8_shared"):
        t = time.perf_counter()
        bits = _bits_by_layer(model, config.layers, config.conv_bits, config.fc_bits)
        cluster(model, ClusterConfig(bits=bits, init=config.cluster_init), layers=config.layers)
        err = _eval(model, val_loader)
        result.stage("cluster", time.perf_counter() - t, bits=bits, error=err)
        log("clustered" + (f": error {err:.4f}" if err is not None else ""))

        t = time.perf_counter()
        fine_tune_centroids(model, train_loader, config.centroid_train, val_loader=None)
        err = _eval(model, val_loader)
        result.stage("centroid fine-tune", time.perf_counter() - t, error=err)
        log("centroids fine-tuned" + (f": error {err:.4f}" if err is not None else ""))
    core.record(model, "recipe", name="deep_compression", retrain=config.retrain, values=config.values)

    if path is not None:
        if example_inputs is None:
            raise ValueError("deep_compression: export needs example_inputs")
        t = time.perf_counter()
        if config.values == "codebook":
            result.path, result.file_bytes = _export(model, example_inputs, path, weights="auto")
        else:
            spec = sparse_int8_spec(model, per_tensor_scale=config.values == "int8_shared")
            result.path, result.file_bytes = _export(model, example_inputs, path, weights=spec,
                                                     calibration=_calibration_batches(train_loader,
                                                                                      config.calibration_batches))
        result.stage("export", time.perf_counter() - t, bytes=result.file_bytes, values=config.values)
    return result


# Relative-index CSR (4-bit gaps, as Deep Compression's conv layers) + int8 per output
# channel + Huffman where it saves bytes.
SPARSE_INT8 = {"values": "int8", "layout": "csr_relative", "index_bits": 4, "huffman": "auto"}


def sparse_int8_spec(model: nn.Module, per_tensor_scale: bool = False) -> Dict[str, Any]:
    """Export spec: SPARSE_INT8 for every Linear and ungrouped Conv2d, "auto" for grouped
    convs (no sparse kernel). per_tensor_scale: one int8 scale per layer (shared weights)."""
    enc = dict(SPARSE_INT8, **({"int8_scale": "tensor"} if per_tensor_scale else {}))
    return {name: (dict(enc) if isinstance(m, nn.Linear) or m.groups == 1 else "auto")
            for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def _calibration_batches(loader: Iterable, n: int) -> List[torch.Tensor]:
    """The inputs of the first n batches of a (inputs, targets) loader."""
    out = []
    for batch in loader:
        out.append(batch[0] if isinstance(batch, (tuple, list)) else batch)
        if len(out) >= n:
            break
    if not out:
        raise ValueError("deep_compression: calibration needs at least one training batch")
    return out


@dataclass(frozen=True)
class QuantizedDistillationRecipe:
    """A student trained with b-bit quantized weights against a teacher (Polino et al.)."""
    bits: int = 4
    temperature: float = 4.0
    alpha: float = 0.7
    train: TrainConfig = TrainConfig(epochs=5, lr=1e-3, lr_schedule="cosine")


def quantized_distillation(student: nn.Module, teacher: nn.Module, train_loader: Iterable,
                           example_inputs=None, path: Optional[str] = None,
                           config: QuantizedDistillationRecipe = QuantizedDistillationRecipe(),
                           val_loader: Optional[Iterable] = None,
                           log: Callable[[str], None] = print) -> RecipeResult:
    """Quantized distillation of `student` from `teacher`, exported with codebooks."""
    from .distill import DistillConfig, QuantizedDistillConfig
    from .distill import quantized_distillation as run
    from .quantize import QuantizeConfig

    result = RecipeResult(student, None, None)
    t = time.perf_counter()
    qd = QuantizedDistillConfig(
        distill=DistillConfig(temperature=config.temperature, alpha=config.alpha),
        quantize=QuantizeConfig(bits=config.bits, scheme="asymmetric", granularity="channel"))
    run(student, teacher, train_loader, qd, config.train, val_loader=val_loader)
    err = _eval(student, val_loader)
    result.stage("quantized distillation", time.perf_counter() - t, error=err)
    log(f"student distilled at {config.bits} bits" + (f": error {err:.4f}" if err is not None else ""))
    core.record(student, "recipe", name="quantized_distillation", bits=config.bits)
    if path is not None:
        if example_inputs is None:
            raise ValueError("quantized_distillation: export needs example_inputs")
        result.path, result.file_bytes = _export(student, example_inputs, path, weights="auto")
    return result


@dataclass(frozen=True)
class LowRankInt8Config:
    """Factorize (rank by retained energy), fine-tune, export int8 weights."""
    energy: float = 0.9
    conv_method: str = "tucker2"
    train: TrainConfig = TrainConfig(epochs=2, lr=5e-4, lr_schedule="cosine")
    layers: Any = None


def lowrank_int8(model: nn.Module, train_loader: Iterable, example_inputs=None,
                 path: Optional[str] = None, config: LowRankInt8Config = LowRankInt8Config(),
                 val_loader: Optional[Iterable] = None, calibration=None,
                 log: Callable[[str], None] = print) -> RecipeResult:
    """Low-rank factorization + fine-tuning, exported with int8 weights (returns the new model)."""
    from .lowrank import LowRankConfig, lowrank

    t = time.perf_counter()
    before = sum(p.numel() for p in model.parameters())
    model = lowrank(model, LowRankConfig(energy=config.energy, conv_method=config.conv_method),
                    layers=config.layers)
    after = sum(p.numel() for p in model.parameters())
    core.fit(model, train_loader, config.train, desc="fine-tune low-rank")
    err = _eval(model, val_loader)
    result = RecipeResult(model, None, None)
    result.stage("lowrank", time.perf_counter() - t, params_before=before, params_after=after,
                 error=err)
    log(f"factorized: {before} -> {after} parameters" + (f", error {err:.4f}" if err is not None else ""))
    core.record(model, "recipe", name="lowrank_int8")
    if path is not None:
        if example_inputs is None:
            raise ValueError("lowrank_int8: export needs example_inputs")
        result.path, result.file_bytes = _export(model, example_inputs, path, weights="int8",
                                                 calibration=calibration)
    return result


RECIPES = {"deep_compression": deep_compression, "quantized_distillation": quantized_distillation,
           "lowrank_int8": lowrank_int8}
