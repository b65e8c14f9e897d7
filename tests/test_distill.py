"""deepsqueeze.convert.distill: knowledge distillation (Hinton, FitNets hints), quantized
distillation and differentiable quantization (Polino et al. 2018) on tiny models."""
from __future__ import annotations

import copy
import importlib
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.utils import parametrize  # noqa: E402

import deepsqueeze  # noqa: E402
# by module path: the package re-exports the verb `distill`, which hides the submodule
D = importlib.import_module("deepsqueeze.convert.distill")
from deepsqueeze.convert.core import TrainConfig, compression_record, evaluate, fit  # noqa: E402
from deepsqueeze.convert.export import export  # noqa: E402
from deepsqueeze.convert.quantize import QuantizeConfig  # noqa: E402

torch.set_num_threads(1)


def mlp(hidden: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def quiet(**kw) -> TrainConfig:
    return TrainConfig(progress=False, **kw)


@pytest.fixture(scope="module")
def mnist():
    from deepsqueeze.convert.data import mnist_loaders
    return mnist_loaders(batch_size=64, limit_train=1024, limit_test=512)


@pytest.fixture(scope="module")
def teacher(mnist):
    net = mlp(256, seed=1)
    fit(net, mnist.train, quiet(epochs=4, lr=3e-3))
    return net.eval()


def params_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------ the losses

def test_soft_target_loss_by_hand_with_t_squared():
    s = torch.tensor([[1.0, -0.5, 2.0], [0.3, 0.0, -1.0]], requires_grad=True)
    t = torch.tensor([[0.5, 1.5, -1.0], [2.0, -2.0, 0.1]])
    T = 3.0

    def softmax(v):
        e = np.exp(v - v.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    ps = softmax(s.detach().numpy().astype(np.float64) / T)
    pt = softmax(t.numpy().astype(np.float64) / T)
    kl = (pt * (np.log(pt) - np.log(ps))).sum(axis=1).mean()
    loss = D.soft_target_loss(s, t, T)
    assert float(loss.detach()) == pytest.approx(T * T * kl, rel=1e-5)
    # d/ds of T^2 * KL / batch = T * (p_s - p_t) / batch: the T^2 factor keeps the
    # gradient on the hard loss's scale (only 1/T left, not 1/T^2)
    loss.backward()
    np.testing.assert_allclose(s.grad.numpy(), T * (ps - pt) / 2, rtol=1e-5, atol=1e-7)
    # equal logits: no soft loss at any temperature
    assert float(D.soft_target_loss(t, t.clone(), 7.0)) == pytest.approx(0.0, abs=1e-6)


def test_distillation_loss_mixes_soft_and_hard_terms():
    torch.manual_seed(0)
    s, t, y = torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    cfg = D.DistillConfig(temperature=2.0, alpha=0.3)
    want = 0.3 * D.soft_target_loss(s, t, 2.0) + 0.7 * F.cross_entropy(s, y)
    assert float(D.distillation_loss(s, t, y, cfg)) == pytest.approx(float(want), rel=1e-6)
    hard = D.distillation_loss(s, t, y, D.DistillConfig(alpha=0.0))
    assert float(hard) == float(F.cross_entropy(s, y))


def test_alpha_zero_trains_exactly_like_the_hard_label_loss(mnist, teacher):
    a, b = mlp(16, seed=3), mlp(16, seed=3)
    batches = list(mnist.train)[:8]  # the loader reshuffles: both runs see the same batches
    before = params_of(teacher)
    D.distill(a, teacher, batches, D.DistillConfig(alpha=0.0), quiet(epochs=1))
    fit(b, batches, quiet(epochs=1))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


# ---------------------------------------------------------------------- distillation

def test_distillation_lowers_kl_to_teacher_and_leaves_teacher_alone(mnist, teacher):
    student = mlp(32, seed=5)
    teacher.train()  # distill must run it in eval mode and restore the mode
    before_teacher = params_of(teacher)
    kl_before = D.kl_to_teacher(student, teacher, mnist.test)
    history = D.distill(student, teacher, mnist.train, D.DistillConfig(temperature=4.0, alpha=0.9),
                        quiet(epochs=3, lr=3e-3))
    kl_after = D.kl_to_teacher(student, teacher, mnist.test)
    assert history["steps"] == 3 * len(mnist.train)
    assert kl_after < 0.5 * kl_before
    assert teacher.training
    teacher.eval()
    assert all(torch.equal(v, before_teacher[k]) for k, v in teacher.state_dict().items())
    rec = compression_record(student)
    assert rec[-1]["verb"] == "distill" and rec[-1]["config"]["temperature"] == 4.0


def test_hints_with_mismatched_widths_learn_a_linear_regressor(teacher):
    torch.manual_seed(0)
    x = torch.rand(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    batch = [(x, y)]  # one fixed batch: the hint term is comparable step to step
    student = mlp(24, seed=7)
    cfg = D.DistillConfig(alpha=0.5, hints=[("2", "2")], hint_weight=1.0)  # ReLU 24 vs 256
    history = D.distill(student, teacher, batch, cfg, quiet(epochs=60, lr=3e-3))
    assert history["steps"] == 60
    assert history["hint_loss"] < 0.5 * history["hint_loss_first"]
    # the hooks are gone: the student runs with no hint bookkeeping
    assert not student[2]._forward_hooks and not teacher[2]._forward_hooks


class TinyConv(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(F.relu(self.conv(x))), 1))


def test_conv_hints_use_a_1x1_regressor_and_reject_other_spatial_sizes():
    torch.manual_seed(0)
    batch = [(torch.rand(8, 1, 12, 12), torch.randint(0, 10, (8,)))]
    student, teacher = TinyConv(3), TinyConv(6).eval()
    history = D.distill(student, teacher, batch, D.DistillConfig(hints=[("conv", "conv")]),
                        quiet(max_steps=3))
    assert math.isfinite(history["hint_loss"])
    # student conv (N, 3, 12, 12) vs the teacher's pooled (N, 6, 1, 1): no 1x1 map exists
    with pytest.raises(ValueError, match="spatial size"):
        D.distill(TinyConv(3), teacher, batch, D.DistillConfig(hints=[("conv", "pool")]),
                  quiet(max_steps=1))
    with pytest.raises(ValueError, match="no module 'convv'"):
        D.distill(TinyConv(3), teacher, batch, D.DistillConfig(hints=[("convv", "conv")]),
                  quiet(max_steps=1))


# ------------------------------------------------------------- quantized distillation

def distinct_per_group(w: torch.Tensor, granularity: str, bucket: int = 256):
    if granularity == "tensor":
        groups = [w.reshape(-1)]
    elif granularity == "channel":
        groups = list(w.reshape(w.shape[0], -1))
    else:
        groups = list(w.reshape(-1).split(bucket))
    return max(torch.unique(g).numel() for g in groups)


@pytest.mark.parametrize("granularity,scheme,bits", [("channel", "asymmetric", 4),
                                                     ("tensor", "symmetric", 3),
                                                     ("bucket", "asymmetric", 2)])
def test_quantized_distillation_leaves_at_most_2_to_the_b_values_per_group(
        mnist, teacher, granularity, scheme, bits):
    student = mlp(32, seed=11)
    q = QuantizeConfig(bits=bits, scheme=scheme, granularity=granularity, bucket_size=100)
    D.quantized_distillation(student, teacher, mnist.train, D.QuantizedDistillConfig(quantize=q),
                             quiet(max_steps=10))
    for layer in (student[1], student[3]):
        assert not parametrize.is_parametrized(layer)
        n = distinct_per_group(layer.weight.detach(), granularity, 100)
        assert 2 <= n <= 2 ** bits
    # biases are trained, not quantized
    assert torch.unique(student[1].bias.detach()).numel() > 2 ** bits


def test_quantized_distillation_trains_the_full_precision_weights(mnist, teacher):
    student = mlp(32, seed=12)
    plain = copy.deepcopy(student)
    cfg = D.QuantizedDistillConfig(quantize=QuantizeConfig(bits=4, granularity="channel",
                                                           scheme="asymmetric"))
    kl_before = D.kl_to_teacher(student, teacher, mnist.test)
    D.quantized_distillation(student, teacher, mnist.train, cfg, quiet(epochs=3, lr=3e-3))
    assert D.kl_to_teacher(student, teacher, mnist.test) < 0.6 * kl_before
    assert not torch.equal(student[1].weight, plain[1].weight)


class KeepMask(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w):
        return w * self.mask


def test_quantized_distillation_keeps_an_existing_pruning_mask(mnist, teacher):
    student = mlp(32, seed=13)
    mask = (torch.rand_like(student[1].weight) > 0.7).float()
    parametrize.register_parametrization(student[1], "weight", KeepMask(mask))
    D.quantized_distillation(student, teacher, mnist.train, D.QuantizedDistillConfig(),
                             quiet(max_steps=10), layers="1")
    w = student[1].weight.detach()
    assert not parametrize.is_parametrized(student[1])
    assert bool((w[mask == 0] == 0).all())
    assert distinct_per_group(w, "channel") <= 16
    # layer "3" was not selected: still full precision
    assert distinct_per_group(student[3].weight.detach(), "channel") > 16


def test_quantized_distilled_student_exports_as_codebook_and_runs_in_the_engine(
        mnist, teacher, tmp_path):
    student = mlp(32, seed=14)
    cfg = D.QuantizedDistillConfig(quantize=QuantizeConfig(bits=4, granularity="channel",
                                                           scheme="asymmetric"))
    D.quantized_distillation(student, teacher, mnist.train, cfg, quiet(max_steps=20))
    student.eval()
    x = mnist.test_arrays[0][:32]
    path = tmp_path / "qd.dsq"
    export(student, torch.from_numpy(x[:1]), str(path), weights="auto")
    engine = deepsqueeze.load(str(path))
    got = engine.run(x)
    want = student(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    meta = engine.metadata
    layers = json.loads(meta["dsq.export_config"])["layers"]
    assert all(enc["values"] == "codebook" and enc["codebook_bits"] <= 4 for enc in layers.values())
    assert json.loads(meta["dsq.compression"])[-1]["verb"] == "quantized_distillation"


# --------------------------------------------------------- differentiable quantization

def test_point_gradient_is_the_sum_of_its_weights_gradients():
    torch.manual_seed(0)
    w = torch.randn(6, 10)
    lp = D.LearnedPoints(w, D.DifferentiableQuantConfig(bits=2, per_layer=False, bucket_size=7))
    assert lp.points.shape == (9, 4)  # 60 elements in buckets of 7: 8 full + 1 short
    idx = lp.index.long().reshape(-1)[:60]
    group = torch.arange(60) // 7
    # every element was assigned the nearest initial point of its own bucket
    dist = (w.reshape(-1)[:, None] - lp.points.detach()[group]).abs()
    torch.testing.assert_close(dist.gather(1, idx[:, None]).squeeze(1), dist.min(dim=1).values)
    out = lp(w)
    torch.testing.assert_close(out.reshape(-1), lp.points.detach()[group, idx])
    g = torch.randn_like(w)
    (out * g).sum().backward()
    want = torch.zeros(9, 4).index_put_((group, idx), g.reshape(-1), accumulate=True)
    torch.testing.assert_close(lp.points.grad, want)


def distill_objective(student, teacher, loader, cfg):
    student.eval()
    with torch.no_grad():
        losses = [float(D.distillation_loss(student(x), teacher(x), y, cfg)) * len(x)
                  for x, y in loader]
    return sum(losses) / len(loader.dataset)


@pytest.mark.parametrize("init", ["uniform", "quantile"])
def test_differentiable_quantization_learns_points_and_lowers_the_loss(mnist, teacher, init):
    # its own loader: the shared one's shuffle order depends on the tests run before
    loader = torch.utils.data.DataLoader(mnist.train.dataset, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    student = mlp(32, seed=21)
    D.distill(student, teacher, loader, D.DistillConfig(), quiet(epochs=3, lr=3e-3))
    cfg = D.DifferentiableQuantConfig(bits=2, init=init, distill=D.DistillConfig())
    # the same quantization with the points where they start
    start = copy.deepcopy(student)
    for layer in (start[1], start[3]):
        with torch.no_grad():
            layer.weight.copy_(D.LearnedPoints(layer.weight, cfg)(layer.weight))
    history = D.differentiable_quantization(student, teacher, loader, cfg,
                                            quiet(epochs=3, lr=3e-3))
    for name, layer in (("1", student[1]), ("3", student[3])):
        points = history["points"][name]
        assert points.shape == (1, 4)
        values = torch.unique(layer.weight.detach())
        assert values.numel() <= 4
        assert bool(torch.isin(values, points.reshape(-1)).all())
    assert not torch.equal(student[1].weight, start[1].weight)  # the points moved
    assert distill_objective(student, teacher, loader, cfg.distill) < \
        0.95 * distill_objective(start, teacher, loader, cfg.distill)
    assert compression_record(student)[-1]["verb"] == "differentiable_quantization"


def test_differentiable_quantization_per_channel_points_only_trains_points(mnist, teacher):
    student = mlp(16, seed=22)
    bias = student[1].bias.detach().clone()
    cfg = D.DifferentiableQuantConfig(bits=3, per_layer=False)
    history = D.differentiable_quantization(student, teacher, mnist.train, cfg, quiet(max_steps=5))
    assert history["points"]["1"].shape == (16, 8)
    w = student[1].weight.detach()
    for row, pts in zip(w, history["points"]["1"]):
        assert bool(torch.isin(torch.unique(row), pts).all())
    assert torch.equal(student[1].bias, bias)


@pytest.mark.parametrize("init", ["uniform", "quantile"])
def test_differentiable_quantization_keeps_pruned_weights_at_zero(mnist, teacher, init):
    student = mlp(16, seed=23)
    with torch.no_grad():
        w = student[1].weight
        w.mul_((torch.rand_like(w) > 0.8).float())  # 80% pruned
        w[3] = 0.0  # a row with nothing left: its points start at 0
    zeros = student[1].weight.detach() == 0
    cfg = D.DifferentiableQuantConfig(bits=2, init=init, per_layer=False)
    history = D.differentiable_quantization(student, teacher, mnist.train, cfg, quiet(max_steps=5))
    w = student[1].weight.detach()
    assert torch.equal(w == 0, zeros)
    for row, pts in zip(w, history["points"]["1"]):
        assert bool(torch.isin(row[row != 0], pts).all())
    # the points sit among the nonzero weights, not pulled toward the pruned zeros
    pts = history["points"]["1"][0]
    assert torch.unique(pts).numel() == 4


# ------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"temperature": float("nan")}, "temperature must be finite"),
    ({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
    ({"alpha": -0.1}, r"alpha must be in \[0, 1\]"),
    ({"hint_weight": -1.0}, "hint_weight must be >= 0"),
    ({"hints": [("a", "b", "c")]}, r"hints\[0\] must be a pair"),
    ({"hints": [("a", 3)]}, r"hints\[0\] must be a pair"),
])
def test_bad_distill_configs_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        D.DistillConfig(**kwargs)


def test_bad_quantization_configs_raise():
    for kwargs, match in [({"bits": 0}, "bits must be in 1..8"), ({"bits": 9}, "bits must be in 1..8"),
                          ({"init": "kmeans"}, "init must be one of"),
                          ({"bucket_size": 0}, "bucket_size must be None or an int >= 1")]:
        with pytest.raises(ValueError, match=match):
            D.DifferentiableQuantConfig(**kwargs)
    with pytest.raises(TypeError, match="must be a QuantizeConfig"):
        D.QuantizedDistillConfig(quantize={"bits": 4})
    with pytest.raises(TypeError, match="bits must be an int"):
        D.DifferentiableQuantConfig(bits=2.0)
    with pytest.raises(TypeError, match="hints must be a sequence"):
        D.DistillConfig(hints="fc1")


def test_bad_models_and_logits_raise():
    net = mlp(8, seed=0)
    batch = [(torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,)))]
    with pytest.raises(ValueError, match="same module"):
        D.distill(net, net, batch, D.DistillConfig(), quiet(max_steps=1))
    with pytest.raises(TypeError, match="teacher must be an nn.Module"):
        D.distill(net, lambda x: x, batch, D.DistillConfig(), quiet(max_steps=1))
    wrong_classes = nn.Sequential(nn.Flatten(), nn.Linear(784, 5))
    with pytest.raises(ValueError, match=r"teacher logits \(4, 5\)"):
        D.distill(net, wrong_classes, batch, D.DistillConfig(), quiet(max_steps=1))
    with pytest.raises(ValueError, match="matches no"):
        D.quantized_distillation(net, mlp(8, seed=1), batch, D.QuantizedDistillConfig(),
                                 quiet(max_steps=1), layers="fc9")
