"""The PyTorch exporter (deepsqueeze.convert.export): graph structure and numerics.

The numerical tests run the exported file in the engine (`deepsqueeze.load(path).run`)
and compare with PyTorch, on the four reference models (deepsqueeze.convert.models),
with every weight encoding.

Error bounds
------------
f32 weights: max |y_engine - y_torch| <= 1e-4 * max |y_torch| (f32 re-association of the
accumulations only).

f16 / int8 / int4 weights: bounds derived, for each output element y_i, from the actual
quantization steps, by autograd through the (BN-folded) torch model. To first order the
output error is a sum over every rounded number (weights, and for integer encodings the
quantized conv/linear inputs):

    dy_i = sum_j (dy_i / dv_j) * delta_j,      |delta_j| <= h_j

- h_j for a weight: f16: 2^-11 |w_j| (round-to-nearest unit roundoff; + 2^-25 for
  subnormals); int8_channel / int4_group: scale / 2 of its row / group, with the scale
  read from the file itself (the scale actually stored, so the bound does not trust the
  encoder's arithmetic). The Jacobian is taken w.r.t. the folded weights, which are what
  the file stores, so BN folding, residual adds, pooling and the fused ReLU/ReLU6
  (derivative 0 or 1) are all "propagated through the layers" exactly.
- h_j for an activation (integer encodings only): the engine quantizes the input of every
  conv/linear to u8 per tensor, with step s = (hi - lo) / 255, lo = min(min(a), 0),
  hi = max(max(a), 0) over the call (dynamic), or the calibrated `input_quant` scale
  (static); rounding to the nearest level errs by at most s / 2 per element.

Two bounds follow, and the test checks both per output element:

1. worst case (triangle inequality): W_i = sum_j |dy_i/dv_j| h_j. Rigorous to first
   order, but it assumes every rounding error pushes the same way, so it is very loose
   (0.7-1.8 x max|y| for int8 on the LeNets, far above max|y| on the deep nets): checked,
   but it is no real test.
2. statistical (Hoeffding): rounding errors of different numbers are modelled as
   independent and zero-mean (the standard model of round-to-nearest), so
   P(|dy_i| > t) <= 2 exp(-t^2 / (2 sum_j (|dy_i/dv_j| h_j)^2)); with P = 1e-9 per output,
   S_i = sqrt(2 ln(2e9) sum_j (|dy_i/dv_j| h_j)^2) ~= 6.5 sqrt(sum_j (...)^2).

Both are first order: products of two errors and ReLU/ReLU6/max-pool kinks crossed by
the perturbation are left out. Calibration of the bound: a float64 interpreter of the
graph that quantizes exactly as FORMAT.md describes (second-order effects included)
gives errors of 0.05-0.26 x S_i on every model and encoding, so S_i (SAFETY = 1, plus the
f32 slack 1e-4 max|y|) leaves a margin of 4x or more for a correct engine.

What the bound is worth, honestly: S_i relative to max|y| is about 2e-3 (LeNets, f16),
8e-3 (ResNet f16), 5e-2 (MobileNet f16), 6-7e-2 (LeNets int8), 0.23 (ResNet int8),
0.55-0.65 (LeNets int4), 1.9 (ResNet int4), 2 (MobileNet int8) and 11 (MobileNet int4).
These random networks with measured BatchNorm statistics are sensitive (they amplify
perturbations through depth; the interpreter's own int8 MobileNet error is 27% of max|y|),
so the int8 MobileNet and int4 ResNet/MobileNet checks only catch gross errors; the f32
checks (1e-4) carry the semantics on every model. Mutations of the reference (zero point
dropped, weight scale x1.25 in one layer, relu6 computed as relu) are caught by the
LeNet/ResNet int8 checks, the f32 checks, and the spellings test respectively.
"""
from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import deepsqueeze  # noqa: E402
from deepsqueeze import format as fmt  # noqa: E402
from deepsqueeze.convert import (UnsupportedOperationError, export, export_to_bytes,  # noqa: E402
                                 models)
from deepsqueeze.encode import decode_tensor  # noqa: E402

