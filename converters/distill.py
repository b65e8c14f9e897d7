"""Knowledge transfer from a teacher network to a student: knowledge distillation
(Hinton et al. 2015, with optional FitNets hints, Romero et al. 2015), quantized
distillation and differentiable quantization (Polino et al. 2018).

The distillation loss of one batch, with student logits s, teacher logits t, labels y:

    alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)
    + hint_weight * sum over hints of MSE(regressor(student feature), teacher feature)

The T^2 factor keeps the soft term's gradients on the same scale as the hard term's
when T changes (the gradient of the softened KL shrinks as 1 / T^2). The teacher runs
in eval mode under no_grad; it is never changed.

- `distill`: train the student with that loss (all its trainable parameters).
- `quantized_distillation`: the student keeps full-precision weights, but every forward
  and backward pass uses their quantized value (`quantize.fake_quantize`, a
  straight-through estimator); the optimizer updates the full-precision copy, and at the
  end each weight is replaced by its quantized value (at most 2^bits distinct values per
  tensor / channel / bucket), which the exporter's weights="auto" stores as a codebook.
- `differentiable_quantization`: the student's full-precision weights stay fixed; each
  one is replaced by the nearest of a small set of quantization points (per layer, per
  output channel or per bucket; assigned once, at the start), and only the points are
  trained. The gradient of a point
  is the sum of the gradients of the weights mapped to it (a gather in the forward pass,
  a scatter-add in the backward pass). At the end each weight is exactly one of the
  points.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from .core import LayerSelection, TrainConfig, fit, record, select_layers
from .quantize import QuantizeConfig, fake_quantize, quantize_tensor

__all__ = ["DistillConfig", "QuantizedDistillConfig", "DifferentiableQuantConfig",
           "soft_target_loss", "distillation_loss", "kl_to_teacher", "distill",
           "quantized_distillation", "differentiable_quantization", "LearnedPoints",
           "DQ_INITS"]

DQ_INITS = ("uniform", "quantile")


def _check_number(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}.{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be finite, got {value}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Knowledge-distillation settings.

    temperature: T > 0 softening both logit sets. alpha in [0, 1]: weight of the soft
    (teacher) term; 1 - alpha weighs the hard-label cross-entropy. hints: pairs
    (student module name, teacher module name) whose outputs are matched with an MSE
    (FitNets); when the shapes differ a learned regressor maps the student feature to the
    teacher's shape (a linear layer for (N, F) features, a 1x1 convolution for
    (N, C, H, W) features with the same H, W). The regressors are trained with the
    student and then discarded. hint_weight >= 0 scales the hint term.
    """
    temperature: float = 4.0
    alpha: float = 0.9
    hints: Tuple[Tuple[str, str], ...] = ()
    hint_weight: float = 1.0

    def __post_init__(self):
        t = _check_number("DistillConfig", "temperature", self.temperature)
        if not t > 0:
            raise ValueError(f"DistillConfig.temperature must be > 0, got {self.temperature}")
        a = _check_number("DistillConfig", "alpha", self.alpha)
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"DistillConfig.alpha must be in [0, 1], got {self.alpha}")
        hw = _check_number("DistillConfig", "hint_weight", self.hint_weight)
        if hw < 0:
            raise ValueError(f"DistillConfig.hint_weight must be >= 0, got {self.hint_weight}")
        if isinstance(self.hints, (str, bytes)) or not isinstance(self.hints, Sequence):
            raise TypeError("DistillConfig.hints must be a sequence of (student_layer, "
                            f"teacher_layer) pairs, got {type(self.hints).__name__}")
        pairs = []
        for i, pair in enumerate(self.hints):
            if (isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2
                    or not all(isinstance(n, str) for n in pair)):
                raise ValueError(f"DistillConfig.hints[{i}] must be a pair of module names "
                                 f"(student_layer, teacher_layer), got {pair!r}")
            pairs.append((pair[0], pair[1]))
        # a tuple of tuples keeps the frozen config hashable whatever the caller passed
        object.__setattr__(self, "hints", tuple(pairs))


