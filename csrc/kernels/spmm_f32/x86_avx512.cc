// AVX-512 sparse f32 ukernels.
//  - spmm_(cb_)f32_{32,64}__avx512: m tile of 32 (2 zmm) or 64 (4 zmm). Per nonzero: broadcast the weight (f32
//    value or table[code]), two loads of x_t[col][m0:m0+32], two FMAs. Consecutive nonzeros
//    go to two accumulator sets (4 FMA chains) so the FMA latency does not bound a row.
//    The m remainder uses masked loads/stores (no access past column m of x_t / y_t).
//  - spmv_cb_f32_16x32__avx512: batch 1, per-tensor codebook of <= 32 entries, row tiles
//    (see spmm_f32.h): lane j = row 16g + j; per step the 32-column x window sits in two zmm
//    and vpermt2ps picks each lane's x, a second vpermt2ps looks the codes up in the
//    table (two zmm), one masked FMA. No gathers (slow on Zen 4), no per-nonzero scalar loads.
//  - gemv_cb_f32_16x32__avx512: batch 1, dense codebook tiles (spmm_f32.h): per column of
//    a 16-row tile, 16 u8 codes widened to dwords, table lookup (vpermt2ps on two zmm for a
//    per-tensor table of <= 32 entries; else a gather, offset by lane * table_stride for
//    per-row tables), x[c] broadcast, one FMA; 4 accumulators.
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kernels/spmm_f32/ukernels.h"

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 warns about _mm512_undefined_ps() inside _mm512_min_ps/_mm512_max_ps.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace dsq::spmm_f32 {

using detail::row_of;

namespace {

inline __mmask16 lane_mask(size_t valid) {
  return valid >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << valid) - 1u);
}

// One m tile of NV vectors for rows [n_begin, n_end). kMasked: the tile is partial (masks).
// When the x_t slab of the tile (k rows x NV * 64 bytes) is bigger than kSlabBytes, the
// columns are split in blocks of kb rows of x_t so a block stays in L2 while a chunk of
// kRowChunk rows runs over it; partial sums then live in y_t between blocks (the clamp is
// applied after the last block). Columns are sorted within rows (pack), so a row's
// nonzeros of one block are contiguous (lower_bound).
constexpr size_t kSlabBytes = 256 * 1024;
constexpr size_t kRowChunk = 64;

// kb: the column block of the kernel (from its full tile width), passed in so that a
// narrower tail tile splits rows exactly where the full tiles do.
template <int NV, bool kMasked, typename Values, typename Col>
void spmm_tile(const PackedWeights& w, const Col* cols, size_t mt, const float* x, size_t xs,
               float* y, size_t ys, size_t n_begin, size_t n_end, float lo, float hi, size_t kb) {
  const uint32_t* rp = w.rp();
  const float* bias = w.bias_ptr();
  __mmask16 mask[NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v)
    mask[v] = kMasked ? lane_mask(mt > size_t(v) * 16 ? mt - size_t(v) * 16 : 0) : __mmask16(0xFFFF);
  const char* xb = reinterpret_cast<const char*>(x);
  const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  auto load = [&](const float* p, int v) {
    return kMasked ? _mm512_maskz_loadu_ps(mask[v], p + 16 * v) : _mm512_loadu_ps(p + 16 * v);
  };
  const size_t k = w.k;
  const bool blocked = k > kb;
  const size_t chunk = blocked ? kRowChunk : n_end - n_begin;
  uint32_t cursor[kRowChunk];
  for (size_t c0 = n_begin; c0 < n_end; c0 += chunk) {
    const size_t c1 = std::min(n_end, c0 + chunk);
    if (blocked)
      for (size_t n = c0; n < c1; ++n) cursor[n - c0] = rp[n];
    for (size_t k0 = 0; k0 < k || k0 == 0; k0 += kb) {
      const bool first = k0 == 0, last = !blocked || k0 + kb >= k;
      for (size_t n = c0; n < c1; ++n) {
        const Values val(w, n);
        float* yr = row_of(y, ys, n);
        __m512 a[NV], b[NV];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
          a[v] = first ? _mm512_set1_ps(bias[n]) : load(yr, v);
          b[v] = _mm512_setzero_ps();
        }
        size_t p, e;
        if (blocked) {
          p = cursor[n - c0];
          e = last ? rp[n + 1]
                   : size_t(std::lower_bound(cols + p, cols + rp[n + 1], Col(w.block_col(k0 + kb))) - cols);
          cursor[n - c0] = static_cast<uint32_t>(e);
        } else {
          p = rp[n];
          e = rp[n + 1];
        }
        for (; p + 2 <= e; p += 2) {
          const __m512 w0 = _mm512_set1_ps(val(p));
          const __m512 w1 = _mm512_set1_ps(val(p + 1));
          const float* x0 = reinterpret_cast<const float*>(xb + size_t(cols[p]) * xs);
          const float* x1 = reinterpret_cast<const float*>(xb + size_t(cols[p + 1]) * xs);
#pragma GCC unroll 8
          for (int v = 0; v < NV; ++v) {
            a[v] = _mm512_fmadd_ps(w0, load(x0, v), a[v]);
            b[v] = _mm512_fmadd_ps(w1, load(x1, v), b[v]);
          }
        }
        if (p < e) {
          const __m512 w0 = _mm512_set1_ps(val(p));
          const float* x0 = reinterpret_cast<const float*>(xb + size_t(cols[p]) * xs);
#pragma GCC unroll 8
          for (int v = 0; v < NV; ++v) a[v] = _mm512_fmadd_ps(w0, load(x0, v), a[v]);
        }
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
          __m512 r = _mm512_add_ps(a[v], b[v]);
          if (last) r = _mm512_min_ps(_mm512_max_ps(r, vlo), vhi);
          if (kMasked) _mm512_mask_storeu_ps(yr + 16 * v, mask[v], r);
          else _mm512_storeu_ps(yr + 16 * v, r);
        }
      }
      if (last) break;
    }
  }
}