MODELS = {
    # name: (constructor, input shape without batch)
    "lenet_300_100": (models.lenet_300_100, (1, 28, 28)),
    "lenet5": (models.lenet5, (1, 28, 28)),
    "resnet_cifar": (models.resnet_cifar, (3, 32, 32)),
    "mobilenet_v2_cifar": (models.mobilenet_v2_cifar, (3, 32, 32)),
}
ENCODINGS = ["fp32", "f16", "int8", "int4"]
VALUES_OF = {"fp32": "f32", "f16": "f16", "int8": "int8_channel", "int4": "int4_group"}
BATCH = 4
F32_REL = 1e-4
SAFETY = 1.0


def make_model(name: str, seed: int = 1) -> nn.Module:
    """The reference model with random BatchNorm parameters and statistics (measured on
    random data, then perturbed: folding is tested and the signal stays alive)."""
    ctor, _ = MODELS[name]
    return models.randomize_batchnorm(ctor(seed=seed), seed=seed + 100,
                                      data=make_input(name, 32, seed=99))


def make_input(name: str, n: int = BATCH, seed: int = 7) -> torch.Tensor:
    _, shape = MODELS[name]
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n,) + shape, generator=g)


def ops_of(f: fmt.DsqFile):
    return [n.op for n in f.graph.nodes]


def load_engine():
    load = getattr(deepsqueeze, "load", None)
    if load is None or getattr(deepsqueeze, "_core", None) is None:
        pytest.skip("the engine (deepsqueeze.load / _core) is not built in this tree")
    return load


def run_engine(path, x: torch.Tensor) -> np.ndarray:
    m = load_engine()(str(path))
    y = m.run(np.ascontiguousarray(x.numpy(), dtype=np.float32))
    if isinstance(y, (list, tuple)):
        y = y[0]
    return np.asarray(y, dtype=np.float64)


def torch_out(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).double().numpy()


# ---------------------------------------------------------------------------------------
# the first-order bound (see the module docstring)


