"""deepsqueeze: run compressed PyTorch models from one packed .dsq file on a CPU.

The engine needs only numpy; the PyTorch side lives in `deepsqueeze.convert`.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .format import FormatError  # noqa: E402

try:  # the compiled engine; absent only in a source tree that was never built
    from . import _core  # noqa: E402
except ImportError as _error:  # pragma: no cover - exercised only in broken installs
    _core = None
    _core_import_error = _error
