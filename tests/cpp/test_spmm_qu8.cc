// spmm_qu8: every supported variant against an independent int64 model of the integer
// arithmetic (exact accumulators; the epilogue recomputed with std::fma in the documented
// order, so the float results must match bit for bit), on edge cases: empty rows, rows of
// 1..9 entries (the VNNI kernel's 1-3 leftover entries), a dense row, m from 1 to 130 (m
// remainders of the 64-lane tile), u32 columns (k > 65536), extreme values (u8 0/255,
// int8 -128/127), clamping.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "check.h"
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

Case make_case(size_t n, size_t k, double density, bool extremes) {
  Case c;
  c.n = n;
  c.k = k;
  c.row_ptr.push_back(0);
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
    c.row_ptr.push_back(static_cast<uint32_t>(c.col.size()));
    c.w_scale.push_back(static_cast<float>(0.001 + u(rng) * 0.01));
    c.bias.push_back(static_cast<float>(u(rng) - 0.5));
  }
  return c;
}

void check_case(const Case& c, size_t m, bool extremes, const char* what) {
  const spmm_qu8::PackedWeights w =
      spmm_qu8::pack(c.n, c.k, c.row_ptr.data(), c.col.data(), c.q.data(), c.w_scale.data(), c.bias.data());
  const size_t stride = (m + 63) / 64 * 64;  // rows hold a multiple of the widest tile
  std::vector<uint8_t> x(c.k * stride);
  for (auto& v : x) v = extremes ? ((rng() & 1) ? 255 : 0) : static_cast<uint8_t>(rng());
  const spmm_qu8::Epilogue ep{static_cast<int32_t>(rng() % 256), 0.0173f, -0.75f, 2.5f};
  std::vector<float> want(c.n * m);
  for (size_t r = 0; r < c.n; ++r) {
    int64_t sum = 0;
    for (uint32_t p = c.row_ptr[r]; p < c.row_ptr[r + 1]; ++p) sum += c.q[p];
    for (size_t i = 0; i < m; ++i) {
      int64_t acc = 0;
      for (uint32_t p = c.row_ptr[r]; p < c.row_ptr[r + 1]; ++p) acc += int64_t(c.q[p]) * x[c.col[p] * stride + i];
      const float v = std::fma(float(int32_t(acc - ep.a_zero * sum)), ep.a_scale * c.w_scale[r], c.bias[r]);
      want[r * m + i] = v > ep.lo ? (v < ep.hi ? v : ep.hi) : ep.lo;
    }
  }
  for (const auto& uk : spmm_qu8::all_ukernels()) {
    if (!isa_supported(uk.isa)) continue;
    std::vector<float> y(c.n * m, -99.f);
    spmm_qu8::run(uk, w, m, x.data(), stride, y.data(), m * 4, 0, c.n, ep);
    size_t bad = 0;
    for (size_t i = 0; i < y.size(); ++i) bad += std::memcmp(&y[i], &want[i], 4) != 0;
    DSQ_CHECK(bad == 0, "%s %s: n=%zu k=%zu m=%zu: %zu outputs differ", what, uk.name, c.n, c.k, m, bad);
    // A row range writes only its rows.
    std::vector<float> part(c.n * m, -99.f);
    spmm_qu8::run(uk, w, m, x.data(), stride, part.data(), m * 4, 3, c.n / 2, ep);
    bool only = true;
    for (size_t r = 0; r < c.n; ++r)
      for (size_t i = 0; i < m; ++i) {
        const bool inside = r >= 3 && r < c.n / 2;
        only &= inside ? std::memcmp(&part[r * m + i], &want[r * m + i], 4) == 0 : part[r * m + i] == -99.f;
      }
    DSQ_CHECK(only, "%s %s: row range 3..%zu", what, uk.name, c.n / 2);
  }
}

}  // namespace

int main() {
  for (size_t m : {1, 2, 15, 16, 17, 63, 64, 65, 130}) check_case(make_case(40, 300, 0.2, false), m, false, "random");
  check_case(make_case(24, 257, 0.3, true), 67, true, "extremes");
  check_case(make_case(16, 70000, 0.001, false), 19, false, "u32 columns");
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
  DSQ_TEST_MAIN_END();
}
