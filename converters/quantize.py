"""Uniform weight quantization: post-training (`quantize`) and quantization-aware
training (`quantize_aware_training`), both built on one pure function,
`quantize_tensor`, that returns the dequantized ("fake-quantized") weight.

Grids (b bits, step s > 0):
- symmetric: levels k * s for k in -(2^(b-1)-1) .. 2^(b-1)-1 (2^b - 1 levels, the
  most negative code left unused so the grid is symmetric and 0 is a level);
- asymmetric: levels (k - z) * s for k in 0 .. 2^b-1, with an integer zero point z, so
  0.0 is always exactly a level (pruned zeros stay zero).
The range [low, high] a grid covers is chosen per tensor, per output channel (dim 0) or
per bucket of `bucket_size` consecutive elements of the flattened tensor (Polino et al.
2018), by min-max, a percentile of the values, or the clip ratio that minimizes the
squared error (calibration "mse"). Values outside the range are clamped to it; values
inside it are rounded to the nearest level, so their error is at most s / 2.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from .core import (LayerSelection, TrainConfig, fit, record, select_layers)

__all__ = ["QuantizeConfig", "QuantizedTensor", "quantize_tensor", "quantize_tensor_detail",
           "fake_quantize", "FakeQuantize", "quantize", "quantize_aware_training",
           "ActivationQuantizer", "SCHEMES", "GRANULARITIES", "CALIBRATIONS"]

SCHEMES = ("symmetric", "asymmetric")
GRANULARITIES = ("tensor", "channel", "bucket")
CALIBRATIONS = ("minmax", "percentile", "mse")
# calibration="mse": clip ratios tried (fractions of the min-max range).
MSE_CLIP_RATIOS = tuple(0.10 + 0.90 * i / 45 for i in range(46))


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """How to quantize a weight tensor.

    bits: 2..8 (8, 4 and 2 are the usual choices). scheme: "symmetric" (levels
    -(2^(b-1)-1)..2^(b-1)-1 times a step) or "asymmetric" (2^b levels with an integer
    zero point; 0.0 exact). granularity: one range per "tensor", per output "channel"
    (dim 0) or per "bucket" of bucket_size consecutive elements of the flattened
    tensor. calibration: "minmax", "percentile" (the `percentile`-th percentile of |w|,
    or of w and -w for asymmetric) or "mse" (the clip ratio of the min-max range with the
    least squared error).
    """
    bits: int = 8
    scheme: str = "symmetric"
    granularity: str = "channel"
    bucket_size: int = 256
    calibration: str = "minmax"
    percentile: float = 99.99

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise TypeError(f"QuantizeConfig.bits must be an int, got {type(self.bits).__name__}")
        if not 2 <= self.bits <= 8:
            raise ValueError(f"QuantizeConfig.bits must be in 2..8, got {self.bits}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"QuantizeConfig.scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"QuantizeConfig.granularity must be one of {GRANULARITIES}, "
                             f"got {self.granularity!r}")
        if isinstance(self.bucket_size, bool) or not isinstance(self.bucket_size, int) \
                or self.bucket_size < 1:
            raise ValueError(f"QuantizeConfig.bucket_size must be an int >= 1, got {self.bucket_size!r}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"QuantizeConfig.calibration must be one of {CALIBRATIONS}, "
                             f"got {self.calibration!r}")
        if not (50.0 < float(self.percentile) <= 100.0):
            raise ValueError(f"QuantizeConfig.percentile must be in (50, 100], got {self.percentile}")

    @property
    def levels(self) -> int:
        """How many distinct values a quantized group can hold."""
        return 2 ** self.bits - 1 if self.scheme == "symmetric" else 2 ** self.bits


class QuantizedTensor(NamedTuple):
    """`values`: the dequantized tensor; `step`, `low`, `high`: per element, the grid
    step and the clip range of the group the element belongs to (same shape as values)."""
    values: torch.Tensor
    step: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor


def _check_config(config: Any) -> QuantizeConfig:
    if not isinstance(config, QuantizeConfig):
        raise TypeError(f"expected a QuantizeConfig, got {type(config).__name__}")
    return config


def _as_groups(w: torch.Tensor, config: QuantizeConfig) -> List[torch.Tensor]:
    """The tensor as 2-D blocks whose rows are the groups sharing one range (in order:
    concatenating the flattened blocks gives the flattened tensor back)."""
    flat = w.reshape(-1)
    if config.granularity == "tensor" or w.dim() == 0:
        return [flat.reshape(1, -1)]
    if config.granularity == "channel":
        return [w.reshape(w.shape[0], -1)]
    n, size = flat.numel(), config.bucket_size
    full = (n // size) * size
    blocks = [flat[:full].reshape(-1, size)] if full else []
    if full < n:  # the last, shorter bucket
        blocks.append(flat[full:].reshape(1, -1))
    return blocks


def _grid(low: torch.Tensor, high: torch.Tensor, config: QuantizeConfig):
    """(step, zero point, min code, max code) for per-row ranges [low, high] (column
    tensors); the range always contains 0."""
    tiny = torch.finfo(torch.float32).tiny
    if config.scheme == "symmetric":
        qmax = 2 ** (config.bits - 1) - 1
        amax = torch.maximum(low.abs(), high.abs())
        step = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
        return step.clamp_min(tiny), torch.zeros_like(step), -qmax, qmax
    qmax = 2 ** config.bits - 1
    width = high - low
    step = torch.where(width > 0, width / qmax, torch.ones_like(width)).clamp_min(tiny)
    zero = torch.round(-low / step).clamp(0, qmax)
    return step, zero, 0, qmax


def _round_to_grid(g: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
                   config: QuantizeConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    step, zero, qmin, qmax = _grid(low, high, config)
    codes = torch.clamp(torch.round(g / step) + zero, qmin, qmax)
    return (codes - zero) * step, step


def _row_quantile(g: torch.Tensor, p: float) -> torch.Tensor:
    """Per-row nearest-rank quantile (kthvalue: no size limit, unlike torch.quantile)."""
    n = g.shape[1]
    k = min(n, max(1, int(round(p * (n - 1))) + 1))
    return torch.kthvalue(g, k, dim=1, keepdim=True).values


def _ranges(g: torch.Tensor, config: QuantizeConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-row clip range [low, high] (column tensors), widened to contain 0."""
    if config.calibration == "percentile" and config.percentile < 100.0:
        p = float(config.percentile) / 100.0
        if config.scheme == "symmetric":
            amax = _row_quantile(g.abs(), p)
            low, high = -amax, amax
        else:
            low = _row_quantile(g, 1.0 - p)
            high = _row_quantile(g, p)
    else:
        low = g.amin(dim=1, keepdim=True)
        high = g.amax(dim=1, keepdim=True)
        if config.scheme == "symmetric":
            amax = torch.maximum(low.abs(), high.abs())
            low, high = -amax, amax
    low, high = low.clamp_max(0.0), high.clamp_min(0.0)
    if config.calibration == "mse":
        best_err = torch.full_like(low, float("inf"))
        best_low, best_high = low.clone(), high.clone()
        for r in MSE_CLIP_RATIOS:
            lo, hi = low * r, high * r
            deq, _ = _round_to_grid(g, lo, hi, config)
            err = ((deq - g) ** 2).sum(dim=1, keepdim=True)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_low = torch.where(better, lo, best_low)
            best_high = torch.where(better, hi, best_high)
        low, high = best_low, best_high
    return low, high


