// gemm_qu8 aarch64 dot-product ukernels (ARMv8.2 +dotprod: Cortex-A55/A76/A78, Neoverse,
// Apple; not Cortex-A53/A72). Compiled into dsq_isa_neondot with
// -march=armv8.2-a+dotprod; chosen at run time only when HWCAP_ASIMDDP is set.
//
// One packed block (8 columns x 4 k bytes = 32 bytes) is exactly two sdot operands:
// each int32 lane of vdotq gets the 4-byte dot product of one column. sdot is signed x
// signed, so activations are shifted to s8 (a ^ 0x80 = a - 128) and the shift is put
// back in the epilogue: sum a*w = sum (a-128)*w + 128*colsum, so
//   acc - a_zero*colsum = dot + (128 - a_zero)*colsum   (mod 2^32, as the reference).
// Products and sums are exact int32; the epilogue is the shared bit-exact one.
#include "kernels/gemm_qu8/arm_common.h"

namespace dsq::gemm_qu8 {
namespace {

inline int8x16_t load_a16(const uint8_t* p) {
  return vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p), vdupq_n_u8(0x80)));
}
inline int8x16_t load_a4(const uint8_t* p) {
  return vreinterpretq_s8_u8(
      veorq_u8(vreinterpretq_u8_u32(vdupq_n_u32(load_u32(p))), vdupq_n_u8(0x80)));
}

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
  size_t kb = 0;
  // Four k blocks per step: one 16-byte activation load per row, lane l = block kb + l.
  for (; kb + 4 <= kb_count; kb += 4) {
    const int8x16_t b00 = vld1q_s8(b), b01 = vld1q_s8(b + 16);
    const int8x16_t b10 = vld1q_s8(b + 32), b11 = vld1q_s8(b + 48);
    const int8x16_t b20 = vld1q_s8(b + 64), b21 = vld1q_s8(b + 80);
    const int8x16_t b30 = vld1q_s8(b + 96), b31 = vld1q_s8(b + 112);
    b += 4 * kNr * kKr;
    for (size_t i = 0; i < MR; ++i) {
      const int8x16_t av = load_a16(ar[i] + kb * kKr);
      acc0[i] = vdotq_laneq_s32(acc0[i], b00, av, 0);
      acc1[i] = vdotq_laneq_s32(acc1[i], b01, av, 0);
      acc0[i] = vdotq_laneq_s32(acc0[i], b10, av, 1);
      acc1[i] = vdotq_laneq_s32(acc1[i], b11, av, 1);
      acc0[i] = vdotq_laneq_s32(acc0[i], b20, av, 2);
      acc1[i] = vdotq_laneq_s32(acc1[i], b21, av, 2);
      acc0[i] = vdotq_laneq_s32(acc0[i], b30, av, 3);
      acc1[i] = vdotq_laneq_s32(acc1[i], b31, av, 3);
    }
  }
  for (; kb < kb_count; ++kb) {
    const int8x16_t b0 = vld1q_s8(b), b1 = vld1q_s8(b + 16);
    b += kNr * kKr;
    for (size_t i = 0; i < MR; ++i) {
      const int8x16_t av = load_a4(ar[i] + kb * kKr);
      acc0[i] = vdotq_s32(acc0[i], b0, av);
      acc1[i] = vdotq_s32(acc1[i], b1, av);
    }
  }
  // (128 - a_zero) as uint32 arithmetic, like epilogue_scalar's subtraction.
  const int32_t factor =
      static_cast<int32_t>(static_cast<uint32_t>(ep.a_zero) - static_cast<uint32_t>(128));
  const ArmEpilogue epi(w, p, ep, factor);
  for (size_t i = 0; i < MR && i < m; ++i) {
    float* cr = reinterpret_cast<float*>(reinterpret_cast<char*>(c) + i * c_stride);
    epi.store(acc0[i], acc1[i], cr, n_valid, factor);
  }
}

}  // namespace

void gemm_qu8_8x8__neondot(size_t m, const uint8_t* a, size_t a_stride,
                           const PackedWeights& w, size_t p, float* c, size_t c_stride,
                           size_t n_valid, const Epilogue& ep) {
  ukernel_x8<8>(m, a, a_stride, w, p, c, c_stride, n_valid, ep);
}

void gemm_qu8_4x8__neondot(size_t m, const uint8_t* a, size_t a_stride,
                           const PackedWeights& w, size_t p, float* c, size_t c_stride,
                           size_t n_valid, const Epilogue& ep) {
  ukernel_x8<4>(m, a, a_stride, w, p, c, c_stride, n_valid, ep);
}

}  // namespace dsq::gemm_qu8
