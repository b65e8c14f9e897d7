// Scalar reference and dispatch of the depthwise int8 family.
#include <cmath>

#include "kernels/common/choose.h"
#include "kernels/dwconv_qu8/dwconv_qu8.h"

namespace dsq::dwconv_qu8 {

#define DSQ_DWCONV_QU8_UKERNEL(name, isa) \
  void name(const Geometry& g, const uint8_t* x, const int8_t* w, const float* scale, const float* bias, float* y, \
            int64_t oh);
#include "kernels/dwconv_qu8/kernels.inc"

void row_channels(const Geometry& g, const uint8_t* x, const int8_t* w, const float* scale, const float* bias,
                  float* y, int64_t oh, int64_t c0, int64_t c1) {
  for (int64_t ow = 0; ow < g.OW; ++ow) {
    for (int64_t c = c0; c < c1; ++c) {
      int32_t acc = 0, wsum = 0;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = oh * g.sh - g.ph + i * g.dh;
        if (ih < 0 || ih >= g.H) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t iw = ow * g.sw - g.pw + j * g.dw;
          if (iw < 0 || iw >= g.W) continue;
          const int32_t wv = w[(i * g.kw + j) * g.C + c];
          acc += static_cast<int32_t>(x[(ih * g.W + iw) * g.C + c]) * wv;
          wsum += wv;
        }
      }
      float v = std::fma(static_cast<float>(acc - g.zero * wsum), scale[c], bias[c]);
      v = v > g.lo ? v : g.lo;  // vmaxps / vminps operand order
      store_output(g, y, ow * g.C + c, v < g.hi ? v : g.hi);
    }
  }
}

std::vector<uint32_t> pack_weights3(const int8_t* w, int64_t kh, int64_t C) {
  std::vector<uint32_t> out(static_cast<size_t>(kh * C));
  for (int64_t i = 0; i < kh; ++i)
    for (int64_t c = 0; c < C; ++c) {
      uint32_t v = 0;
      for (int64_t j = 0; j < 3; ++j) v |= uint32_t(uint8_t(w[(i * 3 + j) * C + c])) << (8 * j);
      out[static_cast<size_t>(i * C + c)] = v;
    }
  return out;
}

void pack_row3_scalar(const Geometry& g, const uint8_t* x_row, uint32_t* packed) {
  for (int64_t ow = 0; ow < g.OW; ++ow)
    for (int64_t c = 0; c < g.C; ++c) {
      uint32_t v = 0;
      for (int64_t j = 0; j < 3; ++j) {
        const int64_t iw = ow * g.sw - g.pw + j;
        const uint32_t b = iw >= 0 && iw < g.W ? x_row[iw * g.C + c] : static_cast<uint32_t>(g.zero);
        v |= b << (8 * j);
      }
      packed[ow * g.C + c] = v;
    }
}

void packed_row3_scalar(const Geometry& g, const uint32_t* packed, int64_t first_row, const uint32_t* w3,
                        const float* scale, const float* bias, float* y, int64_t oh) {
  for (int64_t ow = 0; ow < g.OW; ++ow)
    for (int64_t c = 0; c < g.C; ++c) {
      int32_t acc = 0, wsum = 0;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = oh * g.sh - g.ph + i * g.dh;
        if (ih < 0 || ih >= g.H) continue;
        const uint32_t xv = packed[((ih - first_row) * g.OW + ow) * g.C + c], wv = w3[i * g.C + c];
        for (int j = 0; j < 4; ++j) {
          const int32_t wj = int8_t(uint8_t(wv >> (8 * j)));
          acc += int32_t((xv >> (8 * j)) & 0xFF) * wj;
          wsum += wj;
        }
      }
      float v = std::fma(static_cast<float>(acc - g.zero * wsum), scale[c], bias[c]);
      v = v > g.lo ? v : g.lo;
      store_output(g, y, ow * g.C + c, v < g.hi ? v : g.hi);
    }
}

void dwconv_qu8_1__scalar(const Geometry& g, const uint8_t* x, const int8_t* w, const float* scale,
                          const float* bias, float* y, int64_t oh) {
  row_channels(g, x, w, scale, bias, y, oh, 0, g.C);
}

#if DSQ_X86
void pack_row3__avx512vnni(const Geometry& g, const uint8_t* x_row, uint32_t* packed);
void packed_row3__avx512vnni(const Geometry& g, const uint32_t* packed, int64_t first_row, const uint32_t* w3,
                             const float* scale, const float* bias, float* y, int64_t oh);
bool quant_pack_row3__avx512vnni(const Geometry& g, const float* x_row, float scale, int32_t zero, uint32_t* packed);
#endif

const std::vector<Ukernel>& all_ukernels() {
  static const std::vector<Ukernel> list = [] {
    std::vector<Ukernel> l = {
#define DSQ_DWCONV_QU8_UKERNEL(name, isa) Ukernel{#name, isa, &name},
#include "kernels/dwconv_qu8/kernels.inc"
    };
    // The packed reference right after the scalar one; a packed SIMD variant before the
    // row kernel of its ISA, so best_ukernel (first of the highest ISA) takes it.
    l.insert(l.begin() + 1, Ukernel{"dwconv_qu8_1x3p__scalar", Isa::kScalar, &dwconv_qu8_1__scalar,
                                    &pack_row3_scalar, &packed_row3_scalar});
#if DSQ_X86
    for (size_t i = 0; i < l.size(); ++i)
      if (l[i].isa == Isa::kAvx512Vnni) {
        l.insert(l.begin() + static_cast<std::ptrdiff_t>(i),
                 Ukernel{"dwconv_qu8_16x3p__avx512vnni", Isa::kAvx512Vnni, l[i].fn, &pack_row3__avx512vnni,
                         &packed_row3__avx512vnni, &quant_pack_row3__avx512vnni});
        break;
      }
#endif
    return l;
  }();
  return list;
}

const Ukernel& best_ukernel() { return best_supported_ukernel(all_ukernels()); }

const Ukernel* find_ukernel(const char* name) { return find_supported_ukernel(all_ukernels(), name); }

}  // namespace dsq::dwconv_qu8
