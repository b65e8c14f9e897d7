// AVX-512 VNNI ukernel of the sparse int8 family (see kernels.inc).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/gemm_qu8/x86_avx512_quantize.h"
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

// r[j] (row j, 16 columns) -> r[c] = column c of the 16 rows (unpack, shuffle, then two
// rounds of 128-bit lane shuffles).
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // r[4i + k], 128-bit lane L: column 4L + k of rows 4i .. 4i+3
    r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int k = 0; k < 4; ++k) {
    t[k] = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88);
    t[4 + k] = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xDD);
    t[8 + k] = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88);
    t[12 + k] = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xDD);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
    r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xDD);
    r[4 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0x88);
    r[12 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0xDD);
  }
}

}  // namespace

namespace {

// Lanes m0 .. m0 + 16 NB - 1 (the last block under `last`) of rows [n_begin, n_end), in
// groups of 16 rows: each row's quads accumulate into NB zmm (NB independent vpdpbusd
// chains), its epilogued outputs go to a 16 x 16 NB tile on the stack (L1), and then each
// 16 x 16 block of the tile is transposed in registers and stored pixel-major.
template <int NB>
void quad_tile(const PackedWeights& w, const uint8_t* xm, size_t xs, float* y, size_t ys, size_t m0, size_t lanes,
               size_t n_begin, size_t n_end, __mmask16 last, const Epilogue& ep) {
  const uint32_t* qrp = w.quad_row_ptr.as<uint32_t>();
  const uint32_t* qcol = w.quad_cols.as<uint32_t>();
  const int32_t* qv = w.quad_vals.as<int32_t>();  // the 4 weights of a quad as one dword
  const float* wscale = w.w_scale.as<float>();
  const int32_t* rowsum = w.rowsum.as<int32_t>();
  const float* bias = w.bias.as<float>();
  const __m512 lo = _mm512_set1_ps(ep.lo), hi = _mm512_set1_ps(ep.hi);
  const __m512 rlo = _mm512_set1_ps(ep.res_lo), rhi = _mm512_set1_ps(ep.res_hi);
  size_t pixel[16 * NB];
  bool keep[16 * NB];
  if (!ep.grid_w) {
    for (size_t i = 0; i < lanes; ++i) pixel[i] = m0 + i, keep[i] = true;
  } else {  // one division, then column by column
    size_t row = (ep.grid_base + m0) / ep.grid_w, col = (ep.grid_base + m0) % ep.grid_w;
    for (size_t i = 0; i < lanes; ++i) {
      keep[i] = col < ep.out_w;
      pixel[i] = row * ep.out_w + col;
      if (++col == ep.grid_w) col = 0, ++row;
    }
  }
  alignas(64) float tile[16][16 * NB];
  // u8 output (Epilogue::out_u8; ep.out_prepared filled by run()). After the tile
  // transpose the chains are short: the near-tie branch is cheaper than the FMA form.
  gemm_qu8::Avx512CodeStore codes(ep.out_prepared, /*branch_free=*/false, ep.out_bad);
  for (size_t n0 = n_begin; n0 < n_end; n0 += 16) {
    const size_t rows = std::min<size_t>(16, n_end - n0);
    for (size_t j = 0; j < rows; ++j) {
      const size_t n = n0 + j;
      __m512i acc[NB];
      for (int b = 0; b < NB; ++b) acc[b] = _mm512_setzero_si512();
      const uint32_t e = qrp[n + 1];
      for (uint32_t p = qrp[n]; p < e; ++p) {
        const uint8_t* xr = xm + size_t(qcol[p]) * xs;
        const __m512i wv = _mm512_set1_epi32(qv[p]);
        for (int b = 0; b < NB - 1; ++b) acc[b] = _mm512_dpbusd_epi32(acc[b], _mm512_loadu_si512(xr + 64 * b), wv);
        acc[NB - 1] = _mm512_dpbusd_epi32(acc[NB - 1], _mm512_maskz_loadu_epi32(last, xr + 64 * (NB - 1)), wv);
      }
      const __m512i corr = _mm512_set1_epi32(ep.a_zero * rowsum[n]);
      const __m512 scale = _mm512_set1_ps(ep.a_scale * wscale[n]), bv = _mm512_set1_ps(bias[n]);
      for (int b = 0; b < NB; ++b) {
        const __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[b], corr)), scale, bv);
        _mm512_store_ps(&tile[j][16 * b], _mm512_min_ps(_mm512_max_ps(f, lo), hi));
      }
    }
    const __mmask16 row_mask = static_cast<__mmask16>((1u << rows) - 1);
    for (int b = 0; b < NB; ++b) {
      __m512 v[16];
      for (size_t j = 0; j < 16; ++j) v[j] = j < rows ? _mm512_load_ps(&tile[j][16 * b]) : _mm512_setzero_ps();
      transpose16(v);
      const size_t block_lanes = std::min<size_t>(16, lanes - 16 * b);
      for (size_t i = 0; i < block_lanes; ++i) {
        const size_t lane = 16 * b + i;
        if (!keep[lane]) continue;
        if (ep.out_u8) {
          codes.store(reinterpret_cast<uint8_t*>(y) + pixel[lane] * ys + n0, v[i], row_mask);
          continue;
        }
        float* out = reinterpret_cast<float*>(reinterpret_cast<char*>(y) + pixel[lane] * ys) + n0;
        __m512 o = v[i];
        if (ep.residual) {
          const float* r =
              reinterpret_cast<const float*>(reinterpret_cast<const char*>(ep.residual) + pixel[lane] * ys) + n0;
          o = _mm512_min_ps(rhi, _mm512_max_ps(rlo, _mm512_add_ps(o, _mm512_maskz_loadu_ps(row_mask, r))));
        }
        _mm512_mask_storeu_ps(out, row_mask, o);
      }
    }
  }
  codes.finish();
}

}  // namespace

