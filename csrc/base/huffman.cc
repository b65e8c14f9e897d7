// Canonical Huffman streams (docs/FORMAT.md, "Huffman (entropy 1, 1.1), per stream").
// See huffman.h for the layout and the encoder's length-limiting algorithm.
#include "base/huffman.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace dsq {
namespace huffman {

namespace {

constexpr uint64_t kHeaderBytes = 12;

[[noreturn]] void fail(uint64_t offset, const std::string& what) {
  throw std::invalid_argument("huffman stream at byte " + std::to_string(offset) + ": " + what);
}

inline uint16_t rd16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
inline uint32_t rd32(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}
inline uint64_t rd64(const uint8_t* p) { return uint64_t(rd32(p)) | (uint64_t(rd32(p + 4)) << 32); }
inline void wr16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v);
  p[1] = uint8_t(v >> 8);
}
inline void wr32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (8 * i));
}
inline void wr64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = uint8_t(v >> (8 * i));
}

// Big-endian unaligned 8-byte load.
inline uint64_t load_be64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  return v;
#else
  return __builtin_bswap64(v);
#endif
}

inline uint64_t round_up8(uint64_t v) { return (v + 7) & ~uint64_t(7); }

bool is_pow2(uint64_t v) { return v && !(v & (v - 1)); }

}  // namespace

uint64_t Stream::chunk_offset(uint64_t c) const { return rd64(chunk_offsets + 8 * c); }

uint64_t lengths_nbytes(unsigned alphabet, unsigned present, LengthsForm form) {
  return round_up8(kHeaderBytes + (form == kLengthsDense ? alphabet : 1 + 2 * uint64_t(present)));
}

LengthsForm lengths_form_for(unsigned alphabet, unsigned present) {
  return lengths_nbytes(alphabet, present, kLengthsSparse) < lengths_nbytes(alphabet, present, kLengthsDense)
             ? kLengthsSparse
             : kLengthsDense;
}

