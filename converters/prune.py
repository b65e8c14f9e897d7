"""Pruning: unstructured magnitude pruning (per layer, global, or Han's quality
threshold), gradual schedules with fine-tuning between steps, and structured pruning
that physically removes conv filters / linear neurons.

Unstructured pruning keeps the weight and a 0/1 mask as a parametrization of `weight`
(`PruneMask`: weight = original * mask), so a pruned weight gets no gradient and stays
zero through fine-tuning; pruning again multiplies into the existing mask, so a pruned
weight is never revived.
"""
from __future__ import annotations

import copy
import dataclasses
import fnmatch
import math
import operator
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils import parametrize

from .core import LayerSelection, TrainConfig, baked_copy, fit, record, select_layers

__all__ = ["PruneConfig", "PruneMask", "prune", "sparsity", "masks", "prune_gradually",
           "schedule_targets", "StructuredPruneConfig", "prune_channels", "SCHEDULES"]

SCHEDULES = ("one_shot", "polynomial")


def _check_fraction(what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}")
    if not (0.0 <= float(value) < 1.0):
        raise ValueError(f"{what} must be in [0, 1), got {value}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """What to prune.

    Exactly one of:
    - sparsity: the fraction of weights set to zero, in [0, 1): one float for every
      selected layer (scope "layer": each layer reaches it; scope "global": the
      smallest-magnitude weights across all selected layers together), or a dict
      {layer name or fnmatch pattern: fraction} (scope "layer" only; a layer takes the
      value of its exact name, else of the first matching pattern; unmatched layers are
      left alone);
    - quality: Han et al.'s quality parameter q >= 0: a layer's weights with
      |w| < q * std(w) are pruned (std over the layer's still-unpruned weights; scope
      "layer" only).

    block: prune in blocks of `block` consecutive input channels at one kernel position
    (Linear: consecutive input features), ranked by the block's RMS magnitude (quality:
    RMS < q * std); sparsity then counts blocks. The engine's sparse int8 kernels run
    weights pruned in blocks of 4 (with a channel count that is a multiple of 4) as whole
    quads, one vpdpbusd per 16 pixels x 4 channels: faster than unstructured sparsity of
    the same density (docs/COMPRESSION.md). A row's last block is partial when the input
    width is not a multiple of `block`.
    """
    sparsity: Union[None, float, Mapping[str, float]] = None
    quality: Optional[float] = None
    scope: str = "layer"
    block: int = 1

    def __post_init__(self):
        if (self.sparsity is None) == (self.quality is None):
            raise ValueError("PruneConfig: give exactly one of sparsity= or quality=")
        if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 1:
            raise ValueError(f"PruneConfig.block must be an int >= 1, got {self.block!r}")
        if self.scope not in ("layer", "global"):
            raise ValueError(f"PruneConfig.scope must be 'layer' or 'global', got {self.scope!r}")
        if isinstance(self.sparsity, Mapping):
            if self.scope == "global":
                raise ValueError("PruneConfig: a per-layer sparsity dict needs scope='layer' "
                                 "(scope='global' takes one float)")
            if not self.sparsity:
                raise ValueError("PruneConfig.sparsity: the dict is empty")
            for k, v in self.sparsity.items():
                if not isinstance(k, str):
                    raise TypeError(f"PruneConfig.sparsity: keys must be layer names or patterns "
                                    f"(str), got {type(k).__name__}")
                _check_fraction(f"PruneConfig.sparsity[{k!r}]", v)
            object.__setattr__(self, "sparsity", dict(self.sparsity))
        elif self.sparsity is not None:
            _check_fraction("PruneConfig.sparsity", self.sparsity)
        if self.quality is not None:
            if isinstance(self.quality, bool) or not isinstance(self.quality, (int, float)):
                raise TypeError(f"PruneConfig.quality must be a number, got {type(self.quality).__name__}")
            if not (math.isfinite(self.quality) and self.quality >= 0):
                raise ValueError(f"PruneConfig.quality must be a finite number >= 0, got {self.quality}")
            if self.scope == "global":
                raise ValueError("PruneConfig: quality is a per-layer threshold (q * std of the "
                                 "layer's weights); use scope='layer'")


class PruneMask(nn.Module):
    """Parametrization weight = original * mask (mask: a float 0/1 buffer)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.float32).clone())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask.to(w.dtype)


