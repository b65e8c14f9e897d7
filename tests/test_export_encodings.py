"""The exporter's weight specs: "auto" (lossless sparse / codebook / Huffman), per-layer
dicts and callables of explicit encodings (format 1.1), on models whose weights are
already pruned and/or shared (done here, in the test)."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402

import deepsqueeze  # noqa: E402
from deepsqueeze import format as fmt  # noqa: E402
from deepsqueeze.convert import (SPARSE_MAX_DENSITY_KXK, SPARSE_MAX_DENSITY_POINTWISE,  # noqa: E402
                                 auto_encode, export_to_bytes, models)
from deepsqueeze.encode import decode_tensor  # noqa: E402

REL = 1e-4  # engine vs torch, relative to the output's largest magnitude (f32 bound)
SPARSE_PREFIXES = ("spmv", "spmm")


# --------------------------------------------------------------------------- helpers


def prune_(model: nn.Module, sparsity: float) -> nn.Module:
    """Zero the `sparsity` fraction of smallest-magnitude weights of every conv/linear."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                w = m.weight
                k = int(round(sparsity * w.numel()))
                order = w.abs().flatten().argsort()
                flat = w.view(-1)
                flat[order[:k]] = 0.0
    return model


def share_(model: nn.Module, k: int = 32) -> nn.Module:
    """Round the nonzeros of every conv/linear weight to the nearest of k centroids: a
    linspace of k/2 over each sign's magnitude range (k-means-like initial centroids)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                w = m.weight
                for sign in (1.0, -1.0):
                    sel = (w * sign) > 0
                    mag = (w * sign)[sel]
                    cents = torch.linspace(float(mag.min()), float(mag.max()), k // 2)
                    idx = (mag[:, None] - cents[None]).abs().argmin(1)
                    w[sel] = sign * cents[idx]
    return model


def weight_modules(model: nn.Module):
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def weight_tensors(f: fmt.DsqFile):
    """{node name: its weight Tensor} of the conv / linear nodes."""
    return {n.name: f.tensors[n.weights[0]] for n in f.graph.nodes if n.op in ("conv2d", "linear")}


def check_exact(f: fmt.DsqFile, model: nn.Module):
    """Every stored conv/linear weight decodes to the model's f32 weight exactly."""
    mods = weight_modules(model)
    tensors = weight_tensors(f)
    assert set(tensors) == set(mods)
    for name, t in tensors.items():
        want = mods[name].weight.detach().numpy()
        got = decode_tensor(t)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.array_equal(got, want), name


def check_runs(data: bytes, model: nn.Module, x: torch.Tensor):
    eng = deepsqueeze.load(data)
    with torch.no_grad():
        ref = model(x).numpy()
    got = eng.run(x.numpy())
    err = float(np.abs(got - ref).max())
    assert err <= REL * float(np.abs(ref).max()), err
    return eng


def kernels(eng):
    return {l["name"]: l["kernel"] for l in eng.layers()}


def config(f: fmt.DsqFile) -> dict:
    return json.loads(f.metadata["dsq.export_config"])


@pytest.fixture(scope="module")
def lenet300():
    """LeNet-300-100, pruned to 90% by magnitude and shared to 32 values per layer."""
    model = share_(prune_(models.lenet_300_100(seed=0), 0.9), 32)
    for name, m in weight_modules(model).items():
        w = m.weight.detach().numpy()
        assert np.count_nonzero(w) == round(0.1 * w.size), name
        assert np.unique(w[w != 0]).size == 32, name
    return model


@pytest.fixture(scope="module")
def x300():
    return torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def lenet300_files(lenet300, x300):
    f32 = export_to_bytes(lenet300, x300[:1])
    auto = export_to_bytes(lenet300, x300[:1], weights="auto")
    return f32, auto


# --------------------------------------------------------------------------- auto


