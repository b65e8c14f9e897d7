"""decode="stream": sparse / codebook layers keep their weight streams as stored (Huffman
coded or bit-packed) and decode them tile by tile inside each run, into the layouts the
decode="load" path packs once, for the same kernels. So every output must be
bit-identical to decode="load" (np.array_equal), for every layout x values x Huffman
encoding, batch 1 (spmv, row tiles, dense code tiles, zero-skipping CSC) and odd batches
(spmm, several 256-row chunks), kxk convs (columns remapped and re-sorted per tile), and
1..3 threads (tiles are dealt to threads; each row is one sum computed the same way).

Counters: counters['huffman_symbols'] counts the Huffman symbols a run decoded: with
decode="stream" each run decodes every coded stream once per 256-row chunk of the batch
(once at batch 1), so it is chunks x (sum of the coded streams' symbol counts); with
decode="load" it is 0. MACs and skipped MACs are the same in both modes.
"""
from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

import deepsqueeze
from deepsqueeze.encode import payload_bytes

from test_sparse_layers import LAYOUTS, VALUES, build, encode_args, sparse_matrix

THREADS = (1, 2, 3)


def coded_symbols(t) -> int:
    """Symbols of the tensor's Huffman-coded streams."""
    return sum(s.count for s in t.streams if s.entropy == "huffman")


def same_in_both_modes(data, x, what, threads=THREADS, force_kernel=""):
    """Runs x with decode="load" (1 thread) and decode="stream" (each thread count);
    asserts bit-identical outputs and equal MAC counters. Returns the two 1-thread models."""
    load = deepsqueeze.load(data, threads=1, force_kernel=force_kernel)
    want = load.run(x)
    stream1 = None
    for t in threads:
        m = deepsqueeze.load(data, threads=t, force_kernel=force_kernel, decode="stream")
        assert m.decode == "stream" and m.threads == t, what
        got = m.run(x)
        assert got.dtype == want.dtype and got.shape == want.shape, what
        assert np.array_equal(got, want), (
            f"{what}: threads={t}: stream differs from load in {int(np.sum(got != want))} of {got.size} "
            f"(max {np.nanmax(np.abs(got.astype(np.float64) - want)):.3g})")
        if stream1 is None:
            stream1 = m
    cl, cs = load.counters, stream1.counters
    for key in ("macs_f32", "skipped_macs", "runs"):
        assert cs[key] == cl[key], (what, key, cs[key], cl[key])
    assert cl["huffman_symbols"] == 0, what
    return load, stream1


# ---------------------------------------------------------------------------------------
# every encoding: linear 37 x 300 (fillers, empty rows, a dense row), batch 1 and 67
# ---------------------------------------------------------------------------------------

GRID = list(itertools.product(LAYOUTS, VALUES, (False, True)))


@pytest.mark.parametrize("layout,vals,huff", GRID, ids=[f"{a}-{b}-{'huff' if c else 'raw'}" for a, b, c in GRID])
def test_linear_every_encoding(layout, vals, huff):
    seed = zlib.crc32(f"stream/{layout}/{vals}/{huff}".encode())
    rng = np.random.default_rng(seed)
    values, enc, cb_bits, per_row = encode_args(layout, vals, huff)
    N, K = 37, 300
    w = sparse_matrix(rng, N, K, 0.25, cb_bits, per_row, zero_in_table=layout.startswith("blk"))
    b = rng.standard_normal(N).astype(np.float32)
    data, t, _, _ = build("linear", w, enc, bias=b, attrs={"activation": seed % 3}, in_dims=(-1, K),
                          values=values, huffman=huff)
    for batch in (1, 67):
        x = rng.standard_normal((batch, K)).astype(np.float32)
        what = f"linear {layout} {vals} huffman={huff} batch={batch}"
        _, s = same_in_both_modes(data, x, what)
        assert s.counters["huffman_symbols"] == coded_symbols(t), what
        L = s.layers([x.shape])[0]
        assert L["decode"] == "stream" and L["kernel"].startswith("stream-decode "), (what, L["kernel"])


# kxk conv (columns remapped to (kh, kw, cin) and re-sorted inside each tile) and 1x1
# conv (M = 289: two 256-row chunks, each decoding the tiles again; M = 1: spmv).
CONV_ENCODINGS = [("csr", "f32"), ("rel2", "cb5"), ("rel4", "int4"), ("rel8", "cbrow8"), ("blk1x4", "int8"),
                  ("blk4x1", "cb8"), ("blk8x1", "f16"), ("csr", "cbrow3")]


