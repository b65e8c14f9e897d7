// Private to the gemm_qu8 family: declarations of every ukernel in kernels.inc and of the
// SIMD helpers used by the dispatching entry points (minmax / quantize).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/gemm_qu8/gemm_qu8.h"

namespace dsq::gemm_qu8 {

#define DSQ_GEMM_QU8_UKERNEL(ident, isa, mr, nr)                                   \
  void ident(size_t m, const uint8_t* a, size_t a_stride, const PackedWeights& w, \
             size_t p, float* c, size_t c_stride, size_t n_valid, const Epilogue& ep);
#include "kernels/gemm_qu8/kernels.inc"
#undef DSQ_GEMM_QU8_UKERNEL

// The epilogue, written once for the scalar code (the SIMD variants use the same
// operations in the same order): int32 wrap-around subtraction, exact int->float
// conversion (round to nearest even), one fma, then clamp with max-then-min whose NaN
// behaviour matches vmaxps/vminps (second operand returned when unordered).
inline float epilogue_scalar(int32_t acc, int32_t a_zero, int32_t colsum, float scale,
                             float bias, float lo, float hi) {
  const int32_t x = static_cast<int32_t>(static_cast<uint32_t>(acc) -
                                         static_cast<uint32_t>(a_zero) *
                                             static_cast<uint32_t>(colsum));
  float v = std::fma(static_cast<float>(x), scale, bias);
  v = v > lo ? v : lo;
  v = v < hi ? v : hi;
  return v;
}

// Scalar quantization of one value, the definition every variant reproduces:
// nearbyint (current rounding mode, half to even by default) of the IEEE quotient, plus
// the zero point, clamped to [0, 255] (NaN -> 0). The addition is done in float: exact
// while |r| < 2^24, and beyond that the clamp gives the same result as integer math.
inline bool is_finite_bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return (b & 0x7f800000u) != 0x7f800000u;
}

inline uint8_t quantize_scalar(float x, float scale, float zero) {
  float v = std::nearbyint(x / scale) + zero;
  v = v > 0.0f ? v : 0.0f;
  v = v < 255.0f ? v : 255.0f;
  return static_cast<uint8_t>(static_cast<int32_t>(v));
}

// The scalar store of a u8 output epilogue (activation chaining, every int8 family): v as
// its code under (scale, zero); a NaN or Inf value sets *bad.
inline void store_code(uint8_t* dst, float v, float scale, int32_t zero, uint8_t* bad) {
  if (!is_finite_bits(v)) *bad = 1;
  *dst = quantize_scalar(v, scale, static_cast<float>(zero));
}

// The SIMD quantizers compute x / scale as x * (1 / scale). Where the result is not
// clamped (|x / scale| < 256; beyond, both saturate alike), the two differ by less than
// 5e-5 when the reciprocal is a normal float: a product farther than kNearTie from a
// half rounds to the same integer as the quotient, nearer ones are divided.
constexpr float kNearTie = 1.0f / 1024;
inline bool fast_reciprocal_ok(float scale) {
  const float inv = 1.0f / scale;
  return inv >= 1.17549435e-38f && inv <= 1.0e37f;  // normal, with room below FLT_MAX
}

void minmax_scalar(const float* x, size_t m, size_t k, size_t x_stride, float* lo,
                   float* hi);
bool quantize_scalar_rows(const float* x, size_t m, size_t k, size_t x_stride, uint8_t* q,
                          size_t q_stride, QuantParams p);

#if DSQ_X86
// The segmented twin of an AVX-512 VNNI variant (x86_avx512vnni.cc), null for others.
SegUkernelFn avx512vnni_segmented(UkernelFn fn);
// Row-wise helpers for the x86 quantize paths; rows of k floats -> k_padded bytes.
void minmax_avx2(const float* x, size_t m, size_t k, size_t x_stride, float* lo, float* hi);
bool quantize_avx2(const float* x, size_t m, size_t k, size_t x_stride, uint8_t* q,
                   size_t q_stride, QuantParams p);
void minmax_avx512(const float* x, size_t m, size_t k, size_t x_stride, float* lo,
                   float* hi);
bool quantize_as_epilogue_avx512(const float* x, size_t n, uint8_t* q, QuantParams p, float lo, float hi,
                                 bool branch_free);
bool quantize_avx512(const float* x, size_t m, size_t k, size_t x_stride, uint8_t* q,
                     size_t q_stride, QuantParams p);
#endif

}  // namespace dsq::gemm_qu8
