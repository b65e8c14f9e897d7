// gemm_q4 NEON ukernel (aarch64 and ARMv7-A NEON). Compiled into dsq_isa_neon.
//
// vld4_s8 de-interleaves one packed pair block (8 columns x 4 bytes, see pack.cc) into
// four int8x8 vectors, one per byte i, lanes = columns. The nibbles are sign-extended in
// int8 lanes (high: vshr #4; low: vshl #4 then vshr #4), widened to int16 and multiplied
// by the widened u8 activations k0+i (low) and k0+4+i (high) with vmlal_lane_s16 into
// int32: exact, the reference's group sums. The float part is in arm_common.h.
#include "kernels/gemm_q4/arm_common.h"

namespace dsq::gemm_q4 {
namespace {

template <size_t MR>
inline void ukernel_x8(size_t m, const uint8_t* a, size_t a_stride, const PackedWeights& w,
                       size_t p, float* c, size_t c_stride, size_t n_valid,
                       const gemm_qu8::Epilogue& ep) {
  constexpr size_t kNr = 8;
  const uint8_t* b = w.panels.as<uint8_t>() + p * panel_bytes(w);
  const int32_t* gsum = w.gsum.as<int32_t>() + p * w.groups * kNr;
  const float* w_scale = w.w_scale.as<float>() + p * w.groups * kNr;
  const uint8_t* ar[MR];
  for (size_t i = 0; i < MR; ++i) ar[i] = a + (i < m ? i : m - 1) * a_stride;
  ArmQ4Sums<MR> sums;
  for (size_t g = 0; g < w.groups; ++g) {
    const size_t k0 = g * w.group, len = group_len(w, g);
    int32x4_t acc0[MR], acc1[MR];
    for (size_t i = 0; i < MR; ++i) acc0[i] = acc1[i] = vdupq_n_s32(0);
    const size_t pairs = len / 8;
    for (size_t t = 0; t < pairs; ++t) {
      const int8x8x4_t wb = vld4_s8(reinterpret_cast<const int8_t*>(b));
      b += kNr * 4;
      int16x8_t lo[4], hi[4];
      for (int q = 0; q < 4; ++q) {
        lo[q] = vmovl_s8(vshr_n_s8(vshl_n_s8(wb.val[q], 4), 4));
        hi[q] = vmovl_s8(vshr_n_s8(wb.val[q], 4));
      }
      const size_t kk = k0 + t * 8;
      for (size_t i = 0; i < MR; ++i) {
        const int16x8_t av = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(ar[i] + kk)));
        const int16x4_t al = vget_low_s16(av), ah = vget_high_s16(av);
        acc0[i] = vmlal_lane_s16(acc0[i], vget_low_s16(lo[0]), al, 0);
        acc1[i] = vmlal_lane_s16(acc1[i], vget_high_s16(lo[0]), al, 0);
        acc0[i] = vmlal_lane_s16(acc0[i], vget_low_s16(lo[1]), al, 1);
        acc1[i] = vmlal_lane_s16(acc1[i], vget_high_s16(lo[1]), al, 1);
        acc0[i] = vmlal_lane_s16(acc0[i], vget_low_s16(lo[2]), al, 2);
        acc1[i] = vmlal_lane_s16(acc1[i], vget_high_s16(lo[2]), al, 2);
        acc0[i] = vmlal_lane_s16(acc0[i], vget_low_s16(lo[3]), al, 3);
        acc1[i] = vmlal_lane_s16(acc1[i], vget_high_s16(lo[3]), al, 3);
        acc0[i] = vmlal_lane_s16(acc0[i], vget_low_s16(hi[0]), ah, 0);
        acc1[i] = vmlal_lane_s16(acc1[i], vget_high_s16(hi[0]), ah, 0);
        acc0[i] = vmlal_lane_s16(acc0[i], vget_low_s16(hi[1]), ah, 1);
        acc1[i] = vmlal_lane_s16(acc1[i], vget_high_s16(hi[1]), ah, 1);
        acc0[i] = vmlal_lane_s16(acc0[i], vget_low_s16(hi[2]), ah, 2);
        acc1[i] = vmlal_lane_s16(acc1[i], vget_high_s16(hi[2]), ah, 2);
        acc0[i] = vmlal_lane_s16(acc0[i], vget_low_s16(hi[3]), ah, 3);
        acc1[i] = vmlal_lane_s16(acc1[i], vget_high_s16(hi[3]), ah, 3);
      }
    }
    if (len % 8) {  // odd last 4-k block: low nibbles only, 4 activation bytes
      const int8x8x4_t wb = vld4_s8(reinterpret_cast<const int8_t*>(b));
      b += kNr * 4;
      int16x8_t lo[4];
      for (int q = 0; q < 4; ++q) lo[q] = vmovl_s8(vshr_n_s8(vshl_n_s8(wb.val[q], 4), 4));
      const size_t kk = k0 + pairs * 8;
      for (size_t i = 0; i < MR; ++i) {
        const uint8x8_t a8 = vreinterpret_u8_u32(vdup_n_u32(load_u32(ar[i] + kk)));
        const int16x4_t al = vget_low_s16(vreinterpretq_s16_u16(vmovl_u8(a8)));
        acc0[i] = vmlal_lane_s16(acc0[i], vget_low_s16(lo[0]), al, 0);
        acc1[i] = vmlal_lane_s16(acc1[i], vget_high_s16(lo[0]), al, 0);
        acc0[i] = vmlal_lane_s16(acc0[i], vget_low_s16(lo[1]), al, 1);
        acc1[i] = vmlal_lane_s16(acc1[i], vget_high_s16(lo[1]), al, 1);
        acc0[i] = vmlal_lane_s16(acc0[i], vget_low_s16(lo[2]), al, 2);
        acc1[i] = vmlal_lane_s16(acc1[i], vget_high_s16(lo[2]), al, 2);
        acc0[i] = vmlal_lane_s16(acc0[i], vget_low_s16(lo[3]), al, 3);
        acc1[i] = vmlal_lane_s16(acc1[i], vget_high_s16(lo[3]), al, 3);
      }
    }
    for (size_t i = 0; i < MR; ++i)
      sums.step(i, acc0[i], acc1[i], gsum + g * kNr, ep.a_zero, w_scale + g * kNr, ep.a_scale);
  }
  const float* bias = w.bias.as<float>() + p * kNr;
  for (size_t i = 0; i < MR && i < m; ++i) {
    float* cr = reinterpret_cast<float*>(reinterpret_cast<char*>(c) + i * c_stride);
    sums.store(i, bias, ep.lo, ep.hi, cr, n_valid);
  }
}

}  // namespace

void gemm_q4_4x8__neon(size_t m, const uint8_t* a, size_t a_stride, const PackedWeights& w,
                       size_t p, float* c, size_t c_stride, size_t n_valid,
                       const gemm_qu8::Epilogue& ep) {
  ukernel_x8<4>(m, a, a_stride, w, p, c, c_stride, n_valid, ep);
}

}  // namespace dsq::gemm_q4
