"""Low-rank factorization of linear and conv layers (the structure level of the ladder).

- Linear(in, out) -> Sequential(Linear(in, r, bias=False), Linear(r, out)) from the
  truncated SVD W ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T): the best rank-r approximation.
- Conv2d kxk, conv_method="tucker2" (Kim et al. 2016): Sequential(1x1 conv C->r_in,
  kxk core conv r_in->r_out with the original stride / padding / dilation, 1x1 conv
  r_out->O with the bias), initialized by HOSVD: the factors are the leading left
  singular vectors of the output- and input-channel unfoldings of W, the core is W
  projected onto them. Full ranks reproduce W exactly.
- Conv2d kxk, conv_method="spatial_svd" (Jaderberg et al. 2014): Sequential(kh x 1 conv
  C->r, 1 x kw conv r->O with the bias), from the SVD of W arranged as a (C*kh, O*kw)
  matrix; exact at rank r for a kernel that is a sum of r separable terms.
- Conv2d 1x1 (either method) is a linear map per pixel: two 1x1 convs from its SVD.

Rank choice (`LowRankConfig`, exactly one of): `rank` (an int; Tucker-2 uses it for both
modes, each capped at the channel count), `ratio` (the largest rank(s) whose factorized
weights hold at most ratio x the original weight count), `energy` (the smallest rank(s)
keeping that fraction of the sum of squared singular values, per mode for Tucker-2).

A layer is skipped, with the reason in the compression record, when factorizing would
not make it smaller, and when it is a grouped conv (groups != 1: depthwise and grouped
convs are already factorized per group; factorizing across groups would not keep their
structure). Weight constraints (a pruning mask...) are baked before the SVD; the
factors are plain dense layers.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

from . import core

__all__ = ["LowRankConfig", "lowrank", "lowrank_and_finetune", "svd_rank", "factorize_linear",
           "factorize_conv_tucker2", "factorize_conv_spatial"]

_CONV_METHODS = ("tucker2", "spatial_svd")


@dataclasses.dataclass(frozen=True)
class LowRankConfig:
    """Settings of `lowrank`: exactly one of rank / ratio / energy (see the module doc).

    rank: an int >= 1; ratio: in (0, 1), factorized weights / original weights per
    layer; energy: in (0, 1], the fraction of squared singular values kept.
    conv_method: "tucker2" | "spatial_svd" for kxk convs.
    """
    rank: Optional[int] = None
    ratio: Optional[float] = None
    energy: Optional[float] = None
    conv_method: str = "tucker2"

    def __post_init__(self):
        given = [n for n in ("rank", "ratio", "energy") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("LowRankConfig: give exactly one of rank, ratio, energy; got "
                             + (", ".join(given) if given else "none"))
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int)
                                      or self.rank < 1):
            raise ValueError(f"LowRankConfig.rank must be an int >= 1, got {self.rank!r}")
        if self.ratio is not None and not (isinstance(self.ratio, (int, float))
                                           and not isinstance(self.ratio, bool)
                                           and 0 < self.ratio < 1):
            raise ValueError(f"LowRankConfig.ratio must be a number in (0, 1), got {self.ratio!r}")
        if self.energy is not None and not (isinstance(self.energy, (int, float))
                                            and not isinstance(self.energy, bool)
                                            and 0 < self.energy <= 1):
            raise ValueError(f"LowRankConfig.energy must be a number in (0, 1], got {self.energy!r}")
        if self.conv_method not in _CONV_METHODS:
            raise ValueError(f"LowRankConfig.conv_method must be one of {_CONV_METHODS}, "
                             f"got {self.conv_method!r}")


def svd_rank(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest r whose r largest singular values hold `energy` of the sum of squares."""
    s2 = singular_values.double() ** 2
    total = float(s2.sum())
    if total == 0:
        return 1
    kept = torch.cumsum(s2, 0) / total
    # tolerance: energy=1.0 must not ask for more than all the (rounded) mass
    return min(int(torch.searchsorted(kept, torch.tensor(energy - 1e-12, dtype=torch.float64))) + 1,
               len(singular_values))


def _svd(m: torch.Tensor):
    u, s, vh = torch.linalg.svd(m.double(), full_matrices=False)
    return u, s, vh