@dataclasses.dataclass(frozen=True)
class QuantizedDistillConfig:
    """Quantized distillation (Polino et al. 2018): the distillation loss `distill`,
    with the selected weights quantized by `quantize` in every forward pass."""
    distill: DistillConfig = DistillConfig()
    quantize: QuantizeConfig = QuantizeConfig(bits=4, scheme="asymmetric", granularity="channel")

    def __post_init__(self):
        if not isinstance(self.distill, DistillConfig):
            raise TypeError("QuantizedDistillConfig.distill must be a DistillConfig, got "
                            f"{type(self.distill).__name__}")
        if not isinstance(self.quantize, QuantizeConfig):
            raise TypeError("QuantizedDistillConfig.quantize must be a QuantizeConfig, got "
                            f"{type(self.quantize).__name__}")


@dataclasses.dataclass(frozen=True)
class DifferentiableQuantConfig:
    """Differentiable quantization (Polino et al. 2018).

    bits: 1..8, 2^bits points per group. init: "uniform" (evenly spaced between the
    group's min and max weight) or "quantile" (at the (i + 0.5) / 2^bits quantiles of the
    group's weights). per_layer: one set of points per layer; otherwise one per bucket of
    `bucket_size` consecutive elements of the flattened weight, or per output channel
    (dim 0) when bucket_size is None (the exporter stores that as a per-row codebook).
    keep_zeros: weights exactly 0 at the start (pruned ones) stay exactly 0 and take no
    point; the points are placed over the nonzero weights only (as k-means weight
    sharing after pruning). A layer then holds at most 2^bits nonzero values per group,
    plus 0. distill: the loss the points are trained with.
    """
    bits: int = 4
    init: str = "uniform"
    per_layer: bool = True
    bucket_size: Optional[int] = None
    keep_zeros: bool = True
    distill: DistillConfig = DistillConfig()

    def __post_init__(self):
        if not isinstance(self.keep_zeros, bool):
            raise TypeError("DifferentiableQuantConfig.keep_zeros must be a bool, got "
                            f"{type(self.keep_zeros).__name__}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise TypeError(f"DifferentiableQuantConfig.bits must be an int, got "
                            f"{type(self.bits).__name__}")
        if not 1 <= self.bits <= 8:
            raise ValueError(f"DifferentiableQuantConfig.bits must be in 1..8, got {self.bits}")
        if self.init not in DQ_INITS:
            raise ValueError(f"DifferentiableQuantConfig.init must be one of {DQ_INITS}, "
                             f"got {self.init!r}")
        if not isinstance(self.per_layer, bool):
            raise TypeError("DifferentiableQuantConfig.per_layer must be a bool, got "
                            f"{type(self.per_layer).__name__}")
        if self.bucket_size is not None and (isinstance(self.bucket_size, bool)
                                             or not isinstance(self.bucket_size, int)
                                             or self.bucket_size < 1):
            raise ValueError("DifferentiableQuantConfig.bucket_size must be None or an int "
                             f">= 1, got {self.bucket_size!r}")
        if not isinstance(self.distill, DistillConfig):
            raise TypeError("DifferentiableQuantConfig.distill must be a DistillConfig, got "
                            f"{type(self.distill).__name__}")

    @property
    def points(self) -> int:
        return 2 ** self.bits


# ---------------------------------------------------------------------------- losses

def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"distillation: student logits {tuple(student_logits.shape)} and "
                         f"teacher logits {tuple(teacher_logits.shape)} differ in shape")
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / t, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (t * t)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      targets: torch.Tensor, config: DistillConfig) -> torch.Tensor:
    """alpha * soft_target_loss + (1 - alpha) * cross-entropy on the labels (no hints)."""
    loss = student_logits.new_zeros(())
    if config.alpha > 0:
        loss = loss + config.alpha * soft_target_loss(student_logits, teacher_logits,
                                                      config.temperature)
    if config.alpha < 1:
        loss = loss + (1.0 - config.alpha) * F.cross_entropy(student_logits, targets)
    return loss


