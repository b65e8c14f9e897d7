// Scalar reference ukernels (always built, always tested, the fallback), the packing,
// run(), balanced_row_ranges() and the dispatch.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>

#include "kernels/spmm_f32/spmm_f32.h"
#include "kernels/spmm_f32/ukernels.h"

namespace dsq::spmm_f32 {

using detail::row_of;

namespace {

constexpr size_t kRefMr = 4;

// Generic m-tiled reference: y_t[n][m0:m0+4] = clamp(bias + sum_p w_p * x_t[col_p][m0:m0+4]).
template <typename Values, typename Col>
void spmm_ref(const PackedWeights& w, const Col* cols, size_t m, const float* x, size_t xs,
              float* y, size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  const uint32_t* rp = w.rp();
  const float* bias = w.bias_ptr();
  for (size_t m0 = 0; m0 < m; m0 += kRefMr) {
    const size_t mt = std::min(kRefMr, m - m0);
    for (size_t n = n_begin; n < n_end; ++n) {
      const Values val(w, n);
      float acc[kRefMr];
      for (size_t i = 0; i < kRefMr; ++i) acc[i] = bias[n];
      for (uint32_t p = rp[n]; p < rp[n + 1]; ++p) {
        const float wv = val(p);
        const float* xr = row_of(x, xs, cols[p]) + m0;
        for (size_t i = 0; i < mt; ++i) acc[i] += wv * xr[i];
      }
      float* yr = row_of(y, ys, n) + m0;
      for (size_t i = 0; i < mt; ++i) yr[i] = std::min(std::max(acc[i], lo), hi);
    }
  }
}

// Batch-1 fast path with scalar loads: 8 independent accumulators (the add latency, not
// the loads, bounds a single chain). Contiguous x (x_stride == 4) indexes directly.
template <typename Values, typename Col, bool kContiguous>
void spmv_rows(const PackedWeights& w, const Col* cols, const float* x, size_t xs, float* y,
               size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  const uint32_t* rp = w.rp();
  const float* bias = w.bias_ptr();
  const char* xb = reinterpret_cast<const char*>(x);
  auto xat = [&](size_t c) -> float {
    if (kContiguous) return x[c];
    return *reinterpret_cast<const float*>(xb + c * xs);
  };
  for (size_t n = n_begin; n < n_end; ++n) {
    const Values val(w, n);
    float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t p = rp[n];
    const size_t e = rp[n + 1];
    for (; p + 8 <= e; p += 8) {
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) a[j] += val(p + j) * xat(cols[p + j]);
    }
    for (; p < e; ++p) a[0] += val(p) * xat(cols[p]);
    const float s = bias[n] + (((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])));
    *row_of(y, ys, n) = std::min(std::max(s, lo), hi);
  }
}

template <typename Values>
void spmv_dispatch(const PackedWeights& w, const float* x, size_t xs, float* y, size_t ys,
                   size_t n_begin, size_t n_end, float lo, float hi) {
  if (w.cols_u16) {
    if (xs == sizeof(float))
      spmv_rows<Values, uint16_t, true>(w, w.col16(), x, xs, y, ys, n_begin, n_end, lo, hi);
    else
      spmv_rows<Values, uint16_t, false>(w, w.col16(), x, xs, y, ys, n_begin, n_end, lo, hi);
  } else {
    if (xs == sizeof(float))
      spmv_rows<Values, uint32_t, true>(w, w.col32(), x, xs, y, ys, n_begin, n_end, lo, hi);
    else
      spmv_rows<Values, uint32_t, false>(w, w.col32(), x, xs, y, ys, n_begin, n_end, lo, hi);
  }
}

