"""deepsqueeze: run compressed PyTorch models from one packed .dsq file on a CPU.

The engine needs only numpy; the PyTorch side lives in `deepsqueeze.convert`.
"""
from __future__ import annotations

__version__ = "0.1.0"

# Default of load(max_memory=...) on 64-bit platforms (1 GiB on 32-bit ones), in bytes.
DEFAULT_MAX_MEMORY = 16 << 30

from .errors import ResourceLimitError, UnsupportedModelError  # noqa: E402
from .format import FormatError  # noqa: E402

try:  # the compiled engine; absent only in a source tree that was never built
    from . import _core  # noqa: E402
except ImportError as _error:  # pragma: no cover - exercised only in broken installs
    _core = None
    _core_import_error = _error


def load(path, threads=None, force_kernel="", max_memory=None, decode="load"):
    """Loads a .dsq file; see deepsqueeze.engine.load."""
    if _core is None:
        raise ImportError(f"deepsqueeze's compiled engine is missing ({_core_import_error}); "
                          "reinstall with `pip install .`")
    from .engine import load as _load

    return _load(path, threads=threads, force_kernel=force_kernel, max_memory=max_memory,
                 decode=decode)


def kernels():
    """Every built kernel variant: family, name, isa, tile, and whether this CPU runs it."""
    return _core.kernels()


__all__ = ["load", "kernels", "FormatError", "UnsupportedModelError", "ResourceLimitError",
           "DEFAULT_MAX_MEMORY", "__version__"]