def test_auto_pruned_shared_lenet300(lenet300, lenet300_files, x300):
    f32, data = lenet300_files
    assert len(f32) >= 10 * len(data), (len(f32), len(data))
    f = fmt.from_bytes(data)
    check_exact(f, lenet300)
    eng = check_runs(data, lenet300, x300)
    ks = kernels(eng)
    for name in ("fc1", "fc2", "fc3"):
        assert ks[name].startswith(SPARSE_PREFIXES), ks[name]
    for name, t in weight_tensors(f).items():
        assert t.layout in ("csr", "csr_relative", "block_csr"), (name, t.layout)
        assert t.values == "codebook" and t.codebook_bits == 5, (name, t.values, t.codebook_bits)
    # biases stay f32 and dense
    for n in f.graph.nodes:
        if n.op == "linear":
            b = f.tensors[n.weights[1]]
            assert (b.values, b.layout, b.entropy) == ("f32", "dense", "none")
    cfg = config(f)
    assert cfg["weights"] == "auto" and cfg["weight_values"] == "codebook"
    for name, t in weight_tensors(f).items():
        enc = cfg["layers"][name]
        assert enc["layout"] == t.layout and enc["values"] == t.values
        assert enc["huffman"] == "auto"
        assert abs(cfg["auto"]["layers"][name]["density"] - 0.1) < 1e-3
    # the recorded arguments reproduce the stored tensor
    from deepsqueeze.encode import encode_tensor
    t = weight_tensors(f)["fc2"]
    again = encode_tensor(t.name, lenet300.fc2.weight.detach().numpy(), **cfg["layers"]["fc2"])
    assert [bytes(np.asarray(s.data)) for s in again.streams] == [bytes(np.asarray(s.data)) for s in t.streams]


def test_auto_dense_model_stays_f32(x300):
    """Unpruned, unshared weights: nothing beats dense f32 losslessly."""
    model = models.lenet_300_100(seed=1)
    f = fmt.from_bytes(export_to_bytes(model, x300[:1], weights="auto"))
    for name, t in weight_tensors(f).items():
        assert (t.layout, t.values, t.entropy) == ("dense", "f32", "none"), name
    check_exact(f, model)


def test_auto_encode_choices():
    rng = np.random.default_rng(0)
    # few distinct values, dense: a dense codebook (smaller than f32)
    w = rng.choice(np.float32([-0.5, 0.25, 1.0, 3.0]), size=(64, 64)).astype(np.float32)
    t, kw, facts = auto_encode("w", w, SPARSE_MAX_DENSITY_POINTWISE)
    assert (t.layout, t.values, t.codebook_bits) == ("dense", "codebook", 2)
    assert facts["distinct"] == 4 and np.array_equal(decode_tensor(t), w)
    # sparse above the threshold: dense
    w = rng.standard_normal((64, 64)).astype(np.float32)
    w[rng.random(w.shape) < 0.5] = 0
    t, _, facts = auto_encode("w", w, SPARSE_MAX_DENSITY_POINTWISE)
    assert t.layout == "dense" and facts["density"] > SPARSE_MAX_DENSITY_POINTWISE
    # sparse below the threshold, but no sparse kernel allowed (depthwise): dense
    w[rng.random(w.shape) < 0.8] = 0
    t, _, _ = auto_encode("w", w, None)
    assert t.layout == "dense"
    t, _, _ = auto_encode("w", w, SPARSE_MAX_DENSITY_POINTWISE)
    assert t.layout != "dense" and t.values == "f32"
    assert np.array_equal(decode_tensor(t), w)
    # many distinct values that are all exact f16: f16 is lossless and half the size
    w16 = rng.standard_normal((64, 64)).astype(np.float16).astype(np.float32)
    t, _, _ = auto_encode("w", w16, None)
    assert (t.layout, t.values) == ("dense", "f16")
    assert np.array_equal(decode_tensor(t), w16)
    # -0.0 and NaN survive exactly where they are stored
    w = np.zeros((4, 8), np.float32)
    w[0, 0] = -0.0
    w[1, 2] = np.nan
    w[2, 3] = 1.5
    t, _, _ = auto_encode("w", w, SPARSE_MAX_DENSITY_POINTWISE)
    assert np.array_equal(decode_tensor(t), w, equal_nan=True)