// ------------------------------------------------------------------------------ parse
Stream parse(const uint8_t* data, uint64_t nbytes, uint64_t count, unsigned alphabet) {
  if (alphabet < 1 || alphabet > kMaxAlphabet)
    fail(2, "alphabet " + std::to_string(alphabet) + " not supported (1..256)");
  if (nbytes < kHeaderBytes)
    fail(nbytes, "truncated header: " + std::to_string(nbytes) + " bytes, need 12");
  Stream s;
  s.count = count;
  s.max_len = data[0];
  if (s.max_len < 1 || s.max_len > kMaxCodeLen)
    fail(0, "max_len " + std::to_string(s.max_len) + " not in 1..15");
  if (data[1] != kLengthsDense && data[1] != kLengthsSparse)
    fail(1, "lengths_form " + std::to_string(data[1]) + " unknown (0 dense, 1 sparse)");
  s.lengths_form = LengthsForm(data[1]);
  s.data = data;
  s.alphabet = rd16(data + 2);
  if (s.alphabet != alphabet)
    fail(2, "alphabet " + std::to_string(s.alphabet) + ", expected " + std::to_string(alphabet));
  s.chunk_symbols = rd32(data + 4);
  if (s.chunk_symbols < kMinChunkSymbols || !is_pow2(s.chunk_symbols))
    fail(4, "chunk_symbols " + std::to_string(s.chunk_symbols) + " is not a power of two >= 64");
  s.chunk_count = rd32(data + 8);
  const uint64_t want_chunks = count / s.chunk_symbols + (count % s.chunk_symbols != 0);
  if (s.chunk_count != want_chunks)
    fail(8, "chunk_count " + std::to_string(s.chunk_count) + ", expected " + std::to_string(want_chunks) +
                " for " + std::to_string(count) + " symbols");
  uint64_t lengths_end = 0;
  if (s.lengths_form == kLengthsDense) {
    lengths_end = kHeaderBytes + alphabet;
    if (nbytes < lengths_end)
      fail(nbytes, "truncated code lengths: stream has " + std::to_string(nbytes) + " bytes, need " +
                       std::to_string(lengths_end));
    for (unsigned i = 0; i < alphabet; ++i) {
      const unsigned l = data[kHeaderBytes + i];
      if (l > s.max_len)
        fail(kHeaderBytes + i, "code length " + std::to_string(l) + " of symbol " + std::to_string(i) +
                                   " exceeds max_len " + std::to_string(s.max_len));
      s.lengths[i] = uint8_t(l);
    }
  } else {
    if (nbytes < kHeaderBytes + 1)
      fail(nbytes, "truncated code lengths: stream has " + std::to_string(nbytes) + " bytes, need 13");
    const unsigned listed = unsigned(data[kHeaderBytes]) + 1;
    if (listed > alphabet)
      fail(kHeaderBytes, std::to_string(listed) + " symbols listed, the alphabet has " + std::to_string(alphabet));
    lengths_end = kHeaderBytes + 1 + 2 * uint64_t(listed);
    if (nbytes < lengths_end)
      fail(nbytes, "truncated code lengths: stream has " + std::to_string(nbytes) + " bytes, need " +
                       std::to_string(lengths_end));
    for (unsigned i = 0; i < listed; ++i) {
      const uint64_t at = kHeaderBytes + 1 + 2 * uint64_t(i);
      const unsigned sym = data[at], l = data[at + 1];
      if (sym >= alphabet)
        fail(at, "symbol " + std::to_string(sym) + " is outside the alphabet of " + std::to_string(alphabet));
      if (i && sym <= data[at - 2])
        fail(at, "symbol " + std::to_string(sym) + " does not follow symbol " + std::to_string(data[at - 2]) +
                     " in increasing order");
      if (l < 1 || l > s.max_len)
        fail(at + 1, "code length " + std::to_string(l) + " of symbol " + std::to_string(sym) +
                         " not in 1..max_len " + std::to_string(s.max_len));
      s.lengths[sym] = uint8_t(l);
    }
  }
  uint32_t kraft = 0;  // sum of 2^(15 - len), <= 2^15 * 256 fits
  unsigned present = 0;
  for (unsigned i = 0; i < alphabet; ++i) {
    const unsigned l = s.lengths[i];
    if (l) {
      kraft += 1u << (kMaxCodeLen - l);
      ++present;
    }
  }
  if (!present) fail(kHeaderBytes, "no symbol has a code length");
  if (kraft > (1u << kMaxCodeLen))
    fail(kHeaderBytes, "code lengths violate the Kraft inequality (sum " + std::to_string(kraft) +
                           "/32768 > 1)");
  const uint64_t pad_end = round_up8(lengths_end);
  if (nbytes < pad_end) fail(nbytes, "truncated padding after the code lengths");
  for (uint64_t i = lengths_end; i < pad_end; ++i)
    if (data[i]) fail(i, "nonzero padding byte");
  const uint64_t table_end = pad_end + 8 * uint64_t(s.chunk_count);
  if (nbytes < table_end)
    fail(nbytes, "truncated chunk table: stream has " + std::to_string(nbytes) + " bytes, need " +
                     std::to_string(table_end));
  if (nbytes - table_end > (uint64_t(1) << 60)) fail(table_end, "bit string too large");
  s.chunk_offsets = data + pad_end;
  s.bits = data + table_end;
  s.bit_len = 8 * (nbytes - table_end);
  if (count > s.bit_len)
    fail(table_end, std::to_string(count) + " symbols need at least as many bits, the bit string has " +
                        std::to_string(s.bit_len));
  uint64_t prev = 0;
  for (uint64_t c = 0; c < s.chunk_count; ++c) {
    const uint64_t off = s.chunk_offset(c);
    const uint64_t at = pad_end + 8 * c;
    if (c == 0 && off != 0) fail(at, "chunk_bit_offset[0] is " + std::to_string(off) + ", must be 0");
    if (off < prev)
      fail(at, "chunk_bit_offset[" + std::to_string(c) + "] = " + std::to_string(off) +
                   " is less than the previous " + std::to_string(prev));
    if (off >= s.bit_len)
      fail(at, "chunk_bit_offset[" + std::to_string(c) + "] = " + std::to_string(off) +
                   " is outside the bit string (" + std::to_string(s.bit_len) + " bits)");
    prev = off;
  }
  return s;
}