def _half_steps(t: fmt.Tensor) -> np.ndarray:
    """Per element: the largest rounding error of the stored weight (float64, dims)."""
    w = decode_tensor(t).astype(np.float64)
    if t.values == "f32":
        return np.abs(w) * 2.0 ** -24
    if t.values == "f16":
        return np.abs(w) * 2.0 ** -11 + 2.0 ** -25
    scales = next(s for s in t.streams if s.role == "scales")
    sc = np.frombuffer(np.asarray(scales.data).tobytes(), dtype="<f4").astype(np.float64)
    rows = t.dims[0]
    cols = int(np.prod(t.dims)) // rows
    if t.values == "int8_channel":
        per = np.repeat(sc.reshape(rows, 1), cols, axis=1)
    else:
        gs = t.group_size
        ng = -(-cols // gs)
        per = np.repeat(sc.reshape(rows, ng), gs, axis=1)[:, :cols]
    return (per / 2.0).reshape(t.dims)


HOEFFDING_P = 1e-9  # per output element: the chance the statistical bound is exceeded


def error_bounds(model: nn.Module, x: torch.Tensor, f: fmt.DsqFile):
    """Per output element (N, K) of the encoded model: (worst-case first-order bound,
    statistical (Hoeffding) first-order bound). See the module docstring."""
    from torch.fx.experimental.optimization import fuse

    fused = fuse(copy.deepcopy(model).eval())
    weight_err = {}  # module name -> (module, half steps of its weight)
    steps = {}  # module name -> activation quantization step of its input
    integer = False
    for node in f.graph.nodes:
        if node.op not in ("conv2d", "linear"):
            continue
        t = f.tensors[node.weights[0]]
        name = t.name[: -len(".weight")]
        weight_err[name] = (fused.get_submodule(name), torch.from_numpy(_half_steps(t)).float())
        if t.values in ("int8_channel", "int4_group"):
            integer = True
            if "input_quant" in node.attrs:
                steps[name] = float(node.attrs["input_quant"][0])

    def run(x, hook):
        hooks = [mod.register_forward_pre_hook(lambda m, i, n=n: hook(n, i[0]))
                 for n, (mod, _) in weight_err.items()] if integer else []
        try:
            return fused(x)
        finally:
            for h in hooks:
                h.remove()

    def record_range(name, a):  # dynamic quantization: the range over the whole call
        if name not in steps:
            lo, hi = min(float(a.min()), 0.0), max(float(a.max()), 0.0)
            steps[name] = (hi - lo) / 255.0 if hi != lo else 1.0

    with torch.no_grad():
        shape = tuple(run(x, record_range).shape)
    worst = np.zeros(shape)
    squares = np.zeros(shape)
    mods = list(weight_err)
    # samples are independent in eval mode: one sample at a time, and one batched
    # backward (vmap over the outputs) gives every output's gradient at once
    names = list(weight_err)
    params = [mod.weight for mod, _ in weight_err.values()]
    for b in range(shape[0]):
        acts = {}

        def keep(name, a):
            acts[name] = a

        y = run(x[b:b + 1].clone().requires_grad_(True), keep)
        outs = y.reshape(-1)
        act_names = list(acts)
        grads = torch.autograd.grad(outs, params + [acts[n] for n in act_names],
                                    grad_outputs=torch.eye(outs.numel()), is_grads_batched=True,
                                    allow_unused=True)
        w_grads, a_grads = grads[:len(params)], grads[len(params):]
        flat = lambda g: g.abs().double().reshape(g.shape[0], -1)  # noqa: E731
        w_sum = np.zeros(outs.numel())
        w_sq = np.zeros(outs.numel())
        for name, g in zip(names, w_grads):
            if g is None:
                continue
            e = weight_err[name][1].double().reshape(1, -1)
            ge = flat(g) * e
            w_sum += ge.sum(1).numpy()
            w_sq += (ge * ge).sum(1).numpy()
        for name, g in zip(act_names, a_grads):
            if g is None:
                continue
            h = steps[name] / 2.0
            ga = flat(g)
            w_sum += ga.sum(1).numpy() * h
            w_sq += (ga * ga).sum(1).numpy() * h * h
        worst[b] += w_sum.reshape(shape[1:])
        squares[b] += w_sq.reshape(shape[1:])
    # Hoeffding: a sum of independent zero-mean terms X_j in [-c_j, c_j] exceeds t with
    # probability <= 2 exp(-t^2 / (2 sum c_j^2)); solve for probability HOEFFDING_P.
    stat = np.sqrt(2.0 * np.log(2.0 / HOEFFDING_P) * squares)
    return worst, stat


def check_close(y_engine, y_torch, bounds=None, what=""):
    """f32 (bounds None): relative error <= F32_REL. Otherwise every output element within
    SAFETY x its statistical first-order bound (+ f32 slack), and within SAFETY x its
    worst-case first-order bound (+ the same slack)."""
    assert y_engine.shape == y_torch.shape, (y_engine.shape, y_torch.shape)
    scale = float(np.abs(y_torch).max())
    err = np.abs(y_engine - y_torch)
    rel = float(err.max()) / scale
    if bounds is None:
        assert rel <= F32_REL, f"{what}: max relative error {rel:.3e} > {F32_REL}"
        return
    worst, stat = bounds
    slack = F32_REL * scale
    for bound, kind in ((stat, "statistical"), (worst, "worst-case")):
        allowed = SAFETY * bound + slack
        at = np.unravel_index(np.argmax(err / allowed), err.shape)
        assert np.all(err <= allowed), (
            f"{what}: error {err[at]:.3e} at {at} exceeds {SAFETY} x the {kind} first-order "
            f"bound {bound[at]:.3e} + {slack:.1e} (max relative error {rel:.3e}, "
            f"{kind} bound relative to max|y|: {float(bound.max()) / scale:.3e})")


# ---------------------------------------------------------------------------------------
# reference models


def test_models_are_deterministic_and_sized():
    for name, (ctor, shape) in MODELS.items():
        a, b = ctor(seed=3), ctor(seed=3)
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb), f"{name}: {ka} differs for the same seed"
        c = ctor(seed=4)
        assert not torch.equal(next(iter(a.parameters())), next(iter(c.parameters())))
        y = torch_out(a, make_input(name, 2))
        assert y.shape == (2, 10)
    assert 300_000 <= models.count_parameters(models.resnet_cifar()) <= 500_000
    assert models.count_parameters(models.lenet_300_100()) == 784 * 300 + 300 + 300 * 100 + 100 + 1010


