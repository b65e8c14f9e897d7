// gemm_qu8 AVX-512 VNNI ukernels. Compiled into dsq_isa_avx512vnni.
//
// vpdpbusd (u8 x s8 -> int32, four products per lane, non-saturating): per 4-byte k block
// each row broadcasts its 4 activation bytes as one int32, and each 64-byte load of the
// packed panel is 16 columns x 4 k. Accumulation is exact; the epilogue is the
// reference's, operation for operation.
#include <immintrin.h>

// GCC 12 reports its own _mm512_undefined_* idiom inside the intrinsics headers
// (`__m512 __Y = __Y;`) as (maybe-)uninitialized when they are inlined here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <array>
#include <cstring>
#include <utility>

#include "kernels/gemm_qu8/gemm_qu8.h"
#include "kernels/gemm_qu8/ukernels.h"

#include "kernels/common/x86_vnni.h"
#include "kernels/gemm_qu8/x86_avx512_quantize.h"

namespace dsq::gemm_qu8 {
namespace {

using vnni::dpbusd;
using vnni::load_u32;

// Exactly M rows x 16*V columns. The exported variants dispatch on the tile's row count
// to the instantiation with M = m, so a remainder tile (batch 1 above all) computes only
// its own rows instead of MR - m copies of the last one.
// A row is `segs` segments of kb_count / segs k blocks, segment s at ar[i] + s *
// seg_stride (segs = 1: the plain contiguous row).
template <size_t M, size_t V>
void ukernel(size_t /*m == M*/, const uint8_t* a, size_t a_stride, size_t segs, size_t seg_stride,
             const PackedWeights& w, size_t p, float* c, size_t c_stride, size_t n_valid, const Epilogue& ep) {
  constexpr size_t kNr = 16 * V;
  const int8_t* b = w.panel(p);
  const size_t kb_count = w.k_padded / kKr / segs;
  const uint8_t* ar[M];
#pragma GCC unroll 16
  for (size_t i = 0; i < M; ++i) ar[i] = a + i * a_stride;
  // A tile with fewer than 8 accumulators (batch 1 above all) would wait on the latency
  // of one vpdpbusd chain per register: split k over U interleaved accumulator sets and
  // add them at the end. int32 addition wraps and is associative, so the sum is the same.
  constexpr size_t U = M * V >= 8 ? 1 : (8 + M * V - 1) / (M * V) > 4 ? 4 : (8 + M * V - 1) / (M * V);
  __m512i acc[U][M][V];
#pragma GCC unroll 4
  for (size_t u = 0; u < U; ++u)
#pragma GCC unroll 16
    for (size_t i = 0; i < M; ++i)
#pragma GCC unroll 4
      for (size_t v = 0; v < V; ++v) acc[u][i][v] = _mm512_setzero_si512();
  const auto step = [&](size_t u, size_t kb) {
    __m512i bv[V];
#pragma GCC unroll 4
    for (size_t v = 0; v < V; ++v) bv[v] = _mm512_loadu_si512(b + v * 64);
    b += kNr * kKr;
#pragma GCC unroll 16
    for (size_t i = 0; i < M; ++i) {
      const __m512i av = _mm512_set1_epi32(load_u32(ar[i] + kb * kKr));
#pragma GCC unroll 4
      for (size_t v = 0; v < V; ++v) acc[u][i][v] = dpbusd(acc[u][i][v], av, bv[v]);
    }
  };
  for (size_t s = 0; s < segs; ++s) {
    if (s) {
#pragma GCC unroll 16
      for (size_t i = 0; i < M; ++i) ar[i] += seg_stride;
    }
    size_t kb = 0;
    for (; kb + U <= kb_count; kb += U)
#pragma GCC unroll 4
      for (size_t u = 0; u < U; ++u) step(u, kb + u);
    for (; kb < kb_count; ++kb) step(0, kb);
  }
#pragma GCC unroll 4
  for (size_t u = 1; u < U; ++u)
#pragma GCC unroll 16
    for (size_t i = 0; i < M; ++i)
#pragma GCC unroll 4
      for (size_t v = 0; v < V; ++v) acc[0][i][v] = _mm512_add_epi32(acc[0][i][v], acc[u][i][v]);
  const int32_t* colsum = w.colsum.as<int32_t>() + p * kNr;
  const float* w_scale = w.w_scale.as<float>() + p * kNr;
  const float* bias = w.bias.as<float>() + p * kNr;
  const __m512i a_zero = _mm512_set1_epi32(ep.a_zero);
  const __m512 a_scale = _mm512_set1_ps(ep.a_scale);
  const __m512 lo = _mm512_set1_ps(ep.lo), hi = _mm512_set1_ps(ep.hi);
  const __m512 rlo = _mm512_set1_ps(ep.res_lo), rhi = _mm512_set1_ps(ep.res_hi);
  __m512i zc[V];
  __m512 scale[V], bs[V];
  __mmask16 mask[V];
#pragma GCC unroll 4
  for (size_t v = 0; v < V; ++v) {
    zc[v] = _mm512_mullo_epi32(a_zero, _mm512_loadu_si512(colsum + v * 16));
    scale[v] = _mm512_mul_ps(a_scale, _mm512_loadu_ps(w_scale + v * 16));
    bs[v] = _mm512_loadu_ps(bias + v * 16);
    const size_t cnt = n_valid > v * 16 ? n_valid - v * 16 : 0;
    mask[v] = cnt >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cnt) - 1);
  }
  if (ep.out_u8) {  // u8 codes of the reader's quantization (activation chaining)
    Avx512CodeStore codes(ep.out_prepared, /*branch_free=*/true, ep.out_bad);  // outputs lie in [lo, hi]
#pragma GCC unroll 16
    for (size_t i = 0; i < M; ++i) {
      uint8_t* cr = reinterpret_cast<uint8_t*>(c) + i * c_stride;
#pragma GCC unroll 4
      for (size_t v = 0; v < V; ++v) {
        __m512 r = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[0][i][v], zc[v])), scale[v], bs[v]);
        r = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
        codes.store(cr + v * 16, r, mask[v]);
      }
    }
    codes.finish();
    return;
  }