template <int NV, typename Values, typename Col>
void spmm_all(const PackedWeights& w, const Col* cols, size_t m, const float* x, size_t xs,
              float* y, size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  constexpr size_t kMr = 16 * NV;
  const size_t kb = std::max<size_t>(64, kSlabBytes / (NV * 64));
  size_t m0 = 0;
  for (; m0 + kMr <= m; m0 += kMr)
    spmm_tile<NV, false, Values>(w, cols, kMr, x + m0, xs, y + m0, ys, n_begin, n_end, lo, hi, kb);
  // The remainder on the narrowest tile that holds it: its lanes do the same arithmetic as
  // in the full tile (lanes are independent, same column blocks), with fewer idle vectors
  // (a 14-column tail of a 64-wide tile was 4 masked FMAs per nonzero, now 1; the direct
  // conv path ends every image with such a tail).
  const size_t rest = m - m0;
  if (rest == 0) return;
  if (NV > 1 && rest <= 16)
    spmm_tile<1, true, Values>(w, cols, rest, x + m0, xs, y + m0, ys, n_begin, n_end, lo, hi, kb);
  else if (NV > 2 && rest <= 32)
    spmm_tile<2, true, Values>(w, cols, rest, x + m0, xs, y + m0, ys, n_begin, n_end, lo, hi, kb);
  else
    spmm_tile<NV, true, Values>(w, cols, rest, x + m0, xs, y + m0, ys, n_begin, n_end, lo, hi, kb);
}

template <int NV, typename Values>
void spmm_cols(const PackedWeights& w, size_t m, const float* x, size_t xs, float* y,
               size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  if (w.cols_u16)
    spmm_all<NV, Values>(w, w.col16(), m, x, xs, y, ys, n_begin, n_end, lo, hi);
  else
    spmm_all<NV, Values>(w, w.col32(), m, x, xs, y, ys, n_begin, n_end, lo, hi);
}

// One row-tile step: lanes' x from the window (two zmm), weights from the table.
inline __m512 tile_step(const float* x, size_t full_windows, size_t k, uint16_t win,
                        const uint16_t* slots, __m512 t0, __m512 t1, __m512 acc) {
  const float* xw = x + size_t(win) * kTileCols;
  __m512 xlo, xhi;
  if (win < full_windows) {
    xlo = _mm512_loadu_ps(xw);
    xhi = _mm512_loadu_ps(xw + 16);
  } else {  // last, partial window: no read past x[k - 1]
    const size_t left = k - size_t(win) * kTileCols;
    xlo = _mm512_maskz_loadu_ps(lane_mask(left), xw);
    xhi = _mm512_maskz_loadu_ps(lane_mask(left > 16 ? left - 16 : 0), xw + 16);
  }
  const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(slots)));
  const __mmask16 valid = _mm512_testn_epi32_mask(v, _mm512_set1_epi32(kTilePad));
  const __m512 xv = _mm512_permutex2var_ps(xlo, v, xhi);  // uses index bits 0-4
  const __m512 tv = _mm512_permutex2var_ps(t0, _mm512_srli_epi32(v, 8), t1);
  return _mm512_mask3_fmadd_ps(xv, tv, acc, valid);
}

}  // namespace

