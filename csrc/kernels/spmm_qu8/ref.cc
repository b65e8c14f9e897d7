// Scalar reference ukernel, packing, run() and dispatch of the sparse int8 family.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/spmm_qu8/spmm_qu8.h"

namespace dsq::spmm_qu8 {

#define DSQ_SPMM_QU8_UKERNEL(name, isa, mr)                                                               \
  void name(const PackedWeights& w, size_t m, const uint8_t* x_t, size_t x_stride, float* y_t, size_t y_stride, \
            size_t n_begin, size_t n_end, const Epilogue& ep);
#include "kernels/spmm_qu8/kernels.inc"

size_t PackedWeights::bytes() const { return (n + 1) * 4 + nnz * (cols_u16 ? 3 : 5) + n * 12; }

namespace {
template <typename Col>
void ref_rows(const PackedWeights& w, const Col* cols, size_t m, const uint8_t* x, size_t xs, float* y, size_t ys,
              size_t n_begin, size_t n_end, const Epilogue& ep) {
  constexpr size_t kMr = 4;
  const uint32_t* rp = w.rp();
  const int8_t* q = w.vals();
  for (size_t m0 = 0; m0 < m; m0 += kMr) {
    const size_t mt = std::min(kMr, m - m0);
    for (size_t n = n_begin; n < n_end; ++n) {
      int32_t acc[kMr] = {0, 0, 0, 0};
      for (uint32_t p = rp[n]; p < rp[n + 1]; ++p) {
        const uint8_t* xr = x + size_t(cols[p]) * xs + m0;
        for (size_t i = 0; i < mt; ++i) acc[i] += int32_t(q[p]) * int32_t(xr[i]);
      }
      const float scale = ep.a_scale * w.w_scale.as<float>()[n];
      const int32_t corr = ep.a_zero * w.rowsum.as<int32_t>()[n];
      float* yr = reinterpret_cast<float*>(reinterpret_cast<char*>(y) + n * ys) + m0;
      for (size_t i = 0; i < mt; ++i) {
        float v = std::fma(float(acc[i] - corr), scale, w.bias.as<float>()[n]);
        v = v > ep.lo ? v : ep.lo;  // vmaxps / vminps operand order (signed zeros, NaN)
        yr[i] = v < ep.hi ? v : ep.hi;
      }
    }
  }
}
}  // namespace

void spmm_qu8_4__scalar(const PackedWeights& w, size_t m, const uint8_t* x, size_t xs, float* y, size_t ys,
                        size_t n_begin, size_t n_end, const Epilogue& ep) {
  if (w.cols_u16) ref_rows(w, w.col16(), m, x, xs, y, ys, n_begin, n_end, ep);
  else ref_rows(w, w.col32(), m, x, xs, y, ys, n_begin, n_end, ep);
}

PackedWeights pack(size_t n, size_t k, const uint32_t* row_ptr, const uint32_t* col, const int8_t* q,
                   const float* w_scale, const float* bias) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("spmm_qu8::pack: " + what); };
  if (!row_ptr || row_ptr[0] != 0) fail("row_ptr must start at 0");
  for (size_t r = 0; r < n; ++r)
    if (row_ptr[r + 1] < row_ptr[r]) fail("row_ptr decreases at row " + std::to_string(r));
  const size_t nnz = row_ptr[n];
  PackedWeights w;
  w.n = n;
  w.k = k;
  w.nnz = nnz;
  w.cols_u16 = k <= 65536;
  w.row_ptr.resize((n + 1) * 4);
  std::memcpy(w.row_ptr.data(), row_ptr, (n + 1) * 4);
  w.cols.resize(std::max<size_t>(nnz, 1) * (w.cols_u16 ? 2 : 4));
  w.values.resize(std::max<size_t>(nnz, 1));
  w.w_scale.resize(std::max<size_t>(n, 1) * 4);
  w.rowsum.resize(std::max<size_t>(n, 1) * 4);
  w.bias.resize(std::max<size_t>(n, 1) * 4);
  for (size_t r = 0; r < n; ++r) {
    int32_t sum = 0;
    for (uint32_t p = row_ptr[r]; p < row_ptr[r + 1]; ++p) {
      if (col[p] >= k) fail("column " + std::to_string(col[p]) + " >= k at entry " + std::to_string(p));
      if (p > row_ptr[r] && col[p] <= col[p - 1]) fail("columns not increasing in row " + std::to_string(r));
      if (w.cols_u16) w.cols.as<uint16_t>()[p] = static_cast<uint16_t>(col[p]);
      else w.cols.as<uint32_t>()[p] = col[p];
      w.values.as<int8_t>()[p] = q[p];
      sum += q[p];
    }
    w.rowsum.as<int32_t>()[r] = sum;
    w.w_scale.as<float>()[r] = w_scale[r];
    w.bias.as<float>()[r] = bias ? bias[r] : 0.f;
  }
  return w;
}

const std::vector<Ukernel>& all_ukernels() {
  static const std::vector<Ukernel> list = {
#define DSQ_SPMM_QU8_UKERNEL(name, isa, mr) Ukernel{#name, isa, mr, &name},
#include "kernels/spmm_qu8/kernels.inc"
  };
  return list;
}

const Ukernel& best_ukernel() {
  const Ukernel* b = &all_ukernels()[0];
  for (const Ukernel& uk : all_ukernels())
    if (isa_supported(uk.isa) && static_cast<int>(uk.isa) > static_cast<int>(b->isa)) b = &uk;
  return *b;
}

const Ukernel* find_ukernel(const char* name) {
  if (!name) return nullptr;
  for (const Ukernel& uk : all_ukernels())
    if (!std::strcmp(uk.name, name)) return isa_supported(uk.isa) ? &uk : nullptr;
  return nullptr;
}

void run(const Ukernel& uk, const PackedWeights& w, size_t m, const uint8_t* x_t, size_t x_stride, float* y_t,
         size_t y_stride, size_t n_begin, size_t n_end, const Epilogue& ep) {
  n_end = std::min(n_end, w.n);
  if (m == 0 || n_begin >= n_end) return;
  uk.fn(w, m, x_t, x_stride, y_t, y_stride, n_begin, n_end, ep);
}

}  // namespace dsq::spmm_qu8
