// NEON depthwise int8 row kernel (aarch64 and ARMv7-A; 8 channels per step, two int32x4
// halves), compiled into dsq_isa_neon. The integer sums are exact on both. The epilogue is
// fused vfmaq_f32 on aarch64; ARMv7 NEON has no fused multiply-add and flushes
// denormals, so there it runs per lane in scalar code (std::fma, as the reference).
#include <arm_neon.h>

#include <cmath>

#include "kernels/dwconv_qu8/row_kernel.h"

namespace dsq::dwconv_qu8 {

namespace {
struct NeonVec {
  static constexpr int64_t kLanes = 8;
  struct IReg {
    int32x4_t lo, hi;
  };
  struct FReg {
    float32x4_t lo, hi;
  };
  static IReg load_x(const uint8_t* p) {  // u8 -> int32, exact
    const uint16x8_t u = vmovl_u8(vld1_u8(p));
    return {vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(u))), vreinterpretq_s32_u32(vmovl_u16(vget_high_u16(u)))};
  }
  static IReg load_w(const int8_t* p) {  // s8 -> int32, exact
    const int16x8_t s = vmovl_s8(vld1_s8(p));
    return {vmovl_s16(vget_low_s16(s)), vmovl_s16(vget_high_s16(s))};
  }
  static IReg madd(IReg acc, IReg x, IReg w) { return {vmlaq_s32(acc.lo, x.lo, w.lo), vmlaq_s32(acc.hi, x.hi, w.hi)}; }
  static IReg add(IReg a, IReg b) { return {vaddq_s32(a.lo, b.lo), vaddq_s32(a.hi, b.hi)}; }
  static IReg sub(IReg a, IReg b) { return {vsubq_s32(a.lo, b.lo), vsubq_s32(a.hi, b.hi)}; }
  static IReg mullo(IReg a, IReg b) { return {vmulq_s32(a.lo, b.lo), vmulq_s32(a.hi, b.hi)}; }
  static IReg izero() { return {vdupq_n_s32(0), vdupq_n_s32(0)}; }
  static IReg iset1(int32_t v) { return {vdupq_n_s32(v), vdupq_n_s32(v)}; }
  static FReg to_float(IReg v) { return {vcvtq_f32_s32(v.lo), vcvtq_f32_s32(v.hi)}; }
  static FReg fload(const float* p) { return {vld1q_f32(p), vld1q_f32(p + 4)}; }
  static void fstore(float* p, FReg v) {
    vst1q_f32(p, v.lo);
    vst1q_f32(p + 4, v.hi);
  }
  static FReg fset1(float v) { return {vdupq_n_f32(v), vdupq_n_f32(v)}; }
#if DSQ_ARM64
  static FReg fma(FReg a, FReg b, FReg c) { return {vfmaq_f32(c.lo, a.lo, b.lo), vfmaq_f32(c.hi, a.hi, b.hi)}; }
  // The clamped values are never NaN here (integer sums, finite scales and biases).
  static FReg fmax(FReg a, FReg b) { return {vmaxq_f32(a.lo, b.lo), vmaxq_f32(a.hi, b.hi)}; }
  static FReg fmin(FReg a, FReg b) { return {vminq_f32(a.lo, b.lo), vminq_f32(a.hi, b.hi)}; }
#else
  // Per lane in VFP code: NEON would flush a denormal result to zero.
  template <typename Op>
  static FReg lanes(FReg a, FReg b, FReg c, Op op) {
    float av[8], bv[8], cv[8];
    fstore(av, a);
    fstore(bv, b);
    fstore(cv, c);
    for (int i = 0; i < 8; ++i) cv[i] = op(av[i], bv[i], cv[i]);
    return fload(cv);
  }
  static FReg fma(FReg a, FReg b, FReg c) {
    return lanes(a, b, c, [](float x, float y, float z) { return std::fma(x, y, z); });
  }
  static FReg fmax(FReg a, FReg b) { return lanes(a, b, b, [](float x, float y, float) { return x > y ? x : y; }); }
  static FReg fmin(FReg a, FReg b) { return lanes(a, b, b, [](float x, float y, float) { return x < y ? x : y; }); }
#endif
};
}  // namespace

void dwconv_qu8_8__neon(const Geometry& g, const uint8_t* x, const int8_t* w, const float* scale, const float* bias,
                        float* y, int64_t oh) {
  row_kernel<NeonVec>(g, x, w, scale, bias, y, oh);
}

}  // namespace dsq::dwconv_qu8