// Batch-1 zero-skipping (EIE): y = bias; for each k with x[k] != 0, y[row] += w * x[k]
// over column k of the CSC copy; then clamp. Each y[row] is one sequential sum in
// increasing k, so the result does not depend on how the caller threads its work (the
// layer runs it on one thread: a split by columns would need per-thread partial sums
// whose float total depends on the split). kFull: rows [n_begin, n_end) = all rows (no
// per-nonzero range test).
template <typename Row, bool kCodebook, bool kFull>
void spmv_csc(const PackedWeights& w, const Row* rows, const float* x, size_t xs, float* y,
              size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  const uint32_t* cp = w.cp();
  const float* bias = w.bias_ptr();
  const float* vals = kCodebook ? nullptr : w.csc_values.as<float>();
  const uint8_t* codes = kCodebook ? w.csc_codes.as<uint8_t>() : nullptr;
  const float* tab = kCodebook ? w.tab() : nullptr;
  const size_t tstride = (kCodebook && w.table_per_row) ? w.table_stride : 0;
  const bool contiguous_y = ys == sizeof(float);
  for (size_t n = n_begin; n < n_end; ++n) *row_of(y, ys, n) = bias[n];
  const char* xb = reinterpret_cast<const char*>(x);
  auto scatter = [&](auto yat) {
    for (size_t k = 0; k < w.k; ++k) {
      const float xv = *reinterpret_cast<const float*>(xb + k * xs);
      if (xv == 0.f) continue;
      const uint32_t e = cp[k + 1];
      for (uint32_t p = cp[k]; p < e; ++p) {
        const size_t r = rows[p];
        if (!kFull && (r < n_begin || r >= n_end)) continue;
        const float wv = kCodebook ? tab[r * tstride + codes[p]] : vals[p];
        yat(r) += wv * xv;
      }
    }
  };
  if (contiguous_y)
    scatter([y](size_t r) -> float& { return y[r]; });
  else
    scatter([y, ys](size_t r) -> float& { return *row_of(y, ys, r); });
  for (size_t n = n_begin; n < n_end; ++n) {
    float* yr = row_of(y, ys, n);
    *yr = std::min(std::max(*yr, lo), hi);
  }
}

template <bool kCodebook>
void spmv_csc_dispatch(const PackedWeights& w, const float* x, size_t xs, float* y, size_t ys,
                       size_t n_begin, size_t n_end, float lo, float hi) {
  const bool full = n_begin == 0 && n_end == w.n;
  if (w.csc_rows_u16) {
    const uint16_t* r = w.csc_rows.as<uint16_t>();
    if (full) spmv_csc<uint16_t, kCodebook, true>(w, r, x, xs, y, ys, n_begin, n_end, lo, hi);
    else spmv_csc<uint16_t, kCodebook, false>(w, r, x, xs, y, ys, n_begin, n_end, lo, hi);
  } else {
    const uint32_t* r = w.csc_rows.as<uint32_t>();
    if (full) spmv_csc<uint32_t, kCodebook, true>(w, r, x, xs, y, ys, n_begin, n_end, lo, hi);
    else spmv_csc<uint32_t, kCodebook, false>(w, r, x, xs, y, ys, n_begin, n_end, lo, hi);
  }
}

}  // namespace

void spmv_csc_f32__scalar(const PackedWeights& w, size_t, const float* x, size_t xs, float* y,
                          size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  spmv_csc_dispatch<false>(w, x, xs, y, ys, n_begin, n_end, lo, hi);
}

void spmv_csc_cb_f32__scalar(const PackedWeights& w, size_t, const float* x, size_t xs,
                             float* y, size_t ys, size_t n_begin, size_t n_end, float lo,
                             float hi) {
  spmv_csc_dispatch<true>(w, x, xs, y, ys, n_begin, n_end, lo, hi);
}

void spmm_f32_4__scalar(const PackedWeights& w, size_t m, const float* x, size_t xs, float* y,
                        size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  if (w.cols_u16)
    spmm_ref<detail::F32Values>(w, w.col16(), m, x, xs, y, ys, n_begin, n_end, lo, hi);
  else
    spmm_ref<detail::F32Values>(w, w.col32(), m, x, xs, y, ys, n_begin, n_end, lo, hi);
}

void spmm_cb_f32_4__scalar(const PackedWeights& w, size_t m, const float* x, size_t xs,
                           float* y, size_t ys, size_t n_begin, size_t n_end, float lo,
                           float hi) {
  if (w.cols_u16)
    spmm_ref<detail::CodebookValues>(w, w.col16(), m, x, xs, y, ys, n_begin, n_end, lo, hi);
  else
    spmm_ref<detail::CodebookValues>(w, w.col32(), m, x, xs, y, ys, n_begin, n_end, lo, hi);
}

