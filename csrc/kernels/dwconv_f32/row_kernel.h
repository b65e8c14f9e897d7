// The depthwise row kernel written once over a vector type (AVX2 8 lanes, AVX-512 16
// lanes, aarch64 NEON 4 lanes); included by the per-ISA files with their Vec.
#pragma once
#include <cstdint>

#include "kernels/dwconv_f32/dwconv_f32.h"

namespace dsq::dwconv_f32 {

void dwconv_f32_1__scalar(const Geometry& g, const float* x, const float* w, const float* bias, float* y, int64_t oh);

// Channel multiplier 1 (the MobileNet case), channels in blocks of Vec::kLanes (masked
// tail). Per channel block the kh x kw weights (up to kMaxTaps) stay in registers while
// the row's output pixels stream past; each output folds its in-bounds taps with one fma
// per tap in (i, j) order, as the reference. Multiplier > 1 or bigger kernels go to the
// reference.
constexpr int64_t kMaxTaps = 25;

// One channel block of one output row: border pixels fold their in-bounds taps in a
// loop; interior pixels of a 3x3 kernel with all three rows in bounds take nine unrolled
// fmas on registers (same order: bit-identical).
template <typename Vec>
inline void row_block(const Geometry& g, const float* x, const typename Vec::Reg* wv, typename Vec::Reg bv,
                      typename Vec::Reg lo, typename Vec::Reg hi, float* y, int64_t oh, int64_t c,
                      typename Vec::Mask m, int64_t i0, int64_t i1) {
  using Reg = typename Vec::Reg;
  const int64_t C = g.C, kw = g.kw, dwc = g.dw * C, row = g.dh * g.W * C;
  // Output columns whose kw taps are all inside the image.
  const int64_t ow_a = g.pw > 0 ? (g.pw + g.sw - 1) / g.sw : 0;
  const int64_t last_tap = (kw - 1) * g.dw;
  int64_t ow_b = g.W - last_tap + g.pw > 0 ? (g.W - last_tap + g.pw - 1) / g.sw + 1 : 0;
  ow_b = ow_b < g.OW ? ow_b : g.OW;
  const bool unrolled = kw == 3 && g.kh == 3 && i0 == 0 && i1 == 3;
  const float* x_top = x + (oh * g.sh - g.ph) * g.W * C + c;  // row i = 0 of the window
  for (int64_t ow = 0; ow < g.OW; ++ow) {
    const int64_t w0 = ow * g.sw - g.pw;
    Reg acc = bv;
    if (unrolled && ow >= ow_a && ow < ow_b) {
      const float* p = x_top + w0 * C;
      acc = Vec::fma(Vec::load(p, m), wv[0], acc);
      acc = Vec::fma(Vec::load(p + dwc, m), wv[1], acc);
      acc = Vec::fma(Vec::load(p + 2 * dwc, m), wv[2], acc);
      p += row;
      acc = Vec::fma(Vec::load(p, m), wv[3], acc);
      acc = Vec::fma(Vec::load(p + dwc, m), wv[4], acc);
      acc = Vec::fma(Vec::load(p + 2 * dwc, m), wv[5], acc);
      p += row;
      acc = Vec::fma(Vec::load(p, m), wv[6], acc);
      acc = Vec::fma(Vec::load(p + dwc, m), wv[7], acc);
      acc = Vec::fma(Vec::load(p + 2 * dwc, m), wv[8], acc);
    } else {
      int64_t j0 = 0, j1 = kw;
      while (j0 < kw && w0 + j0 * g.dw < 0) ++j0;
      while (j1 > j0 && w0 + (j1 - 1) * g.dw >= g.W) --j1;
      for (int64_t i = i0; i < i1; ++i) {
        const float* xr = x_top + i * row + w0 * C;
        for (int64_t j = j0; j < j1; ++j) acc = Vec::fma(Vec::load(xr + j * dwc, m), wv[i * kw + j], acc);
      }
    }
    Vec::store(y + ow * C + c, Vec::min(Vec::max(acc, lo), hi), m);
  }
}

template <typename Vec>
inline void row_kernel(const Geometry& g, const float* x, const float* w, const float* bias, float* y, int64_t oh) {
  if (g.CO != g.C || g.kh * g.kw > kMaxTaps) {
    dwconv_f32_1__scalar(g, x, w, bias, y, oh);
    return;
  }
  constexpr int64_t L = Vec::kLanes;
  const int64_t C = g.C, taps = g.kh * g.kw;
  int64_t i0 = 0, i1 = g.kh;  // rows of taps inside the image
  while (i0 < g.kh && oh * g.sh - g.ph + i0 * g.dh < 0) ++i0;
  while (i1 > i0 && oh * g.sh - g.ph + (i1 - 1) * g.dh >= g.H) --i1;
  typename Vec::Reg wv[kMaxTaps];
  for (int64_t c = 0; c < C; c += L) {
    const typename Vec::Mask m = Vec::mask(C - c);
    for (int64_t t = 0; t < taps; ++t) wv[t] = Vec::load(w + t * C + c, m);
    const typename Vec::Reg bv = Vec::load(bias + c, m);
    row_block<Vec>(g, x, wv, bv, Vec::set1(g.lo), Vec::set1(g.hi), y, oh, c, m, i0, i1);
  }
}

}  // namespace dsq::dwconv_f32