def _rank_from(config: LowRankConfig, s: torch.Tensor, per_rank: int, full: int) -> int:
    """Rank for one matrix factorization: per_rank = weights per unit of rank, full = the
    original weight count."""
    limit = len(s)
    if config.rank is not None:
        return min(config.rank, limit)
    if config.ratio is not None:
        return max(1, min(limit, int(math.floor(config.ratio * full / per_rank))))
    assert config.energy is not None
    return svd_rank(s, config.energy)


def factorize_linear(layer: nn.Linear, rank: int, factors=None) -> nn.Sequential:
    """Two linears from the rank-`rank` truncated SVD of layer's weight (out, in).
    factors: the SVD (u, s, vh) of the weight if already computed."""
    w = core.dense_weight(layer)
    u, s, vh = factors if factors is not None else _svd(w)
    r = min(rank, len(s))
    root = s[:r].sqrt()
    first = nn.Linear(layer.in_features, r, bias=False)
    second = nn.Linear(r, layer.out_features, bias=layer.bias is not None)
    _set(first.weight, root[:, None] * vh[:r], w)
    _set(second.weight, u[:, :r] * root[None, :], w)
    if layer.bias is not None:
        _set(second.bias, layer.bias.detach(), w)
    return nn.Sequential(first, second).to(w.device)


def _set(param: torch.Tensor, value: torch.Tensor, like: torch.Tensor) -> None:
    with torch.no_grad():
        param.data = value.to(like.dtype).to(like.device).contiguous().clone()


def _conv(conv: nn.Conv2d, cin: int, cout: int, kernel: Tuple[int, int], stride, padding,
          dilation, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation,
                     bias=bias, padding_mode=conv.padding_mode)


def _factorize_pointwise(conv: nn.Conv2d, rank: int, factors=None) -> nn.Sequential:
    """1x1 conv: two 1x1 convs from the SVD of its (O, C) matrix."""
    w = core.dense_weight(conv)
    o, c = w.shape[:2]
    u, s, vh = factors if factors is not None else _svd(w.reshape(o, c))
    r = min(rank, len(s))
    root = s[:r].sqrt()
    first = _conv(conv, c, r, (1, 1), conv.stride, conv.padding, conv.dilation, False)
    second = _conv(conv, r, o, (1, 1), 1, 0, 1, conv.bias is not None)
    _set(first.weight, (root[:, None] * vh[:r]).reshape(r, c, 1, 1), w)
    _set(second.weight, (u[:, :r] * root[None, :]).reshape(o, r, 1, 1), w)
    if conv.bias is not None:
        _set(second.bias, conv.bias.detach(), w)
    return nn.Sequential(first, second).to(w.device)


def _unfoldings(w: torch.Tensor):
    """Singular values and left singular vectors of the output-channel (O, C*kh*kw) and
    input-channel (C, O*kh*kw) unfoldings of w (O, C, kh, kw)."""
    o, c = w.shape[:2]
    u_out, s_out, _ = _svd(w.reshape(o, -1))
    u_in, s_in, _ = _svd(w.transpose(0, 1).reshape(c, -1))
    return (u_out, s_out), (u_in, s_in)


def factorize_conv_tucker2(conv: nn.Conv2d, rank_out: int, rank_in: int,
                           factors=None) -> nn.Sequential:
    """Tucker-2 of a kxk conv by HOSVD: 1x1 (C->rank_in), kxk core, 1x1 (rank_out->O).

    A mode kept at full rank has a square orthogonal factor that saves nothing: it is
    folded into the core, and its 1x1 conv left out (Sequential of 2 convs; of 1 when
    both ranks are full, which is the original conv). factors: _unfoldings(weight) if
    already computed."""
    w = core.dense_weight(conv)
    o, c, kh, kw = w.shape
    (u_out, _), (u_in, _) = factors if factors is not None else _unfoldings(w)
    # an unfolding's rank can be below the channel count (O > C*kh*kw): cap at it
    r_out, r_in = min(rank_out, o, u_out.shape[1]), min(rank_in, c, u_in.shape[1])
    eye_o, eye_c = torch.eye(o, dtype=torch.float64), torch.eye(c, dtype=torch.float64)
    a = u_out[:, :r_out] if r_out < o else eye_o  # (O, r_out)
    b = u_in[:, :r_in] if r_in < c else eye_c     # (C, r_in)
    core_w = torch.einsum("ocij,or,cs->rsij", w.double(), a, b)  # (r_out, r_in, kh, kw)
    bias = conv.bias is not None
    parts: List[nn.Module] = []
    if r_in < c:
        first = _conv(conv, c, r_in, (1, 1), 1, 0, 1, False)
        _set(first.weight, b.t().reshape(r_in, c, 1, 1), w)
        parts.append(first)
    middle = _conv(conv, r_in, r_out, (kh, kw), conv.stride, conv.padding, conv.dilation,
                   bias and r_out == o)
    _set(middle.weight, core_w, w)
    parts.append(middle)
    if r_out < o:
        last = _conv(conv, r_out, o, (1, 1), 1, 0, 1, bias)
        _set(last.weight, a.reshape(o, r_out, 1, 1), w)
        parts.append(last)
    if bias:
        _set(parts[-1].bias, conv.bias.detach(), w)
    return nn.Sequential(*parts).to(w.device)


