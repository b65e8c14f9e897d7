"""Exception types of deepsqueeze (FormatError lives in deepsqueeze.format)."""
from __future__ import annotations


class UnsupportedModelError(RuntimeError):
    """A valid .dsq file that this engine cannot run (an op or encoding without a kernel)."""
