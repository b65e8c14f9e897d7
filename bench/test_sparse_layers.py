"""Sparse-weight layer benchmarks: deepsqueeze's spmm_f32 family vs dense (ours and torch)
and torch's CSR matmul.

Layers: FC 4096x4096 (batch 1 and 64) and a pointwise conv 256->256 on 28x28 (batch 1, so
M = 784 pixel rows), at sparsity 50/70/80/90/95/98 % (random unstructured mask). Encodings
of ours (sparse):

    csr_f32        csr layout, f32 values
    rel5_cb5       csr_relative with 5-bit gaps, 5-bit codebook (32 levels, per tensor)
    rel5_cb5_huff  the same with every eligible stream Huffman coded (smaller file; the
                   engine decodes at load, so the run time should equal rel5_cb5)

Peers: our dense f32 and dense int8 (int8_channel, dynamic activation quantization),
torch f32 dense (F.linear / F.conv2d via nn.Linear / nn.Conv2d) and torch's CSR matmul
(torch.sparse_csr_tensor @ dense: W @ x^T for the FC, W @ X (256 x 784, the 1x1 conv's
matrix form, no copy) for the conv, plus the bias).

Grid (sampled to keep the file at a few minutes):
- FC, 1 thread, warm: every sparsity, batch 1 and 64;
- FC, 1 thread, cold (copies rotated so the weights touched per cycle exceed 64 MB =
  twice the 32 MB L3): 90 %, batch 1 and 64;
- FC, 2 threads, warm: 90 %, batch 1 and 64;
- conv 1x1, 1 thread, warm: 70 / 90 / 98 %; 2 threads: 90 %. (Warm only: the whole dense
  f32 weight is 256 KB, the activations dominate the traffic.)

One group = layer x batch x threads x cache; the dense peers are measured once per group
(their time does not depend on sparsity). extra_info of every benchmark: impl, encoding,
sparsity, threads, batch, payload_bytes (file bytes of weight + bias; torch: bytes of its
tensors), touched_bytes (weight bytes one call reads, used for the cold rotation),
effective GFLOP/s (2 * dense MACs / median time), real GFLOP/s (2 * nnz * rows / median
time), kernel (ours).

At the end of the module bench/results/sparse_bench.md is written (ratios vs torch f32
dense and vs our dense int8, the issue's target case marked). The same table can be
rebuilt from the JSON:

    python3 -m pytest bench/test_sparse_layers.py --benchmark-only \
        --benchmark-json=bench/results/sparse_bench.json -q
    python3 bench/test_sparse_layers.py bench/results/sparse_bench.json   # -> sparse_bench.md
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from conftest import (COLD_TOTAL_BYTES, L3_BYTES, modeled_energy, plan_rounds, report,  # noqa: E402
                      set_threads, torch_mod)

import deepsqueeze  # noqa: E402
from deepsqueeze.builder import GraphBuilder  # noqa: E402
from deepsqueeze.encode import encode_tensor, payload_bytes  # noqa: E402
from deepsqueeze.format import to_bytes  # noqa: E402

OURS, TORCH = "deepsqueeze", "torch"
RESULTS_MD = BENCH_DIR / "results" / "sparse_bench.md"
BUDGET_S = 0.5  # measuring time per benchmark

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
SPARSE_ENCODINGS = {
    "csr_f32": dict(layout="csr", values="f32"),
    "rel5_cb5": dict(layout="csr_relative", index_bits=5, values="codebook", codebook_bits=5),
    "rel5_cb5_huff": dict(layout="csr_relative", index_bits=5, values="codebook", codebook_bits=5,
                          huffman=True),
}
DENSE_PEERS = [(OURS, "dense_f32"), (OURS, "dense_int8"), (TORCH, "dense_f32")]
SPARSE_IMPLS = [(OURS, e) for e in SPARSE_ENCODINGS] + [(TORCH, "csr_f32")]

FC, CONV = "fc 4096x4096", "conv1x1 256->256 28x28"
LAYERS = {  # weight shape (matrix rows, cols), input shape builder
    FC: dict(rows=4096, cols=4096, kind="linear"),
    CONV: dict(rows=256, cols=256, kind="conv2d", hw=(28, 28)),
}

# The targets: (title, group, sparsity, encoding, peer, threshold on peer/ours time)
TARGET_ENC = "rel5_cb5"
TARGETS = [
    ("FC 4096x4096, 90 % sparse, 5-bit codebook + relative indices, 1 thread, batch 1: "
     ">= 12x vs torch f32 dense", "b1 t1", 0.9, f"{TORCH}:dense_f32", 12.0),
    ("same: faster than our dense int8", "b1 t1", 0.9, f"{OURS}:dense_int8", 1.0),
    ("same, batch 64: >= 5x vs torch f32 dense", "b64 t1", 0.9, f"{TORCH}:dense_f32", 5.0),
]


# --------------------------------------------------------------------------- cases
def _cases():
    out = []

    def add(layer, batch, threads, cache, sparsities, dense=True):
        g = (layer, batch, threads, cache)
        if dense:
            for impl, enc in DENSE_PEERS:
                out.append(pytest.param(*g, None, impl, enc,
                                        id=_case_id(layer, batch, threads, cache, None, impl, enc)))
        for s in sparsities:
            for impl, enc in SPARSE_IMPLS:
                out.append(pytest.param(*g, s, impl, enc,
                                        id=_case_id(layer, batch, threads, cache, s, impl, enc)))

    for batch in (1, 64):
        add(FC, batch, 1, "warm", SPARSITIES)
    for batch in (1, 64):
        add(FC, batch, 1, "cold", (0.9,))
    for batch in (1, 64):
        add(FC, batch, 2, "warm", (0.9,))
    add(CONV, 1, 1, "warm", (0.7, 0.9, 0.98))
    add(CONV, 1, 2, "warm", (0.9,))
    return out


def _case_id(layer, batch, threads, cache, s, impl, enc):
    lay = "fc4096" if layer == FC else "conv1x1_256"
    sp = "dense" if s is None else f"s{int(round(s * 100))}"
    return f"{lay}-b{batch}-t{threads}-{cache}-{sp}-{impl}-{enc}"


def group_name(layer, batch, threads, cache):
    return f"{layer} b{batch} t{threads} {cache}"


# --------------------------------------------------------------------------- weights
_W: Dict[tuple, object] = {}


def _dense_weights(layer):
    k = ("dense", layer)
    if k not in _W:
        L = LAYERS[layer]
        rng = np.random.default_rng(1234)
        bound = 1.0 / np.sqrt(L["cols"])
        w = rng.uniform(-bound, bound, (L["rows"], L["cols"])).astype(np.float32)
        b = rng.uniform(-bound, bound, L["rows"]).astype(np.float32)
        _W[k] = (w, b)
    return _W[k]


def _sparse_weights(layer, sparsity):
    """(pruned float weights, the same with the nonzeros quantized to 32 levels, bias)."""
    k = ("sparse", layer, sparsity)
    if k not in _W:
        w, b = _dense_weights(layer)
        rng = np.random.default_rng(int(sparsity * 1000) + 7)
        mask = rng.random(w.shape) >= sparsity
        ws = np.where(mask, w, 0).astype(np.float32)
        a = np.abs(ws[mask])
        levels = np.quantile(a, (np.arange(16) + 0.5) / 16).astype(np.float32)  # 16 magnitudes
        idx = np.clip(np.searchsorted((levels[1:] + levels[:-1]) / 2, np.abs(ws)), 0, 15)
        wc = np.where(mask, np.sign(ws) * levels[idx], 0).astype(np.float32)  # 32 values, no 0
        _W[k] = (ws, wc, b)
    return _W[k]


def _matrix_to_weight(layer, m):
    return m if LAYERS[layer]["kind"] == "linear" else m.reshape(m.shape + (1, 1))


_BYTES: Dict[tuple, tuple] = {}


def dsq_bytes(layer, sparsity, enc):
    """(file bytes, payload bytes of weight + bias, nnz) of one of our encodings."""
    k = (layer, sparsity, enc)
    if k in _BYTES:
        return _BYTES[k]
    L = LAYERS[layer]
    if sparsity is None:
        w, b = _dense_weights(layer)
        kw = dict(values="f32" if enc == "dense_f32" else "int8_channel")
        mat = w
    else:
        ws, wc, b = _sparse_weights(layer, sparsity)
        kw = dict(SPARSE_ENCODINGS[enc])
        mat = wc if kw.get("values") == "codebook" else ws
    wt = encode_tensor("w", _matrix_to_weight(layer, mat), **kw)
    bt = encode_tensor("b", b)
    g = GraphBuilder()
    if L["kind"] == "linear":
        x = g.add_input("x", (-1, L["cols"]))
        attrs = {}
    else:
        x = g.add_input("x", (-1, L["cols"]) + L["hw"])
        attrs = {}
    y = g.add_node(L["kind"], [x], weights=[g.add_tensor(wt), g.add_tensor(bt)], attrs=attrs)
    g.mark_output(y, "y")
    data = to_bytes(g.build({"dsq.producer": "bench/test_sparse_layers"}))
    nnz = int(np.count_nonzero(mat))
    _BYTES[k] = (data, payload_bytes(wt) + payload_bytes(bt), nnz)
    return _BYTES[k]


def input_shape(layer, batch):
    L = LAYERS[layer]
    return (batch, L["cols"]) if L["kind"] == "linear" else (batch, L["cols"]) + L["hw"]


def rows_of(layer, batch):
    L = LAYERS[layer]
    return batch if L["kind"] == "linear" else batch * L["hw"][0] * L["hw"][1]


class Rotating:
    """Calls fns in turn, one per call (cold: each copy's weights are evicted by the others)."""

    def __init__(self, fns):
        self.fns = list(fns)
        self.i = 0

    def __call__(self, x):
        fn = self.fns[self.i]
        self.i = (self.i + 1) % len(self.fns)
        return fn(x)


def copies_for(cache, touched):
    if cache != "cold":
        return 1
    return max(2, -(-COLD_TOTAL_BYTES // max(1, int(touched))))


# --------------------------------------------------------------------------- peers
def ours(layer, batch, threads, cache, sparsity, enc):
    data, payload, nnz = dsq_bytes(layer, sparsity, enc)
    shape = input_shape(layer, batch)
    first = deepsqueeze.load(data, threads=threads)
    info = first.layers([shape])[0]
    cost_bytes = int(info["cost"]["weight_bytes"])
    touched = cost_bytes
    if batch > 1 and sparsity is not None:
        # batch > 1 runs the spmm kernels on the CSR arrays (the cost reports the batch-1
        # layout): row_ptr u32 + u16 columns + f32 value or u8 code per nonzero + bias
        n = LAYERS[layer]["rows"]
        touched = (n + 1) * 4 + nnz * (2 + (1 if "cb" in enc else 4)) + n * 4
    copies = copies_for(cache, touched)
    models = [first] + [deepsqueeze.load(data, threads=threads) for _ in range(copies - 1)]
    fn = Rotating([m.run for m in models]) if copies > 1 else first.run
    return dict(fn=fn, model=first, payload=payload, touched=touched, copies=copies, kernel=info["kernel"],
                nnz=nnz if sparsity is not None else LAYERS[layer]["rows"] * LAYERS[layer]["cols"],
                check=first.run)


def theirs(layer, batch, threads, cache, sparsity, enc):
    torch = torch_mod()
    import warnings

    warnings.filterwarnings("ignore", message=r".*Sparse CSR tensor support is in beta.*")
    L = LAYERS[layer]
    if sparsity is None:
        w, b = _dense_weights(layer)
        nnz = w.size
        W = torch.from_numpy(w)
        B = torch.from_numpy(b)
        touched = w.nbytes + b.nbytes
        copies = copies_for(cache, touched)
        mods = []
        for i in range(copies):
            if L["kind"] == "linear":
                m = torch.nn.Linear(L["cols"], L["rows"])
            else:
                m = torch.nn.Conv2d(L["cols"], L["rows"], 1)
            with torch.no_grad():
                m.weight.copy_(W.reshape(m.weight.shape))
                m.bias.copy_(B)
            mods.append(m.eval())
        fns = mods
        payload = touched
    else:
        ws, _, b = _sparse_weights(layer, sparsity)
        nnz = int(np.count_nonzero(ws))
        base = torch.from_numpy(ws).to_sparse_csr()
        B = torch.from_numpy(b)
        touched = (base.crow_indices().numel() * base.crow_indices().element_size() +
                   base.col_indices().numel() * base.col_indices().element_size() +
                   base.values().numel() * 4 + b.nbytes)
        copies = copies_for(cache, touched)
        fns = []
        for i in range(copies):
            Wc = torch.sparse_csr_tensor(base.crow_indices().clone(), base.col_indices().clone(),
                                         base.values().clone(), size=base.shape)
            Bi = B.clone()
            if L["kind"] == "linear":
                fns.append(lambda x, Wc=Wc, Bi=Bi: torch.add((Wc @ x.t()).t(), Bi))
            else:
                C, (H, Wd) = L["cols"], L["hw"]
                fns.append(lambda x, Wc=Wc, Bi=Bi, C=C, H=H, Wd=Wd:
                           (Wc @ x.reshape(C, H * Wd)).add_(Bi[:, None]).reshape(1, -1, H, Wd))
        payload = touched
    fn = Rotating(fns) if copies > 1 else fns[0]
    return dict(fn=fn, payload=payload, touched=touched, copies=copies, kernel="", nnz=nnz,
                check=fns[0])


# --------------------------------------------------------------------------- records
RECORDS: List[dict] = []


@pytest.fixture(scope="module", autouse=True)
def _write_report():
    yield
    if RECORDS:
        RESULTS_MD.parent.mkdir(parents=True, exist_ok=True)
        RESULTS_MD.write_text(render(RECORDS, source="in-session records (same data as the "
                                                     "--benchmark-json file)"))


@pytest.mark.parametrize("layer,batch,threads,cache,sparsity,impl,enc", _cases())
def test_sparse(benchmark, layer, batch, threads, cache, sparsity, impl, enc):
    torch = torch_mod()
    set_threads(threads)
    rng = np.random.default_rng(99)
    x = np.ascontiguousarray(rng.standard_normal(input_shape(layer, batch)).astype(np.float32))
    p = (ours if impl == OURS else theirs)(layer, batch, threads, cache, sparsity, enc)
    arg = x if impl == OURS else torch.from_numpy(x)
    group = group_name(layer, batch, threads, cache)
    benchmark.group = group
    with torch.inference_mode():
        rounds, iterations = plan_rounds(p["fn"], arg, budget_s=BUDGET_S, calls=p["copies"],
                                         min_rounds=7)
        benchmark.pedantic(p["fn"], args=(arg,), rounds=rounds, iterations=iterations,
                           warmup_rounds=1)
        y = p["check"](arg)
    st = benchmark.stats.stats
    dense_macs = rows_of(layer, batch) * LAYERS[layer]["rows"] * LAYERS[layer]["cols"]
    real_macs = rows_of(layer, batch) * p["nnz"]
    info = {
        "impl": impl, "encoding": enc, "sparsity": sparsity, "threads": threads, "batch": batch,
        "layer": layer, "cache": cache, "group": group,
        "payload_bytes": int(p["payload"]), "touched_bytes": int(p["touched"]),
        "copies": p["copies"], "rotated_bytes": int(p["touched"]) * p["copies"],
        "nnz": int(p["nnz"]), "dense_MACs": int(dense_macs),
        "effective_GFLOP/s": round(2.0 * dense_macs / st.median / 1e9, 2),
        "real_GFLOP/s": round(2.0 * real_macs / st.median / 1e9, 2),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    if p["kernel"]:
        info["kernel"] = p["kernel"]
    if p.get("model") is not None:
        info["energy_J"] = modeled_energy(p["model"], x, cache == "cold")
    # A sanity check that the benchmark computes the right thing (vs float64 numpy).
    if sparsity is None:
        w, b = _dense_weights(layer)
        tol = 0.05 if enc == "dense_int8" else 1e-4
    else:
        ws, wc, b = _sparse_weights(layer, sparsity)
        w = wc if "cb" in enc else ws
        tol = 1e-4
    xm = x.reshape(batch, -1) if LAYERS[layer]["kind"] == "linear" else x.reshape(LAYERS[layer]["cols"], -1)
    ref = (xm.astype(np.float64) @ w.T.astype(np.float64) + b) if LAYERS[layer]["kind"] == "linear" \
        else (w.astype(np.float64) @ xm + b[:, None])
    got = np.asarray(y, dtype=np.float64).reshape(ref.shape)
    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    info["rel_err"] = rel
    benchmark.extra_info.update(info)
    RECORDS.append({"extra_info": dict(info),
                    "stats": {"median": st.median, "min": st.min, "mean": st.mean, "rounds": st.rounds}})
    assert rel <= tol, f"{group} {impl}:{enc} s={sparsity}: relative error {rel:.3g}"


# --------------------------------------------------------------------------- report
def _fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}"


def render(records: List[dict], source: str = "") -> str:
    by_group: Dict[str, Dict[tuple, dict]] = {}
    order: List[str] = []
    for r in records:
        e = r["extra_info"]
        g = e["group"]
        if g not in by_group:
            by_group[g] = {}
            order.append(g)
        by_group[g][(e["impl"], e["encoding"], e["sparsity"])] = r

    def med(g, impl, enc, s=None):
        r = by_group.get(g, {}).get((impl, enc, s))
        return None if r is None else r["stats"]["median"]

    def ratio(num, den):
        return None if num is None or den is None or den <= 0 else num / den

    lines = ["# deepsqueeze: sparse-weight layers vs dense and torch CSR", ""]
    lines.append("**Ratios are peer median time / our median time: > 1 means ours is faster.** "
                 "The machine is shared and noisy (load average is recorded per benchmark); "
                 "trust ratios within a group (measured back to back), not absolute times.")
    lines.append("")
    try:
        ms = report.machine_state()
        lines += ["## Machine state", ""] + [f"- {k}: {v}" for k, v in ms.items()] if isinstance(ms, dict) \
            else ["## Machine state", "", str(ms)]
    except Exception as err:  # pragma: no cover - best effort
        lines += ["## Machine state", "", f"- unavailable: {err}"]
    lines += [f"- written: {_dt.datetime.now(_dt.timezone.utc).isoformat()}",
              f"- source: {source}" if source else "", ""]
    loads = [r["extra_info"].get("loadavg_1m") for r in records if r["extra_info"].get("loadavg_1m") is not None]
    if loads:
        lines += [f"- 1-minute load average during the run: {min(loads):.2f} .. {max(loads):.2f} "
                  f"(2 logical cpus: above ~1 the t2 groups are unreliable)", ""]

    lines += ["## Targets (issue)", "",
              f"Encoding `{TARGET_ENC}` = csr_relative with 5-bit gaps + 5-bit codebook; "
              f"`{TARGET_ENC}_huff` (Huffman-coded streams, same kernels) shown for reference.", "",
              "| target | group | encoding | peer / ours (median) | peer / ours (min) | status |",
              "|---|---|---|---|---|---|"]
    for title, bt, s, peer, thr in TARGETS:
        b = int(bt.split()[0][1:])
        for cache in ("warm", "cold"):
            g = group_name(FC, b, 1, cache)
            for enc in (TARGET_ENC, TARGET_ENC + "_huff"):
                pi, pe = peer.split(":")
                ro = by_group.get(g, {}).get((OURS, enc, s))
                rp = by_group.get(g, {}).get((pi, pe, None))
                if ro is None or rp is None:
                    continue
                rm = ratio(rp["stats"]["median"], ro["stats"]["median"])
                rn = ratio(rp["stats"]["min"], ro["stats"]["min"])
                status = "MET" if rm is not None and rm >= thr else "NOT MET"
                mark = "**" if enc == TARGET_ENC else ""
                lines.append(f"| {mark}{title}{mark} | {g} | {enc} | {mark}{_fmt_ratio(rm)}{mark} | "
                             f"{_fmt_ratio(rn)} | {status} |")
    lines.append("")

    lines += ["## Ratios per group", "",
              "Columns: our median time; effective GFLOP/s (2 x dense MACs / time); real "
              "GFLOP/s (2 x nnz x rows / time); payload (file bytes of weight + bias; torch: its "
              "tensors); then peer time / this row's time. Dense rows (sparsity `-`) are the "
              "peers themselves.", ""]
    for g in order:
        recs = by_group[g]
        t_f32 = med(g, TORCH, "dense_f32")
        o_i8 = med(g, OURS, "dense_int8")
        o_f32 = med(g, OURS, "dense_f32")
        lines += [f"### {g}", "",
                  "| impl | encoding | sparsity | median ms | eff GFLOP/s | real GFLOP/s | payload MB "
                  "| torch f32 dense / this | our dense int8 / this | our dense f32 / this "
                  "| torch CSR / this | kernel |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        keys = sorted(recs, key=lambda k: (k[2] is not None, k[2] or 0, k[0] != OURS, k[1]))
        for (impl, enc, s) in keys:
            r = recs[(impl, enc, s)]
            e, m = r["extra_info"], r["stats"]["median"]
            t_csr = med(g, TORCH, "csr_f32", s) if s is not None else None
            bold = impl == OURS and enc == TARGET_ENC and s == 0.9 and g.startswith(FC) and " t1 " in g
            b = "**" if bold else ""
            lines.append(
                f"| {b}{impl}{b} | {b}{enc}{b} | {'-' if s is None else f'{int(round(s * 100))}%'} | "
                f"{m * 1e3:.3f} | {e['effective_GFLOP/s']:.1f} | {e['real_GFLOP/s']:.1f} | "
                f"{e['payload_bytes'] / 1e6:.2f} | {b}{_fmt_ratio(ratio(t_f32, m))}{b} | "
                f"{b}{_fmt_ratio(ratio(o_i8, m))}{b} | {_fmt_ratio(ratio(o_f32, m))} | "
                f"{_fmt_ratio(ratio(t_csr, m))} | {e.get('kernel', '')} |")
        lines.append("")
    return "\n".join(x for x in lines if x is not None) + "\n"


def render_json(path: Path) -> str:
    data = json.loads(Path(path).read_text())
    recs = []
    for bm in data.get("benchmarks", []):
        e = bm.get("extra_info") or {}
        if "group" not in e or "impl" not in e:
            continue
        recs.append({"extra_info": e, "stats": bm["stats"]})
    return render(recs, source=str(path))


if __name__ == "__main__":
    src = Path(sys.argv[1] if len(sys.argv) > 1 else BENCH_DIR / "results" / "sparse_bench.json")
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else RESULTS_MD
    out.write_text(render_json(src))
    print(f"wrote {out}")
