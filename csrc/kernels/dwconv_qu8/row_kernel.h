// The depthwise int8 row kernel written once over a vector type (AVX2 8 lanes, AVX-512 16
// lanes, aarch64 NEON 8 lanes); included by the per-ISA files with their Vec.
#pragma once
#include <cstdint>
#include <type_traits>

#include "kernels/dwconv_qu8/dwconv_qu8.h"

namespace dsq::dwconv_qu8 {

// The u8 output of L results (Geometry::out_u8): Vec::Codes quantizes in registers where
// the vector type has one; otherwise the lanes go through an array to the scalar store
// (the same bytes).
template <typename Vec, typename = void>
struct OutputCodes {
  explicit OutputCodes(const Geometry& g) : g_(g) {}
  void store(uint8_t* p, typename Vec::FReg v) {
    float lanes[Vec::kLanes];
    Vec::fstore(lanes, v);
    for (int64_t i = 0; i < Vec::kLanes; ++i)
      gemm_qu8::store_code(p + i, lanes[i], g_.out_scale, g_.out_zero, g_.out_bad);
  }
  void finish() {}
  const Geometry& g_;
};
template <typename Vec>
struct OutputCodes<Vec, std::void_t<typename Vec::Codes>> : Vec::Codes {
  explicit OutputCodes(const Geometry& g) : Vec::Codes(g) {}
};

// Per channel block the kh x kw weights (up to kMaxTaps, sign-extended to 32-bit lanes)
// stay in registers while the row's output pixels stream past. Each tap is one
// vpmaddwd: a u8 activation zero-extended to 32 bits times an int8 weight sign-extended to
// 32 bits is x * w in the low 16-bit half plus 0 * (0 or -1) in the high one. Bigger
// kernels and the channel tail go to the scalar code.

template <typename Vec>
inline void row_kernel(const Geometry& g, const uint8_t* x, const int8_t* w, const float* scale, const float* bias,
                       float* y, int64_t oh) {
  using IReg = typename Vec::IReg;
  using FReg = typename Vec::FReg;
  constexpr int64_t L = Vec::kLanes;
  const int64_t C = g.C, kw = g.kw, taps = g.kh * g.kw;
  if (taps > kMaxTaps) {
    row_channels(g, x, w, scale, bias, y, oh, 0, C);
    return;
  }
  int64_t i0 = 0, i1 = g.kh;  // rows of taps inside the image
  while (i0 < g.kh && oh * g.sh - g.ph + i0 * g.dh < 0) ++i0;
  while (i1 > i0 && oh * g.sh - g.ph + (i1 - 1) * g.dh >= g.H) --i1;
  // Output columns whose kw taps are all inside the image.
  const int64_t ow_a = g.pw > 0 ? (g.pw + g.sw - 1) / g.sw : 0;
  const int64_t last_tap = (kw - 1) * g.dw;
  int64_t ow_b = g.W - last_tap + g.pw > 0 ? (g.W - last_tap + g.pw - 1) / g.sw + 1 : 0;
  ow_b = ow_b < g.OW ? ow_b : g.OW;
  const bool unrolled = kw == 3 && g.kh == 3 && i0 == 0 && i1 == 3;
  const int64_t dwc = g.dw * C, row = g.dh * g.W * C;
  const IReg zero = Vec::iset1(g.zero);
  const FReg lo = Vec::fset1(g.lo), hi = Vec::fset1(g.hi);
  const int64_t c_full = C / L * L;
  IReg wv[kMaxTaps];
  OutputCodes<Vec> codes(g);
  uint8_t* const yq = reinterpret_cast<uint8_t*>(y);
  for (int64_t c = 0; c < c_full; c += L) {
    for (int64_t t = 0; t < taps; ++t) wv[t] = Vec::load_w(w + t * C + c);
    IReg wsum_rows = Vec::izero();  // interior columns: every tap of rows i0..i1
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = 0; j < kw; ++j) wsum_rows = Vec::add(wsum_rows, wv[i * kw + j]);
    const IReg corr_interior = Vec::mullo(wsum_rows, zero);
    const FReg sv = Vec::fload(scale + c), bv = Vec::fload(bias + c);
    const uint8_t* x_top = x + (oh * g.sh - g.ph) * g.W * C + c;  // row i = 0 of the window
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      const int64_t w0 = ow * g.sw - g.pw;
      IReg acc = Vec::izero();
      IReg corr;
      if (ow >= ow_a && ow < ow_b) {
        if (unrolled) {
          const uint8_t* p = x_top + w0 * C;
          acc = Vec::madd(acc, Vec::load_x(p), wv[0]);
          acc = Vec::madd(acc, Vec::load_x(p + dwc), wv[1]);
          acc = Vec::madd(acc, Vec::load_x(p + 2 * dwc), wv[2]);
          p += row;
          acc = Vec::madd(acc, Vec::load_x(p), wv[3]);
          acc = Vec::madd(acc, Vec::load_x(p + dwc), wv[4]);
          acc = Vec::madd(acc, Vec::load_x(p + 2 * dwc), wv[5]);
          p += row;
          acc = Vec::madd(acc, Vec::load_x(p), wv[6]);
          acc = Vec::madd(acc, Vec::load_x(p + dwc), wv[7]);
          acc = Vec::madd(acc, Vec::load_x(p + 2 * dwc), wv[8]);
        } else {
          for (int64_t i = i0; i < i1; ++i) {
            const uint8_t* xr = x_top + i * row + w0 * C;
            for (int64_t j = 0; j < kw; ++j) acc = Vec::madd(acc, Vec::load_x(xr + j * dwc), wv[i * kw + j]);
          }
        }
        corr = corr_interior;
      } else {
        int64_t j0 = 0, j1 = kw;
        while (j0 < kw && w0 + j0 * g.dw < 0) ++j0;
        while (j1 > j0 && w0 + (j1 - 1) * g.dw >= g.W) --j1;
        IReg wsum = Vec::izero();
        for (int64_t i = i0; i < i1; ++i) {
          const uint8_t* xr = x_top + i * row + w0 * C;
          for (int64_t j = j0; j < j1; ++j) {
            acc = Vec::madd(acc, Vec::load_x(xr + j * dwc), wv[i * kw + j]);
            wsum = Vec::add(wsum, wv[i * kw + j]);
          }
        }
        corr = Vec::mullo(wsum, zero);
      }
      const FReg v = Vec::fmin(Vec::fmax(Vec::fma(Vec::to_float(Vec::sub(acc, corr)), sv, bv), lo), hi);
      if (g.out_u8) codes.store(yq + ow * C + c, v);
      else Vec::fstore(y + ow * C + c, v);
    }
  }
  codes.finish();
  if (c_full < C) row_channels(g, x, w, scale, bias, y, oh, c_full, C);
}

}  // namespace dsq::dwconv_qu8
