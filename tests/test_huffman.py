"""Canonical Huffman streams in numpy (deepsqueeze.huffman, docs/FORMAT_1_1_DRAFT.md).

Round trips over the same edge cases as tests/cpp/test_huffman.cc, the code properties
(lengths <= max_len, Kraft sum, canonical assignment, optimality when no cap binds),
corrupted streams, and byte equality with the C++ encoder: always through the golden
streams both test files share, and directly through `_core.huffman_encode` /
`_core.huffman_decode` once the module binds them.
"""
from __future__ import annotations

import heapq
import zlib

import numpy as np
import pytest

from deepsqueeze import huffman as H

try:
    from deepsqueeze import _core
except ImportError:  # pragma: no cover - the engine module is not built
    _core = None

HAS_CORE_HUFFMAN = _core is not None and hasattr(_core, "huffman_encode") and hasattr(_core, "huffman_decode")
needs_core = pytest.mark.skipif(
    not HAS_CORE_HUFFMAN,
    reason="deepsqueeze._core does not bind huffman_encode/huffman_decode yet (C++ side covered by "
           "tests/cpp/test_huffman.cc and the shared golden streams)")


def rng_for(*key) -> np.random.Generator:
    """A generator per test case, so each case sees the same data however tests are selected."""
    return np.random.default_rng([20240611, *[k if isinstance(k, int) else zlib.crc32(str(k).encode())
                                              for k in key]])


# --------------------------------------------------------------------------- helpers
def golden_symbols(n: int, alphabet: int) -> np.ndarray:
    """Same generator as golden_symbols() in tests/cpp/test_huffman.cc."""
    x, out = 12345, []
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        v = (x >> 8) | (1 << 23)
        out.append(((v & -v).bit_length() - 1) % alphabet)
    return np.array(out, dtype=np.uint8)


GOLDEN_HEX = (
    "060020004000000005000000010203050506060606000000000000000000000000000000000000000000000000000000"
    "00000000000000009a000000000000001201000000000000a00100000000000026020000000000009ad0650b8dfdaf6b"
    "943c2738729e739b3bd24b0dea20845d5b09a15425a657a577ca055ce64ea764f1f39c44452586be8ecf2ec496ec8612"
    "b79dd58cdcda68ee21c47906c105a91bb1000aea98e700")
# The same stream with its 9 present symbols' lengths in the sparse form (format 1.2),
# which the encoder picks because it is shorter (32 bytes of lengths instead of 48).
GOLDEN_SPARSE_HEX = (
    "060120004000000005000000080001010202030305040505060606070608060000000000000000009a000000000000001201"
    "000000000000a00100000000000026020000000000009ad0650b8dfdaf6b943c2738729e739b3bd24b0dea20845d5b09a154"
    "25a657a577ca055ce64ea764f1f39c44452586be8ecf2ec496ec8612b79dd58cdcda68ee21c47906c105a91bb1000aea98e700")
HAND_HEX = "0f00030040000000010000000102020000000000000000002c"
# counts {2, 1, 1} of alphabet 256: listed 3 -> (0, 1) (1, 2) (2, 2), padded to 24 bytes
HAND_SPARSE_HEX = "0f010001400000000100000002000101020202000000000000000000000000002c"


def fib(k: int):
    f = [1, 1]
    while len(f) < k:
        f.append(f[-1] + f[-2])
    return f[:k]


def fibonacci_symbols(k: int, rng=None) -> np.ndarray:
    sym = np.repeat(np.arange(k, dtype=np.uint8), fib(k))
    return (rng or rng_for("fib", k)).permutation(sym)


def random_symbols(n: int, alphabet: int, kind: int, rng=None) -> np.ndarray:
    rng = rng or rng_for("sym", n, alphabet, kind)
    if kind == 0:
        x = rng.integers(0, alphabet, n)
    elif kind == 1:  # skewed codebook indices
        x = np.rint(rng.normal(alphabet / 2, max(0.4, alphabet / 10), n))
    else:
        x = rng.geometric(rng.uniform(0.05, 0.9), n) - 1
    return np.clip(x, 0, alphabet - 1).astype(np.uint8)


def huffman_cost(counts) -> int:
    """Total bits of an unlimited Huffman code (reference for optimality)."""
    h = [int(c) for c in counts if c]
    if len(h) <= 1:
        return sum(h)
    heapq.heapify(h)
    tot = 0
    while len(h) > 1:
        a, b = heapq.heappop(h), heapq.heappop(h)
        tot += a + b
        heapq.heappush(h, a + b)
    return tot


