// dwconv_qu8: every built variant the CPU runs is bit-identical to the scalar reference
// (exact integer sums, one fma per output), and the reference matches an independent
// loop that pads with the zero point and sums (x - zero) * w in 64 bits, over channel
// counts around the vector widths (SIMD blocks + scalar tail), kernel shapes, strides,
// paddings, dilations, images smaller than the kernel, zero points 0 / mid / 255, the
// extreme codes (x 255, w -127) and clamps.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "check.h"
#include "kernels/dwconv_qu8/dwconv_qu8.h"
#include "kernels/gemm_qu8/gemm_qu8.h"

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

// The 3-tap packed pair (kw 3, dw 1): pack every image row, then the packed row kernel.
std::vector<float> run_packed(const Ukernel& uk, const Geometry& g, int64_t OH, const std::vector<uint8_t>& x,
                              const std::vector<int8_t>& w, const std::vector<float>& s, const std::vector<float>& b) {
  std::vector<uint32_t> packed(static_cast<size_t>(g.H * g.OW * g.C) + 1, 0xDEADBEEFu);
  for (int64_t ih = 0; ih < g.H; ++ih) uk.pack(g, x.data() + ih * g.W * g.C, packed.data() + ih * g.OW * g.C);
  DSQ_CHECK(packed.back() == 0xDEADBEEFu, "%s: pack wrote past the rows", uk.name);
  const std::vector<uint32_t> w3 = pack_weights3(w.data(), g.kh, g.C);
  std::vector<float> y(static_cast<size_t>(OH * g.OW * g.C + 5), -777.f);
  for (int64_t oh = 0; oh < OH; ++oh)
    uk.packed(g, packed.data(), 0, w3.data(), s.data(), b.data(), y.data() + oh * g.OW * g.C, oh);
  // A band of rows from first_row on (what a thread packs for its output rows).
  for (int64_t oh = 0; oh < OH; ++oh) {
    const int64_t lo = std::max<int64_t>(0, oh * g.sh - g.ph);
    std::vector<float> yb(static_cast<size_t>(g.OW * g.C));
    uk.packed(g, packed.data() + lo * g.OW * g.C, lo, w3.data(), s.data(), b.data(), yb.data(), oh);
    DSQ_CHECK(std::memcmp(yb.data(), y.data() + oh * g.OW * g.C, yb.size() * 4) == 0, "%s: first_row %lld",
              uk.name, (long long)lo);
  }
  return y;
}

// u8 output (Geometry::out_u8) of every output row, by the row kernel or the packed pair:
// the codes and whether any output was NaN / Inf.
std::vector<uint8_t> run_u8(const Ukernel& uk, bool packed, Geometry g, int64_t OH, const std::vector<uint8_t>& x,
                            const std::vector<int8_t>& w, const std::vector<float>& s, const std::vector<float>& b,
                            float out_scale, int32_t out_zero, bool* out_bad) {
  uint8_t bad = 0;
  g.out_u8 = true;
  g.out_scale = out_scale;
  g.out_zero = out_zero;
  g.out_bad = &bad;
  std::vector<uint8_t> y(static_cast<size_t>(OH * g.OW * g.C + 5), 0xA5);  // +5: nothing written past
  std::vector<uint32_t> p(static_cast<size_t>(g.H * g.OW * g.C));
  const std::vector<uint32_t> w3 = packed ? pack_weights3(w.data(), g.kh, g.C) : std::vector<uint32_t>();
  if (packed)
    for (int64_t ih = 0; ih < g.H; ++ih) uk.pack(g, x.data() + ih * g.W * g.C, p.data() + ih * g.OW * g.C);
  for (int64_t oh = 0; oh < OH; ++oh) {
    float* row = reinterpret_cast<float*>(y.data() + oh * g.OW * g.C);
    if (packed) uk.packed(g, p.data(), 0, w3.data(), s.data(), b.data(), row, oh);
    else uk.fn(g, x.data(), w.data(), s.data(), b.data(), row, oh);
  }
  for (size_t i = static_cast<size_t>(OH * g.OW * g.C); i < y.size(); ++i) DSQ_CHECK(y[i] == 0xA5, "%s: u8 past", uk.name);
  *out_bad = bad != 0;
  y.resize(static_cast<size_t>(OH * g.OW * g.C));
  return y;
}