// ------------------------------------------------------------------------------ codes
std::vector<uint8_t> code_lengths(const uint64_t* freq, unsigned alphabet, unsigned max_len) {
  if (alphabet < 1 || alphabet > kMaxAlphabet)
    throw std::invalid_argument("huffman: alphabet " + std::to_string(alphabet) + " not in 1..256");
  if (max_len < 1 || max_len > kMaxCodeLen)
    throw std::invalid_argument("huffman: max_len " + std::to_string(max_len) + " not in 1..15");
  std::vector<uint8_t> len(alphabet, 0);
  std::vector<unsigned> syms;
  for (unsigned s = 0; s < alphabet; ++s)
    if (freq[s]) syms.push_back(s);
  const size_t n = syms.size();
  if (n == 0) {
    len[0] = 1;
    return len;
  }
  if (n == 1) {
    len[syms[0]] = 1;
    return len;
  }
  if (n > (size_t(1) << max_len))
    throw std::invalid_argument("huffman: " + std::to_string(n) + " distinct symbols do not fit in codes of at most " +
                                std::to_string(max_len) + " bits");
  std::sort(syms.begin(), syms.end(), [&](unsigned a, unsigned b) {
    return freq[a] != freq[b] ? freq[a] < freq[b] : a < b;
  });
  std::vector<uint64_t> leaf(n);
  for (size_t i = 0; i < n; ++i) leaf[i] = freq[syms[i]];

  // Package-merge: list[1] = leaves; list[j] = merge(leaves, packages of list[j-1]).
  std::vector<std::vector<uint8_t>> is_leaf(max_len + 1);
  std::vector<uint64_t> prev(leaf), cur;
  is_leaf[1].assign(n, 1);
  for (unsigned j = 2; j <= max_len; ++j) {
    const size_t np = prev.size() / 2;
    cur.clear();
    std::vector<uint8_t>& types = is_leaf[j];
    size_t i = 0, k = 0;
    while (i < n || k < np) {
      if (k >= np || (i < n && leaf[i] <= prev[2 * k] + prev[2 * k + 1])) {
        cur.push_back(leaf[i++]);
        types.push_back(1);
      } else {
        cur.push_back(prev[2 * k] + prev[2 * k + 1]);
        ++k;
        types.push_back(0);
      }
    }
    prev.swap(cur);
  }
  // Select the first 2n-2 items of the top list and follow the packages down.
  std::vector<unsigned> depth(n, 0);
  size_t take = 2 * n - 2;
  for (unsigned j = max_len; j >= 1; --j) {
    size_t leaves = 0;
    for (size_t t = 0; t < take; ++t) leaves += is_leaf[j][t];
    for (size_t i = 0; i < leaves; ++i) ++depth[i];
    take = 2 * (take - leaves);
  }
  for (size_t i = 0; i < n; ++i) len[syms[i]] = uint8_t(depth[i]);
  return len;
}

std::vector<uint16_t> canonical_codes(const uint8_t* lengths, unsigned alphabet) {
  unsigned bl_count[kMaxCodeLen + 1] = {};
  for (unsigned s = 0; s < alphabet; ++s)
    if (lengths[s]) ++bl_count[lengths[s]];
  unsigned next[kMaxCodeLen + 2] = {};
  unsigned code = 0;
  for (unsigned l = 1; l <= kMaxCodeLen; ++l) {
    code = (code + bl_count[l - 1]) << 1;
    next[l] = code;
  }
  std::vector<uint16_t> codes(alphabet, 0);
  for (unsigned s = 0; s < alphabet; ++s)
    if (lengths[s]) codes[s] = uint16_t(next[lengths[s]]++);
  return codes;
}

