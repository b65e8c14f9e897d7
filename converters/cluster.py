"""k-means weight sharing (Deep Compression, Han et al. 2016, section 3).

Each selected layer's NON-ZERO weights are clustered into 2^bits shared values
(centroids) by 1-D k-means; every weight is then replaced by its centroid. Zeros (pruned
weights) are not clustered and stay exactly zero, so pruning followed by clustering
keeps its mask.

The constraint is a `SharedWeights` parametrization of `weight` whose trainable
`original` is the centroid vector (shape (k,), or (out_channels, k) with per_channel):
`module.parametrizations.weight.original`. The forward gathers the centroid of each
weight, so autograd gives each centroid the sum of the gradients of the weights that
share it (Han's centroid fine-tuning) and a pruned weight none. The index map is a
buffer; pruned weights point at a reserved extra slot that is a constant 0, not a
parameter.

`cluster_tensor` returns indices with -1 for the zeros (they belong to no cluster).

Initialization (`ClusterConfig.init`): "linear" spaces the centroids linearly between
the min and max of the weights (Han et al. found it best: it keeps the rare large
weights), "density" places them at equal-mass quantiles of the weights (the centers of
2^bits bins of the CDF), "random" picks 2^bits of the weights at random (Forgy).
Then Lloyd iterations; an emptied cluster's centroid is moved to split the worst cluster
(`fill_empty`); a layer (or row) with at most 2^bits distinct nonzeros keeps exactly
those values. A clustered weight therefore never holds more than 2^bits distinct nonzero
values per layer (per row with per_channel), which the exporter's weights="auto" stores
losslessly as a b-bit codebook.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from . import core

__all__ = ["ClusterConfig", "SharedWeights", "cluster_tensor", "cluster", "fine_tune_centroids",
           "codebook", "clustered_layers"]

_INITS = ("linear", "density", "random")


def _check_bits(bits: Any, where: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"{where}: bits must be an int in 1..8, got {bits!r}")
    return bits


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """Settings of `cluster`.

    bits: 2^bits shared values per layer (per output channel with per_channel), an int in
        1..8, or a dict {layer name or fnmatch pattern: bits}; with a dict, an exact name
        wins over patterns, then the first matching pattern; selected layers that no key
        matches are left unclustered (listed as skipped in the record).
    init: "linear" | "density" | "random" (see the module doc).
    per_channel: False: one codebook per layer; True: one per output channel (row).
    max_iter, tol: Lloyd iterations stop after max_iter or when no centroid moves by more
        than tol times the range of the weights.
    seed: the random init's seed (the result is deterministic for a given seed).
    fill_empty: a centroid whose cluster empties moves into the cluster with the largest
        squared error (splitting it) instead of staying unused. Linear init on pruned
        weights needs it: their two tails leave most linearly spaced centroids in the
        empty gap around 0 (with 5 bits, as few as 4 used values without it).
    """
    bits: Union[int, Mapping[str, int]] = 5
    init: str = "linear"
    per_channel: bool = False
    max_iter: int = 100
    tol: float = 1e-6
    seed: int = 0
    fill_empty: bool = True

    def __post_init__(self):
        if isinstance(self.bits, Mapping):
            if not self.bits:
                raise ValueError("ClusterConfig.bits: the dict is empty")
            for key, b in self.bits.items():
                if not isinstance(key, str):
                    raise TypeError(f"ClusterConfig.bits: keys must be layer names or patterns "
                                    f"(str), got {key!r}")
                _check_bits(b, f"ClusterConfig.bits[{key!r}]")
        else:
            _check_bits(self.bits, "ClusterConfig.bits")
        if self.init not in _INITS:
            raise ValueError(f"ClusterConfig.init must be one of {_INITS}, got {self.init!r}")
        if not isinstance(self.per_channel, bool):
            raise TypeError(f"ClusterConfig.per_channel must be a bool, got {self.per_channel!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"ClusterConfig.max_iter must be an int >= 1, got {self.max_iter!r}")
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0):
            raise ValueError(f"ClusterConfig.tol must be a number >= 0, got {self.tol!r}")
        if not isinstance(self.fill_empty, bool):
            raise TypeError(f"ClusterConfig.fill_empty must be a bool, got {self.fill_empty!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"ClusterConfig.seed must be an int, got {self.seed!r}")

    def bits_for(self, name: str) -> Optional[int]:
        """The bits of layer `name` (None: no entry in a bits dict)."""
        if not isinstance(self.bits, Mapping):
            return self.bits
        if name in self.bits:
            return self.bits[name]
        for key, b in self.bits.items():
            if fnmatch.fnmatchcase(name, key):
                return b
        return None


def _init_centroids(sv: torch.Tensor, cnt: torch.Tensor, k: int, init: str,
                    gen: torch.Generator) -> torch.Tensor:
    """(R, k) float64 initial centroids from each row's sorted nonzeros sv[:, :cnt]."""
    rows = sv.shape[0]
    last = (cnt - 1).clamp(min=0)
    if init == "linear":
        lo = sv[:, 0].double()
        hi = sv.gather(1, last[:, None]).squeeze(1).double()
        steps = torch.linspace(0.0, 1.0, k, dtype=torch.float64)
        c = lo[:, None] + (hi - lo)[:, None] * steps[None, :]
    elif init == "density":
        q = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        pos = (q[None, :] * cnt[:, None].double()).floor().long()
        pos = torch.minimum(pos, last[:, None])
        c = sv.gather(1, pos).double()
    else:  # random: k of the row's nonzeros (Forgy)
        u = torch.rand(rows, k, generator=gen, dtype=torch.float64)
        pos = torch.minimum((u * cnt[:, None].double()).floor().long(), last[:, None])
        c = sv.gather(1, pos).double()
    c = torch.where(cnt[:, None] > 0, c, torch.zeros_like(c))
    return torch.sort(c, dim=1).values


