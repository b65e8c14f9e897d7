"""Exception types of deepsqueeze (FormatError lives in deepsqueeze.format)."""
from __future__ import annotations


class UnsupportedModelError(RuntimeError):
    """A valid .dsq file that this engine cannot run (an op or encoding without a kernel)."""


class ResourceLimitError(UnsupportedModelError, MemoryError):
    """A model, or a run's input shapes, would need more memory than load(max_memory=...) allows."""
