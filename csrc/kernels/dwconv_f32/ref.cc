// Scalar reference and dispatch of the depthwise f32 family.
#include <cmath>

#include "kernels/common/choose.h"
#include "kernels/dwconv_f32/dwconv_f32.h"

namespace dsq::dwconv_f32 {

#define DSQ_DWCONV_F32_UKERNEL(name, isa) \
  void name(const Geometry& g, const float* x, const float* w, const float* bias, float* y, int64_t oh);
#include "kernels/dwconv_f32/kernels.inc"

void dwconv_f32_1__scalar(const Geometry& g, const float* x, const float* w, const float* bias, float* y,
                          int64_t oh) {
  const int64_t mult = g.CO / g.C;
  for (int64_t ow = 0; ow < g.OW; ++ow) {
    float* yp = y + ow * g.CO;
    for (int64_t co = 0; co < g.CO; ++co) {
      float acc = bias[co];
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = oh * g.sh - g.ph + i * g.dh;
        if (ih < 0 || ih >= g.H) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t iw = ow * g.sw - g.pw + j * g.dw;
          if (iw < 0 || iw >= g.W) continue;
          acc = std::fma(x[(ih * g.W + iw) * g.C + co / mult], w[(i * g.kw + j) * g.CO + co], acc);
        }
      }
      acc = acc > g.lo ? acc : g.lo;  // vmaxps / vminps operand order (NaN -> the bound)
      yp[co] = acc < g.hi ? acc : g.hi;
    }
  }
}

const std::vector<Ukernel>& all_ukernels() {
  static const std::vector<Ukernel> list = {
#define DSQ_DWCONV_F32_UKERNEL(name, isa) Ukernel{#name, isa, &name},
#include "kernels/dwconv_f32/kernels.inc"
  };
  return list;
}

const Ukernel& best_ukernel() { return best_supported_ukernel(all_ukernels()); }

const Ukernel* find_ukernel(const char* name) { return find_supported_ukernel(all_ukernels(), name); }

}  // namespace dsq::dwconv_f32
