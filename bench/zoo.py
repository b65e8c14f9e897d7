"""The benchmark model zoo: four networks, each in several deepsqueeze encodings and as
the peers run it (PyTorch eager f32 / int8, ONNX Runtime f32 / int8).

The compressed variants are made here with deliberately simple, self-contained steps
(the compression toolkit is not a dependency of the benchmarks):

- csrNN: per-layer magnitude pruning of every conv/linear weight (grouped convs stay
  dense) to NN% zeros; LeNets are then fine-tuned one epoch on MNIST with the mask held;
  exported with weights="auto" (CSR when sparse enough, exact values);
- dc (Deep Compression style): BatchNorm folded into the convs (torch.fx fuse), pruned
  as above (90% for the LeNets, 70% for the conv nets), then the nonzeros of each weight rounded to 2^b shared values by 1-D k-means
  (b = 5 for linear, 8 for conv), exported with "auto" (CSR + codebook + Huffman);
- lowrank_int8: every Linear with min(out, in) >= 32 replaced by two SVD factors of rank
  min(out, in) // 4, exported int8.

LeNets are trained on MNIST (1 epoch, a few seconds) so their accuracy is real; the CIFAR
nets have no data set here: random weights, BatchNorm statistics from random inputs,
accuracy "n/a". Models and files are built once per session and cached in memory and in
DSQ_BENCH_CACHE (default: <tmp>/deepsqueeze-bench).
"""
from __future__ import annotations

import copy
import os
import tempfile
import warnings
from pathlib import Path
from typing import Dict, Optional

import numpy as np

MODELS = ("lenet_300_100", "lenet5", "resnet_cifar", "mobilenet_v2_cifar")
INPUT_SHAPE = {"lenet_300_100": (1, 28, 28), "lenet5": (1, 28, 28),
               "resnet_cifar": (3, 32, 32), "mobilenet_v2_cifar": (3, 32, 32)}
HAS_DATA = {"lenet_300_100": True, "lenet5": True, "resnet_cifar": False, "mobilenet_v2_cifar": False}
OUR_ENCODINGS = ("f32", "int8", "int4", "csr70", "csr90", "csr95", "dc", "dc_int8", "lowrank_int8")
# dc_int8: Deep Compression (pruning, k-means weight sharing, Huffman coding) with the
# shared values stored as int8 codes, one scale per layer (recipes' values="int8_shared"),
# and calibrated static u8 activations, so every layer runs the sparse int8 kernels;
# 2^DC_INT8_CONV_BITS shared values per conv, 2^DC_INT8_FC_BITS per linear layer; pruned in
# blocks of 4 input channels (DC_INT8_BLOCK) wherever the input width allows, so those
# kernels run whole quads.
SPARSITY = {"f32": 0.0, "int8": 0.0, "int4": 0.0, "csr70": 0.7, "csr90": 0.9, "csr95": 0.95,
            "lowrank_int8": 0.0}
PEERS = ("torch:f32", "torch:int8", "ort:f32", "ort:int8_dynamic", "ort:int8_static")
ACCURACY_SAMPLES = 2000

CACHE_DIR = Path(os.environ.get("DSQ_BENCH_CACHE", Path(tempfile.gettempdir()) / "deepsqueeze-bench"))


DC_INT8_BLOCK = 4
DC_INT8_CONV_BITS, DC_INT8_FC_BITS = 4, 5


def dc_sparsity(name: str) -> float:
    return 0.9 if name.startswith("lenet") else 0.7


def _torch():
    import torch

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")
    return torch


# ------------------------------------------------------------------ data
_MNIST = {}


def mnist():
    if "l" not in _MNIST:
        from deepsqueeze.convert.data import mnist_loaders

        _MNIST["l"] = mnist_loaders(batch_size=128, limit_test=ACCURACY_SAMPLES)
    return _MNIST["l"]


def test_arrays(name: str):
    """(x, labels) for accuracy, or None when the model has no data set here."""
    if not HAS_DATA[name]:
        return None
    x, y = mnist().test_arrays
    return np.ascontiguousarray(x[:ACCURACY_SAMPLES], dtype=np.float32), np.asarray(y[:ACCURACY_SAMPLES])


