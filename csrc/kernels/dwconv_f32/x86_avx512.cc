// AVX-512 depthwise f32 row kernel (16 channels per vector, masked tail).
#include <immintrin.h>

#include "kernels/dwconv_f32/row_kernel.h"

namespace dsq::dwconv_f32 {

namespace {
struct Avx512 {
  static constexpr int64_t kLanes = 16;
  using Reg = __m512;
  using Mask = __mmask16;
  static Mask mask(int64_t left) { return left >= 16 ? Mask(0xFFFF) : Mask((1u << left) - 1); }
  static Reg load(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, Reg v, Mask m) { _mm512_mask_storeu_ps(p, m, v); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static Reg set1(float v) { return _mm512_set1_ps(v); }
  static Reg max(Reg a, Reg b) { return _mm512_max_ps(a, b); }  // b when a is NaN
  static Reg min(Reg a, Reg b) { return _mm512_min_ps(a, b); }
};
}  // namespace

void dwconv_f32_16__avx512(const Geometry& g, const float* x, const float* w, const float* bias, float* y, int64_t oh) {
  row_kernel<Avx512>(g, x, w, bias, y, oh);
}

}  // namespace dsq::dwconv_f32
