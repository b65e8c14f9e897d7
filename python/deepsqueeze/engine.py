"""The engine's Python API: load a .dsq file and run it (numpy only)."""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from . import _core

ArrayOrDict = Union[np.ndarray, Sequence[np.ndarray], Mapping[str, np.ndarray]]


class Model:
    """A loaded .dsq model. Thread-safe: one Model may be run from many threads at once."""

    def __init__(self, core: "_core.Model", path: Optional[str] = None):
        self._core = core
        self._run = core.run
        # one input, one output: run() takes the binding's fast path (no tuple, no list)
        self._run_one = core.run_one if len(core.inputs()) == 1 and len(core.outputs()) == 1 else None
        self.path = path
        self._inputs = core.inputs()
        self._outputs = core.outputs()
        self._input_names = [i["name"] for i in self._inputs]

    @property
    def inputs(self) -> List[dict]:
        """Inputs: dicts of name, shape (None = any size) and dtype."""
        return [dict(i) for i in self._inputs]

    @property
    def outputs(self) -> List[dict]:
        return [dict(o) for o in self._outputs]

    @property
    def metadata(self) -> Dict[str, Union[str, int, float]]:
        return self._core.metadata()

    @property
    def threads(self) -> int:
        return self._core.threads

    @threads.setter
    def threads(self, n: int) -> None:
        self._core.threads = int(n)

    @property
    def counters(self) -> Dict[str, int]:
        """Work done since load (or reset_counters): runs, MACs by precision, bytes."""
        return self._core.counters()

    @property
    def max_memory(self) -> int:
        """The max_memory limit in force (bytes)."""
        return self._core.max_memory

    @property
    def weight_memory(self) -> int:
        """Bytes held for the weights after load (packed kernel layouts with decode="load",
        the streams as stored plus tile tables with decode="stream")."""
        return self._core.weight_memory

    @property
    def decode(self) -> str:
        """When compressed weights are decoded: "load" (once) or "stream" (per tile, per run)."""
        return self._core.decode

    def reset_counters(self) -> None:
        self._core.reset_counters()

    @property
    def layer_counters(self) -> List[dict]:
        """Per layer (layers() order), the counters summed over the runs since load or
        reset_counters(): MACs by precision, skipped MACs, table look-ups, bytes. Empty
        before the first run."""
        return self._core.layer_counters()

    def energy(self, cache_bytes: Optional[int] = None, costs: Optional[Mapping[str, float]] = None) -> dict:
        """Modeled energy of one run, averaged over the runs since load or reset_counters()
        (docs/ENERGY.md): {"total_joules", "breakdown_joules", "layers": [...], ...}.

        cache_bytes: the cache the weights must fit to count as SRAM reads (default 32 MiB).
        costs: picojoules per operation overriding energy.HOROWITZ_45NM_PJ entries.
        Raises RuntimeError before the first run.
        """
        from . import energy as _energy

        runs = int(self._core.counters()["runs"])
        if runs == 0:
            raise RuntimeError("Model.energy(): the model has not run since load or reset_counters(); "
                               "call run() first")
        kwargs = {} if cache_bytes is None else {"cache_bytes": cache_bytes}
        return _energy.estimate(self.layers(), self._core.layer_counters(), runs, costs=costs, **kwargs)

    def run(self, x: ArrayOrDict):
        """Runs the model.

        One input: pass an array, get an array (or a tuple when the model has several
        outputs). Several inputs: a sequence in input order or a dict by name; the result
        is then a dict by output name. C-contiguous float32 arrays are read in place.
        """
        if self._run_one is not None and type(x) is np.ndarray:
            return self._run_one(x)
        if isinstance(x, np.ndarray):
            outs = self._run((x,))
            return outs[0] if len(outs) == 1 else tuple(outs)
        if isinstance(x, Mapping):
            missing = [n for n in self._input_names if n not in x]
            extra = [k for k in x if k not in self._input_names]
            if missing or extra:
                raise ValueError(
                    f"inputs by name: expected {self._input_names}, missing {missing}, unexpected {extra}")
            outs = self._run([x[n] for n in self._input_names])
        else:
            outs = self._run(list(x))
        return {o["name"]: y for o, y in zip(self._outputs, outs)}

    __call__ = run

    def layers(self, input_shapes: Optional[Sequence[Sequence[int]]] = None) -> List[dict]:
        """Per-layer facts: op, kernel, shapes, weights (encoding, payload bytes), cost."""
        return self._core.layers(None if input_shapes is None else [list(s) for s in input_shapes])

    def summary(self, input_shapes: Optional[Sequence[Sequence[int]]] = None) -> str:
        """A per-layer table: op, output shape, weight encoding, payload bytes, kernel."""
        from .inspect import layer_table

        return layer_table(self.layers(input_shapes), tensors=self.path)

    def __repr__(self) -> str:
        ins = ", ".join(f"{i['name']}{tuple('N' if d is None else d for d in i['shape'])}" for i in self._inputs)
        return f"<deepsqueeze.Model {self.path or ''} inputs: {ins}; {len(self.layers())} layers>"


