"""Export a trained PyTorch model to a .dsq file (docs/FORMAT.md).

The model is traced with torch.fx (`symbolic_trace` semantics: modules of torch.nn are
leaves, everything else is traced through), the shapes of the example inputs are
propagated through the traced graph, and every fx node is mapped to an op of the .dsq
graph vocabulary:

- BatchNorm2d after a Conv2d (BatchNorm1d after a Linear) is folded into the conv's
  weight and bias when the conv output feeds only the BatchNorm; any other BatchNorm
  becomes a `batch_norm` node.
- A ReLU / ReLU6 (module, functional, method, `hardtanh(0, 6)` or `clamp(0, 6)`) is
  fused into the `activation` attribute of the conv / linear / add before it when that
  output feeds only the activation.
- Dropout and Identity are dropped (the model is exported in eval mode).
- `x.size(i)` / `x.shape[i]` are supported only as arguments of `view` / `reshape`:
  the batch dimension becomes 0 ("copy that dim"), other dims become constants.

Anything else raises `UnsupportedOperationError`, naming the first unsupported module
type or function, the fx node and where it is (module path and source line).

The encoding of each conv / linear weight comes from `weights=` (a WeightSpec, see
below): a preset for all layers, "auto" (lossless: sparse layouts, codebooks and
Huffman where they make the layer smaller and the engine runs it fast), or a per-layer
dict / callable of presets and encode_tensor options.
"""
from __future__ import annotations

import fnmatch
import json
import math
import operator
import os
import re
import warnings
from dataclasses import dataclass
from numbers import Integral
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.node import Node as FxNode
from torch.fx.node import _get_qualified_name
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.modules.utils import _pair

from deepsqueeze import format as dsqformat
from deepsqueeze.builder import GraphBuilder
from .core import baked_copy, compression_record
from deepsqueeze.encode import check_group_size, decode_tensor, encode_tensor, payload_bytes

__all__ = ["export", "export_to_bytes", "build", "UnsupportedOperationError", "PRODUCER",
           "WEIGHT_ENCODINGS", "ENCODING_OPTIONS", "SPARSE_MAX_DENSITY_POINTWISE",
           "SPARSE_MAX_DENSITY_KXK", "AUTO_INDEX_BITS", "AUTO_BLOCKS", "auto_encode",
           "WeightSpec", "Encoding"]

PRODUCER = "deepsqueeze.convert 0.1.0"

# exporter setting -> tensor-table `values` encoding of conv / linear weights
WEIGHT_ENCODINGS = {
    "fp32": "f32", "f32": "f32",
    "f16": "f16", "fp16": "f16",
    "int8": "int8_channel",
    "int4": "int4_group",
}
_ACTIVATION_CODES = {"relu": 1, "relu6": 2}
_TORCH_DIR = os.path.dirname(torch.__file__)

# ---------------------------------------------------------------------------------------
# Weight specs: the encoding of each conv / linear weight
#
# `weights=` of export/build is a WeightSpec:
#   - a preset for every layer: "fp32" (= "f32"), "f16" (= "fp16"), "int8", "int4",
#     or "auto" (see auto_encode);
#   - one Encoding dict (its keys are all ENCODING_OPTIONS, none a module name) for
#     every layer;
#   - a dict {module name or fnmatch pattern: Encoding}. A layer takes the encoding of
#     its exact fully-qualified module name (e.g. "features.3.conv"), else of the first
#     pattern (in dict order) that matches it, else of "*", else "fp32". A key other
#     than "*" that matches no Conv2d / Linear is an error (a typo would otherwise be
#     silently ignored);
#   - a callable(module, fqn) -> Encoding, called once per Conv2d / Linear (None =
#     "fp32").
# An Encoding is a preset string (including "auto") or a dict of encode_tensor keyword
# arguments (ENCODING_OPTIONS); "values" also accepts the preset names ("int8", ...).
# Biases and BatchNorm parameters are always f32. Every problem raises ValueError naming
# the module. The encoding stored for each layer is recorded in the export_config
# metadata ("layers": {fqn: encode_tensor arguments}).

Encoding = Union[str, Mapping[str, Any]]
WeightSpec = Union[str, Mapping[str, Encoding], Callable[[nn.Module, str], Optional[Encoding]]]

ENCODING_OPTIONS = ("values", "layout", "index_bits", "block", "codebook_bits",
                    "codebook_per_row", "huffman", "group_size", "int8_scale")

# "auto": weights are kept exactly as stored in f32 (after BatchNorm folding; no new
# rounding) in the encoding with the smallest payload among those the engine runs fast.
#
# A sparse layout (csr, csr_relative, block_csr) is a candidate only when the layer's
# density (nonzeros / numel) is at most the threshold where the engine's sparse kernel
# family (spmm_f32: csr with f32 or codebook values, lanes along batch/pixels) beats its
# dense GEMM: linear layers and 1x1 convolutions run the sparse matrix product directly,
# a kxk convolution pays an im2col per chunk of pixels on top, so it needs sparser
# weights. Grouped (including depthwise) convolutions have no sparse kernel: dense only.
SPARSE_MAX_DENSITY_POINTWISE = 0.4  # linear, 1x1 conv
SPARSE_MAX_DENSITY_KXK = 0.3  # kxk conv (k > 1), groups == 1
# csr_relative gap widths tried (Deep Compression uses 4 for conv, 5 for fc layers).
AUTO_INDEX_BITS = (4, 5)
# block_csr shapes tried, each only when its blocks are at least AUTO_BLOCK_MIN_FILL full
# (below that the zeros stored inside blocks cost more than csr's column indices save).
AUTO_BLOCKS = ((1, 4), (4, 1), (4, 4))
AUTO_BLOCK_MIN_FILL = 0.5
_AUTO_HUFFMAN = "auto"  # Huffman-code a stream only where it saves bytes


def _spec_error(where: str, message: str) -> ValueError:
    return ValueError(f"weights for {where}: {message}")


def _is_int(x) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


