// gemm_qu8 AVX-512 VNNI ukernels. Compiled into dsq_isa_avx512vnni.
//
// vpdpbusd (u8 x s8 -> int32, four products per lane, non-saturating): per 4-byte k block
// each row broadcasts its 4 activation bytes as one int32, and each 64-byte load of the
// packed panel is 16 columns x 4 k. Accumulation is exact; the epilogue is the
// reference's, operation for operation.
#include <immintrin.h>

// GCC 12 reports its own _mm512_undefined_* idiom inside the intrinsics headers
// (`__m512 __Y = __Y;`) as maybe-uninitialized when they are inlined here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <cstring>

#include "kernels/gemm_qu8/gemm_qu8.h"
#include "kernels/gemm_qu8/ukernels.h"

#include "kernels/common/x86_vnni.h"

namespace dsq::gemm_qu8 {
namespace {

using vnni::dpbusd;
using vnni::load_u32;

template <size_t MR, size_t V>
inline void ukernel(size_t m, const uint8_t* a, size_t a_stride, const PackedWeights& w,
                    size_t p, float* c, size_t c_stride, size_t n_valid,
                    const Epilogue& ep) {
  constexpr size_t kNr = 16 * V;
  const int8_t* b = w.panel(p);
  const size_t kb_count = w.k_padded / kKr;
  const uint8_t* ar[MR];
  for (size_t i = 0; i < MR; ++i) ar[i] = a + (i < m ? i : m - 1) * a_stride;
  __m512i acc[MR][V];
  for (size_t i = 0; i < MR; ++i)
    for (size_t v = 0; v < V; ++v) acc[i][v] = _mm512_setzero_si512();
  for (size_t kb = 0; kb < kb_count; ++kb) {
    __m512i bv[V];
    for (size_t v = 0; v < V; ++v) bv[v] = _mm512_loadu_si512(b + v * 64);
    b += kNr * kKr;
    for (size_t i = 0; i < MR; ++i) {
      const __m512i av = _mm512_set1_epi32(load_u32(ar[i] + kb * kKr));
      for (size_t v = 0; v < V; ++v) acc[i][v] = dpbusd(acc[i][v], av, bv[v]);
    }
  }
  const int32_t* colsum = w.colsum.as<int32_t>() + p * kNr;
  const float* w_scale = w.w_scale.as<float>() + p * kNr;
  const float* bias = w.bias.as<float>() + p * kNr;
  const __m512i a_zero = _mm512_set1_epi32(ep.a_zero);
  const __m512 a_scale = _mm512_set1_ps(ep.a_scale);
  const __m512 lo = _mm512_set1_ps(ep.lo), hi = _mm512_set1_ps(ep.hi);
  __m512i zc[V];
  __m512 scale[V], bs[V];
  __mmask16 mask[V];
  for (size_t v = 0; v < V; ++v) {
    zc[v] = _mm512_mullo_epi32(a_zero, _mm512_loadu_si512(colsum + v * 16));
    scale[v] = _mm512_mul_ps(a_scale, _mm512_loadu_ps(w_scale + v * 16));
    bs[v] = _mm512_loadu_ps(bias + v * 16);
    const size_t cnt = n_valid > v * 16 ? n_valid - v * 16 : 0;
    mask[v] = cnt >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cnt) - 1);
  }
  for (size_t i = 0; i < MR; ++i) {
    if (i >= m) break;
    float* cr = reinterpret_cast<float*>(reinterpret_cast<char*>(c) + i * c_stride);
    for (size_t v = 0; v < V; ++v) {
      __m512 r = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[i][v], zc[v])),
                                 scale[v], bs[v]);
      r = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
      _mm512_mask_storeu_ps(cr + v * 16, mask[v], r);
    }
  }
}

}  // namespace

#define DSQ_DEFINE(ident, MR, V)                                                           \
  void ident(size_t m, const uint8_t* a, size_t a_stride, const PackedWeights& w, size_t p, \
             float* c, size_t c_stride, size_t n_valid, const Epilogue& ep) {             \
    ukernel<MR, V>(m, a, a_stride, w, p, c, c_stride, n_valid, ep);                        \
  }
DSQ_DEFINE(gemm_qu8_4x64__avx512vnni, 4, 4)
DSQ_DEFINE(gemm_qu8_8x32__avx512vnni, 8, 2)
#undef DSQ_DEFINE

}  // namespace dsq::gemm_qu8