@torch.no_grad()
def _quantize(w: torch.Tensor, config: QuantizeConfig, detail: bool):
    config = _check_config(config)
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"quantize_tensor: expected a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"quantize_tensor: expected a floating-point tensor, got {w.dtype}")
    if w.numel() == 0:
        empty = w.detach().clone()
        return QuantizedTensor(empty, empty.clone(), empty.clone(), empty.clone()) if detail else empty
    if not bool(torch.isfinite(w).all()):
        raise ValueError("quantize_tensor: the tensor holds NaN or infinite values")
    g32 = w.detach().to(torch.float32)
    values, steps, lows, highs = [], [], [], []
    for g in _as_groups(g32, config):
        low, high = _ranges(g, config)
        deq, step = _round_to_grid(g, low, high, config)
        values.append(deq.reshape(-1))
        if detail:  # per-element copies cost memory: only when asked for
            steps.append(step.expand_as(g).reshape(-1))
            lows.append(low.expand_as(g).reshape(-1))
            highs.append(high.expand_as(g).reshape(-1))

    def whole(parts):
        return torch.cat(parts).reshape(w.shape).to(w.dtype)
    if not detail:
        return whole(values)
    return QuantizedTensor(whole(values), whole(steps), whole(lows), whole(highs))


def quantize_tensor_detail(w: torch.Tensor, config: QuantizeConfig) -> QuantizedTensor:
    """`quantize_tensor` plus, per element, the grid step and the clip range used."""
    return _quantize(w, config, detail=True)


