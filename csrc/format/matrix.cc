#include "format/matrix.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "base/error.h"

namespace dsq::format {

float half_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while (!(mant & 0x400));
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant & 0x3FF) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

huffman::Stream parse_huffman(const Stream& s) {
  return huffman::parse(s.data, s.nbytes, s.count, huffman_alphabet(s.elem_type, s.bits));
}

SymbolReader::SymbolReader(const Stream& s) : s_(s), count_(s.count) {
  if (s.entropy == Entropy::kHuffman) {
    coded_ = true;
    dec_ = std::make_unique<huffman::Decoder>(parse_huffman(s));
    buf_.resize(dec_->stream().chunk_symbols);
  } else if (s.elem_type != ElemType::kU8 && s.elem_type != ElemType::kI8 && s.elem_type != ElemType::kI4 &&
             (s.elem_type != ElemType::kBits || s.bits > 8)) {
    throw std::invalid_argument(std::string("a ") + elem_type_name(s.elem_type) + " stream has no symbols");
  }
}

uint8_t SymbolReader::raw(uint64_t i) const {
  switch (s_.elem_type) {
    case ElemType::kI4: {
      const uint8_t b = s_.data[i / 2];
      return (i & 1) ? uint8_t(b >> 4) : uint8_t(b & 0xF);
    }
    case ElemType::kBits: {
      const unsigned b = s_.bits;
      const uint64_t bit = i * b;
      // b <= 8: the value spans at most two bytes.
      unsigned v = s_.data[bit / 8];
      if ((bit % 8) + b > 8) v |= unsigned(s_.data[bit / 8 + 1]) << 8;
      return uint8_t((v >> (bit % 8)) & ((1u << b) - 1));
    }
    default: return s_.data[i];
  }
}

void SymbolReader::refill() {
  const uint64_t cs = dec_->stream().chunk_symbols;
  const uint64_t chunk = i_ / cs;
  const uint64_t n = std::min<uint64_t>(cs, count_ - chunk * cs);
  dec_->decode(chunk, n, buf_.data());
  buf_begin_ = chunk * cs;
  buf_end_ = buf_begin_ + n;
}

std::vector<uint8_t> decode_symbols(const Stream& s) {
  std::vector<uint8_t> out(static_cast<size_t>(s.count));
  if (s.entropy == Entropy::kHuffman) {
    if (s.count) huffman::Decoder(parse_huffman(s)).decode_all(out.data());
    return out;
  }
  SymbolReader r(s);
  for (auto& v : out) v = r.next();
  return out;
}

namespace {

const Stream& need(const Tensor& t, Role role) {
  const Stream* s = t.stream(role);
  if (!s) throw FormatError("TENSORS", 0, "tensor '" + t.name + "': no " + role_name(role) + " stream");
  return *s;
}

// Values of the stored slots: value(slot, row, col) or code(slot).
class ValueReader {
 public:
  explicit ValueReader(const Tensor& t) : t_(t), cols_(t.cols()) {
    if (t.values == Values::kCodebook) {
      codes_ = decode_symbols(need(t, Role::kIndices));
      const Stream& cb = need(t, Role::kCodebook);
      entries_ = 1u << t.codebook_bits;
      table_.resize(static_cast<size_t>(cb.count));
      for (uint64_t i = 0; i < cb.count; ++i)
        table_[i] = cb.elem_type == ElemType::kF16 ? half_to_f32(rd_u16(cb.data, i)) : rd_f32(cb.data, i);
      per_row_ = cb.count > entries_;
      return;
    }
    values_ = &need(t, Role::kValues);
    if (t.values == Values::kInt8Channel || t.values == Values::kInt4Group) {
      symbols_ = decode_symbols(*values_);
      scales_ = &need(t, Role::kScales);
      if (t.values == Values::kInt4Group) groups_ = (cols_ + t.group_size - 1) / t.group_size;
    }
  }
  float value(uint64_t s, uint64_t r, uint64_t c) const {
    switch (t_.values) {
      case Values::kF32: return rd_f32(values_->data, s);
      case Values::kF16: return half_to_f32(rd_u16(values_->data, s));
      case Values::kInt8Channel: return int8_row_scale(*scales_, r) * float(int8_t(symbols_[s]));
      case Values::kInt4Group: {
        const int nib = symbols_[s];
        return rd_f32(scales_->data, r * groups_ + c / t_.group_size) * float(nib >= 8 ? nib - 16 : nib);
      }
      case Values::kCodebook: return table_[(per_row_ ? r * entries_ : 0) + codes_[s]];
    }
    return 0.f;
  }
  uint8_t code(uint64_t s) const { return codes_[s]; }
  std::vector<float>& table() { return table_; }
  uint32_t entries() const { return entries_; }
  bool per_row() const { return per_row_; }

