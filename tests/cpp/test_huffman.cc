// Canonical Huffman streams (csrc/base/huffman.h, docs/FORMAT_1_1_DRAFT.md): encode/parse/
// decode round trips (one-symbol alphabet, all 256 symbols, length-capped 15-bit codes,
// streams ending mid-byte, random distributions), chunked random access, byte-exact
// golden streams shared with tests/test_huffman.py (python/deepsqueeze/huffman.py must
// write the same bytes), and corrupted streams: parse/decode throw std::invalid_argument
// and never read outside the stream (each stream is copied into an exactly sized heap
// buffer, so -fsanitize=address catches any overread).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "base/huffman.h"
#include "check.h"

using namespace dsq::huffman;
using Bytes = std::vector<uint8_t>;

namespace {

std::mt19937_64 rng(20240611);

uint64_t rand_u64(uint64_t lo, uint64_t hi) { return std::uniform_int_distribution<uint64_t>(lo, hi)(rng); }

// Decodes everything (parse + Decoder + decode_all) from an exactly sized heap copy.
Bytes decode_bytes(const Bytes& stream, uint64_t count, unsigned alphabet) {
  Bytes copy(stream);  // exact size: an overread hits the ASan redzone
  uint8_t* heap = new uint8_t[copy.size() ? copy.size() : 1];
  if (!copy.empty()) std::memcpy(heap, copy.data(), copy.size());
  Bytes out(count);
  try {
    Stream s = parse(heap, copy.size(), count, alphabet);
    Decoder d(s);
    d.decode_all(out.data());
  } catch (...) {
    delete[] heap;
    throw;
  }
  delete[] heap;
  return out;
}

// Throws std::invalid_argument (and nothing else)?
bool rejects(const Bytes& stream, uint64_t count, unsigned alphabet, std::string* msg = nullptr) {
  try {
    decode_bytes(stream, count, alphabet);
  } catch (const std::invalid_argument& e) {
    if (msg) *msg = e.what();
    return true;
  }
  return false;
}

bool round_trip(const Bytes& sym, unsigned alphabet, unsigned max_len = 15, uint32_t cs = 4096,
                Bytes* stream_out = nullptr) {
  Bytes st = encode(sym.data(), sym.size(), alphabet, max_len, cs);
  if (stream_out) *stream_out = st;
  Bytes got = decode_bytes(st, sym.size(), alphabet);
  return got == sym;
}

uint64_t round8(uint64_t v) { return (v + 7) & ~uint64_t(7); }

// Writes a stream from explicit code lengths (not necessarily what encode would choose,
// e.g. incomplete codes), independent of encode().
Bytes build_stream(unsigned max_len, unsigned alphabet, uint32_t cs, const Bytes& lengths, const Bytes& sym) {
  const uint64_t count = sym.size();
  const uint64_t chunks = (count + cs - 1) / cs;
  const uint64_t pad_end = round8(12 + alphabet);
  Bytes out(pad_end + 8 * chunks, 0);
  out[0] = uint8_t(max_len);
  out[2] = uint8_t(alphabet);
  out[3] = uint8_t(alphabet >> 8);
  for (int i = 0; i < 4; ++i) out[4 + i] = uint8_t(cs >> (8 * i)), out[8 + i] = uint8_t(chunks >> (8 * i));
  std::memcpy(&out[12], lengths.data(), alphabet);
  const std::vector<uint16_t> code = canonical_codes(lengths.data(), alphabet);
  std::vector<uint8_t> bits;
  uint64_t pos = 0;
  for (uint64_t i = 0; i < count; ++i) {
    if (i % cs == 0)
      for (int b = 0; b < 8; ++b) out[pad_end + 8 * (i / cs) + b] = uint8_t(pos >> (8 * b));
    const unsigned l = lengths[sym[i]];
    for (unsigned k = 0; k < l; ++k, ++pos) {
      if (pos / 8 >= bits.size()) bits.push_back(0);
      if ((code[sym[i]] >> (l - 1 - k)) & 1) bits[pos / 8] |= uint8_t(0x80 >> (pos % 8));
    }
  }
  out.insert(out.end(), bits.begin(), bits.end());
  return out;
}

uint64_t rd64(const Bytes& b, uint64_t at) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | b[at + i];
  return v;
}
void wr64(Bytes& b, uint64_t at, uint64_t v) {
  for (int i = 0; i < 8; ++i) b[at + i] = uint8_t(v >> (8 * i));
}

Bytes from_hex(const char* h) {
  Bytes out;
  for (size_t i = 0; h[i] && h[i + 1]; i += 2) out.push_back(uint8_t(std::stoul(std::string(h + i, 2), nullptr, 16)));
  return out;
}