void spmv_f32__scalar(const PackedWeights& w, size_t, const float* x, size_t xs, float* y,
                      size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  spmv_dispatch<detail::F32Values>(w, x, xs, y, ys, n_begin, n_end, lo, hi);
}

void spmv_cb_f32__scalar(const PackedWeights& w, size_t, const float* x, size_t xs, float* y,
                         size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  spmv_dispatch<detail::CodebookValues>(w, x, xs, y, ys, n_begin, n_end, lo, hi);
}

// Dense codebook reference: reads the dense tiles (code of row n, column c), one table per
// tensor or per row, 8 independent accumulators over the columns.
void gemv_cb_f32__scalar(const PackedWeights& w, size_t, const float* x, size_t xs, float* y,
                         size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  const uint8_t* codes = w.dense_codes.as<uint8_t>();
  const float* bias = w.bias_ptr();
  const size_t k = w.k, wins = w.dense_windows;
  for (size_t n = n_begin; n < n_end; ++n) {
    const float* t = w.tab() + (w.table_per_row ? n * w.table_stride : 0);
    const uint8_t* rowc = codes + (n / kTileRows) * wins * kTileCols * kTileRows + n % kTileRows;
    float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (size_t c = 0; c < k; ++c)
      a[c % 8] += t[rowc[c * kTileRows]] * *row_of(x, xs, c);
    const float s = bias[n] + (((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])));
    *row_of(y, ys, n) = std::min(std::max(s, lo), hi);
  }
}

// ---------------------------------------------------------------------------------------
// Packing.

size_t PackedWeights::dense_bytes() const {
  if (!has_dense) return 0;
  const size_t tables = table_per_row ? n : 1;
  return groups() * dense_windows * kTileCols * kTileRows + n * 4 + tables * table_entries * 4;
}

void build_dense_tiles(PackedWeights& w) {
  if (w.has_dense) return;
  if (!w.codebook) throw std::invalid_argument("spmm_f32::build_dense_tiles: not a codebook");
  if (w.nnz != w.n * w.k) throw std::invalid_argument("spmm_f32::build_dense_tiles: rows are not dense");
  const uint32_t* rp = w.rp();
  for (size_t r = 0; r < w.n; ++r) {
    if (rp[r] != r * w.k) throw std::invalid_argument("spmm_f32::build_dense_tiles: rows are not dense");
    for (size_t c = 0; c < w.k; ++c) {  // columns are sorted by pack(): must be 0..k-1
      const size_t col = w.cols_u16 ? w.col16()[rp[r] + c] : w.col32()[rp[r] + c];
      if (col != c) throw std::invalid_argument("spmm_f32::build_dense_tiles: rows are not dense");
    }
  }
  const size_t wins = (w.k + kTileCols - 1) / kTileCols;
  const size_t bytes = std::max<size_t>(1, w.groups() * wins * kTileCols * kTileRows);
  w.dense_codes.resize(bytes);
  uint8_t* d = w.dense_codes.as<uint8_t>();
  std::memset(d, 0, bytes);
  for (size_t r = 0; r < w.n; ++r) {
    uint8_t* rowc = d + (r / kTileRows) * wins * kTileCols * kTileRows + r % kTileRows;
    const uint8_t* src = w.code() + rp[r];
    for (size_t c = 0; c < w.k; ++c) rowc[c * kTileRows] = src[c];
  }
  w.dense_windows = wins;
  w.has_dense = true;
}

size_t PackedWeights::csr_bytes() const {
  return (n + 1) * 4 + nnz * (cols_u16 ? 2 : 4) + nnz * (codebook ? 1 : 4) + n * 4;
}
size_t PackedWeights::tile_bytes() const {
  return has_tiles ? (groups() + 1) * 4 + tile_steps * (2 + kTileRows * 2) + n * 4 : 0;
}

size_t PackedWeights::csc_bytes() const {
  return has_csc ? (k + 1) * 4 + nnz * (csc_rows_u16 ? 2 : 4) + nnz * (codebook ? 1 : 4) : 0;
}

