"""Low-rank factorization (deepsqueeze.convert.lowrank): exactness at full / true rank,
rank choice, module replacement, export to the engine, fine-tuning."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import deepsqueeze  # noqa: E402
from deepsqueeze.convert import core, export_to_bytes, models  # noqa: E402
from deepsqueeze.convert.lowrank import (LowRankConfig, factorize_conv_spatial,  # noqa: E402
                                         factorize_conv_tucker2, factorize_linear, lowrank,
                                         lowrank_and_finetune, svd_rank)

torch.set_num_threads(1)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def _linear_of_rank(out_f, in_f, r, seed=0):
    g = _gen(seed)
    layer = nn.Linear(in_f, out_f)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_f, r, generator=g) @ torch.randn(r, in_f, generator=g) / r)
        layer.bias.copy_(torch.randn(out_f, generator=g))
    return layer


def test_svd_of_a_rank_r_matrix_at_rank_r_is_exact():
    layer = _linear_of_rank(60, 80, 7)
    f = factorize_linear(layer, 7)
    assert [m.weight.shape for m in f] == [(7, 80), (60, 7)]
    assert f[0].bias is None
    x = torch.randn(16, 80, generator=_gen(1))
    with torch.no_grad():
        want, got = layer(x), f(x)
        w = f[1].weight @ f[0].weight
    assert torch.allclose(w, layer.weight, atol=1e-5)
    assert torch.allclose(got, want, atol=1e-4)
    # one rank less is not exact: the test above could fail
    with torch.no_grad():
        w6 = (lambda g: g[1].weight @ g[0].weight)(factorize_linear(layer, 6))
    assert (w6 - layer.weight).abs().max() > 1e-3


def test_truncated_svd_is_the_best_rank_r_approximation():
    layer = nn.Linear(30, 40)
    s = torch.linalg.svdvals(layer.weight.detach().double())
    f = factorize_linear(layer, 5)
    with torch.no_grad():
        err = torch.linalg.matrix_norm((f[1].weight @ f[0].weight - layer.weight).double())
    # Eckart-Young: the error is the energy of the dropped singular values
    assert abs(float(err) - float(s[5:].pow(2).sum().sqrt())) < 1e-4


def _separable_conv(o, c, k, r, stride=1, padding=0, dilation=1, seed=0):
    """A kxk conv whose kernel is a sum of r separable (column x row) terms."""
    g = _gen(seed)
    vert = torch.randn(r, c, k, generator=g)
    horiz = torch.randn(o, r, k, generator=g)
    w = torch.einsum("tci,otj->ocij", vert, horiz) / r
    conv = nn.Conv2d(c, o, k, stride=stride, padding=padding, dilation=dilation)
    with torch.no_grad():
        conv.weight.copy_(w)
    return conv


@pytest.mark.parametrize("stride, padding, dilation", [(1, 0, 1), (2, 1, 1), (1, 2, 2), (1, "same", 1)])
def test_spatial_svd_is_exact_on_a_separable_kernel(stride, padding, dilation):
    conv = _separable_conv(12, 6, 3, 2, stride, padding, dilation)
    f = factorize_conv_spatial(conv, 2)
    assert [tuple(m.weight.shape) for m in f] == [(2, 6, 3, 1), (12, 2, 1, 3)]
    x = torch.randn(2, 6, 11, 13, generator=_gen(2))
    with torch.no_grad():
        want, got = conv(x), f(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-4)
    with torch.no_grad():
        worse = factorize_conv_spatial(conv, 1)(x)
    assert (worse - want).abs().max() > 1e-2


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 0)])
def test_tucker2_is_exact_at_full_rank_and_lossy_below(stride, padding):
    conv = nn.Conv2d(8, 10, 3, stride=stride, padding=padding)
    x = torch.randn(2, 8, 9, 9, generator=_gen(3))
    with torch.no_grad():
        want = conv(x)
        # full ranks fold both factors into the core: the original conv
        full = factorize_conv_tucker2(conv, 10, 8)
        assert len(full) == 1
        assert torch.allclose(full(x), want, atol=1e-5)
        # input mode reduced, output mode full: 1x1 then the core (with the bias)
        half = factorize_conv_tucker2(conv, 10, 4)
        assert [type(m) for m in half] == [nn.Conv2d, nn.Conv2d] and half[1].bias is not None
        # a genuinely three-conv Tucker-2 of an exactly low multilinear-rank kernel
        g = _gen(4)
        a, b = torch.linalg.qr(torch.randn(10, 4, generator=g))[0], torch.linalg.qr(torch.randn(8, 3, generator=g))[0]
        kern = torch.einsum("rsij,or,cs->ocij", torch.randn(4, 3, 3, 3, generator=g), a, b)
        conv.weight.copy_(kern)
        want = conv(x)
        low = factorize_conv_tucker2(conv, 4, 3)
        assert [tuple(m.weight.shape) for m in low] == [(3, 8, 1, 1), (4, 3, 3, 3), (10, 4, 1, 1)]
        assert low[1].stride == conv.stride and low[1].padding == conv.padding
        assert torch.allclose(low(x), want, atol=1e-4)
        assert (factorize_conv_tucker2(conv, 3, 3)(x) - want).abs().max() > 1e-3


def test_svd_rank_by_energy():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # squares 9, 4, 1: total 14
    assert svd_rank(s, 9 / 14) == 1
    assert svd_rank(s, 9 / 14 + 1e-6) == 2
    assert svd_rank(s, 13 / 14) == 2
    assert svd_rank(s, 0.99) == 3
    assert svd_rank(s, 1.0) == 3


def test_ratio_and_energy_choose_the_rank():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(100, 80), nn.ReLU(), nn.Linear(80, 60))

        def forward(self, x):
            return self.body(x)

    net = lowrank(Net(), LowRankConfig(ratio=0.25))
    rec = core.compression_record(net)[-1]["layers"]
    # largest r with r * (in + out) <= 0.25 * in * out
    assert rec["body.0"]["rank"] == 2000 // 180 == 11
    assert rec["body.2"]["rank"] == 1200 // 140 == 8
    assert net.body[0][0].weight.shape == (11, 100) and net.body[2][1].weight.shape == (60, 8)
    assert rec["body.0"]["params_after"] <= 0.25 * rec["body.0"]["params_before"]

    layer = nn.Sequential(_linear_of_rank(60, 80, 4))
    lowrank(layer, LowRankConfig(energy=0.999))
    assert core.compression_record(layer)[-1]["layers"]["0"]["rank"] == 4

    # energy picks the rank from the singular values
    sv = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.25])
    g = _gen(5)
    u, v = torch.linalg.qr(torch.randn(40, 5, generator=g))[0], torch.linalg.qr(torch.randn(50, 5, generator=g))[0]
    lin = nn.Linear(50, 40)
    with torch.no_grad():
        lin.weight.copy_(u @ torch.diag(sv) @ v.t())
    seq = nn.Sequential(lin)
    lowrank(seq, LowRankConfig(energy=0.97))  # 16 / 21.3 = 0.75, 20 / 21.3 = 0.94, 21 / 21.3 = 0.986
    assert core.compression_record(seq)[-1]["layers"]["0"]["rank"] == 3


def test_tucker2_ratio_meets_the_budget():
    net = models.lenet5()
    lowrank(net, LowRankConfig(ratio=0.3), layers="conv2")
    info = core.compression_record(net)[-1]["layers"]["conv2"]
    assert info["method"] == "tucker2"
    assert info["params_after"] <= 0.3 * info["params_before"]
    assert info["params_after"] == _weights(net.conv2)
    assert info["params_after"] > 0.15 * info["params_before"]  # not needlessly small


def test_layers_that_would_not_shrink_are_skipped_and_recorded():
    net = nn.Sequential(nn.Linear(20, 4), nn.Conv2d(4, 8, 3, groups=2))
    lowrank(net, LowRankConfig(rank=4))
    rec = core.compression_record(net)[-1]
    assert rec["layers"] == {}
    assert "not fewer" in rec["skipped"]["0"] and "grouped" in rec["skipped"]["1"]
    assert isinstance(net[0], nn.Linear) and isinstance(net[1], nn.Conv2d)


@pytest.mark.parametrize("bad", [{}, {"rank": 2, "ratio": 0.5}, {"rank": 0}, {"rank": 2.5},
                                 {"ratio": 1.0}, {"ratio": 0}, {"energy": 1.5}, {"energy": 0},
                                 {"rank": 2, "conv_method": "cp"}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        LowRankConfig(**bad)


def test_bad_arguments():
    with pytest.raises(TypeError, match="LowRankConfig"):
        lowrank(models.lenet5(), {"rank": 2})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fc9"):
        lowrank(models.lenet5(), LowRankConfig(rank=2), layers="fc9")
    with pytest.raises(ValueError, match="container"):
        lowrank(nn.Linear(50, 50), LowRankConfig(rank=2))


@pytest.mark.parametrize("method", ["tucker2", "spatial_svd"])
def test_factorized_model_runs_in_engine_and_matches(method):
    torch.manual_seed(0)
    net = models.lenet5()
    x = torch.rand(3, 1, 28, 28, generator=_gen(6))
    before = _weights(net)
    lowrank(net, LowRankConfig(ratio=0.5, conv_method=method))
    assert _weights(net) < 0.6 * before
    assert isinstance(net.conv2, nn.Sequential) and isinstance(net.fc1, nn.Sequential)
    net.eval()
    with torch.no_grad():
        want = net(x).numpy()
    data = export_to_bytes(net, x[:1], weights="fp32")
    got = deepsqueeze.load(data, threads=1).run(x.numpy())
    assert np.abs(got - want).max() <= 1e-4 * (1 + np.abs(want).max())


def test_nested_modules_and_pruned_weights():
    from torch.nn.utils import parametrize

    class Mask(nn.Module):
        def __init__(self, mask):
            super().__init__()
            self.register_buffer("mask", mask)

        def forward(self, w):
            return w * self.mask

    torch.manual_seed(0)
    net = models.resnet_cifar(widths=(8, 16, 16), blocks=(1, 1, 1)).eval()
    conv = net.layer2[0].conv1
    parametrize.register_parametrization(conv, "weight", Mask((torch.rand_like(conv.weight) > 0.5).float()))
    masked = conv.weight.detach().clone()
    lowrank(net, LowRankConfig(rank=6, conv_method="spatial_svd"),
            layers=["layer2.0.conv1", "layer3.0.downsample.0"])
    rec = core.compression_record(net)[-1]
    seq = net.layer2[0].conv1
    assert isinstance(seq, nn.Sequential) and seq[0].stride == (2, 1) and seq[1].stride == (1, 2)
    # a 1x1 conv 16->16 at rank 6 (192 < 256 weights), replaced inside its Sequential parent
    assert rec["layers"]["layer3.0.downsample.0"]["method"] == "svd"
    assert isinstance(net.layer3[0].downsample[0], nn.Sequential)
    # the factors are the best rank-6 approximation of the PRUNED kernel
    m = masked.permute(1, 2, 0, 3).reshape(8 * 3, 16 * 3).double()
    u, s_, vh = torch.linalg.svd(m, full_matrices=False)
    best = (u[:, :6] * s_[:6]) @ vh[:6]
    with torch.no_grad():
        composed = torch.einsum("otj,tci->ocij", seq[1].weight[:, :, 0, :], seq[0].weight[:, :, :, 0])
    assert torch.allclose(composed.permute(1, 2, 0, 3).reshape(24, 48).double(), best, atol=1e-5)
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32, generator=_gen(7))).shape == (2, 10)


def test_lowrank_and_finetune_lowers_the_loss():
    import copy
    from deepsqueeze import datasets
    x, y = datasets.mnist().split("train")
    x, y = torch.from_numpy(np.ascontiguousarray(x[:256])), torch.from_numpy(y[:256])
    net = models.lenet_300_100()
    core.fit(net, [(x, y)] * 10, core.TrainConfig(lr=1e-3, progress=False))
    config = LowRankConfig(ratio=0.05)
    truncated = lowrank(copy.deepcopy(net), config, layers="fc1")
    with torch.no_grad():
        before = float(F.cross_entropy(truncated(x), y))
    lowrank_and_finetune(net, config, [(x, y)] * 10, core.TrainConfig(lr=1e-3, progress=False),
                         layers="fc1")
    with torch.no_grad():
        after = float(F.cross_entropy(net(x), y))
    assert after < before - 1e-3
    assert net.fc1[0].weight.shape[0] == truncated.fc1[0].weight.shape[0]
    assert [r["verb"] for r in core.compression_record(net)] == ["lowrank", "lowrank_finetune"]


def test_tucker2_energy_finds_the_multilinear_ranks_and_spatial_ratio():
    g = _gen(8)
    a = torch.linalg.qr(torch.randn(16, 4, generator=g))[0]
    b = torch.linalg.qr(torch.randn(12, 3, generator=g))[0]
    kern = torch.einsum("rsij,or,cs->ocij", torch.randn(4, 3, 3, 3, generator=g), a, b)
    net = nn.Sequential(nn.Conv2d(12, 16, 3, padding=1))
    with torch.no_grad():
        net[0].weight.copy_(kern)
    x = torch.randn(2, 12, 8, 8, generator=g)
    with torch.no_grad():
        want = net(x)
    lowrank(net, LowRankConfig(energy=0.9999))
    info = core.compression_record(net)[-1]["layers"]["0"]
    assert info["rank"] == [4, 3] and info["energy_kept"][0] == pytest.approx(1.0)
    with torch.no_grad():
        assert torch.allclose(net(x), want, atol=1e-4)

    spatial = nn.Sequential(nn.Conv2d(12, 16, 3))
    lowrank(spatial, LowRankConfig(ratio=0.3, conv_method="spatial_svd"))
    info = core.compression_record(spatial)[-1]["layers"]["0"]
    # largest r with r * (C*kh + O*kw) <= 0.3 * O*C*kh*kw: 0.3 * 1728 / 84 = 6.17
    assert info["rank"] == 6 and info["params_after"] == 6 * 84 == _weights(spatial)


def test_tucker2_caps_ranks_at_the_unfolding_rank():
    # 12 output channels but the output unfolding is 12 x 9: rank 9 at most, still exact
    conv = nn.Conv2d(1, 12, 3, padding=1)
    x = torch.randn(2, 1, 7, 7, generator=_gen(9))
    with torch.no_grad():
        f = factorize_conv_tucker2(conv, 12, 1)
        assert [tuple(m.weight.shape) for m in f] == [(9, 1, 3, 3), (12, 9, 1, 1)]
        assert torch.allclose(f(x), conv(x), atol=1e-5)
