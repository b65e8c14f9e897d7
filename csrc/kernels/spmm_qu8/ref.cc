// Scalar reference ukernel, packing, run() and dispatch of the sparse int8 family.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/gemm_qu8/ukernels.h"
#include "kernels/spmm_qu8/spmm_qu8.h"

namespace dsq::spmm_qu8 {

#define DSQ_SPMM_QU8_UKERNEL(name, isa, mr, spmv, layout)                                                 \
  void name(const PackedWeights& w, size_t m, const uint8_t* x_t, size_t x_stride, float* y_t, size_t y_stride, \
            size_t n_begin, size_t n_end, const Epilogue& ep);
#include "kernels/spmm_qu8/kernels.inc"

size_t PackedWeights::bytes() const { return (n + 1) * 4 + nnz * (cols_u16 ? 3 : 5) + n * 12; }
size_t PackedWeights::quad_tile_bytes() const {
  return has_quad_tiles ? (groups() + 1) * 4 + groups() * kTileRows * 4 + quad_tile_steps * (4 + 64 + kTileRows) + n * 12
                        : 0;
}
size_t PackedWeights::quad_bytes() const { return has_quads ? (n + 1) * 4 + quads * (4 + kQuad) + n * 12 : 0; }
size_t PackedWeights::tile_bytes() const {
  return has_tiles ? (groups() + 1) * 4 + tile_steps * (kTileStepBytes + 4) + n * 12 : 0;
}

namespace detail {
const uint8_t* contiguous_x(const uint8_t* x, size_t x_stride, size_t n) {
  if (x_stride == 1) return x;
  thread_local AlignedBuffer buf;
  const size_t need = (n + kTileCols - 1) / kTileCols * kTileCols;
  if (buf.size() < need) buf.resize(need);
  uint8_t* out = buf.as<uint8_t>();
  for (size_t i = 0; i < n; ++i) out[i] = x[i * x_stride];
  return out;
}
}  // namespace detail

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

// Reads the quads (x as quads: lane i of quad column b at x_t + b * xs + 4 i) and writes
// pixel-major (see Epilogue).
void spmm_qu8_quad_4__scalar(const PackedWeights& w, size_t m, const uint8_t* x, size_t xs, float* y, size_t ys,
                             size_t n_begin, size_t n_end, const Epilogue& ep) {
  const uint32_t* qrp = w.quad_row_ptr.as<uint32_t>();
  const uint32_t* qcol = w.quad_cols.as<uint32_t>();
  const int8_t* qv = w.quad_vals.as<int8_t>();
  for (size_t i = 0; i < m; ++i) {
    size_t pixel = i;
    if (ep.grid_w) {
      const size_t g = ep.grid_base + i;
      if (g % ep.grid_w >= ep.out_w) continue;
      pixel = g / ep.grid_w * ep.out_w + g % ep.grid_w;
    }
    char* yp = reinterpret_cast<char*>(y) + pixel * ys;
    const float* rp = ep.residual ? reinterpret_cast<const float*>(reinterpret_cast<const char*>(ep.residual) + pixel * ys)
                                  : nullptr;
    for (size_t n = n_begin; n < n_end; ++n) {
      int32_t acc = 0;
      for (uint32_t p = qrp[n]; p < qrp[n + 1]; ++p) {
        const uint8_t* xq = x + size_t(qcol[p]) * xs + kQuad * i;
        for (size_t j = 0; j < kQuad; ++j) acc += int32_t(qv[kQuad * p + j]) * int32_t(xq[j]);
      }
      const float scale = ep.a_scale * w.w_scale.as<float>()[n];
      const int32_t corr = ep.a_zero * w.rowsum.as<int32_t>()[n];
      float v = std::fma(float(acc - corr), scale, w.bias.as<float>()[n]);
      v = v > ep.lo ? v : ep.lo;
      v = v < ep.hi ? v : ep.hi;
      if (rp) v = std::min(std::max(v + rp[n], ep.res_lo), ep.res_hi);  // add_residual's expression
      if (!ep.out_u8) {
        reinterpret_cast<float*>(yp)[n] = v;
        continue;
      }
      gemm_qu8::store_code(reinterpret_cast<uint8_t*>(yp) + n, v, ep.out_scale, ep.out_zero, ep.out_bad);
    }
  }
}

// Reads the quad tiles lane by lane (m == 1; x as dwords, quad b at byte 4b).
void spmv_qu8_quad16__scalar(const PackedWeights& w, size_t, const uint8_t* x, size_t, float* y, size_t ys,
                             size_t n_begin, size_t n_end, const Epilogue& ep) {
  const uint32_t* step_ptr = w.quad_tile_step_ptr.as<uint32_t>();
  const uint32_t* rows = w.quad_tile_rows.as<uint32_t>();
  const uint32_t* window = w.quad_tile_window.as<uint32_t>();
  const int8_t* wq = w.quad_tile_w.as<int8_t>();
  const uint8_t* idx = w.quad_tile_idx.as<uint8_t>();
  for (size_t g = n_begin / kTileRows; g * kTileRows < n_end; ++g) {
    int32_t acc[kTileRows] = {};
    for (uint32_t s = step_ptr[g]; s < step_ptr[g + 1]; ++s)
      for (size_t j = 0; j < kTileRows; ++j) {
        const size_t quad = size_t(window[s]) * kQuadWindow + idx[size_t(s) * kTileRows + j];
        for (size_t i = 0; i < kQuad && quad * kQuad + i < w.k; ++i)  // x ends at k (its weights there are 0)
          acc[j] += int32_t(wq[(size_t(s) * kTileRows + j) * kQuad + i]) * int32_t(x[quad * kQuad + i]);
      }
    for (size_t j = 0; j < kTileRows; ++j) {
      const size_t n = rows[g * kTileRows + j];
      if (n >= w.n) continue;
      const float scale = ep.a_scale * w.w_scale.as<float>()[n];
      const int32_t corr = ep.a_zero * w.rowsum.as<int32_t>()[n];
      float v = std::fma(float(acc[j] - corr), scale, w.bias.as<float>()[n]);
      v = v > ep.lo ? v : ep.lo;
      *reinterpret_cast<float*>(reinterpret_cast<char*>(y) + n * ys) = v < ep.hi ? v : ep.hi;
    }
  }
}

// Reads the row tiles lane by lane (m == 1). Unused slots (index 0, weight 0) add 0.
void spmv_qu8_16x64__scalar(const PackedWeights& w, size_t, const uint8_t* x, size_t xs, float* y, size_t ys,
                            size_t n_begin, size_t n_end, const Epilogue& ep) {
  const uint32_t* step_ptr = w.tile_step_ptr.as<uint32_t>();
  const uint32_t* window = w.tile_window.as<uint32_t>();
  const uint8_t* data = w.tile_data.as<uint8_t>();
  for (size_t g = n_begin / kTileRows; g * kTileRows < n_end; ++g) {
    int32_t acc[kTileRows] = {};
    for (uint32_t s = step_ptr[g]; s < step_ptr[g + 1]; ++s) {
      const uint8_t* idx = data + size_t(s) * kTileStepBytes;
      const int8_t* wq = reinterpret_cast<const int8_t*>(idx + kTileCols);
      const size_t base = size_t(window[s]) * kTileCols;
      for (size_t b = 0; b < kTileCols; ++b)
        if (wq[b]) acc[b / 4] += int32_t(wq[b]) * int32_t(x[(base + idx[b]) * xs]);
    }
    for (size_t j = 0; j < kTileRows; ++j) {
      const size_t n = g * kTileRows + j;
      if (n < n_begin || n >= n_end) continue;
      const float scale = ep.a_scale * w.w_scale.as<float>()[n];
      const int32_t corr = ep.a_zero * w.rowsum.as<int32_t>()[n];
      float v = std::fma(float(acc[j] - corr), scale, w.bias.as<float>()[n]);
      v = v > ep.lo ? v : ep.lo;
      *reinterpret_cast<float*>(reinterpret_cast<char*>(y) + n * ys) = v < ep.hi ? v : ep.hi;
    }
  }
}

size_t count_quads(const PackedWeights& w) {
  const uint32_t* rp = w.rp();
  auto col = [&](uint32_t p) -> size_t { return w.cols_u16 ? w.col16()[p] : w.col32()[p]; };
  size_t quads = 0;
  for (size_t r = 0; r < w.n; ++r)
    for (uint32_t p = rp[r]; p < rp[r + 1]; ++p) quads += p == rp[r] || col(p) / kQuad != col(p - 1) / kQuad;
  return quads;
}

void build_quads(PackedWeights& w) {
  if (w.has_quads) return;
  const uint32_t* rp = w.rp();
  auto col = [&](uint32_t p) -> size_t { return w.cols_u16 ? w.col16()[p] : w.col32()[p]; };
  std::vector<uint32_t> row_ptr(w.n + 1, 0), cols;
  std::vector<int8_t> vals;
  for (size_t r = 0; r < w.n; ++r) {
    for (uint32_t p = rp[r]; p < rp[r + 1]; ++p) {
      const size_t b = col(p) / kQuad;
      if (cols.empty() || row_ptr[r] == cols.size() || cols.back() != b) {  // columns increase: a new quad
        cols.push_back(static_cast<uint32_t>(b));
        vals.insert(vals.end(), kQuad, int8_t(0));
      }
      vals[(cols.size() - 1) * kQuad + col(p) % kQuad] = w.vals()[p];
    }
    if (cols.size() > UINT32_MAX) throw std::invalid_argument("spmm_qu8::build_quads: too many quads");
    row_ptr[r + 1] = static_cast<uint32_t>(cols.size());
  }
  w.quads = cols.size();
  w.quad_row_ptr.resize((w.n + 1) * 4);
  std::memcpy(w.quad_row_ptr.data(), row_ptr.data(), (w.n + 1) * 4);
  w.quad_cols.resize(std::max<size_t>(w.quads, 1) * 4);
  if (w.quads) std::memcpy(w.quad_cols.data(), cols.data(), w.quads * 4);
  w.quad_vals.resize(std::max<size_t>(w.quads, 1) * kQuad);
  if (w.quads) std::memcpy(w.quad_vals.data(), vals.data(), vals.size());
  w.has_quads = true;
}

void build_quad_tiles(PackedWeights& w) {
  if (w.has_quad_tiles) return;
  if (!w.has_quads) throw std::invalid_argument("spmm_qu8::build_quad_tiles: build_quads first");
  const size_t groups = w.groups();
  const uint32_t* qrp = w.quad_row_ptr.as<uint32_t>();
  const uint32_t* qc = w.quad_cols.as<uint32_t>();
  const uint8_t* qv = w.quad_vals.as<uint8_t>();
  std::vector<uint32_t> order(w.n);
  for (size_t r = 0; r < w.n; ++r) order[r] = static_cast<uint32_t>(r);
  // Most quads first (ties: lower row first), so each group's lanes are about as long.
  std::stable_sort(order.begin(), order.end(),
                   [&](uint32_t a, uint32_t b) { return qrp[a + 1] - qrp[a] > qrp[b + 1] - qrp[b]; });
  std::vector<uint32_t> rows(groups * kTileRows, static_cast<uint32_t>(w.n)), step_ptr(groups + 1, 0), windows;
  std::vector<uint8_t> wts, idx;
  for (size_t g = 0; g < groups; ++g) {
    step_ptr[g] = static_cast<uint32_t>(windows.size());
    uint32_t p[kTileRows], e[kTileRows];
    for (size_t j = 0; j < kTileRows; ++j) {
      const bool real = g * kTileRows + j < w.n;
      rows[g * kTileRows + j] = real ? order[g * kTileRows + j] : static_cast<uint32_t>(w.n);
      p[j] = real ? qrp[rows[g * kTileRows + j]] : 0;
      e[j] = real ? qrp[rows[g * kTileRows + j] + 1] : 0;
    }
    for (;;) {
      size_t win = SIZE_MAX;  // the lowest window any lane still has quads in
      for (size_t j = 0; j < kTileRows; ++j)
        if (p[j] < e[j]) win = std::min<size_t>(win, qc[p[j]] / kQuadWindow);
      if (win == SIZE_MAX) break;
      for (;;) {  // steps of this window, one quad per lane each
        bool any = false;
        const size_t s = windows.size();
        wts.resize((s + 1) * 64, 0);
        idx.resize((s + 1) * kTileRows, 0);
        for (size_t j = 0; j < kTileRows; ++j)
          if (p[j] < e[j] && qc[p[j]] / kQuadWindow == win) {
            any = true;
            idx[s * kTileRows + j] = static_cast<uint8_t>(qc[p[j]] % kQuadWindow);
            std::memcpy(&wts[s * 64 + 4 * j], qv + size_t(p[j]) * kQuad, 4);
            ++p[j];
          }
        if (!any) {
          wts.resize(s * 64);
          idx.resize(s * kTileRows);
          break;
        }
        windows.push_back(static_cast<uint32_t>(win));
      }
    }
    if (windows.size() > UINT32_MAX) throw std::invalid_argument("spmm_qu8::build_quad_tiles: too many steps");
  }
  step_ptr[groups] = static_cast<uint32_t>(windows.size());
  const size_t steps = windows.size();
  w.quad_tile_steps = steps;
  w.quad_tile_step_ptr.resize((groups + 1) * 4);
  std::memcpy(w.quad_tile_step_ptr.data(), step_ptr.data(), (groups + 1) * 4);
  w.quad_tile_rows.resize(std::max<size_t>(groups, 1) * kTileRows * 4);
  if (groups) std::memcpy(w.quad_tile_rows.data(), rows.data(), groups * kTileRows * 4);
  w.quad_tile_window.resize(std::max<size_t>(steps, 1) * 4);
  w.quad_tile_w.resize(std::max<size_t>(steps, 1) * 64);
  w.quad_tile_idx.resize(std::max<size_t>(steps, 1) * kTileRows);
  if (steps) {
    std::memcpy(w.quad_tile_window.data(), windows.data(), steps * 4);
    std::memcpy(w.quad_tile_w.data(), wts.data(), steps * 64);
    std::memcpy(w.quad_tile_idx.data(), idx.data(), steps * kTileRows);
  }
  w.has_quad_tiles = true;
}

void build_row_tiles(PackedWeights& w) {
  if (w.has_tiles) return;
  const size_t groups = w.groups();
  const uint32_t* rp = w.rp();
  auto col = [&](uint32_t p) -> size_t { return w.cols_u16 ? w.col16()[p] : w.col32()[p]; };
  // Two passes over the same walk: count the steps, then fill them.
  std::vector<uint32_t> step_ptr(groups + 1, 0);
  std::vector<uint32_t> windows;
  std::vector<uint8_t> data;
  for (int fill = 0; fill < 2; ++fill) {
    size_t steps = 0;
    for (size_t g = 0; g < groups; ++g) {
      step_ptr[g] = static_cast<uint32_t>(steps);
      const size_t r0 = g * kTileRows, lanes = std::min(kTileRows, w.n - r0);
      uint32_t p[kTileRows], e[kTileRows];
      for (size_t j = 0; j < lanes; ++j) p[j] = rp[r0 + j], e[j] = rp[r0 + j + 1];
      for (;;) {
        size_t win = SIZE_MAX;  // the lowest window any lane still has nonzeros in
        for (size_t j = 0; j < lanes; ++j)
          if (p[j] < e[j]) win = std::min(win, col(p[j]) / kTileCols);
        if (win == SIZE_MAX) break;
        for (;;) {  // steps of this window, 4 nonzeros per lane each
          bool any = false;
          for (size_t j = 0; j < lanes; ++j) {
            for (size_t i = 0; i < 4 && p[j] < e[j] && col(p[j]) / kTileCols == win; ++i, ++p[j]) {
              any = true;
              if (fill) {
                uint8_t* st = data.data() + steps * kTileStepBytes;
                st[4 * j + i] = static_cast<uint8_t>(col(p[j]) - win * kTileCols);
                st[kTileCols + 4 * j + i] = static_cast<uint8_t>(w.vals()[p[j]]);
              }
            }
          }
          if (!any) break;
          if (fill) windows[steps] = static_cast<uint32_t>(win);
          ++steps;
        }
      }
    }
    step_ptr[groups] = static_cast<uint32_t>(steps);
    if (steps > UINT32_MAX) throw std::invalid_argument("spmm_qu8::build_row_tiles: too many steps");
    if (!fill) {
      windows.assign(steps, 0);
      data.assign(steps * kTileStepBytes, 0);
    }
  }
  w.tile_steps = windows.size();
  w.tile_step_ptr.resize((groups + 1) * 4);
  std::memcpy(w.tile_step_ptr.data(), step_ptr.data(), (groups + 1) * 4);
  w.tile_window.resize(std::max<size_t>(w.tile_steps, 1) * 4);
  if (w.tile_steps) std::memcpy(w.tile_window.data(), windows.data(), w.tile_steps * 4);
  w.tile_data.resize(std::max<size_t>(w.tile_steps, 1) * kTileStepBytes);
  if (w.tile_steps) std::memcpy(w.tile_data.data(), data.data(), data.size());
  w.has_tiles = true;
}

PackedWeights pack(size_t n, size_t k, const uint32_t* row_ptr, const uint32_t* col, const int8_t* q,
                   const float* w_scale, const float* bias, bool build_tiles) {
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
  if (build_tiles) build_row_tiles(w);
  return w;
}

const std::vector<Ukernel>& all_ukernels() {
  static const std::vector<Ukernel> list = {
#define DSQ_SPMM_QU8_UKERNEL(name, isa, mr, spmv, layout) Ukernel{#name, isa, mr, &name, spmv, layout},
#include "kernels/spmm_qu8/kernels.inc"
  };
  return list;
}

const Ukernel& best_ukernel() {
  const Ukernel* b = &all_ukernels()[0];
  for (const Ukernel& uk : all_ukernels())
    if (!uk.spmv && uk.layout == Layout::kCsr && isa_supported(uk.isa) &&
        static_cast<int>(uk.isa) > static_cast<int>(b->isa))
      b = &uk;
  return *b;
}

const Ukernel* best_quad_ukernel() {
  const Ukernel* b = nullptr;
  for (const Ukernel& uk : all_ukernels())
    if (uk.layout == Layout::kQuads && uk.isa != Isa::kScalar && isa_supported(uk.isa) &&
        (!b || static_cast<int>(uk.isa) > static_cast<int>(b->isa)))
      b = &uk;
  return b;
}

bool compatible(const Ukernel& uk, const PackedWeights& w, size_t m) {
  if (uk.spmv && m != 1) return false;
  if (uk.layout == Layout::kQuads) return w.has_quads;
  if (uk.layout == Layout::kQuadTiles) return w.has_quad_tiles;
  return uk.layout != Layout::kRowTiles || w.has_tiles;
}

const Ukernel& best_spmv_ukernel(const PackedWeights& w) {
  // The scalar tile reader is a layout check, not faster than the CSR reference: only a
  // SIMD tile kernel replaces the reference.
  // Quad tiles first: the caller built them because the nonzeros fill their quads.
  const Ukernel* b = &all_ukernels()[0];
  for (const Layout layout : {Layout::kQuadTiles, Layout::kRowTiles}) {
    for (const Ukernel& uk : all_ukernels())
      if (uk.spmv && uk.layout == layout && uk.isa != Isa::kScalar && isa_supported(uk.isa) && compatible(uk, w, 1) &&
          static_cast<int>(uk.isa) > static_cast<int>(b->isa))
        b = &uk;
    if (b != &all_ukernels()[0]) break;
  }
  return *b;
}

const Ukernel* find_ukernel(const char* name) {
  if (!name) return nullptr;
  for (const Ukernel& uk : all_ukernels())
    if (!std::strcmp(uk.name, name)) return isa_supported(uk.isa) ? &uk : nullptr;
  return nullptr;
}

void run(const Ukernel& uk, const PackedWeights& w, size_t m, const uint8_t* x_t, size_t x_stride, float* y_t,
         size_t y_stride, size_t n_begin, size_t n_end, const Epilogue& ep_in) {
  Epilogue ep = ep_in;
  if (ep.out_u8 && !ep.out_prepared.valid)
    ep.out_prepared = gemm_qu8::prepare_out_quant(gemm_qu8::QuantParams{ep.out_scale, ep.out_zero},
                                                  ep.residual ? -INFINITY : ep.lo, ep.residual ? INFINITY : ep.hi);
  if (!compatible(uk, w, m))
    throw std::invalid_argument(std::string("spmm_qu8::run: ") + uk.name +
                                (uk.spmv && m != 1 ? " runs only m == 1, got m = " + std::to_string(m)
                                 : uk.layout == Layout::kQuads ? std::string(" needs the quads (build_quads)")
                                 : uk.layout == Layout::kQuadTiles ? std::string(" needs the quad tiles (build_quad_tiles)")
                                                               : std::string(" needs the row tiles (build_row_tiles)")));
  n_end = std::min(n_end, w.n);
  if (m == 0 || n_begin >= n_end) return;
  if (uk.layout == Layout::kQuadTiles && (n_begin % kTileRows != 0 || (n_end % kTileRows != 0 && n_end != w.n)))
    throw std::invalid_argument(std::string("spmm_qu8::run: ") + uk.name + " takes row ranges of whole 16-row groups");
  if (uk.spmv && x_stride != 1) {
    x_t = detail::contiguous_x(x_t, x_stride, w.k);
    x_stride = 1;
  }
  uk.fn(w, m, x_t, x_stride, y_t, y_stride, n_begin, n_end, ep);
}

}  // namespace dsq::spmm_qu8