void spmm_f32_32__avx512(const PackedWeights& w, size_t m, const float* x, size_t xs, float* y,
                         size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  spmm_cols<2, detail::F32Values>(w, m, x, xs, y, ys, n_begin, n_end, lo, hi);
}

void spmm_cb_f32_32__avx512(const PackedWeights& w, size_t m, const float* x, size_t xs,
                            float* y, size_t ys, size_t n_begin, size_t n_end, float lo,
                            float hi) {
  spmm_cols<2, detail::CodebookValues>(w, m, x, xs, y, ys, n_begin, n_end, lo, hi);
}

void spmv_cb_f32_16x32__avx512(const PackedWeights& w, size_t m, const float* x, size_t xs,
                               float* y, size_t ys, size_t n_begin, size_t n_end, float lo,
                               float hi) {
  if (xs != sizeof(float)) {  // the windows need contiguous x
    spmv_cb_f32__scalar(w, m, x, xs, y, ys, n_begin, n_end, lo, hi);
    return;
  }
  const uint32_t* sp = w.tile_step_ptr.as<uint32_t>();
  const uint16_t* wins = w.tile_window.as<uint16_t>();
  const uint16_t* slots = w.tile_slots.as<uint16_t>();
  const float* bias = w.bias_ptr();
  const __m512 t0 = _mm512_loadu_ps(w.tab()), t1 = _mm512_loadu_ps(w.tab() + 16);
  const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  const size_t k = w.k, full_windows = k / kTileCols;
  for (size_t g = n_begin / kTileRows; g * kTileRows < n_end; ++g) {
    const size_t n0 = g * kTileRows;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t s = sp[g];
    const size_t e = sp[g + 1];
    for (; s + 4 <= e; s += 4) {
      a0 = tile_step(x, full_windows, k, wins[s], slots + s * kTileRows, t0, t1, a0);
      a1 = tile_step(x, full_windows, k, wins[s + 1], slots + (s + 1) * kTileRows, t0, t1, a1);
      a2 = tile_step(x, full_windows, k, wins[s + 2], slots + (s + 2) * kTileRows, t0, t1, a2);
      a3 = tile_step(x, full_windows, k, wins[s + 3], slots + (s + 3) * kTileRows, t0, t1, a3);
    }
    for (; s < e; ++s)
      a0 = tile_step(x, full_windows, k, wins[s], slots + s * kTileRows, t0, t1, a0);
    // Lanes [first, last) of this group are in [n_begin, n_end) (and < n).
    const size_t first = n0 < n_begin ? n_begin - n0 : 0;
    const size_t last = std::min(kTileRows, n_end - n0);
    const __mmask16 inside = __mmask16(lane_mask(last) & ~lane_mask(first));
    const __m512 b = _mm512_maskz_loadu_ps(inside, bias + n0);
    const __m512 r = _mm512_min_ps(
        _mm512_max_ps(_mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)), b), vlo),
        vhi);
    if (ys == sizeof(float)) {
      _mm512_mask_storeu_ps(y + n0, inside, r);
    } else {
      alignas(64) float tmp[kTileRows];
      _mm512_store_ps(tmp, r);
      for (size_t j = first; j < last; ++j) *row_of(y, ys, n0 + j) = tmp[j];
    }
  }
}

}  // namespace dsq::spmm_f32

namespace dsq::spmm_f32 {

void spmm_f32_64__avx512(const PackedWeights& w, size_t m, const float* x, size_t xs, float* y,
                         size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  spmm_cols<4, detail::F32Values>(w, m, x, xs, y, ys, n_begin, n_end, lo, hi);
}

void spmm_cb_f32_64__avx512(const PackedWeights& w, size_t m, const float* x, size_t xs,
                            float* y, size_t ys, size_t n_begin, size_t n_end, float lo,
                            float hi) {
  spmm_cols<4, detail::CodebookValues>(w, m, x, xs, y, ys, n_begin, n_end, lo, hi);
}

}  // namespace dsq::spmm_f32

