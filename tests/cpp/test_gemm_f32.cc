// Tests every built, supported gemm_f32 ukernel (kernels.inc) through pack() + run()
// against a naive double-precision triple loop: edge sizes, bias, clamps, sub-ranges
// of rows/panels (outputs outside stay untouched), padded strides, and (on Linux)
// guard pages right after A's last row and the packed panel.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "check.h"
#include "kernels/gemm_f32/gemm_f32.h"

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

using namespace dsq;
using namespace dsq::gemm_f32;

namespace {

constexpr float kSentinel = -12345.5f;
const float kInf = std::numeric_limits<float>::infinity();

struct Clamp {
  const char* name;
  float lo, hi;
};
const Clamp kClamps[] = {{"none", -kInf, kInf}, {"relu", 0.f, kInf}, {"relu6", 0.f, 6.f}};

std::mt19937& rng() {
  static std::mt19937 g(1234);
  return g;
}
std::vector<float> random_vec(size_t n, float scale = 1.f) {
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng());
  return v;
}

// Expected output and its error bound for C[i][j].
void reference(const float* a, size_t a_ld, const float* w, const float* bias, size_t i,
               size_t j, size_t k, float lo, float hi, double* out, double* tol) {
  double s = bias ? bias[j] : 0.0, mag = bias ? std::fabs(bias[j]) : 0.0;
  for (size_t kk = 0; kk < k; ++kk) {
    const double p = static_cast<double>(a[i * a_ld + kk]) * w[j * k + kk];
    s += p;
    mag += std::fabs(p);
  }
  *out = std::min(std::max(s, static_cast<double>(lo)), static_cast<double>(hi));
  *tol = 1e-5 * mag + 1e-6;
}

// One full case: run() on [m_begin, m_end) x [p_begin, p_end), everything else in C
// (other rows, other columns, stride padding) must keep the sentinel.
int run_case(const Ukernel& uk, size_t M, size_t N, size_t K, bool with_bias,
             const Clamp& cl, size_t m_begin, size_t m_end, size_t p_begin, size_t p_end) {
  const size_t a_ld = K + 3;  // padded row: a_stride > row length
  const size_t c_ld = N + 5;
  // The padding of A holds NaN: reading it would poison the result.
  std::vector<float> a(M * a_ld, std::numeric_limits<float>::quiet_NaN());
  {
    std::vector<float> r = random_vec(M * K);
    for (size_t i = 0; i < M; ++i) std::copy(r.data() + i * K, r.data() + i * K + K, a.data() + i * a_ld);  // K may be 0
  }
  const std::vector<float> w = random_vec(N * K);
  const std::vector<float> bias = random_vec(N, 2.f);
  const float* bptr = with_bias ? bias.data() : nullptr;

  const PackedWeights pw = pack(w.data(), bptr, N, K, uk.nr);
  std::vector<float> c(M * c_ld, kSentinel);
  run(uk, pw, a.data(), a_ld * sizeof(float), c.data(), c_ld * sizeof(float), m_begin, m_end,
      p_begin, p_end, cl.lo, cl.hi);

  int bad = 0;
  const size_t n_begin = p_begin * uk.nr, n_end = std::min(N, p_end * uk.nr);
  for (size_t i = 0; i < M; ++i) {
    for (size_t j = 0; j < c_ld; ++j) {
      const float got = c[i * c_ld + j];
      const bool inside = i >= m_begin && i < m_end && j >= n_begin && j < n_end;
      if (!inside) {
        if (got != kSentinel && bad++ < 3)
          DSQ_CHECK(false, "%s M=%zu N=%zu K=%zu: C[%zu][%zu]=%g written outside range", uk.name,
                    M, N, K, i, j, got);
        continue;
      }
      double ref, tol;
      reference(a.data(), a_ld, w.data(), bptr, i, j, K, cl.lo, cl.hi, &ref, &tol);
      if (!(std::fabs(got - ref) <= tol) && bad++ < 3)
        DSQ_CHECK(false, "%s M=%zu N=%zu K=%zu bias=%d clamp=%s rows[%zu,%zu) panels[%zu,%zu): "
                  "C[%zu][%zu]=%.9g ref=%.9g tol=%.3g", uk.name, M, N, K, int(with_bias), cl.name,
                  m_begin, m_end, p_begin, p_end, i, j, got, ref, tol);
    }
  }
  DSQ_CHECK(bad == 0, "%s: %d bad outputs (M=%zu N=%zu K=%zu)", uk.name, bad, M, N, K);
  return bad;
}

