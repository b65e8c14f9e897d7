// Scalar reference ukernel (always built, always tested, the fallback), the weight
// packing, the tile loop and the dispatch.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>

#include "kernels/gemm_f32/gemm_f32.h"
#include "kernels/gemm_f32/ukernels.h"

namespace dsq::gemm_f32 {

namespace {
constexpr size_t kRefMr = 4;
constexpr size_t kRefNr = 8;

inline const float* row_ptr(const float* p, size_t stride_bytes, size_t i) {
  return reinterpret_cast<const float*>(reinterpret_cast<const char*>(p) + i * stride_bytes);
}
inline float* row_ptr(float* p, size_t stride_bytes, size_t i) {
  return reinterpret_cast<float*>(reinterpret_cast<char*>(p) + i * stride_bytes);
}
}  // namespace

void gemm_f32_4x8__scalar(size_t m, size_t k, const float* a, size_t a_stride,
                          const float* packed_panel, const float* bias_panel, float* c,
                          size_t c_stride, size_t n_valid, float lo, float hi) {
  float acc[kRefMr][kRefNr];
  for (size_t i = 0; i < m; ++i)
    for (size_t j = 0; j < kRefNr; ++j) acc[i][j] = bias_panel[j];
  for (size_t kk = 0; kk < k; ++kk) {
    const float* w = packed_panel + kk * kRefNr;
    for (size_t i = 0; i < m; ++i) {
      const float av = row_ptr(a, a_stride, i)[kk];
      for (size_t j = 0; j < kRefNr; ++j) acc[i][j] += av * w[j];
    }
  }
  for (size_t i = 0; i < m; ++i) {
    float* ci = row_ptr(c, c_stride, i);
    for (size_t j = 0; j < n_valid; ++j) ci[j] = std::min(std::max(acc[i][j], lo), hi);
  }
}

// ---------------------------------------------------------------------------------------
// Packing: panel p holds columns [p*nr, p*nr+nr), k-major, zero padded past n.

PackedWeights pack(const float* w, const float* bias, size_t n, size_t k, size_t nr) {
  PackedWeights pw;
  pw.n = n;
  pw.k = k;
  pw.nr = nr;
  const size_t panels = (n + nr - 1) / nr;
  pw.panels.resize(panels * k * nr * sizeof(float));  // zeroed
  pw.bias.resize(panels * nr * sizeof(float));        // zeroed
  float* dst = pw.panels.as<float>();
  for (size_t p = 0; p < panels; ++p) {
    const size_t n0 = p * nr;
    const size_t nv = std::min(nr, n - n0);
    float* panel = dst + p * k * nr;
    for (size_t j = 0; j < nv; ++j) {
      const float* wrow = w + (n0 + j) * k;
      for (size_t kk = 0; kk < k; ++kk) panel[kk * nr + j] = wrow[kk];
    }
  }
  if (bias && n) std::memcpy(pw.bias.as<float>(), bias, n * sizeof(float));
  return pw;
}

// ---------------------------------------------------------------------------------------
// Tile loop: panels outer (the packed panel stays in cache), row tiles inner.

void run(const Ukernel& uk, const PackedWeights& w, const float* a, size_t a_stride,
         float* c, size_t c_stride, size_t m_begin, size_t m_end, size_t p_begin,
         size_t p_end, float lo, float hi) {
  if (uk.nr != w.nr) throw std::invalid_argument("gemm_f32::run: ukernel nr != packed nr");
  const size_t mr = uk.mr;
  const size_t nr = w.nr;
  p_end = std::min(p_end, w.panel_count());
  if (m_begin >= m_end || p_begin >= p_end) return;
  for (size_t p = p_begin; p < p_end; ++p) {
    const float* panel = w.panel(p);
    const float* bias = w.bias_panel(p);
    const size_t n0 = p * nr;
    const size_t n_valid = std::min(nr, w.n - n0);
    for (size_t m0 = m_begin; m0 < m_end; m0 += mr) {
      const size_t mt = std::min(mr, m_end - m0);
      uk.fn(mt, w.k, row_ptr(a, a_stride, m0), a_stride, panel, bias,
            row_ptr(c, c_stride, m0) + n0, c_stride, n_valid, lo, hi);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Dispatch.

const std::vector<Ukernel>& all_ukernels() {
  static const std::vector<Ukernel> list = {
#define DSQ_GEMM_F32_UKERNEL(name, isa, mr, nr) Ukernel{#name, isa, mr, nr, &name},
#include "kernels/gemm_f32/kernels.inc"
  };
  return list;
}

const Ukernel& best_ukernel() {
  static const Ukernel* best = [] {
    const std::vector<Ukernel>& list = all_ukernels();
    const Ukernel* b = &list.front();
    for (const Ukernel& uk : list) {
      if (!isa_supported(uk.isa)) continue;
      const int lvl = static_cast<int>(uk.isa), blvl = static_cast<int>(b->isa);
      if (lvl > blvl || (lvl == blvl && uk.mr * uk.nr > b->mr * b->nr)) b = &uk;
    }
    return b;
  }();
  return *best;
}

const Ukernel& best_ukernel_for(size_t n, size_t rows) {
  const Ukernel& dflt = best_ukernel();
  if (n == 0) return dflt;
  // 8 independent 16-lane FMA chains keep two 4-cycle FMA pipes busy (AVX-512, the ISA
  // with several panel widths); a smaller tile takes that long anyway.
  static constexpr size_t kMinTileWork = 8 * 16;
  const auto cost = [n, rows](const Ukernel& uk) {
    const size_t panels = (n + uk.nr - 1) / uk.nr;
    if (rows == 0) return panels * uk.nr;
    const size_t tiles = (rows + uk.mr - 1) / uk.mr;
    return panels * tiles * std::max(std::min(rows, uk.mr) * uk.nr, kMinTileWork);
  };
  const Ukernel* best = &dflt;
  for (const Ukernel& uk : all_ukernels()) {
    if (uk.isa != dflt.isa) continue;
    if (cost(uk) < cost(*best) || (cost(uk) == cost(*best) && uk.nr > best->nr)) best = &uk;
  }
  return *best;
}

const Ukernel* find_ukernel(const char* name) {
  if (!name) return nullptr;
  for (const Ukernel& uk : all_ukernels())
    if (!std::strcmp(uk.name, name)) return isa_supported(uk.isa) ? &uk : nullptr;
  return nullptr;
}

}  // namespace dsq::gemm_f32
