"""GraphBuilder: a convenience to assemble a DsqFile (docs/FORMAT.md) op by op.

    b = GraphBuilder()
    x = b.add_input("x", (-1, 3, 32, 32))
    w = b.add_weight("conv1.weight", np.random.randn(8, 3, 3, 3), values="int8_channel")
    y = b.add_node("conv2d", [x], weights=[w, None], attrs={"padding": [1, 1], "activation": "relu"})
    b.mark_output(y, "logits")
    f = b.build({"dsq.producer": "example"})

add_node validates early (ValueError): the op is known, the number of inputs and weights
fits the op, weight indices exist, attribute names are defined for the op, attribute
values are ints or floats as FORMAT.md says (scalars become one-element lists), counts
match, required attributes (pool `kernel`, reshape `shape`) are present, inputs exist.
"""
from __future__ import annotations

from numbers import Integral, Real
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from .encode import encode_tensor
from .format import (ACTIVATIONS, FLOAT_ATTRS, MAX_ATTR_VALUES, MAX_INPUT_DIM, MAX_RANK,
                     MAX_STRING, OP_ATTRS, OPS, DsqFile, Graph, GraphInput, Node, Tensor)

__all__ = ["GraphBuilder", "OP_ARITY", "REQUIRED_ATTRS"]

# (min inputs, max inputs or None, min weights, max weights, weights that may be absent)
OP_ARITY = {
    "conv2d": (1, 1, 1, 2, {1}),
    "linear": (1, 1, 1, 2, {1}),
    "relu": (1, 1, 0, 0, set()),
    "relu6": (1, 1, 0, 0, set()),
    "hardswish": (1, 1, 0, 0, set()),
    "sigmoid": (1, 1, 0, 0, set()),
    "max_pool2d": (1, 1, 0, 0, set()),
    "avg_pool2d": (1, 1, 0, 0, set()),
    "global_avg_pool2d": (1, 1, 0, 0, set()),
    "add": (2, 2, 0, 0, set()),
    "mul": (2, 2, 0, 0, set()),
    "concat": (1, None, 0, 0, set()),
    "flatten": (1, 1, 0, 0, set()),
    "reshape": (1, 1, 0, 0, set()),
    "softmax": (1, 1, 0, 0, set()),
    "batch_norm": (1, 1, 4, 4, set()),
}
REQUIRED_ATTRS = {"max_pool2d": ("kernel",), "avg_pool2d": ("kernel",), "reshape": ("shape",)}


