// AVX-512 VNNI ukernel of the sparse int8 family (see kernels.inc).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/spmm_qu8/spmm_qu8.h"

namespace dsq::spmm_qu8 {

namespace {

template <typename Col>
void rows_vnni(const PackedWeights& w, const Col* cols, size_t m, const uint8_t* x, size_t xs, float* y, size_t ys,
               size_t n_begin, size_t n_end, const Epilogue& ep) {
  const uint32_t* rp = w.rp();
  const int8_t* q = w.vals();
  const float* wscale = w.w_scale.as<float>();
  const int32_t* rowsum = w.rowsum.as<int32_t>();
  const float* bias = w.bias.as<float>();
  const __m512 lo = _mm512_set1_ps(ep.lo), hi = _mm512_set1_ps(ep.hi);
  for (size_t m0 = 0; m0 < m; m0 += 64) {
    const uint8_t* xm = x + m0;
    __mmask16 mask[4];
    for (size_t b = 0; b < 4; ++b) {
      const size_t base = m0 + 16 * b;
      const size_t valid = base >= m ? 0 : std::min<size_t>(16, m - base);
      mask[b] = static_cast<__mmask16>((1u << valid) - 1);
    }
    for (size_t n = n_begin; n < n_end; ++n) {
      // acc[j], 128-bit block b, dword i  <->  m = m0 + 16 b + 4 j + i (unpack order).
      __m512i acc0 = _mm512_setzero_si512(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
      uint32_t p = rp[n];
      const uint32_t e = rp[n + 1];
      auto quad = [&](const uint8_t* r0, const uint8_t* r1, const uint8_t* r2, const uint8_t* r3, int32_t wq) {
        const __m512i a = _mm512_loadu_si512(r0), b = _mm512_loadu_si512(r1);
        const __m512i c = _mm512_loadu_si512(r2), d = _mm512_loadu_si512(r3);
        const __m512i ab_lo = _mm512_unpacklo_epi8(a, b), ab_hi = _mm512_unpackhi_epi8(a, b);
        const __m512i cd_lo = _mm512_unpacklo_epi8(c, d), cd_hi = _mm512_unpackhi_epi8(c, d);
        const __m512i wv = _mm512_set1_epi32(wq);
        acc0 = _mm512_dpbusd_epi32(acc0, _mm512_unpacklo_epi16(ab_lo, cd_lo), wv);
        acc1 = _mm512_dpbusd_epi32(acc1, _mm512_unpackhi_epi16(ab_lo, cd_lo), wv);
        acc2 = _mm512_dpbusd_epi32(acc2, _mm512_unpacklo_epi16(ab_hi, cd_hi), wv);
        acc3 = _mm512_dpbusd_epi32(acc3, _mm512_unpackhi_epi16(ab_hi, cd_hi), wv);
      };
      for (; p + 4 <= e; p += 4) {
        int32_t wq;
        std::memcpy(&wq, q + p, 4);
        quad(xm + size_t(cols[p]) * xs, xm + size_t(cols[p + 1]) * xs, xm + size_t(cols[p + 2]) * xs,
             xm + size_t(cols[p + 3]) * xs, wq);
      }
      if (p < e) {  // 1-3 left: pad with weight 0 on the last real row (adds exactly 0)
        uint8_t wb[4] = {0, 0, 0, 0};
        const uint8_t* r[4];
        for (uint32_t i = 0; i < 4; ++i) {
          const uint32_t pp = p + i < e ? p + i : e - 1;
          r[i] = xm + size_t(cols[pp]) * xs;
          if (p + i < e) wb[i] = static_cast<uint8_t>(q[p + i]);
        }
        int32_t wq;
        std::memcpy(&wq, wb, 4);
        quad(r[0], r[1], r[2], r[3], wq);
      }
      // 4x4 transpose of 128-bit blocks: out[b] = m0 + 16 b .. + 15 in order.
      const __m512i t0 = _mm512_shuffle_i32x4(acc0, acc1, 0x44), t1 = _mm512_shuffle_i32x4(acc0, acc1, 0xEE);
      const __m512i t2 = _mm512_shuffle_i32x4(acc2, acc3, 0x44), t3 = _mm512_shuffle_i32x4(acc2, acc3, 0xEE);
      const __m512i out[4] = {_mm512_shuffle_i32x4(t0, t2, 0x88), _mm512_shuffle_i32x4(t0, t2, 0xDD),
                              _mm512_shuffle_i32x4(t1, t3, 0x88), _mm512_shuffle_i32x4(t1, t3, 0xDD)};
      const __m512 scale = _mm512_set1_ps(ep.a_scale * wscale[n]);
      const __m512i corr = _mm512_set1_epi32(ep.a_zero * rowsum[n]);
      const __m512 bv = _mm512_set1_ps(bias[n]);
      float* yr = reinterpret_cast<float*>(reinterpret_cast<char*>(y) + n * ys) + m0;
      for (size_t b = 0; b < 4; ++b) {
        if (!mask[b]) break;
        const __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(out[b], corr)), scale, bv);
        _mm512_mask_storeu_ps(yr + 16 * b, mask[b], _mm512_min_ps(_mm512_max_ps(v, lo), hi));
      }
    }
  }
}

}  // namespace