struct Case { int64_t H, W, C, kh, kw, sh, sw, ph, pw, dh, dw; int32_t zero; float lo, hi; bool extreme; };

// A case's geometry and random operands (x and w at their extremes for `extreme`).
struct Data {
  Geometry g;
  int64_t OH;
  std::vector<uint8_t> x;
  std::vector<int8_t> w;
  std::vector<float> s, b;
};
Data make_data(const Case& c) {
  const int64_t OH = out_size(c.H, c.kh, c.sh, c.ph, c.dh), OW = out_size(c.W, c.kw, c.sw, c.pw, c.dw);
  Data d{Geometry{c.H, c.W, c.C, OW, c.kh, c.kw, c.sh, c.sw, c.ph, c.pw, c.dh, c.dw, c.zero, c.lo, c.hi}, OH,
         std::vector<uint8_t>(static_cast<size_t>(c.H * c.W * c.C)),
         std::vector<int8_t>(static_cast<size_t>(c.kh * c.kw * c.C)), std::vector<float>(static_cast<size_t>(c.C)),
         std::vector<float>(static_cast<size_t>(c.C))};
  for (auto& v : d.x) v = static_cast<uint8_t>(c.extreme ? 255 : rnd_int(0, 255));
  for (auto& v : d.w) v = static_cast<int8_t>(c.extreme ? -127 : rnd_int(-127, 127));
  for (auto& v : d.s) v = 1e-3f * (1.f + std::fabs(rnd()));
  for (auto& v : d.b) v = rnd();
  return d;
}

}  // namespace