def _normalize_encoding(enc, where: str, group_size: int):
    """An Encoding as "auto" or a dict of encode_tensor arguments (JSON-able), checked."""
    if enc is None:
        enc = "fp32"
    if isinstance(enc, str):
        if enc == "auto":
            return "auto"
        if enc in WEIGHT_ENCODINGS:
            out = {"values": WEIGHT_ENCODINGS[enc]}
            if out["values"] == "int4_group":
                out["group_size"] = int(group_size)
            return out
        raise _spec_error(where, f"unknown encoding {enc!r}: expected one of 'fp32', 'f16', "
                                 "'int8', 'int4', 'auto' or a dict of encode_tensor options "
                                 f"({', '.join(ENCODING_OPTIONS)})")
    if not isinstance(enc, Mapping):
        raise _spec_error(where, f"an encoding is a preset string or a dict, got "
                                 f"{type(enc).__name__} {enc!r}")
    unknown = [k for k in enc if k not in ENCODING_OPTIONS]
    if unknown:
        raise _spec_error(where, f"unknown encoding option(s) {', '.join(map(repr, unknown))} "
                                 f"(known: {', '.join(ENCODING_OPTIONS)})")
    out: Dict[str, Any] = {}
    values = enc.get("values", "f32")
    values = WEIGHT_ENCODINGS.get(values, values) if isinstance(values, str) else values
    if not isinstance(values, str) or values not in dsqformat.VALUES:
        raise _spec_error(where, f"unknown values {values!r} (known: "
                                 f"{', '.join(dsqformat.VALUES)}, or a preset name)")
    out["values"] = values
    layout = enc.get("layout", "dense")
    if not isinstance(layout, str) or layout not in dsqformat.LAYOUTS:
        raise _spec_error(where, f"unknown layout {layout!r} (known: {', '.join(dsqformat.LAYOUTS)})")
    out["layout"] = layout
    if layout == "csr_relative":
        ib = enc.get("index_bits", 4)
        if not _is_int(ib) or not 2 <= ib <= 8:
            raise _spec_error(where, f"index_bits must be an int in 2..8, got {ib!r}")
        out["index_bits"] = int(ib)
    if layout == "block_csr":
        blk = enc.get("block", (1, 4))
        try:
            br, bc = blk
            ok = _is_int(br) and _is_int(bc)
        except (TypeError, ValueError):
            ok = False
        if not ok or not (1 <= br <= 16 and 1 <= bc <= 16) or (br, bc) == (1, 1):
            raise _spec_error(where, f"block must be (block_rows, block_cols), each 1..16 and "
                                     f"not (1, 1), got {blk!r}")
        out["block"] = [int(br), int(bc)]
    if values == "codebook":
        cb = enc.get("codebook_bits")
        if cb is not None and (not _is_int(cb) or not 1 <= cb <= 8):
            raise _spec_error(where, f"codebook_bits must be None or an int in 1..8, got {cb!r}")
        out["codebook_bits"] = None if cb is None else int(cb)
        per_row = enc.get("codebook_per_row", False)
        if not isinstance(per_row, (bool, np.bool_)):
            raise _spec_error(where, f"codebook_per_row must be a bool, got {per_row!r}")
        out["codebook_per_row"] = bool(per_row)
    if values == "int4_group":
        gs = enc.get("group_size", group_size)
        try:
            out["group_size"] = check_group_size(gs)
        except (ValueError, TypeError) as e:
            raise _spec_error(where, str(e)) from None
    if values == "int8_channel":
        scale = enc.get("int8_scale", "channel")
        if scale not in ("channel", "tensor"):
            raise _spec_error(where, f"int8_scale must be 'channel' or 'tensor', got {scale!r}")
        if scale == "tensor":  # weights shared among a few values keep a few int8 codes
            out["int8_scale"] = "tensor"
    huff = enc.get("huffman", False)
    if not (huff is True or huff is False or huff == "auto"):
        raise _spec_error(where, f"huffman must be False, True or 'auto', got {huff!r}")
    out["huffman"] = huff
    return out