@torch.no_grad()
def kl_to_teacher(student: nn.Module, teacher: nn.Module, loader: Iterable,
                  temperature: float = 1.0, max_batches: Optional[int] = None) -> float:
    """Mean KL(softmax(teacher / T) || softmax(student / T)) per sample over `loader`
    (both models in eval mode; no T^2 factor)."""
    modes = (student.training, teacher.training)
    student.eval()
    teacher.eval()
    total, n = 0.0, 0
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            s, t = student(x), teacher(x)
            kl = soft_target_loss(s, t, temperature) / (temperature * temperature)
            total += float(kl) * len(x)
            n += len(x)
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
    if n == 0:
        raise ValueError("kl_to_teacher: the loader yielded no samples")
    return total / n


# ----------------------------------------------------------------------------- hints

def _module_by_name(model: nn.Module, name: str, role: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        names = ", ".join(n for n in modules if n) or "(none)"
        raise ValueError(f"DistillConfig.hints: {role} has no module {name!r}; its modules "
                         f"are: {names}")
    return modules[name]


class _FeatureTap:
    """Forward hooks that keep the latest output of named modules."""

    def __init__(self, model: nn.Module, names: Sequence[str], role: str):
        self.outputs: Dict[str, torch.Tensor] = {}
        self.handles = []
        for name in names:
            module = _module_by_name(model, name, role)
            self.handles.append(module.register_forward_hook(self._keeper(name)))

    def _keeper(self, name: str):
        def hook(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"DistillConfig.hints: module {name!r} returns "
                                f"{type(output).__name__}, not a tensor")
            self.outputs[name] = output
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def _regressor(student_shape: torch.Size, teacher_shape: torch.Size, pair: Tuple[str, str]) -> nn.Module:
    """Identity when the shapes agree, else the smallest map from student to teacher shape."""
    if student_shape == teacher_shape:
        return nn.Identity()
    where = f"hint {pair[0]!r} -> {pair[1]!r}"
    if len(student_shape) == 2 and len(teacher_shape) == 2:
        return nn.Linear(student_shape[1], teacher_shape[1])
    if len(student_shape) == 4 and len(teacher_shape) == 4:
        if student_shape[2:] != teacher_shape[2:]:
            raise ValueError(f"{where}: feature maps {tuple(student_shape)} and "
                             f"{tuple(teacher_shape)} differ in spatial size; a 1x1 regressor "
                             "only maps channels (pick layers with the same H, W)")
        return nn.Conv2d(student_shape[1], teacher_shape[1], kernel_size=1)
    raise ValueError(f"{where}: cannot map a student feature of shape {tuple(student_shape)} "
                     f"to a teacher feature of shape {tuple(teacher_shape)} (supported: "
                     "(N, F) -> (N, F'), and (N, C, H, W) -> (N, C', H, W))")


class _DistillObjective:
    """The step loss given to core.fit: teacher forward (no grad), student forward, loss."""

    def __init__(self, teacher: nn.Module, config: DistillConfig):
        self.teacher = teacher
        self.config = config
        self.regressors = nn.ModuleList()
        self.student_tap: Optional[_FeatureTap] = None
        self.teacher_tap: Optional[_FeatureTap] = None
        self.hint_values: List[float] = []  # first and latest hint term

    def attach(self, student: nn.Module, probe: torch.Tensor, seed: Optional[int]) -> List[nn.Parameter]:
        """Install the hint hooks and build the regressors from one probe batch; returns
        the regressors' parameters (to train with the student)."""
        if not self.config.hints:
            return []
        self.student_tap = _FeatureTap(student, [s for s, _ in self.config.hints], "the student")
        self.teacher_tap = _FeatureTap(self.teacher, [t for _, t in self.config.hints], "the teacher")
        was_training = student.training
        student.eval()
        with torch.no_grad():
            student(probe)
            self.teacher(probe)
        student.train(was_training)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            for pair in self.config.hints:
                s_shape = self.student_tap.outputs[pair[0]].shape
                t_shape = self.teacher_tap.outputs[pair[1]].shape
                self.regressors.append(_regressor(s_shape, t_shape, pair))
        return [p for p in self.regressors.parameters()]

    def detach(self) -> None:
        for tap in (self.student_tap, self.teacher_tap):
            if tap is not None:
                tap.remove()

    def __call__(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        student_logits = student(x)
        loss = distillation_loss(student_logits, teacher_logits, y, self.config)
        if self.config.hints and self.config.hint_weight > 0:
            assert self.student_tap is not None and self.teacher_tap is not None
            hint = student_logits.new_zeros(())
            for (s_name, t_name), reg in zip(self.config.hints, self.regressors):
                s_feat = reg(self.student_tap.outputs[s_name])
                hint = hint + F.mse_loss(s_feat, self.teacher_tap.outputs[t_name].detach())
            value = float(hint.detach())
            self.hint_values = [self.hint_values[0] if self.hint_values else value, value]
            loss = loss + self.config.hint_weight * hint
        return loss


def _first_inputs(loader: Iterable) -> torch.Tensor:
    for batch in loader:
        return batch[0] if isinstance(batch, (list, tuple)) else batch
    raise ValueError("distillation: the training loader yielded no batches")


def _check_models(student: Any, teacher: Any) -> None:
    for role, m in (("student", student), ("teacher", teacher)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"distillation: the {role} must be an nn.Module, got {type(m).__name__}")
    if student is teacher:
        raise ValueError("distillation: the student and the teacher are the same module")


def _run(student: nn.Module, teacher: nn.Module, train_loader: Iterable, config: DistillConfig,
         train: TrainConfig, val_loader: Optional[Iterable], parameters: Optional[List[nn.Parameter]],
         desc: str) -> Dict[str, Any]:
    teacher_was_training = teacher.training
    teacher.eval()
    objective = _DistillObjective(teacher, config)
    try:
        extra = objective.attach(student, _first_inputs(train_loader), train.seed) \
            if config.hints else []
        params = list(parameters if parameters is not None else student.parameters()) + extra
        history = fit(student, train_loader, train, loss=objective, val_loader=val_loader,
                      parameters=params, desc=desc)
    finally:
        objective.detach()
        teacher.train(teacher_was_training)
    if config.hints and objective.hint_values:
        history["hint_loss_first"], history["hint_loss"] = objective.hint_values
    return history


def _summary(history: Dict[str, Any]) -> Dict[str, Any]:
    out = {"steps": history["steps"], "seconds": round(history["seconds"], 3),
           "final_loss": history["epoch_loss"][-1] if history["epoch_loss"] else None}
    if history.get("val_accuracy"):
        out["val_accuracy"] = history["val_accuracy"][-1]
    return out


# ----------------------------------------------------------------------------- verbs

def distill(student: nn.Module, teacher: nn.Module, train_loader: Iterable,
            config: DistillConfig = DistillConfig(), train: TrainConfig = TrainConfig(),
            val_loader: Optional[Iterable] = None) -> Dict[str, Any]:
    """Train `student` (in place, all its trainable parameters) with the distillation
    loss against `teacher` (unchanged); returns core.fit's history, plus with hints
    "hint_loss_first" and "hint_loss" (the hint term at the first and the last step)."""
    _check_models(student, teacher)
    if not isinstance(config, DistillConfig):
        raise TypeError(f"distill: config must be a DistillConfig, got {type(config).__name__}")
    history = _run(student, teacher, train_loader, config, train, val_loader, None, "distill")
    record(student, "distill", config, train=train, result=_summary(history))
    return history


class _QuantizedWeight(nn.Module):
    """Parametrization used during quantized distillation (straight-through)."""

    def __init__(self, config: QuantizeConfig):
        super().__init__()
        self.config = config

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize(w, self.config)


def _value_before_last(module: nn.Module) -> torch.Tensor:
    """The weight as the parametrizations before the last one make it (the last one is
    ours, appended by the verb)."""
    plist = module.parametrizations["weight"]
    w = plist.original
    for p in list(plist)[:-1]:
        w = p(w)
    return w.detach()


def _replace_last_with(module: nn.Module, value: torch.Tensor) -> None:
    """Drop every weight parametrization (earlier constraints are already folded into
    `value`) and make `value` the plain weight."""
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    with torch.no_grad():
        module.weight.copy_(value)


def quantized_distillation(student: nn.Module, teacher: nn.Module, train_loader: Iterable,
                           config: QuantizedDistillConfig = QuantizedDistillConfig(),
                           train: TrainConfig = TrainConfig(), val_loader: Optional[Iterable] = None,
                           layers: LayerSelection = None) -> Dict[str, Any]:
    """Quantized distillation of `student` (in place): the selected conv / linear weights
    are quantized (straight-through) in every forward pass while the optimizer updates
    their full-precision values; at the end each becomes exactly quantize_tensor(w).
    Weight constraints already on a layer (a pruning mask) stay in force: quantization
    applies to the constrained value, and the result is baked into a plain weight."""
    _check_models(student, teacher)
    if not isinstance(config, QuantizedDistillConfig):
        raise TypeError("quantized_distillation: config must be a QuantizedDistillConfig, got "
                        f"{type(config).__name__}")
    chosen = select_layers(student, layers)
    if not chosen:
        raise ValueError("quantized_distillation: no conv / linear layer selected")
    for _, m in chosen:
        parametrize.register_parametrization(m, "weight", _QuantizedWeight(config.quantize))
    try:
        history = _run(student, teacher, train_loader, config.distill, train, val_loader, None,
                       "quantized distillation")
    finally:
        # even when training fails the student is left with plain, quantized weights
        for _, m in chosen:
            _replace_last_with(m, quantize_tensor(_value_before_last(m), config.quantize))
    record(student, "quantized_distillation", config, train=train,
           layers=[n for n, _ in chosen], result=_summary(history))
    return history


# -------------------------------------------------------- differentiable quantization

class LearnedPoints(nn.Module):
    """Parametrization of a weight by quantization points: the weight is split into
    groups (the whole tensor, rows, or buckets); each element is assigned once, at
    construction, to the nearest point of its group's initial `points` row (a trainable
    (groups, 2^bits) Parameter) and from then on takes that point's value. The gather
    gives each point the sum of its weights' gradients.

    The assignment stays fixed while the points move (as Polino et al., whose assignment
    comes from the uniform grid, and as k-means centroid fine-tuning): re-assigning each
    weight to the nearest moved point makes the loss jump whenever a point sweeps over a
    dense cluster of weights, and training then drifts upward (measured on MNIST, 2 bits:
    distillation loss 1.36 -> 2.29 in 8 epochs instead of going down).
    """

    def __init__(self, weight: torch.Tensor, config: DifferentiableQuantConfig):
        super().__init__()
        self.bits = config.bits
        self.shape = tuple(weight.shape)
        numel = weight.numel()
        if numel == 0:
            raise ValueError("differentiable quantization: the weight is empty")
        if config.per_layer:
            size = numel
        elif config.bucket_size is None:
            size = numel // weight.shape[0] if weight.dim() > 0 else numel
        else:
            size = config.bucket_size
        self.group_size = max(1, min(size, numel))
        self.groups = -(-numel // self.group_size)
        grouped, valid = self._grouped(weight.detach().to(torch.float32))
        if config.keep_zeros:
            valid = valid & (grouped != 0)
        self.points = nn.Parameter(self._init_points(grouped, valid, config))
        self.register_buffer("index", self.nearest(weight).to(torch.uint8))
        # None: every element takes its point; else the elements that do (the rest are 0)
        self.register_buffer("keep", None if bool(valid.all()) else valid)

    def _grouped(self, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(groups, group_size) view of w, the short last bucket padded; plus the mask
        of real elements."""
        flat = w.reshape(-1)
        pad = self.groups * self.group_size - flat.numel()
        valid = torch.ones(self.groups * self.group_size, dtype=torch.bool, device=w.device)
        if pad:
            # pad with a real value of the last group so min / max / nearest stay meaningful
            flat = torch.cat([flat, flat[-1:].expand(pad)])
            valid[-pad:] = False
        return flat.reshape(self.groups, self.group_size), valid.reshape(self.groups, self.group_size)

    def _init_points(self, g: torch.Tensor, valid: torch.Tensor,
                     config: DifferentiableQuantConfig) -> torch.Tensor:
        k = config.points
        if config.init == "uniform":
            inf = torch.tensor(float("inf"))
            lo = torch.where(valid, g, inf).amin(dim=1, keepdim=True)
            hi = torch.where(valid, g, -inf).amax(dim=1, keepdim=True)
            empty = ~valid.any(dim=1, keepdim=True)  # an all-zero group: points at 0
            lo, hi = lo.masked_fill(empty, 0.0), hi.masked_fill(empty, 0.0)
            frac = torch.linspace(0.0, 1.0, k, dtype=torch.float32)
            return lo + (hi - lo) * frac
        q = (torch.arange(k, dtype=torch.float32) + 0.5) / k
        rows = [torch.quantile(g[i][valid[i]], q) if bool(valid[i].any()) else torch.zeros(k)
                for i in range(self.groups)]
        return torch.stack(rows)

    @torch.no_grad()
    def nearest(self, w: torch.Tensor) -> torch.Tensor:
        """Index of the nearest current point of its group for every element of w,
        as (groups, group_size)."""
        g, _ = self._grouped(w.detach().to(self.points.dtype))
        return (g.unsqueeze(2) - self.points.unsqueeze(1)).abs().argmin(dim=2)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if tuple(w.shape) != self.shape:
            raise ValueError(f"LearnedPoints: weight of shape {tuple(w.shape)}, built for {self.shape}")
        q = torch.gather(self.points, 1, self.index.long())
        if self.keep is not None:
            q = q * self.keep  # exact zeros, and no gradient from them to the points
        return q.to(w.dtype).reshape(-1)[: w.numel()].reshape(w.shape)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, groups={self.groups}, group_size={self.group_size}"


def differentiable_quantization(student: nn.Module, teacher: nn.Module, train_loader: Iterable,
                                config: DifferentiableQuantConfig = DifferentiableQuantConfig(),
                                train: TrainConfig = TrainConfig(),
                                val_loader: Optional[Iterable] = None,
                                layers: LayerSelection = None) -> Dict[str, Any]:
    """Differentiable quantization of `student` (in place): the selected weights are
    fixed, replaced by their nearest learned point, and only the points are trained with
    the distillation loss (everything else in the student is left as it is). At the end
    every selected weight is a plain tensor whose values are all points of its group
    (at most 2^bits distinct values per layer / channel / bucket), or 0 where the weight
    was 0 (config.keep_zeros). history["points"] holds each layer's (groups, 2^bits)
    points."""
    _check_models(student, teacher)
    if not isinstance(config, DifferentiableQuantConfig):
        raise TypeError("differentiable_quantization: config must be a "
                        f"DifferentiableQuantConfig, got {type(config).__name__}")
    chosen = select_layers(student, layers)
    if not chosen:
        raise ValueError("differentiable_quantization: no conv / linear layer selected")
    learned: List[LearnedPoints] = []
    for _, m in chosen:
        base = m.weight.detach()  # constrained value if the layer is already parametrized
        lp = LearnedPoints(base, config)
        parametrize.register_parametrization(m, "weight", lp)
        learned.append(lp)
    try:
        history = _run(student, teacher, train_loader, config.distill, train, val_loader,
                       [lp.points for lp in learned], "differentiable quantization")
    finally:
        for (_, m), lp in zip(chosen, learned):
            with torch.no_grad():
                value = lp(_value_before_last(m))
            _replace_last_with(m, value)
    # the learned points of each layer, (groups, 2^bits): every weight is one of them
    history["points"] = {name: lp.points.detach().clone() for (name, _), lp in zip(chosen, learned)}
    record(student, "differentiable_quantization", config, train=train,
           layers=[n for n, _ in chosen], result=_summary(history))
    return history
