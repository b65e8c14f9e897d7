// gemm_qu8 NEON ukernel (aarch64 and ARMv7-A NEON). Compiled into dsq_isa_neon.
//
// vld4_s8 de-interleaves one packed block (8 columns x 4 k bytes) into four int8x8
// vectors, one per k, lanes = columns; they are widened to int16 and multiplied by the
// matching activation byte (widened u8 -> int16, exact) with vmlal_lane_s16 into int32
// accumulators: every product and sum is exact, the same int32 as the reference.
#include "kernels/gemm_qu8/arm_common.h"

namespace dsq::gemm_qu8 {
namespace {

template <size_t MR>
inline void ukernel_x8(size_t m, const uint8_t* a, size_t a_stride, const PackedWeights& w,
                       size_t p, float* c, size_t c_stride, size_t n_valid,
                       const Epilogue& ep) {
  constexpr size_t kNr = 8;
  const int8_t* b = w.panel(p);
  const size_t kb_count = w.k_padded / kKr;
  const uint8_t* ar[MR];
  for (size_t i = 0; i < MR; ++i) ar[i] = a + (i < m ? i : m - 1) * a_stride;
  int32x4_t acc0[MR], acc1[MR];
  for (size_t i = 0; i < MR; ++i) acc0[i] = acc1[i] = vdupq_n_s32(0);
  for (size_t kb = 0; kb < kb_count; ++kb) {
    const int8x8x4_t wb = vld4_s8(b);  // wb.val[t][j] = column j, k = 4 kb + t
    b += kNr * kKr;
    const int16x8_t w0 = vmovl_s8(wb.val[0]);
    const int16x8_t w1 = vmovl_s8(wb.val[1]);
    const int16x8_t w2 = vmovl_s8(wb.val[2]);
    const int16x8_t w3 = vmovl_s8(wb.val[3]);
    for (size_t i = 0; i < MR; ++i) {
      const uint8x8_t a8 = vreinterpret_u8_u32(vdup_n_u32(load_u32(ar[i] + kb * kKr)));
      const int16x4_t av = vreinterpret_s16_u16(vget_low_u16(vmovl_u8(a8)));
      acc0[i] = vmlal_lane_s16(acc0[i], vget_low_s16(w0), av, 0);
      acc1[i] = vmlal_lane_s16(acc1[i], vget_high_s16(w0), av, 0);
      acc0[i] = vmlal_lane_s16(acc0[i], vget_low_s16(w1), av, 1);
      acc1[i] = vmlal_lane_s16(acc1[i], vget_high_s16(w1), av, 1);
      acc0[i] = vmlal_lane_s16(acc0[i], vget_low_s16(w2), av, 2);
      acc1[i] = vmlal_lane_s16(acc1[i], vget_high_s16(w2), av, 2);
      acc0[i] = vmlal_lane_s16(acc0[i], vget_low_s16(w3), av, 3);
      acc1[i] = vmlal_lane_s16(acc1[i], vget_high_s16(w3), av, 3);
    }
  }
  const ArmEpilogue epi(w, p, ep, ep.a_zero);
  for (size_t i = 0; i < MR && i < m; ++i) {
    float* cr = reinterpret_cast<float*>(reinterpret_cast<char*>(c) + i * c_stride);
    epi.store(acc0[i], acc1[i], cr, n_valid, ep.a_zero);
  }
}

}  // namespace

void gemm_qu8_4x8__neon(size_t m, const uint8_t* a, size_t a_stride, const PackedWeights& w,
                        size_t p, float* c, size_t c_stride, size_t n_valid,
                        const Epilogue& ep) {
  ukernel_x8<4>(m, a, a_stride, w, p, c, c_stride, n_valid, ep);
}

}  // namespace dsq::gemm_qu8
