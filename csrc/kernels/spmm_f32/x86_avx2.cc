// AVX2+FMA sparse f32 ukernels: m tile of 16 (2 ymm). Per nonzero: broadcast the weight
// (f32 value or table[code]), two loads of x_t[col][m0:m0+16], two FMAs; consecutive
// nonzeros go to two accumulator sets (4 FMA chains). The m remainder uses
// vmaskmovps loads/stores (no access past column m of x_t / y_t).
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kernels/spmm_f32/ukernels.h"

namespace dsq::spmm_f32 {

using detail::row_of;

namespace {

inline __m256i lane_mask8(size_t valid) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const int v = static_cast<int>(std::min<size_t>(valid, 8));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(v), idx);
}

template <int NV, bool kMasked, typename Values, typename Col>
void spmm_tile(const PackedWeights& w, const Col* cols, size_t mt, const float* x, size_t xs,
               float* y, size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  const uint32_t* rp = w.rp();
  const float* bias = w.bias_ptr();
  __m256i mask[NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) mask[v] = lane_mask8(mt > size_t(v) * 8 ? mt - size_t(v) * 8 : 0);
  const char* xb = reinterpret_cast<const char*>(x);
  const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  auto load = [&](const float* p, int v) {
    return kMasked ? _mm256_maskload_ps(p + 8 * v, mask[v]) : _mm256_loadu_ps(p + 8 * v);
  };
  for (size_t n = n_begin; n < n_end; ++n) {
    const Values val(w, n);
    __m256 a[NV], b[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      a[v] = _mm256_set1_ps(bias[n]);
      b[v] = _mm256_setzero_ps();
    }
    size_t p = rp[n];
    const size_t e = rp[n + 1];
    for (; p + 2 <= e; p += 2) {
      const __m256 w0 = _mm256_set1_ps(val(p));
      const __m256 w1 = _mm256_set1_ps(val(p + 1));
      const float* x0 = reinterpret_cast<const float*>(xb + size_t(cols[p]) * xs);
      const float* x1 = reinterpret_cast<const float*>(xb + size_t(cols[p + 1]) * xs);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        a[v] = _mm256_fmadd_ps(w0, load(x0, v), a[v]);
        b[v] = _mm256_fmadd_ps(w1, load(x1, v), b[v]);
      }
    }
    if (p < e) {
      const __m256 w0 = _mm256_set1_ps(val(p));
      const float* x0 = reinterpret_cast<const float*>(xb + size_t(cols[p]) * xs);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) a[v] = _mm256_fmadd_ps(w0, load(x0, v), a[v]);
    }
    float* yr = row_of(y, ys, n);
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const __m256 r = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(a[v], b[v]), vlo), vhi);
      if (kMasked) _mm256_maskstore_ps(yr + 8 * v, mask[v], r);
      else _mm256_storeu_ps(yr + 8 * v, r);
    }
  }
}

template <int NV, typename Values, typename Col>
void spmm_all(const PackedWeights& w, const Col* cols, size_t m, const float* x, size_t xs,
              float* y, size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  constexpr size_t kMr = 8 * NV;
  size_t m0 = 0;
  for (; m0 + kMr <= m; m0 += kMr)
    spmm_tile<NV, false, Values>(w, cols, kMr, x + m0, xs, y + m0, ys, n_begin, n_end, lo, hi);
  if (m0 < m)
    spmm_tile<NV, true, Values>(w, cols, m - m0, x + m0, xs, y + m0, ys, n_begin, n_end, lo, hi);
}

template <int NV, typename Values>
void spmm_cols(const PackedWeights& w, size_t m, const float* x, size_t xs, float* y,
               size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  if (w.cols_u16)
    spmm_all<NV, Values>(w, w.col16(), m, x, xs, y, ys, n_begin, n_end, lo, hi);
  else
    spmm_all<NV, Values>(w, w.col32(), m, x, xs, y, ys, n_begin, n_end, lo, hi);
}

}  // namespace

void spmm_f32_16__avx2(const PackedWeights& w, size_t m, const float* x, size_t xs, float* y,
                       size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  spmm_cols<2, detail::F32Values>(w, m, x, xs, y, ys, n_begin, n_end, lo, hi);
}

void spmm_cb_f32_16__avx2(const PackedWeights& w, size_t m, const float* x, size_t xs,
                          float* y, size_t ys, size_t n_begin, size_t n_end, float lo,
                          float hi) {
  spmm_cols<2, detail::CodebookValues>(w, m, x, xs, y, ys, n_begin, n_end, lo, hi);
}

}  // namespace dsq::spmm_f32