@pytest.mark.parametrize("name", list(MODELS))
def test_test_models_are_input_sensitive(name):
    """Guards the numerical tests: a random deep network whose output hardly depends on
    its input (vanishing signal) would hide wrong conv semantics behind its biases."""
    model = make_model(name)
    x = make_input(name, 16)
    y = torch_out(model, x)
    spread = np.abs(y - y.mean(axis=0)).max()
    assert spread >= 0.2 * np.abs(y).max(), f"{name}: output barely depends on the input"


def test_model_construction_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    models.resnet_cifar(seed=9)
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------------------------------
# structure


@pytest.mark.parametrize("name", list(MODELS))
def test_export_structure(tmp_path, name):
    model = make_model(name)
    path = tmp_path / f"{name}.dsq"
    f = export(model, make_input(name, 1), path)
    r = fmt.read(path)
    ops = ops_of(r)
    assert ops == ops_of(f)
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert ops.count("conv2d") == n_conv
    assert ops.count("linear") == n_linear
    assert "batch_norm" not in ops, "every BatchNorm here follows a conv: all must fold"
    # every ReLU / ReLU6 of these models follows a conv, linear or add: all fused
    assert "relu" not in ops and "relu6" not in ops
    gi = r.graph.inputs
    assert len(gi) == 1 and gi[0].dims == (-1,) + MODELS[name][1]
    assert len(r.graph.outputs) == 1 and r.graph.values[r.graph.outputs[0]] == "output"
    tensors = {t.name: t for t in r.tensors}
    for n in r.graph.nodes:
        if n.op in ("conv2d", "linear"):
            assert r.tensors[n.weights[0]].values == "f32"
            if len(n.weights) > 1 and n.weights[1] is not None:
                assert r.tensors[n.weights[1]].values == "f32"
    acts = [n.attrs.get("activation", [0])[0] for n in r.graph.nodes]
    cfg = json.loads(r.metadata["dsq.export_config"])
    assert cfg["bn_folded"] == n_bn

    if name == "lenet_300_100":
        assert ops == ["reshape", "linear", "linear", "linear"]
        assert r.graph.nodes[0].attrs["shape"] == [0, -1]  # x.view(x.size(0), -1)
        assert acts == [0, 1, 1, 0]
    elif name == "lenet5":
        assert ops == ["conv2d", "max_pool2d", "conv2d", "max_pool2d", "flatten", "linear", "linear"]
        assert acts == [0, 0, 0, 0, 0, 1, 0]  # Caffe LeNet: ReLU only after fc1
        pool = r.graph.nodes[1]
        assert pool.attrs["kernel"] == [2, 2] and pool.attrs["stride"] == [2, 2]
        assert r.graph.nodes[4].attrs["start_dim"] == [1]
    elif name == "resnet_cifar":
        assert ops.count("add") == 10 and ops.count("global_avg_pool2d") == 1
        adds = [n for n in r.graph.nodes if n.op == "add"]
        assert all(n.attrs["activation"] == [1] for n in adds)  # F.relu(out += x) fused
        # convs had bias=False: the folded BatchNorm created a bias
        convs = [n for n in r.graph.nodes if n.op == "conv2d"]
        assert all(len(n.weights) == 2 and n.weights[1] is not None for n in convs)
        assert sum(1 for n in convs if n.attrs.get("activation") == [1]) == 11
        shortcut = [n for n in convs if r.tensors[n.weights[0]].dims[2:] == (1, 1)]
        assert len(shortcut) == 2 and all(n.attrs["stride"] == [2, 2] for n in shortcut)
        assert "layer1.0.conv1.weight" in tensors and "layer1.0.bn1.weight" not in tensors
    elif name == "mobilenet_v2_cifar":
        convs = [n for n in r.graph.nodes if n.op == "conv2d"]
        dw = [n for n in convs if n.attrs.get("groups", [1])[0] > 1]
        assert len(dw) == sum(1 for m in model.modules()
                              if isinstance(m, nn.Conv2d) and m.groups > 1)
        for n in dw:
            w = r.tensors[n.weights[0]]
            assert w.dims[1] == 1 and n.attrs["groups"] == [w.dims[0]]
        # relu6 after expand and depthwise (and stem, head): activation code 2
        assert sum(1 for n in convs if n.attrs.get("activation") == [2]) == 27
        n_res = sum(1 for m in model.modules()
                    if isinstance(m, models.InvertedResidual) and m.use_residual)
        assert n_res == 7 and ops.count("add") == n_res  # stride 1, same channels
        assert ops[-3:] == ["global_avg_pool2d", "flatten", "linear"]  # dropout dropped


