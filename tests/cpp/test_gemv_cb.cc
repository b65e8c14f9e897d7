// Tests the dense codebook batch-1 kernels (spmm_f32 Layout::kDenseTiles: gemv_cb_*) against
// a naive double loop: every built, supported gemv_cb kernel, b = 1, 5, 6, 8, per-tensor and
// per-row tables, n not a multiple of 16, k not a multiple of 32, k = 1, n = 1, bias / no
// bias, clamps, row sub-ranges (the rest untouched), strided x / y. Also the dispatch
// (best_ukernel_for picks a gemv_cb kernel once the tiles exist) and build_dense_tiles
// validation (sparse rows throw).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "check.h"
#include "kernels/spmm_f32/spmm_f32.h"

using namespace dsq;
using namespace dsq::spmm_f32;

namespace {

constexpr float kSentinel = -12345.5f;
const float kInf = std::numeric_limits<float>::infinity();

std::mt19937& rng() {
  static std::mt19937 g(4321);
  return g;
}
float urand(float s = 1.f) { return std::uniform_real_distribution<float>(-s, s)(rng()); }

struct Dense {
  size_t n = 0, k = 0, entries = 0;
  bool per_row = false;
  std::vector<uint8_t> codes;  // n x k
  std::vector<float> table, bias;
  float weight(size_t r, size_t c) const { return table[(per_row ? r * entries : 0) + codes[r * k + c]]; }
};

Dense make_dense(size_t n, size_t k, int bits, bool per_row) {
  Dense d;
  d.n = n;
  d.k = k;
  d.entries = size_t(1) << bits;
  d.per_row = per_row;
  d.codes.resize(n * k);
  for (auto& c : d.codes) c = static_cast<uint8_t>(rng()() % d.entries);
  d.table.resize((per_row ? n : 1) * d.entries);
  for (auto& t : d.table) t = urand();
  d.bias.resize(n);
  for (auto& b : d.bias) b = urand(2.f);
  return d;
}

PackedWeights pack_dense(const Dense& d, bool with_bias) {
  std::vector<uint32_t> rp(d.n + 1), col(d.n * d.k);
  for (size_t r = 0; r <= d.n; ++r) rp[r] = static_cast<uint32_t>(r * d.k);
  // Columns reversed within rows: pack() sorts them, build_dense_tiles() must see 0..k-1.
  std::vector<uint8_t> codes(d.n * d.k);
  for (size_t r = 0; r < d.n; ++r)
    for (size_t c = 0; c < d.k; ++c) {
      col[r * d.k + c] = static_cast<uint32_t>(d.k - 1 - c);
      codes[r * d.k + c] = d.codes[r * d.k + d.k - 1 - c];
    }
  PackedWeights w = pack(d.n, d.k, rp.data(), col.data(), nullptr, codes.data(), d.table.data(), d.entries,
                         d.per_row, with_bias ? d.bias.data() : nullptr, false);
  build_dense_tiles(w);
  return w;
}

int run_case(const Ukernel& uk, const Dense& d, const PackedWeights& w, bool with_bias, float lo, float hi,
             size_t nb, size_t ne, size_t xpad, size_t ypad) {
  const size_t xs = 1 + xpad, ys = 1 + ypad;
  std::vector<float> x(std::max<size_t>(d.k * xs, 1), std::numeric_limits<float>::quiet_NaN());
  for (size_t c = 0; c < d.k; ++c) x[c * xs] = urand();
  std::vector<float> y(d.n * ys, kSentinel);
  run(uk, w, 1, x.data(), xs * 4, y.data(), ys * 4, nb, ne, lo, hi);
  int bad = 0;
  for (size_t r = 0; r < d.n; ++r) {
    for (size_t j = 0; j < ys; ++j) {
      const float got = y[r * ys + j];
      if (j > 0 || r < nb || r >= ne) {
        if (got != kSentinel) ++bad;
        continue;
      }
      double ref = with_bias ? d.bias[r] : 0.0, mag = std::fabs(ref);
      for (size_t c = 0; c < d.k; ++c) {
        const double p = double(d.weight(r, c)) * x[c * xs];
        ref += p;
        mag += std::fabs(p);
      }
      ref = std::min(std::max(ref, double(lo)), double(hi));
      if (!(std::fabs(got - ref) <= 1e-5 * mag + 1e-6)) {
        if (bad < 3)
          std::fprintf(stderr, "  %s n=%zu k=%zu row %zu: got %.9g ref %.9g\n", uk.name, d.n, d.k, r, got, ref);
        ++bad;
      }
    }
  }
  return bad;
}

void test_kernels() {
  struct S { size_t n, k; };
  const S shapes[] = {{1, 1}, {21, 1}, {16, 32}, {17, 33}, {33, 31}, {1, 77}, {40, 100}, {5, 64}, {50, 300}, {64, 1000}};
  const int bits_list[] = {1, 5, 6, 8};
  for (const Ukernel& uk : all_ukernels()) {
    if (uk.layout != Layout::kDenseTiles) continue;
    if (!isa_supported(uk.isa)) {
      std::printf("skip %s (not supported here)\n", uk.name);
      continue;
    }
    size_t cases = 0;
    int bad = 0;
    for (const S& s : shapes)
      for (int bits : bits_list)
        for (bool per_row : {false, true}) {
          const Dense d = make_dense(s.n, s.k, bits, per_row);
          for (bool with_bias : {false, true}) {
            const PackedWeights w = pack_dense(d, with_bias);
            DSQ_CHECK(compatible(uk, w, 1) && !compatible(uk, w, 2), "%s compatible", uk.name);
            const std::string what = std::to_string(s.n) + "x" + std::to_string(s.k) + " b=" + std::to_string(bits) +
                                     (per_row ? "/row" : "") + (with_bias ? " bias" : "");
            int b = run_case(uk, d, w, with_bias, -kInf, kInf, 0, s.n, 0, 0);
            b += run_case(uk, d, w, with_bias, 0.f, 6.f, 0, s.n, 2, 1);  // strided x / y
            b += run_case(uk, d, w, with_bias, 0.f, kInf, s.n / 3, s.n - s.n / 4, 0, 0);
            if (s.n >= 18) b += run_case(uk, d, w, with_bias, -kInf, kInf, 5, 17, 0, 0);
            b += run_case(uk, d, w, with_bias, -kInf, kInf, s.n, s.n, 0, 0);
            cases += 5;
            DSQ_CHECK(b == 0, "%s [%s]: %d bad outputs", uk.name, what.c_str(), b);
            bad += b;
          }
        }
    std::printf("%-28s dense codebook: %zu cases %s\n", uk.name, cases, bad ? "FAILED" : "ok");
  }
}

void test_dispatch_and_pack() {
  const Dense d = make_dense(40, 70, 5, false);
  const PackedWeights w = pack_dense(d, true);
  DSQ_CHECK(w.has_dense && w.dense_windows == 3, "tiles built");
  DSQ_CHECK(w.dense_bytes() == 3 * 16 * 32 * 3 + 40 * 4 + 32 * 4, "dense_bytes %zu", w.dense_bytes());
  const Ukernel& best = best_ukernel_for(w, 1);
  DSQ_CHECK(best.layout == Layout::kDenseTiles, "best_ukernel_for(dense, 1) = %s", best.name);
  DSQ_CHECK(best_ukernel_for(w, 2).layout == Layout::kCsr, "batch > 1 runs the CSR spmm kernels");
  std::printf("best dense codebook batch-1 ukernel: %s\n", best.name);
  for (bool cb : {false, true})
    for (bool spmv : {false, true})
      DSQ_CHECK(best_ukernel(cb, spmv).layout != Layout::kDenseTiles, "best_ukernel never dense");
  // Sparse rows: no dense tiles.
  std::vector<uint32_t> rp = {0, 2, 3}, col = {0, 2, 1};
  std::vector<uint8_t> codes = {0, 1, 1};
  std::vector<float> tab = {1.f, 2.f};
  PackedWeights sp = pack(2, 3, rp.data(), col.data(), nullptr, codes.data(), tab.data(), 2, false, nullptr);
  bool threw = false;
  try {
    build_dense_tiles(sp);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  DSQ_CHECK(threw && !sp.has_dense, "sparse rows must throw");
  const Ukernel* ref = find_ukernel("gemv_cb_f32__scalar");
  DSQ_CHECK(ref && !compatible(*ref, sp, 1), "gemv_cb needs the tiles");
}

}  // namespace

int main() {
  test_dispatch_and_pack();
  test_kernels();
  DSQ_TEST_MAIN_END();
}
