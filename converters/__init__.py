"""deepsqueeze.convert: the PyTorch side of deepsqueeze (torch is imported only here).

Export: `export(module, example_inputs, path, weights=...)` traces a trained nn.Module
with torch.fx and writes a .dsq file the engine runs; `weights` is a preset ("fp32",
"f16", "int8", "int4"), "auto" (lossless sparse / codebook / Huffman encodings where they
win) or a per-layer WeightSpec.

The compression toolkit, one verb per technique, each configured by a frozen dataclass
(recorded in the exported file's metadata), changing the model in place:
- level 1, weights: `prune` / `prune_gradually` / `prune_channels`, `quantize` /
  `quantize_aware_training`, `cluster` / `fine_tune_centroids` (Huffman coding happens in
  the exporter; `size_report` shows bits per weight before and after it);
- level 2, structure: `lowrank` (SVD, Tucker-2, spatial SVD);
- level 3, knowledge transfer: `distill`, `quantized_distillation`,
  `differentiable_quantization`;
- level 4-lite: `sensitivity.scan` / `sensitivity.choose`.
`recipes` chains them (deep_compression, quantized_distillation, lowrank_int8); `core`
holds the shared training loop (`fit`, `TrainConfig`, `evaluate`); `models` the reference
networks; `data` the MNIST loaders.

The verbs `prune`, `quantize`, `cluster`, `lowrank` and `distill` share their names with
the submodules that define them; the package attribute is the verb. Everything else of
a submodule is imported from it by name (`from deepsqueeze.convert.prune import
schedule_targets`).
"""
from __future__ import annotations

from . import core, data, models, recipes, sensitivity
from .cluster import ClusterConfig, cluster, cluster_tensor, codebook, fine_tune_centroids
from .core import TrainConfig, bake, compression_record, evaluate, fit, select_layers
from .distill import (DifferentiableQuantConfig, DistillConfig, QuantizedDistillConfig,
                      differentiable_quantization, distill, quantized_distillation)
from .export import (AUTO_BLOCKS, AUTO_INDEX_BITS, ENCODING_OPTIONS, PRODUCER,
                     SPARSE_MAX_DENSITY_KXK, SPARSE_MAX_DENSITY_POINTWISE, WEIGHT_ENCODINGS,
                     Encoding, UnsupportedOperationError, WeightSpec, auto_encode, build, export,
                     export_to_bytes)
from .lowrank import LowRankConfig, lowrank, lowrank_and_finetune
from .prune import (PruneConfig, StructuredPruneConfig, masks, prune, prune_channels,
                    prune_gradually, sparsity)
from .quantize import QuantizeConfig, fake_quantize, quantize, quantize_aware_training, quantize_tensor
from .recipes import (DeepCompressionConfig, LowRankInt8Config, QuantizedDistillationRecipe,
                      deep_compression, lowrank_int8)
from .report import format_size_report, size_report

__all__ = [
    # export
    "export", "export_to_bytes", "build", "UnsupportedOperationError", "PRODUCER",
    "WEIGHT_ENCODINGS", "ENCODING_OPTIONS", "WeightSpec", "Encoding", "auto_encode",
    "SPARSE_MAX_DENSITY_POINTWISE", "SPARSE_MAX_DENSITY_KXK", "AUTO_INDEX_BITS", "AUTO_BLOCKS",
    # shared
    "core", "data", "models", "recipes", "sensitivity", "TrainConfig", "fit", "evaluate",
    "select_layers", "bake", "compression_record",
    # verbs
    "PruneConfig", "StructuredPruneConfig", "prune", "prune_gradually", "prune_channels",
    "sparsity", "masks", "QuantizeConfig", "quantize", "quantize_aware_training",
    "quantize_tensor", "fake_quantize", "ClusterConfig", "cluster", "cluster_tensor",
    "fine_tune_centroids", "codebook", "LowRankConfig", "lowrank", "lowrank_and_finetune",
    "DistillConfig",
    "QuantizedDistillConfig", "DifferentiableQuantConfig", "distill", "quantized_distillation",
    "differentiable_quantization", "size_report", "format_size_report",
    # recipes
    "DeepCompressionConfig", "QuantizedDistillationRecipe", "LowRankInt8Config",
    "deep_compression", "lowrank_int8",
]