namespace {

// Rows [n_begin, n_end) for lanes m0 .. m0 + 16 NB - 1: NB accumulators of 16 lanes, the
// last one loaded and stored under `last` (lanes past m are never read or written).
template <int NB>
void quad_rows(const PackedWeights& w, const uint8_t* xm, size_t xs, float* y, size_t ys, size_t m0, size_t n_begin,
               size_t n_end, __mmask16 last, const Epilogue& ep) {
  const uint32_t* qrp = w.quad_row_ptr.as<uint32_t>();
  const uint32_t* qcol = w.quad_cols.as<uint32_t>();
  const int32_t* qv = w.quad_vals.as<int32_t>();  // the 4 weights of a quad as one dword
  const float* wscale = w.w_scale.as<float>();
  const int32_t* rowsum = w.rowsum.as<int32_t>();
  const float* bias = w.bias.as<float>();
  const __m512 lo = _mm512_set1_ps(ep.lo), hi = _mm512_set1_ps(ep.hi);
  for (size_t n = n_begin; n < n_end; ++n) {
    __m512i acc[NB];
    for (int b = 0; b < NB; ++b) acc[b] = _mm512_setzero_si512();
    const uint32_t e = qrp[n + 1];
    for (uint32_t p = qrp[n]; p < e; ++p) {
      const uint8_t* xr = xm + size_t(qcol[p]) * xs;
      const __m512i wv = _mm512_set1_epi32(qv[p]);
      for (int b = 0; b < NB - 1; ++b) acc[b] = _mm512_dpbusd_epi32(acc[b], _mm512_loadu_si512(xr + 64 * b), wv);
      acc[NB - 1] = _mm512_dpbusd_epi32(acc[NB - 1], _mm512_maskz_loadu_epi32(last, xr + 64 * (NB - 1)), wv);
    }
    const __m512 scale = _mm512_set1_ps(ep.a_scale * wscale[n]);
    const __m512i corr = _mm512_set1_epi32(ep.a_zero * rowsum[n]);
    const __m512 bv = _mm512_set1_ps(bias[n]);
    float* yr = reinterpret_cast<float*>(reinterpret_cast<char*>(y) + n * ys) + m0;
    for (int b = 0; b < NB; ++b) {
      const __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[b], corr)), scale, bv);
      _mm512_mask_storeu_ps(yr + 16 * b, b == NB - 1 ? last : __mmask16(0xFFFF),
                            _mm512_min_ps(_mm512_max_ps(v, lo), hi));
    }
  }
}

}  // namespace

// Up to 128 lanes per pass: 8 independent vpdpbusd chains per row cover its latency.
void spmm_qu8_quad_128__avx512vnni(const PackedWeights& w, size_t m, const uint8_t* x, size_t xs, float* y, size_t ys,
                                  size_t n_begin, size_t n_end, const Epilogue& ep) {
  for (size_t m0 = 0; m0 < m; m0 += 128) {
    const size_t lanes = std::min<size_t>(128, m - m0), nb = (lanes + 15) / 16;
    const __mmask16 last = static_cast<__mmask16>((1u << (lanes - 16 * (nb - 1))) - 1);
    const uint8_t* xm = x + kQuad * m0;
    switch (nb) {
      case 1: quad_rows<1>(w, xm, xs, y, ys, m0, n_begin, n_end, last, ep); break;
      case 2: quad_rows<2>(w, xm, xs, y, ys, m0, n_begin, n_end, last, ep); break;
      case 3: quad_rows<3>(w, xm, xs, y, ys, m0, n_begin, n_end, last, ep); break;
      case 4: quad_rows<4>(w, xm, xs, y, ys, m0, n_begin, n_end, last, ep); break;
      case 5: quad_rows<5>(w, xm, xs, y, ys, m0, n_begin, n_end, last, ep); break;
      case 6: quad_rows<6>(w, xm, xs, y, ys, m0, n_begin, n_end, last, ep); break;
      case 7: quad_rows<7>(w, xm, xs, y, ys, m0, n_begin, n_end, last, ep); break;
      default: quad_rows<8>(w, xm, xs, y, ys, m0, n_begin, n_end, last, ep); break;
    }
  }
}

void spmm_qu8_64__avx512vnni(const PackedWeights& w, size_t m, const uint8_t* x, size_t xs, float* y, size_t ys,
                             size_t n_begin, size_t n_end, const Epilogue& ep) {
  if (w.cols_u16) rows_vnni(w, w.col16(), m, x, xs, y, ys, n_begin, n_end, ep);
  else rows_vnni(w, w.col32(), m, x, xs, y, ys, n_begin, n_end, ep);
}

}  // namespace dsq::spmm_qu8
