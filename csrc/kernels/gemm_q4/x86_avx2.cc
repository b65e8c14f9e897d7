// gemm_q4 AVX2 (+FMA) ukernel. Compiled into dsq_isa_avx2.
//
// No VNNI: the packed bytes (see pack.cc) are sign-extended to int16, and the nibbles
// extracted in int16 lanes (high: >> 4 arithmetic; low: << 12 then >> 12 arithmetic),
// giving exact signed weights; activations are zero-extended to int16 and multiplied with
// vpmaddwd (exact int32 pair sums, no vpmaddubsw saturation). The two partial lanes per
// column are folded with vphaddd at each group end; the float epilogue is the reference's.
#include <immintrin.h>

#include <cstring>

#include "kernels/gemm_q4/gemm_q4.h"
#include "kernels/gemm_q4/ukernels.h"

namespace dsq::gemm_q4 {
namespace {

inline int32_t load_u32(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

template <size_t MR>
inline void ukernel_x8(size_t m, const uint8_t* a, size_t a_stride, const PackedWeights& w,
                       size_t p, float* c, size_t c_stride, size_t n_valid,
                       const gemm_qu8::Epilogue& ep) {
  constexpr size_t kNr = 8;
  const uint8_t* b = w.panels.as<uint8_t>() + p * panel_bytes(w);
  const int32_t* gsum = w.gsum.as<int32_t>() + p * w.groups * kNr;
  const float* w_scale = w.w_scale.as<float>() + p * w.groups * kNr;
  const uint8_t* ar[MR];
  for (size_t i = 0; i < MR; ++i) ar[i] = a + (i < m ? i : m - 1) * a_stride;
  const __m256i a_zero = _mm256_set1_epi32(ep.a_zero);
  const __m256 a_scale = _mm256_set1_ps(ep.a_scale);
  __m256 s[MR];
  for (size_t i = 0; i < MR; ++i) s[i] = _mm256_setzero_ps();
  for (size_t g = 0; g < w.groups; ++g) {
    const size_t k0 = g * w.group, len = group_len(w, g);
    __m256i acc[MR][2];
    for (size_t i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
    const size_t pairs = len / 8;
    for (size_t t = 0; t < pairs; ++t) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
      b += kNr * 4;
      // int16 lanes: [col0 k0..3, col1 | col2, col3] and [col4, col5 | col6, col7]
      const __m256i s0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(raw));
      const __m256i s1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(raw, 1));
      const __m256i hi0 = _mm256_srai_epi16(s0, 4), hi1 = _mm256_srai_epi16(s1, 4);
      const __m256i lo0 = _mm256_srai_epi16(_mm256_slli_epi16(s0, 12), 12);
      const __m256i lo1 = _mm256_srai_epi16(_mm256_slli_epi16(s1, 12), 12);
      const size_t kk = k0 + t * 8;
      for (size_t i = 0; i < MR; ++i) {
        const __m128i a8 =
            _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(ar[i] + kk)));
        const __m256i al = _mm256_broadcastq_epi64(a8);
        const __m256i ah = _mm256_broadcastq_epi64(_mm_unpackhi_epi64(a8, a8));
        acc[i][0] = _mm256_add_epi32(
            acc[i][0], _mm256_add_epi32(_mm256_madd_epi16(al, lo0), _mm256_madd_epi16(ah, hi0)));
        acc[i][1] = _mm256_add_epi32(
            acc[i][1], _mm256_add_epi32(_mm256_madd_epi16(al, lo1), _mm256_madd_epi16(ah, hi1)));
      }
    }
    if (len % 8) {  // odd last 4-k block: low nibbles only, 4 activation bytes
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
      b += kNr * 4;
      const __m256i s0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(raw));
      const __m256i s1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(raw, 1));
      const __m256i lo0 = _mm256_srai_epi16(_mm256_slli_epi16(s0, 12), 12);
      const __m256i lo1 = _mm256_srai_epi16(_mm256_slli_epi16(s1, 12), 12);
      const size_t kk = k0 + pairs * 8;
      for (size_t i = 0; i < MR; ++i) {
        const __m256i al = _mm256_broadcastq_epi64(
            _mm_cvtepu8_epi16(_mm_cvtsi32_si128(load_u32(ar[i] + kk))));
        acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(al, lo0));
        acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(al, lo1));
      }
    }
    const __m256i zc = _mm256_mullo_epi32(
        a_zero, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(gsum + g * kNr)));
    const __m256 sc = _mm256_mul_ps(a_scale, _mm256_loadu_ps(w_scale + g * kNr));
    for (size_t i = 0; i < MR; ++i) {
      __m256i x = _mm256_hadd_epi32(acc[i][0], acc[i][1]);  // [c0 c1 c4 c5 | c2 c3 c6 c7]
      x = _mm256_permute4x64_epi64(x, _MM_SHUFFLE(3, 1, 2, 0));
      x = _mm256_sub_epi32(x, zc);
      s[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(x), sc, s[i]);
    }
  }
  const __m256 bias = _mm256_loadu_ps(w.bias.as<float>() + p * kNr);
  const __m256 lo = _mm256_set1_ps(ep.lo), hi = _mm256_set1_ps(ep.hi);
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n_valid)),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  for (size_t i = 0; i < MR; ++i) {
    if (i >= m) break;
    __m256 v = _mm256_add_ps(s[i], bias);
    v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
    float* cr = reinterpret_cast<float*>(reinterpret_cast<char*>(c) + i * c_stride);
    if (n_valid == kNr) {
      _mm256_storeu_ps(cr, v);
    } else {
      _mm256_maskstore_ps(cr, mask, v);
    }
  }
}

}  // namespace

void gemm_q4_4x8__avx2(size_t m, const uint8_t* a, size_t a_stride, const PackedWeights& w,
                       size_t p, float* c, size_t c_stride, size_t n_valid,
                       const gemm_qu8::Epilogue& ep) {
  ukernel_x8<4>(m, a, a_stride, w, p, c, c_stride, n_valid, ep);
}

}  // namespace dsq::gemm_q4
