"""The energy model (deepsqueeze.energy, docs/ENERGY.md) on hand-computed cases, and the
per-layer run counters that feed it: MACs of a known dense, sparse (CSR f32 and codebook)
and zero-skipped layer, table look-ups, Huffman symbols decoded at load."""
from __future__ import annotations

import numpy as np
import pytest

import deepsqueeze
from deepsqueeze import energy
from deepsqueeze import format as F
from deepsqueeze.builder import GraphBuilder
from deepsqueeze.cli import main as cli_main

PJ = 1e-12
MiB = 1 << 20


def one_layer(counts, **kw):
    return energy.estimate([{"name": "fc", "op": "linear", "weights": []}], [counts], 1, **kw)


# ------------------------------------------------------------------ hand-computed cases
def test_dense_f32_in_sram():
    # 1000 f32 MACs (3.7 + 0.9 pJ), 4000 weight bytes = 1000 SRAM words (5 pJ),
    # 400 activation bytes = 100 SRAM words (5 pJ).
    e = one_layer({"macs_f32": 1000, "weight_bytes": 4000, "activation_bytes": 400})
    assert e["weights_in"] == "sram"
    assert e["total_joules"] == pytest.approx((1000 * 4.6 + 1000 * 5 + 100 * 5) * PJ, rel=1e-12)
    b = e["breakdown_joules"]
    assert b["f32_macs"] == pytest.approx(4600 * PJ)
    assert b["weights_sram"] == pytest.approx(5000 * PJ)
    assert b["weights_dram"] == 0
    assert e["layers"][0]["joules"] == pytest.approx(e["total_joules"])


def test_weights_that_do_not_fit_the_cache_are_dram_reads():
    e = one_layer({"macs_f32": 1000, "weight_bytes": 4000, "activation_bytes": 400}, cache_bytes=3999)
    assert e["weights_in"] == "dram"
    assert e["total_joules"] == pytest.approx((1000 * 4.6 + 1000 * 640 + 100 * 5) * PJ)
    # exactly the cache size still fits
    assert one_layer({"weight_bytes": 4000}, cache_bytes=4000)["weights_in"] == "sram"


def test_whole_model_weights_decide_dram():
    # Two layers of 3 MiB each: each fits 4 MiB alone, together they do not -> both DRAM.
    layers = [{"name": "a", "op": "linear"}, {"name": "b", "op": "linear"}]
    counts = [{"weight_bytes": 3 * MiB}, {"weight_bytes": 3 * MiB}]
    e = energy.estimate(layers, counts, 1, cache_bytes=4 * MiB)
    assert e["weights_in"] == "dram"
    for L in e["layers"]:
        assert L["breakdown_joules"]["weights_dram"] == pytest.approx(3 * MiB / 4 * 640 * PJ)
    assert energy.estimate(layers, counts, 1, cache_bytes=6 * MiB)["weights_in"] == "sram"


def test_int8_int4_and_big_activations():
    e = one_layer({"macs_int8": 100, "macs_int4": 10, "activation_bytes": 80}, cache_bytes=64)
    # int8 multiply 0.2 + int32 accumulate 0.1; activations larger than the cache: DRAM
    assert e["breakdown_joules"]["int8_macs"] == pytest.approx(100 * 0.3 * PJ)
    assert e["breakdown_joules"]["int4_macs"] == pytest.approx(10 * 0.3 * PJ)
    assert e["breakdown_joules"]["activations_dram"] == pytest.approx(20 * 640 * PJ)


