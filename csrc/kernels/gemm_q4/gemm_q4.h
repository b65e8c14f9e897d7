// Int4 per-group GEMM family: u8 activations (as in gemm_qu8) times signed 4-bit weights
// with one f32 scale per (output channel, group of G consecutive k). Weights stay 4-bit in
// memory; kernels unpack nibbles in registers. Per group g:
//   acc_g[m, n] = sum_{k in g} qa[m, k] * qw[n, k]                     (exact int32)
//   s[m, n]     = fma(float(acc_g - a_zero * gsum[n, g]), a_scale * w_scale[n, g], s)  (g in order)
//   C[m, n]     = clamp(s + bias[n], lo, hi)
// The float order is fixed, so every variant is bit-identical to the reference.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "base/aligned.h"
#include "base/cpu.h"
#include "kernels/gemm_qu8/gemm_qu8.h"

namespace dsq::gemm_q4 {

struct PackedWeights {
  size_t n = 0, k = 0, k_padded = 0, nr = 0, group = 0, groups = 0;
  AlignedBuffer panels;   // nibble layout chosen by pack(); n * k_padded / 2 bytes
  AlignedBuffer gsum;     // int32 [panel][group][nr]
  AlignedBuffer w_scale;  // float [panel][group][nr]
  AlignedBuffer bias;     // float per column, padded
  size_t panel_count() const { return (n + nr - 1) / nr; }
};

using UkernelFn = void (*)(size_t m, const uint8_t* a, size_t a_stride,
                           const PackedWeights& w, size_t p, float* c, size_t c_stride,
                           size_t n_valid, const gemm_qu8::Epilogue& ep);

struct Ukernel {
  const char* name;  // e.g. "gemm_q4_4x32__avx512vnni"
  Isa isa;
  size_t mr;
  size_t nr;
  UkernelFn fn;
};

const std::vector<Ukernel>& all_ukernels();
const Ukernel& best_ukernel();
// The variant for a layer with n output columns: among the variants of the best
// supported ISA, the one with the least padded work (ceil(n / nr) * nr columns); on a
// tie the wider panel (each activation broadcast feeds more columns), then the default
// (best_ukernel), then the earlier line of kernels.inc.
const Ukernel& best_ukernel_for(size_t n);
const Ukernel* find_ukernel(const char* name);

// qw: packed as stored in .dsq files: element i of the row-major [n][k] matrix is in
// byte i / 2, low nibble when i is even, two's complement in [-8, 7].
// w_scale: [n][ceil(k / group)] floats. group: power of two >= 8.
PackedWeights pack(const uint8_t* qw_file_nibbles, const float* w_scale, const float* bias,
                   size_t n, size_t k, size_t group, size_t nr);

// Activation rows: k_padded bytes (padded to gemm_qu8::kKr), padding zeros.
void run(const Ukernel& uk, const PackedWeights& w, const uint8_t* a, size_t a_stride,
         float* c, size_t c_stride, size_t m_begin, size_t m_end, size_t p_begin,
         size_t p_end, const gemm_qu8::Epilogue& ep);

}  // namespace dsq::gemm_q4
