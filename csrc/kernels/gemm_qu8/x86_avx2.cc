// gemm_qu8 AVX2 (+FMA) ukernel and quantize helpers. Compiled into dsq_isa_avx2.
//
// No VNNI here, and no vpmaddubsw either (u8*s8 pairs saturate int16: 255*127*2 >
// 32767). Both operands are widened to int16 and multiplied with vpmaddwd, so each int32
// lane holds an exact sum of two products; the two partial lanes of a column are folded
// with vphaddd after the k loop.
#include <immintrin.h>

#include <cstring>

#include "kernels/gemm_qu8/gemm_qu8.h"
#include "kernels/gemm_qu8/ukernels.h"

namespace dsq::gemm_qu8 {
namespace {

inline int32_t load_u32(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// int16 x4 (one 4-byte k block of a row), repeated in every 64-bit lane.
inline __m256i broadcast_a(const uint8_t* p) {
  return _mm256_broadcastq_epi64(_mm_cvtepu8_epi16(_mm_cvtsi32_si128(load_u32(p))));
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
  __m256i acc[MR][2];
  for (size_t i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
  for (size_t kb = 0; kb < kb_count; ++kb) {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
    b += kNr * kKr;
    // lanes: [col0 k0..3, col1 k0..3 | col2, col3] and [col4, col5 | col6, col7]
    const __m256i w0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(raw));
    const __m256i w1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(raw, 1));
    for (size_t i = 0; i < MR; ++i) {
      const __m256i av = broadcast_a(ar[i] + kb * kKr);
      acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(av, w0));
      acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(av, w1));
    }
  }
  const __m256i colsum =
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.colsum.as<int32_t>() + p * kNr));
  const __m256i zc = _mm256_mullo_epi32(_mm256_set1_epi32(ep.a_zero), colsum);
  const __m256 scale =
      _mm256_mul_ps(_mm256_set1_ps(ep.a_scale), _mm256_loadu_ps(w.w_scale.as<float>() + p * kNr));
  const __m256 bias = _mm256_loadu_ps(w.bias.as<float>() + p * kNr);
  const __m256 lo = _mm256_set1_ps(ep.lo), hi = _mm256_set1_ps(ep.hi);
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n_valid)),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  for (size_t i = 0; i < MR; ++i) {
    if (i >= m) break;
    // hadd -> [c0 c1 c4 c5 | c2 c3 c6 c7]; permute -> c0..c7
    __m256i s = _mm256_hadd_epi32(acc[i][0], acc[i][1]);
    s = _mm256_permute4x64_epi64(s, _MM_SHUFFLE(3, 1, 2, 0));
    __m256 v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(s, zc)), scale, bias);
    v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
    float* cr = reinterpret_cast<float*>(reinterpret_cast<char*>(c) + i * c_stride);
    if (n_valid == kNr) {
      _mm256_storeu_ps(cr, v);
    } else {
      _mm256_maskstore_ps(cr, mask, v);
    }
  }
}

inline const float* row(const float* x, size_t i, size_t stride) {
  return reinterpret_cast<const float*>(reinterpret_cast<const char*>(x) + i * stride);
}

}  // namespace

void gemm_qu8_4x8__avx2(size_t m, const uint8_t* a, size_t a_stride, const PackedWeights& w,
                        size_t p, float* c, size_t c_stride, size_t n_valid,
                        const Epilogue& ep) {
  ukernel_x8<4>(m, a, a_stride, w, p, c, c_stride, n_valid, ep);
}

void minmax_avx2(const float* x, size_t m, size_t k, size_t x_stride, float* lo, float* hi) {
  __m256 vl = _mm256_setzero_ps(), vh = _mm256_setzero_ps();
  float l = 0.0f, h = 0.0f;
  for (size_t i = 0; i < m; ++i) {
    const float* xr = row(x, i, x_stride);
    size_t j = 0;
    for (; j + 8 <= k; j += 8) {
      const __m256 v = _mm256_loadu_ps(xr + j);
      vl = _mm256_min_ps(v, vl);  // v < vl ? v : vl, as the scalar loop
      vh = _mm256_max_ps(v, vh);
    }
    for (; j < k; ++j) {
      l = xr[j] < l ? xr[j] : l;
      h = xr[j] > h ? xr[j] : h;
    }
  }
  alignas(32) float tl[8], th[8];
  _mm256_store_ps(tl, vl);
  _mm256_store_ps(th, vh);
  for (int t = 0; t < 8; ++t) {
    l = tl[t] < l ? tl[t] : l;
    h = th[t] > h ? th[t] : h;
  }
  *lo = l;
  *hi = h;
}