def test_micro_batched_runs_are_priced_per_call():
    # 4 slices (calls) of 60 activation bytes each fit a 64-byte cache: SRAM, although the
    # run moves 240. The weights (2 passes of 48 bytes over 2 runs) fit as one pass.
    counts = {"activation_bytes": 2 * 240, "weight_bytes": 2 * 4 * 48, "calls": 2 * 4}
    e = energy.estimate([{"name": "fc"}], [counts], 2, cache_bytes=64)
    assert e["weights_in"] == "sram" and e["model_weight_bytes_per_run"] == 48
    assert e["breakdown_joules"]["activations_dram"] == 0
    assert e["breakdown_joules"]["activations_sram"] == pytest.approx(60 * 5 * PJ)
    assert e["breakdown_joules"]["weights_sram"] == pytest.approx(48 * 5 * PJ)
    # One call of 240 bytes: DRAM.
    e = energy.estimate([{"name": "fc"}], [{"activation_bytes": 240, "calls": 1}], 1, cache_bytes=64)
    assert e["breakdown_joules"]["activations_dram"] == pytest.approx(60 * 640 * PJ)


def test_skipped_macs_and_lookups_are_not_charged():
    # codebook layer: 500 MACs and 500 look-ups planned, 200 skipped on zero inputs
    e = one_layer({"macs_f32": 500, "table_lookups": 500, "skipped_macs": 200})
    assert e["breakdown_joules"]["f32_macs"] == pytest.approx(300 * 4.6 * PJ)
    assert e["breakdown_joules"]["table_lookups"] == pytest.approx(300 * 5 * PJ)
    # an f32 sparse layer has no look-ups, whatever it skipped
    e = one_layer({"macs_f32": 500, "skipped_macs": 200})
    assert e["breakdown_joules"]["table_lookups"] == 0


def test_runs_average_and_cost_override():
    e = energy.estimate([{"name": "fc"}], [{"macs_f32": 3000}], 3, costs={"f32_mult": 1.0, "f32_add": 0.0})
    assert e["total_joules"] == pytest.approx(1000 * PJ)


@pytest.mark.parametrize("kw,err", [
    ({"cache_bytes": 0}, ValueError), ({"cache_bytes": 1.5}, ValueError),
    ({"costs": {"fp64_mult": 1.0}}, ValueError), ({"costs": {"f32_add": -1}}, ValueError),
    ({"costs": [1, 2]}, TypeError),
])
def test_bad_arguments(kw, err):
    with pytest.raises(err, match="cache_bytes|costs"):
        one_layer({"macs_f32": 1}, **kw)
    with pytest.raises(ValueError, match="at least one run"):
        energy.estimate([{}], [{}], 0)


def test_rapl_reports_unavailable_or_measures():
    got = energy.rapl_joules(lambda: None, min_seconds=0.01)
    if energy.rapl_zones():
        assert got["joules_per_call"] >= 0 and got["calls"] >= 1
    else:
        assert got is None and energy.rapl_status() == "not available"


# ------------------------------------------------------------------ counters of real layers
def linear_model(w, b, **enc):
    g = GraphBuilder()
    x = g.add_input("x", (-1, w.shape[1]))
    wi = g.add_weight("fc.weight", w, **enc)
    bi = g.add_weight("fc.bias", b)
    y = g.add_node("linear", [x], weights=[wi, bi], name="fc")
    g.mark_output(y, "y")
    return deepsqueeze.load(F.to_bytes(g.build()), threads=1)


def sparse_w(rng, rows, cols, density, levels=None):
    """A sparse matrix; with `levels`, its nonzeros take only that many distinct values
    (the codebook encoding stores them exactly)."""
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    if levels:
        table = np.linspace(-1.0, 1.0, levels + 1, dtype=np.float32)
        table = table[table != 0][:levels]
        w = table[rng.integers(0, len(table), (rows, cols))]
    w[rng.random((rows, cols)) >= density] = 0
    return w


