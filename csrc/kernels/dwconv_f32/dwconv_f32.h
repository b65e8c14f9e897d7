// Depthwise f32 convolution family (groups == cin, NHWC, channel multiplier m:
// cout = cin * m): one output row of one image per call,
//   y[ow][co] = clamp(fold_{(i, j) in bounds} fma(x[ih][iw][co / m], w[i][j][co], .), lo, hi)
// starting from bias[co], taps in (i, j) order, each an fma, skipped outside the image.
// Every variant computes exactly that (vfmadd in the same order), so all are
// bit-identical to the scalar reference; vector lanes run along channels.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "base/cpu.h"

namespace dsq::dwconv_f32 {

struct Geometry {
  int64_t H, W, C, CO;             // input height, width, channels; output channels
  int64_t OW;                      // output width
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  float lo, hi;                    // fused activation as a clamp range
};

// x: one image (H x W x C), w: [kh][kw][CO], bias: [CO], y: output row oh (OW x CO).
using RowFn = void (*)(const Geometry& g, const float* x, const float* w, const float* bias, float* y, int64_t oh);

struct Ukernel {
  const char* name;  // e.g. "dwconv_f32_16__avx512"
  Isa isa;
  RowFn fn;
};

const std::vector<Ukernel>& all_ukernels();  // references first
const Ukernel& best_ukernel();                // the highest ISA this CPU runs
const Ukernel* find_ukernel(const char* name);  // nullptr: unknown or unsupported

}  // namespace dsq::dwconv_f32
