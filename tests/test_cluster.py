"""k-means weight sharing (deepsqueeze.convert.cluster): the sharing constraint, zeros,
centroid gradients, fine-tuning, and the exported file in the engine."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.utils import parametrize  # noqa: E402

import deepsqueeze  # noqa: E402
from deepsqueeze import format as dsqformat  # noqa: E402
from deepsqueeze.convert import core, export_to_bytes, models  # noqa: E402
from deepsqueeze.convert.cluster import (ClusterConfig, SharedWeights, cluster,  # noqa: E402
                                         cluster_tensor, codebook, fine_tune_centroids)

torch.set_num_threads(1)


class _Mask(nn.Module):
    """A pruning mask as the prune verb applies it: weight = original * mask."""

    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w):
        return w * self.mask


def _prune(module: nn.Module, fraction: float) -> torch.Tensor:
    """Mask the smallest `fraction` of module.weight by magnitude (a parametrization)."""
    w = module.weight.detach()
    cut = w.abs().flatten().kthvalue(max(1, int(fraction * w.numel()))).values
    mask = (w.abs() > cut).float()
    parametrize.register_parametrization(module, "weight", _Mask(mask))
    return mask


def _distinct(t: torch.Tensor) -> int:
    return int(torch.unique(t.detach()).numel())


def _lenet(seed=0):
    torch.manual_seed(seed)
    return models.lenet_300_100(seed=seed)


@pytest.fixture(scope="module")
def mnist_batch():
    from deepsqueeze import datasets
    x, y = datasets.mnist().split("train")
    return torch.from_numpy(np.ascontiguousarray(x[:256])), torch.from_numpy(y[:256])


# ---------------------------------------------------------------------------------------
# cluster_tensor
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("init", ["linear", "density", "random"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_cluster_tensor_nearest_centroid_and_zeros(init, per_channel):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(24, 40, generator=g)
    w[torch.rand(24, 40, generator=g) < 0.4] = 0
    bits = 3
    c, idx = cluster_tensor(w, bits, init, per_channel=per_channel, seed=3)
    assert c.shape == ((24, 8) if per_channel else (8,))
    assert idx.shape == w.shape and idx.dtype == torch.int64
    assert torch.equal(idx == -1, w == 0)  # exactly the zeros are unclustered
    assert int(idx.max()) < 8
    table = c if per_channel else c.expand(24, 8)
    # every nonzero weight sits in the cluster of its nearest centroid
    dist = (w[:, :, None] - table[:, None, :]).abs()
    chosen = dist.gather(2, idx.clamp(min=0)[:, :, None]).squeeze(2)
    nz = w != 0
    assert torch.all(chosen[nz] <= dist.min(dim=2).values[nz] + 1e-6)
    # Lloyd's fixed point: each non-empty centroid is the mean of its members
    for r in range(24 if per_channel else 1):
        rows = slice(r, r + 1) if per_channel else slice(None)
        for j in range(8):
            members = w[rows][idx[rows] == j]
            if members.numel():
                assert abs(float(members.double().mean()) - float(table[r, j])) < 1e-4


def test_cluster_tensor_is_lossless_with_few_distinct_values():
    values = torch.tensor([-0.75, -0.125, 0.3, 0.5, 2.0])
    g = torch.Generator().manual_seed(0)
    w = values[torch.randint(0, 5, (30, 20), generator=g)]
    w[torch.rand(30, 20, generator=g) < 0.3] = 0
    c, idx = cluster_tensor(w, 3, "linear")
    rec = torch.where(idx >= 0, c[idx.clamp(min=0)], torch.zeros(()))
    assert torch.equal(rec, w)


def test_per_channel_mixes_exact_rows_and_clustered_rows():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(6, 50, generator=g)
    w[1] = torch.tensor([0.5, -0.25, 0.0, 1.5])[torch.randint(0, 4, (50,), generator=g)]
    w[4, 3:] = 0  # three nonzeros
    c, idx = cluster_tensor(w, 2, per_channel=True)
    rec = torch.where(idx >= 0, c.gather(1, idx.clamp(min=0)), torch.zeros(()))
    assert torch.equal(rec[1], w[1]) and torch.equal(rec[4], w[4])  # <= 4 distinct: exact
    assert all(torch.unique(rec[r]).numel() <= 4 for r in range(6))
    assert not torch.equal(rec[0], w[0])


def test_empty_clusters_are_refilled_on_pruned_two_sided_weights():
    # the two tails of magnitude-pruned weights: linear init puts most of 32 centroids in
    # the gap around 0, where no weight is
    g = torch.Generator().manual_seed(2)
    w = torch.rand(100, 100, generator=g) * 2 - 1
    w[w.abs() < 0.9] = 0
    c0, i0 = cluster_tensor(w, 5, "linear", fill_empty=False)
    c1, i1 = cluster_tensor(w, 5, "linear")

    def used_and_mse(c, i):
        rec = torch.where(i >= 0, c[i.clamp(min=0)], torch.zeros(()))
        return int(torch.unique(i[i >= 0]).numel()), float(((rec - w) ** 2).mean())

    used0, mse0 = used_and_mse(c0, i0)
    used1, mse1 = used_and_mse(c1, i1)
    assert used0 < 16 and used1 == 32
    assert mse1 < mse0 / 4


def test_cluster_tensor_deterministic_and_seeded():
    w = torch.randn(50, 50, generator=torch.Generator().manual_seed(5))
    a = cluster_tensor(w, 4, "random", seed=7)
    b = cluster_tensor(w, 4, "random", seed=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = cluster_tensor(w, 4, "random", seed=8, max_iter=1)
    d = cluster_tensor(w, 4, "random", seed=7, max_iter=1)
    assert not torch.equal(c[0], d[0])


def test_cluster_tensor_linear_init_spans_the_range():
    # one Lloyd step from linear init on two far groups keeps the extreme values' clusters
    w = torch.tensor([-4.0, -3.9, 0.1, 0.2, 0.15, 3.9, 4.0, 0.0])
    c, idx = cluster_tensor(w, 1, "linear", max_iter=1)
    assert idx[-1] == -1
    assert float(c[0]) < -1 and float(c[1]) > 1


def test_cluster_tensor_all_zero_row_per_channel():
    w = torch.randn(4, 6)
    w[2] = 0
    c, idx = cluster_tensor(w, 2, per_channel=True)
    assert torch.all(idx[2] == -1) and torch.all(torch.isfinite(c))


@pytest.mark.parametrize("bad, err", [
    (dict(bits=0), ValueError), (dict(bits=9), ValueError), (dict(bits=2.0), ValueError),
    (dict(init="kmeans++"), ValueError), (dict(bits={"fc1": 12}), ValueError),
    (dict(bits={3: 4}), TypeError), (dict(max_iter=0), ValueError), (dict(tol=-1.0), ValueError),
    (dict(per_channel=1), TypeError), (dict(fill_empty=None), TypeError),
])
def test_config_rejects_bad_values(bad, err):
    with pytest.raises(err):
        ClusterConfig(**bad)


def test_cluster_tensor_rejects_bad_input():
    with pytest.raises(TypeError):
        cluster_tensor(np.ones((3, 3)), 2)
    with pytest.raises(TypeError):
        cluster_tensor(torch.ones(3, 3, dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="NaN"):
        cluster_tensor(torch.tensor([1.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="per_channel"):
        cluster_tensor(torch.ones(5), 2, per_channel=True)


# ---------------------------------------------------------------------------------------
# cluster(model)
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 3, 5])
def test_at_most_2_to_the_b_distinct_values_per_layer(bits):
    model = cluster(_lenet(), ClusterConfig(bits=bits))
    for name in ("fc1", "fc2", "fc3"):
        w = getattr(model, name).weight
        assert _distinct(w) <= 2 ** bits, name
        assert getattr(model, name).parametrizations.weight.original.shape == (2 ** bits,)


def test_per_channel_at_most_2_to_the_b_values_per_row():
    model = cluster(_lenet(), ClusterConfig(bits=2, per_channel=True))
    w = model.fc2.weight.detach()
    assert model.fc2.parametrizations.weight.original.shape == (100, 4)
    assert max(_distinct(row) for row in w) <= 4
    assert _distinct(w) > 4  # the rows really have their own codebooks


def test_conv_layers_cluster():
    torch.manual_seed(0)
    model = models.lenet5()
    cluster(model, ClusterConfig(bits=4), layers="conv*")
    assert _distinct(model.conv2.weight) <= 16
    assert not parametrize.is_parametrized(model.fc1)


def test_pruned_zeros_stay_zero_through_clustering_and_fine_tuning(mnist_batch):
    model = _lenet()
    masks = {n: _prune(getattr(model, n), 0.8) for n in ("fc1", "fc2")}
    cluster(model, ClusterConfig(bits=3))
    for n, mask in masks.items():
        m = getattr(model, n)
        # the mask was baked into plain zeros, then replaced by the sharing constraint
        assert [type(p) for p in m.parametrizations.weight] == [SharedWeights]
        assert torch.all(m.weight[mask == 0] == 0)
        assert torch.all(m.weight[mask == 1] != 0)
    x, y = mnist_batch
    fine_tune_centroids(model, [(x, y)] * 5, core.TrainConfig(epochs=1, lr=1e-2, progress=False))
    for n, mask in masks.items():
        w = getattr(model, n).weight
        assert torch.all(w[mask == 0] == 0), n
        assert _distinct(w) <= 8 + 1  # 8 shared values and the zeros


def test_centroid_gradient_is_the_sum_of_member_gradients(mnist_batch):
    model = _lenet()
    _prune(model.fc2, 0.5)
    cluster(model, ClusterConfig(bits=4))
    x, y = mnist_batch
    F.cross_entropy(model(x[:32]), y[:32]).backward()

    # the same network with plain weights holding the shared values
    plain = _lenet()
    with torch.no_grad():
        for n in ("fc1", "fc2", "fc3"):
            getattr(plain, n).weight.copy_(getattr(model, n).weight)
            getattr(plain, n).bias.copy_(getattr(model, n).bias)
    F.cross_entropy(plain(x[:32]), y[:32]).backward()

    for n in ("fc1", "fc2", "fc3"):
        m = getattr(model, n)
        codes = m.parametrizations.weight[0].codes.long().flatten()
        g = getattr(plain, n).weight.grad.flatten().double()
        expected = torch.zeros(17, dtype=torch.float64).index_add_(0, codes, g)[:16]
        got = m.parametrizations.weight.original.grad.double()
        scale = float(g.abs().sum()) + 1e-12
        assert torch.allclose(got, expected, atol=1e-5 * scale, rtol=1e-4), n


def test_fine_tuning_lowers_the_loss(mnist_batch):
    model = _lenet()
    x, y = mnist_batch
    core.fit(model, [(x, y)] * 10, core.TrainConfig(lr=1e-3, progress=False))
    cluster(model, ClusterConfig(bits=2))
    with torch.no_grad():
        before = float(F.cross_entropy(model(x), y))
    hist = fine_tune_centroids(model, [(x, y)] * 10, core.TrainConfig(lr=1e-3, progress=False))
    with torch.no_grad():
        after = float(F.cross_entropy(model(x), y))
    assert hist["steps"] == 10
    assert after < before - 1e-3
    assert _distinct(model.fc1.weight) <= 4
    rec = core.compression_record(model)
    assert [r["verb"] for r in rec] == ["cluster", "fine_tune_centroids"]


def test_fine_tune_centroids_only_leaves_biases_alone(mnist_batch):
    model = cluster(_lenet(), ClusterConfig(bits=3))
    bias = model.fc1.bias.detach().clone()
    x, y = mnist_batch
    fine_tune_centroids(model, [(x, y)] * 3, core.TrainConfig(lr=1e-2, progress=False))
    assert torch.equal(model.fc1.bias, bias)
    fine_tune_centroids(model, [(x, y)] * 3, core.TrainConfig(lr=1e-2, progress=False),
                        centroids_only=False)
    assert not torch.equal(model.fc1.bias, bias)


def test_fine_tune_without_clustering_is_an_error():
    with pytest.raises(ValueError, match="no clustered layer"):
        fine_tune_centroids(_lenet(), [], core.TrainConfig(progress=False))


def test_bits_dict_by_name_and_pattern_and_record():
    model = cluster(_lenet(), ClusterConfig(bits={"fc1": 2, "fc[23]": 4}))
    assert _distinct(model.fc1.weight) <= 4
    assert 4 < _distinct(model.fc2.weight) <= 16
    rec = core.compression_record(model)[-1]
    assert rec["verb"] == "cluster" and rec["config"]["bits"] == {"fc1": 2, "fc[23]": 4}
    assert rec["layers"]["fc1"]["bits"] == 2 and rec["layers"]["fc3"]["k"] == 16

    model = cluster(_lenet(), ClusterConfig(bits={"fc1": 2}))
    assert not parametrize.is_parametrized(model.fc2)
    assert core.compression_record(model)[-1]["skipped"] == ["fc2", "fc3"]
    with pytest.raises(ValueError, match="fc9"):
        cluster(_lenet(), ClusterConfig(bits={"fc9": 2}))
    with pytest.raises(TypeError):
        cluster(_lenet(), bits=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="ClusterConfig"):
        cluster(_lenet(), {"bits": 3})  # type: ignore[arg-type]


def test_codebook_counts():
    model = _lenet()
    _prune(model.fc1, 0.9)
    cluster(model, ClusterConfig(bits=3))
    books = codebook(model)
    assert set(books) == {"fc1", "fc2", "fc3"}
    fc1 = books["fc1"]
    w = model.fc1.weight.detach()
    assert fc1["pruned"] == int((w == 0).sum())
    assert int(fc1["counts"].sum()) + fc1["pruned"] == w.numel()
    for value, count in zip(fc1["centroids"], fc1["counts"]):
        assert int((w == value).sum()) == int(count)


def test_reassigning_the_weight_projects_onto_the_clusters():
    model = cluster(_lenet(), ClusterConfig(bits=3))
    target = model.fc3.weight.detach() + 0.5  # every cluster moves by 0.5
    before = model.fc3.parametrizations.weight.original.detach().clone()
    model.fc3.weight = target
    assert torch.allclose(model.fc3.parametrizations.weight.original, before + 0.5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("per_channel", [False, True])
def test_exported_clustered_model_runs_in_engine_and_is_small(mnist_batch, per_channel):
    model = _lenet()
    for n in ("fc1", "fc2", "fc3"):
        _prune(getattr(model, n), 0.9)
    cluster(model, ClusterConfig(bits=4, per_channel=per_channel))
    model.eval()
    x, _ = mnist_batch
    x = x[:64]
    dense = export_to_bytes(_lenet(), x[:1], weights="fp32")
    packed = export_to_bytes(model, x[:1], weights="auto")
    assert len(packed) * 10 < len(dense), (len(packed), len(dense))
    with torch.no_grad():
        want = model(x).numpy()
    got = deepsqueeze.load(packed, threads=1).run(x.numpy())
    encodings = json.loads(dsqformat.from_bytes(packed).metadata["dsq.export_config"])["layers"]
    assert encodings["fc1"]["values"] == "codebook" and encodings["fc1"]["codebook_bits"] <= 4
    # the shared values are stored exactly: only summation order differs
    bound = 1e-4 * (1 + np.abs(want).max())
    assert np.abs(got - want).max() <= bound


def test_after_the_prune_verb(mnist_batch):
    from deepsqueeze.convert.prune import PruneConfig, prune
    model = prune(_lenet(), PruneConfig(sparsity=0.9))
    zeros = {n: (getattr(model, n).weight == 0).clone() for n in ("fc1", "fc2", "fc3")}
    cluster(model, ClusterConfig(bits=5))
    x, y = mnist_batch
    fine_tune_centroids(model, [(x, y)] * 3, core.TrainConfig(lr=1e-2, progress=False))
    for n, z in zeros.items():
        w = getattr(model, n).weight
        assert torch.equal(w == 0, z), n
        assert _distinct(w[w != 0]) <= 32
    assert [r["verb"] for r in core.compression_record(model)] == ["prune", "cluster",
                                                                   "fine_tune_centroids"]