// ------------------------------------------------------------------------------ encode
std::vector<uint8_t> encode(const uint8_t* symbols, uint64_t count, unsigned alphabet, unsigned max_len,
                            uint32_t chunk_symbols, int lengths_form) {
  if (alphabet < 1 || alphabet > kMaxAlphabet)
    throw std::invalid_argument("huffman: alphabet " + std::to_string(alphabet) + " not in 1..256");
  if (max_len < 1 || max_len > kMaxCodeLen)
    throw std::invalid_argument("huffman: max_len " + std::to_string(max_len) + " not in 1..15");
  if (chunk_symbols < kMinChunkSymbols || !is_pow2(chunk_symbols))
    throw std::invalid_argument("huffman: chunk_symbols " + std::to_string(chunk_symbols) +
                                " is not a power of two >= 64");
  const uint64_t chunks = count / chunk_symbols + (count % chunk_symbols != 0);
  if (chunks > 0xFFFFFFFFull) throw std::invalid_argument("huffman: too many chunks");
  std::vector<uint64_t> freq(alphabet, 0);
  for (uint64_t i = 0; i < count; ++i) {
    if (symbols[i] >= alphabet)
      throw std::invalid_argument("huffman: symbol " + std::to_string(symbols[i]) + " at index " +
                                  std::to_string(i) + " is outside the alphabet of " + std::to_string(alphabet));
    ++freq[symbols[i]];
  }
  const std::vector<uint8_t> len = code_lengths(freq.data(), alphabet, max_len);
  const std::vector<uint16_t> code = canonical_codes(len.data(), alphabet);
  uint64_t total_bits = 0;
  for (unsigned s = 0; s < alphabet; ++s) total_bits += freq[s] * len[s];

  unsigned present = 0;
  for (unsigned s = 0; s < alphabet; ++s) present += len[s] != 0;
  if (lengths_form < -1 || lengths_form > 1)
    throw std::invalid_argument("huffman: lengths_form " + std::to_string(lengths_form) +
                                " is not 0 (dense) or 1 (sparse)");
  const LengthsForm form = lengths_form < 0 ? lengths_form_for(alphabet, present) : LengthsForm(lengths_form);
  const uint64_t pad_end = lengths_nbytes(alphabet, present, form);
  const uint64_t table_end = pad_end + 8 * chunks;
  std::vector<uint8_t> out(table_end + (total_bits + 7) / 8, 0);
  out[0] = uint8_t(max_len);
  out[1] = form;
  wr16(&out[2], uint16_t(alphabet));
  wr32(&out[4], chunk_symbols);
  wr32(&out[8], uint32_t(chunks));
  if (form == kLengthsDense) {
    std::memcpy(&out[kHeaderBytes], len.data(), alphabet);
  } else {
    out[kHeaderBytes] = uint8_t(present - 1);
    uint64_t at = kHeaderBytes + 1;
    for (unsigned s = 0; s < alphabet; ++s)
      if (len[s]) {
        out[at++] = uint8_t(s);
        out[at++] = len[s];
      }
  }

  // Codes packed as (code << 4 | len) for one lookup per symbol.
  uint32_t packed[kMaxAlphabet];
  for (unsigned s = 0; s < alphabet; ++s) packed[s] = (uint32_t(code[s]) << 4) | len[s];
  uint8_t* bits = out.data() + table_end;
  uint8_t* table = out.data() + pad_end;
  uint64_t acc = 0;  // pending bits in the low `nacc` bits
  unsigned nacc = 0;
  uint64_t pos = 0, byte = 0;
  for (uint64_t i = 0; i < count; ++i) {
    if ((i & (chunk_symbols - 1)) == 0) wr64(table + 8 * (i / chunk_symbols), pos);
    const uint32_t p = packed[symbols[i]];
    const unsigned l = p & 15;
    acc = (acc << l) | (p >> 4);
    nacc += l;
    pos += l;
    if (nacc >= 32) {
      nacc -= 32;
      const uint32_t w = uint32_t(acc >> nacc);
      bits[byte] = uint8_t(w >> 24);
      bits[byte + 1] = uint8_t(w >> 16);
      bits[byte + 2] = uint8_t(w >> 8);
      bits[byte + 3] = uint8_t(w);
      byte += 4;
    }
  }
  while (nacc >= 8) {
    nacc -= 8;
    bits[byte++] = uint8_t(acc >> nacc);
  }
  if (nacc) bits[byte++] = uint8_t(acc << (8 - nacc));
  return out;
}

// ------------------------------------------------------------------------------ decode
namespace {
constexpr unsigned kFirstLevelBits = 12;       // 16 KB multi-code table + 8 KB single-code table
constexpr unsigned kSmallFirstLevelBits = 9;   // for short streams, where building the table dominates
constexpr uint64_t kSmallStream = 16384;
constexpr unsigned kGroup = 3;  // lookups per refill: 3 * 15 <= 56 bits after a refill

[[noreturn]] void fail_bits(const Stream& s, uint64_t pos, const char* what) {
  const uint64_t at = uint64_t(s.bits - s.data) + pos / 8;
  fail(at, std::string(what) + " at bit " + std::to_string(pos) + " of the bit string");
}

inline void store3(uint8_t* out, uint32_t syms) {  // writes 4 bytes, the 4th is scratch
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  out[0] = uint8_t(syms);
  out[1] = uint8_t(syms >> 8);
  out[2] = uint8_t(syms >> 16);
#else
  std::memcpy(out, &syms, 4);
#endif
}
}  // namespace