def _layer_modules(module: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The Conv2d / Linear modules whose weights the exporter writes, by name."""
    return [(name, m) for name, m in module.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]


def _describe_spec(weights) -> Any:
    if isinstance(weights, str):
        return weights
    if callable(weights):
        return f"callable {getattr(weights, '__qualname__', type(weights).__name__)}"
    def plain(v):
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, (np.bool_, bool)):
            return bool(v)
        if isinstance(v, Integral):
            return int(v)
        return v if v is None or isinstance(v, (str, float)) else repr(v)

    return plain(weights)


def _resolve_weights(module: nn.Module, weights, group_size: int) -> Dict[str, Any]:
    """{fqn: "auto" | encode_tensor arguments} for every Conv2d / Linear of `module`."""
    layers = _layer_modules(module)
    plan: Dict[str, Any] = {}
    if isinstance(weights, str):
        if weights != "auto" and weights not in WEIGHT_ENCODINGS:
            raise ValueError(f"weights={weights!r}: expected one of 'fp32', 'f16', 'int8', 'int4', "
                             "'auto', a dict {module name or pattern: encoding} or a "
                             "callable(module, name) -> encoding")
        for name, m in layers:
            plan[name] = _normalize_encoding(weights, f"module {name!r}", group_size)
        return plan
    if isinstance(weights, Mapping):
        for key in weights:
            if not isinstance(key, str) or not key:
                raise ValueError(f"weights: keys are module names or fnmatch patterns, got {key!r}")
        names = [n for n, _ in layers]
        if weights and all(k in ENCODING_OPTIONS and k not in names for k in weights):
            # one encoding (a dict of encode_tensor arguments) for every layer
            for name, m in layers:
                plan[name] = _normalize_encoding(weights, f"module {name!r} ({type(m).__name__})",
                                                 group_size)
            return plan
        for key in weights:
            if key != "*" and key not in names and not any(fnmatch.fnmatchcase(n, key) for n in names):
                raise ValueError(f"weights: key {key!r} names no Conv2d / Linear module of "
                                 f"{type(module).__name__} (modules: {', '.join(names) or 'none'})")
        patterns = [k for k in weights if k != "*" and any(c in k for c in "*?[")]
        for name, m in layers:
            if name in weights:
                enc = weights[name]
            else:
                enc = next((weights[p] for p in patterns if fnmatch.fnmatchcase(name, p)),
                           weights.get("*", "fp32"))
            plan[name] = _normalize_encoding(enc, f"module {name!r} ({type(m).__name__})", group_size)
        return plan
    if callable(weights):
        for name, m in layers:
            try:
                enc = weights(m, name)
            except Exception as e:
                raise ValueError(f"weights: the callable failed for module {name!r} "
                                 f"({type(m).__name__}): {type(e).__name__}: {e}") from e
            plan[name] = _normalize_encoding(enc, f"module {name!r} ({type(m).__name__})", group_size)
        return plan
    raise ValueError(f"weights={weights!r}: expected a preset string, a dict or a callable")


def _padded_bytes(t: dsqformat.Tensor) -> int:
    """The bytes the tensor's streams take in the payload section (each 64-aligned)."""
    return sum(-(-int(np.asarray(s.data).nbytes) // 64) * 64 for s in t.streams)


def _exact(decoded: np.ndarray, w: np.ndarray) -> bool:
    return bool(np.array_equal(decoded, w, equal_nan=True))


def auto_encode(name: str, array, sparse_max_density: Optional[float]):
    """The "auto" encoding of one weight: the values exactly as given in f32 (no
    rounding), in the smallest payload (streams padded to 64 bytes, as in the file)
    among these candidates, each with huffman="auto":

    - dense f32; dense f16 when every value is exactly an f16; dense codebook with
      b = ceil(log2(distinct values)) <= 8 bits, one table per tensor or per row
      (per row only when it needs fewer bits);
    - when density <= sparse_max_density (None: no sparse layout): csr, csr_relative
      with AUTO_INDEX_BITS, block_csr with AUTO_BLOCKS (only when blocks are at least
      AUTO_BLOCK_MIN_FILL full), each with the same value options (the codebook over the
      nonzeros only).

    Ties go to the earlier candidate (dense f32 first). The result decodes exactly to
    the f32 weight (checked). Returns (Tensor, encode_tensor arguments, facts) where facts
    holds density, distinct values (per tensor, max per row) and candidates tried.
    """
    w = np.ascontiguousarray(np.asarray(array), dtype=np.float32)
    rows, cols = dsqformat.tensor_matrix_shape(w.shape)
    m = w.reshape(rows, cols)
    numel = int(m.size)
    nz = m != 0
    nnz = int(np.count_nonzero(nz))
    density = nnz / numel
    bitsof = m.view(np.uint32)
    distinct = int(np.unique(bitsof).size)
    distinct_nz = int(np.unique(bitsof[nz]).size)
    srt = np.sort(bitsof, axis=1)
    row_distinct = int(((srt[:, 1:] != srt[:, :-1]).sum(axis=1) + 1).max())
    # per-row distinct nonzeros: zeros (either sign) become one sentinel, then discounted
    zs = np.sort(np.where(nz, bitsof, np.uint32(0)), axis=1)
    zcount = (zs[:, 1:] != zs[:, :-1]).sum(axis=1) + 1 - (~nz).any(axis=1)
    row_distinct_nz = int(max(int(zcount.max()), 1))

    def bits_for(n: int) -> int:
        return max(1, math.ceil(math.log2(max(n, 1))))

    f16_exact = bool(np.array_equal(w.astype(np.float16).astype(np.float32).view(np.uint32),
                                    w.view(np.uint32)))

    def value_options(n_tensor: int, n_row: int) -> List[Dict[str, Any]]:
        opts: List[Dict[str, Any]] = [{"values": "f32"}]
        if f16_exact:
            opts.append({"values": "f16"})
        bt = bits_for(n_tensor) if n_tensor <= 256 else None
        if bt is not None:
            opts.append({"values": "codebook", "codebook_bits": bt, "codebook_per_row": False})
        if rows > 1 and n_row <= 256:
            br = bits_for(n_row)
            if bt is None or br < bt:
                opts.append({"values": "codebook", "codebook_bits": br, "codebook_per_row": True})
        return opts

    candidates: List[Dict[str, Any]] = [dict(o, layout="dense") for o in value_options(distinct, row_distinct)]
    sparse = sparse_max_density is not None and 0 < nnz and density <= sparse_max_density
    if sparse:
        layouts: List[Dict[str, Any]] = [{"layout": "csr"}]
        layouts += [{"layout": "csr_relative", "index_bits": b} for b in AUTO_INDEX_BITS]
        for br, bc in AUTO_BLOCKS:
            nbr, nbc = dsqformat.block_grid(rows, cols, br, bc)
            padded = np.zeros((nbr * br, nbc * bc), dtype=bool)
            padded[:rows, :cols] = nz
            blocks = int(padded.reshape(nbr, br, nbc, bc).any(axis=(1, 3)).sum())
            if nnz >= AUTO_BLOCK_MIN_FILL * blocks * br * bc:
                layouts.append({"layout": "block_csr", "block": [br, bc]})
        for lay in layouts:
            candidates += [dict(o, **lay) for o in value_options(distinct_nz, row_distinct_nz)]

    scored = []
    for k, cand in enumerate(candidates):
        kwargs = dict(cand, huffman=_AUTO_HUFFMAN)
        t = encode_tensor(name, w, **kwargs)
        scored.append((_padded_bytes(t), payload_bytes(t), k, t, kwargs))
    scored.sort(key=lambda s: s[:3])
    facts = {"density": density, "distinct": distinct, "distinct_per_row": row_distinct,
             "candidates": len(candidates)}
    for _, _, _, t, kwargs in scored:
        if _exact(decode_tensor(t), w):
            return t, kwargs, facts
    # Unreachable unless an encoder bug loses a value: never store anything inexact.
    raise AssertionError(f"tensor {name!r}: no auto candidate decodes exactly")  # pragma: no cover


class UnsupportedOperationError(ValueError):
    """The model uses a module, function or setting the .dsq graph cannot express.

    Attributes: `node` (fx node name), `target` (module type, function or method name),
    `location` (module path and source line, as far as known).
    """

    def __init__(self, message: str, node: Optional[str] = None, target: Optional[str] = None,
                 location: Optional[str] = None):
        super().__init__(message)
        self.node = node
        self.target = target
        self.location = location


# ---------------------------------------------------------------------------------------
# symbolic values held for fx nodes during conversion


@dataclass
class _Val:
    """A tensor of the .dsq graph: its value id and the shape seen with the example."""
    vid: int
    shape: Tuple[int, ...]
    node: FxNode  # the fx node that produced it (after aliasing: the first one)


@dataclass
class _Size:
    """`x.shape` / `x.size()`: a torch.Size of the tensor `src`."""
    src: _Val


@dataclass
class _Int:
    """An integer computed from sizes. `batch_dim` is set when it is exactly dim 0 of
    `src`; `dynamic` when it depends on the (dynamic) batch size in any other way."""
    value: int
    src: Optional[_Val] = None
    dim: Optional[int] = None
    dynamic: bool = False


@dataclass
class _Param:
    """A get_attr node (a parameter or buffer used directly)."""
    target: str


# ---------------------------------------------------------------------------------------


def _encoding_of(weights: str) -> str:
    try:
        return WEIGHT_ENCODINGS[weights]
    except KeyError:
        raise ValueError(f"weights={weights!r}: expected one of 'fp32', 'f16', 'int8', 'int4'") from None


def _as_input_tuple(example_inputs) -> Tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, np.ndarray):
        return (torch.from_numpy(example_inputs),)
    if isinstance(example_inputs, (tuple, list)):
        out = []
        for i, t in enumerate(example_inputs):
            if isinstance(t, np.ndarray):
                t = torch.from_numpy(t)
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"example_inputs[{i}] is a {type(t).__name__}, expected a torch.Tensor")
            out.append(t)
        return tuple(out)
    raise TypeError(f"example_inputs is a {type(example_inputs).__name__}, expected a tensor or a tuple of tensors")


def _short_type_name(cls: type) -> str:
    name = cls.__qualname__
    if getattr(nn, name, None) is cls:
        return f"nn.{name}"
    return f"{cls.__module__}.{name}"


def _source_line(node: FxNode) -> Optional[str]:
    """The innermost user-code frame of the node's recorded stack trace."""
    trace = node.stack_trace or node.meta.get("stack_trace")
    if not trace:
        return None
    lines = trace.splitlines()
    best = None
    for i, line in enumerate(lines):
        m = re.match(r'\s*File "([^"]+)", line (\d+), in (\S+)', line)
        if not m:
            continue
        path = m.group(1)
        if os.path.abspath(path).startswith(_TORCH_DIR + os.sep):
            continue
        code = lines[i + 1].strip() if i + 1 < len(lines) else ""
        best = f"{path}:{m.group(2)} in {m.group(3)}" + (f": {code}" if code else "")
    return best


def _module_path(node: FxNode) -> Optional[str]:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        path, cls = list(stack.values())[-1]
        if isinstance(cls, type):
            return f"{path} ({cls.__name__})" if path else cls.__name__
        return str(path)
    return None


def _location(node: FxNode, root_name: str) -> str:
    parts = []
    mod = _module_path(node)
    parts.append(f"in module '{mod}'" if mod else f"in {root_name}.forward")
    src = _source_line(node)
    if src:
        parts.append(f"at {src}")
    return ", ".join(parts)


def _target_name(node: FxNode, gm: torch.fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"module {_short_type_name(type(gm.get_submodule(node.target)))}"
    if node.op == "call_function":
        try:
            return f"function {_get_qualified_name(node.target)}"
        except Exception:  # pragma: no cover - unusual callables
            return f"function {getattr(node.target, '__name__', repr(node.target))}"
    if node.op == "call_method":
        return f"method Tensor.{node.target}"
    if node.op == "get_attr":
        return f"attribute access self.{node.target}"
    return node.op


def _bind(node: FxNode, names: Sequence[str], defaults: Dict[str, Any]) -> Dict[str, Any]:
    """Positional + keyword arguments of an fx call as one dict (with defaults)."""
    out = dict(defaults)
    if len(node.args) > len(names):
        raise TypeError(f"too many arguments for {node.target}")
    for name, a in zip(names, node.args):
        out[name] = a
    for k, v in node.kwargs.items():
        out[k] = v
    return out


_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, F.relu_}
_RELU_METHODS = {"relu", "relu_"}
_CLAMP_FUNCS = {torch.clamp, torch.clip, torch.clamp_, torch.clip_}
_CLAMP_METHODS = {"clamp", "clamp_", "clip", "clip_"}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_MUL_FUNCS = {operator.mul, operator.imul, torch.mul}
_CAT_FUNCS = {torch.cat, torch.concat, torch.concatenate}
_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                    nn.FeatureAlphaDropout, nn.Identity)
_DROPOUT_FUNCS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
                  F.feature_alpha_dropout}
_INPLACE_FUNCS = {operator.iadd, operator.imul, torch.relu_, F.relu_, torch.clamp_, torch.clip_}


