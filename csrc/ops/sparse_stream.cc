#include "ops/sparse_stream.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "base/error.h"
#include "format/matrix.h"

namespace dsq::rt {
namespace {

using format::ElemType;
using format::Layout;
using format::Role;
using format::Values;
using format::rd_f32;
using format::rd_u16;
using format::rd_u32;

// Entries a tile aims at: the decoded CSR of a tile (~3-6 B per entry, x 16 for the row
// tiles' slots) should stay in L2 next to the kernel's working set.
constexpr uint64_t kTargetTileEntries = 16384;

size_t align64(size_t n) { return (n + 63) / 64 * 64; }
size_t gcd(size_t a, size_t b) { return b ? gcd(b, a % b) : a; }

AlignedBuffer copy_bytes(const format::Stream& s) {
  AlignedBuffer b(std::max<uint64_t>(s.nbytes, 1));
  if (s.nbytes) std::memcpy(b.data(), s.data, static_cast<size_t>(s.nbytes));
  return b;
}

}  // namespace

void StreamWeights::copy_symbols(const format::Stream* s, Symbols& out) {
  if (!s) return;
  out.present = true;
  out.coded = s->entropy == format::Entropy::kHuffman;
  out.elem = s->elem_type;
  out.bits = s->bits;
  out.count = s->count;
  out.bytes = copy_bytes(*s);
  if (out.coded) {
    format::Stream copy = *s;
    copy.data = out.bytes.as<uint8_t>();
    out.dec = std::make_unique<huffman::Decoder>(format::parse_huffman(copy));
  }
}

uint64_t StreamWeights::read_symbols(const Symbols& s, uint64_t first, uint64_t count, uint64_t bit, uint8_t* out,
                                     uint64_t* coded) const {
  if (count == 0) return bit;
  if (s.coded) {
    *coded += count;
    return s.dec->decode_from(bit, count, out);
  }
  const uint8_t* d = s.bytes.as<uint8_t>();
  switch (s.elem) {
    case ElemType::kI4:
      for (uint64_t i = 0; i < count; ++i) {
        const uint64_t j = first + i;
        out[i] = (j & 1) ? uint8_t(d[j / 2] >> 4) : uint8_t(d[j / 2] & 0xF);
      }
      break;
    case ElemType::kBits: {
      const unsigned b = s.bits, mask = (1u << b) - 1;
      for (uint64_t i = 0; i < count; ++i) {
        const uint64_t at = (first + i) * b;
        unsigned v = d[at / 8];
        if ((at % 8) + b > 8) v |= unsigned(d[at / 8 + 1]) << 8;
        out[i] = uint8_t((v >> (at % 8)) & mask);
      }
      break;
    }
    default: std::memcpy(out, d + first, static_cast<size_t>(count));
  }
  return bit;
}

StreamWeights::StreamWeights(const format::Tensor& t, uint32_t taps, uint32_t cin, const float* bias, Needs needs,
                             size_t min_tiles)
    : name_(t.name), layout_(t.layout), values_(t.values), taps_(std::max<uint32_t>(taps, 1)), cin_(cin) {
  auto bad = [&](const std::string& what) -> FormatError {
    return FormatError("PAYLOAD", 0, "tensor '" + name_ + "': " + what);
  };
  auto need = [&](Role role) -> const format::Stream& {
    const format::Stream* s = t.stream(role);
    if (!s) throw FormatError("TENSORS", 0, "tensor '" + t.name + "': no " + format::role_name(role) + " stream");
    return *s;
  };
  n_ = t.rows();
  k_ = t.cols();
  if (static_cast<uint64_t>(k_) >> 32 || static_cast<uint64_t>(n_) >> 32)
    throw UnsupportedError("tensor '" + name_ + "': too large for decode=\"stream\"");
  try {
    if (layout_ != Layout::kDense) {
      const format::Stream& rp = need(Role::kRowPtr);
      row_ptr_.resize(static_cast<size_t>(rp.count));
      for (uint64_t i = 0; i < rp.count; ++i) row_ptr_[i] = static_cast<uint32_t>(format::row_ptr_at(rp, i));
      const format::Stream& ci = need(Role::kColIdx);
      if (layout_ == Layout::kCsrRelative) {
        copy_symbols(&ci, gaps_);
      } else {
        cols_raw_ = copy_bytes(ci);
        cols_raw_u16_ = ci.elem_type == ElemType::kU16;
      }
      if (layout_ == Layout::kBlockCsr) {
        block_rows_ = t.block_rows;
        block_cols_ = t.block_cols;
      }
      // format::parse validated row_ptr; these guard this class's own indexing.
      const size_t want = layout_ == Layout::kBlockCsr ? (n_ + block_rows_ - 1) / block_rows_ + 1 : n_ + 1;
      if (row_ptr_.size() != want || row_ptr_[0] != 0 || row_ptr_.back() != ci.count)
        throw bad("row_ptr does not match the matrix");
      for (size_t i = 1; i < row_ptr_.size(); ++i)
        if (row_ptr_[i] < row_ptr_[i - 1]) throw bad("row_ptr decreases at " + std::to_string(i));
    }
    switch (values_) {
      case Values::kCodebook: {
        copy_symbols(&need(Role::kIndices), syms_);
        const format::Stream& cb = need(Role::kCodebook);
        table_entries_ = size_t(1) << t.codebook_bits;
        table_per_row_ = cb.count > table_entries_;
        table_stride_ = std::max<size_t>(32, table_entries_);
        const size_t tables = table_per_row_ ? n_ : 1;
        table_.resize(tables * table_stride_ * sizeof(float));  // zero padded, as pack()
        float* tab = table_.as<float>();
        for (size_t i = 0; i < tables; ++i)
          for (size_t e = 0; e < table_entries_; ++e) {
            const uint64_t at = i * table_entries_ + e;
            tab[i * table_stride_ + e] =
                cb.elem_type == ElemType::kF16 ? format::half_to_f32(rd_u16(cb.data, at)) : rd_f32(cb.data, at);
          }
        break;
      }
      case Values::kF32:
      case Values::kF16: values_raw_ = copy_bytes(need(Role::kValues)); break;
      case Values::kInt8Channel:
      case Values::kInt4Group: {
        copy_symbols(&need(Role::kValues), syms_);
        const format::Stream& sc = need(Role::kScales);
        if (values_ == Values::kInt8Channel) {  // one scale per row (expanded if the file holds one)
          scales_.resize(static_cast<size_t>(n_));
          for (size_t r = 0; r < scales_.size(); ++r) scales_[r] = format::int8_row_scale(sc, r);
        } else {
          scales_.resize(static_cast<size_t>(sc.count));
          for (uint64_t i = 0; i < sc.count; ++i) scales_[i] = rd_f32(sc.data, i);
        }
        if (values_ == Values::kInt4Group) {
          group_size_ = t.group_size;
          groups_ = static_cast<uint32_t>((k_ + group_size_ - 1) / group_size_);
        }
        break;
      }
    }
    bias_.resize(std::max<size_t>(n_, 1) * sizeof(float));
    if (bias && n_) std::memcpy(bias_.data(), bias, n_ * sizeof(float));
    plan_tiles(min_tiles);
    if (gaps_.coded) gaps_.tile_bit.assign(tiles() + 1, 0);
    if (syms_.coded) syms_.tile_bit.assign(tiles() + 1, 0);

    // The one pass: decode every tile in order (validating columns and codes), recording
    // where each tile's codes start in the Huffman streams.
    needs_ = Needs{};
    layout_scratch();
    AlignedBuffer tmp(std::max<size_t>(scratch_.total, 64));
    // Row tiles are sized by their exact step count (the bound, one step per entry, would
    // make the per-thread scratch ~8x larger): counted here for every tile.
    const bool codebook = values_ == Values::kCodebook;
    std::vector<uint32_t> work(codebook ? spmm_f32::row_tile_work_words(k_) : 0);
    uint64_t col_bit = 0, val_bit = 0, nnz = 0;
    max_steps_ = 0;
    for (size_t i = 0; i < tiles(); ++i) {
      if (gaps_.coded) gaps_.tile_bit[i] = col_bit;
      if (syms_.coded) syms_.tile_bit[i] = val_bit;
      spmm_f32::PackedWeights w;
      coded_symbols_ += decode_impl(i, tmp.as<uint8_t>(), w, Needs{}, &col_bit, &val_bit);
      nnz += w.nnz;
      if (codebook) max_steps_ = std::max(max_steps_, spmm_f32::count_row_tile_steps(w, work.data()));
    }
    if (nnz >> 32) throw UnsupportedError("tensor '" + name_ + "': more than 2^32 - 1 entries");
    nnz_ = static_cast<size_t>(nnz);
  } catch (const std::invalid_argument& e) {
    throw bad(e.what());
  }
  set_needs(needs);
  proto_.n = n_;
  proto_.k = k_;
  proto_.nnz = nnz_;
  proto_.cols_u16 = k_ <= 65536;
  proto_.codebook = values_ == Values::kCodebook;
  proto_.table_entries = table_entries_;
  proto_.table_stride = table_stride_;
  proto_.table_per_row = table_per_row_;
}

void StreamWeights::set_needs(Needs needs) {
  needs_ = needs;
  layout_scratch();
}

uint64_t StreamWeights::unit_begin(size_t t) const {
  const size_t r = tile_row_[t];
  if (layout_ == Layout::kDense) return r;
  if (layout_ == Layout::kBlockCsr) return row_ptr_[r / block_rows_];
  return row_ptr_[r];
}
uint64_t StreamWeights::unit_end(size_t t) const {
  const size_t r = tile_row_[t + 1];
  if (layout_ == Layout::kDense) return r;
  if (layout_ == Layout::kBlockCsr) return row_ptr_[(r + block_rows_ - 1) / block_rows_];
  return row_ptr_[r];
}

void StreamWeights::plan_tiles(size_t min_tiles) {
  // Tile rows start at multiples of 16 (the row-tile and dense-tile groups) and of the
  // block height, so a tile's groups and blocks are the whole-matrix ones.
  const size_t a = spmm_f32::kTileRows, b = block_rows_;
  const size_t align = a / gcd(a, b) * b;
  const uint64_t vmul = layout_ == Layout::kBlockCsr ? uint64_t(block_rows_) * block_cols_
                        : layout_ == Layout::kDense  ? k_
                                                     : 1;
  // Cost of rows [0, r): entries (value slots) + rows, r a boundary.
  auto cost_before = [&](size_t r) -> uint64_t {
    uint64_t u = layout_ == Layout::kDense      ? r
                 : layout_ == Layout::kBlockCsr ? row_ptr_[(r + block_rows_ - 1) / block_rows_]
                                                : row_ptr_[r];
    return u * vmul + r;
  };
  const size_t bounds = (n_ + align - 1) / align;  // candidate boundaries: i * align (< n), then n
  auto boundary = [&](size_t i) { return std::min(n_, i * align); };
  const uint64_t total = cost_before(n_);
  size_t tiles = std::max<uint64_t>(1, (total + kTargetTileEntries - 1) / kTargetTileEntries);
  tiles = std::max(tiles, std::min(min_tiles, bounds));
  tiles = std::min(tiles, std::max<size_t>(bounds, 1));
  tile_row_.assign(1, 0);
  for (size_t i = 1; i < tiles; ++i) {
    const double target = double(total) * double(i) / double(tiles);
    size_t lo = 0, hi = bounds;  // first boundary index with cost >= target
    while (lo < hi) {
      const size_t mid = (lo + hi) / 2;
      if (double(cost_before(boundary(mid))) < target) lo = mid + 1;
      else hi = mid;
    }
    const size_t r = boundary(lo);
    if (r > tile_row_.back() && r < n_) tile_row_.push_back(r);
  }
  tile_row_.push_back(n_);
  // At most 65536 rows per tile: the tile CSC (zero-skipping) stores local rows as u16.
  const size_t cap = 65536 / align * align;
  std::vector<size_t> split{0};
  for (size_t i = 1; i < tile_row_.size(); ++i) {
    while (tile_row_[i] - split.back() > cap) split.push_back(split.back() + cap);
    split.push_back(tile_row_[i]);
  }
  tile_row_ = std::move(split);
  max_rows_ = max_entries_ = max_col_syms_ = max_val_syms_ = 0;
  for (size_t i = 0; i + 1 < tile_row_.size(); ++i) {
    const uint64_t units = unit_end(i) - unit_begin(i);
    max_rows_ = std::max<size_t>(max_rows_, tile_row_[i + 1] - tile_row_[i]);
    max_entries_ = std::max<size_t>(max_entries_, static_cast<size_t>(units * vmul));
    if (gaps_.present) max_col_syms_ = std::max<size_t>(max_col_syms_, static_cast<size_t>(units));
    if (syms_.present) max_val_syms_ = std::max<size_t>(max_val_syms_, static_cast<size_t>(units * vmul));
  }
}

void StreamWeights::layout_scratch() {
  ScratchLayout& s = scratch_;
  s = ScratchLayout{};
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t p = at;
    at += align64(std::max<size_t>(bytes, 1));
    return p;
  };
  const size_t E = max_entries_, R = max_rows_;
  const bool cb = values_ == Values::kCodebook;
  const size_t vbytes = cb ? 1 : 4;
  s.col_syms = take(max_col_syms_);
  s.val_syms = take(max_val_syms_);
  s.row_ptr = take((R + 1) * 4);
  s.cols = take(E * (k_ <= 65536 ? 2 : 4));
  s.vals = take(E * vbytes);
  if (taps_ > 1) {
    s.keys = take(E * 8);
    s.tmp_vals = take(E * vbytes);
  }
  const size_t groups = (R + spmm_f32::kTileRows - 1) / spmm_f32::kTileRows;
  if (needs_.row_tiles) {
    s.step_ptr = take((groups + 1) * 4);
    s.windows = take(max_steps_ * 2);
    s.slots = take(max_steps_ * 2 * spmm_f32::kTileRows);
    s.tile_work = take(spmm_f32::row_tile_work_words(k_) * 4);
  }
  if (needs_.csc) {
    s.csc_cp = take((k_ + 1) * 4);
    s.csc_next = take(k_ * 4);
    s.csc_rows = take(E * 2);
    s.csc_vals = take(E * vbytes);
  }
  if (needs_.dense) {
    const size_t wins = (k_ + spmm_f32::kTileCols - 1) / spmm_f32::kTileCols;
    s.dense = take(groups * wins * spmm_f32::kTileCols * spmm_f32::kTileRows);
  }
  s.total = at;
}