def test_dense_layer_counters_match_macs():
    rng = np.random.default_rng(1)
    w, b = rng.standard_normal((48, 40)).astype(np.float32), np.zeros(48, np.float32)
    for values, key in (("f32", "macs_f32"), ("int8_channel", "macs_int8")):
        m = linear_model(w, b, values=values)
        with pytest.raises(RuntimeError, match="has not run"):
            m.energy()
        x = rng.standard_normal((5, 40)).astype(np.float32)
        m.run(x)
        m.run(x)
        lc = m.layer_counters
        assert len(lc) == 1 and lc[0][key] == 2 * 5 * 48 * 40
        assert lc[0]["table_lookups"] == 0 and lc[0]["skipped_macs"] == 0
        assert m.counters[key] == lc[0][key]
        e = m.energy()
        per_mac = 4.6 if values == "f32" else 0.3
        comp = "f32_macs" if values == "f32" else "int8_macs"
        assert e["breakdown_joules"][comp] == pytest.approx(5 * 48 * 40 * per_mac * PJ)


@pytest.mark.parametrize("codebook", [False, True], ids=["csr-f32", "csr-codebook5"])
def test_sparse_layer_counters_match_nonzeros(codebook):
    rng = np.random.default_rng(2)
    w = sparse_w(rng, 64, 80, 0.1, levels=32 if codebook else None)
    enc = {"values": "codebook", "layout": "csr", "codebook_bits": 5} if codebook else \
        {"values": "f32", "layout": "csr"}
    m = linear_model(w, np.zeros(64, np.float32), **enc)
    nnz = int(np.count_nonzero(w))
    x = rng.standard_normal((3, 80)).astype(np.float32)
    m.run(x)
    lc = m.layer_counters[0]
    assert lc["macs_f32"] == 3 * nnz
    if not codebook:
        assert lc["table_lookups"] == 0


def cb_linear(force_kernel=""):
    rng = np.random.default_rng(12)
    w = sparse_w(rng, 40, 50, 0.2, levels=32)
    g = GraphBuilder()
    x = g.add_input("x", (-1, 50))
    wi = g.add_weight("w", w, values="codebook", layout="csr", codebook_bits=5)
    g.mark_output(g.add_node("linear", [x], weights=[wi], name="fc"), "y")
    return deepsqueeze.load(F.to_bytes(g.build()), threads=1, force_kernel=force_kernel), int(np.count_nonzero(w))


@pytest.mark.parametrize("force", ["", "spmm_cb_f32_4__scalar"])
@pytest.mark.parametrize("batch", [1, 3, 300])
def test_codebook_lookups_per_tile_of_rows(batch, force):
    """Batch 1: one look-up per MAC. Batched: the spmm kernels decode a code once per
    nonzero and tile of mr rows (mr from the kernel's name), over chunks of 256 rows."""
    import math
    import re

    m, nnz = cb_linear(force)
    kernel = m.layers([(batch, 50)])[0]["kernel"]
    mr = int(re.search(r"spmm_cb_f32_(\d+)__", kernel).group(1))
    m.run(np.ones((batch, 50), np.float32))
    lc = m.layer_counters[0]
    if batch == 1 and not force:
        want = nnz
    else:
        want = nnz * sum(math.ceil(min(256, batch - c) / mr) for c in range(0, batch, 256))
    assert lc["table_lookups"] == want
    assert lc["macs_f32"] == batch * nnz


@pytest.mark.parametrize("codebook", [False, True], ids=["csr-f32", "csr-codebook5"])
def test_zero_skipped_layer_counters(codebook):
    rng = np.random.default_rng(3)
    w = sparse_w(rng, 64, 100, 0.2, levels=32 if codebook else None)
    enc = {"values": "codebook", "layout": "csr", "codebook_bits": 5} if codebook else \
        {"values": "f32", "layout": "csr"}
    m = linear_model(w, np.zeros(64, np.float32), **enc)
    x = rng.standard_normal((1, 100)).astype(np.float32)
    x[0, rng.permutation(100)[:90]] = 0  # 90% zeros: above every zero-skip threshold
    assert "zero-skip" in m.layers([(1, 100)])[0]["kernel"]
    m.run(x)
    skipped = int(np.count_nonzero(w[:, x[0] == 0]))
    nnz = int(np.count_nonzero(w))
    lc = m.layer_counters[0]
    assert lc["skipped_macs"] == skipped > 0
    assert lc["macs_f32"] == nnz
    e = m.energy()
    assert e["breakdown_joules"]["f32_macs"] == pytest.approx((nnz - skipped) * 4.6 * PJ)
    assert e["breakdown_joules"]["table_lookups"] == pytest.approx(
        ((nnz - skipped) * 5 * PJ) if codebook else 0.0)


