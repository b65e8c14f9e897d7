// Depthwise int8 convolution family (groups == cin == cout, NHWC): u8 activations with
// a zero point, int8 weights per output channel. One output row of one image per call:
//   acc[c] = sum over in-bounds taps t of x[t][c] * w[t][c]  -  zero * (sum of those w)
//   y[ow][c] = clamp(fma(float(acc[c]), scale[c], bias[c]), lo, hi)
// Taps outside the image are skipped (they stand for the real value 0). The integer sum is
// exact and the epilogue one fma per output, so every variant is bit-identical to the
// scalar reference; vector lanes run along channels.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "base/cpu.h"

namespace dsq::dwconv_qu8 {

// The most taps (kh * kw) a layer runs on this family: the SIMD variants keep a channel
// block's taps in registers, and the int32 sums stay far from overflow.
constexpr int64_t kMaxTaps = 25;

struct Geometry {
  int64_t H, W, C;  // input height, width, channels (= output channels)
  int64_t OW;       // output width
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int32_t zero;     // the activations' zero point
  float lo, hi;     // fused activation as a clamp range
};

// x: one image (H x W x C) u8; w: [kh][kw][C] int8; scale: [C] (activation scale x the
// channel's weight scale); bias: [C]; y: output row oh (OW x C).
using RowFn = void (*)(const Geometry& g, const uint8_t* x, const int8_t* w, const float* scale, const float* bias,
                       float* y, int64_t oh);

struct Ukernel {
  const char* name;  // e.g. "dwconv_qu8_16__avx512"
  Isa isa;
  RowFn fn;
};

const std::vector<Ukernel>& all_ukernels();  // references first
const Ukernel& best_ukernel();                // the highest ISA this CPU runs
const Ukernel* find_ukernel(const char* name);  // nullptr: unknown or unsupported

// Channels [c0, c1) of one output row, in scalar code (the reference, and the SIMD
// variants' channel tail).
void row_channels(const Geometry& g, const uint8_t* x, const int8_t* w, const float* scale, const float* bias,
                  float* y, int64_t oh, int64_t c0, int64_t c1);

}  // namespace dsq::dwconv_qu8
