// spmm_qu8: every supported variant against an independent int64 model of the integer
// arithmetic (exact accumulators; the epilogue recomputed with std::fma in the documented
// order, so the float results must match bit for bit), on edge cases: empty rows, rows of
// 1..9 entries (the VNNI kernel's 1-3 leftover entries), a dense row, m from 1 to 130 (m
// remainders of the 64-lane tile), u32 columns (k > 65536), extreme values (u8 0/255,
// int8 -128/127), clamping.
// The batch-1 row-tile kernels (spmv_qu8_16x64__*) against the scalar CSR reference at
// m = 1 over a grid of n, k (window tails), densities (empty rows, > 4 nonzeros of a row in
// one window, whole rows inside one window), zero points 0/255, relu and a finite clamp,
// strided x and y, row ranges cutting 16-row groups. DSQ_BENCH_QTILE=1 also times them.
// The quad kernels (spmm_qu8_quad_*) read the same cases with x as quads, plus block-pruned
// cases (full and partial quads, k cutting the last quad, m tails).
#include <algorithm>
#include <limits>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "check.h"
#include "kernels/gemm_qu8/gemm_qu8.h"
#include "kernels/spmm_qu8/spmm_qu8.h"

using namespace dsq;

namespace {

std::mt19937_64 rng(7);

struct Case {
  size_t n, k;
  std::vector<uint32_t> row_ptr, col;
  std::vector<int8_t> q;
  std::vector<float> w_scale, bias;
};

// An n x k case with no rows yet.
Case start_case(size_t n, size_t k) {
  Case c;
  c.n = n;
  c.k = k;
  c.row_ptr.push_back(0);
  return c;
}

// Closes the row being built: its row_ptr end, a random scale and bias.
void end_row(Case& c, std::uniform_real_distribution<double>& u) {
  c.row_ptr.push_back(static_cast<uint32_t>(c.col.size()));
  c.w_scale.push_back(static_cast<float>(0.001 + u(rng) * 0.01));
  c.bias.push_back(static_cast<float>(u(rng) - 0.5));
}

Case make_case(size_t n, size_t k, double density, bool extremes) {
  Case c = start_case(n, k);
  std::uniform_real_distribution<double> u(0, 1);
  for (size_t r = 0; r < n; ++r) {
    const size_t want = r == 0 ? 0 : r < 10 ? r : r == n - 1 ? k : 0;  // fixed counts first, last row dense
    for (size_t j = 0; j < k; ++j) {
      const bool take = want ? (want == k || j * want / k != (j + 1) * want / k) : (r >= 10 && u(rng) < density);
      if (!take) continue;
      c.col.push_back(static_cast<uint32_t>(j));
      int v = static_cast<int>(rng() % 256) - 128;
      if (extremes) v = (rng() & 1) ? 127 : -128;
      c.q.push_back(static_cast<int8_t>(v));
    }
    end_row(c, u);
  }
  return c;
}

// A quad kernel's pixel-major output: lane i of row r at y[pixel(i) * n + r]. Checked
// plain (pixel = lane), for a row range, and with a grid mapping (grid_base, grid_w,
// out_w: lanes of padding columns dropped) plus a fused residual with a clamp.
void check_quad_output(const spmm_qu8::Ukernel& uk, const spmm_qu8::PackedWeights& w, const Case& c, size_t m,
                       const uint8_t* xq, size_t qstride, const spmm_qu8::Epilogue& ep, const std::vector<float>& want,
                       const char* what) {
  std::vector<float> y(m * c.n, -99.f);
  spmm_qu8::run(uk, w, m, xq, qstride, y.data(), c.n * 4, 0, c.n, ep);
  size_t bad = 0;
  for (size_t r = 0; r < c.n; ++r)
    for (size_t i = 0; i < m; ++i) bad += std::memcmp(&y[i * c.n + r], &want[r * m + i], 4) != 0;
  DSQ_CHECK(bad == 0, "%s %s: n=%zu k=%zu m=%zu: %zu outputs differ", what, uk.name, c.n, c.k, m, bad);
  std::fill(y.begin(), y.end(), -99.f);
  spmm_qu8::run(uk, w, m, xq, qstride, y.data(), c.n * 4, 3, c.n / 2, ep);
  bool only = true;
  for (size_t r = 0; r < c.n; ++r)
    for (size_t i = 0; i < m; ++i) {
      const bool inside = r >= 3 && r < c.n / 2;
      only &= inside ? std::memcmp(&y[i * c.n + r], &want[r * m + i], 4) == 0 : y[i * c.n + r] == -99.f;
    }
  DSQ_CHECK(only, "%s %s: row range 3..%zu", what, uk.name, c.n / 2);
  // Grid: lane i is column g = base + i of rows 7 wide, of which the first 5 are kept.
  spmm_qu8::Epilogue eg = ep;
  eg.grid_base = 3;
  eg.grid_w = 7;
  eg.out_w = 5;
  const size_t pixels = (eg.grid_base + m) / 7 * 5 + 5;
  std::vector<float> res(pixels * c.n), yg(pixels * c.n, -99.f);
  for (auto& v : res) v = static_cast<float>(static_cast<int>(rng() % 200) - 100) * 0.01f;
  eg.residual = res.data();
  eg.res_lo = 0.f;
  eg.res_hi = 1.5f;
  spmm_qu8::run(uk, w, m, xq, qstride, yg.data(), c.n * 4, 0, c.n, eg);
  std::vector<float> expect(pixels * c.n, -99.f);
  for (size_t i = 0; i < m; ++i) {
    const size_t g = eg.grid_base + i;
    if (g % 7 >= 5) continue;
    const size_t px = g / 7 * 5 + g % 7;
    for (size_t r = 0; r < c.n; ++r)
      expect[px * c.n + r] = std::min(std::max(want[r * m + i] + res[px * c.n + r], 0.f), 1.5f);
  }
  bad = 0;
  for (size_t i = 0; i < yg.size(); ++i) bad += std::memcmp(&yg[i], &expect[i], 4) != 0;
  DSQ_CHECK(bad == 0, "%s %s: grid + residual, m=%zu: %zu outputs differ", what, uk.name, m, bad);
}

// The reference outputs of c for m lanes of x (x[col * stride + lane]) under ep, in 64-bit
// sums: want[r * m + i], or want[i * n + r] (pixel_major).
std::vector<float> reference(const Case& c, size_t m, const std::vector<uint8_t>& x, size_t stride,
                             const spmm_qu8::Epilogue& ep, bool pixel_major) {
  std::vector<float> want(c.n * m);
  for (size_t r = 0; r < c.n; ++r) {
    int64_t sum = 0;
    for (uint32_t p = c.row_ptr[r]; p < c.row_ptr[r + 1]; ++p) sum += c.q[p];
    for (size_t i = 0; i < m; ++i) {
      int64_t acc = 0;
      for (uint32_t p = c.row_ptr[r]; p < c.row_ptr[r + 1]; ++p) acc += int64_t(c.q[p]) * x[c.col[p] * stride + i];
      const float v = std::fma(float(int32_t(acc - ep.a_zero * sum)), ep.a_scale * c.w_scale[r], c.bias[r]);
      want[pixel_major ? i * c.n + r : r * m + i] = v > ep.lo ? (v < ep.hi ? v : ep.hi) : ep.lo;
    }
  }
  return want;
}

int u8_non_finite_checks = 0;

// A quad kernel's u8 output (activation chaining): the code gemm_qu8::quantize gives each
// float output, at pixel(i) * n + r; nothing else written; the bad flag set exactly when an
// output is NaN / Inf (an epilogue scale of 1e36 without a clamp overflows).
void check_quad_u8(const spmm_qu8::Ukernel& uk, const spmm_qu8::PackedWeights& w, const Case& c, size_t m,
                   const uint8_t* xq, size_t qstride, const std::vector<uint8_t>& x, size_t stride, const char* what) {
  const float inf = std::numeric_limits<float>::infinity();
  for (int overflow = 0; overflow < 2; ++overflow) {
    spmm_qu8::Epilogue ep{37, overflow ? 1e36f : 0.0173f, overflow ? -inf : -0.75f, overflow ? inf : 2.5f};
    const std::vector<float> want = reference(c, m, x, stride, ep, /*pixel_major=*/true);
    // (0.02, 40): [lo, hi] quantizes inside 0..255 (the quantizer skips its clamps); (0.01,
    // 80): codes past 255 saturate.
    for (const gemm_qu8::QuantParams oq : {gemm_qu8::QuantParams{0.01f, 80}, gemm_qu8::QuantParams{0.02f, 40}}) {
    std::vector<uint8_t> want_q(gemm_qu8::padded_k(want.size()));
    const bool finite = gemm_qu8::quantize(want.data(), 1, want.size(), 0, want_q.data(), want_q.size(), oq);
    want_q.resize(want.size());
    uint8_t bad = 0;
    ep.out_u8 = true;
    ep.out_scale = oq.scale;
    ep.out_zero = oq.zero;
    ep.out_bad = &bad;
    std::vector<uint8_t> y(m * c.n + 7, 0xA5);
    spmm_qu8::run(uk, w, m, xq, qstride, reinterpret_cast<float*>(y.data()), c.n, 0, c.n, ep);
    for (size_t i = m * c.n; i < y.size(); ++i) DSQ_CHECK(y[i] == 0xA5, "%s %s: u8 past the output", what, uk.name);
    y.resize(m * c.n);
    DSQ_CHECK(y == want_q, "%s %s: u8 output differs from quantize (n=%zu k=%zu m=%zu overflow %d)", what, uk.name,
              c.n, c.k, m, overflow);
    DSQ_CHECK((bad != 0) == !finite, "%s %s: u8 bad flag %d, outputs finite %d (overflow %d)", what, uk.name, bad,
              finite, overflow);
    u8_non_finite_checks += !finite;
    }
  }
}

void check_case(const Case& c, size_t m, bool extremes, const char* what) {
  spmm_qu8::PackedWeights w =
      spmm_qu8::pack(c.n, c.k, c.row_ptr.data(), c.col.data(), c.q.data(), c.w_scale.data(), c.bias.data(), true);
  spmm_qu8::build_quads(w);
  spmm_qu8::build_quads(w);  // idempotent
  const size_t stride = (m + 63) / 64 * 64;  // rows hold a multiple of the widest tile
  std::vector<uint8_t> x(c.k * stride);
  for (auto& v : x) v = extremes ? ((rng() & 1) ? 255 : 0) : static_cast<uint8_t>(rng());
  // The same x as quads for the quad kernels: quad row b holds lanes of 4 bytes (columns
  // 4b..4b+3); lanes past m and columns past k hold junk (weights there are 0 or unread).
  const size_t quad_rows = (c.k + 3) / 4, qstride = 4 * m + 8;
  std::vector<uint8_t> xq(quad_rows * qstride, 0xAB);
  for (size_t col = 0; col < c.k; ++col)
    for (size_t i = 0; i < m; ++i) xq[col / 4 * qstride + 4 * i + col % 4] = x[col * stride + i];
  size_t quads = 0;
  for (size_t r = 0; r < c.n; ++r)
    for (uint32_t p = c.row_ptr[r]; p < c.row_ptr[r + 1]; ++p)
      quads += p == c.row_ptr[r] || c.col[p] / 4 != c.col[p - 1] / 4;
  DSQ_CHECK(w.has_quads && w.quads == quads, "%s: %zu quads, want %zu", what, w.quads, quads);
  const spmm_qu8::Epilogue ep{static_cast<int32_t>(rng() % 256), 0.0173f, -0.75f, 2.5f};
  const std::vector<float> want = reference(c, m, x, stride, ep, /*pixel_major=*/false);
  for (const auto& uk : spmm_qu8::all_ukernels()) {
    if (!isa_supported(uk.isa) || !spmm_qu8::compatible(uk, w, m)) continue;
    if (uk.layout == spmm_qu8::Layout::kQuads) {
      check_quad_output(uk, w, c, m, xq.data(), qstride, ep, want, what);
      check_quad_u8(uk, w, c, m, xq.data(), qstride, x, stride, what);
      continue;
    }
    const uint8_t* xa = x.data();
    const size_t xs = stride;
    std::vector<float> y(c.n * m, -99.f);
    spmm_qu8::run(uk, w, m, xa, xs, y.data(), m * 4, 0, c.n, ep);
    size_t bad = 0;
    for (size_t i = 0; i < y.size(); ++i) bad += std::memcmp(&y[i], &want[i], 4) != 0;
    DSQ_CHECK(bad == 0, "%s %s: n=%zu k=%zu m=%zu: %zu outputs differ", what, uk.name, c.n, c.k, m, bad);
    // A row range writes only its rows.
    std::vector<float> part(c.n * m, -99.f);
    spmm_qu8::run(uk, w, m, xa, xs, part.data(), m * 4, 3, c.n / 2, ep);
    bool only = true;
    for (size_t r = 0; r < c.n; ++r)
      for (size_t i = 0; i < m; ++i) {
        const bool inside = r >= 3 && r < c.n / 2;
        only &= inside ? std::memcmp(&part[r * m + i], &want[r * m + i], 4) == 0 : part[r * m + i] == -99.f;
      }
    DSQ_CHECK(only, "%s %s: row range 3..%zu", what, uk.name, c.n / 2);
  }
}

// Random CSR with a given density plus special rows: row 1 all nonzeros in one window
// (columns 64..127 when k allows), row 2 empty, row 3 dense.
Case make_tile_case(size_t n, size_t k, double density) {
  Case c = start_case(n, k);
  std::uniform_real_distribution<double> u(0, 1);
  for (size_t r = 0; r < n; ++r) {
    for (size_t j = 0; j < k; ++j) {
      bool take = u(rng) < density;
      if (r == 1) take = k > 128 ? (j >= 64 && j < 128) : true;
      if (r == 2) take = false;
      if (r == 3) take = true;
      if (!take) continue;
      c.col.push_back(static_cast<uint32_t>(j));
      c.q.push_back(static_cast<int8_t>(static_cast<int>(rng() % 256) - 128));
    }
    end_row(c, u);
  }
  return c;
}

// Nonzeros in aligned quads of columns (block-pruned weights): each quad is taken with
// probability `density`, with all 4 columns, or 1-3 of them every fifth time; k may cut
// the last quad.
Case make_quad_case(size_t n, size_t k, double density) {
  Case c = start_case(n, k);
  std::uniform_real_distribution<double> u(0, 1);
  for (size_t r = 0; r < n; ++r) {
    for (size_t b = 0; b * 4 < k; ++b) {
      if (!(u(rng) < density)) continue;
      const unsigned keep = rng() % 5 == 0 ? static_cast<unsigned>(1 + rng() % 14) : 15u;  // bit j: column 4b+j
      for (size_t j = 0; j < 4 && 4 * b + j < k; ++j) {
        if (!(keep >> j & 1)) continue;
        c.col.push_back(static_cast<uint32_t>(4 * b + j));
        c.q.push_back(static_cast<int8_t>(static_cast<int>(rng() % 256) - 128));
      }
    }
    end_row(c, u);
  }
  return c;
}

const spmm_qu8::Ukernel& scalar_ref() { return spmm_qu8::all_ukernels()[0]; }

// Every supported spmv kernel against the scalar CSR reference at m = 1, bit for bit.
void check_tiles(const Case& c, const char* what) {
  spmm_qu8::PackedWeights w =
      spmm_qu8::pack(c.n, c.k, c.row_ptr.data(), c.col.data(), c.q.data(), c.w_scale.data(), c.bias.data());
  DSQ_CHECK(!w.has_tiles, "pack builds no tiles unless asked");
  spmm_qu8::build_row_tiles(w);
  spmm_qu8::build_row_tiles(w);  // idempotent
  DSQ_CHECK(w.has_tiles && w.tile_steps <= c.col.size(), "%s: %zu steps for %zu nonzeros", what, w.tile_steps,
            c.col.size());
  spmm_qu8::build_quads(w);
  spmm_qu8::build_quad_tiles(w);
  spmm_qu8::build_quad_tiles(w);  // idempotent
  DSQ_CHECK(w.has_quad_tiles && w.quad_tile_steps <= w.quads, "%s: %zu quad steps for %zu quads", what,
            w.quad_tile_steps, w.quads);
  const size_t xs = 3;  // strided x (the op layer's x_t rows) and a contiguous copy
  std::vector<uint8_t> xc(c.k), xst(c.k * xs, 0xAB);
  for (size_t i = 0; i < c.k; ++i) xc[i] = xst[i * xs] = static_cast<uint8_t>(rng());
  const float inf = INFINITY;
  const spmm_qu8::Epilogue eps[] = {{0, 0.0173f, 0.f, inf}, {255, 0.0091f, -0.75f, 2.5f},
                                    {static_cast<int32_t>(rng() % 256), 0.031f, -inf, inf}};
  for (const auto& ep : eps) {
    std::vector<float> want(c.n, -99.f);
    spmm_qu8::run(scalar_ref(), w, 1, xc.data(), 1, want.data(), 4, 0, c.n, ep);
    for (const auto& uk : spmm_qu8::all_ukernels()) {
      if (!uk.spmv || !isa_supported(uk.isa)) continue;
      DSQ_CHECK(spmm_qu8::compatible(uk, w, 1) && !spmm_qu8::compatible(uk, w, 2), "%s compatible()", uk.name);
      // Contiguous x, y stride 4 (the whole range), then strided x, y stride 8 over a row
      // range that cuts 16-row groups at both ends (quad tiles: whole groups, rows sorted).
      std::vector<float> y(c.n, -99.f);
      spmm_qu8::run(uk, w, 1, xc.data(), 1, y.data(), 4, 0, c.n, ep);
      size_t bad = 0;
      for (size_t r = 0; r < c.n; ++r) bad += std::memcmp(&y[r], &want[r], 4) != 0;
      DSQ_CHECK(bad == 0, "%s %s: n=%zu k=%zu zero=%d: %zu rows differ", what, uk.name, c.n, c.k, ep.a_zero, bad);
      const bool quad_tiles = uk.layout == spmm_qu8::Layout::kQuadTiles;
      const size_t b0 = quad_tiles ? std::min<size_t>(16, c.n / 16 * 16) : std::min<size_t>(5, c.n);
      const size_t b1 = quad_tiles ? c.n : c.n > 20 ? c.n - 3 : c.n;
      std::vector<float> y2(c.n * 2, -99.f);
      spmm_qu8::run(uk, w, 1, xst.data(), xs, y2.data(), 8, b0, b1, ep);
      std::vector<bool> in_range(c.n, false);
      for (size_t p = b0; p < b1; ++p) in_range[quad_tiles ? w.quad_tile_rows.as<uint32_t>()[p] : p] = true;
      bool ok = true;
      for (size_t r = 0; r < c.n; ++r) {
        ok &= y2[2 * r + 1] == -99.f;
        ok &= in_range[r] ? std::memcmp(&y2[2 * r], &want[r], 4) == 0 : y2[2 * r] == -99.f;
      }
      if (quad_tiles && c.n > 16) {  // a range that cuts a group is refused
        bool threw = false;
        try {
          spmm_qu8::run(uk, w, 1, xc.data(), 1, y.data(), 4, 3, c.n, ep);
        } catch (const std::invalid_argument&) {
          threw = true;
        }
        DSQ_CHECK(threw, "%s: a range cutting a group is refused", uk.name);
      }
      DSQ_CHECK(ok, "%s %s: n=%zu k=%zu strided x/y, rows %zu..%zu", what, uk.name, c.n, c.k, b0, b1);
    }
  }
}

void bench_tiles(size_t n, size_t k, double density, bool quads = false) {
  const Case c = quads ? make_quad_case(n, k, density) : make_tile_case(n, k, density);
  spmm_qu8::PackedWeights w =
      spmm_qu8::pack(c.n, c.k, c.row_ptr.data(), c.col.data(), c.q.data(), c.w_scale.data(), c.bias.data(), true);
  spmm_qu8::build_quads(w);
  spmm_qu8::build_quad_tiles(w);
  std::vector<const spmm_qu8::Ukernel*> uks = {&scalar_ref()};
  for (const auto& uk : spmm_qu8::all_ukernels())
    if (uk.spmv && uk.isa != Isa::kScalar && isa_supported(uk.isa)) uks.push_back(&uk);
  std::vector<uint8_t> x(k);
  for (auto& v : x) v = static_cast<uint8_t>(rng());
  std::vector<float> y(n);
  const spmm_qu8::Epilogue ep{128, 0.01f, 0.f, INFINITY};
  for (const auto* uk : uks) {
    std::vector<double> ns;
    for (int rep = 0; rep < 31; ++rep) {
      const int calls = n * k > 1000000 ? 20 : 500;
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < calls; ++i) spmm_qu8::run(*uk, w, 1, x.data(), 1, y.data(), 4, 0, n, ep);
      ns.push_back(std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / calls);
    }
    std::sort(ns.begin(), ns.end());
    std::printf("bench n=%zu k=%zu density=%.2f nnz=%zu steps=%zu: %-28s median %.0f ns/call\n", n, k, density,
                c.col.size(), w.tile_steps, uk->name, ns[ns.size() / 2]);
  }
}

}  // namespace