Decoder::Decoder(const Stream& s) : s_(s) {
  unsigned longest = 0;
  uint32_t kraft = 0;
  for (unsigned i = 0; i < s.alphabet; ++i) {
    const unsigned l = s.lengths[i];
    if (l > kMaxCodeLen) throw std::invalid_argument("huffman: invalid stream view (code length > 15)");
    if (l) kraft += 1u << (kMaxCodeLen - l);
    longest = std::max(longest, l);
  }
  if (longest < 1 || s.alphabet > kMaxAlphabet || kraft > (1u << kMaxCodeLen))
    throw std::invalid_argument("huffman: invalid stream view (use huffman::parse)");
  tbits_ = longest;
  fbits_ = std::min(tbits_, s.count < kSmallStream ? kSmallFirstLevelBits : kFirstLevelBits);

  // Canonical (first code, count, base) per length, symbols in canonical order.
  const std::vector<uint16_t> code = canonical_codes(s.lengths.data(), s.alphabet);
  unsigned n_sorted = 0;
  for (unsigned l = 1; l <= kMaxCodeLen; ++l) {
    base_[l] = n_sorted;
    for (unsigned sym = 0; sym < s.alphabet; ++sym)
      if (s.lengths[sym] == l) {
        if (cnt_[l] == 0) first_[l] = code[sym];
        ++cnt_[l];
        sorted_[n_sorted++] = uint8_t(sym);
      }
  }
  // Single-code table for codes of <= fbits_ bits.
  single_.assign(size_t(1) << fbits_, 0);
  for (unsigned sym = 0; sym < s.alphabet; ++sym) {
    const unsigned l = s.lengths[sym];
    if (!l || l > fbits_) continue;
    const size_t lo = size_t(code[sym]) << (fbits_ - l), hi = size_t(code[sym] + 1) << (fbits_ - l);
    const uint16_t e = uint16_t((sym << 4) | l);
    for (size_t t = lo; t < hi; ++t) single_[t] = e;
  }
  // Multi-code table: up to three whole codes that fit in the fbits_-bit index.
  const uint32_t mask = (1u << fbits_) - 1;
  multi_.assign(size_t(1) << fbits_, 0);
  for (uint32_t i = 0; i <= mask; ++i) {
    uint32_t e = 0;
    unsigned used = 0, nsym = 0;
    while (nsym < 3) {
      const uint16_t se = single_[(i << used) & mask];
      const unsigned l = se & 15;
      if (!l || l > fbits_ - used) break;
      e |= uint32_t(se >> 4) << (8 + 8 * nsym);
      used += l;
      ++nsym;
    }
    multi_[i] = nsym ? (e | used | (nsym << 4)) : 0;
  }
}

unsigned Decoder::lookup(uint32_t peek15) const {
  const unsigned e = single_[peek15 >> (kMaxCodeLen - fbits_)];
  if (e) return e;
  for (unsigned l = fbits_ + 1; l <= tbits_; ++l) {
    const uint32_t d = (peek15 >> (kMaxCodeLen - l)) - first_[l];
    if (d < cnt_[l]) return (unsigned(sorted_[base_[l] + d]) << 4) | l;
  }
  return 0;
}

// Checked path: one code at a time, 8-byte loads while they fit, then byte-by-byte
// assembly with zeros past the end; every code is checked against the string's end.
uint64_t Decoder::run_checked(uint64_t pos, uint64_t n, uint8_t* out) const {
  const uint64_t nbytes = s_.bit_len >> 3;
  for (uint64_t i = 0; i < n; ++i) {
    const uint64_t b = pos >> 3;
    uint64_t buf;
    if (b + 8 <= nbytes) {
      buf = load_be64(s_.bits + b);
    } else {
      if (pos >= s_.bit_len) fail_bits(s_, pos, "bit string ends before all symbols are decoded");
      buf = 0;
      for (unsigned k = 0; k < 8; ++k) buf = (buf << 8) | (b + k < nbytes ? s_.bits[b + k] : 0);
    }
    buf <<= (pos & 7);
    const unsigned e = lookup(uint32_t(buf >> (64 - kMaxCodeLen)));
    const unsigned l = e & 15;
    if (!l) fail_bits(s_, pos, "invalid code (unassigned prefix)");
    if (l > s_.bit_len - pos) fail_bits(s_, pos, "bit string ends inside a code");
    out[i] = uint8_t(e >> 4);
    pos += l;
  }
  return pos;
}

