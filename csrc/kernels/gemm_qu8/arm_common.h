// Private to the gemm_qu8 Arm files (arm_neon.cc, arm_dotprod.cc): loading a 4-byte k
// block of an activation row and the epilogue, bit-identical to epilogue_scalar().
// Everything here has internal linkage: the files are compiled with different -march
// flags and must not share out-of-line copies.
#pragma once
#include <arm_neon.h>

#include <cstdint>
#include <cstring>

#include "kernels/gemm_qu8/gemm_qu8.h"
#include "kernels/gemm_qu8/ukernels.h"

namespace dsq::gemm_qu8 {
namespace {

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Stores the epilogue of one row: acc[0..7] are the exact int32 sums of columns 0..7
// after subtracting zc = a_zero * colsum (caller folds any other correction into zc).
//   v = fma(float(acc - zc), a_scale * w_scale, bias); v = v > lo ? v : lo; v < hi ? v : hi
// aarch64: vfmaq_f32 is a fused multiply-add (as std::fma), the clamp uses compare +
// select so NaN behaves as the scalar ternaries. ARMv7 NEON has no fused multiply-add:
// there the epilogue is epilogue_scalar() per column (std::fma). A u8 output
// (Epilogue::out_u8) quantizes each value with quantize_scalar, quantize()'s definition
// (the Arm builds' quantize pass is the scalar one too).
struct ArmEpilogue {
#if defined(__aarch64__)
  int32x4_t zc0, zc1;
  float32x4_t scale0, scale1, bias0, bias1, lo, hi;
#else
  const int32_t* colsum;
  const float* w_scale;
  const float* bias;
#endif
  const Epilogue* ep;

  ArmEpilogue(const PackedWeights& w, size_t p, const Epilogue& e, int32_t colsum_factor) {
    constexpr size_t kNr = 8;
    const int32_t* cs = w.colsum.as<int32_t>() + p * kNr;
    const float* ws = w.w_scale.as<float>() + p * kNr;
    const float* bs = w.bias.as<float>() + p * kNr;
#if defined(__aarch64__)
    // colsum_factor * colsum, wrapping as the uint32 arithmetic of epilogue_scalar.
    const int32x4_t f = vdupq_n_s32(colsum_factor);
    zc0 = vmulq_s32(f, vld1q_s32(cs));
    zc1 = vmulq_s32(f, vld1q_s32(cs + 4));
    const float32x4_t as = vdupq_n_f32(e.a_scale);
    scale0 = vmulq_f32(as, vld1q_f32(ws));
    scale1 = vmulq_f32(as, vld1q_f32(ws + 4));
    bias0 = vld1q_f32(bs);
    bias1 = vld1q_f32(bs + 4);
    lo = vdupq_n_f32(e.lo);
    hi = vdupq_n_f32(e.hi);
#else
    (void)colsum_factor;
    colsum = cs;
    w_scale = ws;
    bias = bs;
#endif
    ep = &e;
  }

  // Column j's value v as the byte of a u8 output row.
  inline void store_code(float* cr, size_t j, float v) const {
    gemm_qu8::store_code(reinterpret_cast<uint8_t*>(cr) + j, v, ep->out_scale, ep->out_zero, ep->out_bad);
  }

#if defined(__aarch64__)
  inline float32x4_t apply4(int32x4_t acc, int32x4_t zc, float32x4_t scale,
                            float32x4_t bias) const {
    const float32x4_t x = vcvtq_f32_s32(vsubq_s32(acc, zc));
    float32x4_t v = vfmaq_f32(bias, x, scale);
    v = vbslq_f32(vcgtq_f32(v, lo), v, lo);
    v = vbslq_f32(vcltq_f32(v, hi), v, hi);
    return v;
  }
#endif

  // acc0: columns 0..3, acc1: columns 4..7 (dot sums before the zero-point correction;
  // `a_zero_eff` is the factor the constructor was given, used on ARMv7).
  inline void store(int32x4_t acc0, int32x4_t acc1, float* cr, size_t n_valid,
                    int32_t a_zero_eff) const {
#if defined(__aarch64__)
    (void)a_zero_eff;
    const float32x4_t v0 = apply4(acc0, zc0, scale0, bias0);
    const float32x4_t v1 = apply4(acc1, zc1, scale1, bias1);
    if (n_valid == 8 && !ep->out_u8) {
      vst1q_f32(cr, v0);
      vst1q_f32(cr + 4, v1);
      return;
    }
    float tmp[8];
    vst1q_f32(tmp, v0);
    vst1q_f32(tmp + 4, v1);
    for (size_t j = 0; j < n_valid; ++j) {
      if (ep->out_u8) store_code(cr, j, tmp[j]);
      else cr[j] = tmp[j];
    }
#else
    int32_t s[8];
    vst1q_s32(s, acc0);
    vst1q_s32(s + 4, acc1);
    for (size_t j = 0; j < n_valid; ++j) {
      const float scale = ep->a_scale * w_scale[j];
      const float v = epilogue_scalar(s[j], a_zero_eff, colsum[j], scale, bias[j], ep->lo, ep->hi);
      if (ep->out_u8) store_code(cr, j, v);
      else cr[j] = v;
    }
#endif
  }
};

}  // namespace
}  // namespace dsq::gemm_qu8
