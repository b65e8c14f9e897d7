"""What every compression verb shares: layer selection, the fine-tuning loop, evaluation,
weight constraints (parametrizations) and the record of what was applied.

Conventions every verb follows:
- A verb takes an nn.Module, a frozen dataclass config, and a `layers` selection; it
  changes the module in place and returns it.
- Constraints that must survive fine-tuning (a pruning mask, shared k-means values,
  fake quantization) are `torch.nn.utils.parametrize` parametrizations of `weight`, so
  autograd gives the right gradients (a centroid's gradient is the sum of the gradients
  of the weights that share it; a pruned weight gets none) and `module.weight` is always
  the constrained value the exporter must write. `bake(model)` makes them plain weights.
- Each verb appends (verb, config, details) to the model's compression record
  (`compression_record`); the exporter stores it in the file's metadata.
"""
from __future__ import annotations

import copy
import dataclasses
import fnmatch
import math
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

__all__ = ["LayerSelection", "select_layers", "TrainConfig", "fit", "evaluate",
           "compression_record", "record", "config_to_dict", "bake", "dense_weight",
           "has_parametrization", "remove_weight_parametrizations", "prunable_types"]

prunable_types: Tuple[type, ...] = (nn.Conv2d, nn.Linear)

# None: every conv / linear; a name or fnmatch pattern, or a list of them; or a
# callable(name, module) -> bool.
LayerSelection = Union[None, str, Sequence[str], Callable[[str, nn.Module], bool]]


def select_layers(model: nn.Module, layers: LayerSelection = None,
                  types: Tuple[type, ...] = prunable_types) -> List[Tuple[str, nn.Module]]:
    """The (fully-qualified name, module) pairs of `model` that a verb applies to.

    Only modules of `types` are candidates. A name or pattern that selects none of them
    raises ValueError listing the candidates, so a typo never silently compresses
    nothing.
    """
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, types)]
    if layers is None:
        return candidates
    if callable(layers):
        return [(n, m) for n, m in candidates if layers(n, m)]
    patterns = [layers] if isinstance(layers, str) else list(layers)
    chosen = []
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"layers: expected names or patterns (str), got {type(p).__name__}")
        hits = [n for n, _ in candidates if n == p or fnmatch.fnmatchcase(n, p)]
        if not hits:
            names = ", ".join(n for n, _ in candidates) or "(none)"
            raise ValueError(f"layers: {p!r} matches no {'/'.join(t.__name__ for t in types)} "
                             f"layer of {type(model).__name__}; its layers are: {names}")
        chosen.extend(hits)
    keep = set(chosen)
    return [(n, m) for n, m in candidates if n in keep]


def config_to_dict(config: Any) -> Dict[str, Any]:
    """A config dataclass as JSON-friendly data (callables by qualified name)."""
    def plain(v):
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if callable(v):
            return getattr(v, "__qualname__", repr(v))
        if isinstance(v, float) and not math.isfinite(v):
            return repr(v)
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        return repr(v)
    return {"type": type(config).__name__, **plain(config)} if dataclasses.is_dataclass(config) \
        else plain(config)


_RECORD_ATTR = "_deepsqueeze_record"


def compression_record(model: nn.Module) -> List[Dict[str, Any]]:
    """The verbs applied to `model` so far, oldest first (a list of dicts)."""
    return list(getattr(model, _RECORD_ATTR, []))


def record(model: nn.Module, verb: str, config: Any = None, **details) -> None:
    entry = {"verb": verb}
    if config is not None:
        entry["config"] = config_to_dict(config)
    entry.update({k: config_to_dict(v) for k, v in details.items()})
    # object.__setattr__: a plain attribute, not a submodule / buffer / state_dict entry
    object.__setattr__(model, _RECORD_ATTR, compression_record(model) + [entry])


def has_parametrization(module: nn.Module, name: str = "weight") -> bool:
    return parametrize.is_parametrized(module, name)