#pragma GCC unroll 16
  for (size_t i = 0; i < M; ++i) {
    float* cr = reinterpret_cast<float*>(reinterpret_cast<char*>(c) + i * c_stride);
#pragma GCC unroll 4
    for (size_t v = 0; v < V; ++v) {
      __m512 r = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[0][i][v], zc[v])),
                                 scale[v], bs[v]);
      r = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
      if (ep.has_residual) {  // vmaxps(lo, t) / vminps(hi, t): std::max / std::min's NaN order
        const float* rr = reinterpret_cast<const float*>(reinterpret_cast<const char*>(cr + v * 16) + ep.residual_offset);
        r = _mm512_min_ps(rhi, _mm512_max_ps(rlo, _mm512_add_ps(r, _mm512_maskz_loadu_ps(mask[v], rr))));
      }
      _mm512_mask_storeu_ps(cr + v * 16, mask[v], r);
    }
  }
}

using RowFn = void (*)(size_t, const uint8_t*, size_t, size_t, size_t, const PackedWeights&, size_t, float*, size_t,
                      size_t, const Epilogue&);

template <size_t V, size_t... Ms>
constexpr std::array<RowFn, sizeof...(Ms)> row_table(std::index_sequence<Ms...>) {
  return {&ukernel<Ms + 1, V>...};
}

// An m x n_valid tile, 1 <= m <= MR, on the exact-row-count instantiation.
template <size_t MR, size_t V>
inline void tile(size_t m, const uint8_t* a, size_t a_stride, size_t segs, size_t seg_stride, const PackedWeights& w,
                 size_t p, float* c, size_t c_stride, size_t n_valid, const Epilogue& ep) {
  static constexpr std::array<RowFn, MR> table = row_table<V>(std::make_index_sequence<MR>());
  if (m == 0) return;
  table[m - 1](m, a, a_stride, segs, seg_stride, w, p, c, c_stride, n_valid, ep);
}

}  // namespace

#define DSQ_DEFINE(ident, MR, V)                                                                              \
  void ident(size_t m, const uint8_t* a, size_t a_stride, const PackedWeights& w, size_t p, float* c,         \
             size_t c_stride, size_t n_valid, const Epilogue& ep) {                                          \
    tile<MR, V>(m, a, a_stride, 1, 0, w, p, c, c_stride, n_valid, ep);                                        \
  }                                                                                                          \
  static void ident##_seg(size_t m, const uint8_t* a, size_t a_stride, size_t segs, size_t seg_stride,       \
                          const PackedWeights& w, size_t p, float* c, size_t c_stride, size_t n_valid,       \
                          const Epilogue& ep) {                                                              \
    tile<MR, V>(m, a, a_stride, segs, seg_stride, w, p, c, c_stride, n_valid, ep);                            \
  }
DSQ_DEFINE(gemm_qu8_4x64__avx512vnni, 4, 4)
DSQ_DEFINE(gemm_qu8_8x32__avx512vnni, 8, 2)
DSQ_DEFINE(gemm_qu8_12x16__avx512vnni, 12, 1)
#undef DSQ_DEFINE

SegUkernelFn avx512vnni_segmented(UkernelFn fn) {
  if (fn == &gemm_qu8_4x64__avx512vnni) return &gemm_qu8_4x64__avx512vnni_seg;
  if (fn == &gemm_qu8_8x32__avx512vnni) return &gemm_qu8_8x32__avx512vnni_seg;
  if (fn == &gemm_qu8_12x16__avx512vnni) return &gemm_qu8_12x16__avx512vnni_seg;
  return nullptr;
}

}  // namespace dsq::gemm_qu8