uint64_t Decoder::run(uint64_t pos, uint64_t n, uint8_t* out) const {
  const uint64_t nbytes = s_.bit_len >> 3;
  if (nbytes >= 16 && n >= 3 * kGroup + 1 && (pos >> 3) + 16 <= nbytes) {
    const uint32_t* M = multi_.data();
    const unsigned sh = 64 - fbits_;
    const uint64_t last = nbytes - 8;  // last byte an 8-byte load may start at
    // Buffer invariant (F. Giesen's "variant 4" refill): bitbuf holds `count` valid bits
    // at the top followed by real stream bits, and stream bit 8 * ptr sits at bit `count`
    // from the top.
    uint64_t ptr = pos >> 3;
    uint64_t bitbuf = load_be64(s_.bits + ptr) << (pos & 7);
    uint64_t count = 56 - (pos & 7);
    ptr += 7;
    while (n >= 3 * kGroup + 1 && ptr <= last) {
      bitbuf |= load_be64(s_.bits + ptr) >> count;
      ptr += (63 - count) >> 3;
      count |= 56;
      bool bad = false;
      for (unsigned g = 0; g < kGroup; ++g) {
        const uint32_t e = M[bitbuf >> sh];
        const unsigned l = e & 15;
        if (__builtin_expect(l != 0, 1)) {
          store3(out, e >> 8);
          const unsigned k = (e >> 4) & 3;
          out += k;
          n -= k;
          bitbuf <<= l;
          count -= l;
        } else {  // a code longer than fbits_, or an unassigned prefix
          const unsigned e1 = lookup(uint32_t(bitbuf >> (64 - kMaxCodeLen)));
          const unsigned l1 = e1 & 15;
          if (!l1) {
            bad = true;
            break;
          }
          *out++ = uint8_t(e1 >> 4);
          --n;
          bitbuf <<= l1;
          count -= l1;
        }
      }
      if (bad) break;  // run_checked reports the exact position
    }
    pos = 8 * ptr - count;
  }
  return run_checked(pos, n, out);
}

void Decoder::decode(uint64_t chunk, uint64_t n, uint8_t* out) const {
  if (n == 0) return;
  const uint64_t cs = s_.chunk_symbols;
  if (chunk >= s_.chunk_count || n > s_.count - chunk * cs)
    throw std::invalid_argument("huffman: decode of " + std::to_string(n) + " symbols from chunk " +
                                std::to_string(chunk) + " is outside the stream (" + std::to_string(s_.count) +
                                " symbols, " + std::to_string(s_.chunk_count) + " chunks)");
  uint64_t pos = s_.chunk_offset(chunk);
  for (uint64_t c = chunk; n > 0; ++c) {
    const uint64_t seg = std::min(n, cs);
    pos = run(pos, seg, out);
    out += seg;
    n -= seg;
    if (seg == cs && c + 1 < s_.chunk_count && pos != s_.chunk_offset(c + 1)) {
      const uint64_t at = uint64_t(s_.chunk_offsets - s_.data) + 8 * (c + 1);
      fail(at, "chunk " + std::to_string(c) + " ends at bit " + std::to_string(pos) + " but chunk_bit_offset[" +
                   std::to_string(c + 1) + "] is " + std::to_string(s_.chunk_offset(c + 1)));
    }
  }
}

void Decoder::decode_all(uint8_t* out) const { decode(0, s_.count, out); }

uint64_t Decoder::decode_from(uint64_t bit_pos, uint64_t n, uint8_t* out) const {
  if (n == 0) return bit_pos;
  if (bit_pos >= s_.bit_len)
    throw std::invalid_argument("huffman: decode from bit " + std::to_string(bit_pos) + " is past the bit string (" +
                                std::to_string(s_.bit_len) + " bits)");
  return run(bit_pos, n, out);
}

}  // namespace huffman
}  // namespace dsq