void test_pack() {
  const size_t N = 13, K = 5, nr = 8;
  const std::vector<float> w = random_vec(N * K), b = random_vec(N);
  const PackedWeights pw = pack(w.data(), b.data(), N, K, nr);
  DSQ_CHECK(pw.panel_count() == 2, "panel_count %zu", pw.panel_count());
  bool ok = true;
  for (size_t p = 0; p < 2; ++p)
    for (size_t kk = 0; kk < K; ++kk)
      for (size_t j = 0; j < nr; ++j) {
        const size_t n = p * nr + j;
        const float want = n < N ? w[n * K + kk] : 0.f;
        ok &= pw.panel(p)[kk * nr + j] == want;
        if (kk == 0) ok &= pw.bias_panel(p)[j] == (n < N ? b[n] : 0.f);
      }
  DSQ_CHECK(ok, "pack layout");
  const PackedWeights nb = pack(w.data(), nullptr, N, K, nr);
  bool zero = true;
  for (size_t j = 0; j < 2 * nr; ++j) zero &= nb.bias.as<float>()[j] == 0.f;
  DSQ_CHECK(zero, "pack without bias must zero the bias");
}

// best_ukernel_for: stays within the best ISA and (for many rows) picks the least padded
// width; on an AVX-512 machine a 16-output layer gets a 16-wide panel.
void test_best_for() {
  const Ukernel& dflt = best_ukernel();
  for (size_t n : {size_t(1), size_t(10), size_t(16), size_t(20), size_t(32), size_t(48),
                   size_t(64), size_t(65), size_t(100), size_t(1000)}) {
    const Ukernel& uk = best_ukernel_for(n);
    DSQ_CHECK(uk.isa == dflt.isa, "best_ukernel_for(%zu) = %s, not of the best ISA", n, uk.name);
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
  if (dflt.isa != Isa::kAvx512) {  // CPU or DSQ_MAX_ISA without it, or a portable build
    std::printf("skip the 16-wide choice check: the best ISA here lacks it (best: %s)\n",
                dflt.name);
    return;
  }
  DSQ_CHECK(best_ukernel_for(16).nr == 16, "best_ukernel_for(16) = %s", best_ukernel_for(16).name);
  DSQ_CHECK(best_ukernel_for(48).nr == 16, "best_ukernel_for(48) = %s", best_ukernel_for(48).name);
  DSQ_CHECK(best_ukernel_for(20).nr == 32, "best_ukernel_for(20) = %s", best_ukernel_for(20).name);
  // One row per call: a 16-wide tile is latency-bound, so fewer wider panels win.
  DSQ_CHECK(best_ukernel_for(48, 1).nr == 32, "best_ukernel_for(48, 1) = %s", best_ukernel_for(48, 1).name);
  DSQ_CHECK(best_ukernel_for(300, 1).nr == 32, "best_ukernel_for(300, 1) = %s",
            best_ukernel_for(300, 1).name);
  DSQ_CHECK(best_ukernel_for(48, 64).nr == 16, "best_ukernel_for(48, 64) = %s", best_ukernel_for(48, 64).name);
  std::printf("best_ukernel_for: 16 -> %s, 20 -> %s, (48, 1 row) -> %s\n", best_ukernel_for(16).name,
              best_ukernel_for(20).name, best_ukernel_for(48, 1).name);
}

void test_dispatch() {
  const std::vector<Ukernel>& all = all_ukernels();
  DSQ_CHECK(!all.empty() && all.front().isa == Isa::kScalar, "reference first");
  const Ukernel& best = best_ukernel();
  DSQ_CHECK(isa_supported(best.isa), "best ukernel %s not supported", best.name);
  for (const Ukernel& uk : all) {
    if (isa_supported(uk.isa))
      DSQ_CHECK(static_cast<int>(uk.isa) <= static_cast<int>(best.isa),
                "best %s below supported %s", best.name, uk.name);
    const Ukernel* f = find_ukernel(uk.name);
    DSQ_CHECK(isa_supported(uk.isa) ? f == &uk : f == nullptr, "find_ukernel(%s)", uk.name);
  }
  DSQ_CHECK(find_ukernel("gemm_f32_nope") == nullptr, "find_ukernel unknown");
  std::printf("best ukernel: %s\n", best.name);
}

#if defined(__linux__)
// Memory whose end touches a PROT_NONE page: reading one float past it faults.
struct Guarded {
  void* base = nullptr;
  size_t total = 0;
  float* end_aligned(size_t floats) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t bytes = (floats * sizeof(float) + page - 1) / page * page;
    total = bytes + page;
    base = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return nullptr;
    char* guard = static_cast<char*>(base) + bytes;
    mprotect(guard, page, PROT_NONE);
    return reinterpret_cast<float*>(guard) - floats;
  }
  ~Guarded() {
    if (base && base != MAP_FAILED) munmap(base, total);
  }
};