@pytest.mark.parametrize("name", ["resnet_cifar", "mobilenet_v2_cifar"])
def test_batchnorm_folding_values(tmp_path, name):
    """The stored conv weight/bias are the conv followed by its BatchNorm."""
    model = make_model(name)
    f = export(model, make_input(name, 1), tmp_path / "m.dsq")
    tensors = {t.name: t for t in f.tensors}
    mods = dict(model.named_modules())
    checked = 0
    for mname, m in mods.items():
        if not isinstance(m, nn.Conv2d):
            continue
        parent, _, leaf = mname.rpartition(".")
        # the BatchNorm that follows the conv in these models
        seq = mods[parent] if parent else model
        names = [k for k, _ in seq.named_children()]
        bn = None
        if isinstance(seq, nn.Sequential):
            nxt = seq[names.index(leaf) + 1]
            bn = nxt if isinstance(nxt, nn.BatchNorm2d) else None
        else:
            bn = getattr(seq, leaf.replace("conv", "bn"), None)
        assert bn is not None, mname
        s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double()
        w_ref = m.weight.detach().double() * s.reshape(-1, 1, 1, 1)
        b_ref = (-bn.running_mean.double() * s + bn.bias.double()).detach()
        w = decode_tensor(tensors[mname + ".weight"])
        b = decode_tensor(tensors[mname + ".bias"])
        np.testing.assert_allclose(w, w_ref.numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(b, b_ref.numpy(), rtol=1e-6, atol=1e-7)
        checked += 1
    assert checked == sum(isinstance(m, nn.Conv2d) for m in model.modules())


@pytest.mark.parametrize("weights", ["f16", "int8", "int4"])
def test_weight_encodings_in_file(tmp_path, weights):
    model = make_model("resnet_cifar")
    f = export(model, make_input("resnet_cifar", 1), tmp_path / "m.dsq", weights=weights,
               group_size=32)
    r = fmt.read(tmp_path / "m.dsq")
    for n in r.graph.nodes:
        if n.op in ("conv2d", "linear"):
            w = r.tensors[n.weights[0]]
            assert w.values == VALUES_OF[weights]
            if weights == "int4":
                assert w.group_size == 32
            assert r.tensors[n.weights[1]].values == "f32"  # biases stay f32
    cfg = json.loads(f.metadata["dsq.export_config"])
    assert cfg["weights"] == weights and cfg["group_size"] == 32


def test_metadata(tmp_path):
    f = export(make_model("lenet5"), make_input("lenet5", 1), tmp_path / "m.dsq", weights="int8")
    meta = fmt.read(tmp_path / "m.dsq").metadata
    assert meta == f.metadata
    assert meta["dsq.producer"] == "deepsqueeze.convert 0.1.0"
    assert meta["dsq.source_model"] == "LeNet5"
    cfg = json.loads(meta["dsq.export_config"])
    assert cfg["weights"] == "int8"
    assert cfg["group_size"] == 64
    assert cfg["calibrated"] is False and cfg["calibration_batches"] == 0
    assert cfg["dynamic_batch"] is True


def test_export_to_bytes_and_names(tmp_path):
    model = make_model("lenet_300_100")
    x = make_input("lenet_300_100", 2)
    path = tmp_path / "m.dsq"
    export(model, x, path, input_names=["image"], output_names=["logits"], dynamic_batch=False)
    data = export_to_bytes(model, x, input_names=["image"], output_names=["logits"],
                           dynamic_batch=False)
    assert data == path.read_bytes()
    r = fmt.from_bytes(data)
    assert r.graph.inputs[0].dims == (2, 1, 28, 28)  # dynamic_batch=False keeps the batch
    assert r.graph.values[r.graph.inputs[0].value] == "image"
    assert r.graph.values[r.graph.outputs[0]] == "logits"


def test_export_restores_training_mode(tmp_path):
    model = make_model("resnet_cifar").train()
    model.layer1.eval()
    export(model, make_input("resnet_cifar", 1), tmp_path / "m.dsq")
    assert model.training and model.layer2.training and not model.layer1.training


# ---------------------------------------------------------------------------------------
# calibration


def test_calibration_writes_input_quant(tmp_path):
    model = make_model("lenet5")
    batches = [make_input("lenet5", 3, seed=s) for s in range(3)]
    f = export(model, batches[0][:1], tmp_path / "m.dsq", weights="int8", calibration=batches)
    # expected ranges, recorded independently
    ranges = {}
    hooks = [m.register_forward_pre_hook(
        lambda mod, inp, n=n: ranges.setdefault(n, []).append(
            (float(inp[0].min()), float(inp[0].max()))))
        for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in hooks:
        h.remove()
    r = fmt.read(tmp_path / "m.dsq")
    seen = 0
    for n in r.graph.nodes:
        if n.op not in ("conv2d", "linear"):
            assert "input_quant" not in n.attrs
            continue
        name = r.tensors[n.weights[0]].name[: -len(".weight")]
        lo = min(min(a for a, _ in ranges[name]), 0.0)
        hi = max(max(b for _, b in ranges[name]), 0.0)
        scale = (hi - lo) / 255.0
        zero = float(np.clip(np.round(-lo / scale), 0, 255))
        got = n.attrs["input_quant"]
        assert got[0] == pytest.approx(scale, rel=1e-6)
        assert got[1] == zero
        seen += 1
    assert seen == 4
    # conv1 sees the raw (signed) input: the zero point is inside (0, 255)
    assert 0 < r.graph.nodes[0].attrs["input_quant"][1] < 255
    # fc2 sees a ReLU output: lo = 0, zero point 0
    assert r.graph.nodes[-1].attrs["input_quant"][1] == 0.0
    cfg = json.loads(f.metadata["dsq.export_config"])
    assert cfg["calibrated"] is True and cfg["calibration_batches"] == 3


def test_calibration_ignored_for_float_weights(tmp_path):
    model = make_model("lenet5")
    with pytest.warns(UserWarning, match="calibration is ignored"):
        f = export(model, make_input("lenet5", 1), tmp_path / "m.dsq", weights="fp32",
                   calibration=[make_input("lenet5", 2)])
    assert all("input_quant" not in n.attrs for n in f.graph.nodes)
    assert json.loads(f.metadata["dsq.export_config"])["calibrated"] is False


def test_calibration_needs_batches(tmp_path):
    with pytest.raises(ValueError, match="no batches"):
        export(make_model("lenet5"), make_input("lenet5", 1), tmp_path / "m.dsq",
               weights="int8", calibration=[])


# ---------------------------------------------------------------------------------------
# errors


class SinNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return torch.sin(self.fc(x))


class Wrapper(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.body = inner

    def forward(self, x):
        return self.body(x)


def test_unsupported_function_message(tmp_path):
    with pytest.raises(UnsupportedOperationError) as info:
        export(Wrapper(SinNet()), torch.randn(2, 8), tmp_path / "m.dsq")
    e = info.value
    assert isinstance(e, ValueError)
    msg = str(e)
    assert "torch.sin" in msg
    assert "'body_sin'" in msg or "'sin'" in msg  # the fx node
    assert "body" in msg and "SinNet" in msg  # the module path it is in
    assert "test_export.py" in msg  # the source line
    assert e.target == "function torch.sin"
    assert not (tmp_path / "m.dsq").exists()


def test_unsupported_module_message(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.Flatten(2), nn.Conv1d(4, 4, 1)))
    with pytest.raises(UnsupportedOperationError, match=r"nn\.Conv1d.*'1\.1'"):
        export(model, torch.randn(1, 3, 8, 8), tmp_path / "m.dsq")


def test_first_unsupported_is_named(tmp_path):
    class Two(nn.Module):
        def forward(self, x):
            return torch.cos(torch.tanh(x))

    with pytest.raises(UnsupportedOperationError, match="torch.tanh") as info:
        export(Two(), torch.randn(2, 3), tmp_path / "m.dsq")
    assert info.value.target == "function torch.tanh" and info.value.node == "tanh"


@pytest.mark.parametrize("kwargs, pattern", [
    ({"padding": "same"}, "padding='same'"),
    ({"padding": 1, "padding_mode": "reflect"}, "padding_mode='reflect'"),
])
def test_conv_padding_rejected(tmp_path, kwargs, pattern):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, **kwargs))
    with pytest.raises(UnsupportedOperationError, match=pattern) as info:
        export(model, torch.randn(1, 3, 8, 8), tmp_path / "m.dsq")
    assert "'0'" in str(info.value)  # the module path