// The deterministic sequence of the golden stream (same generator in tests/test_huffman.py).
Bytes golden_symbols(unsigned n, unsigned alphabet) {
  Bytes out;
  uint64_t x = 12345;
  for (unsigned i = 0; i < n; ++i) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    const uint64_t v = (x >> 8) | (uint64_t(1) << 23);
    out.push_back(uint8_t(__builtin_ctzll(v) % alphabet));
  }
  return out;
}

// Symbols with Fibonacci-like frequencies, shuffled: unlimited Huffman would need
// lengths up to k-1, so max_len caps them.
Bytes fibonacci_symbols(unsigned k) {
  std::vector<uint64_t> f = {1, 1};
  while (f.size() < k) f.push_back(f[f.size() - 1] + f[f.size() - 2]);
  Bytes out;
  for (unsigned s = 0; s < k; ++s) out.insert(out.end(), f[s], uint8_t(s));
  std::shuffle(out.begin(), out.end(), rng);
  return out;
}

Bytes random_symbols(uint64_t n, unsigned alphabet, int kind) {
  Bytes out(n);
  if (kind == 0) {
    for (auto& s : out) s = uint8_t(rand_u64(0, alphabet - 1));
  } else if (kind == 1) {  // skewed 'codebook index' distribution
    std::normal_distribution<double> nd(alphabet / 2.0, std::max(0.4, alphabet / 10.0));
    for (auto& s : out) {
      const long v = std::lround(nd(rng));
      s = uint8_t(std::min<long>(alphabet - 1, std::max<long>(0, v)));
    }
  } else {  // geometric
    std::geometric_distribution<int> g(std::uniform_real_distribution<double>(0.05, 0.9)(rng));
    for (auto& s : out) s = uint8_t(std::min<int>(int(alphabet) - 1, g(rng)));
  }
  return out;
}

double kraft(const Bytes& lengths) {
  double k = 0;
  for (uint8_t l : lengths)
    if (l) k += 1.0 / double(1u << l);
  return k;
}

}  // namespace

static void test_hand_example() {
  // counts {2, 1, 1}: lengths 1, 2, 2; codes 0, 10, 11; bits 0 0 10 11 -> 0b00101100.
  const Bytes sym = {0, 0, 1, 2};
  const Bytes st = encode(sym.data(), sym.size(), 3, 15, 64);
  const Bytes want = from_hex("0f00030040000000010000000102020000000000000000002c");
  DSQ_CHECK(st == want, "hand example differs (%zu bytes)", st.size());
  DSQ_CHECK(decode_bytes(st, 4, 3) == sym, "hand example decode");
}

static void test_golden_shared_with_python() {
  // python: huffman.encode(golden_symbols(300, 32), 32, max_len=6, chunk_symbols=64)
  const Bytes sym = golden_symbols(300, 32);
  const Bytes want = from_hex(
      "060020004000000005000000010203050506060606000000000000000000000000000000000000000000000000000000"
      "00000000000000009a000000000000001201000000000000a00100000000000026020000000000009ad0650b8dfdaf6b"
      "943c2738729e739b3bd24b0dea20845d5b09a15425a657a577ca055ce64ea764f1f39c44452586be8ecf2ec496ec8612"
      "b79dd58cdcda68ee21c47906c105a91bb1000aea98e700");
  const Bytes st = encode(sym.data(), sym.size(), 32, 6, 64, kLengthsDense);
  DSQ_CHECK(st == want, "golden stream differs from python's (%zu vs %zu bytes)", st.size(), want.size());
  DSQ_CHECK(decode_bytes(want, 300, 32) == sym, "golden decode");
  // python: huffman.encode(golden_symbols(300, 32), 32, max_len=6, chunk_symbols=64): 9 of 32
  // symbols present, so the sparse form (32 bytes of lengths instead of 48).
  const Bytes want_sparse = from_hex(
      "060120004000000005000000080001010202030305040505060606070608060000000000000000009a000000000000001201"
      "000000000000a00100000000000026020000000000009ad0650b8dfdaf6b943c2738729e739b3bd24b0dea20845d5b09a154"
      "25a657a577ca055ce64ea764f1f39c44452586be8ecf2ec496ec8612b79dd58cdcda68ee21c47906c105a91bb1000aea98e700");
  const Bytes st_sparse = encode(sym.data(), sym.size(), 32, 6, 64);
  DSQ_CHECK(st_sparse == want_sparse, "sparse golden stream differs from python's (%zu vs %zu bytes)", st_sparse.size(),
            want_sparse.size());
  DSQ_CHECK(decode_bytes(want_sparse, 300, 32) == sym, "sparse golden decode");
}