def round_trip(sym, alphabet, max_len=15, chunk_symbols=4096) -> bytes:
    sym = np.asarray(sym, dtype=np.uint8)
    st = H.encode(sym, alphabet, max_len, chunk_symbols)
    got = H.decode(st, sym.size, alphabet)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, sym)
    assert len(st) == H.coded_nbytes(sym, alphabet, max_len, chunk_symbols)
    return st


def check_code_properties(lengths: np.ndarray, max_len: int) -> None:
    lengths = np.asarray(lengths)
    present = lengths[lengths > 0].astype(np.int64)
    assert present.size >= 1
    assert lengths.max() <= max_len
    kraft = sum(2.0 ** -int(v) for v in present)
    assert kraft <= 1.0
    if present.size >= 2:
        assert kraft == 1.0  # package-merge codes are complete
    # Canonical: in (length, symbol) order codes are consecutive, shifted at length changes;
    # the codes are prefix-free.
    codes = H.canonical_codes(lengths)
    order = sorted(np.flatnonzero(lengths), key=lambda s: (int(lengths[s]), int(s)))
    code, prev_len = 0, int(lengths[order[0]])
    for i, s in enumerate(order):
        v = int(lengths[s])
        if i:
            code = (code + 1) << (v - prev_len)
        assert int(codes[s]) == code and code < (1 << v)
        prev_len = v
    words = [format(int(codes[s]), f"0{int(lengths[s])}b") for s in order]
    for i, a in enumerate(words):
        for b in words[i + 1:]:
            assert not b.startswith(a)


# --------------------------------------------------------------------------- golden streams
def test_hand_example():
    # counts {2, 1, 1}: lengths 1, 2, 2; codes 0, 10, 11; bits 0 0 10 11 -> 0x2c
    st = H.encode([0, 0, 1, 2], 3, 15, 64)
    assert st.hex() == HAND_HEX
    assert H.decode(st, 4, 3).tolist() == [0, 0, 1, 2]


