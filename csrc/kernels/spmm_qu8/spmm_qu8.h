// Sparse int8 family: Y = clamp(fma(float(acc - a_zero * rowsum[n]), a_scale * w_scale[n],
// bias[n]), lo, hi) with acc[n][m] = sum_p qw[p] * qx_t[col_p][m] (exact int32), W an
// N x K CSR matrix of int8 values with a symmetric per-row scale, X quantized per tensor
// to u8 (scale a_scale, zero point a_zero) as the dense int8 path does. Lanes run along m
// (batch or pixels) as in spmm_f32: qx_t[k][m] (k rows of u8, x_stride bytes apart),
// y_t[n][m] f32 (y_stride bytes apart). The epilogue is computed in exactly this order
// (std::fma / vfmadd), so every variant is bit-identical to the scalar reference.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "base/aligned.h"
#include "base/cpu.h"

namespace dsq::spmm_qu8 {

struct PackedWeights {
  size_t n = 0, k = 0, nnz = 0;
  AlignedBuffer row_ptr;  // u32[n + 1]
  AlignedBuffer cols;     // u16 (k <= 65536) or u32 [nnz], increasing within a row
  bool cols_u16 = true;
  AlignedBuffer values;   // int8[nnz]
  AlignedBuffer w_scale;  // f32[n]
  AlignedBuffer rowsum;   // int32[n]: sum of the row's int8 values
  AlignedBuffer bias;     // f32[n]
  const uint32_t* rp() const { return row_ptr.as<uint32_t>(); }
  const uint16_t* col16() const { return cols.as<uint16_t>(); }
  const uint32_t* col32() const { return cols.as<uint32_t>(); }
  const int8_t* vals() const { return values.as<int8_t>(); }
  size_t bytes() const;  // bytes a call reads for the weights
};

struct Epilogue {
  int32_t a_zero;
  float a_scale;
  float lo, hi;
};

// row_ptr u32[n + 1], col u32[nnz] (< k, sorted within rows), q int8[nnz], w_scale f32[n],
// bias f32[n] or null. Throws std::invalid_argument on inconsistent input.
PackedWeights pack(size_t n, size_t k, const uint32_t* row_ptr, const uint32_t* col, const int8_t* q,
                   const float* w_scale, const float* bias);

using UkernelFn = void (*)(const PackedWeights& w, size_t m, const uint8_t* x_t, size_t x_stride, float* y_t,
                           size_t y_stride, size_t n_begin, size_t n_end, const Epilogue& ep);

struct Ukernel {
  const char* name;
  Isa isa;
  size_t mr;  // m tile; a kernel may read x_t rows up to a multiple of mr past m (the
              // caller's rows hold round_up(m, mr) bytes), never writes past m
  UkernelFn fn;
};

const std::vector<Ukernel>& all_ukernels();
const Ukernel& best_ukernel();
const Ukernel* find_ukernel(const char* name);

// Rows [n_begin, n_end) for all m columns.
void run(const Ukernel& uk, const PackedWeights& w, size_t m, const uint8_t* x_t, size_t x_stride, float* y_t,
         size_t y_stride, size_t n_begin, size_t n_end, const Epilogue& ep);

}  // namespace dsq::spmm_qu8