def _few_distinct(sv: torch.Tensor, cnt: torch.Tensor, k: int
                  ) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """Rows of sv (sorted nonzeros, then +inf) with at most k distinct values, and an
    (R, k) float64 table holding each such row's distinct values ascending (the last one
    repeated to fill k slots). None when no row qualifies."""
    n = sv.shape[1]
    valid = torch.arange(n)[None, :] < cnt[:, None]
    starts = torch.ones_like(valid)
    if n > 1:
        starts[:, 1:] = sv[:, 1:] != sv[:, :-1]
    starts &= valid
    distinct = starts.sum(dim=1)
    exact = (distinct <= k) & (cnt > 0)
    if not bool(exact.any()):
        return None
    rank = (starts.cumsum(dim=1) - 1).clamp(0, k - 1)
    # writing every valid value at its rank leaves each slot with its distinct value (all
    # writers of a slot agree); the +inf padding goes to a spare column k, then dropped
    table = torch.zeros(sv.shape[0], k + 1, dtype=torch.float64)
    table.scatter_(1, torch.where(valid, rank, torch.full_like(rank, k)), sv.double())
    table = table[:, :k]
    slot = torch.arange(k)[None, :]
    last = table.gather(1, (distinct - 1).clamp(0, k - 1)[:, None])  # rows with more: unused
    table = torch.where(slot < distinct[:, None], table, last)
    return exact, table