void build_csc(PackedWeights& w) {
  if (w.has_csc) return;
  const size_t n = w.n, k = w.k, nnz = w.nnz;
  w.csc_rows_u16 = n <= 65536;
  w.csc_col_ptr.resize((k + 1) * sizeof(uint32_t));
  uint32_t* cp = w.csc_col_ptr.as<uint32_t>();
  std::fill(cp, cp + k + 1, 0u);
  auto col_at = [&](size_t p) -> uint32_t { return w.cols_u16 ? w.col16()[p] : w.col32()[p]; };
  for (size_t p = 0; p < nnz; ++p) ++cp[col_at(p) + 1];
  for (size_t c = 0; c < k; ++c) cp[c + 1] += cp[c];
  w.csc_rows.resize(std::max<size_t>(nnz, 1) * (w.csc_rows_u16 ? 2 : 4));
  if (w.codebook) w.csc_codes.resize(std::max<size_t>(nnz, 1));
  else w.csc_values.resize(std::max<size_t>(nnz, 1) * sizeof(float));
  std::vector<uint32_t> next(cp, cp + k);
  const uint32_t* rp = w.rp();
  for (size_t r = 0; r < n; ++r)  // rows in order: rows within a column come out increasing
    for (uint32_t p = rp[r]; p < rp[r + 1]; ++p) {
      const uint32_t d = next[col_at(p)]++;
      if (w.csc_rows_u16) w.csc_rows.as<uint16_t>()[d] = static_cast<uint16_t>(r);
      else w.csc_rows.as<uint32_t>()[d] = static_cast<uint32_t>(r);
      if (w.codebook) w.csc_codes.as<uint8_t>()[d] = w.code()[p];
      else w.csc_values.as<float>()[d] = w.vals()[p];
    }
  w.has_csc = true;
}

size_t count_zeros(const float* x, size_t xs, size_t k) {
  size_t z = 0;
  if (xs == sizeof(float)) {
    for (size_t i = 0; i < k; ++i) z += x[i] == 0.f;
  } else {
    for (size_t i = 0; i < k; ++i) z += *row_of(x, xs, i) == 0.f;
  }
  return z;
}

uint64_t skipped_macs(const PackedWeights& w, const float* x, size_t xs) {
  if (!w.has_csc) throw std::invalid_argument("spmm_f32::skipped_macs: no CSC copy (build_csc)");
  const uint32_t* cp = w.cp();
  uint64_t s = 0;
  for (size_t i = 0; i < w.k; ++i)
    if (*row_of(x, xs, i) == 0.f) s += cp[i + 1] - cp[i];
  return s;
}

