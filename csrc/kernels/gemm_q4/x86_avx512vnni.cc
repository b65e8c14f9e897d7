// gemm_q4 AVX-512 VNNI ukernels. Compiled into dsq_isa_avx512vnni.
//
// Per 8-k pair block (see pack.cc), one 64-byte load per 16 columns gives both 4-k
// blocks: (v << 4) & 0xF0 and v & 0xF0 are 16 * the signed int4 weights as int8, so no
// sign extension is needed; vpdpbusd against the row's 4 broadcast activation bytes
// accumulates 16 * the exact group sum (fits int32 for group <= 65536), and an arithmetic
// shift by 4 per group recovers it exactly. The float epilogue is the reference's.
#include <immintrin.h>

#include <array>
#include <cstring>
#include <utility>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include "kernels/gemm_q4/gemm_q4.h"
#include "kernels/gemm_q4/ukernels.h"

#include "kernels/common/x86_vnni.h"

namespace dsq::gemm_q4 {
namespace {

using vnni::dpbusd;
using vnni::load_u32;

// Exactly M rows (the exported variants dispatch on the tile's row count), so a
// remainder tile, batch 1 above all, computes only its own rows.
template <size_t M, size_t V>
void ukernel(size_t /*m == M*/, const uint8_t* a, size_t a_stride, const PackedWeights& w,
                    size_t p, float* c, size_t c_stride, size_t n_valid,
                    const gemm_qu8::Epilogue& ep) {
  constexpr size_t kNr = 16 * V;
  const uint8_t* b = w.panels.as<uint8_t>() + p * panel_bytes(w);
  const int32_t* gsum = w.gsum.as<int32_t>() + p * w.groups * kNr;
  const float* w_scale = w.w_scale.as<float>() + p * w.groups * kNr;
  const uint8_t* ar[M];
  for (size_t i = 0; i < M; ++i) ar[i] = a + i * a_stride;
  const __m512i f0 = _mm512_set1_epi8(static_cast<char>(0xF0));
  const __m512i a_zero = _mm512_set1_epi32(ep.a_zero);
  const __m512 a_scale = _mm512_set1_ps(ep.a_scale);
  __m512 s[M][V];
  for (size_t i = 0; i < M; ++i)
    for (size_t v = 0; v < V; ++v) s[i][v] = _mm512_setzero_ps();
  for (size_t g = 0; g < w.groups; ++g) {
    const size_t k0 = g * w.group, len = group_len(w, g);
    __m512i acc[M][V];
    for (size_t i = 0; i < M; ++i)
      for (size_t v = 0; v < V; ++v) acc[i][v] = _mm512_setzero_si512();
    const size_t pairs = len / 8;
    for (size_t t = 0; t < pairs; ++t) {
      __m512i lo[V], hi[V];
      for (size_t v = 0; v < V; ++v) {
        const __m512i raw = _mm512_loadu_si512(b + v * 64);
        hi[v] = _mm512_and_si512(raw, f0);
        lo[v] = _mm512_and_si512(_mm512_slli_epi16(raw, 4), f0);
      }
      b += kNr * 4;
      const size_t kk = k0 + t * 8;
      for (size_t i = 0; i < M; ++i) {
        const __m512i a0 = _mm512_set1_epi32(load_u32(ar[i] + kk));
        const __m512i a1 = _mm512_set1_epi32(load_u32(ar[i] + kk + 4));
        for (size_t v = 0; v < V; ++v) {
          acc[i][v] = dpbusd(acc[i][v], a0, lo[v]);
          acc[i][v] = dpbusd(acc[i][v], a1, hi[v]);
        }
      }
    }
    if (len % 8) {  // last group ending on an odd 4-k block: low nibbles only
      const size_t kk = k0 + pairs * 8;
      __m512i lo[V];
      for (size_t v = 0; v < V; ++v) {
        lo[v] = _mm512_and_si512(_mm512_slli_epi16(_mm512_loadu_si512(b + v * 64), 4), f0);
      }
      b += kNr * 4;
      for (size_t i = 0; i < M; ++i) {
        const __m512i a0 = _mm512_set1_epi32(load_u32(ar[i] + kk));
        for (size_t v = 0; v < V; ++v) acc[i][v] = dpbusd(acc[i][v], a0, lo[v]);
      }
    }
    for (size_t v = 0; v < V; ++v) {
      const __m512i zc =
          _mm512_mullo_epi32(a_zero, _mm512_loadu_si512(gsum + g * kNr + v * 16));
      const __m512 sc = _mm512_mul_ps(a_scale, _mm512_loadu_ps(w_scale + g * kNr + v * 16));
      for (size_t i = 0; i < M; ++i) {
        const __m512i x = _mm512_sub_epi32(_mm512_srai_epi32(acc[i][v], 4), zc);
        s[i][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(x), sc, s[i][v]);
      }
    }
  }
  const float* bias = w.bias.as<float>() + p * kNr;
  const __m512 lo = _mm512_set1_ps(ep.lo), hi = _mm512_set1_ps(ep.hi);
  for (size_t v = 0; v < V; ++v) {
    const __m512 bs = _mm512_loadu_ps(bias + v * 16);
    const size_t cnt = n_valid > v * 16 ? n_valid - v * 16 : 0;
    const __mmask16 mask = cnt >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cnt) - 1);
    for (size_t i = 0; i < M; ++i) {
      float* cr = reinterpret_cast<float*>(reinterpret_cast<char*>(c) + i * c_stride);
      __m512 r = _mm512_add_ps(s[i][v], bs);
      r = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
      _mm512_mask_storeu_ps(cr + v * 16, mask, r);
    }
  }
}

template <size_t V, size_t... Ms>
constexpr std::array<UkernelFn, sizeof...(Ms)> row_table(std::index_sequence<Ms...>) {
  return {&ukernel<Ms + 1, V>...};
}

// An m x n_valid tile, 1 <= m <= MR, on the exact-row-count instantiation.
template <size_t MR, size_t V>
inline void tile(size_t m, const uint8_t* a, size_t a_stride, const PackedWeights& w, size_t p,
                 float* c, size_t c_stride, size_t n_valid, const gemm_qu8::Epilogue& ep) {
  static constexpr std::array<UkernelFn, MR> table = row_table<V>(std::make_index_sequence<MR>());
  if (m == 0) return;
  table[m - 1](m, a, a_stride, w, p, c, c_stride, n_valid, ep);
}

}  // namespace

#define DSQ_DEFINE(ident, MR, V)                                                           \
  void ident(size_t m, const uint8_t* a, size_t a_stride, const PackedWeights& w, size_t p, \
             float* c, size_t c_stride, size_t n_valid, const gemm_qu8::Epilogue& ep) {   \
    tile<MR, V>(m, a, a_stride, w, p, c, c_stride, n_valid, ep);                           \
  }
DSQ_DEFINE(gemm_q4_4x32__avx512vnni, 4, 2)
DSQ_DEFINE(gemm_q4_6x32__avx512vnni, 6, 2)
#undef DSQ_DEFINE

}  // namespace dsq::gemm_q4