class ConvNet(nn.Module):
    """conv+BN (folded), depthwise, 1x1 pointwise, linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 24, 1)
        self.fc = nn.Linear(24 * 8 * 8, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.dw(x))
        x = torch.relu(self.pw(x))
        return self.fc(torch.flatten(x, 1))


def test_auto_bn_folding_depthwise_and_pointwise():
    torch.manual_seed(0)
    model = ConvNet()
    models.randomize_batchnorm(model, seed=1)
    prune_(model, 0.8)
    share_(model, 16)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    data = export_to_bytes(model, x[:1], weights="auto")
    f = fmt.from_bytes(data)
    ts = weight_tensors(f)
    assert "conv" in ts and "bn" not in ts  # folded
    # the folded weight, computed as the exporter does (f64, then stored as f32)
    bn = model.bn
    s = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    folded = (model.conv.weight.detach().double() * s.reshape(-1, 1, 1, 1)).float().numpy()
    assert np.array_equal(decode_tensor(ts["conv"]), folded)
    for name in ("dw", "pw", "fc"):
        assert np.array_equal(decode_tensor(ts[name]), getattr(model, name).weight.detach().numpy())
    assert ts["dw"].layout == "dense"  # depthwise: dense only (a codebook is allowed)
    assert ts["pw"].layout != "dense" and ts["fc"].layout != "dense"
    assert ts["conv"].layout != "dense"  # 3x3, density 0.2 <= SPARSE_MAX_DENSITY_KXK
    eng = check_runs(data, model, x)
    ks = kernels(eng)
    for name in ("conv", "pw", "fc"):
        assert ks[name].startswith(SPARSE_PREFIXES), (name, ks[name])
    assert not ks["dw"].startswith(SPARSE_PREFIXES)
    cfg = config(f)
    assert cfg["layers"]["dw"]["layout"] == "dense"
    assert cfg["auto"]["sparse_max_density_kxk"] == SPARSE_MAX_DENSITY_KXK


def test_auto_lenet5_pruned_conv():
    """LeNet-5 pruned to 70% (not shared): the 5x5 convs take the kxk sparse path."""
    model = prune_(models.lenet5(seed=0), 0.7)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    data = export_to_bytes(model, x[:1], weights="auto")
    f = fmt.from_bytes(data)
    check_exact(f, model)
    eng = check_runs(data, model, x)
    ks = kernels(eng)
    cfg = config(f)
    for name in ("conv1", "conv2"):
        density = cfg["auto"]["layers"][name]["density"]
        assert density <= SPARSE_MAX_DENSITY_KXK, density
        assert ks[name].startswith(SPARSE_PREFIXES) and "direct conv" in ks[name], ks[name]  # stride 1
    for name in ("fc1", "fc2"):
        assert ks[name].startswith(SPARSE_PREFIXES), ks[name]
    assert len(data) < len(export_to_bytes(model, x[:1])) / 2


# --------------------------------------------------------------------------- explicit specs


def test_dict_spec_per_layer(lenet300, x300):
    spec = {
        "fc1": {"layout": "csr", "values": "codebook", "huffman": "auto"},
        "fc[23]": {"layout": "block_csr", "block": (1, 4), "values": "f32"},
        "fc3": "auto",  # an exact name wins over a pattern
        "*": "fp32",
    }
    data = export_to_bytes(lenet300, x300[:1], weights=spec)
    f = fmt.from_bytes(data)
    ts = weight_tensors(f)
    assert (ts["fc1"].layout, ts["fc1"].values, ts["fc1"].codebook_bits) == ("csr", "codebook", 5)
    assert (ts["fc2"].layout, ts["fc2"].values, ts["fc2"].block_rows, ts["fc2"].block_cols) == \
        ("block_csr", "f32", 1, 4)
    assert ts["fc3"].values == "codebook"  # auto
    check_exact(f, lenet300)
    check_runs(data, lenet300, x300)
    cfg = config(f)
    assert cfg["weights"]["fc[23]"]["block"] == [1, 4]
    assert cfg["layers"]["fc1"] == {"layout": "csr", "values": "codebook", "codebook_bits": 5,
                                    "codebook_per_row": False, "huffman": "auto"}
    assert cfg["layers"]["fc2"]["layout"] == "block_csr"
    assert cfg["weight_values"] == "mixed"


def test_dict_spec_default_and_presets(lenet300, x300):
    f = fmt.from_bytes(export_to_bytes(lenet300, x300[:1], weights={"fc2": "int8", "fc*": "f16"}))
    ts = weight_tensors(f)
    assert ts["fc1"].values == "f16" and ts["fc3"].values == "f16"
    assert ts["fc2"].values == "int8_channel"
    f = fmt.from_bytes(export_to_bytes(lenet300, x300[:1], weights={"fc2": {"values": "int4", "group_size": 32}}))
    ts = weight_tensors(f)
    assert ts["fc1"].values == "f32" and ts["fc3"].values == "f32"  # no "*": fp32
    assert ts["fc2"].values == "int4_group" and ts["fc2"].group_size == 32


def test_callable_spec(lenet300, x300):
    seen = []

    def spec(module, name):
        seen.append((type(module).__name__, name))
        if module.out_features >= 100:
            return {"layout": "csr_relative", "index_bits": 5, "values": "codebook",
                    "codebook_per_row": True, "huffman": True}
        return None  # fp32

    data = export_to_bytes(lenet300, x300[:1], weights=spec)
    assert seen == [("Linear", "fc1"), ("Linear", "fc2"), ("Linear", "fc3")]
    f = fmt.from_bytes(data)
    ts = weight_tensors(f)
    for name in ("fc1", "fc2"):
        t = ts[name]
        assert (t.layout, t.values, t.entropy) == ("csr_relative", "codebook", "huffman")
        assert t.streams[1].bits == 5  # col_idx gaps
        cb = next(s for s in t.streams if s.role == "codebook")
        assert cb.count == t.dims[0] * (1 << t.codebook_bits)  # one table per row
    assert (ts["fc3"].layout, ts["fc3"].values) == ("dense", "f32")
    check_exact(f, lenet300)
    check_runs(data, lenet300, x300)
    assert config(f)["weights"].startswith("callable ")


@pytest.mark.parametrize("form", ["bare", "star"])
def test_explicit_encoding_on_all_layers(lenet300, x300, form):
    enc = {"layout": "csr_relative", "values": "codebook", "huffman": True}
    data = export_to_bytes(lenet300, x300[:1], weights=enc if form == "bare" else {"*": enc})
    f = fmt.from_bytes(data)
    for name, t in weight_tensors(f).items():
        assert (t.layout, t.values, t.entropy) == ("csr_relative", "codebook", "huffman"), name
        for s in t.streams:
            if s.role in ("col_idx", "indices"):
                assert s.entropy == "huffman", (name, s.role)
        assert config(f)["layers"][name]["index_bits"] == 4
    check_exact(f, lenet300)
    eng = check_runs(data, lenet300, x300)
    assert all(k.startswith(SPARSE_PREFIXES) for n, k in kernels(eng).items() if n.startswith("fc"))


def test_lossy_codebook_rejected(lenet300, x300):
    with pytest.raises(ValueError, match=r"module 'fc2'.*32 distinct values.*codebook_bits 4"):
        export_to_bytes(lenet300, x300[:1], weights={"fc2": {"values": "codebook", "codebook_bits": 4,
                                                             "layout": "csr"}})


@pytest.mark.parametrize("weights, pattern", [
    ({"fc9": "fp32"}, r"key 'fc9' names no Conv2d / Linear"),
    ({"fc1": "int3"}, r"module 'fc1'.*unknown encoding 'int3'"),
    ({"fc1": {"values": "codebook", "bits": 4}}, r"module 'fc1'.*unknown encoding option\(s\) 'bits'"),
    ({"fc2": {"layout": "block_csr", "block": (1, 1)}}, r"module 'fc2'.*block"),
    ({"fc3": {"layout": "csr_relative", "index_bits": 9}}, r"module 'fc3'.*index_bits"),
    ({"*": {"values": "int4", "group_size": 48}}, r"module 'fc1'.*group_size"),
    ({"fc1": {"huffman": "yes"}}, r"module 'fc1'.*huffman"),
    ({"fc1": {"values": "int8", "int8_scale": "row"}}, r"module 'fc1'.*int8_scale"),
    ({"fc1": 3}, r"module 'fc1'.*preset string or a dict"),
    (lambda m, name: "int2" if name == "fc2" else "fp32", r"module 'fc2'.*int2"),
    (lambda m, name: 1 / 0, r"callable failed for module 'fc1'"),
    (42, r"weights=42"),
    ("auto8", r"weights='auto8'"),
])
def test_invalid_specs(lenet300, x300, weights, pattern):
    with pytest.raises(ValueError, match=pattern):
        export_to_bytes(lenet300, x300[:1], weights=weights)


def test_presets_unchanged(lenet300, x300):
    """The four presets write exactly what they wrote before weight specs existed."""
    from deepsqueeze.encode import encode_tensor

    for preset, kwargs in (("fp32", {"values": "f32"}), ("int4", {"values": "int4_group", "group_size": 64})):
        f = fmt.from_bytes(export_to_bytes(lenet300, x300[:1], weights=preset))
        t = weight_tensors(f)["fc1"]
        want = encode_tensor("fc1.weight", lenet300.fc1.weight.detach().numpy(), **kwargs)
        assert (t.layout, t.values, t.entropy) == ("dense", want.values, "none")
        assert [bytes(np.asarray(s.data)) for s in t.streams] == [bytes(np.asarray(s.data)) for s in want.streams]
        assert config(f)["weights"] == preset
