// NEON sparse f32 ukernels (aarch64 and ARMv7-A NEON): m tile of 8 or 16 (2 or 4 q
// registers), lanes along m as in x86_avx2.cc. Per nonzero: the weight (f32 value or
// table[code]) is broadcast and multiplied into x_t[col][m0:m0+mr]; consecutive
// nonzeros go to two accumulator sets. aarch64 uses fused vfmaq_f32; ARMv7 NEON has no
// fused multiply-add (vmlaq_f32, separate rounding, and flush-to-zero): both within the
// family's float tolerance, not bit-identical to the reference. The m remainder runs
// 4-lane tiles, then the last < 4 lanes with scalar code (no access past column m).
#include <arm_neon.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kernels/spmm_f32/ukernels.h"

namespace dsq::spmm_f32 {

using detail::row_of;

namespace {

inline float32x4_t mla(float32x4_t acc, float32x4_t x, float32x4_t w) {
#if defined(__aarch64__)
  return vfmaq_f32(acc, x, w);
#else
  return vmlaq_f32(acc, x, w);
#endif
}

template <int NV, typename Values, typename Col>
void spmm_tile(const PackedWeights& w, const Col* cols, const float* x, size_t xs, float* y,
               size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  const uint32_t* rp = w.rp();
  const float* bias = w.bias_ptr();
  const char* xb = reinterpret_cast<const char*>(x);
  const float32x4_t vlo = vdupq_n_f32(lo), vhi = vdupq_n_f32(hi);
  for (size_t n = n_begin; n < n_end; ++n) {
    const Values val(w, n);
    float32x4_t a[NV], b[NV];
    for (int v = 0; v < NV; ++v) {
      a[v] = vdupq_n_f32(bias[n]);
      b[v] = vdupq_n_f32(0.f);
    }
    size_t p = rp[n];
    const size_t e = rp[n + 1];
    for (; p + 2 <= e; p += 2) {
      const float32x4_t w0 = vdupq_n_f32(val(p)), w1 = vdupq_n_f32(val(p + 1));
      const float* x0 = reinterpret_cast<const float*>(xb + size_t(cols[p]) * xs);
      const float* x1 = reinterpret_cast<const float*>(xb + size_t(cols[p + 1]) * xs);
      for (int v = 0; v < NV; ++v) {
        a[v] = mla(a[v], vld1q_f32(x0 + 4 * v), w0);
        b[v] = mla(b[v], vld1q_f32(x1 + 4 * v), w1);
      }
    }
    if (p < e) {
      const float32x4_t w0 = vdupq_n_f32(val(p));
      const float* x0 = reinterpret_cast<const float*>(xb + size_t(cols[p]) * xs);
      for (int v = 0; v < NV; ++v) a[v] = mla(a[v], vld1q_f32(x0 + 4 * v), w0);
    }
    float* yr = row_of(y, ys, n);
    for (int v = 0; v < NV; ++v) {
      float32x4_t r = vaddq_f32(a[v], b[v]);
      r = vbslq_f32(vcgtq_f32(r, vlo), r, vlo);  // NaN -> lo, as vmaxps in x86_avx2.cc
      r = vbslq_f32(vcltq_f32(r, vhi), r, vhi);
      vst1q_f32(yr + 4 * v, r);
    }
  }
}

// The last mt < 4 columns: the reference's order (one chain).
template <typename Values, typename Col>
void spmm_tail(const PackedWeights& w, const Col* cols, size_t mt, const float* x, size_t xs,
               float* y, size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  const uint32_t* rp = w.rp();
  const float* bias = w.bias_ptr();
  for (size_t n = n_begin; n < n_end; ++n) {
    const Values val(w, n);
    float acc[4] = {bias[n], bias[n], bias[n], bias[n]};
    for (uint32_t p = rp[n]; p < rp[n + 1]; ++p) {
      const float wv = val(p);
      const float* xr = row_of(x, xs, cols[p]);
      for (size_t i = 0; i < mt; ++i) acc[i] += wv * xr[i];
    }
    float* yr = row_of(y, ys, n);
    for (size_t i = 0; i < mt; ++i) yr[i] = std::min(std::max(acc[i], lo), hi);
  }
}

template <int NV, typename Values, typename Col>
void spmm_all(const PackedWeights& w, const Col* cols, size_t m, const float* x, size_t xs,
              float* y, size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  constexpr size_t kMr = 4 * NV;
  size_t m0 = 0;
  for (; m0 + kMr <= m; m0 += kMr)
    spmm_tile<NV, Values>(w, cols, x + m0, xs, y + m0, ys, n_begin, n_end, lo, hi);
  for (; m0 + 4 <= m; m0 += 4)
    spmm_tile<1, Values>(w, cols, x + m0, xs, y + m0, ys, n_begin, n_end, lo, hi);
  if (m0 < m) spmm_tail<Values>(w, cols, m - m0, x + m0, xs, y + m0, ys, n_begin, n_end, lo, hi);
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

void spmm_f32_8__neon(const PackedWeights& w, size_t m, const float* x, size_t xs, float* y,
                      size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  spmm_cols<2, detail::F32Values>(w, m, x, xs, y, ys, n_begin, n_end, lo, hi);
}

void spmm_cb_f32_8__neon(const PackedWeights& w, size_t m, const float* x, size_t xs, float* y,
                         size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  spmm_cols<2, detail::CodebookValues>(w, m, x, xs, y, ys, n_begin, n_end, lo, hi);
}

void spmm_f32_16__neon(const PackedWeights& w, size_t m, const float* x, size_t xs, float* y,
                       size_t ys, size_t n_begin, size_t n_end, float lo, float hi) {
  spmm_cols<4, detail::F32Values>(w, m, x, xs, y, ys, n_begin, n_end, lo, hi);
}

void spmm_cb_f32_16__neon(const PackedWeights& w, size_t m, const float* x, size_t xs,
                          float* y, size_t ys, size_t n_begin, size_t n_end, float lo,
                          float hi) {
  spmm_cols<4, detail::CodebookValues>(w, m, x, xs, y, ys, n_begin, n_end, lo, hi);
}

}  // namespace dsq::spmm_f32