namespace {
// The row-tile steps of CSR weights w (codes, columns sorted within rows), one 16-row
// group at a time: every window holding a nonzero of the group, in increasing order, gets
// max over lanes of (lane's nonzeros in the window) steps; step s of a window holds lane
// j's s-th nonzero there (or kTilePad). Counted per (window, lane) first, then filled in
// one pass per lane: O(nonzeros + windows * 16) per group, few branches. Shared by pack()
// and build_row_tiles_into() (decode="stream" tiles), so both give the same steps.
// work: u32[windows * kTileRows + windows + 1].
template <typename Col>
size_t count_group_steps(const PackedWeights& w, const Col* cols, size_t g, uint32_t* work) {
  const size_t wins = (w.k + kTileCols - 1) / kTileCols;
  uint32_t* cnt = work;
  uint32_t* first = work + wins * kTileRows;
  std::fill(cnt, cnt + wins * kTileRows, 0u);
  const uint32_t* rp = w.rp();
  for (size_t j = 0; j < kTileRows; ++j) {
    const size_t r = g * kTileRows + j;
    if (r >= w.n) break;
    for (uint32_t p = rp[r]; p < rp[r + 1]; ++p) ++cnt[(uint32_t(cols[p]) / kTileCols) * kTileRows + j];
  }
  size_t steps = 0;
  for (size_t win = 0; win < wins; ++win) {
    first[win] = static_cast<uint32_t>(steps);
    uint32_t m = 0;
    for (size_t j = 0; j < kTileRows; ++j) m = std::max(m, cnt[win * kTileRows + j]);
    steps += m;
  }
  first[wins] = static_cast<uint32_t>(steps);
  return steps;
}
template <typename Col>
void fill_group_steps(const PackedWeights& w, const Col* cols, size_t g, const uint32_t* work, size_t steps,
                      uint16_t* windows, uint16_t* slots) {
  const size_t wins = (w.k + kTileCols - 1) / kTileCols;
  const uint32_t* first = work + wins * kTileRows;
  for (size_t win = 0; win < wins; ++win)
    for (uint32_t s = first[win]; s < first[win + 1]; ++s) windows[s] = static_cast<uint16_t>(win);
  std::fill(slots, slots + steps * kTileRows, kTilePad);
  const uint32_t* rp = w.rp();
  const uint8_t* codes = w.code();
  for (size_t j = 0; j < kTileRows; ++j) {
    const size_t r = g * kTileRows + j;
    if (r >= w.n) break;
    uint32_t cur = UINT32_MAX, idx = 0;
    for (uint32_t p = rp[r]; p < rp[r + 1]; ++p) {
      const uint32_t c = uint32_t(cols[p]), win = c / kTileCols;
      if (win != cur) {
        cur = win;
        idx = 0;
      }
      slots[(first[win] + idx++) * kTileRows + j] = static_cast<uint16_t>((c % kTileCols) | (codes[p] << 8));
    }
  }
}
size_t tile_work_words(const PackedWeights& w) {
  const size_t wins = (w.k + kTileCols - 1) / kTileCols;
  return wins * kTileRows + wins + 1;
}
}  // namespace

size_t row_tile_work_words(size_t k) {
  const size_t wins = (k + kTileCols - 1) / kTileCols;
  return wins * kTileRows + wins + 1;
}

size_t count_row_tile_steps(const PackedWeights& w, uint32_t* work) {
  size_t steps = 0;
  for (size_t g = 0; g < w.groups(); ++g)
    steps += w.cols_u16 ? count_group_steps(w, w.col16(), g, work) : count_group_steps(w, w.col32(), g, work);
  return steps;
}

size_t build_row_tiles_into(const PackedWeights& w, uint32_t* step_ptr, uint16_t* windows, uint16_t* slots,
                            uint32_t* work) {
  size_t steps = 0;
  for (size_t g = 0; g < w.groups(); ++g) {
    step_ptr[g] = static_cast<uint32_t>(steps);
    if (w.cols_u16) {
      const size_t m = count_group_steps(w, w.col16(), g, work);
      fill_group_steps(w, w.col16(), g, work, m, windows + steps, slots + steps * kTileRows);
      steps += m;
    } else {
      const size_t m = count_group_steps(w, w.col32(), g, work);
      fill_group_steps(w, w.col32(), g, work, m, windows + steps, slots + steps * kTileRows);
      steps += m;
    }
  }
  step_ptr[w.groups()] = static_cast<uint32_t>(steps);
  return steps;
}

void build_csc_into(const PackedWeights& w, uint32_t* col_ptr, uint32_t* next, uint16_t* rows, uint8_t* codes,
                    float* values) {
  const size_t n = w.n, k = w.k;
  std::fill(col_ptr, col_ptr + k + 1, 0u);
  const uint32_t* rp = w.rp();
  auto col_at = [&](size_t p) -> uint32_t { return w.cols_u16 ? w.col16()[p] : w.col32()[p]; };
  for (size_t p = 0; p < rp[n]; ++p) ++col_ptr[col_at(p) + 1];
  for (size_t c = 0; c < k; ++c) col_ptr[c + 1] += col_ptr[c];
  std::copy(col_ptr, col_ptr + k, next);
  for (size_t r = 0; r < n; ++r)  // rows in order, as build_csc()
    for (uint32_t p = rp[r]; p < rp[r + 1]; ++p) {
      const uint32_t d = next[col_at(p)]++;
      rows[d] = static_cast<uint16_t>(r);
      if (w.codebook) codes[d] = w.code()[p];
      else values[d] = w.vals()[p];
    }
}

