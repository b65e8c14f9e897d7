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
#include "kernels/gemm_qu8/gemm_qu8.h"
#include "kernels/gemm_qu8/ukernels.h"

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
  // u8 output (activation chaining): when out_u8 is set, y points at bytes, not floats,
  // and each output is stored as the code gemm_qu8::quantize gives its float for
  // (out_scale, out_zero), the next layer's input quantization; a NaN or Inf output sets
  // *out_bad = 1 (its code is still written as quantize defines it).
  bool out_u8 = false;
  float out_scale = 1.f;
  int32_t out_zero = 0;
  uint8_t* out_bad = nullptr;
  // gemm_qu8::prepare_out_quant({out_scale, out_zero}, lo, hi), prepared once by a caller
  // making many row calls; a SIMD variant prepares it per call when not valid.
  gemm_qu8::OutQuant out_prepared{};
};

// Stores output element i of a row (a float, or its code under g.out_u8): the scalar
// epilogue store of every variant.
inline void store_output(const Geometry& g, float* y, int64_t i, float v) {
  if (!g.out_u8) {
    y[i] = v;
    return;
  }
  gemm_qu8::store_code(reinterpret_cast<uint8_t*>(y) + i, v, g.out_scale, g.out_zero, g.out_bad);
}

// x: one image (H x W x C) u8; w: [kh][kw][C] int8; scale: [C] (activation scale x the
// channel's weight scale); bias: [C]; y: output row oh (OW x C; bytes under g.out_u8).
using RowFn = void (*)(const Geometry& g, const uint8_t* x, const int8_t* w, const float* scale, const float* bias,
                       float* y, int64_t oh);

// The 3-tap packed form, for kw == 3 and dw == 1: one vpdpbusd sums a kernel row's three
// taps of 16 channels. Image row ih becomes [OW][C] u32 whose bytes j = 0..2 are
// x[ih][ow * sw - pw + j][c] (the zero point outside the image) and byte 3 is 0; the
// weights become [kh][C] u32 the same way (a kernel row's three taps and a 0). A packed
// row kernel skips kernel rows outside the image, as the row kernels do, and subtracts
// zero * (the sum of the in-image rows' weights): the padding columns hold the zero point,
// so each sum equals the reference's and the outputs are bit-identical.
inline bool packed3_applies(const Geometry& g) { return g.kw == 3 && g.dw == 1; }
// x_row: image row ih (W x C u8); packed: that row's OW x C u32.
using PackRowFn = void (*)(const Geometry& g, const uint8_t* x_row, uint32_t* packed);
// packed: packed image rows from first_row on (OW x C u32 each; every row the output row
// reads must be there); w3: pack_weights3; y: output row oh.
using PackedRowFn = void (*)(const Geometry& g, const uint32_t* packed, int64_t first_row, const uint32_t* w3,
                             const float* scale, const float* bias, float* y, int64_t oh);
std::vector<uint32_t> pack_weights3(const int8_t* w, int64_t kh, int64_t C);  // w: [kh][3][C]
// Quantizes image row ih from f32 (W x C; gemm_qu8::quantize's bytes) straight into its
// packed form; sw == 1 only (then every pixel of the row is read). Returns false when the
// row holds a NaN or Inf, as quantize does.
using QuantPackRowFn = bool (*)(const Geometry& g, const float* x_row, float scale, int32_t zero, uint32_t* packed);

struct Ukernel {
  const char* name;  // e.g. "dwconv_qu8_16__avx512"
  Isa isa;
  RowFn fn;          // any geometry (a packed variant: its ISA's row kernel)
  PackRowFn pack = nullptr;       // set on the 3-tap packed variants,
  PackedRowFn packed = nullptr;   // used where packed3_applies
  QuantPackRowFn quant_pack = nullptr;  // optional: quantize + pack in one pass (sw == 1)
};

const std::vector<Ukernel>& all_ukernels();  // references first
const Ukernel& best_ukernel();                // the highest ISA this CPU runs
const Ukernel* find_ukernel(const char* name);  // nullptr: unknown or unsupported

// The scalar 3-tap packed pair (the packed variants' reference).
void pack_row3_scalar(const Geometry& g, const uint8_t* x_row, uint32_t* packed);
void packed_row3_scalar(const Geometry& g, const uint32_t* packed, int64_t first_row, const uint32_t* w3,
                        const float* scale, const float* bias, float* y, int64_t oh);

// Channels [c0, c1) of one output row, in scalar code (the reference, and the SIMD
// variants' channel tail).
void row_channels(const Geometry& g, const uint8_t* x, const int8_t* w, const float* scale, const float* bias,
                  float* y, int64_t oh, int64_t c0, int64_t c1);

}  // namespace dsq::dwconv_qu8
