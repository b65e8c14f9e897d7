// Dense int8 GEMM family: u8 activations (per-tensor scale a_scale, zero point a_zero)
// times s8 weights (per-output-channel symmetric scale w_scale[n]), int32 accumulation:
//   acc[m, n]  = sum_k qa[m, k] * qw[n, k]                        (exact int32)
//   C[m, n]    = clamp(fma(float(acc - a_zero * colsum[n]), a_scale * w_scale[n], bias[n]), lo, hi)
// with the epilogue computed in exactly this order (std::fma / vfmadd), so every variant
// is bit-identical to the reference.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "base/aligned.h"
#include "base/cpu.h"

namespace dsq::gemm_qu8 {

// K is padded to a multiple of kKr; activation rows must hold k_padded bytes, padding 0.
constexpr size_t kKr = 4;
inline size_t padded_k(size_t k) { return (k + kKr - 1) / kKr * kKr; }

struct PackedWeights {
  size_t n = 0, k = 0, k_padded = 0, nr = 0;
  // ceil(n / nr) panels; panel p holds k_padded / 4 blocks of nr x 4 bytes:
  // panel[(kb * nr + j) * 4 + i] = qw[p * nr + j][kb * 4 + i] (zero padded).
  AlignedBuffer panels;
  AlignedBuffer colsum;   // int32 per column, padded to a panel multiple
  AlignedBuffer w_scale;  // float per column, padded
  AlignedBuffer bias;     // float per column, padded
  const int8_t* panel(size_t p) const { return panels.as<int8_t>() + p * k_padded * nr; }
  size_t panel_count() const { return (n + nr - 1) / nr; }
};

// Per-tensor quantization of activations (u8 = clamp(nearbyint(x / scale) + zero, 0, 255)).
struct QuantParams {
  float scale;
  int32_t zero;
};

// The scalars of a SIMD quantizer for values known to lie in [lo, hi] (a fused
// activation's clamp): prepared once per call, not per tile (x86_avx512_quantize.h).
struct OutQuant {
  bool valid = false;  // set by prepare_out_quant
  float scale = 1.f, inv = 1.f;
  int32_t zero = 0;
  bool fast = true;        // x * inv, with near ties divided, gives x / scale's codes
  bool check_bad = true;   // the range admits NaN / Inf
  bool clamp_low = true;   // codes below 0 possible
  bool clamp_high = true;  // codes past 255 possible
  // The scale admits the branch-free quotient: x * inv plus two exact-remainder
  // corrections (Markstein: the correctly rounded x / scale when 2^-60 <= scale <= 2^100
  // and |x / scale| is far from overflow).
  bool exact_fma_ok = false;
};
OutQuant prepare_out_quant(QuantParams p, float lo, float hi);

struct Epilogue {
  int32_t a_zero;
  float a_scale;
  float lo, hi;
  // run_segmented only (run() rejects it): a fused residual add after the clamp,
  // out = min(max(out + r, res_lo), res_hi) (add_residual's expression), r read
  // residual_offset bytes from each output element.
  bool has_residual = false;
  ptrdiff_t residual_offset = 0;
  float res_lo = 0.f, res_hi = 0.f;
  // run() / run_segmented() on a variant with u8_out only, without a residual: u8 output (activation
  // chaining). c then points at bytes (c_stride bytes per row, one per column) holding the
  // code quantize() gives each output for (out_scale, out_zero); a NaN or Inf output sets
  // *out_bad = 1.
  bool out_u8 = false;
  float out_scale = 1.f;
  int32_t out_zero = 0;
  uint8_t* out_bad = nullptr;
  // prepare_out_quant(out_scale / out_zero, lo, hi): run() / run_segmented() fill it when
  // the caller has not (a caller making many calls prepares it once).
  OutQuant out_prepared{};
};

// m x n_valid tile (m <= mr, n_valid <= nr). a: u8 rows of k_padded bytes, a_stride in
// bytes; c: f32 output, c_stride in bytes. p: panel index into w.
using UkernelFn = void (*)(size_t m, const uint8_t* a, size_t a_stride,
                           const PackedWeights& w, size_t p, float* c, size_t c_stride,
                           size_t n_valid, const Epilogue& ep);

// Implicit GEMM (convolution without im2col): row i of A is `segs` segments of
// k_padded / segs bytes each, segment s at a + i * a_stride + s * seg_stride (e.g. the kh
// kernel rows of a conv patch, each kw * cin contiguous bytes of an NHWC image). Needs
// k_padded == k and k % (4 * segs) == 0. Same results as the plain call on the gathered rows.
using SegUkernelFn = void (*)(size_t m, const uint8_t* a, size_t a_stride, size_t segs, size_t seg_stride,
                              const PackedWeights& w, size_t p, float* c, size_t c_stride, size_t n_valid,
                              const Epilogue& ep);

struct Ukernel {
  const char* name;  // e.g. "gemm_qu8_4x64__avx512vnni"
  Isa isa;
  size_t mr;
  size_t nr;
  UkernelFn fn;
  SegUkernelFn seg_fn = nullptr;  // the segmented twin, where the variant has one
  bool u8_out = false;            // writes Epilogue::out_u8 codes (all but the AVX2 variant)
};

const std::vector<Ukernel>& all_ukernels();
const Ukernel& best_ukernel();
// The variant for a layer with n output columns: among the variants of the best
// supported ISA, the one with the least padded work (ceil(n / nr) * nr columns); on a
// tie the wider panel (each activation broadcast feeds more columns), then the default
// (best_ukernel), then the earlier line of kernels.inc.
const Ukernel& best_ukernel_for(size_t n);
const Ukernel* find_ukernel(const char* name);

// qw: [n][k] int8 row-major, w_scale: n floats, bias may be null.
PackedWeights pack(const int8_t* qw, const float* w_scale, const float* bias, size_t n,
                   size_t k, size_t nr);

// Throws std::invalid_argument for a residual (run_segmented has it) or a u8 output on a
// variant without u8_out.
void run(const Ukernel& uk, const PackedWeights& w, const uint8_t* a, size_t a_stride,
         float* c, size_t c_stride, size_t m_begin, size_t m_end, size_t p_begin,
         size_t p_end, const Epilogue& ep);

// run() with segmented A rows (see SegUkernelFn), and the Epilogue's residual. Throws
// std::invalid_argument when uk has no segmented twin or the shape does not split into
// segs whole 4-byte blocks.
void run_segmented(const Ukernel& uk, const PackedWeights& w, const uint8_t* a, size_t a_stride, size_t segs,
                   size_t seg_stride, float* c, size_t c_stride, size_t m_begin, size_t m_end, size_t p_begin,
                   size_t p_end, const Epilogue& ep);
// True when run_segmented can run uk on w with `segs` segments.
bool segmented_ok(const Ukernel& uk, const PackedWeights& w, size_t segs);

// Range of an m x k float block (row stride in bytes); includes 0 in the range.
void minmax(const float* x, size_t m, size_t k, size_t x_stride, float* lo, float* hi);
QuantParams choose_params(float lo, float hi);  // asymmetric u8 over [lo, hi]
// q = clamp(nearbyint(x / scale) + zero, 0, 255); writes k_padded bytes per row
// (padding zeros). Rounds half to even, the same in every variant. Returns false when any
// input is NaN or +-Inf (they are still written as defined: NaN -> 0), so callers need no
// separate scan for the NaN-output rule of the int8 layers (docs/HARDENING.md).
bool quantize(const float* x, size_t m, size_t k, size_t x_stride, uint8_t* q,
              size_t q_stride, QuantParams p);
// The u8 output epilogues' quantizer (both of its forms) over n values lying in [lo, hi],
// for tests: quantize()'s bytes. Returns false when a value is NaN or Inf (where the
// range admits them). AVX-512 when the CPU has it, else the scalar definition.
bool quantize_as_epilogue(const float* x, size_t n, uint8_t* q, QuantParams p, float lo, float hi, bool branch_free);

}  // namespace dsq::gemm_qu8