// Calls the ukernel directly with A's last row and the panel ending at a guard page.
void test_guarded(const Ukernel& uk) {
  for (size_t m = 1; m <= uk.mr; ++m) {
    for (size_t K : {size_t(0), size_t(1), size_t(7), size_t(33)}) {
      for (size_t nv : {size_t(1), uk.nr - 1, uk.nr}) {
        const size_t a_ld = K + 1;
        Guarded ga, gw, gb;
        float* a = ga.end_aligned(m == 0 ? 1 : (m - 1) * a_ld + K + (K == 0));
        float* panel = gw.end_aligned(K * uk.nr + (K == 0));
        float* bias = gb.end_aligned(uk.nr);
        if (!a || !panel || !bias) return;
        const std::vector<float> ar = random_vec((m - 1) * a_ld + K + 1);
        std::copy(ar.begin(), ar.begin() + (m - 1) * a_ld + K, a);
        const std::vector<float> wr = random_vec(K * uk.nr + 1);
        std::copy(wr.begin(), wr.begin() + K * uk.nr, panel);
        for (size_t j = 0; j < uk.nr; ++j) bias[j] = j < nv ? 0.5f : 0.f;
        const size_t c_ld = uk.nr + 3;
        std::vector<float> c(uk.mr * c_ld, kSentinel);
        uk.fn(m, K, a, a_ld * sizeof(float), panel, bias, c.data(), c_ld * sizeof(float), nv,
              -kInf, kInf);
        bool ok = true;
        for (size_t i = 0; i < uk.mr; ++i)
          for (size_t j = 0; j < c_ld; ++j) {
            const float got = c[i * c_ld + j];
            if (i >= m || j >= nv) {
              ok &= got == kSentinel;
              continue;
            }
            double s = bias[j], mag = 0.5;
            for (size_t kk = 0; kk < K; ++kk) {
              const double p = double(a[i * a_ld + kk]) * panel[kk * uk.nr + j];
              s += p;
              mag += std::fabs(p);
            }
            ok &= std::fabs(got - s) <= 1e-5 * mag + 1e-6;
          }
        DSQ_CHECK(ok, "%s guarded m=%zu K=%zu n_valid=%zu", uk.name, m, K, nv);
      }
    }
  }
}
#endif

}  // namespace

int main() {
  test_pack();
  test_dispatch();
  test_best_for();
  for (const Ukernel& uk : all_ukernels()) {
    if (!isa_supported(uk.isa)) {
      std::printf("skip %s (not supported here)\n", uk.name);
      continue;
    }
    const int fails_before = dsq_test::failures();
    const size_t mr = uk.mr, nr = uk.nr;
    // Every row count of a tile (the exact-row specializations) and one past; widths
    // around the 16/32-column panels; odd k.
    std::vector<size_t> Ms = {37};
    for (size_t m = 1; m <= mr + 1; ++m) Ms.push_back(m);
    std::vector<size_t> Ns = {1, 7, 15, 16, 17, 31, 33, 64, 65};
    for (size_t n : {nr - 1, nr, nr + 1})
      if (std::find(Ns.begin(), Ns.end(), n) == Ns.end()) Ns.push_back(n);
    const size_t Ks[] = {0, 1, 3, 5, 17, 25, 64, 144, 577};
    size_t cases = 0, idx = 0;
    for (size_t M : Ms) {
      if (M == 0) continue;
      for (size_t N : Ns) {
        if (N == 0) continue;
        const size_t panels = (N + nr - 1) / nr;
        for (size_t K : Ks) {
          // Bias and clamp rotate over the shapes (all six combinations per shape made
          // the sweep too slow once every row count is covered).
          ++idx;
          run_case(uk, M, N, K, idx % 2 == 0, kClamps[idx / 2 % 3], 0, M, 0, panels);
          ++cases;
          // Sub-ranges of rows and panels.
          if (M >= 3) {
            run_case(uk, M, N, K, true, kClamps[0], 1, M - 1, 0, panels);
            ++cases;
          }
          if (panels >= 2) {
            run_case(uk, M, N, K, true, kClamps[1], M / 2, M, 1, panels);
            run_case(uk, M, N, K, false, kClamps[2], 0, (M + 1) / 2, 0, 1);
            cases += 2;
          }
          run_case(uk, M, N, K, true, kClamps[0], M, M, 0, panels);  // empty: no writes
          ++cases;
        }
      }
    }
#if defined(__linux__)
    test_guarded(uk);
#endif
    std::printf("%-26s mr=%zu nr=%zu isa=%s: %zu cases %s\n", uk.name, mr, nr, isa_name(uk.isa),
                cases, dsq_test::failures() == fails_before ? "ok" : "FAILED");
  }
  DSQ_TEST_MAIN_END();
}