def test_golden_stream_shared_with_cpp():
    sym = golden_symbols(300, 32)
    st = H.encode(sym, 32, max_len=6, chunk_symbols=64, lengths_form=0)
    assert st.hex() == GOLDEN_HEX  # also checked against dsq::huffman::encode in C++
    np.testing.assert_array_equal(H.decode(bytes.fromhex(GOLDEN_HEX), 300, 32), sym)
    st = H.encode(sym, 32, max_len=6, chunk_symbols=64)
    assert st.hex() == GOLDEN_SPARSE_HEX  # likewise
    np.testing.assert_array_equal(H.decode(st, 300, 32), sym)
    assert H.code_lengths(sym, 32, 6).max() == 6  # the cap binds (unlimited Huffman: 8)


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 100, 4096, 5000, 20003])
def test_one_symbol_alphabet(n):
    st = round_trip(np.zeros(n, np.uint8), 1)
    assert st[12] == 1
    assert len(st) == 16 + 8 * (-(-n // 4096)) + (n + 7) // 8
    st = round_trip(np.full(n, 77, np.uint8), 256, chunk_symbols=64)
    assert list(st[1:2] + st[12:15]) == [1, 0, 77 if n else 0, 1]  # sparse: one symbol listed
    assert len(st) == 16 + 8 * (-(-n // 64)) + (n + 7) // 8
    st = H.encode(np.full(n, 77, np.uint8), 256, chunk_symbols=64, lengths_form=0)
    lengths = np.frombuffer(st, np.uint8, 256, 12)
    assert np.flatnonzero(lengths).tolist() == [77 if n else 0] and lengths.max() == 1


def test_max_len_1_and_too_many_symbols():
    round_trip([0, 1, 1, 0, 1], 2, max_len=1, chunk_symbols=64)
    with pytest.raises(ValueError, match="do not fit"):
        H.encode([0, 1, 2], 3, max_len=1)
    sym = np.arange(256 * 10, dtype=np.int64) % 256
    round_trip(sym, 256, max_len=8, chunk_symbols=64)
    with pytest.raises(ValueError, match="do not fit"):
        H.encode(sym, 256, max_len=7)


def test_all_256_symbols():
    sym = (np.arange(256 * 40) * 7 % 256).astype(np.uint8)
    st = round_trip(sym, 256, chunk_symbols=64)
    assert set(st[12:12 + 256]) == {8}
    skew = np.concatenate([random_symbols(100000, 256, 1), np.arange(256, dtype=np.uint8)])
    st = round_trip(skew, 256)
    check_code_properties(np.frombuffer(st, np.uint8, 256, 12), 15)


def test_length_capping_fibonacci():
    lengths = H.lengths_from_counts(fib(30), 15)
    assert lengths.tolist() == [15, 15, 15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8, 7, 7,
                                6, 6, 5, 5, 4, 4, 3, 3, 2, 2]  # same as the C++ test
    for ml in (15, 12, 9, 5):
        lengths = H.lengths_from_counts(fib(30), ml)
        assert lengths.max() == ml
        check_code_properties(lengths, ml)
    sym = fibonacci_symbols(24)
    st = round_trip(sym, 24)
    assert max(st[12:36]) == 15
    for ml, cs in ((11, 128), (12, 128), (5, 128)):
        round_trip(sym, 24, ml, cs)
    round_trip(sym, 256, 15, 64)


def test_streams_ending_mid_byte():
    for n in range(1, 80):
        sym = (np.arange(n) % 3 == 1).astype(np.uint8)
        st = round_trip(sym, 2, chunk_symbols=64)
        assert len(st) == 16 + 8 * (-(-n // 64)) + (n + 7) // 8
    rng = rng_for("mid")
    for t in range(30):
        a = int(rng.integers(1, 257))
        sym = random_symbols(int(rng.integers(0, 3000)), a, t % 3, rng)
        st = round_trip(sym, a, chunk_symbols=64)
        lengths = H.parse(st, sym.size, a).lengths
        bits = int(np.sum(lengths[sym].astype(np.int64)))
        assert bits == H.coded_bits(sym, a)
        present = int(np.count_nonzero(lengths))
        head = H.lengths_nbytes(a, present, H.lengths_form_for(a, present))
        assert len(st) == head + 8 * (-(-sym.size // 64)) + (bits + 7) // 8


@pytest.mark.parametrize("alphabet", [2, 3, 5, 16, 17, 32, 100, 256])
@pytest.mark.parametrize("kind", [0, 1, 2])
def test_random_distributions_and_chunks(alphabet, kind):
    rng = rng_for("random", alphabet, kind)
    n = int(rng.integers(1, 30000))
    sym = random_symbols(n, alphabet, kind, rng)
    present = int(np.count_nonzero(np.bincount(sym, minlength=alphabet)))
    min_len = max(1, (present - 1).bit_length())
    ml = int(rng.integers(min_len, 16))
    cs = 64 << int(rng.integers(0, 8))
    st = round_trip(sym, alphabet, ml, cs)
    lengths = H.code_lengths(sym, alphabet, ml)
    check_code_properties(lengths, ml)
    counts = np.bincount(sym, minlength=alphabet).astype(np.int64)
    assert int(np.dot(counts, lengths)) >= huffman_cost(counts)
    s = H.parse(st, n, alphabet)
    for k in range(5):
        c = int(rng.integers(0, s.chunk_count))
        avail = n - c * cs
        m = avail if k % 2 else int(rng.integers(1, avail + 1))
        np.testing.assert_array_equal(H.decode(st, n, alphabet, chunk=c, n=m), sym[c * cs:c * cs + m])
    with pytest.raises(ValueError, match="outside the stream"):
        H.decode(st, n, alphabet, chunk=0, n=n + 1)
    with pytest.raises(ValueError, match="outside the stream"):
        H.decode(st, n, alphabet, chunk=s.chunk_count, n=1)


def test_optimal_when_the_cap_does_not_bind():
    rng = rng_for("optimal")
    for _ in range(200):
        a = int(rng.integers(2, 257))
        counts = rng.integers(0, 1000, a) * (rng.random(a) < 0.7)
        if np.count_nonzero(counts) < 2:
            continue
        lengths = H.lengths_from_counts(counts, 15)
        check_code_properties(lengths, 15)
        assert np.all((lengths > 0) == (counts > 0))
        if lengths.max() < 15:
            assert int(np.dot(counts, lengths.astype(np.int64))) == huffman_cost(counts)


def test_input_forms_and_arguments():
    ref = H.encode(np.array([1, 2, 2, 3], np.uint8), 4, 15, 64)
    assert H.encode(bytes([1, 2, 2, 3]), 4, 15, 64) == ref
    assert H.encode([[1, 2], [2, 3]], 4, 15, 64) == ref
    assert H.encode(np.array([1, 2, 2, 3], np.int64), 4, 15, 64) == ref
    with pytest.raises(ValueError, match="outside the alphabet"):
        H.encode([0, 1, 5], 5)
    with pytest.raises(ValueError, match="outside the alphabet"):
        H.encode([0, -1], 5)
    with pytest.raises(ValueError, match="integers"):
        H.encode(np.array([0.5]), 5)
    for bad in (dict(alphabet=0), dict(alphabet=257), dict(max_len=0), dict(max_len=16), dict(chunk_symbols=32),
                dict(chunk_symbols=96)):
        kw = dict(alphabet=6, max_len=15, chunk_symbols=64)
        kw.update(bad)
        with pytest.raises(ValueError):
            H.encode([0, 1, 5], **kw)


# --------------------------------------------------------------------------- corrupted streams
@pytest.fixture(scope="module")
def good():
    sym = random_symbols(3000, 32, 1)
    st = H.encode(sym, 32, 15, 64)
    return sym, st


def _u64(st: bytearray, at: int, v: int = None):
    if v is None:
        return int.from_bytes(st[at:at + 8], "little")
    st[at:at + 8] = int(v % (1 << 64)).to_bytes(8, "little")


PAD_END = 48            # round8(12 + 32)
CHUNKS = 47             # ceil(3000 / 64)
TABLE_END = PAD_END + 8 * CHUNKS


def test_baseline(good):
    sym, st = good
    np.testing.assert_array_equal(H.decode(st, 3000, 32), sym)


@pytest.mark.parametrize("keep", [0, 5, 11, 12, 30, 44, 47, PAD_END + 3, TABLE_END - 1, TABLE_END, TABLE_END + 10, -1])
def test_truncated(good, keep):
    _, st = good
    with pytest.raises(ValueError, match="huffman stream at byte"):
        H.decode(st[:keep], 3000, 32)


CORRUPTIONS = {
    "max_len 0": (lambda b: b.__setitem__(0, 0), "at byte 0: max_len 0"),
    "max_len 16": (lambda b: b.__setitem__(0, 16), "at byte 0"),
    "lengths_form 2": (lambda b: b.__setitem__(1, 2), "at byte 1: lengths_form 2 unknown"),
    "chunk_symbols 100": (lambda b: b.__setitem__(4, 100), "at byte 4"),
    "chunk_symbols 32": (lambda b: b.__setitem__(4, 32), "at byte 4"),
    "zero lengths": (lambda b: b.__setitem__(slice(12, 44), bytes(32)), "no symbol has a code length"),
    "kraft > 1": (lambda b: b.__setitem__(slice(12, 15), bytes([1, 1, 1])), "Kraft"),
    "padding": (lambda b: b.__setitem__(44, 1), "at byte 44: nonzero padding"),
    "first offset": (lambda b: _u64(b, PAD_END, 3), "chunk_bit_offset\\[0\\]"),
    "decreasing": (lambda b: _u64(b, PAD_END + 40, _u64(b, PAD_END + 32) - 1), f"at byte {PAD_END + 40}"),
    "offset == bit_len": (lambda b: _u64(b, PAD_END + 8 * (CHUNKS - 1), 8 * (len(b) - TABLE_END)),
                          "outside the bit string"),
    "offset huge": (lambda b: _u64(b, PAD_END + 8 * (CHUNKS - 1), -1), "outside the bit string"),
    "offset inconsistent": (lambda b: _u64(b, PAD_END + 56, _u64(b, PAD_END + 56) + 1), "chunk 6 ends at bit"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_fields(good, name):
    _, st = good
    b = bytearray(st)
    fn, msg = CORRUPTIONS[name]
    fn(b)
    with pytest.raises(ValueError, match=msg):
        H.decode(bytes(b), 3000, 32)


def test_length_above_max_len(good):
    _, st = good
    b = bytearray(st)
    lengths = list(b[12:44])
    b[0] = max(lengths) - 1
    with pytest.raises(ValueError, match=f"at byte {12 + lengths.index(max(lengths))}: code length"):
        H.decode(bytes(b), 3000, 32)


def test_wrong_alphabet_and_count(good):
    _, st = good
    with pytest.raises(ValueError, match="alphabet 32, expected 16"):
        H.decode(st, 3000, 16)
    with pytest.raises(ValueError, match="at byte 8: chunk_count"):
        H.decode(st, 3000 + 64, 32)
    with pytest.raises(ValueError, match="symbols need at least"):
        H.decode(st[:TABLE_END + 10], 3000, 32)


def test_bits_run_out():
    sym = random_symbols(4000, 3, 0)
    st = H.encode(sym, 3, 15, 64)
    for cut in (1, 2, 3):
        with pytest.raises(ValueError, match="bit string ends"):
            H.decode(st[:-cut], 4000, 3)


@pytest.mark.parametrize("where", [0, 13, 20000, 39990, 39999])
def test_invalid_code_one_symbol(where):
    st = bytearray(H.encode(np.zeros(40000, np.uint8), 4, 15, 4096))  # one symbol, code '0'
    te = 16 + 8 * 10
    st[te + where // 8] |= 0x80 >> (where % 8)
    with pytest.raises(ValueError, match=f"invalid code \\(unassigned prefix\\) at bit {where} "):
        H.decode(bytes(st), 40000, 4)


def test_fuzz_never_crashes():
    rng = rng_for("fuzz")
    rejected = accepted = 0
    for t in range(300):
        a = 256 if t % 3 == 0 else int(rng.integers(1, 41))
        sym = random_symbols(int(rng.integers(0, 1500)), a, t % 3, rng)
        b = bytearray(H.encode(sym, a, int(rng.integers(9, 16)), 64))
        mode = t % 3
        if mode == 0 and b:
            for _ in range(int(rng.integers(1, 5))):
                b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(0, 8))
        elif mode == 1:
            b = b[:int(rng.integers(0, len(b) + 1))]
        else:
            b.append(int(rng.integers(0, 256)))
        try:
            H.decode(bytes(b), sym.size, a)
            accepted += 1
        except ValueError:
            rejected += 1
    assert rejected > 50 and accepted > 50


# --------------------------------------------------------------------------- C++ parity
PARITY_CASES = [
    (golden_symbols(300, 32), 32, 6, 64),
    (np.zeros(1000, np.uint8), 1, 15, 64),
    (np.arange(5000) % 256, 256, 15, 4096),
    (fibonacci_symbols(24), 24, 15, 4096),
    (fibonacci_symbols(20), 32, 9, 128),
    (random_symbols(100000, 32, 1), 32, 15, 4096),
    (random_symbols(7777, 16, 2), 16, 12, 256),
    (np.zeros(0, np.uint8), 8, 15, 64),
]


@needs_core
@pytest.mark.parametrize("case", range(len(PARITY_CASES)))
def test_core_encode_matches_python(case):
    sym, a, ml, cs = PARITY_CASES[case]
    sym = np.ascontiguousarray(sym, dtype=np.uint8)
    assert bytes(_core.huffman_encode(sym, a, ml, cs)) == H.encode(sym, a, ml, cs)


@needs_core
@pytest.mark.parametrize("case", range(len(PARITY_CASES)))
def test_core_decode_matches_python(case):
    sym, a, ml, cs = PARITY_CASES[case]
    sym = np.ascontiguousarray(sym, dtype=np.uint8)
    st = H.encode(sym, a, ml, cs)
    got = np.asarray(_core.huffman_decode(st, sym.size, a))
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, sym)
    np.testing.assert_array_equal(H.decode(bytes(_core.huffman_encode(sym, a, ml, cs)), sym.size, a), sym)
    assert bytes(_core.huffman_encode(sym, a, ml, cs)) == st  # the same form and bytes
    if sym.size:  # a corrupted stream is rejected by both
        bad = bytearray(st)
        bad[12:12 + a] = bytes(a)
        with pytest.raises(ValueError):
            _core.huffman_decode(bytes(bad), sym.size, a)
        with pytest.raises(ValueError):
            H.decode(bytes(bad), sym.size, a)


# --------------------------------------------------------------------------- sparse lengths (1.2)
@pytest.mark.parametrize("alphabet,distinct", [(256, 1), (256, 16), (256, 125), (256, 126), (256, 256),
                                               (16, 1), (16, 2), (16, 16), (4, 1), (64, 20), (64, 30)])
def test_sparse_lengths_form(alphabet, distinct):
    i = np.arange(5000)
    sym = (alphabet - distinct + np.where(i % (2 * distinct) < distinct, i % distinct, 0)).astype(np.uint8)
    dense = H.encode(sym, alphabet, chunk_symbols=256, lengths_form=0)
    sparse = H.encode(sym, alphabet, chunk_symbols=256, lengths_form=1)
    chosen = round_trip(sym, alphabet, chunk_symbols=256)
    assert (dense[1], sparse[1]) == (0, 1)
    assert len(sparse) - len(dense) == H.lengths_nbytes(alphabet, distinct, 1) - H.lengths_nbytes(alphabet, distinct, 0)
    assert chosen == (sparse if len(sparse) < len(dense) else dense)
    np.testing.assert_array_equal(H.decode(sparse, sym.size, alphabet), sym)
    np.testing.assert_array_equal(H.parse(sparse, sym.size, alphabet).lengths,
                                  H.parse(dense, sym.size, alphabet).lengths)
    # the choice: sparse while 13 + 2 * present, padded, is below the padded dense table
    assert H.lengths_form_for(256, 125) == 1 and H.lengths_form_for(256, 126) == 0
    assert H.lengths_form_for(4, 1) == 0 and H.lengths_form_for(256, 16) == 1


def test_sparse_hand_example():
    st = H.encode([0, 0, 1, 2], 256, chunk_symbols=64)
    assert st.hex() == HAND_SPARSE_HEX  # also checked against dsq::huffman::encode in C++
    assert H.decode(st, 4, 256).tolist() == [0, 0, 1, 2]


@pytest.fixture(scope="module")
def good_sparse():
    sym = random_symbols(3000, 16, 0)
    st = H.encode(sym, 256, 15, 64, lengths_form=1)
    return sym, st


def _setb(**at):
    def fn(b):
        for k, v in at.items():
            b[int(k[1:])] = v
    return fn


SPARSE_CORRUPTIONS = {
    "no listed count": (lambda b: b.__delitem__(slice(12, None)), "at byte 12: truncated code lengths"),
    "truncated pairs": (lambda b: b.__delitem__(slice(13 + 2 * 16 - 1, None)), "truncated code lengths"),
    "repeated symbol": (lambda b: b.__setitem__(19, b[17]), "at byte 19: symbol .* increasing order"),
    "decreasing symbol": (_setb(b15=0), "at byte 15: symbol 0 does not follow symbol 0"),
    "length 0": (_setb(b14=0), "at byte 14: code length 0"),
    "length above max_len": (_setb(b14=15, b0=14), "at byte 14: code length 15 .* not in 1..max_len 14"),
    "listed beyond the stream": (lambda b: (b.__setitem__(12, 255), b.__delitem__(slice(13 + 2 * 17, None))),
                                 "truncated code lengths"),
    "padding": (_setb(b45=1), "at byte 45: nonzero padding"),
    "kraft > 1": (_setb(b14=1, b16=1), "Kraft"),
    "lengths_form 3": (_setb(b1=3), "at byte 1: lengths_form 3"),
}


@pytest.mark.parametrize("name", sorted(SPARSE_CORRUPTIONS))
def test_sparse_corrupt_fields(good_sparse, name):
    sym, st = good_sparse
    np.testing.assert_array_equal(H.decode(st, sym.size, 256), sym)
    assert st[12] == 15  # 16 symbols listed; the pairs end at byte 45
    b = bytearray(st)
    fn, msg = SPARSE_CORRUPTIONS[name]
    fn(b)
    with pytest.raises(ValueError, match=msg):
        H.decode(bytes(b), sym.size, 256)
    if _core is not None and hasattr(_core, "huffman_decode"):
        with pytest.raises(ValueError):
            _core.huffman_decode(bytes(b), sym.size, 256)


def test_sparse_symbol_outside_alphabet():
    sym = random_symbols(500, 3, 0)
    b = bytearray(H.encode(sym, 4, 15, 64, lengths_form=1))
    b[17] = 4
    with pytest.raises(ValueError, match="at byte 17: symbol 4 is outside the alphabet of 4"):
        H.decode(bytes(b), sym.size, 4)
    b = bytearray(H.encode(sym, 4, 15, 64, lengths_form=1))
    b[12] = 4
    with pytest.raises(ValueError, match="at byte 12: 5 symbols listed, the alphabet has 4"):
        H.decode(bytes(b), sym.size, 4)
