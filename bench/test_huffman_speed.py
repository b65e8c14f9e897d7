"""Huffman decode throughput (csrc/base/huffman.cc through `_core.huffman_decode`).

    pytest bench/test_huffman_speed.py --benchmark-only

One thread, one whole stream per call (parse + table build + decode_all into a fresh
numpy array), on codebook-index-like distributions: b-bit indices from a rounded
Gaussian centred in the codebook (weights cluster near zero, so a k-means codebook's
middle entries dominate). extra_info records M symbols/s (on the median and the best
round), bits/symbol and the distribution. These do not go through conftest.measure, so
they stay out of the first_bench ratio table. Skipped until the module binds the codec.
"""
from __future__ import annotations

import numpy as np
import pytest

from deepsqueeze import huffman as H

try:
    from deepsqueeze import _core
except ImportError:  # pragma: no cover
    _core = None

pytestmark = pytest.mark.skipif(
    _core is None or not (hasattr(_core, "huffman_encode") and hasattr(_core, "huffman_decode")),
    reason="deepsqueeze._core does not bind huffman_encode/huffman_decode yet")

COUNT = 1 << 22  # symbols per stream (4 Mi): ~1.7 MB coded at 3.3 bits/symbol, L2/L3 resident

# (label, bits, sigma of the rounded Gaussian in index units)
DISTRIBUTIONS = [
    ("idx5 gauss s2.2", 5, 2.2),   # ~3.2 bits/symbol: the typical 32-entry codebook case
    ("idx4 gauss s1.5", 4, 1.5),   # ~2.7 bits/symbol
    ("idx8 gauss s12", 8, 12.0),   # ~5.6 bits/symbol
]


def _symbols(bits: int, sigma: float) -> np.ndarray:
    rng = np.random.default_rng(1234 + bits)
    a = 1 << bits
    x = np.rint(rng.normal(a / 2, sigma, COUNT))
    return np.clip(x, 0, a - 1).astype(np.uint8)


@pytest.mark.parametrize("label,bits,sigma", DISTRIBUTIONS, ids=[d[0] for d in DISTRIBUTIONS])
def test_huffman_decode_throughput(benchmark, label, bits, sigma):
    alphabet = 1 << bits
    sym = _symbols(bits, sigma)
    stream = bytes(_core.huffman_encode(sym, alphabet, 15, 4096))
    assert stream == H.encode(sym, alphabet, 15, 4096)
    np.testing.assert_array_equal(np.asarray(_core.huffman_decode(stream, COUNT, alphabet)), sym)

    benchmark.group = "huffman decode (1 thread)"
    benchmark.pedantic(_core.huffman_decode, args=(stream, COUNT, alphabet), rounds=30, iterations=1,
                       warmup_rounds=2)
    st = benchmark.stats.stats
    counts = np.bincount(sym, minlength=alphabet) / COUNT
    nz = counts[counts > 0]
    benchmark.extra_info.update({
        "impl": "deepsqueeze",
        "distribution": label,
        "alphabet": alphabet,
        "symbols": COUNT,
        "entropy_bits_per_symbol": round(float(-(nz * np.log2(nz)).sum()), 3),
        "coded_bits_per_symbol": round(H.coded_bits(sym, alphabet) / COUNT, 3),
        "stream_bytes": len(stream),
        "msym_per_s_median": round(COUNT / st.median / 1e6, 1),
        "msym_per_s_best": round(COUNT / st.min / 1e6, 1),
    })