def _refill_empty(c: torch.Tensor, counts: torch.Tensor, sumsq: torch.Tensor
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Move each empty cluster's centroid into the cluster with the largest squared error
    (the q-th empty slot of a row splits its q-th worst cluster), half a standard
    deviation above that cluster's mean, so no codebook entry is wasted (linear init on
    pruned, two-sided weights otherwise leaves most centroids in the gap around 0).
    Returns the centroids and which rows changed."""
    n = counts.double()
    sse = (sumsq - c * c * n).clamp(min=0)  # c holds the means of the non-empty clusters
    sse = torch.where(counts > 0, sse, torch.full_like(sse, -1.0))
    order = torch.argsort(sse, dim=1, descending=True)
    empty = counts == 0
    q = (empty.long().cumsum(dim=1) - 1).clamp(min=0)
    target = order.gather(1, q)
    ok = empty & (sse.gather(1, target) > 0)
    std = (sse / n.clamp(min=1)).clamp(min=0).sqrt()
    moved_to = c.gather(1, target) + 0.5 * std.gather(1, target)
    return torch.where(ok, moved_to, c), ok.any(dim=1)


def _kmeans_rows(w2: torch.Tensor, k: int, init: str, max_iter: int, tol: float,
                 seed: int, fill_empty: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """1-D Lloyd k-means of the nonzeros of each row of w2 (R, N) float32.

    Sorted 1-D k-means: in sorted order each cluster is a contiguous run bounded by the
    midpoints between neighbouring centroids, so one iteration is a searchsorted of k-1
    midpoints plus prefix sums (O(k log N)) after a single sort.
    """
    nz = w2 != 0
    cnt = nz.sum(dim=1)
    inf = torch.tensor(float("inf"), dtype=w2.dtype)
    # numpy's sort is several times faster than torch's on one long row
    sv = torch.from_numpy(np.sort(torch.where(nz, w2, inf).numpy(), axis=1))  # nonzeros, then +inf
    finite = torch.where(torch.isinf(sv), torch.zeros((), dtype=torch.float64), sv.double())
    zero_col = torch.zeros(sv.shape[0], 1, dtype=torch.float64)
    prefix = torch.cat([zero_col, finite.cumsum(dim=1)], dim=1)
    prefix_sq = torch.cat([zero_col, (finite * finite).cumsum(dim=1)], dim=1) if fill_empty else None
    del finite
    gen = torch.Generator().manual_seed(seed)
    c = _init_centroids(sv, cnt, k, init, gen)
    lo = sv[:, 0].double()
    hi = sv.gather(1, (cnt - 1).clamp(min=0)[:, None]).squeeze(1).double()
    span = float(torch.where(cnt > 0, hi - lo, torch.zeros_like(lo)).max()) if sv.numel() else 0.0
    threshold = tol * (span if span > 0 else 1.0)
    # A row with at most k distinct nonzeros takes them as its centroids (lossless; Lloyd
    # could merge two of them and leave a cluster empty); the other rows run Lloyd.
    small = _few_distinct(sv, cnt, k)
    if small is not None:
        exact, table = small
        c[exact] = table[exact]
    else:
        exact = torch.zeros(sv.shape[0], dtype=torch.bool)
    # Lloyd iterations on the rows still moving (per-channel rows converge at different
    # speeds; a converged row's assignment no longer changes)
    active = torch.nonzero(~exact & (cnt > 0)).flatten()
    previous = torch.full((sv.shape[0], k + 1), -1, dtype=torch.long)
    for _ in range(max_iter):
        if active.numel() == 0:
            break
        ca = c[active]
        # bounds[:, j]: how many values have a cluster < j (the values <= mids[:, j-1]);
        # while many rows move, searching all rows beats copying the moving ones out of sv
        if 4 * len(active) > sv.shape[0]:
            mids = ((c[:, 1:] + c[:, :-1]) / 2).to(sv.dtype).contiguous()
            inner = torch.searchsorted(sv, mids, right=True)[active]
        else:
            mids = ((ca[:, 1:] + ca[:, :-1]) / 2).to(sv.dtype).contiguous()
            inner = torch.searchsorted(sv[active], mids, right=True)
        bounds = torch.cat([torch.zeros(len(active), 1, dtype=torch.long), inner,
                            cnt[active, None]], dim=1)
        changed = (bounds != previous[active]).any(dim=1)
        previous[active] = bounds
        flat = bounds + (active * prefix.shape[1])[:, None]  # index prefix without copying rows
        at = prefix.view(-1)[flat]
        sums = at[:, 1:] - at[:, :-1]
        counts = bounds[:, 1:] - bounds[:, :-1]
        new = torch.where(counts > 0, sums / counts.clamp(min=1).double(), ca)  # empty: stays
        refilled = torch.zeros(len(active), dtype=torch.bool)
        if prefix_sq is not None and bool((counts == 0).any()):
            at_sq = prefix_sq.view(-1)[flat]
            new, refilled = _refill_empty(new, counts, at_sq[:, 1:] - at_sq[:, :-1])
        new = torch.sort(new, dim=1).values
        moved = ((new - ca).abs().amax(dim=1) > threshold) | refilled
        changed |= refilled
        c[active] = new
        # a row whose assignment did not change has reached its fixed point
        active = active[changed & moved]
        if active.numel() == 0:
            break
    centroids = c.to(w2.dtype)
    if k == 1:
        codes = torch.zeros(w2.shape, dtype=torch.long)
    else:
        # code = number of midpoints strictly below the value: its nearest centroid (in
        # float64: a float32 midpoint of two adjacent floats could round onto one of them)
        mids = ((c[:, 1:] + c[:, :-1]) / 2).contiguous()
        if mids.shape[0] == 1:
            codes = torch.bucketize(w2.double(), mids[0], right=False)
        else:
            codes = torch.searchsorted(mids, w2.double().contiguous(), right=False)
    codes = torch.where(nz, codes, torch.full_like(codes, -1))
    return centroids, codes


def cluster_tensor(w: torch.Tensor, bits: int, init: str = "linear", per_channel: bool = False,
                   max_iter: int = 100, tol: float = 1e-6, seed: int = 0,
                   fill_empty: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """k-means of the nonzero entries of `w` into k = 2^bits centroids.

    Returns (centroids, indices): centroids (k,) sorted ascending, or (w.shape[0], k) with
    per_channel (one codebook per output channel); indices an int64 tensor of w's shape
    with each weight's centroid, and -1 where w is 0 (zeros are not clustered and stay
    0). A row with at most k distinct nonzeros gets exactly those values (lossless).
    fill_empty: see ClusterConfig; without it (or when nothing is left to split) an empty
    cluster's centroid keeps its last position. Deterministic for a given seed; the
    dtype of the centroids is w's.
    """
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"cluster_tensor: w must be a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"cluster_tensor: w must be floating point, got {w.dtype}")
    _check_bits(bits, "cluster_tensor")
    if init not in _INITS:
        raise ValueError(f"cluster_tensor: init must be one of {_INITS}, got {init!r}")
    if w.numel() == 0:
        raise ValueError("cluster_tensor: w is empty")
    if per_channel and w.dim() < 2:
        raise ValueError(f"cluster_tensor: per_channel needs a weight with >= 2 dims, got shape "
                         f"{tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError("cluster_tensor: w holds NaN or infinite values")
    k = 1 << bits
    w32 = w.detach().to("cpu", torch.float32)
    w2 = w32.reshape(w.shape[0], -1) if per_channel else w32.reshape(1, -1)
    centroids, codes = _kmeans_rows(w2, k, init, max_iter, float(tol), seed, fill_empty)
    if not per_channel:
        centroids = centroids[0]
    return centroids.to(w.dtype), codes.reshape(w.shape)


class SharedWeights(nn.Module):
    """Parametrization weight = centroids[index] (0 where the weight was pruned).

    The parametrized tensor (`original`) is the centroid vector, (k,) or (out, k) with
    per_channel; `codes` (int16 buffer, weight's shape) holds each weight's centroid, k
    (a reserved constant-0 slot) for pruned weights.
    """

    def __init__(self, indices: torch.Tensor, centroids: torch.Tensor, per_channel: bool):
        super().__init__()
        self.per_channel = bool(per_channel)
        self.k = int(centroids.shape[-1])
        codes = torch.where(indices < 0, torch.full_like(indices, self.k), indices)
        self.register_buffer("codes", codes.to(torch.int16))  # k <= 256: int16 is enough
        # right_inverse's value for a cluster with no member (its centroid is free)
        self.register_buffer("fallback", centroids.detach().clone(), persistent=False)

    def _table(self, centroids: torch.Tensor) -> torch.Tensor:
        if self.per_channel:
            return torch.cat([centroids, centroids.new_zeros(centroids.shape[0], 1)], dim=1)
        return torch.cat([centroids, centroids.new_zeros(1)])

    def forward(self, centroids: torch.Tensor) -> torch.Tensor:
        table = self._table(centroids)
        codes = self.codes.long()
        if self.per_channel:
            return table.gather(1, codes.reshape(codes.shape[0], -1)).reshape(codes.shape)
        return table[codes]

    @torch.no_grad()
    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """The centroids that best reproduce `weight` (least squares): the mean of each
        cluster's weights; a cluster with no member keeps its previous centroid."""
        rows = weight.shape[0] if self.per_channel else 1
        w = weight.detach().reshape(rows, -1).double()
        codes = self.codes.long().reshape(rows, -1)
        sums = torch.zeros(rows, self.k + 1, dtype=torch.float64).scatter_add_(1, codes, w)
        counts = torch.zeros(rows, self.k + 1, dtype=torch.float64).scatter_add_(
            1, codes, torch.ones_like(w))
        fallback = self.fallback.reshape(rows, self.k).double()
        means = torch.where(counts[:, :self.k] > 0, sums[:, :self.k] / counts[:, :self.k].clamp(min=1),
                            fallback)
        out = means.to(weight.dtype)
        return out if self.per_channel else out[0]


def _shared(module: nn.Module) -> Optional[SharedWeights]:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in module.parametrizations.weight:
        if isinstance(p, SharedWeights):
            return p
    return None


def clustered_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(name, module) of every layer of `model` whose weight is shared (SharedWeights)."""
    return [(n, m) for n, m in model.named_modules() if _shared(m) is not None]


def cluster(model: nn.Module, config: ClusterConfig = ClusterConfig(),
            layers: core.LayerSelection = None) -> nn.Module:
    """Share the weights of the selected conv / linear layers of `model` (in place).

    A weight that already carries constraints (e.g. a pruning mask) is first made a
    plain tensor holding its current value, so its zeros stay zero; then its nonzeros are
    clustered (`cluster_tensor`) and a SharedWeights parametrization is registered.
    Appends ("cluster", config, layers={name: {bits, k, nonzeros, mse}}, skipped=[...])
    to the compression record.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"cluster: model is a {type(model).__name__}, expected a torch.nn.Module")
    if not isinstance(config, ClusterConfig):
        raise TypeError(f"cluster: config must be a ClusterConfig, got {type(config).__name__}")
    chosen = core.select_layers(model, layers)
    if isinstance(config.bits, Mapping):  # a key that names no selected layer is a typo
        names = [n for n, _ in chosen]
        for key in config.bits:
            if not any(n == key or fnmatch.fnmatchcase(n, key) for n in names):
                raise ValueError(f"ClusterConfig.bits: {key!r} matches no selected layer; the "
                                 f"selected layers are: {', '.join(names) or '(none)'}")
    done: Dict[str, Dict[str, Any]] = {}
    skipped: List[str] = []
    for name, module in chosen:
        bits = config.bits_for(name)
        if bits is None:
            skipped.append(name)
            continue
        core.remove_weight_parametrizations(module)  # keeps the current (masked) value
        w = module.weight.detach()
        if config.per_channel and w.dim() < 2:
            raise ValueError(f"cluster: layer {name!r}: per_channel needs a weight with >= 2 dims")
        centroids, indices = cluster_tensor(w, bits, config.init, config.per_channel,
                                            config.max_iter, config.tol, config.seed,
                                            config.fill_empty)
        shared = SharedWeights(indices, centroids, config.per_channel).to(w.device)
        parametrize.register_parametrization(module, "weight", shared)
        with torch.no_grad():
            err = float(((module.weight - w) ** 2).mean())
        done[name] = {"bits": bits, "k": 1 << bits, "nonzeros": int((indices >= 0).sum()),
                      "mse": err}
    core.record(model, "cluster", config, layers=done, skipped=skipped)
    return model


