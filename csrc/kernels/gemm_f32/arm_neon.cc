// NEON f32 GEMM ukernels (aarch64 and ARMv7-A NEON): MR rows x 8 columns, two q
// registers per row, A[m, k] broadcast, two loads of the packed panel row per k step.
// aarch64 uses fused vfmaq_f32; ARMv7 NEON (VFPv3) has no fused multiply-add, so it uses
// vmlaq_f32 (separately rounded; within the family's float tolerance, not bit-identical
// to the scalar reference). Each tile runs a specialization for its exact row count, so
// rows past m and floats past K of a row are never read.
#include <arm_neon.h>

#include <cstddef>

#include "kernels/gemm_f32/ukernels.h"

namespace dsq::gemm_f32 {
namespace {

inline float32x4_t madd(float32x4_t acc, float32x4_t a, float32x4_t b) {
#if defined(__aarch64__)
  return vfmaq_f32(acc, a, b);
#else
  return vmlaq_f32(acc, a, b);
#endif
}

template <int MR>
__attribute__((noinline)) void gemm_mx8(size_t k, const float* a, size_t a_stride,
                                        const float* packed_panel, const float* bias_panel,
                                        float* c, size_t c_stride, size_t n_valid, float lo,
                                        float hi) {
  const float* ap[MR];
  float* cp[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    ap[i] = reinterpret_cast<const float*>(reinterpret_cast<const char*>(a) + i * a_stride);
    cp[i] = reinterpret_cast<float*>(reinterpret_cast<char*>(c) + i * c_stride);
  }

  const float32x4_t b0 = vld1q_f32(bias_panel);
  const float32x4_t b1 = vld1q_f32(bias_panel + 4);
  float32x4_t acc0[MR], acc1[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    acc0[i] = b0;
    acc1[i] = b1;
  }

  const float* w = packed_panel;
  for (size_t kk = 0; kk < k; ++kk) {
    const float32x4_t w0 = vld1q_f32(w);
    const float32x4_t w1 = vld1q_f32(w + 4);
    w += 8;
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const float32x4_t av = vld1q_dup_f32(ap[i] + kk);
      acc0[i] = madd(acc0[i], av, w0);
      acc1[i] = madd(acc1[i], av, w1);
    }
  }

  // Clamp as the reference: min(max(x, lo), hi) (vmaxq/vminq; NaN handling of lo/hi is
  // not specified by the family).
  const float32x4_t vlo = vdupq_n_f32(lo);
  const float32x4_t vhi = vdupq_n_f32(hi);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    acc0[i] = vminq_f32(vmaxq_f32(acc0[i], vlo), vhi);
    acc1[i] = vminq_f32(vmaxq_f32(acc1[i], vlo), vhi);
  }

  if (n_valid >= 8) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      vst1q_f32(cp[i], acc0[i]);
      vst1q_f32(cp[i] + 4, acc1[i]);
    }
    return;
  }
  // Partial columns: 4, 2, 1 pieces (nothing stored past n_valid).
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    float* ci = cp[i];
    float32x4_t v = acc0[i];
    const size_t nv = n_valid;
    if (nv & 4) {
      vst1q_f32(ci, v);
      v = acc1[i];
      ci += 4;
    }
    float32x2_t x = vget_low_f32(v);
    if (nv & 2) {
      vst1_f32(ci, x);
      x = vget_high_f32(v);
      ci += 2;
    }
    if (nv & 1) vst1_lane_f32(ci, x, 0);
  }
}

}  // namespace

#define DSQ_NEON_F32_CASE(R) \
  case R: return gemm_mx8<R>(k, a, a_stride, packed_panel, bias_panel, c, c_stride, n_valid, lo, hi);

void gemm_f32_4x8__neon(size_t m, size_t k, const float* a, size_t a_stride,
                        const float* packed_panel, const float* bias_panel, float* c,
                        size_t c_stride, size_t n_valid, float lo, float hi) {
  switch (m) {
    DSQ_NEON_F32_CASE(1)
    DSQ_NEON_F32_CASE(2)
    DSQ_NEON_F32_CASE(3)
    DSQ_NEON_F32_CASE(4)
    default: return;
  }
}

#if defined(__aarch64__)
// 32 vector registers: 16 accumulators + 2 panel + broadcasts.
void gemm_f32_8x8__neon(size_t m, size_t k, const float* a, size_t a_stride,
                        const float* packed_panel, const float* bias_panel, float* c,
                        size_t c_stride, size_t n_valid, float lo, float hi) {
  switch (m) {
    DSQ_NEON_F32_CASE(1)
    DSQ_NEON_F32_CASE(2)
    DSQ_NEON_F32_CASE(3)
    DSQ_NEON_F32_CASE(4)
    DSQ_NEON_F32_CASE(5)
    DSQ_NEON_F32_CASE(6)
    DSQ_NEON_F32_CASE(7)
    DSQ_NEON_F32_CASE(8)
    default: return;
  }
}
#endif

#undef DSQ_NEON_F32_CASE

}  // namespace dsq::gemm_f32
