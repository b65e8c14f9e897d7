// aarch64 NEON depthwise f32 row kernel (4 channels per vector; the channel tail goes
// through a zero-filled copy, NEON having no masked loads). Compiled into dsq_isa_neon;
// ARMv7 keeps the scalar kernel: its NEON has no fused multiply-add (the reference's fma
// chain) and flushes denormals.
#if DSQ_ARM64
#include <arm_neon.h>

#include <cstring>

#include "kernels/dwconv_f32/row_kernel.h"

namespace dsq::dwconv_f32 {

namespace {
struct Neon {
  static constexpr int64_t kLanes = 4;
  using Reg = float32x4_t;
  using Mask = int64_t;  // valid lanes, 1..4
  static Mask mask(int64_t left) { return left >= 4 ? 4 : left; }
  static Reg load(const float* p, Mask m) {
    if (m == 4) return vld1q_f32(p);
    float t[4] = {0.f, 0.f, 0.f, 0.f};
    std::memcpy(t, p, static_cast<size_t>(m) * sizeof(float));
    return vld1q_f32(t);
  }
  static void store(float* p, Reg v, Mask m) {
    if (m == 4) {
      vst1q_f32(p, v);
      return;
    }
    float t[4];
    vst1q_f32(t, v);
    std::memcpy(p, t, static_cast<size_t>(m) * sizeof(float));
  }
  static Reg fma(Reg a, Reg b, Reg c) { return vfmaq_f32(c, a, b); }  // fused, as std::fma
  static Reg set1(float v) { return vdupq_n_f32(v); }
  // Compare and select, as the reference's clamp: b when a is NaN (vmaxq_f32 would give NaN).
  static Reg max(Reg a, Reg b) { return vbslq_f32(vcgtq_f32(a, b), a, b); }
  static Reg min(Reg a, Reg b) { return vbslq_f32(vcltq_f32(a, b), a, b); }
};
}  // namespace

void dwconv_f32_4__neon(const Geometry& g, const float* x, const float* w, const float* bias, float* y, int64_t oh) {
  row_kernel<Neon>(g, x, w, bias, y, oh);
}

}  // namespace dsq::dwconv_f32
#endif  // DSQ_ARM64
