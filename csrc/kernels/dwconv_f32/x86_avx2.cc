// AVX2 depthwise f32 row kernel (8 channels per vector, masked tail).
#include <immintrin.h>

#include "kernels/dwconv_f32/row_kernel.h"

namespace dsq::dwconv_f32 {

namespace {
struct Avx2 {
  static constexpr int64_t kLanes = 8;
  using Reg = __m256;
  using Mask = __m256i;
  static Mask mask(int64_t left) {
    const int n = left >= 8 ? 8 : static_cast<int>(left);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static Reg load(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
  static void store(float* p, Reg v, Mask m) { _mm256_maskstore_ps(p, m, v); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static Reg set1(float v) { return _mm256_set1_ps(v); }
  static Reg max(Reg a, Reg b) { return _mm256_max_ps(a, b); }  // b when a is NaN
  static Reg min(Reg a, Reg b) { return _mm256_min_ps(a, b); }
};
}  // namespace

void dwconv_f32_8__avx2(const Geometry& g, const float* x, const float* w, const float* bias, float* y, int64_t oh) {
  row_kernel<Avx2>(g, x, w, bias, y, oh);
}

}  // namespace dsq::dwconv_f32