def fine_tune_centroids(model: nn.Module, train_loader: Iterable,
                        train: core.TrainConfig = core.TrainConfig(),
                        val_loader: Optional[Iterable] = None, centroids_only: bool = True,
                        loss: Optional[core.StepLoss] = None) -> Dict[str, Any]:
    """Fine-tune the shared values of a clustered model with `core.fit`.

    centroids_only=True trains the centroids of the clustered layers only; False trains
    every trainable parameter (centroids, biases, unclustered layers): the sharing and
    pruning constraints hold either way. Returns fit's history and records
    ("fine_tune_centroids", train, ...).
    """
    shared = clustered_layers(model)
    if not shared:
        raise ValueError("fine_tune_centroids: the model has no clustered layer; call cluster() first")
    if centroids_only:
        params = [m.parametrizations.weight.original for _, m in shared]
    else:
        params = list(model.parameters())
    history = core.fit(model, train_loader, train, loss=loss, val_loader=val_loader,
                       parameters=params, desc="fine-tune centroids")
    core.record(model, "fine_tune_centroids", train, centroids_only=centroids_only,
                steps=history["steps"], final_loss=history["epoch_loss"][-1])
    return history


@torch.no_grad()
def codebook(model: nn.Module) -> Dict[str, Dict[str, Any]]:
    """Per clustered layer: {"centroids": (k,) or (out, k) tensor, "counts": how many
    weights share each centroid (same shape), "pruned": weights held at 0, "per_channel"}.
    """
    out: Dict[str, Dict[str, Any]] = {}
    for name, module in clustered_layers(model):
        p = _shared(module)
        assert p is not None
        rows = p.codes.shape[0] if p.per_channel else 1
        codes = p.codes.long().reshape(rows, -1)
        counts = torch.zeros(rows, p.k + 1, dtype=torch.long).scatter_add_(
            1, codes, torch.ones_like(codes))
        cent = module.parametrizations.weight.original.detach().clone()
        out[name] = {"centroids": cent,
                     "counts": counts[:, :p.k] if p.per_channel else counts[0, :p.k],
                     "pruned": int(counts[:, p.k].sum()), "per_channel": p.per_channel}
    return out
