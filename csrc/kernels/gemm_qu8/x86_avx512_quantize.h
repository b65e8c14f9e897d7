// The AVX-512 quantize of 16 floats, shared by gemm_qu8's quantize_avx512 and the depthwise
// int8 family's fused quantize + pack (the same bytes by construction). Same operations
// as quantize_scalar: x * (1 / scale) rounded in the current mode, with lanes near a tie
// (and scales whose reciprocal is not a normal float) divided instead, + zero in float,
// max(., 0) then min(., 255) (NaN -> 0), truncating conversion of an integer value.
#pragma once
#include <immintrin.h>

#include "kernels/gemm_qu8/gemm_qu8.h"
#include "kernels/gemm_qu8/ukernels.h"

namespace dsq::gemm_qu8 {

struct Avx512Quantizer {
  explicit Avx512Quantizer(QuantParams p)
      : scale(_mm512_set1_ps(p.scale)),
        zero(_mm512_set1_ps(static_cast<float>(p.zero))),
        vmin(_mm512_setzero_ps()),
        vmax(_mm512_set1_ps(255.0f)),
        fast(fast_reciprocal_ok(p.scale)),
        inv(_mm512_set1_ps(1.0f / p.scale)),
        tie_edge(_mm512_set1_ps(0.5f - kNearTie)),
        abs_mask(_mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff))) {}

  // The 16 codes as 32-bit lanes (0..255); NaN / Inf lanes are noted in `bad`.
  __m512i codes(__m512 xv) {
    bad |= _mm512_fpclass_ps_mask(xv, 0x99);  // QNaN | +Inf | -Inf | SNaN
    __m512 r;
    if (fast) {
      const __m512 v = _mm512_mul_ps(xv, inv);
      r = _mm512_roundscale_ps(v, _MM_FROUND_CUR_DIRECTION);
      // |v - nearbyint(v)| (exact), in [0, 0.5]: a near tie when it is about 0.5
      const __m512 frac = _mm512_and_ps(_mm512_sub_ps(v, r), abs_mask);
      const __mmask16 redo = _mm512_cmp_ps_mask(frac, tie_edge, _CMP_GT_OQ);
      if (redo) r = _mm512_mask_roundscale_ps(r, redo, _mm512_div_ps(xv, scale), _MM_FROUND_CUR_DIRECTION);
    } else {
      r = _mm512_roundscale_ps(_mm512_div_ps(xv, scale), _MM_FROUND_CUR_DIRECTION);
    }
    const __m512 v = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(r, zero), vmin), vmax);
    return _mm512_cvttps_epi32(v);
  }

  __mmask16 bad = 0;  // NaN / Inf lanes seen (masked-off lanes load 0)

 private:
  __m512 scale, zero, vmin, vmax;
  bool fast;
  __m512 inv, tie_edge, abs_mask;
};

}  // namespace dsq::gemm_qu8