int main() {
  const float inf = std::numeric_limits<float>::infinity();
  const auto& list = all_ukernels();
  DSQ_CHECK(!list.empty() && list.front().isa == Isa::kScalar, "reference first");
  const Ukernel& ref = list.front();
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
      // the 3-tap packed pair: row dilation, tall kernels (the scalar fallback past 8 rows),
      // paddings wider than a tap, a 2-pixel image, stride 3
      {9, 8, 20, 3, 3, 1, 1, 2, 1, 2, 1, 90, -inf, inf, false},
      {12, 6, 16, 9, 3, 1, 1, 4, 1, 1, 1, 130, -inf, inf, false},
      {4, 2, 35, 3, 3, 1, 1, 1, 2, 1, 1, 250, -inf, inf, false},
      {10, 11, 18, 3, 3, 3, 3, 1, 1, 1, 1, 5, -1.f, 1.f, false},
  };
  int tested = 0;
  for (const Case& c : cases) {
    auto [g, OH, x, w, s, b] = make_data(c);
    const int64_t OW = g.OW;
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
      if (!uk.packed || !packed3_applies(g)) continue;
      const std::vector<float> gp = run_packed(uk, g, OH, x, w, s, b);
      DSQ_CHECK(std::memcmp(gp.data(), want.data(), gp.size() * 4) == 0,
                "%s packed differs from the reference (C=%lld k=%lldx%lld s=%lld)", uk.name, (long long)c.C,
                (long long)c.kh, (long long)c.kw, (long long)c.sw);
      ++tested;
      if (!uk.quant_pack || c.sw != 1) continue;
      ++tested;
      // quantize + pack in one pass: the bytes of gemm_qu8::quantize then pack (floats at
      // exact codes, near ties, out of range; a NaN is reported and packed as code 0).
      const float qscale = 0.37f;
      std::vector<float> xf(x.size());
      for (size_t i = 0; i < xf.size(); ++i) {
        const int k = static_cast<int>(i % 7);
        xf[i] = k == 0 ? (rnd_int(-300, 300) + 0.5f) * qscale : k == 1 ? 1e6f : k == 2 ? -1e6f : rnd() * 40.f;
      }
      for (int with_nan = 0; with_nan < 2; ++with_nan) {
        if (with_nan) xf[xf.size() / 2] = std::numeric_limits<float>::quiet_NaN();
        std::vector<uint8_t> q(gemm_qu8::padded_k(xf.size()));
        const bool finite_want =
            gemm_qu8::quantize(xf.data(), 1, xf.size(), 0, q.data(), q.size(), gemm_qu8::QuantParams{qscale, c.zero});
        std::vector<uint32_t> want_p(static_cast<size_t>(c.H * OW * c.C)), got_p(want_p.size());
        bool finite_got = true;
        for (int64_t ih = 0; ih < c.H; ++ih) {
          pack_row3_scalar(g, q.data() + ih * c.W * c.C, want_p.data() + ih * OW * c.C);
          finite_got &= uk.quant_pack(g, xf.data() + ih * c.W * c.C, qscale, c.zero, got_p.data() + ih * OW * c.C);
        }
        DSQ_CHECK(finite_got == finite_want && finite_got == !with_nan, "%s quant_pack finite flag (nan %d)",
                  uk.name, with_nan);
        DSQ_CHECK(want_p == got_p, "%s quant_pack differs from quantize + pack (C=%lld, nan %d)", uk.name,
                  (long long)c.C, with_nan);
        ++tested;
      }
    }
  }
  // u8 output (activation chaining): every variant, row kernel and packed pair, stores the
  // code gemm_qu8::quantize gives the float output, and flags a NaN / Inf output. The
  // output scale puts codes across 0..255 with clamping at both ends; a huge per-channel
  // scale makes one channel +-Inf.
  int non_finite_cases = 0;
  for (const Case& c : cases) {
    auto [g, OH, x, w, s, b] = make_data(c);
    const int64_t OW = g.OW;
    for (int overflow = 0; overflow < 2; ++overflow) {
      if (overflow) s[static_cast<size_t>(c.C / 2)] = 3e38f;
      const std::vector<float> want_f = run_all(ref, g, OH, x, w, s, b);
      const size_t n = static_cast<size_t>(OH * OW * c.C);
      // Codes past 255 (0.004, 100); the range [lo, hi] inside 0..255 where it is finite
      // (6 / 255, 0 for [0, 6]; 1 / 255, 127 for [-0.5, 0.5]; the quantizer then skips its
      // clamps).
      for (const gemm_qu8::QuantParams oq :
           {gemm_qu8::QuantParams{0.004f, 100}, gemm_qu8::QuantParams{c.lo < 0 ? 1.f / 255 : 6.f / 255, c.lo < 0 ? 127 : 0}}) {
      const float out_scale = oq.scale;
      const int32_t out_zero = oq.zero;
      std::vector<uint8_t> want(gemm_qu8::padded_k(n));
      const bool finite = gemm_qu8::quantize(want_f.data(), 1, n, 0, want.data(), want.size(),
                                             gemm_qu8::QuantParams{out_scale, out_zero});
      want.resize(n);
      non_finite_cases += !finite;
      for (const Ukernel& uk : list) {
        if (!isa_supported(uk.isa)) continue;
        for (int packed = 0; packed < 2; ++packed) {
          if (packed && (!uk.packed || !packed3_applies(g))) continue;
          bool bad = false;
          const std::vector<uint8_t> got = run_u8(uk, packed, g, OH, x, w, s, b, out_scale, out_zero, &bad);
          DSQ_CHECK(got == want, "%s%s u8 output differs from quantize (C=%lld k=%lldx%lld overflow %d)", uk.name,
                    packed ? " packed" : "", (long long)c.C, (long long)c.kh, (long long)c.kw, overflow);
          DSQ_CHECK(bad == !finite, "%s%s u8 bad flag %d, want %d (C=%lld)", uk.name, packed ? " packed" : "", bad,
                    !finite, (long long)c.C);
          ++tested;
        }
      }
      }
    }
  }
  DSQ_CHECK(non_finite_cases >= 5, "only %d cases overflow to Inf", non_finite_cases);
  DSQ_CHECK(isa_supported(best_ukernel().isa), "best supported");
  DSQ_CHECK(find_ukernel("dwconv_qu8_1__scalar") == &ref && find_ukernel("nope") == nullptr, "find_ukernel");
  std::printf("best: %s, %d variant x case checks\n", best_ukernel().name, tested);
  DSQ_TEST_MAIN_END();
}