def _is_num(x, v) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and float(x) == float(v)


class _Converter:
    def __init__(self, module: nn.Module, example: Tuple[torch.Tensor, ...], plan: Dict[str, Any],
                 group_size: int, input_names, output_names, dynamic_batch: bool,
                 input_ranges: Optional[Dict[str, Tuple[float, float]]]):
        self.module = module
        self.root_name = type(module).__name__
        self.example = example
        self.plan = plan  # fqn -> "auto" | encode_tensor arguments (_resolve_weights)
        self.group_size = group_size
        self.layer_encodings: Dict[str, Dict[str, Any]] = {}  # fqn -> arguments stored
        self.auto_facts: Dict[str, Dict[str, Any]] = {}
        self.input_names = input_names
        self.output_names = output_names
        self.dynamic_batch = dynamic_batch
        self.input_ranges = input_ranges
        self.b = GraphBuilder()
        self.env: Dict[FxNode, Any] = {}
        self.done: set = set()
        self.tensor_cache: Dict[Any, int] = {}
        self.tensor_names: set = set()
        self.stats = {"bn_folded": 0, "activations_fused": 0}

    # -- errors ---------------------------------------------------------------------
    def unsupported(self, node: FxNode, why: Optional[str] = None) -> UnsupportedOperationError:
        target = _target_name(node, self.gm)
        loc = _location(node, self.root_name)
        msg = f"unsupported operation: {target} (fx node '{node.name}', {loc})"
        if why:
            msg += f": {why}"
        return UnsupportedOperationError(msg, node=node.name, target=target, location=loc)

    # -- tracing ----------------------------------------------------------------------
    def trace(self):
        tracer = torch.fx.Tracer()
        tracer.record_stack_traces = True
        try:
            graph = tracer.trace(self.module)
        except Exception as e:  # torch.fx raises many kinds (TraceError, TypeError, ...)
            raise UnsupportedOperationError(
                f"torch.fx could not trace {self.root_name}: {type(e).__name__}: {e} "
                "(data-dependent control flow or a non-traceable construct in forward)") from e
        self.gm = torch.fx.GraphModule(tracer.root, graph, self.root_name)
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(self.example):
            raise ValueError(f"{self.root_name}.forward takes {len(placeholders)} inputs "
                             f"({', '.join(p.name for p in placeholders)}) but "
                             f"{len(self.example)} example inputs were given")
        with torch.no_grad():
            ShapeProp(self.gm).propagate(*self.example)
        self.order = {n: i for i, n in enumerate(self.gm.graph.nodes)}

    # -- helpers --------------------------------------------------------------------
    def shape_of(self, node: FxNode) -> Tuple[int, ...]:
        tm = node.meta.get("tensor_meta")
        if tm is None or not hasattr(tm, "shape"):
            raise self.unsupported(node, "its result is not a single tensor")
        return tuple(int(d) for d in tm.shape)

    def val(self, node: FxNode, arg) -> _Val:
        """The tensor value of argument `arg` of `node`."""
        if isinstance(arg, FxNode):
            v = self.env[arg]
            if isinstance(v, _Val):
                return v
            if isinstance(v, _Param):
                raise self.unsupported(node, f"uses parameter/buffer self.{v.target} directly "
                                             "(only nn.Module layers carry weights)")
            raise self.unsupported(node, "a tensor operand is a size/shape, not a tensor")
        raise self.unsupported(node, f"operand {arg!r} is a constant, not a tensor "
                                     "(the .dsq graph has no constant tensors)")

    def sole_user(self, node: FxNode) -> Optional[FxNode]:
        users = list(node.users)
        return users[0] if len(users) == 1 else None

    def module_of(self, node: FxNode) -> Optional[nn.Module]:
        return self.gm.get_submodule(node.target) if node.op == "call_module" else None

    def activation_kind(self, node: FxNode) -> Optional[str]:
        """'relu' / 'relu6' when `node` is a plain ReLU/ReLU6 of its first argument."""
        if node.op == "call_module":
            m = self.module_of(node)
            if type(m) is nn.ReLU:
                return "relu"
            if type(m) is nn.ReLU6:
                return "relu6"
            if type(m) is nn.Hardtanh and m.min_val == 0 and m.max_val == 6:
                return "relu6"
            return None
        if node.op == "call_function":
            t = node.target
            if t in _RELU_FUNCS:
                return "relu"
            if t is F.relu6:
                return "relu6"
            if t is F.hardtanh:
                a = _bind(node, ["input", "min_val", "max_val", "inplace"],
                          {"min_val": -1.0, "max_val": 1.0})
                return "relu6" if _is_num(a["min_val"], 0) and _is_num(a["max_val"], 6) else None
            if t in _CLAMP_FUNCS:
                return self._clamp_kind(_bind(node, ["input", "min", "max"], {"min": None, "max": None}))
            return None
        if node.op == "call_method":
            if node.target in _RELU_METHODS:
                return "relu"
            if node.target in _CLAMP_METHODS:
                return self._clamp_kind(_bind(node, ["self", "min", "max"], {"min": None, "max": None}))
        return None

    @staticmethod
    def _clamp_kind(a) -> Optional[str]:
        if _is_num(a["min"], 0) and a["max"] is None:
            return "relu"
        if _is_num(a["min"], 0) and _is_num(a["max"], 6):
            return "relu6"
        return None

    def fuse_activation(self, last: FxNode) -> Tuple[int, List[FxNode]]:
        """Activation code to fuse after `last`, and the fx nodes it consumes."""
        u = self.sole_user(last)
        if u is None or not u.args or u.args[0] is not last or u in self.done:
            return 0, []
        kind = self.activation_kind(u)
        if kind is None:
            return 0, []
        self.stats["activations_fused"] += 1
        return _ACTIVATION_CODES[kind], [u]

    def unique_tensor_name(self, name: str) -> str:
        base, k = name, 2
        while name in self.tensor_names:
            name = f"{base}#{k}"
            k += 1
        self.tensor_names.add(name)
        return name

    def add_tensor(self, key, name: str, array: np.ndarray, values: str) -> int:
        if key in self.tensor_cache:
            return self.tensor_cache[key]
        kwargs = {}
        if values == "int4_group":
            kwargs["group_size"] = self.group_size
        idx = self.b.add_weight(self.unique_tensor_name(name),
                                np.ascontiguousarray(array, dtype=np.float32), values=values, **kwargs)
        self.tensor_cache[key] = idx
        return idx

    def add_layer_weight(self, key, fqn: str, m: nn.Module, array: np.ndarray) -> int:
        """The weight of Conv2d / Linear `fqn` (after BatchNorm folding) in the encoding
        the weight spec gives it."""
        if key in self.tensor_cache:
            return self.tensor_cache[key]
        enc = self.plan.get(fqn)
        if enc is None:  # pragma: no cover - every Conv2d / Linear is planned
            enc = {"values": "f32", "layout": "dense", "huffman": False}
        name = self.unique_tensor_name(fqn + ".weight")
        w32 = np.ascontiguousarray(array, dtype=np.float32)
        where = f"module {fqn!r} ({type(m).__name__})"
        if enc == "auto":
            limit: Optional[float] = SPARSE_MAX_DENSITY_POINTWISE
            if isinstance(m, nn.Conv2d):
                if m.groups != 1:
                    limit = None  # no sparse kernel for grouped / depthwise convolutions
                elif tuple(_pair(m.kernel_size)) != (1, 1):
                    limit = SPARSE_MAX_DENSITY_KXK
            tensor, stored, facts = auto_encode(name, w32, limit)
            self.auto_facts[fqn] = dict(facts, sparse_max_density=limit)
        else:
            stored = dict(enc)
            try:
                tensor = encode_tensor(name, w32, **stored)
            except ValueError as e:
                raise ValueError(f"weights for {where}: {e}") from None
            if tensor.values == "codebook":
                stored["codebook_bits"] = int(tensor.codebook_bits)
        self.layer_encodings.setdefault(fqn, stored)
        idx = self.b.add_tensor(tensor)
        self.tensor_cache[key] = idx
        return idx

    def bind_outputs(self, nodes: Sequence[FxNode], vid: int, shape_node: FxNode):
        v = _Val(vid, self.shape_of(shape_node), nodes[0])
        for n in nodes:
            self.env[n] = v
            self.done.add(n)
        return v

    def alias(self, node: FxNode, src: _Val):
        self.env[node] = src
        self.done.add(node)

    # -- conversion -------------------------------------------------------------------
    def check_inplace(self):
        """In-place ops whose input is used again afterwards would change that later use;
        the graph is purely functional, so reject them."""
        for node in self.gm.graph.nodes:
            inplace = False
            if node.op == "call_method":
                t = str(node.target)
                inplace = t.endswith("_") and not t.startswith("_")
            elif node.op == "call_function":
                inplace = node.target in _INPLACE_FUNCS or node.kwargs.get("inplace") is True
            elif node.op == "call_module":
                inplace = getattr(self.module_of(node), "inplace", False) is True
            if not inplace or not node.args or not isinstance(node.args[0], FxNode):
                continue
            src = node.args[0]
            later = [u for u in src.users if u is not node and self.order[u] > self.order[node]]
            if later:
                raise self.unsupported(
                    node, f"it modifies '{src.name}' in place and '{later[0].name}' uses it "
                          "afterwards (write the result to a new variable)")

    def run(self):
        self.trace()
        self.check_inplace()
        for node in self.gm.graph.nodes:
            if node in self.done:
                continue
            if node.op == "placeholder":
                self.placeholder(node)
            elif node.op == "get_attr":
                self.env[node] = _Param(str(node.target))
            elif node.op == "call_module":
                self.call_module(node)
            elif node.op == "call_function":
                self.call_function(node)
            elif node.op == "call_method":
                self.call_method(node)
            elif node.op == "output":
                self.output(node)
            else:  # pragma: no cover
                raise self.unsupported(node)

    def placeholder(self, node: FxNode):
        i = len([v for v in self.env.values() if isinstance(v, _Val) and v.node.op == "placeholder"])
        t = self.example[i]
        if t.dim() < 1 or t.dim() > 8:
            raise ValueError(f"example input {i} has rank {t.dim()}; rank 1..8 is supported")
        if not t.is_floating_point():
            raise ValueError(f"example input {i} has dtype {t.dtype}; only float inputs are supported")
        dims = list(t.shape)
        if self.dynamic_batch:
            dims[0] = -1
        name = self.input_names[i] if self.input_names else str(node.target)
        vid = self.b.add_input(name, dims)
        self.env[node] = _Val(vid, tuple(t.shape), node)
        self.done.add(node)

    def output(self, node: FxNode):
        outs = node.args[0]
        if isinstance(outs, FxNode):
            outs = [outs]
        elif isinstance(outs, (tuple, list)) and all(isinstance(o, FxNode) for o in outs):
            outs = list(outs)
        else:
            raise UnsupportedOperationError(
                f"{self.root_name}.forward returns {type(outs).__name__}; only a tensor or a "
                "tuple/list of tensors can be exported", node=node.name, target="output")
        if self.output_names is not None and len(self.output_names) != len(outs):
            raise ValueError(f"output_names has {len(self.output_names)} names but the model "
                             f"has {len(outs)} outputs")
        for i, o in enumerate(outs):
            v = self.val(node, o)
            if self.output_names is not None:
                name = self.output_names[i]
            else:
                base = name = "output" if len(outs) == 1 else f"output{i}"
                k = 1
                while self.b._value_names.get(name, v.vid) != v.vid:
                    name = f"{base}_{k}"
                    k += 1
            self.b.mark_output(v.vid, name)

    # .. modules ......................................................................
    def call_module(self, node: FxNode):
        m = self.module_of(node)
        if isinstance(m, _DROPOUT_MODULES):
            self.alias(node, self.val(node, node.args[0]))
        elif type(m) is nn.Conv2d:
            self.conv_or_linear(node, m)
        elif type(m) is nn.Linear:
            self.conv_or_linear(node, m)
        elif type(m) in (nn.BatchNorm1d, nn.BatchNorm2d):
            self.batch_norm(node, m)
        elif self.activation_kind(node) is not None:
            self.simple(node, self.activation_kind(node))
        elif type(m) is nn.Hardswish:
            self.simple(node, "hardswish")
        elif type(m) is nn.Sigmoid:
            self.simple(node, "sigmoid")
        elif type(m) is nn.MaxPool2d:
            self.max_pool(node, {"kernel_size": m.kernel_size, "stride": m.stride,
                                 "padding": m.padding, "dilation": m.dilation,
                                 "ceil_mode": m.ceil_mode, "return_indices": m.return_indices})
        elif type(m) is nn.AvgPool2d:
            self.avg_pool(node, {"kernel_size": m.kernel_size, "stride": m.stride,
                                 "padding": m.padding, "ceil_mode": m.ceil_mode,
                                 "count_include_pad": m.count_include_pad,
                                 "divisor_override": m.divisor_override})
        elif type(m) is nn.AdaptiveAvgPool2d:
            self.adaptive_avg_pool(node, m.output_size)
        elif type(m) is nn.Flatten:
            self.flatten(node, m.start_dim, m.end_dim)
        elif type(m) is nn.Softmax:
            self.softmax(node, m.dim)
        else:
            raise self.unsupported(node)

    def conv_or_linear(self, node: FxNode, m: nn.Module):
        x = self.val(node, node.args[0])
        name = str(node.target)
        is_conv = isinstance(m, nn.Conv2d)
        attrs: Dict[str, list] = {}
        if is_conv:
            if len(x.shape) != 4:
                raise self.unsupported(node, f"Conv2d input of rank {len(x.shape)} (expected N,C,H,W)")
            if m.padding_mode != "zeros":
                raise self.unsupported(node, f"Conv2d '{name}': padding_mode={m.padding_mode!r} "
                                             "is not supported (only 'zeros')")
            padding = m.padding
            if isinstance(padding, str):
                if padding == "valid":
                    padding = (0, 0)
                else:
                    raise self.unsupported(
                        node, f"Conv2d '{name}': padding={padding!r} is not supported; "
                              "give explicit integer padding (e.g. padding=k//2 for odd k)")
            attrs = {"stride": list(_pair(m.stride)), "padding": list(_pair(padding)),
                     "dilation": list(_pair(m.dilation)), "groups": [int(m.groups)]}
        elif len(x.shape) != 2:
            raise self.unsupported(node, f"Linear on an input of rank {len(x.shape)} "
                                         "(only (N, K) inputs; flatten first)")
        w = m.weight.detach().to(torch.float64)
        bias = m.bias.detach().to(torch.float64) if m.bias is not None else None
        chain = [node]
        bn_name = None
        u = self.sole_user(node)
        bn_type = nn.BatchNorm2d if is_conv else nn.BatchNorm1d
        if (u is not None and u.op == "call_module" and type(self.module_of(u)) is bn_type
                and u.args[0] is node and self.module_of(u).track_running_stats
                and self.module_of(u).running_mean is not None):
            bn = self.module_of(u)
            bn_name = str(u.target)
            var = bn.running_var.detach().to(torch.float64)
            mean = bn.running_mean.detach().to(torch.float64)
            gamma = bn.weight.detach().to(torch.float64) if bn.affine else torch.ones_like(var)
            beta = bn.bias.detach().to(torch.float64) if bn.affine else torch.zeros_like(var)
            s = gamma / torch.sqrt(var + bn.eps)
            w = w * s.reshape((-1,) + (1,) * (w.dim() - 1))
            bias = ((bias if bias is not None else torch.zeros_like(mean)) - mean) * s + beta
            chain.append(u)
            self.stats["bn_folded"] += 1
        act, consumed = self.fuse_activation(chain[-1])
        chain += consumed
        if act:
            attrs["activation"] = [act]
        if self.input_ranges is not None and name in self.input_ranges and \
                _integer_values(self.plan.get(name)):
            attrs["input_quant"] = list(_input_quant(*self.input_ranges[name]))
        key = (name, bn_name)
        w_idx = self.add_layer_weight(key + ("weight",), name, m, w.numpy())
        weights = [w_idx]
        if bias is not None:
            weights.append(self.add_tensor(key + ("bias",), name + ".bias", bias.numpy(), "f32"))
        vid = self.b.add_node("conv2d" if is_conv else "linear", [x.vid], weights=weights,
                              attrs=attrs, name=self.node_name(node, name))
        self.bind_outputs(chain, vid, chain[-1])

    def node_name(self, node: FxNode, preferred: str) -> str:
        if not hasattr(self, "_node_names"):
            self._node_names = set()
        name, k = preferred, 2
        while name in self._node_names:
            name = f"{preferred}#{k}"
            k += 1
        self._node_names.add(name)
        return name

    def batch_norm(self, node: FxNode, m: nn.modules.batchnorm._BatchNorm):
        x = self.val(node, node.args[0])
        if not m.track_running_stats or m.running_mean is None:
            raise self.unsupported(node, "BatchNorm without running statistics (track_running_stats"
                                         "=False) normalizes with batch statistics in eval mode")
        if len(x.shape) < 2 or x.shape[1] != m.num_features:
            raise self.unsupported(node, f"BatchNorm of {m.num_features} features on shape {x.shape}")
        name = str(node.target)
        c = m.num_features
        gamma = m.weight.detach().numpy() if m.affine else np.ones(c, np.float32)
        beta = m.bias.detach().numpy() if m.affine else np.zeros(c, np.float32)
        ws = [self.add_tensor((name, p), f"{name}.{p}", arr, "f32") for p, arr in
              (("weight", gamma), ("bias", beta), ("running_mean", m.running_mean.detach().numpy()),
               ("running_var", m.running_var.detach().numpy()))]
        vid = self.b.add_node("batch_norm", [x.vid], weights=ws, attrs={"eps": [float(m.eps)]},
                              name=self.node_name(node, name))
        self.bind_outputs([node], vid, node)

    def simple(self, node: FxNode, op: str, attrs=None):
        x = self.val(node, node.args[0])
        vid = self.b.add_node(op, [x.vid], attrs=attrs or {}, name=self.node_name(node, self.default_name(node)))
        self.bind_outputs([node], vid, node)

    def default_name(self, node: FxNode) -> str:
        return str(node.target) if node.op == "call_module" else node.name

    def max_pool(self, node: FxNode, a):
        if a.get("return_indices"):
            raise self.unsupported(node, "return_indices=True")
        k = _pair(a["kernel_size"])
        s = _pair(a["stride"]) if a["stride"] not in (None, []) else k
        self.simple(node, "max_pool2d", {"kernel": list(k), "stride": list(s),
                                         "padding": list(_pair(a["padding"])),
                                         "dilation": list(_pair(a["dilation"])),
                                         "ceil_mode": [int(bool(a["ceil_mode"]))]})

    def avg_pool(self, node: FxNode, a):
        if a.get("divisor_override") is not None:
            raise self.unsupported(node, "divisor_override is not supported")
        k = _pair(a["kernel_size"])
        s = _pair(a["stride"]) if a["stride"] not in (None, []) else k
        self.simple(node, "avg_pool2d", {"kernel": list(k), "stride": list(s),
                                         "padding": list(_pair(a["padding"])),
                                         "ceil_mode": [int(bool(a["ceil_mode"]))],
                                         "count_include_pad": [int(bool(a["count_include_pad"]))]})

    def adaptive_avg_pool(self, node: FxNode, output_size):
        x = self.val(node, node.args[0])
        if len(x.shape) != 4:
            raise self.unsupported(node, f"adaptive_avg_pool2d of a rank-{len(x.shape)} input")
        h, w = x.shape[2:]
        oh, ow = _pair(output_size)
        oh = h if oh is None else oh
        ow = w if ow is None else ow
        if (oh, ow) == (1, 1):
            self.simple(node, "global_avg_pool2d")
        elif (oh, ow) == (h, w):
            self.alias(node, x)
        elif h % oh == 0 and w % ow == 0:
            k = [h // oh, w // ow]
            self.simple(node, "avg_pool2d", {"kernel": k, "stride": k, "padding": [0, 0],
                                             "ceil_mode": [0], "count_include_pad": [1]})
        else:
            raise self.unsupported(node, f"adaptive_avg_pool2d from {h}x{w} to {oh}x{ow} "
                                         "(only global pooling or exact divisors)")

    def flatten(self, node: FxNode, start_dim, end_dim):
        self.simple(node, "flatten", {"start_dim": [int(start_dim)], "end_dim": [int(end_dim)]})

    def softmax(self, node: FxNode, dim, dtype=None):
        if dtype is not None:
            raise self.unsupported(node, "softmax with a dtype argument")
        x = self.val(node, node.args[0])
        if dim is None:  # torch's legacy implicit dim (with a deprecation warning)
            dim = 0 if len(x.shape) in (0, 1, 3) else 1
        self.simple(node, "softmax", {"axis": [int(dim)]})

    def eltwise(self, node: FxNode, op: str, a, b):
        va, vb = self.val(node, a), self.val(node, b)
        attrs = {}
        chain = [node]
        if op == "add":
            act, consumed = self.fuse_activation(node)
            if act:
                attrs["activation"] = [act]
            chain += consumed
        vid = self.b.add_node(op, [va.vid, vb.vid], attrs=attrs,
                              name=self.node_name(node, node.name))
        self.bind_outputs(chain, vid, chain[-1])

    def concat(self, node: FxNode, tensors, dim):
        if not isinstance(tensors, (list, tuple)) or not tensors:
            raise self.unsupported(node, "expects a non-empty list of tensors")
        vals = [self.val(node, t) for t in tensors]
        vid = self.b.add_node("concat", [v.vid for v in vals], attrs={"axis": [int(dim)]},
                              name=self.node_name(node, node.name))
        self.bind_outputs([node], vid, node)

    def reshape(self, node: FxNode, x_arg, shape):
        x = self.val(node, x_arg)
        if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
            shape = shape[0]
        elif len(shape) == 1 and isinstance(shape[0], FxNode) and isinstance(self.env[shape[0]], _Size):
            shape = [_Int(d, self.env[shape[0]].src, i, False)
                     for i, d in enumerate(self.env[shape[0]].src.shape)]
        out = []
        for pos, s in enumerate(shape):
            if isinstance(s, FxNode):
                s = self.env[s]
            if isinstance(s, _Int):
                if s.dim == 0 and pos == 0:
                    out.append(0)  # the batch size: copy input dim 0
                elif s.src is not None and s.src.vid == x.vid and s.dim == pos:
                    out.append(0)
                elif s.dynamic or (s.dim == 0 and self.dynamic_batch):
                    raise self.unsupported(node, f"element {pos} of the new shape depends on the "
                                                 "batch size; only x.view(x.size(0), ...) with the "
                                                 "batch first is supported")
                else:
                    out.append(int(s.value))
            elif isinstance(s, int) and not isinstance(s, bool):
                if s == 0 or s < -1:
                    raise self.unsupported(node, f"new shape element {s}")
                out.append(int(s))
            else:
                raise self.unsupported(node, f"new shape element {s!r} is not an integer or a size")
        if out.count(-1) > 1:
            raise self.unsupported(node, "more than one -1 in the new shape")
        self.simple_with(node, x, "reshape", {"shape": out})

    def simple_with(self, node: FxNode, x: _Val, op: str, attrs):
        vid = self.b.add_node(op, [x.vid], attrs=attrs, name=self.node_name(node, self.default_name(node)))
        self.bind_outputs([node], vid, node)

    def mean(self, node: FxNode, a):
        x = self.val(node, a["input"])
        dims = a["dim"]
        if isinstance(dims, int):
            dims = [dims]
        if a.get("dtype") is not None or len(x.shape) != 4 or dims is None or \
                sorted(d % 4 for d in dims) != [2, 3]:
            raise self.unsupported(node, "only the mean over dims (2, 3) of an NCHW tensor "
                                         "(global average pooling) is supported")
        if a["keepdim"]:
            self.simple(node, "global_avg_pool2d")
            return
        vid = self.b.add_node("global_avg_pool2d", [x.vid], name=self.node_name(node, node.name + ".pool"))
        vid = self.b.add_node("flatten", [vid], attrs={"start_dim": [1], "end_dim": [-1]},
                              name=self.node_name(node, node.name))
        self.bind_outputs([node], vid, node)

    def int_arith(self, node: FxNode, fn, a, b) -> bool:
        """Integer arithmetic on sizes (x.size(1) * x.size(2)); True when handled."""
        def as_int(v):
            if isinstance(v, FxNode):
                v = self.env[v]
            if isinstance(v, _Int):
                return v
            if isinstance(v, int) and not isinstance(v, bool):
                return _Int(v)
            return None
        ia, ib = as_int(a), as_int(b)
        if ia is None or ib is None:
            return False
        dyn = ia.dynamic or ib.dynamic or (self.dynamic_batch and (ia.dim == 0 or ib.dim == 0))
        self.env[node] = _Int(int(fn(ia.value, ib.value)), dynamic=dyn)
        self.done.add(node)
        return True

    # .. functions ....................................................................
    def call_function(self, node: FxNode):
        t = node.target
        args = node.args
        if t is getattr:
            if len(args) == 2 and args[1] == "shape" and isinstance(self.env.get(args[0]), _Val):
                self.env[node] = _Size(self.env[args[0]])
                self.done.add(node)
                return
            raise self.unsupported(node, f"getattr(tensor, {args[1]!r}) (only .shape, for view/reshape)")
        if t is operator.getitem:
            src = self.env.get(args[0]) if isinstance(args[0], FxNode) else None
            if isinstance(src, _Size) and isinstance(args[1], int):
                d = args[1] % len(src.src.shape)
                self.env[node] = _Int(src.src.shape[d], src.src, d, False)
                self.done.add(node)
                return
            raise self.unsupported(node, "indexing/slicing is supported only on x.shape / x.size()")
        if t in (operator.add, operator.mul, operator.sub, operator.floordiv) and \
                self.int_arith(node, t, args[0], args[1]):
            return
        kind = self.activation_kind(node)
        if kind is not None:
            self.simple(node, kind)
        elif t in _ADD_FUNCS:
            a = _bind(node, ["input", "other"], {"alpha": 1})
            if not _is_num(a["alpha"], 1):
                raise self.unsupported(node, "torch.add with alpha != 1")
            self.eltwise(node, "add", a["input"], a["other"])
        elif t in _MUL_FUNCS:
            a = _bind(node, ["input", "other"], {})
            self.eltwise(node, "mul", a["input"], a["other"])
        elif t in _CAT_FUNCS:
            a = _bind(node, ["tensors", "dim"], {"dim": 0})
            self.concat(node, a["tensors"], a["dim"])
        elif t is torch.flatten:
            a = _bind(node, ["input", "start_dim", "end_dim"], {"start_dim": 0, "end_dim": -1})
            self.flatten(node, a["start_dim"], a["end_dim"])
        elif t is torch.reshape:
            a = _bind(node, ["input", "shape"], {})
            self.reshape(node, a["input"], [a["shape"]])
        elif t in (F.hardswish,):
            self.simple(node, "hardswish")
        elif t in (torch.sigmoid, F.sigmoid):
            self.simple(node, "sigmoid")
        elif t in (F.softmax, torch.softmax):
            a = _bind(node, ["input", "dim", "_stacklevel", "dtype"], {"dim": None, "dtype": None})
            self.softmax(node, a["dim"], a["dtype"])
        elif t is F.max_pool2d:
            a = _bind(node, ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                             "return_indices"],
                      {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False,
                       "return_indices": False})
            self.max_pool(node, a)
        elif t is F.avg_pool2d:
            a = _bind(node, ["input", "kernel_size", "stride", "padding", "ceil_mode",
                             "count_include_pad", "divisor_override"],
                      {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
                       "divisor_override": None})
            self.avg_pool(node, a)
        elif t is F.adaptive_avg_pool2d:
            a = _bind(node, ["input", "output_size"], {})
            self.adaptive_avg_pool(node, a["output_size"])
        elif t is torch.mean:
            a = _bind(node, ["input", "dim", "keepdim"], {"dim": None, "keepdim": False, "dtype": None})
            self.mean(node, a)
        elif t in _DROPOUT_FUNCS:
            a = _bind(node, ["input", "p", "training", "inplace"], {"training": True})
            if a["training"] is True:
                # F.dropout defaults to training=True: it is active even in eval mode.
                raise self.unsupported(node, "dropout with training=True is random at inference")
            self.alias(node, self.val(node, a["input"]))
        else:
            raise self.unsupported(node)

    # .. methods ......................................................................
    def call_method(self, node: FxNode):
        t = str(node.target)
        args = node.args
        if t == "size":
            src = self.val(node, args[0])
            a = _bind(node, ["self", "dim"], {"dim": None})
            if a["dim"] is None:
                self.env[node] = _Size(src)
            else:
                d = int(a["dim"]) % len(src.shape)
                self.env[node] = _Int(src.shape[d], src, d, False)
            self.done.add(node)
            return
        kind = self.activation_kind(node)
        if kind is not None:
            self.simple(node, kind)
        elif t in ("view", "reshape"):
            self.reshape(node, args[0], list(args[1:]) or [node.kwargs.get("size", node.kwargs.get("shape"))])
        elif t == "flatten":
            a = _bind(node, ["self", "start_dim", "end_dim"], {"start_dim": 0, "end_dim": -1})
            self.flatten(node, a["start_dim"], a["end_dim"])
        elif t in ("add", "add_", "__add__", "__radd__", "__iadd__"):
            a = _bind(node, ["self", "other"], {"alpha": 1})
            if not _is_num(a["alpha"], 1):
                raise self.unsupported(node, "add with alpha != 1")
            self.eltwise(node, "add", a["self"], a["other"])
        elif t in ("mul", "mul_", "__mul__", "__rmul__", "__imul__"):
            a = _bind(node, ["self", "other"], {})
            self.eltwise(node, "mul", a["self"], a["other"])
        elif t in ("sigmoid", "sigmoid_"):
            self.simple(node, "sigmoid")
        elif t == "softmax":
            a = _bind(node, ["self", "dim", "dtype"], {"dim": None, "dtype": None})
            self.softmax(node, a["dim"], a["dtype"])
        elif t == "mean":
            a = _bind(node, ["input", "dim", "keepdim"], {"dim": None, "keepdim": False, "dtype": None})
            self.mean(node, a)
        elif t == "contiguous":
            self.alias(node, self.val(node, args[0]))
        else:
            raise self.unsupported(node)