@pytest.mark.parametrize("layout,vals", CONV_ENCODINGS, ids=[f"{a}-{b}" for a, b in CONV_ENCODINGS])
def test_conv_kxk_and_pointwise(layout, vals):
    i = CONV_ENCODINGS.index((layout, vals))
    rng = np.random.default_rng(3000 + i)
    values, enc, cb_bits, per_row = encode_args(layout, vals, True)
    cin, cout = 6, 21
    w = sparse_matrix(rng, cout, cin * 9, 0.3, cb_bits, per_row,
                      zero_in_table=layout.startswith("blk")).reshape(cout, cin, 3, 3)
    b = rng.standard_normal(cout).astype(np.float32)
    attrs = {"stride": [2, 1], "padding": [1, 0], "dilation": [1, 2], "activation": i % 3}
    data, t, _, _ = build("conv2d", w, enc, bias=b, attrs=attrs, in_dims=(-1, cin, 11, 10), values=values,
                          huffman=True)
    for batch in (1, 3):
        x = rng.standard_normal((batch, cin, 11, 10)).astype(np.float32)
        same_in_both_modes(data, x, f"conv3x3 {layout} {vals} batch={batch}")

    w1 = sparse_matrix(rng, cout, cin * 4, 0.4, cb_bits, per_row,
                       zero_in_table=layout.startswith("blk")).reshape(cout, cin * 4, 1, 1)
    data, t, _, _ = build("conv2d", w1, enc, bias=b, attrs={"activation": 1}, in_dims=(-1, cin * 4, -1, -1),
                          values=values, huffman=True)
    for shape, chunks in (((1, cin * 4, 17, 17), 2), ((1, cin * 4, 1, 1), 1), ((3, cin * 4, 1, 1), 1)):
        x = rng.standard_normal(shape).astype(np.float32)
        _, s = same_in_both_modes(data, x, f"conv1x1 {layout} {vals} x{shape}")
        assert s.counters["huffman_symbols"] == chunks * coded_symbols(t), (shape, s.counters)


# ---------------------------------------------------------------------------------------
# many tiles: the row-tile (batch 1) and CSR (batch > 1) kernels over tile boundaries
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout,vals", [("rel4", "cb5"), ("csr", "int8"), ("blk8x1", "cb5"), ("rel8", "cbrow3")])
def test_many_tiles(layout, vals):
    """A 250 x 1500 layer at 35 % (~130k entries): several tiles of ~16k entries, so
    Huffman decoding starts mid-stream at recorded bit offsets (not chunk starts)."""
    rng = np.random.default_rng(zlib.crc32(f"tiles/{layout}/{vals}".encode()))
    values, enc, cb_bits, per_row = encode_args(layout, vals, True)
    N, K = 250, 1500
    w = sparse_matrix(rng, N, K, 0.35, cb_bits, per_row, zero_in_table=layout.startswith("blk"))
    b = rng.standard_normal(N).astype(np.float32)
    data, t, _, _ = build("linear", w, enc, bias=b, in_dims=(-1, K), values=values, huffman=True)
    m = deepsqueeze.load(data, threads=1, decode="stream")
    tiles = int(m.layers()[0]["kernel"].split()[1])
    assert tiles >= 5, m.layers()[0]["kernel"]
    for batch in (1, 2, 67):
        x = rng.standard_normal((batch, K)).astype(np.float32)
        same_in_both_modes(data, x, f"{layout} {vals} batch={batch}")


def test_zero_skipping_in_stream_mode():
    """Batch 1 with >= 80 % zero inputs takes the CSC zero-skipping kernel in both modes
    (stream: one CSC per tile): same outputs, same skipped MACs."""
    rng = np.random.default_rng(7)
    values, enc, cb_bits, per_row = encode_args("rel4", "cb5", True)
    N, K = 200, 1200
    w = sparse_matrix(rng, N, K, 0.2, cb_bits, per_row)
    data, t, _, _ = build("linear", w, enc, bias=rng.standard_normal(N).astype(np.float32), in_dims=(-1, K),
                          values=values, huffman=True)
    for zero_fraction in (0.9, 0.3):
        x = rng.standard_normal((1, K)).astype(np.float32)
        x[0, rng.random(K) < zero_fraction] = 0.0
        load, s = same_in_both_modes(data, x, f"zero fraction {zero_fraction}")
        if zero_fraction > 0.8:
            assert s.counters["skipped_macs"] > 0


def test_dense_codebook_stream():
    """Dense layout + codebook (weight sharing, no pruning): gemv_cb dense code tiles at
    batch 1, CSR spmm_cb at batch > 1, both decoded per tile."""
    rng = np.random.default_rng(11)
    N, K = 70, 333
    table = rng.standard_normal(32).astype(np.float32)
    w = table[rng.integers(0, 32, (N, K))]
    data, t, _, _ = build("linear", w, {"layout": "dense", "codebook_bits": 5}, bias=None, in_dims=(-1, K),
                          values="codebook", huffman=True)
    for batch in (1, 5):
        x = rng.standard_normal((batch, K)).astype(np.float32)
        _, s = same_in_both_modes(data, x, f"dense codebook batch={batch}")
        assert s.counters["huffman_symbols"] == N * K


