// dwconv_qu8: every built variant the CPU runs is bit-identical to the scalar reference
// (exact integer sums, one fma per output), and the reference matches an independent
// loop that pads with the zero point and sums (x - zero) * w in 64 bits, over channel
// counts around the vector widths (SIMD blocks + scalar tail), kernel shapes, strides,
// paddings, dilations, images smaller than the kernel, zero points 0 / mid / 255, the
// extreme codes (x 255, w -127) and clamps.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "check.h"
#include "kernels/dwconv_qu8/dwconv_qu8.h"

using namespace dsq;
using namespace dsq::dwconv_qu8;

namespace {

std::mt19937 rng(977);
int rnd_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
float rnd() { return std::uniform_real_distribution<float>(-1.f, 1.f)(rng); }

int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) { return (in + 2 * p - d * (k - 1) - 1) / s + 1; }

std::vector<float> run_all(const Ukernel& uk, const Geometry& g, int64_t OH, const std::vector<uint8_t>& x,
                           const std::vector<int8_t>& w, const std::vector<float>& s, const std::vector<float>& b) {
  std::vector<float> y(static_cast<size_t>(OH * g.OW * g.C + 5), -777.f);  // +5: nothing written past
  for (int64_t oh = 0; oh < OH; ++oh) uk.fn(g, x.data(), w.data(), s.data(), b.data(), y.data() + oh * g.OW * g.C, oh);
  return y;
}

}  // namespace

int main() {
  const float inf = std::numeric_limits<float>::infinity();
  const auto& list = all_ukernels();
  DSQ_CHECK(!list.empty() && list.front().isa == Isa::kScalar, "reference first");
  const Ukernel& ref = list.front();
  struct Case { int64_t H, W, C, kh, kw, sh, sw, ph, pw, dh, dw; int32_t zero; float lo, hi; bool extreme; };
  const Case cases[] = {
      {7, 9, 16, 3, 3, 1, 1, 1, 1, 1, 1, 128, -inf, inf, false},
      {8, 8, 17, 3, 3, 2, 2, 1, 1, 1, 1, 0, 0.f, 6.f, false},
      {5, 6, 33, 5, 5, 1, 1, 2, 2, 1, 1, 255, 0.f, inf, false},
      {9, 7, 96, 3, 3, 1, 1, 2, 2, 2, 2, 77, -inf, inf, false},
      {3, 2, 8, 5, 5, 1, 1, 2, 2, 1, 1, 10, -inf, inf, false},   // kernel wider than the image
      {6, 6, 15, 3, 1, 1, 2, 1, 0, 1, 1, 200, -0.5f, 0.5f, false},
      {4, 5, 1, 3, 3, 1, 1, 1, 1, 1, 1, 3, -inf, inf, false},
      {5, 5, 40, 3, 3, 1, 1, 1, 1, 1, 1, 0, -inf, inf, true},    // x = 255, w = -127 everywhere
      {4, 4, 24, 1, 1, 1, 1, 0, 0, 1, 1, 128, -inf, inf, false},
      {6, 7, 48, 7, 7, 1, 1, 3, 3, 1, 1, 128, -inf, inf, false},  // 49 taps: the scalar path
      {11, 10, 32, 3, 3, 2, 2, 0, 0, 1, 1, 64, 0.f, inf, false},  // no padding, stride 2
  };
  int tested = 0;
  for (const Case& c : cases) {
    const int64_t OH = out_size(c.H, c.kh, c.sh, c.ph, c.dh), OW = out_size(c.W, c.kw, c.sw, c.pw, c.dw);
    const Geometry g{c.H, c.W, c.C, OW, c.kh, c.kw, c.sh, c.sw, c.ph, c.pw, c.dh, c.dw, c.zero, c.lo, c.hi};
    std::vector<uint8_t> x(static_cast<size_t>(c.H * c.W * c.C));
    std::vector<int8_t> w(static_cast<size_t>(c.kh * c.kw * c.C));
    std::vector<float> s(static_cast<size_t>(c.C)), b(static_cast<size_t>(c.C));
    for (auto& v : x) v = static_cast<uint8_t>(c.extreme ? 255 : rnd_int(0, 255));
    for (auto& v : w) v = static_cast<int8_t>(c.extreme ? -127 : rnd_int(-127, 127));
    for (auto& v : s) v = 1e-3f * (1.f + std::fabs(rnd()));
    for (auto& v : b) v = rnd();
    const std::vector<float> want = run_all(ref, g, OH, x, w, s, b);
    size_t bad = 0;
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow)
        for (int64_t ch = 0; ch < c.C; ++ch) {
          int64_t acc = 0;
          for (int64_t i = 0; i < c.kh; ++i)
            for (int64_t j = 0; j < c.kw; ++j) {
              const int64_t ih = oh * c.sh - c.ph + i * c.dh, iw = ow * c.sw - c.pw + j * c.dw;
              const bool in = ih >= 0 && ih < c.H && iw >= 0 && iw < c.W;
              const int64_t xv = in ? x[(ih * c.W + iw) * c.C + ch] : c.zero;  // padding stands for 0.0
              acc += (xv - c.zero) * w[(i * c.kw + j) * c.C + ch];
            }
          float v = std::fma(static_cast<float>(acc), s[ch], b[ch]);
          v = std::min(std::max(v, c.lo), c.hi);
          bad += want[(oh * OW + ow) * c.C + ch] != v;
        }
    DSQ_CHECK(bad == 0, "reference vs independent loop: %zu wrong (C=%lld k=%lldx%lld)", bad, (long long)c.C,
              (long long)c.kh, (long long)c.kw);
    for (size_t i = static_cast<size_t>(OH * OW * c.C); i < want.size(); ++i) DSQ_CHECK(want[i] == -777.f, "wrote past");
    for (const Ukernel& uk : list) {
      if (!isa_supported(uk.isa) || &uk == &ref) continue;
      const std::vector<float> got = run_all(uk, g, OH, x, w, s, b);
      DSQ_CHECK(std::memcmp(got.data(), want.data(), got.size() * 4) == 0, "%s differs from the reference (C=%lld)",
                uk.name, (long long)c.C);
      ++tested;
    }
  }
  DSQ_CHECK(isa_supported(best_ukernel().isa), "best supported");
  DSQ_CHECK(find_ukernel("dwconv_qu8_1__scalar") == &ref && find_ukernel("nope") == nullptr, "find_ukernel");
  std::printf("best: %s, %d variant x case checks\n", best_ukernel().name, tested);
  DSQ_TEST_MAIN_END();
}