int main() {
  for (size_t m : {1, 2, 15, 16, 17, 63, 64, 65, 130}) check_case(make_case(40, 300, 0.2, false), m, false, "random");
  check_case(make_case(24, 257, 0.3, true), 67, true, "extremes");
  check_case(make_case(16, 70000, 0.001, false), 19, false, "u32 columns");
  for (size_t m : {1, 15, 16, 17, 47, 64, 200}) {
    check_case(make_quad_case(33, 144, 0.3), m, false, "quads");
    check_case(make_quad_case(20, 27, 0.5), m, false, "quads, k cuts the last quad");
  }
  check_case(make_quad_case(8, 64, 1.0), 70, false, "quads, dense");
  {
    const Case c = make_quad_case(10, 40, 0.5);
    spmm_qu8::PackedWeights w =
        spmm_qu8::pack(c.n, c.k, c.row_ptr.data(), c.col.data(), c.q.data(), c.w_scale.data(), c.bias.data());
    DSQ_CHECK(spmm_qu8::best_ukernel().layout == spmm_qu8::Layout::kCsr, "best_ukernel reads the CSR");
    const spmm_qu8::Ukernel* quad = nullptr;
    for (const auto& uk : spmm_qu8::all_ukernels())
      if (uk.layout == spmm_qu8::Layout::kQuads) quad = &uk;
    DSQ_CHECK(quad && !spmm_qu8::compatible(*quad, w, 4), "a quad kernel needs the quads");
    bool threw_quads = false;
    std::vector<uint8_t> x(64 * 4, 1);
    std::vector<float> y(c.n * 4);
    try {
      spmm_qu8::run(*quad, w, 4, x.data(), 16, y.data(), 16, 0, c.n, spmm_qu8::Epilogue{0, 1.f, -INFINITY, INFINITY});
    } catch (const std::invalid_argument&) {
      threw_quads = true;
    }
    DSQ_CHECK(threw_quads, "run() rejects a quad kernel without quads");
    spmm_qu8::build_quads(w);
    DSQ_CHECK(w.quad_fill() > 0.5 && w.quad_fill() <= 1.0, "quad fill %.2f", w.quad_fill());
    const spmm_qu8::Ukernel* best_quad = spmm_qu8::best_quad_ukernel();
    std::printf("best quad ukernel: %s\n", best_quad ? best_quad->name : "(none)");
  }
  bool threw = false;
  try {
    const uint32_t rp[2] = {0, 1}, col[1] = {5};
    const int8_t q[1] = {1};
    const float s[1] = {1.f};
    spmm_qu8::pack(1, 5, rp, col, q, s, nullptr);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  DSQ_CHECK(threw, "pack rejects a column >= k");

  for (size_t n : {1, 15, 16, 17, 100, 300})
    for (size_t k : {1, 63, 64, 65, 784, 3000})
      for (double d : {0.0, 0.01, 0.1, 0.5, 1.0}) check_tiles(make_tile_case(n, k, d), "tiles");
  check_tiles(make_tile_case(33, 70000, 0.002), "tiles u32 columns");
  {
    const Case c = make_tile_case(20, 100, 0.3);
    spmm_qu8::PackedWeights w =
        spmm_qu8::pack(c.n, c.k, c.row_ptr.data(), c.col.data(), c.q.data(), c.w_scale.data(), c.bias.data());
    const spmm_qu8::Ukernel* tile = nullptr;
    for (const auto& uk : spmm_qu8::all_ukernels())
      if (uk.spmv && isa_supported(uk.isa)) tile = &uk;  // the scalar tile reader at least
    DSQ_CHECK(tile != nullptr, "an spmv kernel is supported");
    DSQ_CHECK(&spmm_qu8::best_spmv_ukernel(w) == &scalar_ref(), "no tiles: the scalar reference");
    DSQ_CHECK(!spmm_qu8::best_ukernel().spmv, "best_ukernel never picks an spmv kernel");
    std::vector<uint8_t> x(c.k, 1);
    std::vector<float> y(c.n * 2);
    const spmm_qu8::Epilogue ep{0, 1.f, -INFINITY, INFINITY};
    bool threw_tiles = false, threw_m = false;
    try {
      spmm_qu8::run(*tile, w, 1, x.data(), 1, y.data(), 4, 0, c.n, ep);
    } catch (const std::invalid_argument&) {
      threw_tiles = true;
    }
    spmm_qu8::build_row_tiles(w);
    try {
      spmm_qu8::run(*tile, w, 2, x.data(), 2, y.data(), 8, 0, c.n, ep);
    } catch (const std::invalid_argument&) {
      threw_m = true;
    }
    DSQ_CHECK(threw_tiles && threw_m, "run() rejects an spmv kernel without tiles / with m = 2");
    bool vbmi = false;  // a VBMI tile kernel is built (not DSQ_PORTABLE) and this CPU runs it
    for (const auto& uk : spmm_qu8::all_ukernels()) vbmi |= uk.spmv && uk.isa == Isa::kAvx512Vbmi && isa_supported(uk.isa);
    const spmm_qu8::Ukernel& best = spmm_qu8::best_spmv_ukernel(w);
    DSQ_CHECK(vbmi ? best.isa == Isa::kAvx512Vbmi : &best == &scalar_ref(), "best_spmv_ukernel: %s", best.name);
    std::printf("best spmv ukernel: %s\n", best.name);
  }
  const char* bench = std::getenv("DSQ_BENCH_QTILE");
  if (bench && *bench == '1') {
    bench_tiles(300, 784, 0.1);
    bench_tiles(300, 784, 0.1, true);  // block-pruned: full quads
    bench_tiles(4096, 4096, 0.1);
  }
  DSQ_CHECK(u8_non_finite_checks >= 4, "only %d u8 checks met an Inf output", u8_non_finite_checks);
  DSQ_TEST_MAIN_END();
}
