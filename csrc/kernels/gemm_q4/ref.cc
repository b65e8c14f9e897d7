// gemm_q4 scalar reference ukernel: always built, always tested, the fallback. Reads the
// packed layout described in pack.cc one nibble at a time.
#include "kernels/gemm_q4/gemm_q4.h"
#include "kernels/gemm_q4/ukernels.h"

namespace dsq::gemm_q4 {

void gemm_q4_1x8__scalar(size_t m, const uint8_t* a, size_t a_stride, const PackedWeights& w,
                         size_t p, float* c, size_t c_stride, size_t n_valid,
                         const gemm_qu8::Epilogue& ep) {
  constexpr size_t kNr = 8;
  const uint8_t* panel = w.panels.as<uint8_t>() + p * panel_bytes(w);
  const int32_t* gsum = w.gsum.as<int32_t>() + p * w.groups * kNr;
  const float* w_scale = w.w_scale.as<float>() + p * w.groups * kNr;
  const float* bias = w.bias.as<float>() + p * kNr;
  for (size_t r = 0; r < m; ++r) {
    const uint8_t* ar = a + r * a_stride;
    float s[kNr] = {};
    const uint8_t* b = panel;
    for (size_t g = 0; g < w.groups; ++g) {
      const size_t k0 = g * w.group, len = group_len(w, g);
      int32_t acc[kNr] = {};
      for (size_t t = 0; t * 8 < len; ++t) {
        const bool has_hi = t * 8 + 4 < len;
        for (size_t j = 0; j < kNr; ++j) {
          for (size_t i = 0; i < 4; ++i) {
            const uint8_t byte = b[j * 4 + i];
            const int32_t lo = static_cast<int32_t>((byte & 0x0F) ^ 8) - 8;
            const int32_t hi = static_cast<int32_t>((byte >> 4) ^ 8) - 8;
            acc[j] += static_cast<int32_t>(ar[k0 + t * 8 + i]) * lo;
            if (has_hi) acc[j] += static_cast<int32_t>(ar[k0 + t * 8 + 4 + i]) * hi;
          }
        }
        b += kNr * 4;
      }
      for (size_t j = 0; j < kNr; ++j) {
        const float scale = ep.a_scale * w_scale[g * kNr + j];
        s[j] = group_step(acc[j], ep.a_zero, gsum[g * kNr + j], scale, s[j]);
      }
    }
    float* cr = reinterpret_cast<float*>(reinterpret_cast<char*>(c) + r * c_stride);
    for (size_t j = 0; j < n_valid; ++j) cr[j] = finish(s[j], bias[j], ep.lo, ep.hi);
  }
}

}  // namespace dsq::gemm_q4
