// gemm_qu8 AVX-512 (F/BW) minmax and quantize. Compiled into dsq_isa_avx512. Same
// operations as quantize_scalar: IEEE division, round in the current mode, + zero in
// float, max(.,0) then min(.,255) (NaN -> 0), truncating conversion of an integer value.
#include <immintrin.h>

// GCC 12 reports its own _mm512_undefined_* idiom inside the intrinsics headers
// (`__m512 __Y = __Y;`) as maybe-uninitialized when they are inlined here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "kernels/gemm_qu8/gemm_qu8.h"
#include "kernels/gemm_qu8/ukernels.h"
#include "kernels/gemm_qu8/x86_avx512_quantize.h"

namespace dsq::gemm_qu8 {
namespace {
inline const float* row(const float* x, size_t i, size_t stride) {
  return reinterpret_cast<const float*>(reinterpret_cast<const char*>(x) + i * stride);
}
}  // namespace

void minmax_avx512(const float* x, size_t m, size_t k, size_t x_stride, float* lo,
                   float* hi) {
  __m512 vl = _mm512_setzero_ps(), vh = _mm512_setzero_ps();
  for (size_t i = 0; i < m; ++i) {
    const float* xr = row(x, i, x_stride);
    size_t j = 0;
    for (; j + 16 <= k; j += 16) {
      const __m512 v = _mm512_loadu_ps(xr + j);
      vl = _mm512_min_ps(v, vl);
      vh = _mm512_max_ps(v, vh);
    }
    if (j < k) {
      const __mmask16 mk = static_cast<__mmask16>((1u << (k - j)) - 1);
      const __m512 v = _mm512_maskz_loadu_ps(mk, xr + j);  // masked-off lanes read as 0
      vl = _mm512_min_ps(v, vl);
      vh = _mm512_max_ps(v, vh);
    }
  }
  alignas(64) float tl[16], th[16];
  _mm512_store_ps(tl, vl);
  _mm512_store_ps(th, vh);
  float l = 0.0f, h = 0.0f;
  for (int t = 0; t < 16; ++t) {
    l = tl[t] < l ? tl[t] : l;
    h = th[t] > h ? th[t] : h;
  }
  *lo = l;
  *hi = h;
}

bool quantize_avx512(const float* x, size_t m, size_t k, size_t x_stride, uint8_t* q,
                     size_t q_stride, QuantParams p) {
  const size_t kp = padded_k(k);
  // x * (1 / scale) instead of x / scale (the division made the loop 1.75x slower): the
  // product rounds to the quotient's integer unless it lies within kNearTie of a half
  // (ukernels.h); those lanes (rare) take the division (x86_avx512_quantize.h).
  Avx512Quantizer qz(p);
  auto quantize16 = [&](__m512 xv) { return qz.bytes(xv); };
  for (size_t i = 0; i < m; ++i) {
    const float* xr = row(x, i, x_stride);
    uint8_t* qr = q + i * q_stride;
    size_t j = 0;
    for (; j + 16 <= k; j += 16)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qr + j), quantize16(_mm512_loadu_ps(xr + j)));
    for (; j < kp; j += 16) {  // the tail and the zero padding up to kp
      const size_t cnt = k > j ? k - j : 0;
      const size_t out = kp - j < 16 ? kp - j : 16;
      const __mmask16 mk = static_cast<__mmask16>((1u << (cnt < 16 ? cnt : 16)) - 1);
      const __mmask16 mo = static_cast<__mmask16>((1u << out) - 1);
      const __m128i u8 = _mm_maskz_mov_epi8(mk, quantize16(_mm512_maskz_loadu_ps(mk, xr + j)));  // padding 0
      _mm_mask_storeu_epi8(qr + j, mo, u8);
    }
  }
  return qz.bad == 0;
}

bool quantize_as_epilogue_avx512(const float* x, size_t n, uint8_t* q, QuantParams p, float lo, float hi,
                                 bool branch_free) {
  Avx512Quantizer qz(prepare_out_quant(p, lo, hi), branch_free);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), qz.bytes(_mm512_loadu_ps(x + i)));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    // Masked-off lanes load lo (inside the range, as an epilogue's masked lanes are).
    _mm_mask_storeu_epi8(q + i, m, qz.bytes(_mm512_mask_loadu_ps(_mm512_set1_ps(std::isfinite(lo) ? lo : 0.f), m, x + i)));
  }
  return qz.bad == 0;
}

}  // namespace dsq::gemm_qu8
