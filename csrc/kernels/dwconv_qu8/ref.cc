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
    float* yp = y + ow * g.C;
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
      yp[c] = v < g.hi ? v : g.hi;
    }
  }
}

void dwconv_qu8_1__scalar(const Geometry& g, const uint8_t* x, const int8_t* w, const float* scale,
                          const float* bias, float* y, int64_t oh) {
  row_channels(g, x, w, scale, bias, y, oh, 0, g.C);
}

const std::vector<Ukernel>& all_ukernels() {
  static const std::vector<Ukernel> list = {
#define DSQ_DWCONV_QU8_UKERNEL(name, isa) Ukernel{#name, isa, &name},
#include "kernels/dwconv_qu8/kernels.inc"
  };
  return list;
}

const Ukernel& best_ukernel() { return best_supported_ukernel(all_ukernels()); }

const Ukernel* find_ukernel(const char* name) { return find_supported_ukernel(all_ukernels(), name); }

}  // namespace dsq::dwconv_qu8