void build_dense_tiles_into(const PackedWeights& w, uint8_t* out) {
  const size_t wins = (w.k + kTileCols - 1) / kTileCols;
  std::memset(out, 0, w.groups() * wins * kTileCols * kTileRows);
  const uint32_t* rp = w.rp();
  for (size_t r = 0; r < w.n; ++r) {
    uint8_t* rowc = out + (r / kTileRows) * wins * kTileCols * kTileRows + r % kTileRows;
    const uint8_t* src = w.code() + rp[r];
    for (size_t c = 0; c < w.k; ++c) rowc[c * kTileRows] = src[c];
  }
}

size_t PackedWeights::resident_bytes() const {
  const AlignedBuffer* all[] = {&row_ptr,    &cols,          &values,      &codes,       &table,
                                &bias,       &tile_step_ptr, &tile_window, &tile_slots,  &csc_col_ptr,
                                &csc_rows,   &csc_values,    &csc_codes,   &dense_codes};
  size_t b = 0;
  for (const AlignedBuffer* a : all) b += a->owned_bytes();
  return b;
}

PackedWeights pack(size_t n, size_t k, const uint32_t* row_ptr, const uint32_t* col,
                   const float* values, const uint8_t* codes, const float* table,
                   size_t table_entries, bool table_per_row, const float* bias,
                   bool build_tiles) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("spmm_f32::pack: " + what); };
  if (!row_ptr) fail("row_ptr is null");
  if (row_ptr[0] != 0) fail("row_ptr[0] != 0");
  for (size_t i = 0; i < n; ++i)
    if (row_ptr[i + 1] < row_ptr[i]) fail("row_ptr decreases at row " + std::to_string(i));
  const size_t nnz = row_ptr[n];
  if (static_cast<uint64_t>(k) >> 32) fail("k too large");  // (no always-false warning on 32-bit)
  const bool cb = codes != nullptr;
  if (cb == (values != nullptr) && nnz) fail("exactly one of values / codes must be given");
  if (nnz && !col) fail("col is null");
  if (cb) {
    if (!table || table_entries == 0 || table_entries > 256) fail("codebook needs 1..256 table entries");
  }
  for (size_t p = 0; p < nnz; ++p) {
    if (col[p] >= k) fail("column " + std::to_string(col[p]) + " >= k at nonzero " + std::to_string(p));
    if (cb && codes[p] >= table_entries) fail("code >= table_entries at nonzero " + std::to_string(p));
  }

  PackedWeights w;
  w.n = n;
  w.k = k;
  w.nnz = nnz;
  w.codebook = cb;
  w.cols_u16 = k <= 65536;
  w.row_ptr.resize((n + 1) * sizeof(uint32_t));
  std::memcpy(w.row_ptr.data(), row_ptr, (n + 1) * sizeof(uint32_t));
  w.cols.resize(nnz * (w.cols_u16 ? 2 : 4));
  if (cb) w.codes.resize(nnz);
  else w.values.resize(nnz * sizeof(float));

  // Columns sorted within each row (x is then read in address order).
  std::vector<uint32_t> order;
  for (size_t r = 0; r < n; ++r) {
    const uint32_t b = row_ptr[r], e = row_ptr[r + 1];
    order.resize(e - b);
    std::iota(order.begin(), order.end(), b);
    std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t c) { return col[a] < col[c]; });
    for (uint32_t i = 0; i < e - b; ++i) {
      const uint32_t src = order[i], dst = b + i;
      if (w.cols_u16) w.cols.as<uint16_t>()[dst] = static_cast<uint16_t>(col[src]);
      else w.cols.as<uint32_t>()[dst] = col[src];
      if (cb) w.codes.as<uint8_t>()[dst] = codes[src];
      else w.values.as<float>()[dst] = values[src];
    }
  }

  if (cb) {
    w.table_entries = table_entries;
    w.table_per_row = table_per_row;
    w.table_stride = std::max<size_t>(32, table_entries);
    const size_t tables = table_per_row ? n : 1;
    w.table.resize(tables * w.table_stride * sizeof(float));  // zero padded
    for (size_t t = 0; t < tables; ++t)
      std::memcpy(w.table.as<float>() + t * w.table_stride, table + t * table_entries,
                  table_entries * sizeof(float));
  }
  w.bias.resize(std::max<size_t>(n, 1) * sizeof(float));
  if (bias && n) std::memcpy(w.bias.data(), bias, n * sizeof(float));

  // Row tiles for the batch-1 codebook kernel.
  if (build_tiles && cb && !table_per_row && table_entries <= 32 && k < (size_t(1) << 21)) {
    std::vector<uint32_t> step_ptr(w.groups() + 1, 0), work(tile_work_words(w));
    std::vector<uint16_t> windows, slots;
    for (size_t g = 0; g < w.groups(); ++g) {
      step_ptr[g] = static_cast<uint32_t>(windows.size());
      const size_t old = windows.size();
      const size_t m = w.cols_u16 ? count_group_steps(w, w.col16(), g, work.data())
                                  : count_group_steps(w, w.col32(), g, work.data());
      windows.resize(old + m);
      slots.resize((old + m) * kTileRows);
      if (w.cols_u16) fill_group_steps(w, w.col16(), g, work.data(), m, windows.data() + old, slots.data() + old * kTileRows);
      else fill_group_steps(w, w.col32(), g, work.data(), m, windows.data() + old, slots.data() + old * kTileRows);
    }
    step_ptr[w.groups()] = static_cast<uint32_t>(windows.size());
    w.has_tiles = true;
    w.tile_steps = windows.size();
    w.tile_step_ptr.resize(step_ptr.size() * sizeof(uint32_t));
    std::memcpy(w.tile_step_ptr.data(), step_ptr.data(), step_ptr.size() * sizeof(uint32_t));
    w.tile_window.resize(windows.size() * sizeof(uint16_t));
    if (!windows.empty()) std::memcpy(w.tile_window.data(), windows.data(), windows.size() * 2);
    w.tile_slots.resize(slots.size() * sizeof(uint16_t));
    if (!slots.empty()) std::memcpy(w.tile_slots.data(), slots.data(), slots.size() * 2);
  }
  return w;
}

