"""size_report / format_size_report (deepsqueeze.convert.report): per-layer sizes of the
real exported file, on a dense and on a pruned + clustered LeNet-300-100."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from deepsqueeze import format as dsqformat  # noqa: E402
from deepsqueeze.convert import export_to_bytes, models  # noqa: E402
from deepsqueeze.convert.cluster import ClusterConfig, cluster  # noqa: E402
from deepsqueeze.convert.report import format_size_report, size_report  # noqa: E402

torch.set_num_threads(1)

X = torch.zeros(1, 1, 28, 28)


def _pruned_clustered(fraction=0.92, bits=4):
    model = models.lenet_300_100(seed=1)
    with torch.no_grad():
        for layer in (model.fc1, model.fc2, model.fc3):
            w = layer.weight
            cut = w.abs().flatten().kthvalue(int(fraction * w.numel())).values
            w[w.abs() <= cut] = 0
    return cluster(model, ClusterConfig(bits=bits))


def test_dense_model_is_32_bits_per_weight():
    model = models.lenet_300_100()
    rows = size_report(model, X, weights="fp32", compare_fp32=False)
    assert [r["name"] for r in rows] == ["fc1", "fc2", "fc3", "total"]
    for r, layer in zip(rows, (model.fc1, model.fc2, model.fc3)):
        assert r["params"] == layer.weight.numel() + layer.bias.numel()
        assert r["bits_per_weight"] == r["bits_per_weight_raw"] == 32.0
        assert r["bytes"] == 4 * r["params"] and r["ratio"] == 1.0
        assert r["distinct_nonzero"] == int(np.unique(layer.weight.detach().numpy()).size)
    total = rows[-1]
    assert total["total"] and total["fp32_file_bytes"] is None
    assert total["file_bytes"] == len(export_to_bytes(model, X, weights="fp32"))


def test_pruned_clustered_lenet_300_100():
    model = _pruned_clustered()
    rows = size_report(model, X)  # weights="auto"
    by = {r["name"]: r for r in rows}
    data = export_to_bytes(model, X, weights="auto")
    stored = {t.name: t for t in dsqformat.from_bytes(data).tensors}
    for name in ("fc1", "fc2", "fc3"):
        r, w = by[name], getattr(model, name).weight.detach()
        assert r["nonzeros"] == int((w != 0).sum()) and r["weight_numel"] == w.numel()
        assert abs(r["density"] - 0.08) < 0.01
        assert r["distinct_nonzero"] == int(torch.unique(w[w != 0]).numel()) <= 16
        assert r["encoding"].split(":")[0] in ("csr", "csr_relative", "block_csr")
        assert "codebook" in r["encoding"]
        # the layer's bytes are the stream bytes the file holds for its weight and bias
        weight_bytes = sum(int(np.asarray(s.data).nbytes) for s in stored[f"{name}.weight"].streams)
        bias_bytes = sum(int(np.asarray(s.data).nbytes) for s in stored[f"{name}.bias"].streams)
        assert r["weight_bytes"] == weight_bytes and r["bytes"] == weight_bytes + bias_bytes
        assert r["bits_per_weight"] == pytest.approx(8 * weight_bytes / w.numel())
        assert r["bits_per_nonzero"] == pytest.approx(8 * weight_bytes / r["nonzeros"])
        # Huffman is used only where it saves bytes
        assert r["bits_per_nonzero"] <= r["bits_per_nonzero_raw"] + 1e-9
        assert r["bits_per_weight"] < 2.0 and r["ratio"] > 15
    assert by["fc1"]["huffman"] and by["fc1"]["bits_per_nonzero"] < by["fc1"]["bits_per_nonzero_raw"]
    total = by["total"]
    assert total["bytes"] == sum(by[n]["bytes"] for n in ("fc1", "fc2", "fc3"))
    assert total["nonzeros"] == sum(by[n]["nonzeros"] for n in ("fc1", "fc2", "fc3"))
    assert total["file_bytes"] == len(data)
    assert total["fp32_file_bytes"] == len(export_to_bytes(model, X, weights="fp32"))
    assert total["file_ratio"] == pytest.approx(total["fp32_file_bytes"] / len(data))
    assert total["file_ratio"] > 30


def test_format_size_report():
    rows = size_report(_pruned_clustered(), X)
    text = format_size_report(rows)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["layer", "encoding", "params"]
    for name in ("fc1", "fc2", "fc3", "total"):
        assert any(line.startswith(name) for line in lines)
    fc1 = rows[0]
    assert f"{fc1['bits_per_nonzero_raw']:.2f}->{fc1['bits_per_nonzero']:.2f}" in text
    assert f"{rows[-1]['file_bytes']:,} bytes" in lines[-1] and "smaller" in lines[-1]
    with pytest.raises(TypeError):
        format_size_report("fc1")  # type: ignore[arg-type]


def test_size_report_rejects_non_modules():
    with pytest.raises(TypeError, match="nn.Module"):
        size_report(object(), X)  # type: ignore[arg-type]
