// dwconv_f32: every built variant the CPU runs is bit-identical to the scalar reference
// (same fma chain per output), and the reference matches a double-precision loop, over
// channel counts around the vector widths, kernel shapes, strides, paddings, dilations,
// images smaller than the kernel, channel multipliers and clamps (with NaN inputs).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "check.h"
#include "kernels/dwconv_f32/dwconv_f32.h"

using namespace dsq;
using namespace dsq::dwconv_f32;

namespace {

std::mt19937 rng(4242);
float rnd() { return std::uniform_real_distribution<float>(-1.f, 1.f)(rng); }

int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) { return (in + 2 * p - d * (k - 1) - 1) / s + 1; }

std::vector<float> run_all(const Ukernel& uk, const Geometry& g, int64_t OH, const std::vector<float>& x,
                           const std::vector<float>& w, const std::vector<float>& b) {
  std::vector<float> y(static_cast<size_t>(OH * g.OW * g.CO + 5), -777.f);  // +5: nothing written past
  for (int64_t oh = 0; oh < OH; ++oh) uk.fn(g, x.data(), w.data(), b.data(), y.data() + oh * g.OW * g.CO, oh);
  return y;
}

}  // namespace

int main() {
  const float inf = std::numeric_limits<float>::infinity();
  const auto& list = all_ukernels();
  DSQ_CHECK(!list.empty() && list.front().isa == Isa::kScalar, "reference first");
  const Ukernel& ref = list.front();
  struct Case { int64_t H, W, C, mult, kh, kw, sh, sw, ph, pw, dh, dw; float lo, hi; bool nan; };
  const Case cases[] = {
      {7, 9, 16, 1, 3, 3, 1, 1, 1, 1, 1, 1, -inf, inf, false},
      {8, 8, 17, 1, 3, 3, 2, 2, 1, 1, 1, 1, 0.f, 6.f, false},
      {5, 6, 33, 1, 5, 5, 1, 1, 2, 2, 1, 1, 0.f, inf, false},
      {9, 7, 96, 1, 3, 3, 1, 1, 2, 2, 2, 2, -inf, inf, false},
      {3, 2, 8, 1, 5, 5, 1, 1, 2, 2, 1, 1, -inf, inf, false},   // kernel wider than the image
      {6, 6, 15, 1, 3, 1, 1, 2, 1, 0, 1, 1, -0.5f, 0.5f, false},
      {4, 5, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1, -inf, inf, false},
      {6, 5, 7, 2, 3, 3, 1, 1, 1, 1, 1, 1, 0.f, inf, false},   // channel multiplier 2
      {5, 5, 24, 1, 3, 3, 1, 1, 1, 1, 1, 1, 0.f, 6.f, true},   // NaN inputs
      {4, 4, 3, 1, 1, 1, 1, 1, 0, 0, 1, 1, -inf, inf, false},
  };
  int tested = 0;
  for (const Case& c : cases) {
    const int64_t CO = c.C * c.mult;
    const int64_t OH = out_size(c.H, c.kh, c.sh, c.ph, c.dh), OW = out_size(c.W, c.kw, c.sw, c.pw, c.dw);
    const Geometry g{c.H, c.W, c.C, CO, OW, c.kh, c.kw, c.sh, c.sw, c.ph, c.pw, c.dh, c.dw, c.lo, c.hi};
    std::vector<float> x(static_cast<size_t>(c.H * c.W * c.C)), w(static_cast<size_t>(c.kh * c.kw * CO)), b(static_cast<size_t>(CO));
    for (auto& v : x) v = rnd();
    for (auto& v : w) v = rnd();
    for (auto& v : b) v = rnd();
    if (c.nan) x[x.size() / 2] = std::numeric_limits<float>::quiet_NaN();
    const std::vector<float> want = run_all(ref, g, OH, x, w, b);
    // The reference against a double loop (the fma chain rounds once per tap).
    size_t bad = 0;
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow)
        for (int64_t co = 0; co < CO; ++co) {
          double acc = b[co];
          bool has_nan = false;
          for (int64_t i = 0; i < c.kh; ++i)
            for (int64_t j = 0; j < c.kw; ++j) {
              const int64_t ih = oh * c.sh - c.ph + i * c.dh, iw = ow * c.sw - c.pw + j * c.dw;
              if (ih < 0 || ih >= c.H || iw < 0 || iw >= c.W) continue;
              const float xv = x[(ih * c.W + iw) * c.C + co / c.mult];
              has_nan = has_nan || std::isnan(xv);
              acc += static_cast<double>(xv) * w[(i * c.kw + j) * CO + co];
            }
          const float got = want[(oh * OW + ow) * CO + co];
          if (has_nan) {  // NaN + clamp -> the bound the clamp picks
            bad += !(got == c.lo || (std::isnan(got) && c.lo == -inf) || (c.lo == -inf && got == c.hi));
            continue;
          }
          const double v = std::min(std::max(acc, static_cast<double>(c.lo)), static_cast<double>(c.hi));
          bad += !(std::fabs(got - v) <= 1e-5 * (1 + std::fabs(v)));
        }
    DSQ_CHECK(bad == 0, "reference vs double loop: %zu wrong (C=%lld mult=%lld k=%lldx%lld)", bad, (long long)c.C,
              (long long)c.mult, (long long)c.kh, (long long)c.kw);
    for (size_t i = static_cast<size_t>(OH * OW * CO); i < want.size(); ++i) DSQ_CHECK(want[i] == -777.f, "wrote past");
    for (const Ukernel& uk : list) {
      if (!isa_supported(uk.isa) || &uk == &ref) continue;
      const std::vector<float> got = run_all(uk, g, OH, x, w, b);
      DSQ_CHECK(std::memcmp(got.data(), want.data(), got.size() * 4) == 0, "%s differs from the reference (C=%lld)",
                uk.name, (long long)c.C);
      ++tested;
    }
  }
  DSQ_CHECK(isa_supported(best_ukernel().isa), "best supported");
  std::printf("best: %s, %d variant x case checks\n", best_ukernel().name, tested);
  DSQ_TEST_MAIN_END();
}
