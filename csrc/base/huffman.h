// Canonical Huffman coding of byte symbols: the per-stream "entropy 1" layout of
// docs/FORMAT.md ("Huffman (entropy 1, 1.1), per stream").
//
//   u8  max_len (1..15)   u8 lengths_form   u16 alphabet   u32 chunk_symbols   u32 chunk_count
//   code lengths: form 0 u8 lengths[alphabet] (0 = absent); form 1 (format 1.2) u8 present - 1,
//   then present x {u8 symbol, u8 length}, symbols increasing; zero padding to 8 bytes
//   u64 chunk_bit_offset[chunk_count]
//   bit string: canonical codes MSB first, bit i is bit (7 - i % 8) of byte i / 8
//
// Only alphabets of 1..256 symbols are supported here (symbols are bytes).
//
// Encoder code lengths: package-merge (optimal length-limited prefix code), made
// deterministic so that python/deepsqueeze/huffman.py produces the same bytes:
//   * symbols with a nonzero count are the leaves, sorted by (count, symbol value);
//   * list[1] = leaves; list[j] = stable merge of the leaves with the packages of
//     list[j-1] (pairs of consecutive items, an odd last item dropped), a leaf before a
//     package of equal weight; j = 2..max_len;
//   * the first 2n-2 items of list[max_len] are selected; the packages among the first k
//     items of list[j] select the first 2 * (#packages) items of list[j-1]; a leaf's code
//     length is the number of levels at which it is selected.
//   * no symbol present (count 0): symbol 0 gets length 1; one symbol present: length 1.
// Codes are then assigned canonically (sorted by (length, symbol), consecutive codes).
// The encoder writes form 1 exactly when it is shorter than form 0 after padding.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

namespace dsq {
namespace huffman {

constexpr unsigned kMaxCodeLen = 15;
constexpr unsigned kMaxAlphabet = 256;
constexpr uint32_t kMinChunkSymbols = 64;
enum LengthsForm : uint8_t { kLengthsDense = 0, kLengthsSparse = 1 };

// Bytes of header + code lengths + padding of a form; the form the encoder picks.
uint64_t lengths_nbytes(unsigned alphabet, unsigned present, LengthsForm form);
LengthsForm lengths_form_for(unsigned alphabet, unsigned present);

// A validated view of one coded stream (points into the caller's bytes).
struct Stream {
  unsigned max_len = 0, alphabet = 0;
  uint32_t chunk_symbols = 0, chunk_count = 0;
  uint64_t count = 0;
  LengthsForm lengths_form = kLengthsDense;
  std::array<uint8_t, kMaxAlphabet> lengths{};  // per symbol (either form expanded), 0 = absent
  const uint8_t* data = nullptr;           // the stream's first byte
  const uint8_t* chunk_offsets = nullptr;  // chunk_count little-endian u64 (unaligned)
  const uint8_t* bits = nullptr;           // the bit string
  uint64_t bit_len = 0;                    // its length in bits (8 * its bytes)

  uint64_t chunk_offset(uint64_t c) const;  // chunk_bit_offset[c] (c < chunk_count)
};

// Validates header, lengths (at least one, each <= max_len <= 15, Kraft sum <= 1; form 1:
// symbols increasing and inside the alphabet, lengths >= 1), chunk
// table (ceil(count / chunk_symbols) entries, first 0, non-decreasing, < bit_len) and
// sizes. `count` is the number of symbols (from the stream entry), `alphabet` the one the
// element type implies. Throws std::invalid_argument naming the problem and its byte
// offset within the stream.
Stream parse(const uint8_t* data, uint64_t nbytes, uint64_t count, unsigned alphabet);

// Table-driven decoder. A first-level table of 2^F entries (F = min(12, longest code
// length in use); 9 instead of 12 for streams under 16384 symbols) gives up to three
// whole codes per lookup (symbols + total length); codes longer than F bits fall back
// to a canonical (first code, count) search. The bit buffer is a left-aligned u64
// refilled by one unaligned big-endian 8-byte load; a bounds-checked path decodes the
// last bytes of the string and the last few symbols of each chunk. Output: the fast path
// stores 4 bytes at a time but never past out[n - 1]. Keeps a pointer to the stream's
// bytes (the caller keeps them alive).
class Decoder {
 public:
  explicit Decoder(const Stream& s);
  // Decodes `n` symbols starting at the first symbol of chunk `chunk` into out. Requires
  // chunk * chunk_symbols + n <= count. Never reads outside the stream; throws
  // std::invalid_argument if the bits run out, an unassigned code is met, or a chunk's
  // codes do not end where the next chunk's offset says.
  void decode(uint64_t chunk, uint64_t n, uint8_t* out) const;
  void decode_all(uint8_t* out) const;  // all `count` symbols
  // Decodes `n` symbols whose first code starts at bit `bit_pos` (any symbol boundary,
  // not only a chunk start: decode="stream" records one per weight tile) and returns the
  // bit position after the last code. Codes run on across chunk boundaries (the format
  // stores chunks back to back). Never reads outside the stream; throws
  // std::invalid_argument when the bits run out or an unassigned code is met.
  uint64_t decode_from(uint64_t bit_pos, uint64_t n, uint8_t* out) const;
  const Stream& stream() const { return s_; }
  unsigned first_level_bits() const { return fbits_; }
  unsigned longest_code() const { return tbits_; }

 private:
  uint64_t run(uint64_t pos, uint64_t n, uint8_t* out) const;  // returns the end bit position
  uint64_t run_checked(uint64_t pos, uint64_t n, uint8_t* out) const;
  // (symbol << 4 | length) of the code at the top of peek15 (15 bits), 0 if unassigned.
  unsigned lookup(uint32_t peek15) const;

  Stream s_;
  unsigned tbits_ = 1;   // longest code length in use
  unsigned fbits_ = 1;   // first-level table bits
  std::vector<uint32_t> multi_;   // len | nsym << 4 | sym0 << 8 | sym1 << 16 | sym2 << 24; len 0 = escape
  std::vector<uint16_t> single_;  // sym << 4 | len for codes <= fbits_; 0 = longer or unassigned
  uint32_t first_[16] = {}, cnt_[16] = {}, base_[16] = {};
  uint8_t sorted_[256] = {};      // symbols in canonical order
};

// Code lengths for symbol counts freq[0..alphabet) (package-merge as described above).
// Throws std::invalid_argument if more than 2^max_len symbols are present or arguments
// are out of range.
std::vector<uint8_t> code_lengths(const uint64_t* freq, unsigned alphabet, unsigned max_len = 15);

// Canonical codes for lengths (0 for absent symbols).
std::vector<uint16_t> canonical_codes(const uint8_t* lengths, unsigned alphabet);

// Encodes symbols (each < alphabet) into one coded stream. chunk_symbols: a power of two
// >= 64. Throws std::invalid_argument on bad arguments.
// lengths_form -1 picks the shorter form; 0 or 1 forces one.
std::vector<uint8_t> encode(const uint8_t* symbols, uint64_t count, unsigned alphabet,
                            unsigned max_len = 15, uint32_t chunk_symbols = 4096, int lengths_form = -1);

}  // namespace huffman
}  // namespace dsq