static void test_one_symbol() {
  for (uint64_t n : std::vector<uint64_t>{0, 1, 7, 8, 9, 100, 4096, 5000, 100003}) {
    Bytes sym(n, 0), st;
    DSQ_CHECK(round_trip(sym, 1, 15, 4096, &st), "alphabet 1, n=%llu", (unsigned long long)n);
    DSQ_CHECK(st[12] == 1, "one-symbol alphabet gets length 1");
    DSQ_CHECK(st.size() == 16 + 8 * ((n + 4095) / 4096) + (n + 7) / 8, "alphabet 1 size %zu", st.size());
    Bytes sym2(n, 77);  // one symbol present of 256: the sparse form lists it alone
    DSQ_CHECK(round_trip(sym2, 256, 15, 64, &st), "one of 256 present, n=%llu", (unsigned long long)n);
    DSQ_CHECK(st[1] == kLengthsSparse && st[12] == 0 && st[13] == (n ? 77u : 0u) && st[14] == 1,
              "one present symbol of 256: sparse lengths (form %u, listed %u, symbol %u, length %u)", st[1], st[12] + 1u,
              st[13], st[14]);
    DSQ_CHECK(st.size() == 16 + 8 * ((n + 63) / 64) + (n + 7) / 8, "one of 256: size %zu", st.size());
    st = encode(sym2.data(), sym2.size(), 256, 15, 64, kLengthsDense);
    DSQ_CHECK(decode_bytes(st, n, 256) == sym2, "one of 256, dense form");
    for (unsigned s = 0; s < 256; ++s)
      DSQ_CHECK(st[12 + s] == (s == (n ? 77u : 0u) ? 1 : 0), "one present symbol: length of %u", s);
  }
  // max_len 1 works for at most two symbols.
  Bytes two = {0, 1, 1, 0, 1};
  DSQ_CHECK(round_trip(two, 2, 1, 64), "max_len 1");
  Bytes three = {0, 1, 2};
  bool threw = false;
  try {
    encode(three.data(), 3, 3, 1, 64);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  DSQ_CHECK(threw, "three symbols do not fit max_len 1");
}

static void test_all_256() {
  Bytes sym(256 * 40);
  for (size_t i = 0; i < sym.size(); ++i) sym[i] = uint8_t(i * 7);
  Bytes st;
  DSQ_CHECK(round_trip(sym, 256, 15, 64, &st), "uniform 256");
  for (unsigned s = 0; s < 256; ++s) DSQ_CHECK(st[12 + s] == 8, "uniform 256: length %u", st[12 + s]);
  DSQ_CHECK(round_trip(sym, 256, 8, 64), "256 symbols, max_len 8");
  bool threw = false;
  try {
    encode(sym.data(), sym.size(), 256, 7, 64);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  DSQ_CHECK(threw, "256 symbols do not fit max_len 7");
  Bytes skew = random_symbols(300000, 256, 1);
  for (unsigned s = 0; s < 256; ++s) skew.push_back(uint8_t(s));  // every symbol present
  DSQ_CHECK(round_trip(skew, 256), "skewed 256");
}

static void test_length_capping() {
  // 30 Fibonacci weights: unlimited Huffman needs 29 bits; capped at 15 (and at 9).
  std::vector<uint64_t> f = {1, 1};
  while (f.size() < 30) f.push_back(f[f.size() - 1] + f[f.size() - 2]);
  const Bytes len = code_lengths(f.data(), 30, 15);
  const Bytes want = {15, 15, 15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9,
                      9,  8,  8,  7,  7,  6,  6,  5,  5,  4,  4,  3,  3,  2,  2};
  DSQ_CHECK(len == want, "fibonacci lengths (same as python's lengths_from_counts)");
  DSQ_CHECK(kraft(len) == 1.0, "complete code");
  for (unsigned ml : {15u, 12u, 9u, 5u}) {
    const Bytes l = code_lengths(f.data(), 30, ml);
    const unsigned mx = *std::max_element(l.begin(), l.end());
    DSQ_CHECK(mx == ml, "max_len %u: longest %u", ml, mx);
    DSQ_CHECK(kraft(l) == 1.0, "max_len %u: Kraft %g", ml, kraft(l));
  }
  // Streams long enough for the fast path to meet 15-bit codes (escapes).
  const Bytes sym = fibonacci_symbols(24);  // ~75k symbols, lengths up to 15 after capping
  Bytes st;
  DSQ_CHECK(round_trip(sym, 24, 15, 4096, &st), "fibonacci 24, max_len 15");
  DSQ_CHECK(*std::max_element(st.begin() + 12, st.begin() + 36) == 15, "15-bit codes present");
  DSQ_CHECK(round_trip(sym, 256, 15, 64), "fibonacci in alphabet 256");
  DSQ_CHECK(round_trip(sym, 24, 11, 128), "fibonacci max_len 11");
  DSQ_CHECK(round_trip(sym, 24, 12, 128), "fibonacci max_len 12");
  DSQ_CHECK(round_trip(sym, 24, 5, 128), "fibonacci max_len 5");
  // Hand-built incomplete / non-optimal codes with long lengths also decode.
  Bytes lengths(20, 0);
  for (unsigned s = 0; s < 15; ++s) lengths[s] = uint8_t(s < 14 ? s + 1 : 15);  // Kraft 1 - 2^-15
  Bytes syms = random_symbols(50000, 15, 0);  // uniform: many 15-bit codes
  DSQ_CHECK(decode_bytes(build_stream(15, 20, 256, lengths, syms), syms.size(), 20) == syms, "hand-built 15-bit code");
}

static void test_mid_byte_and_sizes() {
  // counts {3, 1}: lengths 1, 1 -> one bit per symbol; n % 8 != 0 ends mid-byte.
  for (uint64_t n = 1; n < 80; ++n) {
    Bytes sym(n);
    for (uint64_t i = 0; i < n; ++i) sym[i] = uint8_t(i % 3 == 1);
    Bytes st;
    DSQ_CHECK(round_trip(sym, 2, 15, 64, &st), "mid-byte n=%llu", (unsigned long long)n);
    const uint64_t chunks = (n + 63) / 64;
    DSQ_CHECK(st.size() == 16 + 8 * chunks + (n + 7) / 8, "size n=%llu", (unsigned long long)n);
  }
  for (int t = 0; t < 50; ++t) {  // random lengths: the bit string is exactly ceil(bits / 8)
    const unsigned a = unsigned(rand_u64(1, 256));
    Bytes sym = random_symbols(rand_u64(0, 3000), a, t % 3);
    Bytes st;
    DSQ_CHECK(round_trip(sym, a, 15, 64, &st), "random size case %d", t);
    const Stream parsed = parse(st.data(), st.size(), sym.size(), a);
    uint64_t bits = 0;
    unsigned present = 0;
    for (uint8_t s : sym) bits += parsed.lengths[s];
    for (unsigned s = 0; s < a; ++s) present += parsed.lengths[s] != 0;
    DSQ_CHECK(st.size() == lengths_nbytes(a, present, lengths_form_for(a, present)) + 8 * ((sym.size() + 63) / 64) +
                               (bits + 7) / 8,
              "exact size %d", t);
  }
}

static void test_random_and_chunks() {
  const unsigned alphabets[] = {2, 3, 4, 5, 16, 17, 32, 64, 100, 256};
  for (int t = 0; t < 120; ++t) {
    const unsigned a = alphabets[t % 10];
    const uint64_t n = rand_u64(0, t % 4 == 0 ? 200000 : 20000);
    const Bytes sym = random_symbols(n, a, t % 3);
    unsigned present = 0;
    {
      std::vector<bool> seen(a);
      for (uint8_t s : sym) seen[s] = true;
      for (bool b : seen) present += b;
    }
    unsigned min_len = 1;
    while ((1u << min_len) < present) ++min_len;
    const unsigned ml = unsigned(rand_u64(std::max(min_len, 1u), 15));
    const uint32_t cs = uint32_t(64) << rand_u64(0, 7);
    Bytes st;
    DSQ_CHECK(round_trip(sym, a, ml, cs, &st), "random t=%d a=%u n=%llu ml=%u cs=%u", t, a, (unsigned long long)n, ml,
              cs);
    const Stream parsed = parse(st.data(), st.size(), n, a);
    for (unsigned s = 0; s < a; ++s) DSQ_CHECK(parsed.lengths[s] <= ml, "length <= max_len");
    if (n == 0) continue;
    Stream s = parse(st.data(), st.size(), n, a);
    Decoder d(s);
    Bytes all(n);
    d.decode_all(all.data());
    for (int k = 0; k < 6; ++k) {  // chunk c decodes the tail; partial lengths too
      const uint64_t c = rand_u64(0, s.chunk_count - 1);
      const uint64_t avail = n - c * cs;
      const uint64_t m = k % 2 ? avail : rand_u64(1, avail);
      Bytes part(m + 1, 0xEE);
      d.decode(c, m, part.data());
      DSQ_CHECK(std::equal(part.begin(), part.begin() + m, all.begin() + c * cs), "chunk %llu x %llu",
                (unsigned long long)c, (unsigned long long)m);
      DSQ_CHECK(part[m] == 0xEE, "decode wrote past n symbols");
    }
    bool threw = false;
    try {
      Bytes part(n + 1);
      d.decode(0, n + 1, part.data());
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    DSQ_CHECK(threw, "decode past count");
    threw = false;
    try {
      Bytes part(1);
      d.decode(s.chunk_count, 1, part.data());
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    DSQ_CHECK(threw, "decode from chunk_count");
  }
}

static void test_corrupt() {
  const Bytes sym = random_symbols(3000, 32, 1);
  const unsigned a = 32;
  const Bytes good = encode(sym.data(), sym.size(), a, 15, 64);
  const uint64_t pad_end = round8(12 + a), chunks = (sym.size() + 63) / 64, table_end = pad_end + 8 * chunks;
  DSQ_CHECK(decode_bytes(good, sym.size(), a) == sym, "baseline");
  std::string msg;
  auto expect = [&](const Bytes& st, uint64_t count, unsigned alpha, const char* what, const char* needle) {
    const bool r = rejects(st, count, alpha, &msg);
    DSQ_CHECK(r, "%s: not rejected", what);
    if (r) DSQ_CHECK(msg.find(needle) != std::string::npos, "%s: message '%s' lacks '%s'", what, msg.c_str(), needle);
  };
  // Truncations anywhere (header, lengths, padding, chunk table, bit string).
  const uint64_t keeps[] = {0, 5, 11, 12, 30, 44, 47, pad_end + 3, table_end - 1, table_end, table_end + 10,
                            uint64_t(good.size()) - 1};
  for (uint64_t keep : keeps) {
    Bytes st(good.begin(), good.begin() + keep);
    DSQ_CHECK(rejects(st, sym.size(), a, &msg), "truncated to %llu bytes not rejected", (unsigned long long)keep);
  }
  {
    Bytes st(good.begin(), good.begin() + 5);
    expect(st, sym.size(), a, "short header", "at byte 5");
  }
  {
    Bytes st = good;
    st[0] = 0;
    expect(st, sym.size(), a, "max_len 0", "max_len 0");
    st[0] = 16;
    expect(st, sym.size(), a, "max_len 16", "at byte 0");
  }
  {
    Bytes st = good;
    st[1] = 2;
    expect(st, sym.size(), a, "lengths_form 2", "at byte 1");
  }
  expect(good, sym.size(), 16, "wrong alphabet", "alphabet 32, expected 16");
  expect(good, sym.size(), 256, "wrong alphabet 256", "at byte 2");
  {
    Bytes st = good;
    st[4] = 100;  // chunk_symbols 100
    expect(st, sym.size(), a, "chunk_symbols not a power of two", "at byte 4");
    st[4] = 32;
    expect(st, sym.size(), a, "chunk_symbols 32", "at byte 4");
  }
  expect(good, sym.size() + 64, a, "chunk_count mismatch", "at byte 8");
  {
    Bytes st = good;
    std::fill(st.begin() + 12, st.begin() + 12 + a, 0);
    expect(st, sym.size(), a, "zero lengths everywhere", "no symbol has a code length");
  }
  {
    Bytes st = good;
    st[12] = st[13] = st[14] = 1;
    expect(st, sym.size(), a, "Kraft > 1", "Kraft");
  }
  {
    Bytes st = good;
    unsigned longest = 0, at = 0;
    for (unsigned s = 0; s < a; ++s)
      if (st[12 + s] > longest) longest = st[12 + s], at = s;
    st[0] = uint8_t(longest - 1);  // a length above max_len
    expect(st, sym.size(), a, "length > max_len", ("at byte " + std::to_string(12 + at)).c_str());
  }
  {
    Bytes st = good;
    st[12 + a] = 1;  // padding 44..47
    expect(st, sym.size(), a, "nonzero padding", "at byte 44");
  }
  {
    Bytes st = good;
    wr64(st, pad_end, 3);
    expect(st, sym.size(), a, "first offset nonzero", "chunk_bit_offset[0]");
  }
  {
    Bytes st = good;
    wr64(st, pad_end + 8 * 5, rd64(st, pad_end + 8 * 4) - 1);
    expect(st, sym.size(), a, "decreasing offsets", ("at byte " + std::to_string(pad_end + 40)).c_str());
  }
  {
    Bytes st = good;
    wr64(st, pad_end + 8 * (chunks - 1), 8 * (good.size() - table_end));
    expect(st, sym.size(), a, "offset == bit_len", "outside the bit string");
    wr64(st, pad_end + 8 * (chunks - 1), ~uint64_t(0));
    expect(st, sym.size(), a, "offset huge", "outside the bit string");
  }
  {
    Bytes st = good;
    wr64(st, pad_end + 8 * 7, rd64(st, pad_end + 8 * 7) + 1);  // valid range, wrong place
    expect(st, sym.size(), a, "offset inconsistent with the codes", "chunk 6 ends at bit");
  }
  {
    Bytes st(good.begin(), good.begin() + table_end + 10);  // count > bit_len
    expect(st, sym.size(), a, "count > bits", "symbols need at least");
  }
  // Truncated bit string with consistent offsets: bits run out while decoding.
  {
    const Bytes s2 = random_symbols(4000, 3, 0);  // ~1.67 bits per symbol
    const Bytes st = encode(s2.data(), s2.size(), 3, 15, 64);
    const uint64_t last_off = rd64(st, round8(15) + 8 * 62);
    DSQ_CHECK(8 * (st.size() - (round8(15) + 8 * 63)) - last_off > 40, "last chunk spans > 5 bytes");
    for (int cut = 1; cut <= 3; ++cut) {
      Bytes c(st.begin(), st.end() - cut);
      expect(c, s2.size(), 3, "truncated bit string", "bit string ends");
    }
  }
  // Invalid codes (unassigned prefix of an incomplete code), in the fast and slow paths.
  for (uint64_t where : std::vector<uint64_t>{0, 13, 20000, 39990, 39999}) {
    const Bytes zeros(40000, 0);
    Bytes st = encode(zeros.data(), zeros.size(), 4, 15, 4096);  // one symbol, code '0'
    const uint64_t te = round8(12 + 4) + 8 * 10;
    st[te + where / 8] |= uint8_t(0x80 >> (where % 8));
    expect(st, zeros.size(), 4, "invalid code", "invalid code");
    if (rejects(st, zeros.size(), 4, &msg))
      DSQ_CHECK(msg.find("at bit " + std::to_string(where) + " ") != std::string::npos, "invalid code position: %s",
                msg.c_str());
  }
  {
    Bytes lengths = {2, 2, 2, 0};  // Kraft 3/4: '11' is unassigned
    Bytes s3 = random_symbols(20000, 3, 0);
    Bytes st = build_stream(15, 4, 4096, lengths, s3);
    DSQ_CHECK(decode_bytes(st, s3.size(), 4) == s3, "incomplete code decodes");
    const uint64_t te = round8(16) + 8 * 5;
    const uint64_t sym_at = 15001;  // overwrite that symbol's code with 11
    st[te + 2 * sym_at / 8] |= uint8_t(0xC0 >> ((2 * sym_at) % 8));
    expect(st, s3.size(), 4, "unassigned 2-bit code", ("at bit " + std::to_string(2 * sym_at)).c_str());
  }
  // Lengths changed so codes no longer match: must throw or decode to something, never crash.
  {
    Bytes st = good;
    std::swap(st[12 + 3], st[12 + 16]);
    try {
      decode_bytes(st, sym.size(), a);
    } catch (const std::invalid_argument&) {
    }
  }
}

// Form 1 (format 1.2): u8 listed - 1, then {symbol, length} pairs, symbols increasing.
static void test_sparse_lengths() {
  // Chosen exactly when shorter after padding; both forms decode to the same symbols.
  struct Case { unsigned alphabet, distinct; };
  for (const Case c : {Case{256, 1}, Case{256, 16}, Case{256, 125}, Case{256, 126}, Case{256, 256}, Case{16, 1},
                       Case{16, 2}, Case{16, 16}, Case{4, 1}, Case{64, 20}, Case{64, 30}}) {
    Bytes sym(5000);
    for (size_t i = 0; i < sym.size(); ++i)
      sym[i] = uint8_t((c.alphabet - c.distinct) + (i % (2 * c.distinct) < c.distinct ? i % c.distinct : 0));  // skewed
    const Bytes dense = encode(sym.data(), sym.size(), c.alphabet, 15, 256, kLengthsDense);
    const Bytes sparse = encode(sym.data(), sym.size(), c.alphabet, 15, 256, kLengthsSparse);
    const Bytes chosen = encode(sym.data(), sym.size(), c.alphabet, 15, 256);
    DSQ_CHECK(dense[1] == 0 && sparse[1] == 1, "form bytes %u %u", dense[1], sparse[1]);
    DSQ_CHECK(int64_t(sparse.size()) - int64_t(dense.size()) ==
                  int64_t(lengths_nbytes(c.alphabet, c.distinct, kLengthsSparse)) -
                      int64_t(lengths_nbytes(c.alphabet, c.distinct, kLengthsDense)),
              "a=%u d=%u: the forms differ only in the lengths", c.alphabet, c.distinct);
    DSQ_CHECK(chosen == (sparse.size() < dense.size() ? sparse : dense), "a=%u d=%u: the shorter form is chosen",
              c.alphabet, c.distinct);
    DSQ_CHECK(decode_bytes(dense, sym.size(), c.alphabet) == sym, "a=%u d=%u dense decode", c.alphabet, c.distinct);
    DSQ_CHECK(decode_bytes(sparse, sym.size(), c.alphabet) == sym, "a=%u d=%u sparse decode", c.alphabet, c.distinct);
    const Stream sd = parse(dense.data(), dense.size(), sym.size(), c.alphabet);
    const Stream ss = parse(sparse.data(), sparse.size(), sym.size(), c.alphabet);
    DSQ_CHECK(sd.lengths == ss.lengths && ss.lengths_form == kLengthsSparse, "a=%u d=%u: same lengths", c.alphabet,
              c.distinct);
  }
  DSQ_CHECK(lengths_form_for(256, 16) == kLengthsSparse && lengths_form_for(256, 126) == kLengthsDense &&
                lengths_form_for(256, 125) == kLengthsSparse && lengths_form_for(4, 1) == kLengthsDense,
            "form choice");
  // Hand example: counts {2, 1, 1} of alphabet 256 -> listed 3: (0,1) (1,2) (2,2).
  {
    const Bytes sym = {0, 0, 1, 2};
    const Bytes st = encode(sym.data(), sym.size(), 256, 15, 64);
    const Bytes want = from_hex("0f010001400000000100000002000101020202000000000000000000000000002c");
    DSQ_CHECK(st == want, "sparse hand example differs (%zu bytes)", st.size());
  }
  // Corruptions of the sparse lengths: each rejected with the byte it names.
  const Bytes sym = random_symbols(3000, 16, 0);
  const Bytes good = encode(sym.data(), sym.size(), 256, 15, 64, kLengthsSparse);
  DSQ_CHECK(decode_bytes(good, sym.size(), 256) == sym, "sparse baseline");
  const unsigned listed = good[12] + 1u;
  std::string msg;
  auto expect = [&](const Bytes& st, const char* what, const char* needle) {
    const bool r = rejects(st, sym.size(), 256, &msg);
    DSQ_CHECK(r, "%s: not rejected", what);
    if (r) DSQ_CHECK(msg.find(needle) != std::string::npos, "%s: message '%s' lacks '%s'", what, msg.c_str(), needle);
  };
  {
    Bytes st(good.begin(), good.begin() + 12);
    expect(st, "no listed count", "need 13");
    st.assign(good.begin(), good.begin() + 13 + 2 * listed - 1);
    expect(st, "truncated pairs", "truncated code lengths");
  }
  {
    Bytes st = good;
    st[13 + 2 * 3] = st[13 + 2 * 2];  // symbol 3 repeats symbol 2
    expect(st, "repeated symbol", ("at byte " + std::to_string(13 + 6)).c_str());
    st = good;
    st[13 + 2 * 1] = 0;  // below the first
    expect(st, "decreasing symbols", "increasing order");
  }
  {
    Bytes st = good;
    st[14] = 0;
    expect(st, "length 0", "at byte 14");
    st[14] = 15;
    st[0] = 14;
    expect(st, "length > max_len", "not in 1..max_len");
  }
  {
    Bytes small = random_symbols(500, 3, 0);
    Bytes st = encode(small.data(), small.size(), 4, 15, 64, kLengthsSparse);
    st[13 + 2 * 2] = 4;  // symbol 4 of alphabet 4
    bool r = rejects(st, small.size(), 4, &msg);
    DSQ_CHECK(r && msg.find("outside the alphabet") != std::string::npos, "symbol outside: %s", msg.c_str());
    st = encode(small.data(), small.size(), 4, 15, 64, kLengthsSparse);
    st[12] = 4;  // 5 listed of 4
    r = rejects(st, small.size(), 4, &msg);
    DSQ_CHECK(r && msg.find("5 symbols listed") != std::string::npos, "too many listed: %s", msg.c_str());
  }
  {
    Bytes st = good;
    const uint64_t end = 13 + 2 * uint64_t(listed);
    DSQ_CHECK(end % 8 != 0, "test needs padding after the pairs");
    st[end] = 1;
    expect(st, "nonzero padding", ("at byte " + std::to_string(end)).c_str());
  }
  {
    Bytes st = good;
    st[14] = 1;
    st[16] = 1;  // two codes of length 1 plus the rest: Kraft > 1
    expect(st, "Kraft > 1", "Kraft");
  }
}

static void test_fuzz() {
  // Random byte flips / truncations / extensions of valid streams: parse + decode either
  // succeed or throw std::invalid_argument; nothing else, no out-of-bounds access (ASan).
  int rejected = 0, accepted = 0;
  for (int t = 0; t < 3000; ++t) {
    const unsigned a = (t % 3 == 0) ? 256 : unsigned(rand_u64(1, 40));
    const Bytes sym = random_symbols(rand_u64(0, 3000), a, t % 3);
    Bytes st = encode(sym.data(), sym.size(), a, unsigned(rand_u64(9, 15)), 64);
    const int mode = t % 4;
    if (mode == 0 && !st.empty()) {
      for (int k = 0, m = int(rand_u64(1, 4)); k < m; ++k)
        st[rand_u64(0, st.size() - 1)] ^= uint8_t(1u << rand_u64(0, 7));
    } else if (mode == 1) {
      st.resize(rand_u64(0, st.size()));
    } else if (mode == 2 && st.size() > 12) {  // corrupt only the bit string region
      const uint64_t lo = st.size() - std::min<uint64_t>(st.size() - 12, 1 + sym.size() / 2);
      st[rand_u64(lo, st.size() - 1)] = uint8_t(rand_u64(0, 255));
    } else {
      st.push_back(uint8_t(rand_u64(0, 255)));
    }
    try {
      decode_bytes(st, sym.size(), a);
      ++accepted;
    } catch (const std::invalid_argument&) {
      ++rejected;
    } catch (...) {
      DSQ_CHECK(false, "fuzz case %d threw something other than std::invalid_argument", t);
    }
  }
  DSQ_CHECK(rejected > 500 && accepted > 500, "fuzz: %d rejected, %d accepted", rejected, accepted);
}

static void test_encode_arguments() {
  const Bytes sym = {0, 1, 5};
  auto throws = [&](unsigned alphabet, unsigned max_len, uint32_t cs) {
    try {
      encode(sym.data(), sym.size(), alphabet, max_len, cs);
    } catch (const std::invalid_argument&) {
      return true;
    }
    return false;
  };
  DSQ_CHECK(throws(5, 15, 64), "symbol outside the alphabet");
  DSQ_CHECK(throws(0, 15, 64), "alphabet 0");
  DSQ_CHECK(throws(257, 15, 64), "alphabet 257");
  DSQ_CHECK(throws(6, 0, 64), "max_len 0");
  DSQ_CHECK(throws(6, 16, 64), "max_len 16");
  DSQ_CHECK(throws(6, 15, 32), "chunk_symbols 32");
  DSQ_CHECK(throws(6, 15, 96), "chunk_symbols 96");
  DSQ_CHECK(!throws(6, 15, 64), "valid arguments");
  // Canonical codes: consecutive within a length, first of each length = (prev + 1) << diff.
  const Bytes len = {3, 0, 1, 3, 5, 5, 4, 5, 5};
  const std::vector<uint16_t> code = canonical_codes(len.data(), 9);
  const std::vector<uint16_t> want = {0b100, 0, 0b0, 0b101, 0b11010, 0b11011, 0b1100, 0b11100, 0b11101};
  DSQ_CHECK(code == want, "canonical codes");
}

// decode_from: the stream split into random segments at any symbol boundary (inside
// chunks and across their ends), each decoded from the bit where the previous ended, as
// decode="stream" does per weight tile; plus its bounds checks.
static void test_decode_from_segments() {
  for (int t = 0; t < 40; ++t) {
    const unsigned a = t % 2 ? 32 : 256;
    const uint64_t n = rand_u64(1, 50000);
    const Bytes sym = random_symbols(n, a, t % 3);
    const uint32_t cs = uint32_t(64) << rand_u64(0, 4);
    Bytes st;
    DSQ_CHECK(round_trip(sym, a, 15, cs, &st), "decode_from t=%d", t);
    Stream s = parse(st.data(), st.size(), n, a);
    Decoder d(s);
    uint64_t pos = 0, at = 0;
    while (at < n) {
      const uint64_t m = std::min<uint64_t>(n - at, rand_u64(0, t % 4 == 0 ? 7 : 3000));
      Bytes part(m + 1, 0xEE);
      const uint64_t end = d.decode_from(pos, m, part.data());
      DSQ_CHECK(std::equal(part.begin(), part.begin() + m, sym.begin() + at), "segment at %llu x %llu",
                (unsigned long long)at, (unsigned long long)m);
      DSQ_CHECK(part[m] == 0xEE, "decode_from wrote past n symbols");
      if (m && (at + m) % cs == 0 && at + m < n)
        DSQ_CHECK(end == s.chunk_offset((at + m) / cs), "segment ends where the next chunk starts");
      pos = end;
      at += m;
    }
    DSQ_CHECK(pos <= s.bit_len && s.bit_len - pos < 8, "the last segment ends in the last byte");
    bool threw = false;
    try {
      Bytes part(1);
      d.decode_from(s.bit_len, 1, part.data());
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    DSQ_CHECK(threw, "decode_from at bit_len throws");
  }
}

int main() {
  test_hand_example();
  test_decode_from_segments();
  test_golden_shared_with_python();
  test_one_symbol();
  test_all_256();
  test_length_capping();
  test_mid_byte_and_sizes();
  test_random_and_chunks();
  test_corrupt();
  test_sparse_lengths();
  test_fuzz();
  test_encode_arguments();
  DSQ_TEST_MAIN_END();
}
