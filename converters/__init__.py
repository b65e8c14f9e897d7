"""deepsqueeze.convert: the PyTorch side of deepsqueeze (torch is imported only here).

`export(module, example_inputs, path, weights=...)` traces a trained nn.Module with
torch.fx and writes a .dsq file the engine runs; `models` holds reference networks.
"""
from __future__ import annotations

from . import models
from .export import (PRODUCER, WEIGHT_ENCODINGS, UnsupportedOperationError, build, export,
                     export_to_bytes)

__all__ = ["export", "export_to_bytes", "build", "UnsupportedOperationError", "PRODUCER",
           "WEIGHT_ENCODINGS", "models"]

