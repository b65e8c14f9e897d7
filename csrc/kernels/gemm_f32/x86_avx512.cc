// AVX-512 f32 GEMM ukernels: MR rows x 16*V columns (V zmm per row), broadcast A[m, k],
// V loads of the packed panel row, V*MR FMAs per k step. 32-wide panels reuse each
// broadcast twice; 16-wide ones waste no FMAs on layers with 16 (48, 80...) outputs.
// Each tile runs a specialization for its exact row count (no work or access for rows
// past m).
#include <immintrin.h>

#include <array>
#include <cstddef>
#include <utility>

#include "kernels/gemm_f32/ukernels.h"

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 warns about _mm512_undefined_ps() inside _mm512_min_ps/_mm512_max_ps.
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace dsq::gemm_f32 {
namespace {

// Exactly M rows x 16*V columns (M <= the variant's mr): the exported ukernels dispatch
// on m, so a remainder tile runs only the FMAs of its rows and never touches rows past m.
template <int M, int V>
__attribute__((noinline)) void gemm_mxv(size_t k, const float* a, size_t a_stride,
                                        const float* w, const float* bias, float* c,
                                        size_t c_stride, size_t n_valid, float lo, float hi) {
  constexpr int kNr = 16 * V;
  const float* ap[M];
  float* cp[M];
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) {
    ap[i] = reinterpret_cast<const float*>(reinterpret_cast<const char*>(a) + i * a_stride);
    cp[i] = reinterpret_cast<float*>(reinterpret_cast<char*>(c) + i * c_stride);
  }

  __m512 bv[V];
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) bv[v] = _mm512_loadu_ps(bias + 16 * v);
  __m512 acc[M][V];
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[i][v] = bv[v];

  for (size_t kk = 0; kk < k; ++kk) {
    __m512 wv[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) wv[v] = _mm512_loadu_ps(w + 16 * v);
    w += kNr;
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      const __m512 av = _mm512_set1_ps(ap[i][kk]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[i][v] = _mm512_fmadd_ps(av, wv[v], acc[i][v]);
    }
  }

  const __m512 vlo = _mm512_set1_ps(lo);
  const __m512 vhi = _mm512_set1_ps(hi);
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[i][v] = _mm512_min_ps(_mm512_max_ps(acc[i][v], vlo), vhi);

  if (n_valid >= static_cast<size_t>(kNr)) {
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) _mm512_storeu_ps(cp[i] + 16 * v, acc[i][v]);
  } else {
    __mmask16 mask[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      const size_t cnt = n_valid > 16u * v ? n_valid - 16u * v : 0;
      mask[v] = static_cast<__mmask16>(cnt >= 16 ? 0xFFFFu : (1u << cnt) - 1u);
    }
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) _mm512_mask_storeu_ps(cp[i] + 16 * v, mask[v], acc[i][v]);
  }
}

using TileFn = void (*)(size_t, const float*, size_t, const float*, const float*, float*,
                        size_t, size_t, float, float);

template <int V, int... Ms>
constexpr std::array<TileFn, sizeof...(Ms)> tile_table(std::integer_sequence<int, Ms...>) {
  return {&gemm_mxv<Ms + 1, V>...};
}

// Runs an m x n_valid tile (1 <= m <= MR) with the exact-row-count specialization.
template <int MR, int V>
inline void gemm_mrxv(size_t m, size_t k, const float* a, size_t a_stride, const float* w,
                      const float* bias, float* c, size_t c_stride, size_t n_valid, float lo,
                      float hi) {
  static constexpr std::array<TileFn, MR> table =
      tile_table<V>(std::make_integer_sequence<int, MR>());
  if (m == 0) return;
  table[m - 1](k, a, a_stride, w, bias, c, c_stride, n_valid, lo, hi);
}

}  // namespace

#define DSQ_DEFINE(ident, MR, V)                                                               \
  void ident(size_t m, size_t k, const float* a, size_t a_stride, const float* packed_panel,  \
             const float* bias_panel, float* c, size_t c_stride, size_t n_valid, float lo,    \
             float hi) {                                                                      \
    gemm_mrxv<MR, V>(m, k, a, a_stride, packed_panel, bias_panel, c, c_stride, n_valid, lo, hi); \
  }
DSQ_DEFINE(gemm_f32_8x32__avx512, 8, 2)
DSQ_DEFINE(gemm_f32_12x16__avx512, 12, 1)
#undef DSQ_DEFINE

}  // namespace dsq::gemm_f32