def load(path: Union[str, "os.PathLike[str]", bytes], threads: Optional[int] = None,
         force_kernel: str = "", max_memory: Optional[int] = None, decode: str = "load") -> Model:
    """Loads a .dsq file (a path, or the file's bytes).

    threads: worker threads for this model (default: all hardware threads).
    force_kernel: run every conv/linear of the matching family on this kernel (tests);
    three values are path switches instead: "im2col" (convolutions keep the im2col path:
    no direct sparse conv, no int8 implicit GEMM), "unfused" (residual adds run as their
    own layer instead of inside the conv before them) and "unchained" (activations stay
    f32 between int8 layers instead of passing as u8 codes). Results are the same bits.
    max_memory: bytes the model may use, its packed weights plus the activations and
    scratch of one run (default deepsqueeze.DEFAULT_MAX_MEMORY, 16 GiB; 1 GiB on 32-bit
    platforms). A file needing more fails to load, and a run whose input shapes need more
    (a huge batch) fails, with ResourceLimitError (a MemoryError).
    decode: "load" decodes compressed weights once into the kernels' layouts; "stream"
      keeps the sparse / codebook layers' streams as stored (Huffman-coded or bit-packed)
      and decodes them tile by tile inside each run: less resident memory
      (Model.weight_memory), identical results, counters['huffman_symbols'] per run.
    Raises deepsqueeze.FormatError for a corrupt file, UnsupportedModelError for a file
    this engine cannot run, OSError when the file cannot be read.
    The file is read once: the model keeps no reference to it, so it may be changed or
    deleted after load returns (docs/HARDENING.md).
    """
    n = 0 if threads is None else int(threads)
    if n < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    if not isinstance(decode, str) or decode not in ("load", "stream"):
        raise ValueError(f'decode must be "load" or "stream", got {decode!r}')
    mem = 0 if max_memory is None else max_memory
    if isinstance(mem, bool) or not isinstance(mem, int):
        raise TypeError(f"max_memory must be an int (bytes) or None, got {type(max_memory).__name__}")
    if mem <= 0 and max_memory is not None:
        raise ValueError(f"max_memory must be > 0 bytes, got {max_memory}")
    mem = min(mem, (1 << 64) - 1)  # more than a u64 holds is no limit at all
    if isinstance(path, (bytes, bytearray, memoryview)):
        return Model(_core.Model.from_bytes(path, n, force_kernel, mem, decode))
    p = os.fspath(path)
    try:
        core = _core.Model.from_file(p, n, force_kernel, mem, decode)
    except RuntimeError as e:
        if "cannot open" in str(e) or "not a regular file" in str(e):
            raise OSError(str(e)) from None
        raise
    return Model(core, p)