uint64_t StreamWeights::decode_tile(size_t t, uint8_t* scratch, spmm_f32::PackedWeights& w, Needs layouts) const {
  uint64_t col_bit = gaps_.coded ? gaps_.tile_bit[t] : 0, val_bit = syms_.coded ? syms_.tile_bit[t] : 0;
  return decode_impl(t, scratch, w, layouts, &col_bit, &val_bit);
}

uint64_t StreamWeights::decode_impl(size_t t, uint8_t* scratch, spmm_f32::PackedWeights& w, Needs layouts,
                                    uint64_t* col_bit, uint64_t* val_bit) const {
  using spmm_f32::kTileRows;
  const ScratchLayout& L = scratch_;
  const size_t r0 = tile_row_[t], r1 = tile_row_[t + 1], R = r1 - r0;
  const uint64_t u0 = unit_begin(t), u1 = unit_end(t);
  const uint64_t vmul = layout_ == Layout::kBlockCsr ? uint64_t(block_rows_) * block_cols_
                        : layout_ == Layout::kDense  ? k_
                                                     : 1;
  uint64_t coded = 0;
  uint8_t* gsym = scratch + L.col_syms;
  uint8_t* vsym = scratch + L.val_syms;
  if (gaps_.present) *col_bit = read_symbols(gaps_, u0, u1 - u0, *col_bit, gsym, &coded);
  if (syms_.present) *val_bit = read_symbols(syms_, u0 * vmul, (u1 - u0) * vmul, *val_bit, vsym, &coded);

  const bool cb = values_ == Values::kCodebook, remap = taps_ > 1, c16 = k_ <= 65536;
  uint32_t* rp = reinterpret_cast<uint32_t*>(scratch + L.row_ptr);
  uint8_t* cols = scratch + L.cols;
  uint8_t* vals = scratch + L.vals;
  uint64_t* keys = reinterpret_cast<uint64_t*>(scratch + L.keys);
  uint8_t* tmp_vals = scratch + L.tmp_vals;
  const uint8_t* cols_raw = cols_raw_.as<uint8_t>();
  const uint8_t* vraw = values_raw_.as<uint8_t>();
  uint32_t e = 0;  // entries so far

  auto put = [&](uint8_t* vdst, uint32_t at, size_t r, uint64_t c_file, uint64_t slot) {
    if (cb) {
      const uint8_t code = vsym[slot - u0 * vmul];
      if (code >= table_entries_) throw std::invalid_argument("codebook index " + std::to_string(code) + " >= " +
                                                              std::to_string(table_entries_) + " entries");
      vdst[at] = code;
      return;
    }
    float v = 0.f;
    switch (values_) {
      case Values::kF32: v = rd_f32(vraw, slot); break;
      case Values::kF16: v = format::half_to_f32(rd_u16(vraw, slot)); break;
      case Values::kInt8Channel: v = scales_[r] * float(int8_t(vsym[slot - u0 * vmul])); break;
      case Values::kInt4Group: {
        const int nib = vsym[slot - u0 * vmul];
        v = scales_[r * groups_ + c_file / group_size_] * float(nib >= 8 ? nib - 16 : nib);
        break;
      }
      default: break;
    }
    std::memcpy(vdst + 4 * size_t(at), &v, 4);
  };
  // One stored entry at file column c_file, value slot `slot` (global).
  auto emit = [&](size_t r, uint64_t c_file, uint64_t slot) {
    if (c_file >= k_) throw std::invalid_argument("column " + std::to_string(c_file) + " >= " + std::to_string(k_));
    if (remap) {
      const uint64_t c = (c_file % taps_) * cin_ + c_file / taps_;
      keys[e] = c << 32 | e;
      put(tmp_vals, e, r, c_file, slot);
    } else {
      if (c16) reinterpret_cast<uint16_t*>(cols)[e] = static_cast<uint16_t>(c_file);
      else reinterpret_cast<uint32_t*>(cols)[e] = static_cast<uint32_t>(c_file);
      put(vals, e, r, c_file, slot);
    }
    ++e;
  };
  auto col_raw = [&](uint64_t i) -> uint64_t { return cols_raw_u16_ ? rd_u16(cols_raw, i) : rd_u32(cols_raw, i); };
  const unsigned filler = gaps_.present ? (1u << gaps_.bits) - 1 : 0;
  // Fast path for codebook weights in file column order (the common compressed case):
  // the same entries as the generic loop below, without its per-entry dispatch.
  auto codebook_rows = [&](auto* cdst) {
    using C = std::remove_pointer_t<decltype(cdst)>;
    unsigned max_code = 0;
    for (size_t r = r0; r < r1; ++r) {
      rp[r - r0] = e;
      int64_t last = -1;
      if (layout_ == Layout::kCsrRelative) {
        int64_t c = -1;
        for (uint64_t p = row_ptr_[r], pe = row_ptr_[r + 1]; p < pe; ++p) {
          const unsigned g = gsym[p - u0];
          if (g == filler) {
            c += g;
            continue;
          }
          c += 1 + g;
          cdst[e] = static_cast<C>(c);
          const uint8_t code = vsym[p - u0];
          max_code = std::max<unsigned>(max_code, code);
          vals[e++] = code;
          last = c;
        }
      } else if (layout_ == Layout::kCsr) {
        for (uint64_t p = row_ptr_[r], pe = row_ptr_[r + 1]; p < pe; ++p) {
          const uint64_t c = col_raw(p);
          cdst[e] = static_cast<C>(c);
          const uint8_t code = vsym[p - u0];
          max_code = std::max<unsigned>(max_code, code);
          vals[e++] = code;
          last = std::max<int64_t>(last, static_cast<int64_t>(c));
        }
      } else {  // dense
        const uint8_t* src = vsym + (r - r0) * k_;
        for (uint64_t c = 0; c < k_; ++c) {
          cdst[e] = static_cast<C>(c);
          max_code = std::max<unsigned>(max_code, src[c]);
          vals[e++] = src[c];
        }
      }
      if (last >= static_cast<int64_t>(k_))
        throw std::invalid_argument("column " + std::to_string(last) + " >= " + std::to_string(k_));
    }
    if (max_code >= table_entries_)
      throw std::invalid_argument("codebook index " + std::to_string(max_code) + " >= " +
                                  std::to_string(table_entries_) + " entries");
  };
  const bool fast = cb && !remap && layout_ != Layout::kBlockCsr;
  if (fast) {
    if (c16) codebook_rows(reinterpret_cast<uint16_t*>(cols));
    else codebook_rows(reinterpret_cast<uint32_t*>(cols));
  }
  for (size_t r = fast ? r1 : r0; r < r1; ++r) {
    const uint32_t row_start = e;
    rp[r - r0] = e;
    switch (layout_) {
      case Layout::kCsr:
        for (uint64_t p = row_ptr_[r]; p < row_ptr_[r + 1]; ++p) emit(r, col_raw(p), p);
        break;
      case Layout::kCsrRelative: {
        int64_t c = -1;
        for (uint64_t p = row_ptr_[r]; p < row_ptr_[r + 1]; ++p) {
          const unsigned g = gsym[p - u0];
          if (g == filler) {
            c += g;
          } else {
            c += 1 + g;
            emit(r, static_cast<uint64_t>(c), p);
          }
        }
        break;
      }
      case Layout::kBlockCsr: {
        const size_t B = r / block_rows_, i = r % block_rows_, bsize = size_t(block_rows_) * block_cols_;
        for (uint64_t p = row_ptr_[B]; p < row_ptr_[B + 1]; ++p) {
          const uint64_t c0 = col_raw(p) * block_cols_;
          if (c0 >= k_) throw std::invalid_argument("block column " + std::to_string(col_raw(p)) + " out of range");
          for (uint64_t j = 0; j < block_cols_ && c0 + j < k_; ++j) emit(r, c0 + j, p * bsize + i * block_cols_ + j);
        }
        break;
      }
      case Layout::kDense:
        for (uint64_t c = 0; c < k_; ++c) emit(r, c, uint64_t(r) * k_ + c);
        break;
    }
    if (remap) {  // pack() sorts each row's columns; the remapped ones need it
      std::sort(keys + row_start, keys + e);
      for (uint32_t j = row_start; j < e; ++j) {
        const uint32_t c = static_cast<uint32_t>(keys[j] >> 32), src = static_cast<uint32_t>(keys[j]);
        if (c16) reinterpret_cast<uint16_t*>(cols)[j] = static_cast<uint16_t>(c);
        else reinterpret_cast<uint32_t*>(cols)[j] = c;
        if (cb) vals[j] = tmp_vals[src];
        else std::memcpy(vals + 4 * size_t(j), tmp_vals + 4 * size_t(src), 4);
      }
    }
  }
  rp[R] = e;

  using AB = AlignedBuffer;
  w.n = R;
  w.k = k_;
  w.nnz = e;
  w.row_ptr = AB::view(rp, (R + 1) * 4);
  w.cols_u16 = c16;
  w.cols = AB::view(cols, size_t(e) * (c16 ? 2 : 4));
  w.codebook = cb;
  if (cb) {
    w.codes = AB::view(vals, e);
    w.table_entries = table_entries_;
    w.table_stride = table_stride_;
    w.table_per_row = table_per_row_;
    const float* tab = table_.as<float>() + (table_per_row_ ? r0 * table_stride_ : 0);
    w.table = AB::view(tab, (table_per_row_ ? R : 1) * table_stride_ * 4);
  } else {
    w.values = AB::view(vals, size_t(e) * 4);
  }
  w.bias = AB::view(bias_.as<float>() + r0, std::max<size_t>(R, 1) * 4);
  if (layouts.row_tiles) {
    uint32_t* sp = reinterpret_cast<uint32_t*>(scratch + L.step_ptr);
    uint16_t* win = reinterpret_cast<uint16_t*>(scratch + L.windows);
    uint16_t* slots = reinterpret_cast<uint16_t*>(scratch + L.slots);
    const size_t steps =
        spmm_f32::build_row_tiles_into(w, sp, win, slots, reinterpret_cast<uint32_t*>(scratch + L.tile_work));
    w.has_tiles = true;
    w.tile_steps = steps;
    w.tile_step_ptr = AB::view(sp, (w.groups() + 1) * 4);
    w.tile_window = AB::view(win, steps * 2);
    w.tile_slots = AB::view(slots, steps * 2 * kTileRows);
  }
  if (layouts.csc) {
    uint32_t* cp = reinterpret_cast<uint32_t*>(scratch + L.csc_cp);
    uint16_t* rows = reinterpret_cast<uint16_t*>(scratch + L.csc_rows);
    uint8_t* cv = scratch + L.csc_vals;
    spmm_f32::build_csc_into(w, cp, reinterpret_cast<uint32_t*>(scratch + L.csc_next), rows, cv,
                             reinterpret_cast<float*>(cv));
    w.has_csc = true;
    w.csc_rows_u16 = true;
    w.csc_col_ptr = AB::view(cp, (k_ + 1) * 4);
    w.csc_rows = AB::view(rows, size_t(e) * 2);
    if (cb) w.csc_codes = AB::view(cv, e);
    else w.csc_values = AB::view(cv, size_t(e) * 4);
  }
  if (layouts.dense) {
    uint8_t* d = scratch + L.dense;
    spmm_f32::build_dense_tiles_into(w, d);
    w.has_dense = true;
    w.dense_windows = (k_ + spmm_f32::kTileCols - 1) / spmm_f32::kTileCols;
    w.dense_codes = AB::view(d, w.groups() * w.dense_windows * spmm_f32::kTileCols * kTileRows);
  }
  return coded;
}

size_t StreamWeights::resident_bytes() const {
  size_t b = row_ptr_.size() * 4 + cols_raw_.size() + values_raw_.size() + scales_.size() * 4 + table_.size() +
             bias_.size() + tile_row_.size() * sizeof(size_t);
  for (const Symbols* s : {&gaps_, &syms_}) {
    b += s->bytes.size() + s->tile_bit.size() * 8;
    if (s->dec) b += (size_t(1) << s->dec->first_level_bits()) * 6;  // its lookup tables
  }
  return b;
}

}  // namespace dsq::rt
