// Private to the gemm_q4 family: ukernel declarations (from kernels.inc) and the packed
// layout helpers shared by pack(), the reference and the SIMD ukernels.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kernels/gemm_q4/gemm_q4.h"

namespace dsq::gemm_q4 {

#define DSQ_GEMM_Q4_UKERNEL(ident, isa, mr, nr)                                       \
  void ident(size_t m, const uint8_t* a, size_t a_stride, const PackedWeights& w,    \
             size_t p, float* c, size_t c_stride, size_t n_valid,                     \
             const gemm_qu8::Epilogue& ep);
#include "kernels/gemm_q4/kernels.inc"
#undef DSQ_GEMM_Q4_UKERNEL

// Largest supported group: the VNNI kernels accumulate 16 * (exact group sum) in int32,
// |16 * 255 * 8 * 65536| < 2^31.
constexpr size_t kMaxGroup = 65536;

// Bytes of one panel: every group but the last spans a multiple of 8 k, the last ends at
// k_padded (a multiple of 4) and its odd 4-k block takes a whole 8-k slot (high nibbles 0).
inline size_t panel_bytes(const PackedWeights& w) { return w.nr * ((w.k_padded + 7) / 8 * 8) / 2; }

// Group g covers k in [g * group, min((g + 1) * group, k_padded)).
inline size_t group_len(const PackedWeights& w, size_t g) {
  const size_t k0 = g * w.group;
  return w.k_padded - k0 < w.group ? w.k_padded - k0 : w.group;
}

inline float group_step(int32_t acc, int32_t a_zero, int32_t gsum, float scale, float s) {
  const int32_t x = static_cast<int32_t>(static_cast<uint32_t>(acc) -
                                         static_cast<uint32_t>(a_zero) *
                                             static_cast<uint32_t>(gsum));
  return std::fma(static_cast<float>(x), scale, s);
}

inline float finish(float s, float bias, float lo, float hi) {
  float v = s + bias;
  v = v > lo ? v : lo;  // vmaxps / vminps semantics
  v = v < hi ? v : hi;
  return v;
}

}  // namespace dsq::gemm_q4