def _spatial_matrix(w: torch.Tensor) -> torch.Tensor:
    """w (O, C, kh, kw) as M (C*kh, O*kw) with M[c*kh + i, o*kw + j] = w[o, c, i, j]."""
    o, c, kh, kw = w.shape
    return w.permute(1, 2, 0, 3).reshape(c * kh, o * kw)


def factorize_conv_spatial(conv: nn.Conv2d, rank: int, factors=None) -> nn.Sequential:
    """Spatial SVD of a kxk conv: kh x 1 conv (C->rank) then 1 x kw conv (rank->O).
    factors: the SVD (u, s, vh) of its (C*kh, O*kw) matrix if already computed."""
    w = core.dense_weight(conv)
    o, c, kh, kw = w.shape
    u, s, vh = factors if factors is not None else _svd(_spatial_matrix(w))
    r = min(rank, len(s))
    root = s[:r].sqrt()
    vert = (u[:, :r] * root[None, :]).reshape(c, kh, r).permute(2, 0, 1)      # (r, C, kh)
    horiz = (root[:, None] * vh[:r]).reshape(r, o, kw).permute(1, 0, 2)       # (O, r, kw)
    sh, sw = conv.stride
    dh, dw = conv.dilation
    if isinstance(conv.padding, str):
        pad_v: Any = conv.padding
        pad_h: Any = conv.padding
    else:
        pad_v, pad_h = (conv.padding[0], 0), (0, conv.padding[1])
    first = _conv(conv, c, r, (kh, 1), (sh, 1), pad_v, (dh, 1), False)
    second = _conv(conv, r, o, (1, kw), (1, sw), pad_h, (1, dw), conv.bias is not None)
    _set(first.weight, vert.reshape(r, c, kh, 1), w)
    _set(second.weight, horiz.reshape(o, r, 1, kw), w)
    if conv.bias is not None:
        _set(second.bias, conv.bias.detach(), w)
    return nn.Sequential(first, second).to(w.device)


def _tucker_ranks(config: LowRankConfig, w: torch.Tensor, s_out: torch.Tensor,
                  s_in: torch.Tensor) -> Tuple[int, int]:
    o, c, kh, kw = w.shape
    k2 = kh * kw
    if config.rank is not None:
        return min(config.rank, len(s_out)), min(config.rank, len(s_in))
    if config.energy is not None:
        return svd_rank(s_out, config.energy), svd_rank(s_in, config.energy)
    assert config.ratio is not None
    # ranks proportional to the channel counts (r_out = a O, r_in = a C); the weight count
    # C r_in + r_in r_out k2 + r_out O = ratio O C k2 is a quadratic in a
    target = config.ratio * o * c * k2
    qa, qb = o * c * k2, c * c + o * o
    a = (-qb + math.sqrt(qb * qb + 4 * qa * target)) / (2 * qa)
    r_out = max(1, min(len(s_out), int(math.floor(a * o))))
    r_in = max(1, min(len(s_in), int(math.floor(a * c))))
    while (r_out > 1 or r_in > 1) and _tucker_params(o, c, k2, r_out, r_in) > target:
        if r_out * c >= r_in * o and r_out > 1:
            r_out -= 1
        elif r_in > 1:
            r_in -= 1
        else:
            r_out -= 1
    return r_out, r_in


def _tucker_params(o: int, c: int, k2: int, r_out: int, r_in: int) -> int:
    # a full-rank mode has no 1x1 conv (folded into the core)
    return (c * r_in if r_in < c else 0) + r_in * r_out * k2 + (r_out * o if r_out < o else 0)