@pytest.mark.parametrize("kernel", ["spmv_cb_f32__scalar", "spmm_cb_f32_4__scalar", "spmv_csc_cb_f32__scalar"])
def test_forced_kernels(kernel):
    rng = np.random.default_rng(5)
    values, enc, cb_bits, per_row = encode_args("rel4", "cb5", True)
    w = sparse_matrix(rng, 90, 400, 0.3, cb_bits, per_row)
    data, _, _, _ = build("linear", w, enc, bias=None, in_dims=(-1, 400), values=values, huffman=True)
    for batch in (1, 3):
        x = rng.standard_normal((batch, 400)).astype(np.float32)
        same_in_both_modes(data, x, f"forced {kernel} batch={batch}", force_kernel=kernel)


# ---------------------------------------------------------------------------------------
# memory and API
# ---------------------------------------------------------------------------------------


def test_weight_memory_close_to_file_size():
    """The stream model holds the payload as stored (plus row_ptr, bias, table, a tile
    table and Huffman lookup tables): far below the packed layouts of decode="load"."""
    rng = np.random.default_rng(3)
    values, enc, cb_bits, per_row = encode_args("rel4", "cb5", True)
    N, K = 512, 2048
    w = sparse_matrix(rng, N, K, 0.1, cb_bits, per_row)
    data, t, _, _ = build("linear", w, enc, bias=rng.standard_normal(N).astype(np.float32), in_dims=(-1, K),
                          values=values, huffman=True)
    load = deepsqueeze.load(data, threads=1)
    stream = deepsqueeze.load(data, threads=1, decode="stream")
    payload = payload_bytes(t) + 4 * N  # weight streams + f32 bias
    assert stream.weight_memory < load.weight_memory / 3, (stream.weight_memory, load.weight_memory)
    # Overhead over the payload: 2 Huffman lookup tables (<= 24 KiB each) + tile table.
    assert payload <= stream.weight_memory <= payload + 64 * 1024, (stream.weight_memory, payload)
    assert stream.layers()[0]["packed_bytes"] == stream.weight_memory


def test_decode_argument_and_summary():
    rng = np.random.default_rng(1)
    values, enc, cb_bits, per_row = encode_args("rel4", "cb5", True)
    w = sparse_matrix(rng, 20, 50, 0.3, cb_bits, per_row)
    data, _, _, _ = build("linear", w, enc, bias=None, in_dims=(-1, 50), values=values, huffman=True)
    assert deepsqueeze.load(data).decode == "load"
    assert deepsqueeze.load(data).layers()[0]["decode"] == "load"
    m = deepsqueeze.load(data, decode="stream")
    assert "stream-decode" in m.summary()
    for bad in ("lazy", "", None, 1):
        with pytest.raises(ValueError, match="decode must be"):
            deepsqueeze.load(data, decode=bad)


def test_cli_decode_option(tmp_path, capsys):
    from deepsqueeze import cli

    rng = np.random.default_rng(2)
    values, enc, cb_bits, per_row = encode_args("rel4", "cb5", True)
    w = sparse_matrix(rng, 40, 64, 0.3, cb_bits, per_row)
    data, _, _, _ = build("linear", w, enc, bias=None, in_dims=(-1, 64), values=values, huffman=True)
    path = tmp_path / "m.dsq"
    path.write_bytes(data)
    assert cli.main(["inspect", str(path), "--decode", "stream"]) == 0
    out = capsys.readouterr().out
    assert "stream-decode" in out and "(decode=stream)" in out
    x = rng.standard_normal((3, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for mode in ("load", "stream"):
        assert cli.main(["run", str(path), "--input", str(tmp_path / "x.npy"), "--output",
                         str(tmp_path / f"y_{mode}.npy"), "--decode", mode]) == 0
    assert np.array_equal(np.load(tmp_path / "y_load.npy"), np.load(tmp_path / "y_stream.npy"))


def test_more_than_65536_rows():
    """A layer with more rows than u16 holds: the tile CSC of the zero-skipping path stores
    tile-local rows as u16 (tiles hold ~16k entries + rows, and are capped at 65536 rows),
    so the results must still match the whole-matrix CSC (u32 rows) of decode="load"."""
    rng = np.random.default_rng(13)
    values, enc, cb_bits, per_row = encode_args("csr", "cb5", True)
    N, K = 70000, 20
    w = sparse_matrix(rng, N, K, 0.01, cb_bits, per_row)
    data, t, _, _ = build("linear", w, enc, bias=rng.standard_normal(N).astype(np.float32), in_dims=(-1, K),
                          values=values, huffman=True)
    x = rng.standard_normal((1, K)).astype(np.float32)
    x[0, :18] = 0.0  # 90 % zeros: the zero-skipping path
    _, s = same_in_both_modes(data, x, "70000 rows, zero-skipping", threads=(1, 2))
    assert s.counters["skipped_macs"] > 0
    assert int(s.layers()[0]["kernel"].split()[1]) >= 2
    same_in_both_modes(data, rng.standard_normal((3, K)).astype(np.float32), "70000 rows, batch 3", threads=(1,))