namespace dsq::spmm_f32 {
namespace {

enum class CbLookup { kPerm, kGather };

template <CbLookup kLookup>
void gemv_cb_groups(const PackedWeights& w, const float* x, float* y, size_t ys, size_t n_begin,
                    size_t n_end, float lo, float hi) {
  const uint8_t* codes = w.dense_codes.as<uint8_t>();
  const float* bias = w.bias_ptr();
  const float* tab = w.tab();
  const __m512 t0 = _mm512_loadu_ps(tab), t1 = _mm512_loadu_ps(tab + 16);
  const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  const size_t k = w.k, wins = w.dense_windows;
  const size_t full = k / kTileCols;
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  auto lookup = [&](const uint8_t* p, __m512i off) {
    const __m512i c = _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(p)));
    if (kLookup == CbLookup::kPerm) return _mm512_permutex2var_ps(t0, c, t1);
    return _mm512_i32gather_ps(_mm512_add_epi32(c, off), tab, 4);
  };
  for (size_t g = n_begin / kTileRows; g * kTileRows < n_end; ++g) {
    const size_t n0 = g * kTileRows;
    const size_t first = n0 < n_begin ? n_begin - n0 : 0;
    const size_t last = std::min(kTileRows, n_end - n0);
    // Per-row tables: lane j reads table n0 + j (lanes past n read table 0).
    __m512i off = _mm512_setzero_si512();
    if (kLookup == CbLookup::kGather && w.table_per_row) {
      const __mmask16 real = lane_mask(std::min(kTileRows, w.n - n0));
      off = _mm512_maskz_mullo_epi32(real, _mm512_add_epi32(lane, _mm512_set1_epi32(int(n0))),
                                     _mm512_set1_epi32(int(w.table_stride)));
    }
    const uint8_t* gc = codes + g * wins * kTileCols * kTileRows;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t win = 0; win < wins; ++win) {
      const uint8_t* tc = gc + win * kTileCols * kTileRows;
      const float* xw = x + win * kTileCols;
      if (win < full) {
#pragma GCC unroll 2
        for (size_t c = 0; c < kTileCols; c += 4) {
          a0 = _mm512_fmadd_ps(lookup(tc + c * kTileRows, off), _mm512_set1_ps(xw[c]), a0);
          a1 = _mm512_fmadd_ps(lookup(tc + (c + 1) * kTileRows, off), _mm512_set1_ps(xw[c + 1]), a1);
          a2 = _mm512_fmadd_ps(lookup(tc + (c + 2) * kTileRows, off), _mm512_set1_ps(xw[c + 2]), a2);
          a3 = _mm512_fmadd_ps(lookup(tc + (c + 3) * kTileRows, off), _mm512_set1_ps(xw[c + 3]), a3);
        }
      } else {  // last, partial window: no read past x[k - 1]
        const size_t cols = k - win * kTileCols;
        for (size_t c = 0; c < cols; ++c)
          a0 = _mm512_fmadd_ps(lookup(tc + c * kTileRows, off), _mm512_set1_ps(xw[c]), a0);
      }
    }
    const __mmask16 inside = __mmask16(lane_mask(last) & ~lane_mask(first));
    const __m512 b = _mm512_maskz_loadu_ps(inside, bias + n0);
    const __m512 r = _mm512_min_ps(
        _mm512_max_ps(_mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)), b), vlo),
        vhi);
    if (ys == sizeof(float)) {
      _mm512_mask_storeu_ps(y + n0, inside, r);
    } else {
      alignas(64) float tmp[kTileRows];
      _mm512_store_ps(tmp, r);
      for (size_t j = first; j < last; ++j) *row_of(y, ys, n0 + j) = tmp[j];
    }
  }
}

}  // namespace

void gemv_cb_f32_16x32__avx512(const PackedWeights& w, size_t m, const float* x, size_t xs,
                               float* y, size_t ys, size_t n_begin, size_t n_end, float lo,
                               float hi) {
  if (xs != sizeof(float)) {  // broadcasts read contiguous x
    gemv_cb_f32__scalar(w, m, x, xs, y, ys, n_begin, n_end, lo, hi);
    return;
  }
  if (!w.table_per_row && w.table_entries <= 32)
    gemv_cb_groups<CbLookup::kPerm>(w, x, y, ys, n_begin, n_end, lo, hi);
  else
    gemv_cb_groups<CbLookup::kGather>(w, x, y, ys, n_begin, n_end, lo, hi);
}

}  // namespace dsq::spmm_f32
