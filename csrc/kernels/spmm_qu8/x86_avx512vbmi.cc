// AVX-512 VBMI + VNNI batch-1 ukernel of the sparse int8 family: row tiles (see
// spmm_qu8.h and kernels.inc). Compiled into dsq_isa_avx512vbmi.
#include <immintrin.h>

#include <algorithm>

#include "kernels/spmm_qu8/spmm_qu8.h"

namespace dsq::spmm_qu8 {

// x: k contiguous bytes (run() copies strided x first); only bytes < k are read (the last
// window is loaded with a mask), so the caller needs no padding.
void spmv_qu8_16x64__avx512vbmi(const PackedWeights& w, size_t, const uint8_t* x, size_t, float* y, size_t ys,
                                size_t n_begin, size_t n_end, const Epilogue& ep) {
  const uint32_t* step_ptr = w.tile_step_ptr.as<uint32_t>();
  const uint32_t* window = w.tile_window.as<uint32_t>();
  const uint8_t* data = w.tile_data.as<uint8_t>();
  const float* wscale = w.w_scale.as<float>();
  const int32_t* rowsum = w.rowsum.as<int32_t>();
  const float* bias = w.bias.as<float>();
  const uint32_t full_windows = static_cast<uint32_t>(w.k / kTileCols);  // windows wholly inside k
  const size_t tail_bytes = w.k % kTileCols;  // 0: no partial window
  const __mmask64 tail = tail_bytes ? (1ull << tail_bytes) - 1 : ~0ull;
  const __m512i a_zero = _mm512_set1_epi32(ep.a_zero);
  const __m512 a_scale = _mm512_set1_ps(ep.a_scale), lo = _mm512_set1_ps(ep.lo), hi = _mm512_set1_ps(ep.hi);
  auto step = [&](uint32_t s, __m512i acc) {
    const uint32_t win = window[s];
    const __m512i xw = _mm512_maskz_loadu_epi8(win < full_windows ? ~0ull : tail, x + size_t(win) * kTileCols);
    const uint8_t* st = data + size_t(s) * kTileStepBytes;
    const __m512i gathered = _mm512_permutexvar_epi8(_mm512_load_si512(st), xw);
    return _mm512_dpbusd_epi32(acc, gathered, _mm512_load_si512(st + kTileCols));
  };
  for (size_t g = n_begin / kTileRows; g * kTileRows < n_end; ++g) {
    // Two accumulators: consecutive steps of a group do not wait on each other's vpdpbusd.
    __m512i acc0 = _mm512_setzero_si512(), acc1 = acc0;
    uint32_t s = step_ptr[g];
    const uint32_t e = step_ptr[g + 1];
    for (; s + 2 <= e; s += 2) {
      acc0 = step(s, acc0);
      acc1 = step(s + 1, acc1);
    }
    if (s < e) acc0 = step(s, acc0);
    const size_t r0 = g * kTileRows;
    const size_t first = n_begin > r0 ? n_begin - r0 : 0, last = std::min(kTileRows, n_end - r0);
    const __mmask16 lanes = static_cast<__mmask16>(((1u << last) - 1) & ~((1u << first) - 1));
    const __m512i acc = _mm512_add_epi32(acc0, acc1);
    const __m512i corr = _mm512_mullo_epi32(a_zero, _mm512_maskz_loadu_epi32(lanes, rowsum + r0));
    const __m512 scale = _mm512_mul_ps(a_scale, _mm512_maskz_loadu_ps(lanes, wscale + r0));
    const __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc, corr)), scale,
                                     _mm512_maskz_loadu_ps(lanes, bias + r0));
    const __m512 out = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
    float* yr = reinterpret_cast<float*>(reinterpret_cast<char*>(y) + r0 * ys);
    if (ys == 4) {
      _mm512_mask_storeu_ps(yr, lanes, out);
    } else {
      alignas(64) float tmp[kTileRows];
      _mm512_store_ps(tmp, out);
      for (size_t j = first; j < last; ++j) *reinterpret_cast<float*>(reinterpret_cast<char*>(yr) + j * ys) = tmp[j];
    }
  }
}

}  // namespace dsq::spmm_qu8
