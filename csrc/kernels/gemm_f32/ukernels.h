// Private: declarations of every ukernel in kernels.inc (the per-ISA files define them).
#pragma once
#include <cstddef>

#include "base/cpu.h"

namespace dsq::gemm_f32 {

#define DSQ_GEMM_F32_UKERNEL(name, isa, mr, nr)                                        \
  void name(size_t m, size_t k, const float* a, size_t a_stride, const float* packed_panel, \
            const float* bias_panel, float* c, size_t c_stride, size_t n_valid, float lo,  \
            float hi);
#include "kernels/gemm_f32/kernels.inc"

}  // namespace dsq::gemm_f32