def test_conv_padding_valid_accepted(tmp_path):
    f = export(nn.Sequential(nn.Conv2d(3, 4, 3, padding="valid")), torch.randn(1, 3, 8, 8),
               tmp_path / "m.dsq")
    assert f.graph.nodes[0].attrs["padding"] == [0, 0]


def test_bad_arguments(tmp_path):
    model = make_model("lenet_300_100")
    x = make_input("lenet_300_100", 1)
    with pytest.raises(ValueError, match="weights="):
        export(model, x, tmp_path / "m.dsq", weights="int3")
    with pytest.raises(ValueError, match="group_size"):
        export(model, x, tmp_path / "m.dsq", weights="int4", group_size=48)
    with pytest.raises(ValueError, match="example inputs"):
        export(model, (x, x), tmp_path / "m.dsq")


def test_batch_dependent_view_rejected(tmp_path):
    class V(nn.Module):
        def forward(self, x):
            return x.view(-1, x.size(0))

    with pytest.raises(UnsupportedOperationError, match="batch size"):
        export(V(), torch.randn(2, 2), tmp_path / "m.dsq")


def test_inplace_reuse_rejected(tmp_path):
    class P(nn.Module):
        def forward(self, x):
            y = x * x
            y.relu_()
            return y + x

    with pytest.raises(UnsupportedOperationError, match="in place"):
        export(P(), torch.randn(2, 3), tmp_path / "m.dsq")


