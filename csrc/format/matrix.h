// The matrix view of a weight tensor in any encoding of docs/FORMAT.md (layout x values x
// entropy): stream symbols (Huffman decoded), the stored entries in row order, and dense
// decoding. Works on tensors that format::parse has validated (row_ptr, col_idx, gaps and
// Huffman streams are checked there); a bad Huffman stream still only ever throws.
#pragma once
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "base/huffman.h"
#include "format/file.h"

namespace dsq::format {

// Element i of a little-endian stream payload (unaligned: payloads may sit anywhere in a
// caller's buffer).
inline uint32_t rd_u32(const uint8_t* p, uint64_t i) {
  uint32_t v;
  std::memcpy(&v, p + 4 * i, 4);
  return v;
}
inline uint16_t rd_u16(const uint8_t* p, uint64_t i) {
  uint16_t v;
  std::memcpy(&v, p + 2 * i, 2);
  return v;
}
inline float rd_f32(const uint8_t* p, uint64_t i) {
  float v;
  std::memcpy(&v, p + 4 * i, 4);
  return v;
}

// The elements of a u8 / i8 / i4 / bits (<= 8 wide) stream in order, one unsigned symbol
// each (i8 as its byte, i4 as its nibble, bits as the b-bit value). A Huffman stream is
// decoded chunk by chunk into a buffer of one chunk, so memory stays bounded.
// Throws std::invalid_argument when a coded stream is bad.
class SymbolReader {
 public:
  explicit SymbolReader(const Stream& s);
  uint8_t next() {
    if (coded_) {
      if (i_ == buf_end_) refill();
      return buf_[static_cast<size_t>(i_++ - buf_begin_)];
    }
    return raw(i_++);
  }
  uint64_t position() const { return i_; }
  uint64_t count() const { return count_; }

 private:
  uint8_t raw(uint64_t i) const;
  void refill();

  const Stream& s_;
  uint64_t count_ = 0, i_ = 0;
  bool coded_ = false;
  std::unique_ptr<huffman::Decoder> dec_;
  std::vector<uint8_t> buf_;
  uint64_t buf_begin_ = 0, buf_end_ = 0;
};

// All symbols of a stream (see SymbolReader). Throws std::invalid_argument.
std::vector<uint8_t> decode_symbols(const Stream& s);

// Parses a Huffman-coded stream (huffman::parse with the alphabet its elem type implies).
huffman::Stream parse_huffman(const Stream& s);

// The stored entries of a weight matrix (rows = dims[0], cols = numel / rows), row by
// row, columns increasing. csr: its nonzeros; csr_relative: its value entries (fillers
// dropped); block_csr: every position of every stored block that lies inside the matrix
// (a block's explicit zeros included); dense: every element.
struct SparseRows {
  uint64_t rows = 0, cols = 0;
  std::vector<uint32_t> row_ptr;  // rows + 1
  std::vector<uint32_t> col;      // one per entry
  // values f32 | f16 | int8_channel | int4_group: `values` (scales applied).
  std::vector<float> values;
  // values codebook: `codes` per entry, looked up in `table` (f16 tables widened):
  // w = table[(per_row ? row : 0) * table_entries + code].
  bool coded = false;
  std::vector<uint8_t> codes;
  std::vector<float> table;
  uint32_t table_entries = 0;  // 2^codebook_bits
  bool per_row = false;
  uint64_t nnz() const { return col.size(); }
};

// Throws FormatError (PAYLOAD) when a Huffman stream cannot be decoded, UnsupportedError
// when the entry count does not fit u32.
SparseRows decode_sparse(const Tensor& t);

// The tensor as a dense row-major float32 array of numel elements (any encoding).
std::vector<float> decode_dense(const Tensor& t);

// IEEE half -> float.
float half_to_f32(uint16_t h);

}  // namespace dsq::format
