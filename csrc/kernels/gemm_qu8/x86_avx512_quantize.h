// The AVX-512 quantize of 16 floats, shared by gemm_qu8's quantize_avx512, the depthwise
// int8 family's fused quantize + pack and the int8 kernels' u8 output epilogues (the same
// bytes by construction). Same operations as quantize_scalar: x * (1 / scale) rounded in
// the current mode, with lanes near a tie (and scales whose reciprocal is not a normal
// float) divided instead, + zero in float, max(., 0) then min(., 255) (NaN -> 0),
// truncating conversion of an integer value. Values known to lie in [lo, hi] (a fused
// activation's clamp; prepare_out_quant) skip what cannot change a code: the NaN / Inf
// check when lo and hi are finite, and each clamp whose end of the range already
// quantizes inside [0, 255] (a ReLU6 output quantized over [0, 6]: 3 of 11 vector ops).
#pragma once
#include <immintrin.h>

#include <cmath>

#include "kernels/gemm_qu8/gemm_qu8.h"
#include "kernels/gemm_qu8/ukernels.h"

namespace dsq::gemm_qu8 {

struct Avx512Quantizer {
  // o: prepare_out_quant's scalars (cheap: broadcasts only, for a kernel's tile).
  // branch_free: the quotient by FMA corrections (OutQuant::exact_fma_ok) instead of a
  // branch to a division on near ties, where the range needs no clamp (e.g. ReLU6 over
  // [0, 6]). For epilogues at the end of long dependency chains (a GEMM's, a depthwise
  // row's), where that branch mispredicts dearly: MobileNetV2-CIFAR int8 at batch 1, 686 ->
  // 670 us. Ranges that need clamps (a ReLU's open top, ResNet-CIFAR) and loops with short
  // chains measured faster with the branch.
  Avx512Quantizer(const OutQuant& o, bool branch_free)
      : scale(_mm512_set1_ps(o.scale)),
        zero(_mm512_set1_ps(static_cast<float>(o.zero))),
        vmin(_mm512_setzero_ps()),
        vmax(_mm512_set1_ps(255.0f)),
        fast(o.fast),
        inv(_mm512_set1_ps(o.inv)),
        tie_edge(_mm512_set1_ps(0.5f - kNearTie)),
        abs_mask(_mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff))),
        check_bad(o.check_bad),
        clamp_low(o.clamp_low),
        clamp_high(o.clamp_high),
        exact_fma(branch_free && o.exact_fma_ok && !o.clamp_low && !o.clamp_high) {}
  // The quantize passes (any value).
  explicit Avx512Quantizer(QuantParams p) : Avx512Quantizer(prepare_out_quant(p, -INFINITY, INFINITY), false) {}

  // The 16 codes as 32-bit lanes (0..255); NaN / Inf lanes are noted in `bad` unless the
  // range rules them out.
  __m512i codes(__m512 xv) {
    if (check_bad) bad |= _mm512_fpclass_ps_mask(xv, 0x99);  // QNaN | +Inf | -Inf | SNaN
    __m512 r;
    if (exact_fma) {
      // xv lies in a range whose codes are in [0, 255]: finite, |xv / scale| < 2^9.
      __m512 q = _mm512_mul_ps(xv, inv);
      q = _mm512_fmadd_ps(_mm512_fnmadd_ps(q, scale, xv), inv, q);  // exact remainder xv - q * scale
      q = _mm512_fmadd_ps(_mm512_fnmadd_ps(q, scale, xv), inv, q);  // now RN(xv / scale)
      r = _mm512_roundscale_ps(q, _MM_FROUND_CUR_DIRECTION);
    } else if (fast) {
      const __m512 v = _mm512_mul_ps(xv, inv);
      r = _mm512_roundscale_ps(v, _MM_FROUND_CUR_DIRECTION);
      // |v - nearbyint(v)| (exact), in [0, 0.5]: a near tie when it is about 0.5
      const __m512 frac = _mm512_and_ps(_mm512_sub_ps(v, r), abs_mask);
      const __mmask16 redo = _mm512_cmp_ps_mask(frac, tie_edge, _CMP_GT_OQ);
      if (redo) r = _mm512_mask_roundscale_ps(r, redo, _mm512_div_ps(xv, scale), _MM_FROUND_CUR_DIRECTION);
    } else {
      r = _mm512_roundscale_ps(_mm512_div_ps(xv, scale), _MM_FROUND_CUR_DIRECTION);
    }
    __m512 v = _mm512_add_ps(r, zero);
    if (clamp_low) v = _mm512_max_ps(v, vmin);
    if (clamp_high) v = _mm512_min_ps(v, vmax);
    return _mm512_cvttps_epi32(v);
  }
  // The 16 codes as bytes.
  __m128i bytes(__m512 xv) { return _mm512_cvtepi32_epi8(codes(xv)); }

  __mmask16 bad = 0;  // NaN / Inf lanes seen (masked-off lanes load 0)

 private:
  __m512 scale, zero, vmin, vmax;
  bool fast;
  __m512 inv, tie_edge, abs_mask;
  bool check_bad, clamp_low, clamp_high, exact_fma;
};

// A u8 output epilogue's stores (every int8 family's AVX-512 kernels): 16 codes at a
// time under a lane mask, and the NaN / Inf flag written once, by finish().
struct Avx512CodeStore {
  Avx512CodeStore(const OutQuant& o, bool branch_free, uint8_t* bad) : q(o, branch_free), bad_flag(bad) {}
  void store(uint8_t* p, __m512 v, __mmask16 m = 0xFFFF) { _mm_mask_storeu_epi8(p, m, q.bytes(v)); }
  void finish() {
    if (q.bad) *bad_flag = 1;
  }
  Avx512Quantizer q;
  uint8_t* bad_flag;
};

}  // namespace dsq::gemm_qu8