def test_constant_operand_rejected(tmp_path):
    class C(nn.Module):
        def forward(self, x):
            return x * 2.0

    with pytest.raises(UnsupportedOperationError, match="constant"):
        export(C(), torch.randn(2, 3), tmp_path / "m.dsq")


# ---------------------------------------------------------------------------------------
# the other spellings of the supported ops


class Spellings(nn.Module):
    """Every supported spelling once; the output depends on all of them."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=(1, 1))
        self.c2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.c3 = nn.Conv2d(8, 8, 1, stride=1)
        self.c4 = nn.Conv2d(16, 8, (3, 1), stride=(2, 1), padding=(1, 0))
        self.bn = nn.BatchNorm2d(8)
        self.hs = nn.Hardswish()
        self.sig = nn.Sigmoid()
        self.mp = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.ap = nn.AvgPool2d(2, count_include_pad=False)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fl = nn.Flatten()
        self.fc = nn.Linear(8, 16)
        self.bn1 = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 6)
        self.sm = nn.Softmax(dim=1)
        self.drop = nn.Dropout(0.5)
        self.id = nn.Identity()

    def forward(self, x):
        a = F.relu6(self.c1(x))                                  # functional relu6: fused
        b = F.hardtanh(self.c2(a), 0.0, 6.0)                     # hardtanh(0, 6): fused
        c = torch.clamp(self.c3(b), 0, 6)                        # clamp(0, 6): fused
        d = torch.relu(torch.add(a, c))                          # torch.add + torch.relu: fused
        e = torch.cat([d, b], dim=1)
        f = self.c4(e)
        g = self.bn(f + f)                                       # standalone batch_norm
        h = self.hs(g) * self.sig(g)
        h = self.id(self.mp(h))
        h = self.ap(h)
        h = self.drop(self.gap(h))
        h = self.fl(h)
        h = self.bn1(self.fc(h)).relu()                          # linear + BN1d fold + relu
        h = self.fc2(h)
        return F.softmax(h, dim=-1), self.sm(h).view(h.size(0), 2, 3)


def test_spellings_structure(tmp_path):
    model = models.randomize_batchnorm(Spellings().eval(), 5)
    f = export(model, torch.randn(1, 3, 16, 16), tmp_path / "m.dsq")
    nodes = f.graph.nodes
    ops = ops_of(f)
    assert ops == ["conv2d", "conv2d", "conv2d", "add", "concat", "conv2d", "add", "batch_norm",
                   "hardswish", "sigmoid", "mul", "max_pool2d", "avg_pool2d",
                   "global_avg_pool2d", "flatten", "linear", "linear", "softmax", "softmax",
                   "reshape"]
    by = {n.name: n for n in nodes}
    assert by["c1"].attrs["activation"] == [2]
    assert by["c2"].attrs["activation"] == [2] and by["c2"].attrs["groups"] == [8]
    assert by["c2"].attrs["dilation"] == [2, 2] and by["c2"].attrs["padding"] == [2, 2]
    assert by["c3"].attrs["activation"] == [2]
    assert nodes[3].attrs["activation"] == [1]
    assert nodes[4].attrs["axis"] == [1]
    assert by["c4"].attrs["stride"] == [2, 1] and by["c4"].attrs["padding"] == [1, 0]
    assert "activation" not in by["c4"].attrs
    bn = nodes[7]
    assert bn.attrs["eps"] == [pytest.approx(1e-5)] and len(bn.weights) == 4
    assert by["mp"].attrs == {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1],
                              "dilation": [1, 1], "ceil_mode": [1]}
    assert by["ap"].attrs["count_include_pad"] == [0]
    assert by["fc"].attrs["activation"] == [1]  # BN1d folded, then .relu() fused
    assert nodes[17].attrs["axis"] == [-1] and nodes[18].attrs["axis"] == [1]
    assert nodes[19].attrs["shape"] == [0, 2, 3]
    assert len(f.graph.outputs) == 2


def test_spellings_engine(tmp_path):
    model = models.randomize_batchnorm(Spellings().eval(), 5)
    path = tmp_path / "m.dsq"
    export(model, torch.randn(1, 3, 16, 16), path)
    x = 8.0 * torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():  # the fused ReLU6 really clips on both sides with this input
        pre = model.c1(x)
    assert (pre > 6).float().mean() > 0.01 and (pre < 0).float().mean() > 0.01
    m = load_engine()(str(path))
    ys = m.run(np.ascontiguousarray(x.numpy()))
    with torch.no_grad():
        refs = model(x)
    assert len(ys) == 2
    for y, ref in zip(ys, refs):
        check_close(np.asarray(y, np.float64), ref.double().numpy(), what="spellings")


# ---------------------------------------------------------------------------------------
# numerics in the engine


@pytest.mark.parametrize("weights", ENCODINGS)
@pytest.mark.parametrize("name", list(MODELS))
def test_engine_matches_torch(tmp_path, name, weights):
    load_engine()
    model = make_model(name)
    x = make_input(name, BATCH)
    path = tmp_path / f"{name}_{weights}.dsq"
    f = export(model, x[:1], path, weights=weights)
    y = run_engine(path, x)
    ref = torch_out(model, x)
    bounds = None if weights == "fp32" else error_bounds(model, x, f)
    check_close(y, ref, bounds, f"{name} {weights}")


@pytest.mark.parametrize("weights", ["int8", "int4"])
@pytest.mark.parametrize("name", ["lenet5", "resnet_cifar", "mobilenet_v2_cifar"])
def test_engine_calibrated(tmp_path, name, weights):
    """Static input quantization: the test batch is among the calibration batches, so no
    activation is clipped and the bound uses the calibrated scales. MobileNetV2's int8
    depthwise convs run the int8 depthwise kernels (dwconv_qu8)."""
    load_engine()
    model = make_model(name)
    x = make_input(name, BATCH)
    calib = [x, make_input(name, BATCH, seed=11)]
    path = tmp_path / "m.dsq"
    f = export(model, x[:1], path, weights=weights, calibration=calib)
    y = run_engine(path, x)
    check_close(y, torch_out(model, x), error_bounds(model, x, f), f"{name} {weights} calibrated")
    if name == "mobilenet_v2_cifar" and weights == "int8":
        kernels = [L["kernel"] for L in deepsqueeze.load(str(path)).layers() if L["op"] == "conv2d"]
        assert sum(k.startswith("dwconv_qu8") for k in kernels) >= 1, kernels


def test_engine_dynamic_batch(tmp_path):
    load_engine()
    model = make_model("resnet_cifar")
    path = tmp_path / "m.dsq"
    export(model, make_input("resnet_cifar", 1), path)
    for n in (1, 5):
        x = make_input("resnet_cifar", n, seed=n)
        check_close(run_engine(path, x), torch_out(model, x), None, f"batch {n}")
