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
  for (const Ukernel& uk : all_ukernels()) {
    if (!isa_supported(uk.isa)) {
      std::printf("skip %s (not supported here)\n", uk.name);
      continue;
    }
    const int fails_before = dsq_test::failures();
    const size_t mr = uk.mr, nr = uk.nr;
    const size_t Ms[] = {1, 2, mr - 1, mr, mr + 1, 37};
    const size_t Ns[] = {1, 7, nr - 1, nr, nr + 1, 65};
    const size_t Ks[] = {0, 1, 3, 17, 64, 577};
    size_t cases = 0;
    for (size_t M : Ms) {
      if (M == 0) continue;
      for (size_t N : Ns) {
        if (N == 0) continue;
        const size_t panels = (N + nr - 1) / nr;
        for (size_t K : Ks) {
          for (int b = 0; b < 2; ++b)
            for (const Clamp& cl : kClamps) {
              run_case(uk, M, N, K, b != 0, cl, 0, M, 0, panels);
              ++cases;
            }
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
