"""Uniform weight quantization: quantize_tensor's error bound and level count for every
scheme / granularity / calibration, zeros kept, STE gradient, post-training quantize(),
quantization-aware training, and the export of a quantized model (weights="auto") run by
the engine."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import deepsqueeze
from deepsqueeze.convert import export, models
from deepsqueeze.convert.core import TrainConfig, compression_record
from deepsqueeze.convert.prune import PruneConfig, masks, prune
from deepsqueeze.convert.quantize import (FakeQuantize, QuantizeConfig, fake_quantize, quantize,
                                          quantize_aware_training, quantize_tensor,
                                          quantize_tensor_detail)

torch.set_num_threads(1)


def _weight(seed=0, shape=(12, 6, 3, 3), zero_fraction=0.3):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.1
    w[torch.rand(shape, generator=g) < zero_fraction] = 0.0
    w.view(-1)[5] = 0.9  # an outlier, so percentile / mse actually clip
    return w


def _groups(t, config):
    """The groups that share a grid, as 1-D tensors."""
    if config.granularity == "tensor":
        return [t.reshape(-1)]
    if config.granularity == "channel":
        return list(t.reshape(t.shape[0], -1))
    return list(torch.split(t.reshape(-1), config.bucket_size))


ALL = list(itertools.product((2, 3, 4, 8), ("symmetric", "asymmetric"),
                             ("tensor", "channel", "bucket"), ("minmax", "percentile", "mse")))


@pytest.mark.parametrize("bits,scheme,granularity,calibration", ALL)
def test_error_within_half_step_levels_and_zeros(bits, scheme, granularity, calibration):
    w = _weight(seed=bits)
    cfg = QuantizeConfig(bits=bits, scheme=scheme, granularity=granularity,
                         calibration=calibration, percentile=99.0, bucket_size=50)
    d = quantize_tensor_detail(w, cfg)
    assert d.values.shape == w.shape and d.values.dtype == w.dtype
    # inside the clip range: at most half a step away; outside: clamped to the range
    target = torch.maximum(torch.minimum(w, d.high), d.low)
    assert float(((d.values - target).abs() - d.step / 2).max()) <= 1e-6
    if calibration == "minmax":
        assert float(((d.values - w).abs() - d.step / 2).max()) <= 1e-6
    assert bool((d.values[w == 0] == 0).all())
    limit = 2 ** bits - 1 if scheme == "symmetric" else 2 ** bits
    assert cfg.levels == limit
    for group in _groups(d.values, cfg):
        assert group.unique().numel() <= limit
    # the values lie on the grid: integer multiples of the step from a level at 0
    codes = d.values / d.step
    assert float((codes - codes.round()).abs().max()) < 1e-3
    if scheme == "symmetric":
        assert float(codes.abs().max()) <= 2 ** (bits - 1) - 1 + 1e-3
    assert torch.equal(quantize_tensor(w, cfg), d.values)


def test_granularity_fits_ranges():
    """Per channel follows each row's own range; a tensor-wide grid is coarser for rows
    with small weights."""
    w = torch.randn(8, 64)
    w[0] *= 100.0
    per_tensor = quantize_tensor(w, QuantizeConfig(bits=4, granularity="tensor"))
    per_channel = quantize_tensor(w, QuantizeConfig(bits=4, granularity="channel"))
    small = slice(1, None)
    assert float((per_channel[small] - w[small]).abs().max()) < \
        float((per_tensor[small] - w[small]).abs().max())
    d = quantize_tensor_detail(w, QuantizeConfig(bits=8, granularity="channel"))
    assert torch.allclose(d.step[:, 0], w.abs().amax(dim=1) / 127)


def test_mse_calibration_not_worse_than_minmax():
    w = _weight(seed=3, shape=(4, 300))
    for scheme in ("symmetric", "asymmetric"):
        errs = {}
        for cal in ("minmax", "mse"):
            q = quantize_tensor(w, QuantizeConfig(bits=3, scheme=scheme, calibration=cal))
            errs[cal] = float(((q - w) ** 2).sum())
        assert errs["mse"] < errs["minmax"]


def test_asymmetric_zero_exact_for_one_sided_weights():
    w = torch.rand(4, 40) + 0.5  # all positive: the range is widened to contain 0
    w[:, ::3] = 0.0
    q = quantize_tensor(w, QuantizeConfig(bits=2, scheme="asymmetric"))
    assert bool((q[w == 0] == 0).all())
    assert q.min() >= 0


def test_edge_tensors():
    cfg = QuantizeConfig(bits=4)
    assert torch.equal(quantize_tensor(torch.zeros(3, 5), cfg), torch.zeros(3, 5))
    assert quantize_tensor(torch.empty(0, 4), cfg).shape == (0, 4)
    half = quantize_tensor(torch.randn(4, 4, dtype=torch.float64), cfg)
    assert half.dtype == torch.float64
    with pytest.raises(ValueError, match="NaN"):
        quantize_tensor(torch.tensor([1.0, float("nan")]), cfg)
    with pytest.raises(TypeError, match="floating"):
        quantize_tensor(torch.arange(4), cfg)
    with pytest.raises(TypeError, match="QuantizeConfig"):
        quantize_tensor(torch.randn(3), {"bits": 4})


@pytest.mark.parametrize("kwargs,match", [
    ({"bits": 1}, "bits"), ({"bits": 9}, "bits"), ({"scheme": "sym"}, "scheme"),
    ({"granularity": "row"}, "granularity"), ({"bucket_size": 0}, "bucket_size"),
    ({"calibration": "kl"}, "calibration"), ({"percentile": 20.0}, "percentile")])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantizeConfig(**kwargs)
    with pytest.raises(TypeError, match="bits"):
        QuantizeConfig(bits=4.0)


def test_fake_quantize_straight_through():
    w = torch.randn(6, 10, requires_grad=True)
    cfg = QuantizeConfig(bits=2, granularity="bucket", bucket_size=7)
    y = fake_quantize(w, cfg)
    assert torch.equal(y.detach(), quantize_tensor(w.detach(), cfg))
    (y * torch.arange(60.0).reshape(6, 10)).sum().backward()
    assert torch.equal(w.grad, torch.arange(60.0).reshape(6, 10))
    assert "bits=2" in repr(FakeQuantize(cfg))


def _loader(n=96, batch=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def test_post_training_quantize_keeps_mask_and_levels():
    net = models.lenet_300_100(seed=1)
    prune(net, PruneConfig(sparsity=0.7))
    before = {n: m.clone() for n, m in masks(net).items()}
    cfg = QuantizeConfig(bits=4, scheme="asymmetric", granularity="channel")
    quantize(net, cfg)
    for name, m in [("fc1", net.fc1), ("fc2", net.fc2), ("fc3", net.fc3)]:
        w = m.weight.detach()
        assert torch.equal(masks(net)[name], before[name])
        assert bool((w[~before[name]] == 0).all())
        assert max(row.unique().numel() for row in w) <= 16
    assert compression_record(net)[-1]["verb"] == "quantize"
    assert compression_record(net)[-1]["config"]["bits"] == 4


def test_quantize_selects_layers():
    net = models.lenet5(seed=0)
    fc2 = net.fc2.weight.detach().clone()
    quantize(net, QuantizeConfig(bits=2, granularity="tensor"), layers=["conv*", "fc1"])
    assert net.conv1.weight.unique().numel() <= 3
    assert torch.equal(net.fc2.weight.detach(), fc2)
    with pytest.raises(ValueError, match="matches no"):
        quantize(net, QuantizeConfig(), layers="fc9")


def test_qat_trains_and_leaves_quantized_weights():
    net = models.lenet_300_100(seed=2)
    prune(net, PruneConfig(sparsity=0.5))
    keep = masks(net)
    cfg = QuantizeConfig(bits=3, granularity="channel")
    loader = _loader()
    hist = quantize_aware_training(net, cfg, loader, TrainConfig(epochs=3, lr=1e-3, progress=False),
                                   activation_bits=8)
    assert hist["steps"] == 9
    assert hist["epoch_loss"][-1] < hist["epoch_loss"][0]
    for name in ("fc1", "fc2", "fc3"):
        m = getattr(net, name)
        w = m.weight.detach()
        # baked: the weight is its own quantization, with the mask still in place
        assert torch.equal(w, quantize_tensor(w, cfg))
        assert max(row.unique().numel() for row in w) <= 7
        assert bool((w[~keep[name]] == 0).all())
        assert [type(p).__name__ for p in m.parametrizations.weight] == ["PruneMask"]
        assert not m._forward_pre_hooks
    assert compression_record(net)[-1]["activation_bits"] == 8
    with pytest.raises(ValueError, match="activation_bits"):
        quantize_aware_training(net, cfg, loader, TrainConfig(progress=False), activation_bits=12)


def test_quantize_refuses_other_constraints():
    net = models.lenet_300_100()
    from torch.nn.utils import parametrize
    parametrize.register_parametrization(net.fc1, "weight", FakeQuantize(QuantizeConfig()))
    with pytest.raises(ValueError, match="fc1.*constraints"):
        quantize(net, QuantizeConfig(bits=4))


@pytest.mark.parametrize("model_fn,shape", [(models.lenet_300_100, (3, 1, 28, 28)),
                                            (models.lenet5, (3, 1, 28, 28))])
def test_quantized_model_exports_losslessly(tmp_path, model_fn, shape):
    torch.manual_seed(0)
    net = model_fn(seed=0).eval()
    x = torch.randn(shape)
    fp32 = tmp_path / "fp32.dsq"
    export(net, x, fp32, weights="fp32")
    prune(net, PruneConfig(sparsity=0.6))
    quantize(net, QuantizeConfig(bits=4, granularity="channel"))
    path = tmp_path / "q4.dsq"
    export(net, x, path, weights="auto")
    with torch.no_grad():
        want = net(x).numpy()
    got = deepsqueeze.load(str(path)).run(x.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
    assert path.stat().st_size < fp32.stat().st_size / 4