 private:
  const Tensor& t_;
  uint64_t cols_;
  const Stream* values_ = nullptr;
  const Stream* scales_ = nullptr;
  uint64_t groups_ = 0;
  std::vector<uint8_t> symbols_, codes_;
  std::vector<float> table_;
  uint32_t entries_ = 0;
  bool per_row_ = false;
};

// Calls f(row, col, slot) for every stored value inside the matrix, row by row with
// columns increasing (slot = the value's index in the value streams).
template <typename F>
void visit(const Tensor& t, F&& f) {
  const uint64_t rows = t.rows(), cols = t.cols();
  if (t.layout == Layout::kDense) {
    for (uint64_t r = 0; r < rows; ++r)
      for (uint64_t c = 0; c < cols; ++c) f(r, c, r * cols + c);
    return;
  }
  const Stream& rp = need(t, Role::kRowPtr);
  const Stream& ci = need(t, Role::kColIdx);
  auto col_at = [&](uint64_t e) -> uint64_t {
    return ci.elem_type == ElemType::kU16 ? rd_u16(ci.data, e) : rd_u32(ci.data, e);
  };
  if (t.layout == Layout::kCsr) {
    for (uint64_t r = 0; r < rows; ++r)
      for (uint64_t e = row_ptr_at(rp, r), end = row_ptr_at(rp, r + 1); e < end; ++e) f(r, col_at(e), e);
    return;
  }
  if (t.layout == Layout::kCsrRelative) {
    SymbolReader gaps(ci);
    const unsigned filler = (1u << ci.bits) - 1;
    for (uint64_t r = 0; r < rows; ++r) {
      int64_t c = -1;
      for (uint64_t e = row_ptr_at(rp, r), end = row_ptr_at(rp, r + 1); e < end; ++e) {
        const unsigned g = gaps.next();
        if (g == filler) {
          c += g;
        } else {
          c += 1 + g;
          f(r, static_cast<uint64_t>(c), e);
        }
      }
    }
    return;
  }
  // block_csr: matrix row r lies in block row r / br at offset i = r % br.
  const uint64_t br = t.block_rows, bc = t.block_cols, bsize = br * bc;
  for (uint64_t r = 0; r < rows; ++r) {
    const uint64_t R = r / br, i = r % br;
    for (uint64_t k = row_ptr_at(rp, R), end = row_ptr_at(rp, R + 1); k < end; ++k) {
      const uint64_t c0 = col_at(k) * bc;
      for (uint64_t j = 0; j < bc && c0 + j < cols; ++j) f(r, c0 + j, k * bsize + i * bc + j);
    }
  }
}

template <typename F>
auto payload_errors(const Tensor& t, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const FormatError&) {
    throw;
  } catch (const std::invalid_argument& e) {
    throw FormatError("PAYLOAD", 0, "tensor '" + t.name + "': " + e.what());
  }
}

}  // namespace

SparseRows decode_sparse(const Tensor& t) {
  return payload_errors(t, [&]() {
    SparseRows m;
    m.rows = t.rows();
    m.cols = t.cols();
    ValueReader vr(t);
    m.coded = t.values == Values::kCodebook;
    m.row_ptr.assign(static_cast<size_t>(m.rows + 1), 0);
    const uint64_t limit = std::numeric_limits<uint32_t>::max();
    visit(t, [&](uint64_t r, uint64_t c, uint64_t s) {
      if (m.col.size() >= limit)
        throw UnsupportedError("tensor '" + t.name + "': more than 2^32 - 1 entries for SparseRows");
      ++m.row_ptr[r + 1];
      m.col.push_back(static_cast<uint32_t>(c));
      if (m.coded)
        m.codes.push_back(vr.code(s));
      else
        m.values.push_back(vr.value(s, r, c));
    });
    for (uint64_t r = 0; r < m.rows; ++r) m.row_ptr[r + 1] += m.row_ptr[r];
    if (m.coded) {
      m.table = std::move(vr.table());
      m.table_entries = vr.entries();
      m.per_row = vr.per_row();
    }
    return m;
  });
}

std::vector<float> decode_dense(const Tensor& t) {
  return payload_errors(t, [&]() {
    std::vector<float> out(static_cast<size_t>(t.numel()), 0.f);
    const uint64_t cols = t.cols();
    ValueReader vr(t);
    visit(t, [&](uint64_t r, uint64_t c, uint64_t s) { out[r * cols + c] = vr.value(s, r, c); });
    return out;
  });
}

}  // namespace dsq::format
