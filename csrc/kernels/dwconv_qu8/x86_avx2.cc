// AVX2 depthwise int8 row kernel (8 channels per vector).
#include <immintrin.h>

#include "kernels/dwconv_qu8/row_kernel.h"

namespace dsq::dwconv_qu8 {

namespace {
struct Avx2 {
  static constexpr int64_t kLanes = 8;
  using IReg = __m256i;
  using FReg = __m256;
  static IReg load_x(const uint8_t* p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))); }
  static IReg load_w(const int8_t* p) { return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))); }
  static IReg madd(IReg acc, IReg x, IReg w) { return _mm256_add_epi32(acc, _mm256_madd_epi16(x, w)); }
  static IReg add(IReg a, IReg b) { return _mm256_add_epi32(a, b); }
  static IReg sub(IReg a, IReg b) { return _mm256_sub_epi32(a, b); }
  static IReg mullo(IReg a, IReg b) { return _mm256_mullo_epi32(a, b); }
  static IReg izero() { return _mm256_setzero_si256(); }
  static IReg iset1(int32_t v) { return _mm256_set1_epi32(v); }
  static FReg to_float(IReg v) { return _mm256_cvtepi32_ps(v); }
  static FReg fload(const float* p) { return _mm256_loadu_ps(p); }
  static void fstore(float* p, FReg v) { _mm256_storeu_ps(p, v); }
  static FReg fset1(float v) { return _mm256_set1_ps(v); }
  static FReg fma(FReg a, FReg b, FReg c) { return _mm256_fmadd_ps(a, b, c); }
  static FReg fmax(FReg a, FReg b) { return _mm256_max_ps(a, b); }
  static FReg fmin(FReg a, FReg b) { return _mm256_min_ps(a, b); }
};
}  // namespace

void dwconv_qu8_8__avx2(const Geometry& g, const uint8_t* x, const int8_t* w, const float* scale,
                        const float* bias, float* y, int64_t oh) {
  row_kernel<Avx2>(g, x, w, scale, bias, y, oh);
}

}  // namespace dsq::dwconv_qu8