// Up to 128 lanes per pass (8 independent vpdpbusd chains per row), see quad_tile.
void spmm_qu8_quad_128x16__avx512vnni(const PackedWeights& w, size_t m, const uint8_t* x, size_t xs, float* y,
                                     size_t ys, size_t n_begin, size_t n_end, const Epilogue& ep) {
  for (size_t m0 = 0; m0 < m; m0 += 128) {
    const size_t lanes = std::min<size_t>(128, m - m0), nb = (lanes + 15) / 16;
    const __mmask16 last = static_cast<__mmask16>((1u << (lanes - 16 * (nb - 1))) - 1);
    const uint8_t* xm = x + kQuad * m0;
    switch (nb) {
      case 1: quad_tile<1>(w, xm, xs, y, ys, m0, lanes, n_begin, n_end, last, ep); break;
      case 2: quad_tile<2>(w, xm, xs, y, ys, m0, lanes, n_begin, n_end, last, ep); break;
      case 3: quad_tile<3>(w, xm, xs, y, ys, m0, lanes, n_begin, n_end, last, ep); break;
      case 4: quad_tile<4>(w, xm, xs, y, ys, m0, lanes, n_begin, n_end, last, ep); break;
      case 5: quad_tile<5>(w, xm, xs, y, ys, m0, lanes, n_begin, n_end, last, ep); break;
      case 6: quad_tile<6>(w, xm, xs, y, ys, m0, lanes, n_begin, n_end, last, ep); break;
      case 7: quad_tile<7>(w, xm, xs, y, ys, m0, lanes, n_begin, n_end, last, ep); break;
      default: quad_tile<8>(w, xm, xs, y, ys, m0, lanes, n_begin, n_end, last, ep); break;
    }
  }
}