// ---------------------------------------------------------------------------------------
// run() and row balancing.

bool compatible(const Ukernel& uk, const PackedWeights& w, size_t m) {
  if (uk.codebook != w.codebook) return false;
  if (uk.spmv && m != 1) return false;
  if (uk.layout == Layout::kRowTiles && !w.has_tiles) return false;
  if (uk.layout == Layout::kCsc && !w.has_csc) return false;
  if (uk.layout == Layout::kDenseTiles && !w.has_dense) return false;
  return true;
}

void run(const Ukernel& uk, const PackedWeights& w, size_t m, const float* x_t,
         size_t x_stride, float* y_t, size_t y_stride, size_t n_begin, size_t n_end, float lo,
         float hi) {
  if (!compatible(uk, w, m))
    throw std::invalid_argument(std::string("spmm_f32::run: ukernel ") + uk.name +
                                " does not fit these weights / m");
  n_end = std::min(n_end, w.n);
  if (m == 0 || n_begin >= n_end) return;
  uk.fn(w, m, x_t, x_stride, y_t, y_stride, n_begin, n_end, lo, hi);
}

std::vector<size_t> balanced_row_ranges(const PackedWeights& w, size_t parts, size_t align) {
  if (parts == 0) parts = 1;
  if (align == 0) align = 1;
  const size_t n = w.n;
  const uint32_t* rp = w.rp();
  // cost(row) = nnz + 1: the per-row overhead keeps long runs of empty rows split too.
  auto cost_before = [&](size_t r) -> double { return double(rp[r]) + double(r); };
  const double total = cost_before(n);
  std::vector<size_t> b(parts + 1, 0);
  b[parts] = n;
  for (size_t i = 1; i < parts; ++i) {
    const double target = total * double(i) / double(parts);
    // First row boundary r with cost_before(r) >= target.
    size_t lo = 0, hi = n;
    while (lo < hi) {
      const size_t mid = (lo + hi) / 2;
      if (cost_before(mid) < target) lo = mid + 1;
      else hi = mid;
    }
    size_t r = lo;
    // Take the closer of r - 1 and r.
    if (r > 0 && target - cost_before(r - 1) < cost_before(r) - target) --r;
    if (align > 1) r = std::min(n, (r + align / 2) / align * align);
    b[i] = std::max(r, b[i - 1]);
  }
  return b;
}

