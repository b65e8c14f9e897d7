// AVX2+FMA f32 GEMM ukernel: 6 rows x 16 columns (2 ymm per row, 12 accumulators),
// broadcast A[m, k], two loads of the packed panel row, 12 FMAs per k step.
// Each tile runs a specialization for its exact row count.
#include <immintrin.h>

#include <cstddef>

#include "kernels/gemm_f32/ukernels.h"

namespace dsq::gemm_f32 {
namespace {

// Exactly MR rows; the exported ukernel dispatches on m (remainder tiles do no extra work
// and touch no rows past m).
template <int MR>
__attribute__((noinline)) void gemm_mx16(size_t k, const float* a, size_t a_stride,
                                         const float* packed_panel, const float* bias_panel,
                                         float* c, size_t c_stride, size_t n_valid, float lo,
                                         float hi) {
  const float* ap[MR];
  float* cp[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    ap[i] = reinterpret_cast<const float*>(reinterpret_cast<const char*>(a) + i * a_stride);
    cp[i] = reinterpret_cast<float*>(reinterpret_cast<char*>(c) + i * c_stride);
  }

  const float* w = packed_panel;
  const __m256 b0 = _mm256_loadu_ps(bias_panel);
  const __m256 b1 = _mm256_loadu_ps(bias_panel + 8);
  __m256 acc0[MR], acc1[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    acc0[i] = b0;
    acc1[i] = b1;
  }

  for (size_t kk = 0; kk < k; ++kk) {
    const __m256 w0 = _mm256_loadu_ps(w);
    const __m256 w1 = _mm256_loadu_ps(w + 8);
    w += 16;
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m256 av = _mm256_broadcast_ss(ap[i] + kk);
      acc0[i] = _mm256_fmadd_ps(av, w0, acc0[i]);
      acc1[i] = _mm256_fmadd_ps(av, w1, acc1[i]);
    }
  }

  const __m256 vlo = _mm256_set1_ps(lo);
  const __m256 vhi = _mm256_set1_ps(hi);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    acc0[i] = _mm256_min_ps(_mm256_max_ps(acc0[i], vlo), vhi);
    acc1[i] = _mm256_min_ps(_mm256_max_ps(acc1[i], vlo), vhi);
  }

  if (n_valid >= 16) {
#pragma GCC unroll 8
    for (int i = MR - 1; i >= 0; --i) {
      _mm256_storeu_ps(cp[i], acc0[i]);
      _mm256_storeu_ps(cp[i] + 8, acc1[i]);
    }
    return;
  }
  // Partial columns: 8, 4, 2, 1 pieces (no masked stores beyond n_valid).
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    float* ci = cp[i];
    __m256 v = acc0[i];
    size_t nv = n_valid;
    if (nv & 8) {
      _mm256_storeu_ps(ci, v);
      v = acc1[i];
      ci += 8;
    }
    __m128 x = _mm256_castps256_ps128(v);
    if (nv & 4) {
      _mm_storeu_ps(ci, x);
      x = _mm256_extractf128_ps(v, 1);
      ci += 4;
    }
    if (nv & 2) {
      _mm_storel_pi(reinterpret_cast<__m64*>(ci), x);
      x = _mm_movehl_ps(x, x);
      ci += 2;
    }
    if (nv & 1) _mm_store_ss(ci, x);
  }
}

}  // namespace

void gemm_f32_6x16__avx2(size_t m, size_t k, const float* a, size_t a_stride,
                         const float* packed_panel, const float* bias_panel, float* c,
                         size_t c_stride, size_t n_valid, float lo, float hi) {
  switch (m) {
    case 1: return gemm_mx16<1>(k, a, a_stride, packed_panel, bias_panel, c, c_stride, n_valid, lo, hi);
    case 2: return gemm_mx16<2>(k, a, a_stride, packed_panel, bias_panel, c, c_stride, n_valid, lo, hi);
    case 3: return gemm_mx16<3>(k, a, a_stride, packed_panel, bias_panel, c, c_stride, n_valid, lo, hi);
    case 4: return gemm_mx16<4>(k, a, a_stride, packed_panel, bias_panel, c, c_stride, n_valid, lo, hi);
    case 5: return gemm_mx16<5>(k, a, a_stride, packed_panel, bias_panel, c, c_stride, n_valid, lo, hi);
    case 6: return gemm_mx16<6>(k, a, a_stride, packed_panel, bias_panel, c, c_stride, n_valid, lo, hi);
    default: return;
  }
}

}  // namespace dsq::gemm_f32