def test_counters_per_layer_in_a_two_layer_graph_and_reset():
    rng = np.random.default_rng(4)
    g = GraphBuilder()
    x = g.add_input("x", (-1, 30))
    w1, w2 = rng.standard_normal((20, 30)).astype(np.float32), rng.standard_normal((10, 20)).astype(np.float32)
    h = g.add_node("linear", [x], weights=[g.add_weight("w1", w1)], attrs={"activation": "relu"}, name="fc1")
    y = g.add_node("linear", [h], weights=[g.add_weight("w2", w2, values="int8_channel")], name="fc2")
    g.mark_output(y, "y")
    m = deepsqueeze.load(F.to_bytes(g.build()), threads=1)
    m.run(rng.standard_normal((4, 30)).astype(np.float32))
    lc = m.layer_counters
    assert [c["macs_f32"] for c in lc] == [4 * 20 * 30, 0]
    assert [c["macs_int8"] for c in lc] == [0, 4 * 10 * 20]
    e = m.energy()
    assert [L["name"] for L in e["layers"]] == ["fc1", "fc2"]
    assert e["total_joules"] == pytest.approx(sum(L["joules"] for L in e["layers"]))
    m.reset_counters()
    assert m.layer_counters == []


def test_huffman_symbols_decoded_at_load():
    rng = np.random.default_rng(5)
    w = sparse_w(rng, 32, 64, 0.3, levels=16)
    g = GraphBuilder()
    x = g.add_input("x", (-1, 64))
    wi = g.add_weight("w", w, values="codebook", layout="csr", codebook_bits=4, huffman=True)
    g.mark_output(g.add_node("linear", [x], weights=[wi], name="fc"), "y")
    f = g.build()
    want = sum(s.count for s in f.tensors[wi].streams if s.entropy == "huffman")
    assert want > 0
    m = deepsqueeze.load(F.to_bytes(f), threads=1)
    assert m.layers()[0]["weights"][0]["huffman_symbols"] == want
    m.run(np.ones((1, 64), np.float32))
    assert m.energy()["huffman_symbols_decoded_at_load"] == want


def test_cli_inspect_energy(tmp_path, capsys):
    rng = np.random.default_rng(6)
    m_w = rng.standard_normal((16, 8)).astype(np.float32)
    g = GraphBuilder()
    x = g.add_input("x", (-1, 8))
    g.mark_output(g.add_node("linear", [x], weights=[g.add_weight("w", m_w)], name="fc"), "y")
    path = tmp_path / "m.dsq"
    path.write_bytes(F.to_bytes(g.build()))
    assert cli_main(["inspect", "--energy", str(path)]) == 0
    out = capsys.readouterr().out
    assert "energy of one inference on zeros of shape (1, 8)" in out
    total = [ln for ln in out.splitlines() if ln.startswith("TOTAL")]
    # 128 f32 MACs (4.6 pJ) + 128 weight words + 24 activation words (5 pJ) = 1.348 nJ
    assert total and float(total[0].split()[1]) == pytest.approx(1.348, abs=1e-3)
    assert "RAPL" in out
    np.save(tmp_path / "x.npy", np.ones((2, 8), np.float32))
    assert cli_main(["inspect", "--energy", "--input", str(tmp_path / "x.npy"), str(path)]) == 0
    assert cli_main(["inspect", "--input", str(tmp_path / "x.npy"), str(path)]) == 2