// ---------------------------------------------------------------------------------------
// Dispatch.

const std::vector<Ukernel>& all_ukernels() {
  static const std::vector<Ukernel> list = {
#define DSQ_SPMM_F32_UKERNEL(name, isa, mr, codebook, spmv, layout) \
  Ukernel{#name, isa, mr, codebook, spmv, layout, &name},
#include "kernels/spmm_f32/kernels.inc"
  };
  return list;
}

namespace {
// Higher is better: spmv kernels for batch 1, then ISA, then row tiles, then mr.
bool better(const Ukernel& a, const Ukernel& b, bool spmv) {
  if (spmv && a.spmv != b.spmv) return a.spmv;
  const int la = static_cast<int>(a.isa), lb = static_cast<int>(b.isa);
  if (la != lb) return la > lb;
  if (a.layout != b.layout) {
    if (a.layout == Layout::kDenseTiles || b.layout == Layout::kDenseTiles) return a.layout == Layout::kDenseTiles;
    return a.layout == Layout::kRowTiles;
  }
  return a.mr > b.mr;
}
}  // namespace

const Ukernel& best_ukernel(bool codebook, bool spmv) {
  const Ukernel* b = nullptr;
  for (const Ukernel& uk : all_ukernels()) {
    if (!isa_supported(uk.isa) || uk.codebook != codebook || (uk.spmv && !spmv)) continue;
    if (uk.layout == Layout::kCsc) continue;  // zero-skipping: best_csc_ukernel()
    if (uk.layout == Layout::kDenseTiles) continue;  // needs build_dense_tiles()
    if (!b || better(uk, *b, spmv)) b = &uk;
  }
  return *b;  // the scalar references cover every kind
}

const Ukernel& best_ukernel_for(const PackedWeights& w, size_t m) {
  // Among spmm tiles of the best ISA: the biggest mr whose x_t slab (k x mr floats) fits L1
  // (measured: 1x1 conv 256->256, mr 32 beats 64), else the biggest mr (FC 4096: 64 beats
  // 32; the kernel blocks k for L2).
  constexpr size_t kL1Bytes = 32 * 1024;
  const Ukernel* b = nullptr;
  for (const Ukernel& uk : all_ukernels()) {
    if (!isa_supported(uk.isa) || !compatible(uk, w, m)) continue;
    if (uk.layout == Layout::kCsc) continue;  // zero-skipping: best_csc_ukernel()
    if (!b) {
      b = &uk;
      continue;
    }
    if (!uk.spmv && !b->spmv && uk.isa == b->isa && uk.layout == b->layout) {
      const bool fits_u = w.k * uk.mr * sizeof(float) <= kL1Bytes;
      const bool fits_b = w.k * b->mr * sizeof(float) <= kL1Bytes;
      if (fits_u != fits_b ? fits_u : uk.mr > b->mr) b = &uk;
      continue;
    }
    if (better(uk, *b, m == 1)) b = &uk;
  }
  return *b;
}

const Ukernel& best_csc_ukernel(const PackedWeights& w) {
  const Ukernel* b = nullptr;
  for (const Ukernel& uk : all_ukernels()) {
    if (!isa_supported(uk.isa) || uk.layout != Layout::kCsc || uk.codebook != w.codebook) continue;
    if (!b || static_cast<int>(uk.isa) > static_cast<int>(b->isa)) b = &uk;
  }
  return *b;  // the scalar references cover both value kinds
}

const Ukernel* find_ukernel(const char* name) {
  if (!name) return nullptr;
  for (const Ukernel& uk : all_ukernels())
    if (!std::strcmp(uk.name, name)) return isa_supported(uk.isa) ? &uk : nullptr;
  return nullptr;
}

}  // namespace dsq::spmm_f32
