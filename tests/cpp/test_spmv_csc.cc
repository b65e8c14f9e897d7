// The zero-skipping batch-1 kernels (Layout::kCsc, spmv_csc_*) against the CSR reference
// spmv kernels and a double-precision loop, with inputs full of exact zeros: all-zero x,
// no-zero x, half / 90% zeros, -0.0 inputs, empty columns and rows, K = 1, N = 1, u32 row
// indices (n > 65536), f32 values and codebooks (per tensor / per row). Also build_csc()
// (column pointers, increasing rows, idempotent), count_zeros() and skipped_macs()
// (= sum over zero inputs of their column's nonzeros), and that best_ukernel*() never
// returns a kCsc kernel while best_csc_ukernel() does.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "check.h"
#include "kernels/spmm_f32/spmm_f32.h"

using namespace dsq;
using namespace dsq::spmm_f32;

namespace {

std::mt19937& rng() {
  static std::mt19937 g(4321);
  return g;
}
float urand() { return std::uniform_real_distribution<float>(-1.f, 1.f)(rng()); }
double u01() { return std::uniform_real_distribution<double>(0.0, 1.0)(rng()); }

struct Case {
  const char* name;
  size_t n, k;
  double density;
  size_t empty_col_every;  // 0: none
};
const Case kCases[] = {
    {"small", 30, 50, 0.3, 4},  {"K=1", 17, 1, 0.7, 0},        {"N=1", 1, 90, 0.5, 5},
    {"dense", 12, 20, 1.0, 0},  {"all-zero W", 10, 30, 0.0, 0}, {"wide", 40, 3000, 0.05, 7},
    {"u32 rows", 70000, 8, 0.01, 3},
};

struct Mat {
  size_t n, k;
  std::vector<uint32_t> row_ptr, col;
  std::vector<float> values, table;
  std::vector<uint8_t> codes;
  size_t entries = 0;
  bool per_row = false;
  std::vector<float> bias;
  float weight(size_t r, size_t p) const {
    return codes.empty() ? values[p] : table[(per_row ? r * entries : 0) + codes[p]];
  }
};

Mat make(const Case& c, bool cb, bool per_row) {
  Mat m;
  m.n = c.n;
  m.k = c.k;
  m.entries = 32;
  m.per_row = per_row;
  if (cb) {
    m.table.resize((per_row ? c.n : 1) * m.entries);
    for (float& t : m.table) t = urand();
  }
  m.row_ptr.push_back(0);
  for (size_t r = 0; r < c.n; ++r) {
    for (size_t j = 0; j < c.k; ++j) {
      if (c.empty_col_every && j % c.empty_col_every == 1) continue;
      if (!(u01() < c.density)) continue;
      m.col.push_back(static_cast<uint32_t>(j));
      if (cb) m.codes.push_back(static_cast<uint8_t>(rng()() % m.entries));
      else m.values.push_back(urand());
    }
    m.row_ptr.push_back(static_cast<uint32_t>(m.col.size()));
  }
  m.codes.reserve(1);  // codes.data() non-null even with no nonzeros (marks a codebook)
  m.bias.resize(c.n);
  for (float& b : m.bias) b = urand();
  return m;
}

PackedWeights pack_mat(const Mat& m) {
  const bool cb = !m.table.empty();
  PackedWeights w = pack(m.n, m.k, m.row_ptr.data(), m.col.data(), cb ? nullptr : m.values.data(),
                         cb ? m.codes.data() : nullptr, cb ? m.table.data() : nullptr, m.entries,
                         m.per_row, m.bias.data());
  build_csc(w);
  build_csc(w);  // idempotent
  return w;
}

void check_csc_layout(const Mat& m, const PackedWeights& w, const char* what) {
  DSQ_CHECK(w.has_csc, "%s: has_csc", what);
  const uint32_t* cp = w.cp();
  DSQ_CHECK(cp[0] == 0 && cp[m.k] == m.col.size(), "%s: col_ptr ends", what);
  std::vector<uint32_t> per_col(m.k, 0);
  for (uint32_t c : m.col) ++per_col[c];
  for (size_t j = 0; j < m.k; ++j) {
    DSQ_CHECK(cp[j + 1] - cp[j] == per_col[j], "%s: column %zu has %u, expected %u", what, j,
              cp[j + 1] - cp[j], per_col[j]);
    for (uint32_t p = cp[j] + 1; p < cp[j + 1]; ++p) {
      const size_t a = w.csc_rows_u16 ? w.csc_rows.as<uint16_t>()[p - 1] : w.csc_rows.as<uint32_t>()[p - 1];
      const size_t b = w.csc_rows_u16 ? w.csc_rows.as<uint16_t>()[p] : w.csc_rows.as<uint32_t>()[p];
      if (!(a < b)) {
        DSQ_CHECK(false, "%s: column %zu rows not increasing", what, j);
        break;
      }
    }
  }
  DSQ_CHECK(w.csc_rows_u16 == (m.n <= 65536), "%s: row index width", what);
}

// x with about `zero_frac` exact zeros (half of them -0.0).
std::vector<float> make_x(size_t k, double zero_frac) {
  std::vector<float> x(k);
  for (float& v : x) {
    v = urand();
    if (v == 0.f) v = 0.25f;
    if (u01() < zero_frac) v = (rng()() & 1) ? 0.f : -0.f;
  }
  return x;
}

void run_one(const Ukernel& csc, const Ukernel& row, const Mat& m, const PackedWeights& w,
             const std::vector<float>& x, float lo, float hi, const char* what) {
  std::vector<float> y(m.n, -7.f), yr(m.n, -7.f);
  run(csc, w, 1, x.data(), 4, y.data(), 4, 0, m.n, lo, hi);
  run(row, w, 1, x.data(), 4, yr.data(), 4, 0, m.n, lo, hi);
  int bad = 0;
  for (size_t r = 0; r < m.n; ++r) {
    double ref = m.bias[r], mag = std::fabs(ref);
    for (uint32_t p = m.row_ptr[r]; p < m.row_ptr[r + 1]; ++p) {
      const double prod = double(m.weight(r, p)) * x[m.col[p]];
      ref += prod;
      mag += std::fabs(prod);
    }
    ref = std::min(std::max(ref, double(lo)), double(hi));
    const double tol = 1e-5 * mag + 1e-7;
    if ((!(std::fabs(y[r] - ref) <= tol) || !(std::fabs(yr[r] - ref) <= tol)) && bad++ < 3)
      DSQ_CHECK(false, "%s [%s] row %zu: csc %.9g row kernel %.9g ref %.9g tol %.3g", csc.name, what,
                r, y[r], yr[r], ref, tol);
  }
  // skipped_macs / count_zeros against the definition.
  size_t zeros = 0;
  uint64_t skipped = 0;
  for (size_t j = 0; j < m.k; ++j)
    if (x[j] == 0.f) {
      ++zeros;
      skipped += std::count(m.col.begin(), m.col.end(), static_cast<uint32_t>(j));
    }
  DSQ_CHECK(count_zeros(x.data(), 4, m.k) == zeros, "%s: count_zeros", what);
  DSQ_CHECK(skipped_macs(w, x.data(), 4) == skipped, "%s: skipped_macs %llu, expected %llu", what,
            (unsigned long long)skipped_macs(w, x.data(), 4), (unsigned long long)skipped);
}

void test_kernels() {
  const float kInf = std::numeric_limits<float>::infinity();
  for (const Ukernel& uk : all_ukernels()) {
    if (uk.layout != Layout::kCsc || !isa_supported(uk.isa)) continue;
    size_t cases = 0;
    const int before = dsq_test::failures();
    for (const Case& c : kCases)
      for (int vk = 0; vk < (uk.codebook ? 2 : 1); ++vk) {
        const Mat m = make(c, uk.codebook, vk == 1);
        const PackedWeights w = pack_mat(m);
        char what[96];
        std::snprintf(what, sizeof what, "%s%s", c.name, uk.codebook ? (vk ? " cb/row" : " cb") : " f32");
        check_csc_layout(m, w, what);
        const Ukernel& row = best_ukernel_for(w, 1);
        DSQ_CHECK(row.layout != Layout::kCsc, "best_ukernel_for returned %s", row.name);
        DSQ_CHECK(compatible(uk, w, 1) && !compatible(uk, w, 2), "%s compatible", what);
        for (double zf : {0.0, 0.5, 0.9, 1.0}) {
          const std::vector<float> x = make_x(c.k, zf);
          run_one(uk, row, m, w, x, -kInf, kInf, what);
          run_one(uk, row, m, w, x, 0.f, 6.f, what);
          cases += 2;
        }
        // Exactly all-zero input: y = clamp(bias) exactly, every MAC skipped.
        std::vector<float> x0(c.k, 0.f), y(c.n, 1e9f);
        run(uk, w, 1, x0.data(), 4, y.data(), 4, 0, c.n, 0.f, kInf);
        bool exact = true;
        for (size_t r = 0; r < c.n; ++r) exact &= y[r] == std::max(m.bias[r], 0.f);
        DSQ_CHECK(exact, "%s [%s] all-zero x: y != clamp(bias)", uk.name, what);
        DSQ_CHECK(skipped_macs(w, x0.data(), 4) == m.col.size(), "%s all-zero skipped", what);
        ++cases;
      }
    // Without the CSC copy the kernel is not compatible (run() refuses).
    const Mat m = make(kCases[0], uk.codebook, false);
    const bool cb = uk.codebook;
    const PackedWeights plain = pack(m.n, m.k, m.row_ptr.data(), m.col.data(), cb ? nullptr : m.values.data(),
                                     cb ? m.codes.data() : nullptr, cb ? m.table.data() : nullptr, m.entries,
                                     false, nullptr);
    DSQ_CHECK(!plain.has_csc && plain.csc_bytes() == 0 && !compatible(uk, plain, 1), "%s without CSC", uk.name);
    std::printf("%-28s %zu cases %s\n", uk.name, cases, dsq_test::failures() == before ? "ok" : "FAILED");
  }
}

void test_dispatch() {
  for (bool cb : {false, true})
    for (bool spmv : {false, true})
      DSQ_CHECK(best_ukernel(cb, spmv).layout != Layout::kCsc, "best_ukernel(%d,%d) is a CSC kernel",
                int(cb), int(spmv));
  for (bool cb : {false, true}) {
    const Mat m = make(kCases[0], cb, false);
    const PackedWeights w = pack_mat(m);
    const Ukernel& z = best_csc_ukernel(w);
    DSQ_CHECK(z.layout == Layout::kCsc && z.codebook == cb && isa_supported(z.isa), "best_csc_ukernel(%d) = %s",
              int(cb), z.name);
    DSQ_CHECK(find_ukernel(cb ? "spmv_csc_cb_f32__scalar" : "spmv_csc_f32__scalar") != nullptr, "find csc");
    std::printf("best csc ukernel (codebook=%d): %s, csc_bytes %zu\n", int(cb), z.name, w.csc_bytes());
  }
}

}  // namespace

int main() {
  test_dispatch();
  test_kernels();
  DSQ_TEST_MAIN_END();
}