def _mask_of(module: nn.Module) -> Optional[PruneMask]:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in module.parametrizations.weight:
        if isinstance(p, PruneMask):
            return p
    return None


def _apply_mask(module: nn.Module, keep: torch.Tensor) -> None:
    """AND `keep` (bool, weight-shaped) into the layer's mask, creating it if needed."""
    existing = _mask_of(module)
    if existing is not None:
        existing.mask.mul_(keep.to(existing.mask.dtype))
        return
    if parametrize.is_parametrized(module, "weight"):
        # A mask must act first (innermost) so later constraints see the zeros; adding it
        # under an existing one would need re-stacking them: refuse clearly instead.
        raise ValueError(f"prune: {type(module).__name__} already has weight constraints "
                         f"({[type(p).__name__ for p in module.parametrizations.weight]}); "
                         "prune before quantizing or clustering it")
    parametrize.register_parametrization(module, "weight", PruneMask(keep))


def _smallest(values: torch.Tensor, count: int) -> torch.Tensor:
    """Bool mask of the `count` smallest entries of a 1-D tensor (ties: lower index)."""
    out = torch.zeros_like(values, dtype=torch.bool)
    if count > 0:
        order = torch.argsort(values, stable=True)
        out[order[:count]] = True
    return out


def _block_rms(w: torch.Tensor, block: int) -> torch.Tensor:
    """RMS of each block of `block` consecutive input channels: shape (out, ceil(in / block),
    *kernel); a partial last block is averaged over its own weights."""
    cin = w.shape[1]
    nb = -(-cin // block)
    pad = nb * block - cin
    sq = torch.nn.functional.pad(w.pow(2).movedim(1, -1), (0, pad)).movedim(-1, 1)
    sizes = torch.full((nb,), float(block), dtype=w.dtype, device=w.device)
    sizes[-1] = block - pad
    shape = (w.shape[0], nb, block) + tuple(w.shape[2:])
    return (sq.reshape(shape).sum(2) / sizes.reshape((1, nb) + (1,) * (w.dim() - 2))).sqrt()


def _expand_blocks(keep: torch.Tensor, block: int, cin: int) -> torch.Tensor:
    """A per-block mask (out, blocks, *kernel) as a per-weight mask (out, cin, *kernel)."""
    return keep.repeat_interleave(block, dim=1)[:, :cin]


def _layer_targets(config: PruneConfig, chosen: List[Tuple[str, nn.Module]]) -> Dict[str, float]:
    """layer name -> sparsity for a float or dict config (scope 'layer')."""
    if not isinstance(config.sparsity, dict):
        return {n: float(config.sparsity) for n, _ in chosen}
    names = [n for n, _ in chosen]
    for key in config.sparsity:
        if not any(n == key or fnmatch.fnmatchcase(n, key) for n in names):
            raise ValueError(f"PruneConfig.sparsity: {key!r} matches no selected layer; the "
                             f"selected layers are: {', '.join(names) or '(none)'}")
    targets = {}
    for n in names:
        if n in config.sparsity:
            targets[n] = float(config.sparsity[n])
            continue
        for key, v in config.sparsity.items():
            if fnmatch.fnmatchcase(n, key):
                targets[n] = float(v)
                break
    return targets


@torch.no_grad()
def _prune(model: nn.Module, config: PruneConfig, layers: LayerSelection) -> Dict[str, float]:
    if not isinstance(config, PruneConfig):
        raise TypeError(f"prune: expected a PruneConfig, got {type(config).__name__}")
    chosen = select_layers(model, layers)
    if not chosen:
        raise ValueError(f"prune: no Conv2d / Linear layer of {type(model).__name__} is selected")
    keeps: Dict[str, torch.Tensor] = {}
    block = config.block

    def score(w: torch.Tensor) -> torch.Tensor:  # one magnitude per pruning unit
        return w.abs() if block == 1 else _block_rms(w, block)

    def expand(keep: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return keep if block == 1 else _expand_blocks(keep, block, w.shape[1])

    if config.quality is not None:
        for name, m in chosen:
            w = m.weight.detach()
            alive = w[w != 0] if _mask_of(m) is not None else w.reshape(-1)
            std = float(alive.std()) if alive.numel() > 1 else 0.0
            keeps[name] = expand(score(w) >= config.quality * std, w)
    elif config.scope == "global":
        scores = [score(m.weight.detach()) for _, m in chosen]
        mags = torch.cat([sc.reshape(-1) for sc in scores])
        drop = _smallest(mags, int(round(float(config.sparsity) * mags.numel())))
        start = 0
        for (name, m), sc in zip(chosen, scores):
            n = sc.numel()
            keeps[name] = expand(~drop[start:start + n].reshape(sc.shape), m.weight)
            start += n
    else:
        targets = _layer_targets(config, chosen)
        for name, m in chosen:
            if name not in targets:
                continue
            w = m.weight.detach()
            sc = score(w)
            drop = _smallest(sc.reshape(-1), int(round(targets[name] * sc.numel())))
            keeps[name] = expand(~drop.reshape(sc.shape), w)
    modules = dict(chosen)
    for name, keep in keeps.items():
        _apply_mask(modules[name], keep)
    return {name: float((modules[name].weight == 0).float().mean()) for name in keeps}


def prune(model: nn.Module, config: PruneConfig, layers: LayerSelection = None) -> nn.Module:
    """Magnitude-prune the selected Conv2d / Linear weights of `model` in place (see
    PruneConfig) and return it. Magnitudes are those of the current (already masked)
    weight, so pruning a pruned model tightens its masks and never revives a weight."""
    reached = _prune(model, config, layers)
    record(model, "prune", config, method="magnitude", sparsity=reached)
    return model


@torch.no_grad()
def sparsity(model: nn.Module, layers: LayerSelection = None) -> Dict[str, Any]:
    """Fraction of exactly-zero weights: {"layers": {name: fraction}, "total": fraction
    over all selected layers, "zeros": count, "numel": count}."""
    per, zeros, numel = {}, 0, 0
    for name, m in select_layers(model, layers):
        w = m.weight.detach()
        z = int((w == 0).sum())
        per[name] = z / max(w.numel(), 1)
        zeros += z
        numel += w.numel()
    return {"layers": per, "total": zeros / max(numel, 1), "zeros": zeros, "numel": numel}


def masks(model: nn.Module) -> Dict[str, torch.Tensor]:
    """{layer name: bool keep-mask} of every layer with a pruning mask."""
    out = {}
    for name, m in model.named_modules():
        pm = _mask_of(m)
        if pm is not None:
            out[name] = pm.mask.detach() != 0
    return out


# ---------------------------------------------------------------------------------------
# Gradual pruning


def schedule_targets(final: float, steps: int, schedule: str = "polynomial",
                     initial: float = 0.0) -> List[float]:
    """Sparsity after each of `steps` pruning steps. "one_shot": the final sparsity at
    every step (all pruning happens first, the later steps only fine-tune);
    "polynomial": Zhu & Gupta (2017) s_t = s_f + (s_i - s_f) * (1 - t/n)^3 for t = 1..n,
    fast at first, when many redundant weights remain, slow near the end."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if schedule == "one_shot":
        return [float(final)] * steps
    return [float(final + (initial - final) * (1.0 - t / steps) ** 3) for t in range(1, steps + 1)]


def _scaled_config(config: PruneConfig, step_targets: Dict[str, List[float]], i: int,
                   final_is_float: bool) -> PruneConfig:
    if final_is_float:
        return dataclasses.replace(config, sparsity=step_targets["*"][i])
    return dataclasses.replace(config, sparsity={k: v[i] for k, v in step_targets.items()})


def prune_gradually(model: nn.Module, config: PruneConfig, train_loader: Iterable,
                    train: TrainConfig = TrainConfig(), steps: int = 4,
                    schedule: str = "polynomial", val_loader: Optional[Iterable] = None,
                    layers: LayerSelection = None, loss=None) -> Dict[str, Any]:
    """Prune to `config`'s sparsity in `steps` steps, fine-tuning with core.fit (settings
    `train`, masks fixed) after each one. Returns {"steps": [{"step", "target",
    "sparsity" (total over the layers after pruning), "fit": fit history,
    "val_accuracy" (with val_loader)}], "final_sparsity"}. A quality (q) config prunes
    with the same q at every step (Han's iterative pruning) and takes schedule="one_shot"
    only. `loss(model, x, y)` is passed to fit."""
    if not isinstance(config, PruneConfig):
        raise TypeError(f"prune_gradually: expected a PruneConfig, got {type(config).__name__}")
    if not isinstance(train, TrainConfig):
        raise TypeError(f"prune_gradually: train must be a TrainConfig, got {type(train).__name__}")
    if config.quality is not None and schedule != "one_shot":
        raise ValueError("prune_gradually: a quality (q) config has no sparsity to ramp; "
                         "use schedule='one_shot' (the same q at every step)")
    if config.quality is None:
        final = config.sparsity if isinstance(config.sparsity, dict) else {"*": config.sparsity}
        step_targets = {k: schedule_targets(v, steps, schedule) for k, v in final.items()}
    else:
        schedule_targets(0.0, steps, schedule)  # validates steps / schedule
    from .core import evaluate  # local: keep the module import list short
    history: List[Dict[str, Any]] = []
    for i in range(steps):
        if config.quality is None:
            cfg = _scaled_config(config, step_targets, i, not isinstance(config.sparsity, dict))
        else:
            cfg = config
        _prune(model, cfg, layers)
        reached = sparsity(model, layers)["total"]
        fit_hist = fit(model, train_loader, train, loss=loss, val_loader=val_loader,
                       desc=f"prune step {i + 1}/{steps}")
        entry = {"step": i + 1, "target": cfg.sparsity if cfg.quality is None else cfg.quality,
                 "sparsity": reached, "fit": fit_hist}
        if val_loader is not None:
            entry["val_accuracy"] = (fit_hist["val_accuracy"][-1] if fit_hist["val_accuracy"]
                                     else evaluate(model, val_loader)["accuracy"])
        history.append(entry)
    final_sparsity = sparsity(model, layers)
    record(model, "prune", config, method="gradual", schedule=schedule, steps=steps,
           train=train, sparsity=final_sparsity["layers"])
    return {"steps": history, "final_sparsity": final_sparsity["total"]}


# ---------------------------------------------------------------------------------------
# Structured pruning: remove whole conv filters / linear neurons


@dataclasses.dataclass(frozen=True)
class StructuredPruneConfig:
    """Remove the fraction `ratio` (in [0, 1)) of each selected layer's output channels
    (conv filters / linear neurons) with the smallest `norm` ("l1" or "l2") of their
    weights; at least one channel is always kept."""
    ratio: float = 0.5
    norm: str = "l1"

    def __post_init__(self):
        _check_fraction("StructuredPruneConfig.ratio", self.ratio)
        if self.norm not in ("l1", "l2"):
            raise ValueError(f"StructuredPruneConfig.norm must be 'l1' or 'l2', got {self.norm!r}")


# Ops that act on each channel separately (channel c of the output depends only on
# channel c of the input), so a removed channel can be dropped straight through them.
_CHANNELWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU,
                        nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
                        nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d,
                        nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_CHANNELWISE_FUNCTIONS = {F.relu, F.relu6, torch.relu, F.leaky_relu, F.elu, F.gelu, F.silu,
                          torch.tanh, torch.sigmoid, F.hardtanh, F.hardswish, F.dropout,
                          F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                          F.adaptive_max_pool2d, torch.max_pool2d}
_CHANNELWISE_METHODS = {"relu", "relu_", "tanh", "sigmoid", "contiguous"}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}
_FLATTEN_FUNCTIONS = {torch.flatten, torch.reshape}


class _Refused(ValueError):
    pass


def _describe(node: torch.fx.Node) -> str:
    if node.op in ("call_function", "call_method"):
        t = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        return f"{t} (fx node {node.name})"
    if node.op == "call_module":
        return f"module {node.target!r} (fx node {node.name})"
    return f"{node.op} {node.name}"


def _shape(node: torch.fx.Node) -> Optional[Tuple[int, ...]]:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _follow_chain(gm: torch.fx.GraphModule, name: str, node: torch.fx.Node,
                  channels: int) -> Dict[str, Any]:
    """From a producer layer's output, walk single-user channel-wise ops to the one
    Conv2d / Linear that consumes it. Returns {"bns": [names], "consumer": name,
    "spatial": elements per channel at the consumer's input (after a flatten)}."""
    mods = dict(gm.named_modules())
    bns: List[str] = []
    spatial = 1
    cur = node
    while True:
        # shape queries (x.size(0) for a view) read no values: not consumers
        users = [u for u in cur.users if not _is_shape_query(u)]
        if not users:
            raise _Refused(f"prune_channels: layer {name!r}: its output is the model's output; "
                           "removing its channels would change the output's shape")
        if len(users) > 1:
            raise _Refused(f"prune_channels: layer {name!r}: its output feeds "
                           f"{len(users)} ops ({', '.join(_describe(u) for u in users)}); only a "
                           "single chain to one Conv2d / Linear can be shrunk")
        nxt = users[0]
        if nxt.op == "output":
            raise _Refused(f"prune_channels: layer {name!r}: its output is the model's output; "
                           "removing its channels would change the output's shape")
        if nxt.args[:1] != (cur,) or any(a is cur for a in list(nxt.args[1:]) + list(nxt.kwargs.values())):
            raise _Refused(f"prune_channels: layer {name!r}: its output feeds {_describe(nxt)} "
                           "as other than its only tensor input")
        if nxt.op == "call_module":
            m = mods[nxt.target]
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if isinstance(m, nn.Conv2d) and m.groups != 1:
                    raise _Refused(f"prune_channels: layer {name!r} feeds grouped convolution "
                                   f"{nxt.target!r} (groups={m.groups}); it cannot be shrunk")
                expected = m.in_channels if isinstance(m, nn.Conv2d) else m.in_features
                if expected != channels * spatial:
                    raise _Refused(f"prune_channels: layer {name!r}: consumer {nxt.target!r} takes "
                                   f"{expected} inputs, not {channels} channels x {spatial}")
                return {"bns": bns, "consumer": nxt.target, "spatial": spatial}
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                if m.num_features != channels or spatial != 1:
                    raise _Refused(f"prune_channels: layer {name!r}: BatchNorm {nxt.target!r} does "
                                   "not normalize its channels one to one")
                bns.append(nxt.target)
            elif isinstance(m, nn.PReLU) and m.num_parameters != 1:
                raise _Refused(f"prune_channels: layer {name!r}: per-channel PReLU {nxt.target!r} "
                               "is not supported")
            elif isinstance(m, nn.Flatten):
                spatial = _flatten_spatial(name, cur, nxt, spatial, m.start_dim, m.end_dim)
            elif not isinstance(m, _CHANNELWISE_MODULES):
                raise _Refused(f"prune_channels: layer {name!r}: its output feeds "
                               f"{type(m).__name__} {_describe(nxt)}, which is not a channel-wise "
                               "op, BatchNorm, flatten or Conv2d / Linear")
        elif nxt.op == "call_function" and nxt.target in _CHANNELWISE_FUNCTIONS:
            pass
        elif nxt.op == "call_method" and nxt.target in _CHANNELWISE_METHODS:
            pass
        elif (nxt.op == "call_method" and nxt.target in _FLATTEN_METHODS) or \
                (nxt.op == "call_function" and nxt.target in _FLATTEN_FUNCTIONS):
            spatial = _flatten_spatial(name, cur, nxt, spatial, None, None)
        else:
            raise _Refused(f"prune_channels: layer {name!r}: its output feeds {_describe(nxt)} "
                           "(an add, concat or other op that mixes channels or tensors); only "
                           "a chain of channel-wise ops / BatchNorm / pooling / flatten to one "
                           "Conv2d / Linear can be shrunk")
        cur = nxt


def _is_shape_query(node: torch.fx.Node) -> bool:
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    return node.op == "call_function" and node.target is getattr and \
        len(node.args) > 1 and node.args[1] in ("shape", "ndim")


def _flatten_spatial(name: str, src: torch.fx.Node, node: torch.fx.Node, spatial: int,
                     start_dim, end_dim) -> int:
    """Elements per channel after a flatten of (N, C, ...) into (N, C * rest)."""
    before, after = _shape(src), _shape(node)
    if before is None or after is None or len(after) != 2 or len(before) < 2 \
            or after[0] != before[0] or after[1] != math.prod(before[1:]):
        raise _Refused(f"prune_channels: layer {name!r}: {_describe(node)} is not a flatten of "
                       f"(N, C, ...) into (N, C*...) (shapes {before} -> {after})")
    return spatial * math.prod(before[2:])


def _rebuild(old: nn.Module, out_keep: Optional[torch.Tensor],
             in_keep: Optional[torch.Tensor]) -> nn.Module:
    """A new Conv2d / Linear with only the kept output rows / input columns; a pruning
    mask is carried over (sliced) so fine-tuning keeps its zeros."""
    w = old.weight.detach()
    pm = _mask_of(old)
    mask = pm.mask.detach() if pm is not None else None
    if out_keep is not None:
        w = w[out_keep]
        mask = mask[out_keep] if mask is not None else None
    if in_keep is not None:
        w = w[:, in_keep]
        mask = mask[:, in_keep] if mask is not None else None
    bias = old.bias.detach() if old.bias is not None else None
    if bias is not None and out_keep is not None:
        bias = bias[out_keep]
    if isinstance(old, nn.Conv2d):
        new = nn.Conv2d(w.shape[1], w.shape[0], old.kernel_size, stride=old.stride,
                        padding=old.padding, dilation=old.dilation, groups=1,
                        bias=bias is not None, padding_mode=old.padding_mode)
    else:
        new = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    new = new.to(dtype=w.dtype, device=w.device)
    with torch.no_grad():
        new.weight.copy_(w)
        if bias is not None:
            new.bias.copy_(bias)
    new.train(old.training)
    if mask is not None:
        parametrize.register_parametrization(new, "weight", PruneMask(mask))
    return new


def _rebuild_bn(old: nn.Module, keep: torch.Tensor) -> nn.Module:
    new = type(old)(int(keep.sum()), eps=old.eps, momentum=old.momentum, affine=old.affine,
                    track_running_stats=old.track_running_stats)
    with torch.no_grad():
        for attr in ("weight", "bias", "running_mean", "running_var"):
            src = getattr(old, attr, None)
            if src is not None:
                getattr(new, attr).copy_(src.detach()[keep])
        if old.track_running_stats and old.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(old.num_batches_tracked)
    new.train(old.training)
    return new


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def _channel_norms(module: nn.Module, norm: str) -> torch.Tensor:
    w = module.weight.detach().reshape(module.weight.shape[0], -1)
    return w.abs().sum(dim=1) if norm == "l1" else w.pow(2).sum(dim=1).sqrt()


@torch.no_grad()
def prune_channels(model: nn.Module, config: StructuredPruneConfig, example_inputs,
                   layers: LayerSelection = None, physical: bool = True) -> nn.Module:
    """Remove the output channels (conv filters / linear neurons) of the selected layers
    with the smallest weight norm, in place, and return the model.

    The graph is traced with torch.fx (on `example_inputs`, a tensor or tuple) to find
    each layer's consumer: the output must reach exactly one Conv2d (groups 1) / Linear
    through single-use channel-wise ops (activations, pooling, dropout), BatchNorm and
    flatten. physical=True replaces the layer, its BatchNorm and the consumer by smaller
    ones (the consumer loses the matching input channels / flattened columns);
    physical=False keeps the shapes and instead masks the removed rows of the layer and
    the matching input columns of the consumer (the model then computes the same outputs
    as the shrunk one). An explicitly selected layer that cannot be shrunk (its output
    feeds an add, a concat, several ops, or is the model output) raises ValueError naming
    it; with layers=None such layers are skipped (listed in the compression record).
    Layers with constraints other than a pruning mask (quantized, clustered) are refused.
    """
    if not isinstance(config, StructuredPruneConfig):
        raise TypeError(f"prune_channels: expected a StructuredPruneConfig, got {type(config).__name__}")
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if not all(isinstance(t, torch.Tensor) for t in inputs):
        raise TypeError("prune_channels: example_inputs must be a tensor or a tuple of tensors")
    chosen = select_layers(model, layers)
    plain = baked_copy(model)
    if plain is model:
        plain = copy.deepcopy(model)
    try:
        gm = torch.fx.symbolic_trace(plain)
    except Exception as e:  # tracing failures have many types; say what to do
        raise ValueError(f"prune_channels: torch.fx could not trace {type(model).__name__} "
                         f"({type(e).__name__}: {e}); structured pruning needs a traceable model") from e
    was_training = gm.training
    gm.eval()
    ShapeProp(gm).propagate(*inputs)
    gm.train(was_training)
    calls: Dict[str, List[torch.fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node)

    plans: Dict[str, Dict[str, Any]] = {}
    skipped: Dict[str, str] = {}
    for name, m in chosen:
        try:
            if parametrize.is_parametrized(m, "weight") and _mask_of(m) is None or \
                    parametrize.is_parametrized(m, "weight") and len(m.parametrizations.weight) > 1:
                raise _Refused(f"prune_channels: layer {name!r} has weight constraints other than "
                               "a pruning mask (quantized / clustered); prune channels first")
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                raise _Refused(f"prune_channels: layer {name!r} is a grouped convolution "
                               f"(groups={m.groups}); its filters cannot be removed alone")
            nodes = calls.get(name, [])
            if len(nodes) != 1:
                raise _Refused(f"prune_channels: layer {name!r} is called {len(nodes)} times in the "
                               "traced graph; it must be called exactly once")
            channels = m.weight.shape[0]
            chain = _follow_chain(gm, name, nodes[0], channels)
            for other in chain["bns"] + [chain["consumer"]]:
                if len(calls.get(other, [])) != 1:
                    raise _Refused(f"prune_channels: layer {name!r}: {other!r} is called more than "
                                   "once in the graph")
            cons = model.get_submodule(chain["consumer"])
            if parametrize.is_parametrized(cons, "weight") and (
                    _mask_of(cons) is None or len(cons.parametrizations.weight) > 1):
                raise _Refused(f"prune_channels: layer {name!r}: its consumer {chain['consumer']!r} "
                               "has weight constraints other than a pruning mask")
        except _Refused as e:
            if layers is not None:
                raise ValueError(str(e)) from None
            skipped[name] = str(e)
            continue
        remove = min(int(round(config.ratio * channels)), channels - 1)
        drop = _smallest(_channel_norms(m, config.norm), remove)
        plans[name] = dict(chain, keep=~drop, channels=channels)
    if not plans:
        raise ValueError("prune_channels: no selected layer can be shrunk: "
                         + "; ".join(skipped.values()))

    # consumer name -> (keep over its input columns)
    in_keeps: Dict[str, torch.Tensor] = {}
    for name, p in plans.items():
        in_keeps[p["consumer"]] = p["keep"].repeat_interleave(p["spatial"])
    before = sum(int(t.numel()) for t in model.parameters())
    if physical:
        targets = set(plans) | set(in_keeps)
        for target in targets:
            old = model.get_submodule(target)
            out_keep = plans[target]["keep"] if target in plans else None
            _set_submodule(model, target, _rebuild(old, out_keep, in_keeps.get(target)))
        for name, p in plans.items():
            for bn in p["bns"]:
                _set_submodule(model, bn, _rebuild_bn(model.get_submodule(bn), p["keep"]))
    else:
        for name, p in plans.items():
            m = model.get_submodule(name)
            row = p["keep"].reshape(-1, *([1] * (m.weight.dim() - 1)))
            _apply_mask(m, row.expand_as(m.weight).clone())
        for target, keep in in_keeps.items():
            m = model.get_submodule(target)
            col = keep.reshape(1, -1, *([1] * (m.weight.dim() - 2)))
            _apply_mask(m, col.expand_as(m.weight).clone())
    after = sum(int(t.numel()) for t in model.parameters())
    record(model, "prune", config, method="structured", physical=physical,
           kept={n: int(p["keep"].sum()) for n, p in plans.items()},
           channels={n: p["channels"] for n, p in plans.items()},
           skipped=skipped, parameters_before=before, parameters_after=after)
    return model
