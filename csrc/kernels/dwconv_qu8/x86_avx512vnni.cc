// AVX-512 VNNI depthwise int8 kernels (16 channels per vector): the row kernel (vpdpwssd
// per tap) and the 3-tap packed pair (one vpdpbusd per kernel row; dwconv_qu8.h).
#include "kernels/dwconv_qu8/x86_avx512_vec.h"
#include "kernels/dwconv_qu8/row_kernel.h"
#include "kernels/gemm_qu8/x86_avx512_quantize.h"

namespace dsq::dwconv_qu8 {

void dwconv_qu8_16__avx512vnni(const Geometry& g, const uint8_t* x, const int8_t* w, const float* scale,
                               const float* bias, float* y, int64_t oh) {
  row_kernel<Avx512Vec<true>>(g, x, w, scale, bias, y, oh);
}

namespace {
inline __mmask16 channel_mask(int64_t left) { return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1); }

// Packs one image row: pixel(iw, c, m) gives pixel iw's channels c.. as 32-bit lanes (the
// zero point outside the image). Each output column is b0 | b1 << 8 | b2 << 16; at sw == 1
// the window slides one pixel, so each pixel is fetched once (enters as byte 2, leaves
// after byte 0).
template <typename Pixel>
void pack_row(const Geometry& g, uint32_t* packed, Pixel&& pixel) {
  // Locals: the vector stores may alias anything, so fields of g would be reloaded.
  const int64_t C = g.C, OW = g.OW, sw = g.sw, pw = g.pw;
  auto three = [&](int64_t iw, int64_t c, __mmask16 m) {  // ternary logic 0xFE: a | b | c
    return _mm512_ternarylogic_epi32(pixel(iw, c, m), _mm512_maskz_slli_epi32(0xFFFF, pixel(iw + 1, c, m), 8),
                                     _mm512_maskz_slli_epi32(0xFFFF, pixel(iw + 2, c, m), 16), 0xFE);
  };
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 m = channel_mask(C - c);
    __m512i v = three(-pw, c, m);
    _mm512_mask_storeu_epi32(packed + c, m, v);
    if (sw == 1) {
      for (int64_t ow = 1; ow < OW; ++ow) {
        v = _mm512_or_si512(_mm512_maskz_srli_epi32(0xFFFF, v, 8),
                            _mm512_maskz_slli_epi32(0xFFFF, pixel(ow - pw + 2, c, m), 16));
        _mm512_mask_storeu_epi32(packed + ow * C + c, m, v);
      }
    } else {
      for (int64_t ow = 1; ow < OW; ++ow) _mm512_mask_storeu_epi32(packed + ow * C + c, m, three(ow * sw - pw, c, m));
    }
  }
}
}  // namespace

void pack_row3__avx512vnni(const Geometry& g, const uint8_t* x_row, uint32_t* packed) {
  const __m512i zero = _mm512_set1_epi32(g.zero);
  const int64_t W = g.W, C = g.C;
  pack_row(g, packed, [&](int64_t iw, int64_t c, __mmask16 m) {
    return iw >= 0 && iw < W ? _mm512_maskz_cvtepu8_epi32(0xFFFF, _mm_maskz_loadu_epi8(m, x_row + iw * C + c)) : zero;
  });
}

bool quant_pack_row3__avx512vnni(const Geometry& g, const float* x_row, float scale, int32_t zero_point,
                                 uint32_t* packed) {
  gemm_qu8::Avx512Quantizer qz(gemm_qu8::QuantParams{scale, zero_point});
  const __m512i zero = _mm512_set1_epi32(zero_point);
  const int64_t W = g.W, C = g.C;
  pack_row(g, packed, [&](int64_t iw, int64_t c, __mmask16 m) {
    return iw >= 0 && iw < W ? qz.codes(_mm512_maskz_loadu_ps(m, x_row + iw * C + c)) : zero;
  });
  return qz.bad == 0;
}

void packed_row3__avx512vnni(const Geometry& g, const uint32_t* packed, int64_t first_row, const uint32_t* w3,
                             const float* scale, const float* bias, float* y, int64_t oh) {
  const int64_t C = g.C, row_stride = g.OW * C;
  int64_t i0 = 0, i1 = g.kh;  // kernel rows inside the image
  while (i0 < g.kh && oh * g.sh - g.ph + i0 * g.dh < 0) ++i0;
  while (i1 > i0 && oh * g.sh - g.ph + (i1 - 1) * g.dh >= g.H) --i1;
  const __m512i zero = _mm512_set1_epi32(g.zero), ones = _mm512_set1_epi32(0x01010101);
  const __m512 lo = _mm512_set1_ps(g.lo), hi = _mm512_set1_ps(g.hi);
  constexpr int64_t kMaxRows = 8;
  if (i1 - i0 > kMaxRows) {  // taller kernels than MobileNet's: the reference
    packed_row3_scalar(g, packed, first_row, w3, scale, bias, y, oh);
    return;
  }
  const bool out_u8 = g.out_u8;
  Avx512Codes codes(g);
  uint8_t* const yq = reinterpret_cast<uint8_t*>(y);
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 m = channel_mask(C - c);
    __m512i wv[kMaxRows];
    const uint32_t* rows[kMaxRows];
    __m512i wsum = _mm512_setzero_si512();
    const int64_t n = i1 - i0;
    for (int64_t r = 0; r < n; ++r) {
      const int64_t i = i0 + r;
      wv[r] = _mm512_maskz_loadu_epi32(m, w3 + i * C + c);
      wsum = _mm512_dpbusd_epi32(wsum, ones, wv[r]);  // the row's three weights (byte 3 is 0)
      rows[r] = packed + (oh * g.sh - g.ph + i * g.dh - first_row) * row_stride + c;
    }
    const __m512i corr = _mm512_mullo_epi32(wsum, zero);
    const __m512 sv = _mm512_maskz_loadu_ps(m, scale + c), bv = _mm512_maskz_loadu_ps(m, bias + c);
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      __m512i acc = _mm512_setzero_si512();
      for (int64_t r = 0; r < n; ++r) acc = _mm512_dpbusd_epi32(acc, _mm512_maskz_loadu_epi32(m, rows[r] + ow * C), wv[r]);
      const __m512 v = _mm512_min_ps(
          _mm512_max_ps(_mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc, corr)), sv, bv), lo), hi);
      if (out_u8) codes.store(yq + ow * C + c, v, m);
      else _mm512_mask_storeu_ps(y + ow * C + c, m, v);
    }
  }
  codes.finish();
}

}  // namespace dsq::dwconv_qu8