def _check_name(name, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty str, got {name!r}")
    if len(name.encode("utf-8")) > MAX_STRING:
        raise ValueError(f"{what} is longer than {MAX_STRING} bytes of UTF-8")
    return name


class GraphBuilder:
    def __init__(self):
        self.values: List[str] = []
        self._value_names: Dict[str, int] = {}
        self.inputs: List[GraphInput] = []
        self.outputs: List[int] = []
        self.nodes: List[Node] = []
        self._node_names = set()
        self.tensors: List[Tensor] = []
        self._tensor_names = set()

    # -- values -----------------------------------------------------------------------
    def _new_value(self, name: str) -> int:
        self._value_names[name] = len(self.values)
        self.values.append(name)
        return len(self.values) - 1

    def _unique_value_name(self, base: str) -> str:
        if base not in self._value_names:
            return base
        k = 1
        while f"{base}_{k}" in self._value_names:
            k += 1
        return f"{base}_{k}"

    def _check_value(self, v, what: str) -> int:
        if isinstance(v, bool) or not isinstance(v, Integral) or not 0 <= int(v) < len(self.values):
            raise ValueError(f"{what}: value {v!r} does not exist ({len(self.values)} values)")
        return int(v)

    def add_input(self, name: str, dims) -> int:
        """Add a graph input; returns its value id. dims may contain -1 (any size)."""
        _check_name(name, "input name")
        if name in self._value_names:
            raise ValueError(f"input name {name!r} is already used by value {self._value_names[name]}")
        dims = tuple(dims)
        if not 1 <= len(dims) <= MAX_RANK:
            raise ValueError(f"input {name!r}: rank {len(dims)} not in 1..{MAX_RANK}")
        for d in dims:
            if isinstance(d, bool) or not isinstance(d, Integral) or not (
                    d == -1 or 1 <= d <= MAX_INPUT_DIM):
                raise ValueError(f"input {name!r}: bad dim {d!r} (-1 or 1..2^32)")
        v = self._new_value(name)
        self.inputs.append(GraphInput(value=v, dims=tuple(int(d) for d in dims)))
        return v

    # -- tensors ----------------------------------------------------------------------
    def add_tensor(self, tensor: Tensor) -> int:
        """Add a tensor to the tensor table; returns its index."""
        if not isinstance(tensor, Tensor):
            raise ValueError(f"add_tensor needs a format.Tensor, got {type(tensor).__name__}")
        _check_name(tensor.name, "tensor name")
        if tensor.name in self._tensor_names:
            raise ValueError(f"duplicate tensor name {tensor.name!r}")
        self._tensor_names.add(tensor.name)
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def add_weight(self, name: str, array, values: str = "f32", group_size: int = 64,
                   **encoding) -> int:
        """encode_tensor + add_tensor; returns the tensor index. `encoding` passes the
        other options of encode_tensor (layout, index_bits, block, codebook_bits,
        codebook_per_row, huffman)."""
        if name in self._tensor_names:
            raise ValueError(f"duplicate tensor name {name!r}")
        return self.add_tensor(encode_tensor(name, array, values=values, group_size=group_size,
                                             **encoding))

    # -- nodes ------------------------------------------------------------------------
    def _attr(self, op: str, where: str, key, val) -> list:
        if key not in OP_ATTRS[op]:
            allowed = ", ".join(OP_ATTRS[op]) or "none"
            raise ValueError(f"{where}: attribute {key!r} is not defined for op {op} "
                             f"(allowed: {allowed})")
        if key == "activation" and isinstance(val, str):
            if val not in ACTIVATIONS:
                raise ValueError(f"{where}: unknown activation {val!r} (known: {', '.join(ACTIVATIONS)})")
            val = ACTIVATIONS[val]
        if isinstance(val, np.ndarray):
            val = val.tolist()
        vals = list(val) if isinstance(val, (list, tuple)) else [val]
        out = []
        for x in vals:
            if key in FLOAT_ATTRS:
                if isinstance(x, bool) or not isinstance(x, Real):
                    raise ValueError(f"{where}: attribute {key} takes floats, got {x!r}")
                out.append(float(x))
            else:
                if not isinstance(x, Integral):  # bools count as 0/1 (ceil_mode=True)
                    raise ValueError(f"{where}: attribute {key} takes ints, got {x!r}")
                x = int(x)
                if not -(1 << 63) <= x < (1 << 63):
                    raise ValueError(f"{where}: attribute {key} value {x} does not fit in i64")
                out.append(x)
        want = OP_ATTRS[op][key]
        if (want and len(out) != want) or not 1 <= len(out) <= MAX_ATTR_VALUES:
            expect = str(want) if want else f"1..{MAX_ATTR_VALUES}"
            raise ValueError(f"{where}: attribute {key} has {len(out)} values, expected {expect}")
        if key == "activation" and out[0] not in ACTIVATIONS.values():
            raise ValueError(f"{where}: unknown activation code {out[0]}")
        return out

    def add_node(self, op: str, inputs, weights=(), attrs: Optional[dict] = None,
                 name: Optional[str] = None, n_outputs: int = 1,
                 output_names: Optional[Sequence[str]] = None) -> Union[int, List[int]]:
        """Append a node; returns its output value id (a list when n_outputs != 1)."""
        if op not in OPS:
            raise ValueError(f"unknown op {op!r} (known: {', '.join(OPS)})")
        index = len(self.nodes)
        if name is None:
            name = f"{op}_{index}"
            k = 1
            while name in self._node_names:
                name = f"{op}_{index}_{k}"
                k += 1
        _check_name(name, "node name")
        if name in self._node_names:
            raise ValueError(f"duplicate node name {name!r}")
        where = f"node {index} ({name!r}, {op})"

        if isinstance(inputs, Integral):
            inputs = [inputs]
        inputs = [self._check_value(v, f"{where} input {k}") for k, v in enumerate(inputs)]
        lo, hi, wlo, whi, optional = OP_ARITY[op]
        if len(inputs) < lo or (hi is not None and len(inputs) > hi):
            expect = f"{lo}" if lo == hi else (f"{lo}..{hi}" if hi else f"at least {lo}")
            raise ValueError(f"{where}: takes {expect} inputs, got {len(inputs)}")

        if isinstance(weights, Integral):
            weights = [weights]
        weights = list(weights)
        if not wlo <= len(weights) <= whi:
            expect = f"{wlo}" if wlo == whi else f"{wlo}..{whi}"
            raise ValueError(f"{where}: takes {expect} weights, got {len(weights)}")
        checked_weights: List[Optional[int]] = []
        for k, w in enumerate(weights):
            if w is None:
                if k not in optional:
                    raise ValueError(f"{where}: weight {k} is required")
                checked_weights.append(None)
                continue
            if isinstance(w, bool) or not isinstance(w, Integral) or not 0 <= int(w) < len(self.tensors):
                raise ValueError(f"{where}: weight {k}: tensor {w!r} does not exist "
                                 f"({len(self.tensors)} tensors)")
            checked_weights.append(int(w))

        checked_attrs: Dict[str, list] = {}
        for key, val in (attrs or {}).items():
            checked_attrs[key] = self._attr(op, where, key, val)
        for key in REQUIRED_ATTRS.get(op, ()):
            if key not in checked_attrs:
                raise ValueError(f"{where}: attribute {key!r} is required")

        n_outputs = int(n_outputs)
        if n_outputs < 1:
            raise ValueError(f"{where}: n_outputs must be >= 1")
        if output_names is not None:
            output_names = list(output_names)
            if len(output_names) != n_outputs:
                raise ValueError(f"{where}: {len(output_names)} output_names for {n_outputs} outputs")
        else:
            output_names = [name] if n_outputs == 1 else [f"{name}:{i}" for i in range(n_outputs)]
        outs = []
        for oname in output_names:
            _check_name(oname, f"{where} output name")
            outs.append(self._new_value(self._unique_value_name(oname)))

        self._node_names.add(name)
        self.nodes.append(Node(op=op, name=name, inputs=inputs, outputs=outs,
                               weights=checked_weights, attrs=checked_attrs))
        return outs[0] if n_outputs == 1 else outs

    def mark_output(self, value: int, name: Optional[str] = None) -> None:
        """Make `value` a graph output, optionally renaming it."""
        value = self._check_value(value, "mark_output")
        if name is not None and name != self.values[value]:
            _check_name(name, "output name")
            if name in self._value_names:
                raise ValueError(f"output name {name!r} is already used by value "
                                 f"{self._value_names[name]}")
            del self._value_names[self.values[value]]
            self.values[value] = name
            self._value_names[name] = value
        self.outputs.append(value)

    def build(self, metadata: Optional[dict] = None) -> DsqFile:
        if not self.inputs:
            raise ValueError("the graph has no inputs (add_input)")
        if not self.outputs:
            raise ValueError("the graph has no outputs (mark_output)")
        graph = Graph(values=list(self.values), inputs=list(self.inputs),
                      outputs=list(self.outputs), nodes=list(self.nodes))
        return DsqFile(metadata=dict(metadata or {}), graph=graph, tensors=list(self.tensors))