def quantize_tensor(w: torch.Tensor, config: QuantizeConfig) -> torch.Tensor:
    """The dequantized (fake-quantized) copy of `w`: same shape and dtype, every group
    (tensor / output channel / bucket) rounded to its uniform grid of at most 2^bits
    levels (see the module docstring). No gradient flows through it; for training use
    `fake_quantize`."""
    return _quantize(w, config, detail=False)


def fake_quantize(w: torch.Tensor, config: QuantizeConfig) -> torch.Tensor:
    """Straight-through estimator: the forward value is quantize_tensor(w), the gradient
    with respect to w is the identity (Bengio et al. 2013; as in QAT and Polino et al.)."""
    return w + (quantize_tensor(w, config) - w).detach()


class FakeQuantize(nn.Module):
    """Parametrization of a weight: forward = fake_quantize(weight, config)."""

    def __init__(self, config: QuantizeConfig):
        super().__init__()
        self.config = _check_config(config)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize(w, self.config)

    def extra_repr(self) -> str:
        c = self.config
        return f"bits={c.bits}, scheme={c.scheme}, granularity={c.granularity}"


# ---------------------------------------------------------------------------------------
# Post-training quantization


def _pruning_mask_only(module: nn.Module) -> bool:
    """True when the weight's only constraint is a pruning mask (or it has none)."""
    if not parametrize.is_parametrized(module, "weight"):
        return True
    from .prune import PruneMask  # prune does not import quantize: no cycle
    plist = module.parametrizations.weight
    return len(plist) == 1 and isinstance(plist[0], PruneMask)


def _check_layers(model: nn.Module, chosen, verb: str) -> None:
    if not chosen:
        raise ValueError(f"{verb}: no Conv2d / Linear layer of {type(model).__name__} is selected")
    for name, m in chosen:
        if not _pruning_mask_only(m):
            kinds = [type(p).__name__ for p in m.parametrizations.weight]
            raise ValueError(f"{verb}: layer {name!r} already has weight constraints {kinds}; "
                             "only a pruning mask can stay under quantization (bake the others "
                             "first with core.bake)")


@torch.no_grad()
def quantize(model: nn.Module, config: QuantizeConfig, layers: LayerSelection = None) -> nn.Module:
    """Post-training weight quantization of the selected Conv2d / Linear layers, in place:
    each weight is replaced by quantize_tensor(weight, config) (its dequantized values,
    so the model still runs in float and the exporter can store the grid losslessly).
    A pruning mask stays in place and its zeros stay zero (0 is a level of every grid)."""
    _check_config(config)
    chosen = select_layers(model, layers)
    _check_layers(model, chosen, "quantize")
    for name, m in chosen:
        q = quantize_tensor(m.weight.detach(), config)
        if parametrize.is_parametrized(m, "weight"):
            # weight = original * mask; q is already 0 where the mask is 0
            m.parametrizations.weight.original.copy_(q)
        else:
            m.weight.copy_(q)
    record(model, "quantize", config, method="post_training", layers=[n for n, _ in chosen])
    return model


