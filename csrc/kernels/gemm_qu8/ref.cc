// gemm_qu8 scalar reference ukernel (always built, always tested, the fallback) and the
// scalar minmax / quantize paths.
#include <cmath>
#include <cstring>

#include "kernels/gemm_qu8/gemm_qu8.h"
#include "kernels/gemm_qu8/ukernels.h"

namespace dsq::gemm_qu8 {

void gemm_qu8_1x8__scalar(size_t m, const uint8_t* a, size_t a_stride,
                          const PackedWeights& w, size_t p, float* c, size_t c_stride,
                          size_t n_valid, const Epilogue& ep) {
  constexpr size_t kNr = 8;
  const int8_t* panel = w.panel(p);
  const size_t kb_count = w.k_padded / kKr;
  const int32_t* colsum = w.colsum.as<int32_t>() + p * kNr;
  const float* w_scale = w.w_scale.as<float>() + p * kNr;
  const float* bias = w.bias.as<float>() + p * kNr;
  for (size_t i = 0; i < m; ++i) {
    const uint8_t* ar = a + i * a_stride;
    int32_t acc[kNr] = {};
    const int8_t* b = panel;
    for (size_t kb = 0; kb < kb_count; ++kb) {
      for (size_t j = 0; j < kNr; ++j) {
        for (size_t t = 0; t < kKr; ++t) {
          acc[j] += static_cast<int32_t>(ar[kb * kKr + t]) * static_cast<int32_t>(b[j * kKr + t]);
        }
      }
      b += kNr * kKr;
    }
    char* cr = reinterpret_cast<char*>(c) + i * c_stride;
    for (size_t j = 0; j < n_valid; ++j) {
      const float scale = ep.a_scale * w_scale[j];
      const float v = epilogue_scalar(acc[j], ep.a_zero, colsum[j], scale, bias[j], ep.lo, ep.hi);
      if (!ep.out_u8) {
        reinterpret_cast<float*>(cr)[j] = v;
        continue;
      }
      store_code(reinterpret_cast<uint8_t*>(cr) + j, v, ep.out_scale, ep.out_zero, ep.out_bad);
    }
  }
}

namespace {
const float* row(const float* x, size_t i, size_t stride) {
  return reinterpret_cast<const float*>(reinterpret_cast<const char*>(x) + i * stride);
}
}  // namespace

void minmax_scalar(const float* x, size_t m, size_t k, size_t x_stride, float* lo,
                   float* hi) {
  float l = 0.0f, h = 0.0f;
  for (size_t i = 0; i < m; ++i) {
    const float* xr = row(x, i, x_stride);
    for (size_t j = 0; j < k; ++j) {
      l = xr[j] < l ? xr[j] : l;
      h = xr[j] > h ? xr[j] : h;
    }
  }
  *lo = l;
  *hi = h;
}

bool quantize_scalar_rows(const float* x, size_t m, size_t k, size_t x_stride, uint8_t* q,
                          size_t q_stride, QuantParams p) {
  const size_t kp = padded_k(k);
  const float zero = static_cast<float>(p.zero);
  bool finite = true;
  for (size_t i = 0; i < m; ++i) {
    const float* xr = row(x, i, x_stride);
    uint8_t* qr = q + i * q_stride;
    for (size_t j = 0; j < k; ++j) {
      finite = finite && is_finite_bits(xr[j]);
      qr[j] = quantize_scalar(xr[j], p.scale, zero);
    }
    for (size_t j = k; j < kp; ++j) qr[j] = 0;
  }
  return finite;
}

}  // namespace dsq::gemm_qu8