def calibration(name: str, n: int = 64) -> np.ndarray:
    if HAS_DATA[name]:
        x = mnist().train.dataset.tensors[0][:n].numpy()
        return np.ascontiguousarray(x, dtype=np.float32)
    rng = np.random.default_rng(5)
    return rng.standard_normal((n,) + INPUT_SHAPE[name]).astype(np.float32)


def bench_input(name: str, batch: int) -> np.ndarray:
    if HAS_DATA[name]:
        x, _ = test_arrays(name)
        return np.ascontiguousarray(x[:batch])
    rng = np.random.default_rng(11)
    return rng.standard_normal((batch,) + INPUT_SHAPE[name]).astype(np.float32)


# ------------------------------------------------------------------ torch models
def _weight_modules(net):
    torch = _torch()
    for mname, mod in net.named_modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            if isinstance(mod, torch.nn.Conv2d) and mod.groups > 1:
                continue  # depthwise: the sparse kernels take groups == 1 only
            yield mname, mod


FINETUNE_STEPS = 150  # optimizer steps of the masked fine-tune after pruning (batch 128)


def _train(net, epochs: float, masks=None, max_steps=None):
    from deepsqueeze.convert.core import TrainConfig, fit

    def hold_masks(model):
        if masks:
            with _torch().no_grad():
                for mod, mask in masks:
                    mod.weight.mul_(mask)

    torch = _torch()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small net: more threads only spin on a shared machine
    net.train()
    try:
        fit(net, mnist().train, TrainConfig(epochs=epochs, lr=1e-3, progress=False, max_steps=max_steps),
            after_step=hold_masks)
    finally:
        torch.set_num_threads(threads)
    return net.eval()


def _cached_state(key: str, build):
    torch = _torch()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / f"{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    state = build()
    torch.save(state, path)
    return state


_BASE: Dict[str, object] = {}


def base_model(name: str):
    """The f32 network: trained LeNets (MNIST), random CIFAR nets with measured BN stats.
    Built once per session; callers that change it take a copy."""
    if name not in _BASE:
        _BASE[name] = _build_base(name)
    return _BASE[name]


def _build_base(name: str):
    torch = _torch()
    from deepsqueeze.convert import models

    net = getattr(models, name)(seed=0).eval()
    if HAS_DATA[name]:
        net.load_state_dict(_cached_state(f"{name}_trained", lambda: _train(net, 1.0).state_dict()))
    else:
        models.randomize_batchnorm(net, seed=0, data=torch.from_numpy(calibration(name, 32)))
    return net.eval()


