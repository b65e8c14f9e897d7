// Private: declarations of every ukernel in kernels.inc (the per-ISA files define them),
// and small helpers shared by the kernel files.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/spmm_f32/spmm_f32.h"

namespace dsq::spmm_f32 {

#define DSQ_SPMM_F32_UKERNEL(name, isa, mr, codebook, spmv, layout)                       \
  void name(const PackedWeights& w, size_t m, const float* x_t, size_t x_stride, float* y_t, \
            size_t y_stride, size_t n_begin, size_t n_end, float lo, float hi);
#include "kernels/spmm_f32/kernels.inc"

namespace detail {
inline const float* row_of(const float* p, size_t stride_bytes, size_t i) {
  return reinterpret_cast<const float*>(reinterpret_cast<const char*>(p) + i * stride_bytes);
}
inline float* row_of(float* p, size_t stride_bytes, size_t i) {
  return reinterpret_cast<float*>(reinterpret_cast<char*>(p) + i * stride_bytes);
}
// Weight of nonzero p of row n: f32 value or table[code].
struct F32Values {
  const float* v;
  explicit F32Values(const PackedWeights& w, size_t) : v(w.vals()) {}
  float operator()(size_t p) const { return v[p]; }
};
struct CodebookValues {
  const uint8_t* c;
  const float* t;
  CodebookValues(const PackedWeights& w, size_t n)
      : c(w.code()), t(w.tab() + (w.table_per_row ? n * w.table_stride : 0)) {}
  float operator()(size_t p) const { return t[c[p]]; }
};
}  // namespace detail

}  // namespace dsq::spmm_f32