def _input_quant(lo: float, hi: float) -> Tuple[float, float]:
    """Static u8 quantization of an input range: (scale, zero_point)."""
    lo = min(float(lo), 0.0)
    hi = max(float(hi), 0.0)
    scale = (hi - lo) / 255.0 if hi != lo else 1.0
    zero = float(np.clip(np.round(-lo / scale), 0, 255))  # np.round: half to even
    return float(np.float32(scale)), zero


def _calibrate(module: nn.Module, batches: Iterable) -> Tuple[Dict[str, Tuple[float, float]], int]:
    """min/max of the input of every Conv2d / Linear over the calibration batches."""
    ranges: Dict[str, List[float]] = {}
    hooks = []

    def make_hook(name):
        def hook(mod, inputs):
            x = inputs[0].detach()
            lo, hi = float(x.min()), float(x.max())
            r = ranges.get(name)
            ranges[name] = [lo, hi] if r is None else [min(r[0], lo), max(r[1], hi)]
        return hook

    for name, m in module.named_modules():
        if type(m) in (nn.Conv2d, nn.Linear):
            hooks.append(m.register_forward_pre_hook(make_hook(name)))
    n = 0
    try:
        with torch.no_grad():
            for batch in batches:
                module(*_as_input_tuple(batch))
                n += 1
    finally:
        for h in hooks:
            h.remove()
    if n == 0:
        raise ValueError("calibration gave no batches")
    return {k: (v[0], v[1]) for k, v in ranges.items()}, n


