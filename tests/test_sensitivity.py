"""Sensitivity scan and the per-layer choice under a size budget, on a LeNet-300-100
briefly trained on an MNIST slice."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import deepsqueeze
from deepsqueeze.convert import export, models
from deepsqueeze.convert.core import TrainConfig, evaluate, fit
from deepsqueeze.convert.sensitivity import (SensitivityTable, apply_choice, choose,
                                             estimate_bytes, estimate_layer_bytes,
                                             predicted_drop, scan)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained():
    data = pytest.importorskip("deepsqueeze.convert.data")
    try:
        loaders = data.mnist_loaders(batch_size=64, test_batch_size=250, limit_train=3000,
                                     limit_test=500)
    except (FileNotFoundError, ImportError) as e:  # pragma: no cover - data package missing
        pytest.skip(f"MNIST not installed: {e}")
    net = models.lenet_300_100(seed=0)
    fit(net, loaders.train, TrainConfig(epochs=1, lr=2e-3, progress=False))
    return net.eval(), loaders


SPARS = (0.5, 0.9, 0.99)
BITS = (6, 3, 1)


@pytest.fixture(scope="module")
def table(trained):
    net, loaders = trained
    return scan(net, loaders.test, sparsities=SPARS, bits=BITS, max_batches=1)


def test_scan_shape_and_restores(trained, table):
    net, loaders = trained
    assert table.layers == ["fc1", "fc2", "fc3"]
    assert table.samples == 250
    assert table.baseline > 0.7  # it did learn: the scan measures something
    for n in table.layers:
        assert set(table.prune[n]) == set(SPARS) and set(table.bits[n]) == set(BITS)
        assert all(0.0 <= a <= 1.0 for a in list(table.prune[n].values()) + list(table.bits[n].values()))
    assert table.numel == {"fc1": 784 * 300, "fc2": 300 * 100, "fc3": 100 * 10}
    # extreme settings hurt more than mild ones (on the small last layer most of all)
    assert table.prune["fc3"][0.99] < table.prune["fc3"][0.5]
    assert table.bits["fc3"][1] < table.baseline
    assert table.drop("fc3", 0.99, 1) >= table.drop("fc3", 0.99)
    # the model itself is untouched
    assert evaluate(net, loaders.test, max_batches=1)["accuracy"] == table.baseline
    assert "fc1" in table.markdown() and table.to_dict()["layers"]["fc2"]["numel"] == 30000


def test_scan_uniform_and_errors(trained):
    net, loaders = trained
    t = scan(net, loaders.test, layers="fc3", sparsities=(0.5,), bits=(4, 2), max_batches=1,
             method="uniform")
    assert t.layers == ["fc3"] and set(t.bits["fc3"]) == {4, 2}
    with pytest.raises(ValueError, match="sparsities"):
        scan(net, loaders.test, sparsities=(1.0,))
    with pytest.raises(ValueError, match="bits"):
        scan(net, loaders.test, bits=(12,))
    with pytest.raises(ValueError, match="method"):
        scan(net, loaders.test, method="lloyd")
    with pytest.raises(KeyError, match="0.3"):
        t.drop("fc3", 0.3)


def test_estimate_layer_bytes():
    assert estimate_layer_bytes(1000, 10, 1000, None) == 4000
    assert estimate_layer_bytes(1000, 10, 1000, 4) == 500 + 16 * 4
    # sparse wins when few weights remain: 100 * (4 + 5) bits + row pointers + codebook
    assert estimate_layer_bytes(1000, 10, 100, 4) == 113 + 40 + 64


@pytest.mark.parametrize("ratio", [8, 30])
def test_choose_meets_budget(trained, table, ratio):
    net, _ = trained
    dense = estimate_bytes(net, table, {})
    assert dense == 4 * sum(p.numel() for p in net.parameters())
    choice = choose(table, net, ratio=ratio)
    assert set(choice) == set(table.layers)
    assert estimate_bytes(net, table, choice) <= dense / ratio
    # a tighter budget never predicts a smaller drop
    tighter = choose(table, net, ratio=ratio * 2)
    assert predicted_drop(table, tighter) >= predicted_drop(table, choice)
    budget = estimate_bytes(net, table, choice)
    assert estimate_bytes(net, table, choose(table, net, budget_bytes=budget)) <= budget


def test_choose_accuracy_limit_and_errors(trained, table):
    net, _ = trained
    free = choose(table, net, max_accuracy_drop=0.0)
    assert predicted_drop(table, free) == 0.0
    assert estimate_bytes(net, table, free) < estimate_bytes(net, table, {})
    with pytest.raises(ValueError, match="cannot be met"):
        choose(table, net, budget_bytes=100)
    with pytest.raises(ValueError, match="max_accuracy_drop"):
        choose(table, net, ratio=200, max_accuracy_drop=0.0)
    with pytest.raises(ValueError, match="not both"):
        choose(table, net, budget_bytes=1000, ratio=4)
    with pytest.raises(ValueError, match="give budget_bytes"):
        choose(table, net)
    with pytest.raises(TypeError, match="SensitivityTable"):
        choose({}, net, ratio=4)


def test_apply_choice_and_export(trained, table, tmp_path):
    net, loaders = trained
    choice = choose(table, net, ratio=20)
    small = apply_choice(copy.deepcopy(net), choice)
    for name, c in choice.items():
        w = small.get_submodule(name).weight.detach()
        if c["sparsity"]:
            assert float((w == 0).float().mean()) >= c["sparsity"] - 1e-3
        if c["bits"] is not None:
            assert w[w != 0].unique().numel() <= 2 ** c["bits"]
    x = torch.from_numpy(loaders.test_arrays[0][:4])
    path = tmp_path / "chosen.dsq"
    export(small, x, path, weights="auto")
    with torch.no_grad():
        want = small(x).numpy()
    got = deepsqueeze.load(str(path)).run(x.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # the estimate is a size model, not the file: same order of magnitude
    est = estimate_bytes(net, table, choice)
    assert 0.3 * est < path.stat().st_size < 3 * est
    with pytest.raises(ValueError, match="fc9"):
        apply_choice(copy.deepcopy(net), {"fc9": {"sparsity": 0.5, "bits": 4}})
    with pytest.raises(ValueError, match="sparsity"):
        apply_choice(copy.deepcopy(net), {"fc1": {"sparsty": 0.5}})
