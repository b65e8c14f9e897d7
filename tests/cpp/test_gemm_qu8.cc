// gemm_qu8: every built ukernel the CPU supports is bit-identical to the scalar
// reference; the reference matches a naive double loop; run() touches only its tiles;
// quantize()/minmax()/choose_params() match naive loops (ties, out-of-range values).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "check.h"
#include "kernels/gemm_qu8/gemm_qu8.h"

using namespace dsq;
using namespace dsq::gemm_qu8;

namespace {

std::mt19937 rng(12345);

int rand_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
float rand_float(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }

constexpr float kSentinel = -12345.678f;

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

struct Problem {
  size_t m, n, k, kp, a_stride, c_stride;  // strides in bytes
  std::vector<uint8_t> a;
  std::vector<int8_t> qw;
  std::vector<float> w_scale, bias;
  bool has_bias;
  Epilogue ep;
};

Problem make_problem(size_t m, size_t n, size_t k, int32_t a_zero, bool has_bias, int clamp) {
  Problem pr;
  pr.m = m;
  pr.n = n;
  pr.k = k;
  pr.kp = padded_k(k);
  pr.a_stride = pr.kp + static_cast<size_t>(rand_int(0, 2)) * 4 + static_cast<size_t>(rand_int(0, 3));
  pr.c_stride = (n + static_cast<size_t>(rand_int(0, 5))) * sizeof(float);
  pr.a.assign(m * pr.a_stride, 0xAB);  // stride gap holds garbage; the padding must be 0
  for (size_t i = 0; i < m; ++i) {
    for (size_t j = 0; j < pr.kp; ++j) {
      uint8_t v = 0;
      if (j < k) {
        const int r = rand_int(0, 9);
        v = r == 0 ? 0 : r == 1 ? 255 : static_cast<uint8_t>(rand_int(0, 255));
      }
      pr.a[i * pr.a_stride + j] = v;
    }
  }
  pr.qw.resize(n * k);
  for (auto& w : pr.qw) {
    const int r = rand_int(0, 9);
    w = static_cast<int8_t>(r == 0 ? -128 : r == 1 ? 127 : rand_int(-128, 127));
  }
  pr.w_scale.resize(n);
  pr.bias.resize(n);
  for (size_t j = 0; j < n; ++j) {
    pr.w_scale[j] = rand_float(1e-4f, 2e-3f);
    pr.bias[j] = rand_float(-2.0f, 2.0f);
  }
  pr.has_bias = has_bias;
  pr.ep.a_zero = a_zero;
  pr.ep.a_scale = rand_float(0.005f, 0.05f);
  const float inf = std::numeric_limits<float>::infinity();
  if (clamp == 0) {
    pr.ep.lo = -inf, pr.ep.hi = inf;
  } else if (clamp == 1) {
    pr.ep.lo = 0.0f, pr.ep.hi = inf;  // relu
  } else {
    pr.ep.lo = -0.5f, pr.ep.hi = 0.75f;
  }
  return pr;
}

std::vector<float> run_full(const Ukernel& uk, const Problem& pr) {
  PackedWeights w = pack(pr.qw.data(), pr.w_scale.data(), pr.has_bias ? pr.bias.data() : nullptr,
                         pr.n, pr.k, uk.nr);
  std::vector<float> c(pr.m * pr.c_stride / sizeof(float), kSentinel);
  run(uk, w, pr.a.data(), pr.a_stride, c.data(), pr.c_stride, 0, pr.m, 0, w.panel_count(),
      pr.ep);
  return c;
}

void check_naive(const Problem& pr, const std::vector<float>& c, const char* name) {
  const size_t cs = pr.c_stride / sizeof(float);
  for (size_t i = 0; i < pr.m; ++i) {
    for (size_t j = 0; j < pr.n; ++j) {
      double acc = 0.0;
      for (size_t t = 0; t < pr.k; ++t) {
        acc += (static_cast<double>(pr.a[i * pr.a_stride + t]) - pr.ep.a_zero) * pr.qw[j * pr.k + t];
      }
      const double s = static_cast<double>(pr.ep.a_scale) * pr.w_scale[j];
      const double b = pr.has_bias ? pr.bias[j] : 0.0;
      double want = acc * s + b;
      want = std::min(std::max(want, static_cast<double>(pr.ep.lo)), static_cast<double>(pr.ep.hi));
      const double tol = 1e-6 * (std::fabs(acc * s) + std::fabs(b)) + 1e-30;
      const float got = c[i * cs + j];
      if (!(std::fabs(got - want) <= tol)) {
        DSQ_CHECK(false, "%s naive m=%zu n=%zu k=%zu [%zu,%zu] got %.9g want %.9g", name,
                  pr.m, pr.n, pr.k, i, j, got, want);
        return;
      }
    }
    for (size_t j = pr.n; j < cs; ++j) {
      if (bits(c[i * cs + j]) != bits(kSentinel)) {
        DSQ_CHECK(false, "%s wrote past n at [%zu,%zu]", name, i, j);
        return;
      }
    }
  }
  DSQ_CHECK(true, "%s", name);
}

bool same_bits(const std::vector<float>& x, const std::vector<float>& y) {
  return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
}

void test_ukernel(const Ukernel& uk, const Ukernel& ref) {
  // Every row count of a tile (the exact-row instantiations) and one past; widths
  // around the 16/32/64-column panels; odd k (padding of the last 4-byte block).
  std::vector<size_t> ms = {37};
  for (size_t m = 1; m <= uk.mr + 1; ++m) ms.push_back(m);
  std::vector<size_t> ns = {1, 7, 15, 16, 17, 31, 33, 64, 65};
  for (size_t n : {uk.nr - 1, uk.nr, uk.nr + 1})
    if (std::find(ns.begin(), ns.end(), n) == ns.end()) ns.push_back(n);
  const size_t ks[] = {1, 3, 4, 5, 25, 144, 577};
  const int32_t zeros[] = {0, 128, 255};
  int idx = 0;
  for (size_t m : ms) {
    if (m == 0) continue;
    for (size_t n : ns) {
      if (n == 0) continue;
      for (size_t k : ks) {
        ++idx;
        Problem pr = make_problem(m, n, k, zeros[idx % 3], (idx / 3) % 2 == 0, (idx / 6) % 3);
        const std::vector<float> got = run_full(uk, pr);
        const std::vector<float> want = run_full(ref, pr);
        bool same = same_bits(got, want);
        DSQ_CHECK(same, "%s != reference for m=%zu n=%zu k=%zu a_zero=%d", uk.name, m, n, k,
                  pr.ep.a_zero);
        if (&uk == &ref || idx % 4 == 0) check_naive(pr, want, ref.name);
      }
    }
  }
}

// u8 output (activation chaining): the code quantize() gives each float output, c_stride
// bytes per row with nothing written past n; the bad flag set exactly when an output is
// NaN / Inf (a 1e38 activation scale without a clamp overflows; with a clamp at +-1e30 it
// gives codes 0 and 255 only). A variant without u8_out refuses it.
void test_u8_output(const Ukernel& uk, const Ukernel& ref) {
  int idx = 0, u8_non_finite = 0;
  for (size_t m : {size_t(1), size_t(3), uk.mr, uk.mr + 5})
    for (size_t n : {size_t(1), size_t(17), uk.nr, uk.nr + 9})
      for (size_t k : {size_t(4), size_t(25), size_t(144)})
        for (int overflow = 0; overflow < 3; ++overflow) {
          ++idx;
          Problem pr = make_problem(m, n, k, 77, idx % 2 == 0, overflow ? 0 : idx % 3);
          if (overflow) pr.ep.a_scale = 1e38f;
          if (overflow == 2) pr.ep.lo = -1e30f, pr.ep.hi = 1e30f;  // finite, far past the codes
          const std::vector<float> f = run_full(ref, pr);
          const QuantParams oq{0.01f, 90};
          const size_t cs = pr.c_stride / sizeof(float), q_stride = n + 3;
          std::vector<uint8_t> want(m * q_stride, 0xA5);
          bool finite = true;
          for (size_t i = 0; i < m; ++i) {
            std::vector<uint8_t> row(padded_k(n));
            finite &= quantize(f.data() + i * cs, 1, n, 0, row.data(), row.size(), oq);
            std::memcpy(want.data() + i * q_stride, row.data(), n);
          }
          u8_non_finite += !finite;
          PackedWeights w = pack(pr.qw.data(), pr.w_scale.data(), pr.has_bias ? pr.bias.data() : nullptr, pr.n, pr.k,
                                 uk.nr);
          std::vector<uint8_t> got(m * q_stride, 0xA5);
          uint8_t bad = 0;
          Epilogue ep = pr.ep;
          ep.out_u8 = true;
          ep.out_scale = oq.scale;
          ep.out_zero = oq.zero;
          ep.out_bad = &bad;
          bool threw = false;
          try {
            run(uk, w, pr.a.data(), pr.a_stride, reinterpret_cast<float*>(got.data()), q_stride, 0, m, 0,
                w.panel_count(), ep);
          } catch (const std::invalid_argument&) {
            threw = true;
          }
          DSQ_CHECK(threw == !uk.u8_out, "%s: u8 output %s", uk.name, threw ? "refused" : "accepted");
          if (threw) return;
          DSQ_CHECK(got == want, "%s: u8 output differs from quantize (m=%zu n=%zu k=%zu overflow %d)", uk.name, m, n,
                    k, overflow);
          DSQ_CHECK((bad != 0) == !finite, "%s: u8 bad flag %d, outputs finite %d", uk.name, bad, finite);
        }
  DSQ_CHECK(u8_non_finite >= 8, "%s: only %d u8 cases met an Inf output", uk.name, u8_non_finite);
}

uint8_t naive_quant(float x, QuantParams p);

// The u8 output epilogues' quantizer (quantize_as_epilogue), branch-free (FMA-corrected
// quotient) and with its near-tie branch, against naive_quant: values around every
// half and integer code boundary (a few ulps either side), range ends, and where the range
// admits them NaN, +-Inf, huge and subnormal values; scales where the FMA form applies and
// where it must fall back; ranges that skip each clamp.
void test_epilogue_quantizer() {
  const float inf = std::numeric_limits<float>::infinity();
  const float scales[] = {6.f / 255, 0.0173f, 1e-3f, 3.7f, 0x1p-50f, 0x1p-70f, 0x1p90f, 0x1p110f, 1.f / 3};
  const int32_t zeros[] = {0, 77, 128, 255};
  const float ranges[][2] = {{-inf, inf}, {0.f, inf}, {0.f, 6.f}, {-0.75f, 2.5f}, {-1e30f, 1e30f}, {-inf, 0.f}};
  size_t checked = 0, ties = 0;
  for (const float sc : scales)
    for (const int32_t zero : zeros)
      for (const auto& range : ranges) {
        const float lo = range[0], hi = range[1];
        std::vector<float> x;
        for (int k = -300; k <= 300; ++k)
          for (const float frac : {0.5f, 0.f}) {
            const float center = (static_cast<float>(k) + frac) * sc;
            uint32_t b;
            std::memcpy(&b, &center, 4);
            for (int d = -4; d <= 4; ++d) {
              const uint32_t bd = b + static_cast<uint32_t>(d);
              float v;
              std::memcpy(&v, &bd, 4);
              x.push_back(v);
            }
          }
        for (int i = 0; i < 200; ++i) x.push_back(rand_float(-300.f, 300.f) * sc);
        x.push_back(0.f);
        x.push_back(-0.f);
        x.push_back(1e38f);
        x.push_back(-1e38f);
        x.push_back(1e-40f);
        x.push_back(lo);
        x.push_back(hi);
        const bool admits_bad = !std::isfinite(lo) || !std::isfinite(hi);
        if (admits_bad) {
          x.push_back(std::numeric_limits<float>::quiet_NaN());
          x.push_back(inf);
          x.push_back(-inf);
        }
        for (float& v : x) {  // the kernels' clamp (vmaxps / vminps: NaN -> lo), but keep the NaNs
          if (admits_bad && std::isnan(v)) continue;  // of a range that admits them
          v = v > lo ? v : lo;
          v = v < hi ? v : hi;
        }
        std::vector<uint8_t> want(x.size());
        bool finite = true;
        for (size_t i = 0; i < x.size(); ++i) {
          finite = finite && std::isfinite(x[i]);
          want[i] = naive_quant(x[i], QuantParams{sc, zero});
          const float t = std::fabs(x[i] / sc - std::nearbyint(x[i] / sc));
          ties += t > 0.49f && t < 0.51f;
        }
        for (const bool branch_free : {false, true}) {
          std::vector<uint8_t> got(x.size(), 0xA5);
          const bool got_finite = quantize_as_epilogue(x.data(), x.size(), got.data(), QuantParams{sc, zero}, lo, hi,
                                                       branch_free);
          size_t bad = 0, first = 0;
          for (size_t i = 0; i < x.size(); ++i)
            if (got[i] != want[i] && bad++ == 0) first = i;
          DSQ_CHECK(bad == 0, "epilogue quantizer (branch_free %d) scale %a zero %d range [%g, %g]: %zu codes differ, "
                    "first x=%a got %d want %d", branch_free, sc, zero, lo, hi, bad, x[first], got[first], want[first]);
          DSQ_CHECK(!admits_bad || got_finite == finite, "epilogue quantizer finite flag %d, want %d", got_finite, finite);
          checked += x.size();
        }
      }
  DSQ_CHECK(ties > 100000, "only %zu values near a half", ties);
  std::printf("epilogue quantizer: %zu values checked\n", checked);
}

// Sub-ranges of rows and panels write exactly their own outputs.
void test_subranges(const Ukernel& uk) {
  Problem pr = make_problem(37, 3 * uk.nr + 5, 77, 128, true, 0);
  PackedWeights w = pack(pr.qw.data(), pr.w_scale.data(), pr.bias.data(), pr.n, pr.k, uk.nr);
  std::vector<float> full(pr.m * pr.c_stride / 4, kSentinel);
  run(uk, w, pr.a.data(), pr.a_stride, full.data(), pr.c_stride, 0, pr.m, 0, w.panel_count(), pr.ep);
  const size_t cs = pr.c_stride / 4;
  const size_t ranges[][4] = {{3, 11, 1, 3}, {0, 1, 0, 1}, {uk.mr, 2 * uk.mr + 1, 2, 4}, {36, 37, 3, 4}};
  for (const auto& r : ranges) {
    std::vector<float> c(full.size(), kSentinel);
    run(uk, w, pr.a.data(), pr.a_stride, c.data(), pr.c_stride, r[0], r[1], r[2], r[3], pr.ep);
    bool ok = true;
    for (size_t i = 0; i < pr.m; ++i) {
      for (size_t j = 0; j < cs; ++j) {
        const bool inside = i >= r[0] && i < r[1] && j >= r[2] * uk.nr && j < std::min(r[3] * uk.nr, pr.n);
        const float want = inside ? full[i * cs + j] : kSentinel;
        if (bits(c[i * cs + j]) != bits(want)) ok = false;
      }
    }
    DSQ_CHECK(ok, "%s sub-range rows [%zu,%zu) panels [%zu,%zu) wrong", uk.name, r[0], r[1], r[2], r[3]);
  }
}

uint8_t naive_quant(float x, QuantParams p) {
  const float r = std::nearbyint(x / p.scale);
  if (std::isnan(r)) return 0;
  if (r > 1e6f) return 255;
  if (r < -1e6f) return 0;
  const long v = static_cast<long>(r) + p.zero;
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

void test_quantize() {
  const size_t ks[] = {1, 3, 4, 5, 15, 16, 17, 31, 33, 64, 577};
  for (size_t k : ks) {
    for (int variant = 0; variant < 7; ++variant) {
      const size_t m = 5;
      const size_t x_stride = (k + 3) * sizeof(float);
      const size_t kp = padded_k(k);
      const size_t q_stride = kp + 7;
      std::vector<float> x(m * (k + 3), 999.0f);
      QuantParams p;
      if (variant == 0) {
        // Ties: scale a power of two, x = (j + 0.5) * scale exactly.
        p = {0.25f, 100};
        for (size_t i = 0; i < m; ++i)
          for (size_t j = 0; j < k; ++j)
            x[i * (k + 3) + j] = (static_cast<float>(rand_int(-300, 300)) + 0.5f) * 0.25f;
      } else if (variant == 1) {
        // Values beyond the range, huge and infinite.
        p = {0.01f, 7};
        // 3e38 / 0.01 overflows to Inf from a finite x: still a finite input.
        const float specials[] = {1e30f, -1e30f, std::numeric_limits<float>::infinity(),
                                  -std::numeric_limits<float>::infinity(), 3e9f, -3e9f,
                                  2.545f, -0.075f, 0.0f, -0.0f, 3e38f, -3e38f};
        for (size_t i = 0; i < m; ++i)
          for (size_t j = 0; j < k; ++j)
            x[i * (k + 3) + j] = rand_int(0, 2) ? specials[rand_int(0, 11)] : rand_float(-3, 3);
      } else if (variant == 4) {
        // Near ties with a scale that is not a power of two (the SIMD code multiplies by
        // 1 / scale and must divide these): x = (j + 0.5) * scale rounded, and 1-2 ulp off.
        p = {6.0f / 255.0f, 3};
        for (size_t i = 0; i < m; ++i)
          for (size_t j = 0; j < k; ++j) {
            float v = (static_cast<float>(rand_int(-260, 260)) + 0.5f) * p.scale;
            for (int u = rand_int(-2, 2); u != 0; u += u > 0 ? -1 : 1)
              v = std::nextafter(v, u > 0 ? 1e9f : -1e9f);
            x[i * (k + 3) + j] = v;
          }
      } else if (variant == 5) {
        // Arbitrary scales, from tiny to huge, and values around the whole u8 range.
        const float scales[] = {3.3e-38f, 1e-30f, 7.1e-6f, 0.0123f, 0.1f, 1.7f, 333.3f, 1e30f, 2e38f};
        p = {scales[rand_int(0, 8)], rand_int(0, 255)};
        for (size_t i = 0; i < m; ++i)
          for (size_t j = 0; j < k; ++j) x[i * (k + 3) + j] = rand_float(-300.0f, 300.0f) * p.scale;
      } else if (variant == 6) {
        // Finite values whose product with 1 / scale overflows: finite input, 0 or 255.
        p = {0.01f, 9};
        for (size_t i = 0; i < m; ++i)
          for (size_t j = 0; j < k; ++j) x[i * (k + 3) + j] = rand_int(0, 1) ? 3.3e38f : -3.3e38f;
      } else if (variant == 3) {
        // One NaN anywhere (vector body or scalar tail): quantize must report it.
        p = {0.02f, 128};
        for (size_t i = 0; i < m; ++i)
          for (size_t j = 0; j < k; ++j) x[i * (k + 3) + j] = rand_float(-2.0f, 2.0f);
        x[static_cast<size_t>(rand_int(0, static_cast<int>(m) - 1)) * (k + 3) +
          static_cast<size_t>(rand_int(0, static_cast<int>(k) - 1))] = std::numeric_limits<float>::quiet_NaN();
      } else {
        for (size_t i = 0; i < m; ++i)
          for (size_t j = 0; j < k; ++j) x[i * (k + 3) + j] = rand_float(-3.0f, 5.0f);
        float lo, hi;
        minmax(x.data(), m, k, x_stride, &lo, &hi);
        float nl = 0, nh = 0;
        for (size_t i = 0; i < m; ++i)
          for (size_t j = 0; j < k; ++j) {
            nl = std::min(nl, x[i * (k + 3) + j]);
            nh = std::max(nh, x[i * (k + 3) + j]);
          }
        DSQ_CHECK(lo == nl && hi == nh, "minmax k=%zu got [%g,%g] want [%g,%g]", k, lo, hi, nl, nh);
        p = choose_params(lo, hi);
        DSQ_CHECK(p.zero >= 0 && p.zero <= 255 && p.scale > 0, "choose_params");
        // The range must be representable: lo and hi quantize within one step.
        DSQ_CHECK(std::fabs((naive_quant(lo, p) - p.zero) * p.scale - lo) <= p.scale &&
                      std::fabs((naive_quant(hi, p) - p.zero) * p.scale - hi) <= p.scale,
                  "choose_params range k=%zu", k);
      }
      std::vector<uint8_t> q(m * q_stride, 0xCD);
      const bool finite = quantize(x.data(), m, k, x_stride, q.data(), q_stride, p);
      bool want_finite = true;  // the stride gap (999) is not part of the input
      for (size_t i = 0; i < m; ++i)
        for (size_t j = 0; j < k; ++j) want_finite = want_finite && std::isfinite(x[i * (k + 3) + j]);
      DSQ_CHECK(finite == want_finite, "quantize k=%zu variant=%d reports finite=%d, want %d", k, variant, finite,
                want_finite);
      bool ok = true;
      for (size_t i = 0; i < m && ok; ++i) {
        for (size_t j = 0; j < q_stride; ++j) {
          const uint8_t want = j < k ? naive_quant(x[i * (k + 3) + j], p) : j < kp ? 0 : 0xCD;
          if (q[i * q_stride + j] != want) {
            DSQ_CHECK(false, "quantize k=%zu variant=%d [%zu,%zu] got %d want %d (x=%.9g)", k,
                      variant, i, j, q[i * q_stride + j], want, j < k ? x[i * (k + 3) + j] : 0.0f);
            ok = false;
            break;
          }
        }
      }
      DSQ_CHECK(ok, "quantize");
    }
  }
  // Degenerate range.
  const QuantParams z = choose_params(0.0f, 0.0f);
  DSQ_CHECK(z.scale > 0 && z.zero >= 0 && z.zero <= 255, "choose_params(0,0)");
}

// best_ukernel_for: stays within the best ISA and picks the least padded width; on a
// VNNI machine a 16-output layer gets a 16-wide panel (no FMAs on zero columns).
// run_segmented (implicit GEMM) reads each A row as `segs` strided segments: the rows of
// an NHWC image band, as a conv with kh = segs reads them. Bit-identical to the reference
// on the gathered (im2col) rows.
void test_segmented(const Ukernel& uk, const Ukernel& ref) {
  const size_t cases[][4] = {  // segs, bytes per segment, rows (m), n
      {3, 48, 37, 16}, {3, 48, 1, 20}, {5, 100, 24, 50}, {1, 64, 13, 64}, {3, 12, 29, 33}, {2, 4, 7, 1}};
  for (const auto& cs : cases) {
    const size_t segs = cs[0], seg_bytes = cs[1], m = cs[2], n = cs[3], k = segs * seg_bytes;
    const size_t a_stride = 4 + static_cast<size_t>(rand_int(0, 3));  // rows overlap, as neighbouring pixels
    const size_t seg_stride = m * a_stride + seg_bytes + static_cast<size_t>(rand_int(0, 9));
    std::vector<uint8_t> image(segs * seg_stride + m * a_stride + seg_bytes);
    for (auto& v : image) v = static_cast<uint8_t>(rand_int(0, 255));
    Problem pr = make_problem(m, n, k, rand_int(0, 255), rand_int(0, 1) == 1, rand_int(0, 2));
    pr.a_stride = k;  // the gathered rows
    pr.a.assign(m * k, 0);
    for (size_t i = 0; i < m; ++i)
      for (size_t sgm = 0; sgm < segs; ++sgm)
        std::memcpy(&pr.a[i * k + sgm * seg_bytes], &image[i * a_stride + sgm * seg_stride], seg_bytes);
    const std::vector<float> want = run_full(ref, pr);
    PackedWeights w = pack(pr.qw.data(), pr.w_scale.data(), pr.has_bias ? pr.bias.data() : nullptr, n, k, uk.nr);
    DSQ_CHECK(segmented_ok(uk, w, segs), "%s segmented_ok segs=%zu k=%zu", uk.name, segs, k);
    std::vector<float> got(m * pr.c_stride / sizeof(float), kSentinel);
    run_segmented(uk, w, image.data(), a_stride, segs, seg_stride, got.data(), pr.c_stride, 0, m, 0, w.panel_count(),
                  pr.ep);
    DSQ_CHECK(same_bits(got, want), "%s segmented segs=%zu seg_bytes=%zu m=%zu n=%zu", uk.name, segs, seg_bytes, m, n);
    // The fused residual: out = min(max(out + r, res_lo), res_hi), r at a fixed offset
    // from each output (a NaN residual stays NaN, as in add_residual).
    std::vector<float> res(got.size()), fused(got.size(), kSentinel), expect = want;
    for (auto& v : res) v = static_cast<float>(rand_int(-300, 300)) * 0.01f;
    res[0] = std::numeric_limits<float>::quiet_NaN();
    Epilogue er = pr.ep;
    er.has_residual = true;
    er.residual_offset = reinterpret_cast<const char*>(res.data()) - reinterpret_cast<const char*>(fused.data());
    er.res_lo = -0.5f;
    er.res_hi = 1.25f;
    for (size_t i = 0; i < m; ++i)
      for (size_t j = 0; j < n; ++j) {
        const size_t e = i * pr.c_stride / sizeof(float) + j;
        expect[e] = std::min(std::max(want[e] + res[e], er.res_lo), er.res_hi);
      }
    run_segmented(uk, w, image.data(), a_stride, segs, seg_stride, fused.data(), pr.c_stride, 0, m, 0,
                  w.panel_count(), er);
    DSQ_CHECK(same_bits(fused, expect), "%s segmented + residual segs=%zu m=%zu n=%zu", uk.name, segs, m, n);
    bool threw = false;
    try {
      run(uk, w, pr.a.data(), pr.a_stride, fused.data(), pr.c_stride, 0, m, 0, w.panel_count(), er);
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    DSQ_CHECK(threw, "%s: run() refuses a fused residual", uk.name);
  }
  // k that does not split into whole 4-byte blocks per segment: refused.
  std::vector<int8_t> qw(2 * 18, 1);
  std::vector<float> sc(2, 1.f);
  PackedWeights w = pack(qw.data(), sc.data(), nullptr, 2, 18, uk.nr);
  DSQ_CHECK(!segmented_ok(uk, w, 3), "%s: k=18 in 3 segments of 6 bytes must be refused", uk.name);
}

void test_best_for() {
  const Ukernel& dflt = best_ukernel();
  const size_t widths[] = {1, 10, 16, 20, 32, 48, 64, 65, 100, 128, 1000};
  for (size_t n : widths) {
    const Ukernel& uk = best_ukernel_for(n);
    DSQ_CHECK(uk.isa == dflt.isa, "best_ukernel_for(%zu) = %s, not of the best ISA %s", n, uk.name,
              isa_name(dflt.isa));
    const size_t padded = (n + uk.nr - 1) / uk.nr * uk.nr;
    for (const Ukernel& other : all_ukernels()) {
      if (other.isa != dflt.isa) continue;
      const size_t op = (n + other.nr - 1) / other.nr * other.nr;
      DSQ_CHECK(padded < op || (padded == op && uk.nr >= other.nr),
                "best_ukernel_for(%zu) = %s but %s pads less or equal with a wider panel", n,
                uk.name, other.name);
    }
  }
  DSQ_CHECK(&best_ukernel_for(0) == &dflt, "best_ukernel_for(0) is the default");
  if (dflt.isa != Isa::kAvx512Vnni) {  // CPU or DSQ_MAX_ISA without it, or a portable build
    std::printf("skip the 16-wide choice check: the best ISA here lacks it (best: %s)\n",
                dflt.name);
    return;
  }
  DSQ_CHECK(best_ukernel_for(16).nr == 16, "best_ukernel_for(16) = %s", best_ukernel_for(16).name);
  DSQ_CHECK(best_ukernel_for(64).nr == 64, "best_ukernel_for(64) = %s", best_ukernel_for(64).name);
  DSQ_CHECK(best_ukernel_for(20).nr == 32, "best_ukernel_for(20) = %s", best_ukernel_for(20).name);
  std::printf("best_ukernel_for: 16 -> %s, 20 -> %s, 64 -> %s\n", best_ukernel_for(16).name,
              best_ukernel_for(20).name, best_ukernel_for(64).name);
}

}  // namespace

int main() {
  const auto& list = all_ukernels();
  DSQ_CHECK(!list.empty() && list.front().isa == Isa::kScalar, "reference first");
  const Ukernel& ref = list.front();
  int n_tested = 0;
#define DSQ_GEMM_QU8_UKERNEL(ident, isa_, mr_, nr_)                                       \
  {                                                                                       \
    const Ukernel* uk = find_ukernel(#ident);                                             \
    DSQ_CHECK(uk && uk->mr == mr_ && uk->nr == nr_ && uk->isa == Isa::isa_, "%s", #ident); \
  }
#include "kernels/gemm_qu8/kernels.inc"
#undef DSQ_GEMM_QU8_UKERNEL
  DSQ_CHECK(isa_supported(best_ukernel().isa), "best_ukernel supported");
  std::printf("best: %s\n", best_ukernel().name);
  for (const Ukernel& uk : list) {
    if (!isa_supported(uk.isa)) {
      std::printf("skip %s (%s not supported)\n", uk.name, isa_name(uk.isa));
      continue;
    }
    test_ukernel(uk, ref);
    test_subranges(uk);
    test_u8_output(uk, ref);
    if (uk.seg_fn) {
      test_segmented(uk, ref);
      std::printf("ok %s segmented\n", uk.name);
    }
    ++n_tested;
    std::printf("ok %s\n", uk.name);
  }
  test_best_for();
  test_quantize();
  test_epilogue_quantizer();
#if DSQ_X86
  // Every AVX-512 VNNI variant has a segmented twin (the conv layers rely on it).
  for (const Ukernel& uk : list)
    if (uk.isa == Isa::kAvx512Vnni) DSQ_CHECK(uk.seg_fn != nullptr, "%s has no segmented twin", uk.name);
#endif
  DSQ_CHECK(ref.u8_out, "the reference writes u8");
  std::printf("%d ukernels tested\n", n_tested);
  DSQ_TEST_MAIN_END();
}