def _integer_values(enc) -> bool:
    return isinstance(enc, Mapping) and enc.get("values") in ("int8_channel", "int4_group")


def build(module: nn.Module, example_inputs, weights: WeightSpec = "fp32", calibration=None,
          group_size: int = 64, input_names: Optional[Sequence[str]] = None,
          output_names: Optional[Sequence[str]] = None, dynamic_batch: bool = True):
    """Trace and convert `module`; returns the DsqFile without writing it."""
    if isinstance(weights, str):
        encoding = "auto" if weights == "auto" else _encoding_of(weights)
        if encoding == "int4_group" and (group_size < 8 or group_size > 65536 or
                                         group_size & (group_size - 1)):
            raise ValueError(f"group_size={group_size}: must be a power of two in 8..65536")
    elif not isinstance(weights, Mapping) and not callable(weights):
        raise ValueError(f"weights={weights!r}: expected one of 'fp32', 'f16', 'int8', 'int4', "
                         "'auto', a dict {module name or pattern: encoding} or a "
                         "callable(module, name) -> encoding")
    example = _as_input_tuple(example_inputs)
    if input_names is not None and len(input_names) != len(example):
        raise ValueError(f"input_names has {len(input_names)} names for {len(example)} inputs")
    if not isinstance(module, nn.Module):
        raise TypeError(f"module is a {type(module).__name__}, expected a torch.nn.Module")
    # Compression constraints (masks, shared values, fake quantization) are weight
    # parametrizations: trace a copy whose weights are their constrained values.
    compression = compression_record(module)
    module = baked_copy(module)
    plan = _resolve_weights(module, weights, group_size)
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        ranges, n_batches = None, 0
        if calibration is not None:
            if any(_integer_values(e) for e in plan.values()):
                ranges, n_batches = _calibrate(module, calibration)
            else:
                warnings.warn(f"calibration is ignored with weights={_describe_spec(weights)!r} "
                              "(activations are quantized only with integer weight encodings)",
                              stacklevel=3)
        conv = _Converter(module, example, plan, group_size, input_names, output_names,
                          dynamic_batch, ranges)
        conv.run()
    finally:
        for m, mode in modes.items():
            m.training = mode
    if isinstance(weights, str) and weights != "auto":
        weight_values = _encoding_of(weights)
    else:
        kinds = {e["values"] for e in conv.layer_encodings.values()}
        weight_values = kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "none")
    config = {
        "weights": _describe_spec(weights),
        "weight_values": weight_values,
        "group_size": int(group_size),
        "calibrated": ranges is not None,
        "calibration_batches": int(n_batches),
        "dynamic_batch": bool(dynamic_batch),
        "bn_folded": conv.stats["bn_folded"],
        "activations_fused": conv.stats["activations_fused"],
        # the encode_tensor arguments each conv / linear weight was stored with
        "layers": conv.layer_encodings,
    }
    if conv.auto_facts:
        config["auto"] = {
            "sparse_max_density_pointwise": SPARSE_MAX_DENSITY_POINTWISE,
            "sparse_max_density_kxk": SPARSE_MAX_DENSITY_KXK,
            "layers": {k: {"density": round(v["density"], 6), "distinct": v["distinct"],
                           "distinct_per_row": v["distinct_per_row"]}
                       for k, v in conv.auto_facts.items()},
        }
    metadata = {
        "dsq.producer": PRODUCER,
        "dsq.source_model": type(module).__name__,
        "dsq.export_config": json.dumps(config, sort_keys=True, default=repr, separators=(",", ":")),
    }
    if compression:
        # what the toolkit's verbs did to the model, with their configs
        metadata["dsq.compression"] = json.dumps(compression, sort_keys=True, default=repr,
                                                separators=(",", ":"))
    return conv.b.build(metadata)