def _plan(name: str, module: nn.Module, config: LowRankConfig):
    """(factory () -> new module, details) or (None, reason to skip)."""
    w = core.dense_weight(module)
    original = w.numel()
    if isinstance(module, nn.Linear):
        out_f, in_f = w.shape
        f = _svd(w)  # computed once: for the rank and for the factors
        s = f[1]
        r = _rank_from(config, s, in_f + out_f, original)
        after = r * (in_f + out_f)
        details = {"method": "svd", "rank": r, "energy_kept": _energy(s, r)}
        return (lambda: factorize_linear(module, r, f)), details, original, after
    assert isinstance(module, nn.Conv2d)
    if module.groups != 1:
        return None, f"grouped conv (groups={module.groups}) is not factorized", original, original
    o, c, kh, kw = w.shape
    if kh == 1 and kw == 1:
        f = _svd(w.reshape(o, c))
        s = f[1]
        r = _rank_from(config, s, o + c, original)
        details = {"method": "svd", "rank": r, "energy_kept": _energy(s, r)}
        return (lambda: _factorize_pointwise(module, r, f)), details, original, r * (o + c)
    if config.conv_method == "spatial_svd":
        f = _svd(_spatial_matrix(w))
        s = f[1]
        r = _rank_from(config, s, c * kh + o * kw, original)
        details = {"method": "spatial_svd", "rank": r, "energy_kept": _energy(s, r)}
        return (lambda: factorize_conv_spatial(module, r, f)), details, original, r * (c * kh + o * kw)
    modes = _unfoldings(w)
    (_, s_out), (_, s_in) = modes
    r_out, r_in = _tucker_ranks(config, w, s_out, s_in)
    details = {"method": "tucker2", "rank": [r_out, r_in],
               "energy_kept": [_energy(s_out, r_out), _energy(s_in, r_in)]}
    after = _tucker_params(o, c, kh * kw, r_out, r_in)
    return (lambda: factorize_conv_tucker2(module, r_out, r_in, modes)), details, original, after


def _energy(s: torch.Tensor, r: int) -> float:
    s2 = s.double() ** 2
    total = float(s2.sum())
    return float(s2[:r].sum()) / total if total > 0 else 1.0


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def lowrank(model: nn.Module, config: LowRankConfig, layers: core.LayerSelection = None) -> nn.Module:
    """Factorize the selected Linear / Conv2d layers of `model` in place (each replaced in
    its parent by an nn.Sequential of the factors, see the module doc); returns model.

    Appends ("lowrank", config, layers={name: {method, rank, energy_kept, params_before,
    params_after}}, skipped={name: reason}) to the compression record.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"lowrank: model is a {type(model).__name__}, expected a torch.nn.Module")
    if not isinstance(config, LowRankConfig):
        raise TypeError(f"lowrank: config must be a LowRankConfig, got {type(config).__name__}")
    chosen = core.select_layers(model, layers)
    if any(n == "" for n, _ in chosen):
        raise ValueError("lowrank: the model itself is a Linear / Conv2d; wrap it in a "
                         "container so the factors have a parent to live in")
    done: Dict[str, Dict[str, Any]] = {}
    skipped: Dict[str, str] = {}
    for name, module in chosen:
        with torch.no_grad():
            factory, details, before, after = _plan(name, module, config)
            if factory is None:
                skipped[name] = details
                continue
            if after >= before:
                skipped[name] = (f"factorized it would hold {after} weights, not fewer than "
                                 f"its {before}")
                continue
            new = factory()
        new.train(module.training)
        _replace(model, name, new)
        done[name] = dict(details, params_before=before, params_after=after)
    core.record(model, "lowrank", config, layers=done, skipped=skipped)
    return model


def lowrank_and_finetune(model: nn.Module, config: LowRankConfig, train_loader: Iterable,
                         train: core.TrainConfig = core.TrainConfig(),
                         layers: core.LayerSelection = None,
                         val_loader: Optional[Iterable] = None,
                         loss: Optional[core.StepLoss] = None) -> Dict[str, Any]:
    """`lowrank` then `core.fit` of the whole model (factors included) to recover the
    accuracy the truncation lost. Returns fit's history."""
    lowrank(model, config, layers)
    history = core.fit(model, train_loader, train, loss=loss, val_loader=val_loader,
                       desc="fine-tune low-rank")
    core.record(model, "lowrank_finetune", train, steps=history["steps"],
                final_loss=history["epoch_loss"][-1])
    return history