bool quantize_avx2(const float* x, size_t m, size_t k, size_t x_stride, uint8_t* q,
                   size_t q_stride, QuantParams p) {
  const size_t kp = padded_k(k);
  const __m256i exp_mask = _mm256_set1_epi32(0x7f800000);
  __m256i bad = _mm256_setzero_si256();  // lanes whose exponent bits were all ones
  bool tail_finite = true;
  const float zero_f = static_cast<float>(p.zero);
  const __m256 scale = _mm256_set1_ps(p.scale), zero = _mm256_set1_ps(zero_f);
  const __m256 vmin = _mm256_setzero_ps(), vmax = _mm256_set1_ps(255.0f);
  // nearbyint(x / scale) from x * (1 / scale) where that is exact (see quantize_avx512).
  const bool fast = fast_reciprocal_ok(p.scale);
  const __m256 inv = _mm256_set1_ps(1.0f / p.scale), tie_edge = _mm256_set1_ps(0.5f - kNearTie);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  auto round_quotient = [&](__m256 xv) {
    if (!fast) return _mm256_round_ps(_mm256_div_ps(xv, scale), _MM_FROUND_CUR_DIRECTION);
    const __m256 v = _mm256_mul_ps(xv, inv);
    const __m256 r = _mm256_round_ps(v, _MM_FROUND_CUR_DIRECTION);
    const __m256 frac = _mm256_and_ps(_mm256_sub_ps(v, r), abs_mask);  // exact, in [0, 0.5]
    const __m256 redo = _mm256_cmp_ps(frac, tie_edge, _CMP_GT_OQ);
    if (_mm256_testz_ps(redo, redo)) return r;
    return _mm256_blendv_ps(r, _mm256_round_ps(_mm256_div_ps(xv, scale), _MM_FROUND_CUR_DIRECTION), redo);
  };
  for (size_t i = 0; i < m; ++i) {
    const float* xr = row(x, i, x_stride);
    uint8_t* qr = q + i * q_stride;
    size_t j = 0;
    for (; j + 16 <= k; j += 16) {
      const __m256 x0 = _mm256_loadu_ps(xr + j), x1 = _mm256_loadu_ps(xr + j + 8);
      bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(x0), exp_mask), exp_mask));
      bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(x1), exp_mask), exp_mask));
      __m256 v0 = _mm256_add_ps(round_quotient(x0), zero);
      __m256 v1 = _mm256_add_ps(round_quotient(x1), zero);
      v0 = _mm256_min_ps(_mm256_max_ps(v0, vmin), vmax);  // NaN -> 0 as the scalar code
      v1 = _mm256_min_ps(_mm256_max_ps(v1, vmin), vmax);
      const __m256i i0 = _mm256_cvttps_epi32(v0), i1 = _mm256_cvttps_epi32(v1);
      const __m256i s16 = _mm256_packs_epi32(i0, i1);  // [0-3 8-11 | 4-7 12-15]
      const __m128i u8 = _mm_packus_epi16(_mm256_castsi256_si128(s16),
                                          _mm256_extracti128_si256(s16, 1));
      // u8 = [0-3 8-11 4-7 12-15] -> reorder dwords 0,2,1,3
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qr + j),
                       _mm_shuffle_epi32(u8, _MM_SHUFFLE(3, 1, 2, 0)));
    }
    for (; j < k; ++j) {
      tail_finite = tail_finite && is_finite_bits(xr[j]);
      qr[j] = quantize_scalar(xr[j], p.scale, zero_f);
    }
    for (; j < kp; ++j) qr[j] = 0;
  }
  return tail_finite && _mm256_testz_si256(bad, bad);
}

}  // namespace dsq::gemm_qu8
