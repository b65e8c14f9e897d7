// AVX-512 depthwise int8 row kernel (16 channels per vector).
#include "kernels/dwconv_qu8/x86_avx512_vec.h"
#include "kernels/dwconv_qu8/row_kernel.h"

namespace dsq::dwconv_qu8 {

void dwconv_qu8_16__avx512(const Geometry& g, const uint8_t* x, const int8_t* w, const float* scale,
                           const float* bias, float* y, int64_t oh) {
  row_kernel<Avx512Vec<false>>(g, x, w, scale, bias, y, oh);
}

}  // namespace dsq::dwconv_qu8
