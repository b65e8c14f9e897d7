"""Pruning: asked sparsity per layer and global, quality threshold, masks that survive
fine-tuning and only tighten, gradual schedules, structured channel removal (smaller
model, same outputs as the channel-masked one, clear refusals), and the export of
pruned models run by the engine."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn
import torch.nn.functional as F

import deepsqueeze
from deepsqueeze.convert import export, models
from deepsqueeze.convert.core import TrainConfig, bake, compression_record, fit
from deepsqueeze.convert.prune import (PruneConfig, StructuredPruneConfig, masks, prune,
                                       prune_channels, prune_gradually, schedule_targets,
                                       sparsity)

torch.set_num_threads(1)


def _loader(n=96, batch=32, seed=0, shape=(1, 28, 28)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


QUIET = TrainConfig(epochs=1, lr=1e-2, progress=False)


def test_layer_sparsity_reached_exactly():
    net = models.lenet5(seed=0)
    prune(net, PruneConfig(sparsity=0.75))
    s = sparsity(net)
    for name, m in [("conv1", net.conv1), ("conv2", net.conv2), ("fc1", net.fc1), ("fc2", net.fc2)]:
        assert s["layers"][name] == pytest.approx(round(0.75 * m.weight.numel()) / m.weight.numel())
    assert s["total"] == pytest.approx(0.75, abs=1e-3)
    # the smallest magnitudes went: every pruned |w| <= every kept |w|
    orig = net.fc1.parametrizations.weight.original.detach().abs()
    keep = masks(net)["fc1"]
    assert float(orig[~keep].max()) <= float(orig[keep].min())


def test_per_layer_dict_and_patterns():
    net = models.lenet5(seed=0)
    prune(net, PruneConfig(sparsity={"conv*": 0.5, "fc1": 0.9}))
    s = sparsity(net)["layers"]
    assert s["conv1"] == pytest.approx(0.5, abs=0.01) and s["conv2"] == pytest.approx(0.5, abs=0.01)
    assert s["fc1"] == pytest.approx(0.9, abs=0.001)
    assert s["fc2"] == 0.0 and "fc2" not in masks(net)
    with pytest.raises(ValueError, match="fc7"):
        prune(models.lenet5(), PruneConfig(sparsity={"fc7": 0.5}))


def test_global_scope_uses_one_threshold():
    net = models.lenet_300_100(seed=0)
    with torch.no_grad():
        net.fc3.weight.mul_(10.0)  # large weights: global pruning should spare this layer
    prune(net, PruneConfig(sparsity=0.8, scope="global"))
    s = sparsity(net)
    assert s["total"] == pytest.approx(0.8, abs=1e-5)
    assert s["layers"]["fc3"] < 0.2 < s["layers"]["fc1"]
    kept_min = min(float(m.weight.detach().abs()[masks(net)[n]].min())
                   for n, m in [("fc1", net.fc1), ("fc2", net.fc2), ("fc3", net.fc3)])
    pruned_max = max(float(m.parametrizations.weight.original.detach().abs()[~masks(net)[n]].max())
                     for n, m in [("fc1", net.fc1), ("fc2", net.fc2), ("fc3", net.fc3)])
    assert pruned_max <= kept_min


def test_quality_threshold():
    net = models.lenet_300_100(seed=0)
    w = net.fc1.weight.detach().clone()
    prune(net, PruneConfig(quality=0.7), layers="fc1")
    keep = masks(net)["fc1"]
    assert torch.equal(keep, w.abs() >= 0.7 * w.std())
    assert list(masks(net)) == ["fc1"]


@pytest.mark.parametrize("kwargs,err,match", [
    ({}, ValueError, "exactly one"),
    ({"sparsity": 0.5, "quality": 1.0}, ValueError, "exactly one"),
    ({"sparsity": 1.0}, ValueError, r"\[0, 1\)"),
    ({"sparsity": -0.1}, ValueError, r"\[0, 1\)"),
    ({"sparsity": {"fc1": 1.5}}, ValueError, "fc1"),
    ({"sparsity": {"fc1": 0.5}, "scope": "global"}, ValueError, "scope='layer'"),
    ({"quality": 1.0, "scope": "global"}, ValueError, "scope='layer'"),
    ({"quality": -1.0}, ValueError, "quality"),
    ({"sparsity": 0.5, "scope": "net"}, ValueError, "scope"),
    ({"sparsity": "half"}, TypeError, "number"),
    ({"sparsity": 0.5, "block": 0}, ValueError, "block"),
    ({"sparsity": 0.5, "block": 2.0}, ValueError, "block"),
])
def test_config_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        PruneConfig(**kwargs)


def test_masks_survive_fine_tuning_and_only_tighten():
    net = models.lenet_300_100(seed=0)
    prune(net, PruneConfig(sparsity=0.6))
    keep = masks(net)
    hist = fit(net, _loader(), TrainConfig(epochs=2, lr=1e-2, weight_decay=1e-3, progress=False))
    assert hist["steps"] == 6
    for name, m in [("fc1", net.fc1), ("fc2", net.fc2), ("fc3", net.fc3)]:
        w = m.weight.detach()
        assert bool((w[~keep[name]] == 0).all())
        assert bool((w[keep[name]] != 0).all())  # the kept weights did train
    # pruning to a lower sparsity revives nothing; to a higher one tightens
    prune(net, PruneConfig(sparsity=0.3))
    assert sparsity(net)["total"] == pytest.approx(0.6, abs=1e-3)
    prune(net, PruneConfig(sparsity=0.9))
    tighter = masks(net)
    assert sparsity(net)["total"] == pytest.approx(0.9, abs=1e-3)
    for name in keep:
        assert not bool((tighter[name] & ~keep[name]).any())
    # baked: plain weights, zeros still there
    bake(net)
    assert sparsity(net)["total"] == pytest.approx(0.9, abs=1e-3)
    assert [r["verb"] for r in compression_record(net)] == ["prune"] * 3


def test_schedule_targets():
    poly = schedule_targets(0.9, 5, "polynomial")
    assert all(b > a for a, b in zip(poly, poly[1:]))
    assert poly[-1] == pytest.approx(0.9)
    steps_size = np.diff([0.0] + poly)
    assert all(b < a for a, b in zip(steps_size, steps_size[1:]))  # cubic: big steps first
    assert schedule_targets(0.8, 3, "one_shot") == [0.8] * 3
    with pytest.raises(ValueError, match="schedule"):
        schedule_targets(0.5, 3, "linear")
    with pytest.raises(ValueError, match="steps"):
        schedule_targets(0.5, 0)


def test_prune_gradually_monotone_to_target():
    net = models.lenet_300_100(seed=0)
    val = _loader(n=64, seed=1)
    hist = prune_gradually(net, PruneConfig(sparsity=0.9), _loader(), QUIET, steps=4,
                           schedule="polynomial", val_loader=val)
    reached = [h["sparsity"] for h in hist["steps"]]
    assert all(b > a for a, b in zip(reached, reached[1:]))
    assert reached[-1] == pytest.approx(0.9, abs=1e-3)
    assert hist["final_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert all("val_accuracy" in h and h["fit"]["steps"] == 3 for h in hist["steps"])
    rec = compression_record(net)[-1]
    assert rec["method"] == "gradual" and rec["steps"] == 4


def test_prune_gradually_one_shot_and_dict():
    net = models.lenet5(seed=0)
    hist = prune_gradually(net, PruneConfig(sparsity={"fc1": 0.8, "conv2": 0.5}), _loader(n=32),
                           QUIET, steps=2, schedule="one_shot")
    assert [h["target"] for h in hist["steps"]] == [{"fc1": 0.8, "conv2": 0.5}] * 2
    assert sparsity(net)["layers"]["fc1"] == pytest.approx(0.8, abs=1e-3)
    with pytest.raises(ValueError, match="one_shot"):
        prune_gradually(net, PruneConfig(quality=1.0), _loader(n=32), QUIET, steps=2)


class ConvBN(nn.Module):
    """conv-BN-ReLU-pool, conv-BN-ReLU-avgpool-flatten, linear-ReLU-linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(12 * 4, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        x = x.view(x.size(0), -1)
        return self.fc2(F.relu(self.fc1(x)))


def _randomize_bn(net):
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_structured_smaller_and_same_output_as_masked(norm):
    torch.manual_seed(0)
    net = _randomize_bn(ConvBN()).eval()
    x = torch.randn(4, 3, 8, 8)
    cfg = StructuredPruneConfig(ratio=0.5, norm=norm)
    masked = prune_channels(copy.deepcopy(net), cfg, x, physical=False)
    shrunk = prune_channels(copy.deepcopy(net), cfg, x)
    assert shrunk.conv1.out_channels == 4 and shrunk.bn1.num_features == 4
    assert shrunk.conv2.in_channels == 4 and shrunk.conv2.out_channels == 6
    assert shrunk.bn2.num_features == 6 and shrunk.fc1.in_features == 6 * 4
    assert shrunk.fc1.out_features == 8 and shrunk.fc2.in_features == 8
    assert shrunk.fc2.out_features == 5  # the output layer is skipped with layers=None
    n_params = lambda m: sum(p.numel() for p in m.parameters())
    assert n_params(shrunk) < 0.5 * n_params(net)
    with torch.no_grad():
        torch.testing.assert_close(shrunk(x), masked(x), rtol=1e-5, atol=1e-6)
    # the removed filters are those with the smallest norm
    w = net.conv1.weight.detach().reshape(8, -1)
    norms = w.abs().sum(1) if norm == "l1" else w.norm(dim=1)
    kept = torch.topk(norms, 4).indices.sort().values
    torch.testing.assert_close(shrunk.conv1.weight.detach(), net.conv1.weight.detach()[kept])
    rec = compression_record(shrunk)[-1]
    assert rec["method"] == "structured" and "fc2" in rec["skipped"]


def test_structured_on_pruned_model_keeps_masks_and_exports(tmp_path):
    net = models.lenet5(seed=0).eval()
    x = torch.randn(2, 1, 28, 28)
    prune(net, PruneConfig(sparsity=0.5))
    cfg = StructuredPruneConfig(ratio=0.4)
    masked = prune_channels(copy.deepcopy(net), cfg, x, physical=False)
    shrunk = prune_channels(copy.deepcopy(net), cfg, x, layers=["conv1", "conv2", "fc1"])
    assert (shrunk.conv1.out_channels, shrunk.conv2.out_channels, shrunk.fc1.out_features) == (12, 30, 300)
    assert shrunk.fc1.in_features == 30 * 16
    with torch.no_grad():
        want = masked(x)
        torch.testing.assert_close(shrunk(x), want, rtol=1e-5, atol=1e-6)
    assert "fc1" in masks(shrunk)  # surviving unstructured zeros stay masked
    path = tmp_path / "shrunk.dsq"
    export(shrunk, x, path, weights="auto")
    got = deepsqueeze.load(str(path)).run(x.numpy())
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        a = F.relu(self.conv1(x))
        b = self.conv2(a) + a
        c = self.conv3(torch.cat([b, a], dim=1))
        return self.head(c.mean(dim=(2, 3)))


@pytest.mark.parametrize("layer,match", [("conv1", "conv1.*feeds 3 ops"),
                                         ("conv2", "conv2.*add"),
                                         ("head", "head.*model's output")])
def test_structured_refuses_non_chains(layer, match):
    x = torch.randn(1, 3, 6, 6)
    with pytest.raises(ValueError, match=match):
        prune_channels(Residual(), StructuredPruneConfig(0.5), x, layers=layer)


def test_structured_errors():
    x = torch.randn(1, 3, 6, 6)
    with pytest.raises(ValueError, match="no selected layer can be shrunk"):
        prune_channels(Residual(), StructuredPruneConfig(0.5), x, layers=None)
    with pytest.raises(ValueError, match="norm"):
        StructuredPruneConfig(0.5, norm="l0")
    with pytest.raises(ValueError, match="ratio"):
        StructuredPruneConfig(1.0)
    with pytest.raises(TypeError, match="StructuredPruneConfig"):
        prune_channels(Residual(), PruneConfig(sparsity=0.5), x)


@pytest.mark.parametrize("model_fn", [models.lenet_300_100, models.lenet5])
def test_pruned_model_exports_and_engine_matches(tmp_path, model_fn):
    net = model_fn(seed=0).eval()
    x = torch.randn(3, 1, 28, 28)
    dense = tmp_path / "dense.dsq"
    export(net, x, dense, weights="fp32")
    prune(net, PruneConfig(sparsity=0.9))
    path = tmp_path / "pruned.dsq"
    export(net, x, path, weights="auto")
    with torch.no_grad():
        want = net(x).numpy()
    got = deepsqueeze.load(str(path)).run(x.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert path.stat().st_size < dense.stat().st_size / 3


def _blocks_all_or_none(w, block):
    """True when every block of `block` input channels (one kernel position) is all zero or
    all nonzero."""
    nz = (w != 0)
    cin = w.shape[1]
    for b0 in range(0, cin, block):
        part = nz[:, b0:b0 + block]
        if not bool((part.all(dim=1) | (~part).all(dim=1)).all()):
            return False
    return True


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_block_pruning_zeroes_whole_blocks(scope):
    """block=4: whole blocks of 4 input channels at one kernel position go, the weakest
    (RMS) first, in convs and linears; the block count reaches the target; a partial last
    block (in width not a multiple of 4) is pruned as one block too."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 10, 1), nn.Flatten(),
                        nn.Linear(10 * 6 * 6, 30))
    ref = copy.deepcopy(net)
    prune(net, PruneConfig(sparsity=0.75, block=4, scope=scope))
    total_blocks = dropped = 0
    refs = dict(ref.named_modules())
    for name, m in net.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        r = refs[name]
        w = m.weight.detach()
        assert _blocks_all_or_none(w, 4), name
        # The kept blocks are the strongest of the layer (scope "layer").
        rms = torch.stack([r.weight.detach()[:, b0:b0 + 4].pow(2).mean(1) for b0 in range(0, w.shape[1], 4)], 1)
        kept = torch.stack([(w[:, b0:b0 + 4] != 0).any(1) for b0 in range(0, w.shape[1], 4)], 1)
        if scope == "layer":
            assert rms[kept].min() >= rms[~kept].max(), name
            assert abs(float((~kept).float().mean()) - 0.75) < 0.01, name
        total_blocks += kept.numel()
        dropped += int((~kept).sum())
    assert abs(dropped / total_blocks - 0.75) < 0.005
    assert masks(net)  # the masks are the usual parametrization


def test_block_pruned_conv_runs_engine_quads(tmp_path):
    """A block-pruned conv exported as sparse int8 with calibrated activations runs the
    quad kernel where the CPU has it, and matches PyTorch to int8 accuracy."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1)).eval()
    prune(net, PruneConfig(sparsity=0.7, block=4), layers=["2"])
    bake(net)
    x = torch.randn(2, 8, 12, 12)
    path = str(tmp_path / "blk.dsq")
    spec = {"values": "int8", "layout": "csr_relative", "index_bits": 4, "huffman": "auto"}
    export(net, x[:1], path, weights={"0": "fp32", "2": spec}, calibration=[torch.randn(16, 8, 12, 12)])
    m = deepsqueeze.load(path)
    kernel = [L["kernel"] for L in m.layers([tuple(x.shape)]) if L["name"].endswith("2")][0]
    quad = [k for k in deepsqueeze.kernels() if k["name"].startswith("spmm_qu8_quad_") and k["isa"] != "scalar"]
    if quad and quad[0]["supported"]:
        assert kernel.startswith(quad[0]["name"]) and "direct conv" in kernel, kernel
    with torch.no_grad():
        want = net(x).numpy()
    got = m.run(x.numpy())
    assert np.abs(got - want).max() <= 0.03 * np.abs(want).max(), np.abs(got - want).max()
