"""Canonical Huffman streams of docs/FORMAT.md ("Huffman (entropy 1), per stream").

Layout of one coded stream (all integers little-endian)::

    u8  max_len (1..15)   u8 lengths_form   u16 alphabet   u32 chunk_symbols   u32 chunk_count
    code lengths, form 0: u8 lengths[alphabet] (0 = symbol absent)
                  form 1 (format 1.2): u8 present - 1, then present x {u8 symbol, u8 length},
                  symbols increasing; zero padding to a multiple of 8 bytes
    u64 chunk_bit_offset[chunk_count] bit offset of each chunk's first code
    bit string                        canonical codes, MSB first; bit i = bit (7 - i % 8) of byte i // 8

Only alphabets of 1..256 symbols (byte symbols), as the C++ side (csrc/base/huffman.h).

Code lengths (`lengths_from_counts`) use package-merge, which gives an optimal prefix code
whose lengths are <= max_len. It is made deterministic so that the C++ encoder
(dsq::huffman::encode) writes the same bytes for the same input:

* the leaves are the symbols with a nonzero count, sorted by (count, symbol value);
* level 1 is the leaf list; level j (2..max_len) is the stable merge of the leaves with
  the packages of level j-1 (sums of consecutive pairs, an odd last item dropped), where a
  leaf goes before a package of equal weight;
* the first 2n-2 items of level max_len are selected; the packages among the selected
  items of level j select the first 2 * (number of packages) items of level j-1; a leaf's
  code length is the number of levels at which it is selected;
* no symbol at all (count 0): symbol 0 gets length 1; exactly one symbol: length 1 (code 0).

Codes are canonical: symbols sorted by (length, symbol) get consecutive codes, the first
code of each length being (previous code + 1) << (length difference), starting from 0.

The encoder writes the code lengths in form 1 exactly when that is shorter than form 0
(after padding): a 16-code int8 stream spends 48 bytes on them instead of 272.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

__all__ = [
    "MAX_CODE_LEN", "HuffmanStream", "symbol_counts", "lengths_from_counts", "code_lengths",
    "canonical_codes", "coded_bits", "coded_nbytes", "encode", "parse", "decode",
]

MAX_CODE_LEN = 15
MAX_ALPHABET = 256
MIN_CHUNK_SYMBOLS = 64
LENGTHS_DENSE, LENGTHS_SPARSE = 0, 1  # the header's lengths_form byte
_HEADER = struct.Struct("<BBHII")


def _round8(v: int) -> int:
    return (v + 7) & ~7


def lengths_nbytes(alphabet: int, present: int, form: int) -> int:
    """Bytes of header + code lengths + padding for a form (0 dense, 1 sparse)."""
    return _round8(12 + (alphabet if form == LENGTHS_DENSE else 1 + 2 * present))


def lengths_form_for(alphabet: int, present: int) -> int:
    """The form the encoder writes: sparse only when strictly shorter (else the file
    stays readable by format 1.1 readers)."""
    sparse = lengths_nbytes(alphabet, present, LENGTHS_SPARSE)
    return LENGTHS_SPARSE if sparse < lengths_nbytes(alphabet, present, LENGTHS_DENSE) else LENGTHS_DENSE


def _check_alphabet(alphabet) -> int:
    a = int(alphabet)
    if a != alphabet or not 1 <= a <= MAX_ALPHABET:
        raise ValueError(f"huffman: alphabet {alphabet!r} not in 1..256")
    return a


def _check_max_len(max_len) -> int:
    m = int(max_len)
    if m != max_len or not 1 <= m <= MAX_CODE_LEN:
        raise ValueError(f"huffman: max_len {max_len!r} not in 1..15")
    return m


def _check_chunk_symbols(chunk_symbols) -> int:
    c = int(chunk_symbols)
    if c != chunk_symbols or c < MIN_CHUNK_SYMBOLS or c & (c - 1) or c > 0xFFFFFFFF:
        raise ValueError(f"huffman: chunk_symbols {chunk_symbols!r} is not a power of two >= 64")
    return c


def _symbols(symbols, alphabet: int) -> np.ndarray:
    """The symbols as a flat uint8 array, each checked to be < alphabet."""
    if isinstance(symbols, (bytes, bytearray, memoryview)):
        arr = np.frombuffer(symbols, dtype=np.uint8)
    else:
        arr = np.asarray(symbols).reshape(-1)
        if arr.size == 0:
            arr = arr.astype(np.uint8)
        if arr.dtype.kind not in "ui":
            raise ValueError(f"huffman: symbols must be integers, got dtype {arr.dtype}")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= alphabet:
            bad = int(np.flatnonzero((arr < 0) | (arr >= alphabet))[0])
            raise ValueError(f"huffman: symbol {int(arr[bad])} at index {bad} is outside the alphabet of {alphabet}")
    return arr.astype(np.uint8, copy=False)


def symbol_counts(symbols, alphabet: int) -> np.ndarray:
    """Occurrences of each symbol 0..alphabet-1 (uint64)."""
    a = _check_alphabet(alphabet)
    return np.bincount(_symbols(symbols, a), minlength=a).astype(np.uint64)


def lengths_from_counts(counts, max_len: int = MAX_CODE_LEN) -> np.ndarray:
    """Code lengths (uint8, 0 = absent) for per-symbol counts: package-merge (module doc)."""
    counts = [int(c) for c in np.asarray(counts).reshape(-1)]
    alphabet = _check_alphabet(len(counts))
    max_len = _check_max_len(max_len)
    if any(c < 0 for c in counts):
        raise ValueError("huffman: negative symbol count")
    length = np.zeros(alphabet, dtype=np.uint8)
    syms = [s for s in range(alphabet) if counts[s]]
    n = len(syms)
    if n == 0:
        length[0] = 1
        return length
    if n == 1:
        length[syms[0]] = 1
        return length
    if n > (1 << max_len):
        raise ValueError(f"huffman: {n} distinct symbols do not fit in codes of at most {max_len} bits")
    syms.sort(key=lambda s: (counts[s], s))
    leaf = [counts[s] for s in syms]
    is_leaf: List[Optional[List[bool]]] = [None, [True] * n]
    prev = list(leaf)
    for _ in range(2, max_len + 1):
        npk = len(prev) // 2
        cur: List[int] = []
        types: List[bool] = []
        i = k = 0
        while i < n or k < npk:
            if k >= npk or (i < n and leaf[i] <= prev[2 * k] + prev[2 * k + 1]):
                cur.append(leaf[i])
                types.append(True)
                i += 1
            else:
                cur.append(prev[2 * k] + prev[2 * k + 1])
                types.append(False)
                k += 1
        is_leaf.append(types)
        prev = cur
    depth = [0] * n
    take = 2 * n - 2
    for j in range(max_len, 0, -1):
        leaves = sum(is_leaf[j][:take])
        for i in range(leaves):
            depth[i] += 1
        take = 2 * (take - leaves)
    for i, s in enumerate(syms):
        length[s] = depth[i]
    return length


def code_lengths(symbols, alphabet: int, max_len: int = MAX_CODE_LEN) -> np.ndarray:
    """Code lengths (uint8 per symbol, 0 = absent) that `encode` uses for these symbols."""
    return lengths_from_counts(symbol_counts(symbols, alphabet), max_len)


def canonical_codes(lengths) -> np.ndarray:
    """Canonical code of each symbol (uint16; 0 for absent symbols)."""
    lengths = [int(v) for v in np.asarray(lengths).reshape(-1)]
    bl_count = [0] * (MAX_CODE_LEN + 1)
    for v in lengths:
        if not 0 <= v <= MAX_CODE_LEN:
            raise ValueError(f"huffman: code length {v} not in 0..15")
        if v:
            bl_count[v] += 1
    nxt = [0] * (MAX_CODE_LEN + 1)
    code = 0
    for v in range(1, MAX_CODE_LEN + 1):
        code = (code + bl_count[v - 1]) << 1
        nxt[v] = code
    codes = np.zeros(len(lengths), dtype=np.uint16)
    for s, v in enumerate(lengths):
        if v:
            codes[s] = nxt[v]
            nxt[v] += 1
    return codes


def coded_bits(symbols, alphabet: int, max_len: int = MAX_CODE_LEN) -> int:
    """Length in bits of the bit string `encode` writes (sum of the code lengths)."""
    counts = symbol_counts(symbols, alphabet)
    lengths = lengths_from_counts(counts, max_len)
    return int(np.dot(counts.astype(np.uint64), lengths.astype(np.uint64)))


def coded_nbytes(symbols, alphabet: int, max_len: int = MAX_CODE_LEN, chunk_symbols: int = 4096) -> int:
    """len(encode(symbols, alphabet, max_len, chunk_symbols)) without encoding."""
    a = _check_alphabet(alphabet)
    cs = _check_chunk_symbols(chunk_symbols)
    sym = _symbols(symbols, a)
    count = int(sym.size)
    chunks = -(-count // cs)
    present = max(1, int(np.count_nonzero(np.bincount(sym, minlength=a))))
    head = lengths_nbytes(a, present, lengths_form_for(a, present))
    return head + 8 * chunks + (coded_bits(symbols, a, max_len) + 7) // 8


def encode(symbols, alphabet: int, max_len: int = MAX_CODE_LEN, chunk_symbols: int = 4096,
           lengths_form: Optional[int] = None) -> bytes:
    """One coded stream for the symbols (integers in 0..alphabet-1, any shape, flattened).

    lengths_form: None picks the shorter form (see the module doc); 0 or 1 forces one."""
    a = _check_alphabet(alphabet)
    max_len = _check_max_len(max_len)
    cs = _check_chunk_symbols(chunk_symbols)
    sym = _symbols(symbols, a)
    count = int(sym.size)
    chunks = -(-count // cs)
    if chunks > 0xFFFFFFFF:
        raise ValueError("huffman: too many chunks")
    counts = np.bincount(sym, minlength=a)
    lengths = lengths_from_counts(counts, max_len)
    codes = canonical_codes(lengths)

    present = np.flatnonzero(lengths)
    form = lengths_form_for(a, present.size) if lengths_form is None else int(lengths_form)
    if form not in (LENGTHS_DENSE, LENGTHS_SPARSE):
        raise ValueError(f"huffman: lengths_form {lengths_form!r} is not 0 (dense) or 1 (sparse)")
    head = bytearray(lengths_nbytes(a, present.size, form))
    _HEADER.pack_into(head, 0, max_len, form, a, cs, chunks)
    if form == LENGTHS_DENSE:
        head[12:12 + a] = lengths.tobytes()
    else:
        head[12] = present.size - 1
        pairs = np.stack([present, lengths[present]], axis=1).astype(np.uint8)
        head[13:13 + 2 * present.size] = pairs.tobytes()

    lens = lengths.astype(np.int64)[sym]
    ends = np.cumsum(lens)
    total = int(ends[-1]) if count else 0
    starts = ends - lens
    offsets = starts[::cs].astype("<u8")
    bitarr = np.zeros(total, dtype=np.uint8)
    code_of = codes.astype(np.int64)[sym]
    for j in range(int(lengths.max())):  # bit j (from the MSB) of every code with len > j
        sel = lens > j
        bitarr[starts[sel] + j] = (code_of[sel] >> (lens[sel] - 1 - j)) & 1
    return bytes(head) + offsets.tobytes() + np.packbits(bitarr).tobytes()


@dataclass
class HuffmanStream:
    """A validated view of one coded stream (see `parse`)."""
    max_len: int
    alphabet: int
    chunk_symbols: int
    chunk_count: int
    count: int
    lengths: np.ndarray        # uint8[alphabet] (expanded from either form)
    lengths_form: int          # 0 dense, 1 sparse (format 1.2)
    chunk_offsets: np.ndarray  # uint64[chunk_count]
    bits_offset: int           # byte offset of the bit string within the stream
    bit_len: int               # 8 * bytes of the bit string


def _fail(offset: int, what: str):
    raise ValueError(f"huffman stream at byte {offset}: {what}")


def parse(data, count: int, alphabet: int) -> HuffmanStream:
    """Validates a coded stream like dsq::huffman::parse; ValueError names the byte offset."""
    buf = memoryview(data).cast("B") if not isinstance(data, np.ndarray) else memoryview(data.tobytes())
    nbytes = len(buf)
    count = int(count)
    if not 1 <= int(alphabet) <= MAX_ALPHABET:
        _fail(2, f"alphabet {alphabet} not supported (1..256)")
    alphabet = int(alphabet)
    if nbytes < 12:
        _fail(nbytes, f"truncated header: {nbytes} bytes, need 12")
    max_len, form, a, cs, cc = _HEADER.unpack_from(buf, 0)
    if not 1 <= max_len <= MAX_CODE_LEN:
        _fail(0, f"max_len {max_len} not in 1..15")
    if form not in (LENGTHS_DENSE, LENGTHS_SPARSE):
        _fail(1, f"lengths_form {form} unknown (0 dense, 1 sparse)")
    if a != alphabet:
        _fail(2, f"alphabet {a}, expected {alphabet}")
    if cs < MIN_CHUNK_SYMBOLS or cs & (cs - 1):
        _fail(4, f"chunk_symbols {cs} is not a power of two >= 64")
    want = -(-count // cs)
    if cc != want:
        _fail(8, f"chunk_count {cc}, expected {want} for {count} symbols")
    if form == LENGTHS_DENSE:
        lengths_end = 12 + alphabet
        if nbytes < lengths_end:
            _fail(nbytes, f"truncated code lengths: stream has {nbytes} bytes, need {lengths_end}")
        lengths = np.frombuffer(buf, dtype=np.uint8, count=alphabet, offset=12).copy()
        over = np.flatnonzero(lengths > max_len)
        if over.size:
            i = int(over[0])
            _fail(12 + i, f"code length {int(lengths[i])} of symbol {i} exceeds max_len {max_len}")
        if not lengths.any():
            _fail(12, "no symbol has a code length")
    else:
        if nbytes < 13:
            _fail(nbytes, f"truncated code lengths: stream has {nbytes} bytes, need 13")
        present = buf[12] + 1
        if present > alphabet:
            _fail(12, f"{present} symbols listed, the alphabet has {alphabet}")
        lengths_end = 13 + 2 * present
        if nbytes < lengths_end:
            _fail(nbytes, f"truncated code lengths: stream has {nbytes} bytes, need {lengths_end}")
        pairs = np.frombuffer(buf, dtype=np.uint8, count=2 * present, offset=13).reshape(-1, 2).astype(np.int64)
        lengths = np.zeros(alphabet, dtype=np.uint8)
        for i, (sym, ln) in enumerate(pairs.tolist()):
            at = 13 + 2 * i
            if sym >= alphabet:
                _fail(at, f"symbol {sym} is outside the alphabet of {alphabet}")
            if i and sym <= pairs[i - 1, 0]:
                _fail(at, f"symbol {sym} does not follow symbol {int(pairs[i - 1, 0])} in increasing order")
            if not 1 <= ln <= max_len:
                _fail(at + 1, f"code length {ln} of symbol {sym} not in 1..max_len {max_len}")
            lengths[sym] = ln
    present = lengths[lengths > 0].astype(np.int64)
    kraft = int(np.sum(np.left_shift(1, MAX_CODE_LEN - present)))
    if kraft > (1 << MAX_CODE_LEN):
        _fail(12, f"code lengths violate the Kraft inequality (sum {kraft}/32768 > 1)")
    pad_end = _round8(lengths_end)
    if nbytes < pad_end:
        _fail(nbytes, "truncated padding after the code lengths")
    for i in range(lengths_end, pad_end):
        if buf[i]:
            _fail(i, "nonzero padding byte")
    table_end = pad_end + 8 * cc
    if nbytes < table_end:
        _fail(nbytes, f"truncated chunk table: stream has {nbytes} bytes, need {table_end}")
    bit_len = 8 * (nbytes - table_end)
    if count > bit_len:
        _fail(table_end, f"{count} symbols need at least as many bits, the bit string has {bit_len}")
    offsets = np.frombuffer(buf, dtype="<u8", count=cc, offset=pad_end).astype(np.uint64)
    if cc:
        if int(offsets[0]) != 0:
            _fail(pad_end, f"chunk_bit_offset[0] is {int(offsets[0])}, must be 0")
        dec = np.flatnonzero(offsets[1:] < offsets[:-1])
        out = np.flatnonzero(offsets >= bit_len)
        firsts = [(int(dec[0]) + 1, "dec")] if dec.size else []
        if out.size:
            firsts.append((int(out[0]), "out"))
        if firsts:
            c, kind = min(firsts)
            if kind == "dec":
                _fail(pad_end + 8 * c, f"chunk_bit_offset[{c}] = {int(offsets[c])} is less than the previous "
                                       f"{int(offsets[c - 1])}")
            _fail(pad_end + 8 * c, f"chunk_bit_offset[{c}] = {int(offsets[c])} is outside the bit string "
                                   f"({bit_len} bits)")
    return HuffmanStream(max_len, alphabet, cs, cc, count, lengths, form, offsets, table_end, bit_len)


def _entry_table(lengths: np.ndarray):
    """(table of sym << 4 | len indexed by a tbits-bit peek, 0 = unassigned; tbits)."""
    tbits = int(lengths.max())
    codes = canonical_codes(lengths)
    table = np.zeros(1 << tbits, dtype=np.int16)
    for s in np.flatnonzero(lengths):
        v = int(lengths[s])
        lo, hi = int(codes[s]) << (tbits - v), (int(codes[s]) + 1) << (tbits - v)
        table[lo:hi] = (int(s) << 4) | v
    return table, tbits


def decode(data, count: int, alphabet: int, *, chunk: int = 0, n: Optional[int] = None) -> np.ndarray:
    """Decodes `n` symbols (default: all `count`) from the first symbol of chunk `chunk`.

    Validates like the C++ decoder: ValueError for a bad header/table, an unassigned code,
    a bit string that ends too early, or a chunk whose codes do not end at the next
    chunk's offset. Vectorized over chunks (one numpy step per symbol of a chunk)."""
    raw = bytes(data) if not isinstance(data, bytes) else data
    st = parse(raw, count, alphabet)
    cs = st.chunk_symbols
    n = st.count - chunk * cs if n is None else int(n)
    if n == 0:
        return np.zeros(0, dtype=np.uint8)
    if chunk < 0 or n < 0 or chunk >= st.chunk_count or n > st.count - chunk * cs:
        raise ValueError(f"huffman: decode of {n} symbols from chunk {chunk} is outside the stream "
                         f"({st.count} symbols, {st.chunk_count} chunks)")
    bits = np.frombuffer(raw, dtype=np.uint8, offset=st.bits_offset)
    bit_len = st.bit_len
    table, tbits = _entry_table(st.lengths)
    raw_ent = _entries_at_every_bit(bits, table, tbits)  # 0 = unassigned prefix
    # A code running past the end of the bit string becomes 0 too; index bit_len (nothing
    # left) is 0.
    tail = max(0, bit_len - 16)
    ent = np.concatenate([raw_ent, np.zeros(1, np.int16)])
    t_pos = np.arange(tail, bit_len)
    ent[tail:bit_len] = np.where((ent[tail:bit_len] & 15) > bit_len - t_pos, 0, ent[tail:bit_len])

    nchunks = -(-n // cs)
    sizes = np.full(nchunks, cs, dtype=np.int64)
    sizes[-1] = n - cs * (nchunks - 1)
    pos = st.chunk_offsets[chunk:chunk + nchunks].astype(np.int64)
    rec = np.zeros((nchunks, cs), dtype=np.int16)
    last = int(sizes[-1])
    for t in range(cs):
        m = nchunks if t < last else nchunks - 1
        if m == 0:
            break
        p = pos[:m]
        e = ent[p]
        rec[:m, t] = e
        pos[:m] = p + (e & 15)
    valid = np.arange(cs)[None, :] < sizes[:, None]
    bad = (rec == 0) & valid
    if bad.any():
        c, t = (int(v) for v in np.argwhere(bad)[0])  # first bad symbol of the first bad chunk
        # An earlier chunk's end mismatch takes precedence, as in the sequential decoder.
        _check_chunk_ends(st, chunk, pos, sizes, upto=c)
        p = int(st.chunk_offsets[chunk + c]) + int(np.sum(rec[c, :t] & 15))
        if p >= bit_len:
            what = "bit string ends before all symbols are decoded"
        elif raw_ent[p] == 0:
            what = "invalid code (unassigned prefix)"
        else:
            what = "bit string ends inside a code"
        _fail(st.bits_offset + p // 8, f"{what} at bit {p} of the bit string")
    _check_chunk_ends(st, chunk, pos, sizes, upto=nchunks)
    return (rec >> 4).astype(np.uint8)[valid]


def _entries_at_every_bit(bits: np.ndarray, table: np.ndarray, tbits: int, block: int = 1 << 18) -> np.ndarray:
    """table[peek] (int16) of the tbits bits starting at every bit position (zeros read past the end)."""
    out = np.empty(8 * bits.size, dtype=np.int16)
    pad = np.concatenate([bits, np.zeros(3, np.uint8)]).astype(np.int32)
    shifts = (24 - tbits - np.arange(8, dtype=np.int32))[None, :]
    mask = (1 << tbits) - 1
    for b0 in range(0, bits.size, block):
        b1 = min(bits.size, b0 + block)
        v24 = (pad[b0:b1] << 16) | (pad[b0 + 1:b1 + 1] << 8) | pad[b0 + 2:b1 + 2]
        out[8 * b0:8 * b1] = table[((v24[:, None] >> shifts) & mask).reshape(-1)]
    return out


def _check_chunk_ends(st: HuffmanStream, chunk: int, end_pos: np.ndarray, sizes: np.ndarray, upto: int) -> None:
    cs = st.chunk_symbols
    for i in range(upto):
        c = chunk + i
        if sizes[i] == cs and c + 1 < st.chunk_count and int(end_pos[i]) != int(st.chunk_offsets[c + 1]):
            pad_end = st.bits_offset - 8 * st.chunk_count
            _fail(pad_end + 8 * (c + 1), f"chunk {c} ends at bit {int(end_pos[i])} but chunk_bit_offset[{c + 1}] "
                                         f"is {int(st.chunk_offsets[c + 1])}")