def prune(net, sparsity: float, finetune: bool, block: int = 1):
    """Per-layer magnitude pruning; block > 1 prunes blocks of `block` input channels (one
    kernel position; linear: input features) by their RMS, in layers whose input width is a
    multiple of `block` (others element-wise)."""
    torch = _torch()
    net = copy.deepcopy(net)
    masks = []
    with torch.no_grad():
        for _, mod in _weight_modules(net):
            w = mod.weight
            by_block = block > 1 and w.shape[1] % block == 0
            score = w.abs()
            if by_block:  # (out, in / block, *kernel)
                score = w.pow(2).reshape(w.shape[0], w.shape[1] // block, block, *w.shape[2:]).mean(2).sqrt()
            k = int(np.ceil(sparsity * score.numel()))  # at least the target: export thresholds are <=
            if k <= 0:
                continue
            thr = score.flatten().kthvalue(k).values
            mask = (score > thr).to(w.dtype)
            if by_block:
                mask = mask.repeat_interleave(block, dim=1)
            w.mul_(mask)
            masks.append((mod, mask))
    if finetune:
        _train(net, 1.0, masks, max_steps=FINETUNE_STEPS)
    return net.eval()


def kmeans_1d(values: np.ndarray, k: int, iters: int = 15) -> np.ndarray:
    """Lloyd's k-means on scalars, linear (quantile) initialisation; returns the values
    replaced by their centroid (at most k distinct values)."""
    v = values.astype(np.float64)
    uniq = np.unique(v)
    if uniq.size <= k:
        return values
    c = np.quantile(v, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        c = np.unique(c)
        edges = (c[1:] + c[:-1]) / 2
        idx = np.searchsorted(edges, v)
        sums = np.bincount(idx, weights=v, minlength=c.size)
        counts = np.bincount(idx, minlength=c.size)
        c = np.where(counts > 0, sums / np.maximum(counts, 1), c)
    c = np.unique(c)
    edges = (c[1:] + c[:-1]) / 2
    out = c[np.searchsorted(edges, v)].astype(np.float32)
    out[out == 0] = np.float32(np.finfo(np.float32).tiny)  # a nonzero stays a nonzero
    return out


def share_weights(net, conv_bits: int = 8, fc_bits: int = 5):
    """Deep Compression step 2: the nonzeros of each weight to 2^b shared values."""
    torch = _torch()
    with torch.no_grad():
        for _, mod in _weight_modules(net):
            bits = fc_bits if isinstance(mod, torch.nn.Linear) else conv_bits
            w = mod.weight.detach().numpy().copy()
            nz = w != 0
            w[nz] = kmeans_1d(w[nz], 1 << bits)
            mod.weight.copy_(torch.from_numpy(w))
    return net


def low_rank(net):
    """Every Linear with min(out, in) >= 32 -> Linear(in, r, no bias) then Linear(r, out),
    r = min(out, in) // 4, from the truncated SVD."""
    torch = _torch()
    net = copy.deepcopy(net)

    def replace(parent):
        for cname, child in parent.named_children():
            if isinstance(child, torch.nn.Linear) and min(child.weight.shape) >= 32:
                W = child.weight.detach().double()
                r = min(W.shape) // 4
                U, S, Vh = torch.linalg.svd(W, full_matrices=False)
                first = torch.nn.Linear(W.shape[1], r, bias=False)
                second = torch.nn.Linear(r, W.shape[0], bias=child.bias is not None)
                with torch.no_grad():
                    first.weight.copy_((torch.diag(S[:r].sqrt()) @ Vh[:r]).float())
                    second.weight.copy_((U[:, :r] @ torch.diag(S[:r].sqrt())).float())
                    if child.bias is not None:
                        second.bias.copy_(child.bias)
                setattr(parent, cname, torch.nn.Sequential(first, second))
            else:
                replace(child)

    replace(net)
    return net.eval()


def variant_model(name: str, encoding: str):
    """(torch module, export weights spec) of one of our encodings."""
    base = base_model(name)
    finetune = HAS_DATA[name]
    if encoding in ("f32", "int8", "int4"):
        return copy.deepcopy(base), {"f32": "fp32", "int8": "int8", "int4": "int4"}[encoding]
    if encoding.startswith("csr"):
        net = copy.deepcopy(base)
        net.load_state_dict(_cached_state(
            f"{name}_{encoding}", lambda: prune(base, SPARSITY[encoding], finetune).state_dict()))
        return net, "auto"
    if encoding in ("dc", "dc_int8"):
        # BatchNorm folded first, so that one table per weight holds the folded values
        # (folding after sharing would scale each output channel's values differently).
        from torch.fx.experimental.optimization import fuse

        fused = fuse(copy.deepcopy(base))

        def build():
            # dc_int8 prunes in blocks of 4 input channels: the sparse int8 kernels then run
            # whole quads (one vpdpbusd per 16 pixels x 4 channels).
            pruned = prune(fused, dc_sparsity(name), finetune, block=1 if encoding == "dc" else DC_INT8_BLOCK)
            return (share_weights(pruned) if encoding == "dc" else pruned).state_dict()

        net = copy.deepcopy(fused)
        net.load_state_dict(_cached_state(f"{name}_{encoding}" + ("_blk4" if encoding == "dc_int8" else ""), build))
        if encoding == "dc":
            return net, "auto"
        share_weights(net, DC_INT8_CONV_BITS, DC_INT8_FC_BITS)
        torch = _torch()
        from deepsqueeze.convert.recipes import SPARSE_INT8

        sparse_int8 = dict(SPARSE_INT8, int8_scale="tensor")  # the recipe's values="int8_shared"
        # Depthwise convs (dense kernel only) store int8 per channel, as in the int8 file.
        return net, {n: (sparse_int8 if isinstance(m, torch.nn.Linear) or m.groups == 1 else "int8")
                     for n, m in net.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    if encoding == "lowrank_int8":
        return low_rank(base), "int8"
    raise ValueError(f"unknown encoding {encoding!r}")


# ------------------------------------------------------------------ files
_FILES: Dict[tuple, Path] = {}


def dsq_file(name: str, encoding: str) -> Path:
    key = (name, encoding)
    if key not in _FILES:
        torch = _torch()
        from deepsqueeze.convert import export

        net, spec = variant_model(name, encoding)
        path = CACHE_DIR / f"{name}_{encoding}.dsq"
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        calib = [torch.from_numpy(calibration(name))] if encoding in ("int8", "int4", "dc_int8") else None
        export(net, torch.zeros((1,) + INPUT_SHAPE[name]), str(path), weights=spec, calibration=calib)
        _FILES[key] = path
    return _FILES[key]


def onnx_file(name: str, kind: str) -> Path:
    """kind: f32 | int8_dynamic | int8_static (QDQ, per channel, calibrated)."""
    key = ("onnx", name, kind)
    if key in _FILES:
        return _FILES[key]
    torch = _torch()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    f32 = CACHE_DIR / f"{name}_f32.onnx"
    if ("onnx", name, "f32") not in _FILES:
        net = base_model(name)
        # torch 2.13: the TorchScript exporter (dynamo=False) needs no onnxscript
        torch.onnx.export(net, (torch.zeros((1,) + INPUT_SHAPE[name]),), str(f32), dynamo=False,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
        _FILES[("onnx", name, "f32")] = f32
    if kind == "f32":
        return f32
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    out = CACHE_DIR / f"{name}_{kind}.onnx"
    if kind == "int8_dynamic":
        quantize_dynamic(str(f32), str(out), weight_type=QuantType.QInt8)
    elif kind == "int8_static":
        calib = calibration(name)

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.batches = iter([{"x": calib[i:i + 16]} for i in range(0, len(calib), 16)])

            def get_next(self):
                return next(self.batches, None)

        quantize_static(str(f32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    else:
        raise ValueError(f"unknown ONNX kind {kind!r}")
    _FILES[key] = out
    return out


# ------------------------------------------------------------------ runners
def torch_int8(name: str):
    """PyTorch int8: dynamic quantization of Linear for LeNet-300-100 (no conv), static
    x86 (fbgemm) FX quantization for the conv nets."""
    torch = _torch()
    net = copy.deepcopy(base_model(name))
    if name == "lenet_300_100":
        return torch.ao.quantization.quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8).eval()
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    x = torch.from_numpy(calibration(name))
    prepared = prepare_fx(net, get_default_qconfig_mapping(torch.backends.quantized.engine), (x[:1],))
    with torch.inference_mode():
        prepared(x)
    return convert_fx(prepared).eval()


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def torch_bytes(module) -> int:
    """Bytes of a torch module's weights (float parameters or packed int8 weights)."""
    torch = _torch()
    total = 0
    for t in module.state_dict().values():
        if isinstance(t, torch.Tensor):
            total += t.numel() * t.element_size()
        elif isinstance(t, tuple):  # packed params (weight, bias)
            for u in t:
                if isinstance(u, torch.Tensor):
                    total += u.numel() * u.element_size()
    return total


def dense_macs(name: str, batch: int) -> int:
    """MACs of the dense f32 network at this batch (what 'effective GFLOP/s' divides)."""
    import deepsqueeze

    m = deepsqueeze.load(str(dsq_file(name, "f32")), threads=1)
    layers = m.layers([(batch,) + INPUT_SHAPE[name]])
    return int(sum(L["cost"]["macs_f32"] for L in layers))


def accuracy_of(predict, name: str) -> Optional[float]:
    """Top-1 accuracy of predict(x) -> logits over the test slice, None without data."""
    data = test_arrays(name)
    if data is None:
        return None
    x, y = data
    correct = 0
    for i in range(0, len(x), 500):
        logits = np.asarray(predict(np.ascontiguousarray(x[i:i + 500])))
        correct += int((logits.argmax(axis=1) == y[i:i + 500]).sum())
    return correct / len(x)
