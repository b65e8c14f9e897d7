// AVX-512 f32 GEMM ukernels: MR rows x 32 columns (2 zmm per row), broadcast A[m, k],
// two loads of the packed panel row, 2*MR FMAs per k step. Each tile runs a
// specialization for its exact row count (no work or access for rows past m).
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

// Exactly M rows (M <= the variant's mr): the exported ukernels dispatch on m, so a
// remainder tile runs only the FMAs of its rows and never touches rows past m.
template <int M>
__attribute__((noinline)) void gemm_mx32(size_t k, const float* a, size_t a_stride,
                                         const float* w, const float* bias, float* c,
                                         size_t c_stride, size_t n_valid, float lo, float hi) {
  const float* ap[M];
  float* cp[M];
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) {
    ap[i] = reinterpret_cast<const float*>(reinterpret_cast<const char*>(a) + i * a_stride);
    cp[i] = reinterpret_cast<float*>(reinterpret_cast<char*>(c) + i * c_stride);
  }

  const __m512 b0 = _mm512_loadu_ps(bias);
  const __m512 b1 = _mm512_loadu_ps(bias + 16);
  __m512 acc0[M], acc1[M];
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) {
    acc0[i] = b0;
    acc1[i] = b1;
  }

  for (size_t kk = 0; kk < k; ++kk) {
    const __m512 w0 = _mm512_loadu_ps(w);
    const __m512 w1 = _mm512_loadu_ps(w + 16);
    w += 32;
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      const __m512 av = _mm512_set1_ps(ap[i][kk]);
      acc0[i] = _mm512_fmadd_ps(av, w0, acc0[i]);
      acc1[i] = _mm512_fmadd_ps(av, w1, acc1[i]);
    }
  }

  const __m512 vlo = _mm512_set1_ps(lo);
  const __m512 vhi = _mm512_set1_ps(hi);
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) {
    acc0[i] = _mm512_min_ps(_mm512_max_ps(acc0[i], vlo), vhi);
    acc1[i] = _mm512_min_ps(_mm512_max_ps(acc1[i], vlo), vhi);
  }

  if (n_valid >= 32) {
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      _mm512_storeu_ps(cp[i], acc0[i]);
      _mm512_storeu_ps(cp[i] + 16, acc1[i]);
    }
  } else {
    const unsigned nv = static_cast<unsigned>(n_valid);
    const __mmask16 m0 = static_cast<__mmask16>(nv >= 16 ? 0xFFFFu : (1u << nv) - 1u);
    const __mmask16 m1 = static_cast<__mmask16>(nv <= 16 ? 0u : (1u << (nv - 16)) - 1u);
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      _mm512_mask_storeu_ps(cp[i], m0, acc0[i]);
      _mm512_mask_storeu_ps(cp[i] + 16, m1, acc1[i]);
    }
  }
}

using TileFn = void (*)(size_t, const float*, size_t, const float*, const float*, float*,
                        size_t, size_t, float, float);

template <int... Ms>
constexpr std::array<TileFn, sizeof...(Ms)> tile_table(std::integer_sequence<int, Ms...>) {
  return {&gemm_mx32<Ms + 1>...};
}

// Runs an m x n_valid tile (1 <= m <= MR) with the exact-row-count specialization.
template <int MR>
inline void gemm_mrx32(size_t m, size_t k, const float* a, size_t a_stride, const float* w,
                       const float* bias, float* c, size_t c_stride, size_t n_valid, float lo,
                       float hi) {
  static constexpr std::array<TileFn, MR> table =
      tile_table(std::make_integer_sequence<int, MR>());
  if (m == 0) return;
  table[m - 1](k, a, a_stride, w, bias, c, c_stride, n_valid, lo, hi);
}

}  // namespace

void gemm_f32_8x32__avx512(size_t m, size_t k, const float* a, size_t a_stride,
                           const float* packed_panel, const float* bias_panel, float* c,
                           size_t c_stride, size_t n_valid, float lo, float hi) {
  gemm_mrx32<8>(m, k, a, a_stride, packed_panel, bias_panel, c, c_stride, n_valid, lo, hi);
}

}  // namespace dsq::gemm_f32