def remove_weight_parametrizations(module: nn.Module, name: str = "weight") -> None:
    """Make `module.<name>` a plain Parameter holding its current constrained value."""
    if not parametrize.is_parametrized(module, name):
        return
    value = getattr(module, name).detach().clone()
    others = [n for n in module.parametrizations.keys() if n != name]
    if others:
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        return
    # Not parametrize.remove_parametrizations: it deletes the property from the
    # injected class, which deep copies of the module share, breaking every copy.
    module.__class__ = module.__class__.__bases__[0]
    del module._modules["parametrizations"]
    module.register_parameter(name, nn.Parameter(value))


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The weight a layer computes with now (constraints applied), detached."""
    return module.weight.detach()


def bake(model: nn.Module) -> nn.Module:
    """Turn every weight constraint of `model` into plain weights (in place)."""
    for m in list(model.modules()):
        while parametrize.is_parametrized(m):
            remove_weight_parametrizations(m, next(iter(m.parametrizations.keys())))
    return model


def baked_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` with plain weights (what the exporter traces)."""
    if not any(parametrize.is_parametrized(m) for m in model.modules()):
        return model
    clone = copy.deepcopy(model)
    bake(clone)
    object.__setattr__(clone, _RECORD_ATTR, compression_record(model))
    return clone


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of a training / fine-tuning run.

    epochs may be fractional (0.5 = half the loader); max_steps caps the optimizer steps
    whatever epochs says. With a validation loader, `patience` epochs without a better
    validation accuracy stop the run early and the best weights are restored.
    """
    epochs: float = 1.0
    lr: float = 1e-3
    optimizer: str = "adam"          # "adam" | "sgd"
    momentum: float = 0.9            # sgd only
    weight_decay: float = 0.0
    lr_schedule: str = "constant"    # "constant" | "cosine"
    max_steps: Optional[int] = None
    patience: Optional[int] = None
    progress: bool = True
    seed: Optional[int] = 0

    def __post_init__(self):
        if not (self.epochs > 0):
            raise ValueError(f"TrainConfig.epochs must be > 0, got {self.epochs}")
        if not (self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"TrainConfig.optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError("TrainConfig.lr_schedule must be 'constant' or 'cosine', "
                             f"got {self.lr_schedule!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"TrainConfig.max_steps must be >= 1, got {self.max_steps}")


# loss(model, inputs, targets) -> scalar tensor
StepLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _default_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(inputs), targets)


def _split_batch(batch):
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError("a training batch must be (inputs, targets); got "
                     f"{type(batch).__name__}")


def _progress(iterable, total: Optional[int], desc: str, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in the convert extra; without it, no bar
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def fit(model: nn.Module, train_loader: Iterable, config: TrainConfig = TrainConfig(),
        loss: Optional[StepLoss] = None, val_loader: Optional[Iterable] = None,
        parameters: Optional[Iterable[torch.nn.Parameter]] = None,
        after_step: Optional[Callable[[nn.Module], None]] = None,
        desc: str = "train") -> Dict[str, Any]:
    """Train `model` on `train_loader` ((inputs, targets) batches) and return a history.

    loss(model, inputs, targets) defaults to cross-entropy of model(inputs). Parameters
    default to every trainable parameter (constraint parametrizations included: masks
    and shared values stay in force). after_step(model) runs after each optimizer step.
    """
    if config.seed is not None:
        torch.manual_seed(config.seed)
    loss_fn = loss or _default_loss
    params = [p for p in (parameters if parameters is not None else model.parameters())
              if p.requires_grad]
    if not params:
        raise ValueError(f"{desc}: the model has no trainable parameters")
    if config.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay)
    try:
        per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        per_epoch = None
    if per_epoch is None and config.max_steps is None:
        raise ValueError(f"{desc}: a loader without len() needs TrainConfig.max_steps")
    total = config.max_steps
    if per_epoch is not None:
        by_epochs = max(1, int(round(config.epochs * per_epoch)))
        total = by_epochs if total is None else min(total, by_epochs)
    assert total is not None
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
             if config.lr_schedule == "cosine" else None)

    history: Dict[str, Any] = {"steps": 0, "epoch_loss": [], "val_accuracy": [], "stopped_early": False,
                               "seconds": 0.0}
    best_acc, best_state, bad_epochs = -1.0, None, 0
    t0 = time.perf_counter()
    step = 0
    was_training = model.training
    model.train()
    bar = _progress(range(total), total, desc, config.progress)
    bar_iter = iter(bar)
    done = False
    while not done:
        running, count = 0.0, 0
        for batch in train_loader:
            x, y = _split_batch(batch)
            opt.zero_grad(set_to_none=True)
            value = loss_fn(model, x, y)
            if not torch.isfinite(value):
                raise FloatingPointError(f"{desc}: loss became {value.item()} at step {step}; "
                                         "lower the learning rate")
            value.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if after_step is not None:
                after_step(model)
            running += float(value.detach()) * len(x)
            count += len(x)
            step += 1
            next(bar_iter, None)
            if hasattr(bar, "set_postfix") and step % 20 == 0:
                bar.set_postfix(loss=f"{running / max(count, 1):.4f}")
            if step >= total:
                done = True
                break
        if count == 0:
            raise ValueError(f"{desc}: the training loader yielded no batches")
        history["epoch_loss"].append(running / count)
        if val_loader is not None:
            acc = evaluate(model, val_loader)["accuracy"]
            model.train()
            history["val_accuracy"].append(acc)
            if acc > best_acc:
                best_acc, bad_epochs = acc, 0
                if config.patience is not None:
                    best_state = copy.deepcopy(model.state_dict())
            else:
                bad_epochs += 1
                if config.patience is not None and bad_epochs >= config.patience:
                    history["stopped_early"] = True
                    done = True
    if hasattr(bar, "close"):
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.train(was_training)
    history["steps"] = step
    history["seconds"] = time.perf_counter() - t0
    return history


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, max_batches: Optional[int] = None) -> Dict[str, float]:
    """Top-1 accuracy, error and mean cross-entropy of `model` over `loader`."""
    was_training = model.training
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, y = _split_batch(batch)
        out = model(x)
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(dim=1) == y).sum())
        total += len(y)
    model.train(was_training)
    if total == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return {"accuracy": correct / total, "error": 1.0 - correct / total, "loss": loss_sum / total,
            "n": float(total)}
