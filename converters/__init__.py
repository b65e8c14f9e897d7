"""deepsqueeze.convert: the PyTorch side of deepsqueeze (torch is imported only here).

`export(module, example_inputs, path, weights=...)` traces a trained nn.Module with
torch.fx and writes a .dsq file the engine runs; `weights` is a preset ("fp32", "f16",
"int8", "int4"), "auto" (lossless sparse / codebook / Huffman encodings where they win)
or a per-layer WeightSpec. `models` holds reference networks.
"""
from __future__ import annotations

from . import models
from .export import (AUTO_BLOCKS, AUTO_INDEX_BITS, ENCODING_OPTIONS, PRODUCER,
                     SPARSE_MAX_DENSITY_KXK, SPARSE_MAX_DENSITY_POINTWISE, WEIGHT_ENCODINGS,
                     Encoding, UnsupportedOperationError, WeightSpec, auto_encode, build, export,
                     export_to_bytes)

__all__ = ["export", "export_to_bytes", "build", "UnsupportedOperationError", "PRODUCER",
           "WEIGHT_ENCODINGS", "ENCODING_OPTIONS", "WeightSpec", "Encoding", "auto_encode",
           "SPARSE_MAX_DENSITY_POINTWISE", "SPARSE_MAX_DENSITY_KXK", "AUTO_INDEX_BITS",
           "AUTO_BLOCKS", "models"]