# ---------------------------------------------------------------------------------------
# Quantization-aware training


class ActivationQuantizer:
    """Forward pre-hook that fake-quantizes a layer's input (asymmetric, per tensor,
    `bits` bits, straight-through gradient) over a range tracked by an exponential
    moving average of the batch min / max while training (fixed in eval mode)."""

    def __init__(self, bits: int, momentum: float = 0.1):
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f"activation_bits must be an int in 2..8, got {bits!r}")
        self.config = QuantizeConfig(bits=bits, scheme="asymmetric", granularity="tensor")
        self.momentum = momentum
        self.low: Optional[float] = None
        self.high: Optional[float] = None

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = float(x.detach().min()), float(x.detach().max())
        if self.low is None:
            self.low, self.high = lo, hi
        else:
            self.low += self.momentum * (lo - self.low)
            self.high += self.momentum * (hi - self.high)

    def __call__(self, module: nn.Module, args):
        if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
            return None
        x = args[0]
        if module.training:
            self.observe(x)
        if self.low is None:
            return None
        lo = torch.tensor([[min(self.low, 0.0)]], dtype=torch.float32)
        hi = torch.tensor([[max(self.high, 0.0)]], dtype=torch.float32)
        flat = x.detach().to(torch.float32).reshape(1, -1)
        deq, _ = _round_to_grid(flat, lo, hi, self.config)
        q = x + (deq.reshape(x.shape).to(x.dtype) - x).detach()
        return (q,) + tuple(args[1:])


def quantize_aware_training(model: nn.Module, config: QuantizeConfig, train_loader: Iterable,
                            train: TrainConfig = TrainConfig(), val_loader: Optional[Iterable] = None,
                            activation_bits: Optional[int] = None, layers: LayerSelection = None,
                            loss=None) -> Dict[str, Any]:
    """Fine-tune `model` with fake-quantized weights (straight-through estimator) and
    leave it with quantized weights, in place; returns core.fit's history.

    Each selected layer's weight gets a FakeQuantize parametrization (stacked on a
    pruning mask when there is one, so pruned weights stay zero). With activation_bits,
    each selected layer's input is fake-quantized too (ActivationQuantizer pre-hooks,
    removed afterwards: the exported model keeps float activations). At the end the
    fake quantization is baked: module.weight holds quantize_tensor of the trained
    weight (a pruning mask is kept)."""
    _check_config(config)
    if not isinstance(train, TrainConfig):
        raise TypeError(f"quantize_aware_training: train must be a TrainConfig, got {type(train).__name__}")
    chosen = select_layers(model, layers)
    _check_layers(model, chosen, "quantize_aware_training")
    hooks = []
    if activation_bits is not None:
        for _, m in chosen:
            hooks.append(m.register_forward_pre_hook(ActivationQuantizer(activation_bits)))
    for _, m in chosen:
        parametrize.register_parametrization(m, "weight", FakeQuantize(config))
    try:
        history = fit(model, train_loader, train, loss=loss, val_loader=val_loader, desc="qat")
    finally:
        for h in hooks:
            h.remove()
        for _, m in chosen:
            _bake_fake_quant(m)
    record(model, "quantize", config, method="qat", activation_bits=activation_bits, train=train,
           layers=[n for n, _ in chosen])
    return history


@torch.no_grad()
def _bake_fake_quant(module: nn.Module) -> None:
    """Replace the weight's constraints by their current value, keeping a pruning mask
    (as a fresh mask over the baked value, which is already zero where it is zero)."""
    from .prune import PruneMask
    mask = None
    for p in module.parametrizations.weight:
        if isinstance(p, PruneMask):
            mask = p.mask.detach().clone()
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    if mask is not None:
        parametrize.register_parametrization(module, "weight", PruneMask(mask))
