// Dense f32 GEMM family: C[m, n] = clamp(sum_k A[m, k] * W[n, k] + bias[n], lo, hi).
// A is row-major activations (im2col rows for convolutions, batch rows for linear);
// W is the PyTorch weight layout [N][K], packed once at load by pack_gemm_f32().
#pragma once
#include <cstddef>
#include <vector>

#include "base/aligned.h"
#include "base/cpu.h"

namespace dsq::gemm_f32 {

// Computes an m x n_valid tile, m <= mr, n_valid <= nr.
//   a: first row of the tile, a_stride in bytes between rows;
//   packed_panel: K * nr floats, k-major (packed_panel[k * nr + j] = W[n0 + j][k]);
//   bias_panel: nr floats (bias of columns n0..n0+nr-1, zero padded);
//   c: first output of the tile, c_stride in bytes between rows.
using UkernelFn = void (*)(size_t m, size_t k, const float* a, size_t a_stride,
                           const float* packed_panel, const float* bias_panel, float* c,
                           size_t c_stride, size_t n_valid, float lo, float hi);

struct Ukernel {
  const char* name;  // e.g. "gemm_f32_6x32__avx512"
  Isa isa;
  size_t mr;
  size_t nr;
  UkernelFn fn;
};

// Every built variant (from kernels.inc), reference first.
const std::vector<Ukernel>& all_ukernels();
// The best variant this CPU supports.
const Ukernel& best_ukernel();
// The variant for a layer with n output columns: among the variants of the best
// supported ISA, the one with the least estimated time, then the wider panel (each
// activation broadcast feeds more columns), then the default. With rows == 0 (many rows
// per call: convolutions) the estimate is the padded width ceil(n / nr) * nr. With a few
// rows per call (rows = 1 for a batch-1 linear) a tile has too few accumulators to hide
// the FMA latency, so each tile costs at least 8 vectors of 16 lanes: wide panels win.
const Ukernel& best_ukernel_for(size_t n, size_t rows = 0);
// Look up by name; nullptr when not built or not supported by this CPU.
const Ukernel* find_ukernel(const char* name);

struct PackedWeights {
  size_t n = 0, k = 0, nr = 0;
  AlignedBuffer panels;  // ceil(n / nr) panels of k * nr floats
  AlignedBuffer bias;    // ceil(n / nr) * nr floats, zero padded
  const float* panel(size_t p) const { return panels.as<float>() + p * k * nr; }
  const float* bias_panel(size_t p) const { return bias.as<float>() + p * nr; }
  size_t panel_count() const { return (n + nr - 1) / nr; }
};

// w: [n][k] row-major; bias may be null (zeros).
PackedWeights pack(const float* w, const float* bias, size_t n, size_t k, size_t nr);

// Runs the tiles of rows [m_begin, m_end) x panels [p_begin, p_end) (single thread;
// the op layer splits work between threads).
void run(const Ukernel& uk, const PackedWeights& w, const float* a, size_t a_stride,
         float* c, size_t c_stride, size_t m_begin, size_t m_end, size_t p_begin,
         size_t p_end, float lo, float hi);

}  // namespace dsq::gemm_f32
