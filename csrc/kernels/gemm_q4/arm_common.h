// Private to the gemm_q4 Arm files (arm_neon.cc, arm_dotprod.cc): the per-group float
// step and the final bias + clamp, bit-identical to group_step() / finish().
// Everything here has internal linkage: the files are compiled with different -march
// flags and must not share out-of-line copies.
//
// aarch64: vcvtq_f32_s32 + vfmaq_f32 (fused, as std::fma), vaddq_f32 and compare +
// select clamps (NaN behaves as the scalar ternaries). ARMv7 NEON has no fused
// multiply-add and flushes denormals, so there the float part is the scalar
// group_step() / finish() per column; only the int32 sums come from NEON.
#pragma once
#include <arm_neon.h>

#include <cstdint>
#include <cstring>

#include "kernels/gemm_q4/gemm_q4.h"
#include "kernels/gemm_q4/ukernels.h"

namespace dsq::gemm_q4 {
namespace {

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Running float sums of one ukernel call: MR rows x 8 columns.
template <size_t MR>
struct ArmQ4Sums {
  static constexpr size_t kNr = 8;
#if defined(__aarch64__)
  float32x4_t s0[MR], s1[MR];
  ArmQ4Sums() {
    for (size_t i = 0; i < MR; ++i) s0[i] = s1[i] = vdupq_n_f32(0.f);
  }
#else
  float s[MR][kNr];
  ArmQ4Sums() { std::memset(s, 0, sizeof(s)); }
#endif

  // One group of row i: acc0/acc1 = int32 sums of columns 0..3 / 4..7 (mod 2^32),
  // x = acc - zero_factor * gs (wrapping, as group_step), s = fma(float(x), a_scale * ws, s).
  inline void step(size_t i, int32x4_t acc0, int32x4_t acc1, const int32_t* gs,
                   int32_t zero_factor, const float* ws, float a_scale) {
#if defined(__aarch64__)
    const int32x4_t f = vdupq_n_s32(zero_factor);
    const int32x4_t x0 = vsubq_s32(acc0, vmulq_s32(f, vld1q_s32(gs)));
    const int32x4_t x1 = vsubq_s32(acc1, vmulq_s32(f, vld1q_s32(gs + 4)));
    const float32x4_t as = vdupq_n_f32(a_scale);
    s0[i] = vfmaq_f32(s0[i], vcvtq_f32_s32(x0), vmulq_f32(as, vld1q_f32(ws)));
    s1[i] = vfmaq_f32(s1[i], vcvtq_f32_s32(x1), vmulq_f32(as, vld1q_f32(ws + 4)));
#else
    int32_t a[kNr];
    vst1q_s32(a, acc0);
    vst1q_s32(a + 4, acc1);
    for (size_t j = 0; j < kNr; ++j)
      s[i][j] = group_step(a[j], zero_factor, gs[j], a_scale * ws[j], s[i][j]);
#endif
  }

  inline void store(size_t i, const float* bias, float lo, float hi, float* cr,
                    size_t n_valid) const {
#if defined(__aarch64__)
    const float32x4_t vlo = vdupq_n_f32(lo), vhi = vdupq_n_f32(hi);
    float32x4_t v0 = vaddq_f32(s0[i], vld1q_f32(bias));
    float32x4_t v1 = vaddq_f32(s1[i], vld1q_f32(bias + 4));
    v0 = vbslq_f32(vcgtq_f32(v0, vlo), v0, vlo);
    v1 = vbslq_f32(vcgtq_f32(v1, vlo), v1, vlo);
    v0 = vbslq_f32(vcltq_f32(v0, vhi), v0, vhi);
    v1 = vbslq_f32(vcltq_f32(v1, vhi), v1, vhi);
    if (n_valid == kNr) {
      vst1q_f32(cr, v0);
      vst1q_f32(cr + 4, v1);
      return;
    }
    float tmp[kNr];
    vst1q_f32(tmp, v0);
    vst1q_f32(tmp + 4, v1);
    for (size_t j = 0; j < n_valid; ++j) cr[j] = tmp[j];
#else
    for (size_t j = 0; j < n_valid; ++j) cr[j] = finish(s[i][j], bias[j], lo, hi);
#endif
  }
};

}  // namespace
}  // namespace dsq::gemm_q4
