// gemm_q4 aarch64 dot-product ukernels (sdot). Compiled into dsq_isa_neondot.
//
// A pair block (8 columns x 4 bytes, see pack.cc) is two 16-byte vectors, 4 columns x 4
// bytes each: exactly the sdot operand layout. `v << 4` is 16 * (low nibbles, k0..k0+3)
// and `v & 0xF0` is 16 * (high nibbles, k0+4..k0+7), as signed bytes. sdot is signed x
// signed, so activations are fed as a ^ 0x80 = a - 128. Per group the int32 sum is
//   D = 16 * sum w * (a - 128)        (|D| <= 16 * 128 * 8 * 65536 = 2^30: no overflow)
// and the reference's x = sum w * a - a_zero * gsum = (D >> 4) + (128 - a_zero) * gsum
// (D is a multiple of 16: the shift is exact). The float part is in arm_common.h.
#include "kernels/gemm_q4/arm_common.h"

namespace dsq::gemm_q4 {
namespace {

template <size_t MR>
inline void ukernel_x8(size_t m, const uint8_t* a, size_t a_stride, const PackedWeights& w,
                       size_t p, float* c, size_t c_stride, size_t n_valid,
                       const gemm_qu8::Epilogue& ep) {
  constexpr size_t kNr = 8;
  const int8_t* b = reinterpret_cast<const int8_t*>(w.panels.as<uint8_t>() + p * panel_bytes(w));
  const int32_t* gsum = w.gsum.as<int32_t>() + p * w.groups * kNr;
  const float* w_scale = w.w_scale.as<float>() + p * w.groups * kNr;
  const uint8_t* ar[MR];
  for (size_t i = 0; i < MR; ++i) ar[i] = a + (i < m ? i : m - 1) * a_stride;
  const int8x16_t hi_mask = vdupq_n_s8(static_cast<int8_t>(0xF0));
  const uint32x4_t flip = vdupq_n_u32(0x80808080u);
  // x = (D >> 4) - (a_zero - 128) * gsum: step() subtracts zero_factor * gsum.
  const int32_t zero_factor = ep.a_zero - 128;
  ArmQ4Sums<MR> sums;
  for (size_t g = 0; g < w.groups; ++g) {
    const size_t k0 = g * w.group, len = group_len(w, g);
    int32x4_t acc0[MR], acc1[MR];
    for (size_t i = 0; i < MR; ++i) acc0[i] = acc1[i] = vdupq_n_s32(0);
    const size_t pairs = len / 8;
    for (size_t t = 0; t < pairs; ++t) {
      const int8x16_t v0 = vld1q_s8(b), v1 = vld1q_s8(b + 16);
      b += kNr * 4;
      const int8x16_t lo0 = vshlq_n_s8(v0, 4), lo1 = vshlq_n_s8(v1, 4);
      const int8x16_t hi0 = vandq_s8(v0, hi_mask), hi1 = vandq_s8(v1, hi_mask);
      const size_t kk = k0 + t * 8;
      for (size_t i = 0; i < MR; ++i) {
        const int8x16_t al = vreinterpretq_s8_u32(veorq_u32(vdupq_n_u32(load_u32(ar[i] + kk)), flip));
        const int8x16_t ah =
            vreinterpretq_s8_u32(veorq_u32(vdupq_n_u32(load_u32(ar[i] + kk + 4)), flip));
        acc0[i] = vdotq_s32(vdotq_s32(acc0[i], lo0, al), hi0, ah);
        acc1[i] = vdotq_s32(vdotq_s32(acc1[i], lo1, al), hi1, ah);
      }
    }
    if (len % 8) {  // odd last 4-k block: low nibbles only (high nibbles are 0)
      const int8x16_t lo0 = vshlq_n_s8(vld1q_s8(b), 4), lo1 = vshlq_n_s8(vld1q_s8(b + 16), 4);
      b += kNr * 4;
      const size_t kk = k0 + pairs * 8;
      for (size_t i = 0; i < MR; ++i) {
        const int8x16_t al = vreinterpretq_s8_u32(veorq_u32(vdupq_n_u32(load_u32(ar[i] + kk)), flip));
        acc0[i] = vdotq_s32(acc0[i], lo0, al);
        acc1[i] = vdotq_s32(acc1[i], lo1, al);
      }
    }
    for (size_t i = 0; i < MR; ++i)
      sums.step(i, vshrq_n_s32(acc0[i], 4), vshrq_n_s32(acc1[i], 4), gsum + g * kNr, zero_factor,
                w_scale + g * kNr, ep.a_scale);
  }
  const float* bias = w.bias.as<float>() + p * kNr;
  for (size_t i = 0; i < MR && i < m; ++i) {
    float* cr = reinterpret_cast<float*>(reinterpret_cast<char*>(c) + i * c_stride);
    sums.store(i, bias, ep.lo, ep.hi, cr, n_valid);
  }
}

}  // namespace

void gemm_q4_8x8__neondot(size_t m, const uint8_t* a, size_t a_stride, const PackedWeights& w,
                          size_t p, float* c, size_t c_stride, size_t n_valid,
                          const gemm_qu8::Epilogue& ep) {
  ukernel_x8<8>(m, a, a_stride, w, p, c, c_stride, n_valid, ep);
}

void gemm_q4_4x8__neondot(size_t m, const uint8_t* a, size_t a_stride, const PackedWeights& w,
                          size_t p, float* c, size_t c_stride, size_t n_valid,
                          const gemm_qu8::Epilogue& ep) {
  ukernel_x8<4>(m, a, a_stride, w, p, c, c_stride, n_valid, ep);
}

}  // namespace dsq::gemm_q4