def export(module: nn.Module, example_inputs, path, weights: WeightSpec = "fp32", calibration=None,
           group_size: int = 64, input_names: Optional[Sequence[str]] = None,
           output_names: Optional[Sequence[str]] = None, dynamic_batch: bool = True):
    """Export `module` to the .dsq file `path` and return the DsqFile written.

    weights: the encoding of conv/linear weights (a WeightSpec):
      - "fp32", "f16", "int8" (per output channel) or "int4" (per group of `group_size`
        along each row) for every layer;
      - "auto": every weight exactly as it is (after BatchNorm folding; no rounding
        beyond f32) in the smallest encoding the engine runs fast: csr / csr_relative /
        block_csr when the layer is sparse enough for the sparse kernel
        (SPARSE_MAX_DENSITY_POINTWISE for linear and 1x1 conv, SPARSE_MAX_DENSITY_KXK for
        kxk conv; grouped convs stay dense), a b-bit codebook when the layer holds at
        most 2^b distinct values, Huffman-coded streams where they save bytes
        (see auto_encode);
      - a dict {module name or fnmatch pattern: encoding} ("*": the default, else
        "fp32"; an exact name wins over patterns, then the first matching pattern),
        or a callable(module, name) -> encoding (None: "fp32"). An encoding is one of
        the strings above or a dict of encode_tensor arguments (values, layout,
        index_bits, block, codebook_bits, codebook_per_row, huffman, group_size), e.g.
        {"layout": "csr_relative", "values": "codebook", "huffman": True}; such a dict
        may also be given directly as `weights` for every layer. A codebook never
        rounds: a request that would lose values raises ValueError.
    Invalid specs raise ValueError naming the module. Biases and BatchNorm parameters
    are always f32. The encoding of each layer is recorded in the "dsq.export_config"
    metadata ("layers").
    calibration: None, or an iterable of example input batches (tensors or tuples of
    tensors); with int8/int4 weights, the min/max of every conv/linear input over these
    batches sets a static u8 input quantization (`input_quant`) of the layers with
    integer weights.
    dynamic_batch: the graph inputs accept any batch size (dim 0 = -1).
    """
    dsq = build(module, example_inputs, weights=weights, calibration=calibration,
                group_size=group_size, input_names=input_names, output_names=output_names,
                dynamic_batch=dynamic_batch)
    dsqformat.write(dsq, os.fspath(path))
    return dsq


def export_to_bytes(module: nn.Module, example_inputs, **kwargs) -> bytes:
    """Like `export`, but returns the bytes of the .dsq file."""
    return dsqformat.to_bytes(build(module, example_inputs, **kwargs))