void spmv_qu8_quad16__avx512vnni(const PackedWeights& w, size_t, const uint8_t* x, size_t, float* y, size_t ys,
                                 size_t n_begin, size_t n_end, const Epilogue& ep) {
  const uint32_t* step_ptr = w.quad_tile_step_ptr.as<uint32_t>();
  const uint32_t* rows = w.quad_tile_rows.as<uint32_t>();
  const uint32_t* window = w.quad_tile_window.as<uint32_t>();
  const uint8_t* wq = w.quad_tile_w.as<uint8_t>();
  const uint8_t* idx = w.quad_tile_idx.as<uint8_t>();
  const float* wscale = w.w_scale.as<float>();
  const int32_t* rowsum = w.rowsum.as<int32_t>();
  const float* bias = w.bias.as<float>();
  const __m512 lo = _mm512_set1_ps(ep.lo), hi = _mm512_set1_ps(ep.hi);
  const __m512i n_vec = _mm512_set1_epi32(static_cast<int32_t>(w.n));
  const __m512i ys_vec = _mm512_set1_epi32(static_cast<int32_t>(ys / 4));
  const __m512i upper = _mm512_set1_epi32(32);
  const size_t window_bytes = kQuad * kQuadWindow;
  // The window's 256 bytes of x as four zmm; the last window of x is loaded masked (x
  // ends at k; its weights there are 0).
  auto load = [&](size_t win, __m512i xw[4]) {
    const size_t base = win * window_bytes;
    for (size_t b = 0; b < 4; ++b) {
      const size_t at = base + 64 * b, avail = at < w.k ? w.k - at : 0;
      xw[b] = avail >= 64 ? _mm512_loadu_si512(x + at)
                          : _mm512_maskz_loadu_epi8(avail ? (~__mmask64(0)) >> (64 - avail) : __mmask64(0), x + at);
    }
  };
  for (size_t g = n_begin / kTileRows; g * kTileRows < n_end; ++g) {
    __m512i acc = _mm512_setzero_si512();
    __m512i xw[4];
    uint32_t cur = UINT32_MAX;
    for (uint32_t s = step_ptr[g]; s < step_ptr[g + 1]; ++s) {
      if (window[s] != cur) load(cur = window[s], xw);
      const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(idx + size_t(s) * kTileRows)));
      const __m512i lo32 = _mm512_permutex2var_epi32(xw[0], q, xw[1]);  // quads 0..31 (index bits 0-4)
      const __m512i hi32 = _mm512_permutex2var_epi32(xw[2], q, xw[3]);  // quads 32..63
      const __m512i xq = _mm512_mask_blend_epi32(_mm512_test_epi32_mask(q, upper), lo32, hi32);
      acc = _mm512_dpbusd_epi32(acc, xq, _mm512_load_si512(wq + size_t(s) * 64));
    }
    const __m512i row = _mm512_loadu_si512(rows + g * kTileRows);
    const __mmask16 real = _mm512_cmplt_epu32_mask(row, n_vec);  // empty lanes hold n
    const __m512 scale =
        _mm512_mul_ps(_mm512_set1_ps(ep.a_scale), _mm512_mask_i32gather_ps(_mm512_setzero_ps(), real, row, wscale, 4));
    const __m512i corr = _mm512_mullo_epi32(_mm512_set1_epi32(ep.a_zero),
                                            _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), real, row, rowsum, 4));
    const __m512 bv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), real, row, bias, 4);
    __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc, corr)), scale, bv);
    v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
    _mm512_mask_i32scatter_ps(y, real, _mm512_mullo_epi32(row, ys_vec), v, 4);
  }
}

void spmm_qu8_64__avx512vnni(const PackedWeights& w, size_t m, const uint8_t* x, size_t xs, float* y, size_t ys,
                             size_t n_begin, size_t n_end, const Epilogue& ep) {
  if (w.cols_u16) rows_vnni(w, w.col16(), m, x, xs, y, ys, n_begin, n_end, ep);
  else rows_vnni(w, w.col32(), m, x, xs, y, ys, n_begin, n_end, ep);
}

}  // namespace dsq::spmm_qu8
