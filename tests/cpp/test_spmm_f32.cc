// Tests every built, supported spmm_f32 ukernel (kernels.inc) through pack() + run()
// against a naive dense double-precision loop: all-zero and fully dense matrices, empty
// rows, K = 1, N = 1, M around the tile, K not a multiple of any vector size, k > 65536
// (u32 columns), f32 values and codebooks (per tensor / per row, b = 1, 5, 8), bias / no
// bias, clamps, row sub-ranges (outputs outside stay untouched), padded strides (the
// padding of x holds NaN), and (on Linux) x_t ending at a guard page. Also pack()
// validation and balanced_row_ranges().
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "check.h"
#include "kernels/spmm_f32/spmm_f32.h"

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

using namespace dsq;
using namespace dsq::spmm_f32;

namespace {

constexpr float kSentinel = -12345.5f;
const float kInf = std::numeric_limits<float>::infinity();
const float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Clamp {
  const char* name;
  float lo, hi;
};
const Clamp kClamps[] = {{"none", -kInf, kInf}, {"relu", 0.f, kInf}, {"relu6", 0.f, 6.f}};

std::mt19937& rng() {
  static std::mt19937 g(1234);
  return g;
}
float urand(float scale = 1.f) { return std::uniform_real_distribution<float>(-scale, scale)(rng()); }

// A sparse matrix in the input form pack() takes.
struct Sparse {
  size_t n = 0, k = 0;
  std::vector<uint32_t> row_ptr, col;
  std::vector<float> values;   // f32 values
  std::vector<uint8_t> codes;  // codebook
  std::vector<float> table;
  size_t entries = 0;
  bool per_row = false;
  std::vector<float> bias;
  float weight(size_t r, size_t p) const {
    if (codes.empty()) return values[p];
    return table[(per_row ? r * entries : 0) + codes[p]];
  }
};

// density in [0, 1]; empty_every > 0 forces every empty_every-th row empty. Columns are
// shuffled within rows (pack() must not assume sorted input).
Sparse make_sparse(size_t n, size_t k, double density, size_t empty_every, bool codebook,
                   int bits, bool per_row) {
  Sparse s;
  s.n = n;
  s.k = k;
  s.row_ptr.push_back(0);
  std::bernoulli_distribution keep(density);
  for (size_t r = 0; r < n; ++r) {
    std::vector<uint32_t> cols;
    if (!(empty_every && r % empty_every == 0))
      for (size_t c = 0; c < k; ++c)
        if (density >= 1.0 || (density > 0.0 && keep(rng()))) cols.push_back(static_cast<uint32_t>(c));
    std::shuffle(cols.begin(), cols.end(), rng());
    for (uint32_t c : cols) s.col.push_back(c);
    s.row_ptr.push_back(static_cast<uint32_t>(s.col.size()));
  }
  const size_t nnz = s.col.size();
  if (codebook) {
    s.entries = size_t(1) << bits;
    s.per_row = per_row;
    s.table.resize((per_row ? n : 1) * s.entries);
    for (float& t : s.table) t = urand();
    s.codes.resize(nnz);
    for (uint8_t& c : s.codes) c = static_cast<uint8_t>(rng()() % s.entries);
  } else {
    s.values.resize(nnz);
    for (float& v : s.values) v = urand();
  }
  s.bias.resize(n);
  for (float& b : s.bias) b = urand(2.f);
  return s;
}

PackedWeights pack_sparse(const Sparse& s, bool with_bias) {
  const bool cb = !s.codes.empty();
  PackedWeights pw = pack(s.n, s.k, s.row_ptr.data(), s.col.data(), cb ? nullptr : s.values.data(),
                          cb ? s.codes.data() : nullptr, cb ? s.table.data() : nullptr, s.entries,
                          s.per_row, with_bias ? s.bias.data() : nullptr);
  build_csc(pw);  // the zero-skipping (kCsc) kernels run through the same cases
  return pw;
}

#if defined(__linux__)
// Memory whose end touches a PROT_NONE page: reading one float past it faults.
struct Guarded {
  void* base = nullptr;
  size_t total = 0;
  float* end_aligned(size_t floats) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t bytes = (std::max<size_t>(floats, 1) * sizeof(float) + page - 1) / page * page;
    total = bytes + page;
    base = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
      base = nullptr;
      return nullptr;
    }
    char* guard = static_cast<char*>(base) + bytes;
    mprotect(guard, page, PROT_NONE);
    return reinterpret_cast<float*>(guard) - floats;
  }
  ~Guarded() {
    if (base) munmap(base, total);
  }
};
#endif

// Runs uk on rows [n_begin, n_end) with M columns; checks every output (outside the range
// and the stride padding must keep the sentinel). Returns the number of bad outputs.
int run_case(const Ukernel& uk, const Sparse& s, const PackedWeights& pw, bool with_bias,
             size_t M, const Clamp& cl, size_t n_begin, size_t n_end, bool padded,
             const char* what) {
  const size_t K = s.k, N = s.n;
  const size_t x_ld = padded ? M + 3 : M;
  const size_t y_ld = padded ? M + 5 : M;
  // x_t rows of x_ld floats; the last row ends exactly at the end of the buffer (at a guard
  // page on Linux), the padding of the other rows holds NaN.
  const size_t x_floats = K ? (K - 1) * x_ld + M : 0;
  std::vector<float> xs(std::max<size_t>(x_floats, 1));
  float* x = xs.data();
#if defined(__linux__)
  Guarded guard;
  if (float* g = guard.end_aligned(x_floats)) x = g;
#endif
  // Inputs from a pool of random values at a random offset: drawing each one (up to 2.3M
  // per case for k = 70001) took most of this test's time, minutes under ASan.
  static const std::vector<float> pool = [] {
    std::vector<float> p(65521);
    for (float& v : p) v = urand();
    return p;
  }();
  const size_t offset = rng()() % pool.size();
  for (size_t kk = 0; kk < K; ++kk)
    for (size_t j = 0; j < x_ld && kk * x_ld + j < x_floats; ++j)
      x[kk * x_ld + j] = j < M ? pool[(offset + kk * x_ld + j) % pool.size()] : kNaN;
  std::vector<float> y(N * y_ld, kSentinel);
  run(uk, pw, M, x, x_ld * sizeof(float), y.data(), y_ld * sizeof(float), n_begin, n_end, cl.lo,
      cl.hi);

  int bad = 0;
  for (size_t r = 0; r < N; ++r) {
    const bool in_rows = r >= n_begin && r < n_end;
    for (size_t j = 0; j < y_ld; ++j) {
      const float got = y[r * y_ld + j];
      if (!in_rows || j >= M) {
        if (got != kSentinel && bad++ < 3)
          DSQ_CHECK(false, "%s [%s] N=%zu K=%zu M=%zu: y[%zu][%zu]=%g written outside range",
                    uk.name, what, N, K, M, r, j, got);
        continue;
      }
      double ref = with_bias ? s.bias[r] : 0.0, mag = std::fabs(ref);
      for (uint32_t p = s.row_ptr[r]; p < s.row_ptr[r + 1]; ++p) {
        const double prod = double(s.weight(r, p)) * x[size_t(s.col[p]) * x_ld + j];
        ref += prod;
        mag += std::fabs(prod);
      }
      ref = std::min(std::max(ref, double(cl.lo)), double(cl.hi));
      const double tol = 1e-5 * mag + 1e-6;
      if (!(std::fabs(got - ref) <= tol) && bad++ < 3)
        DSQ_CHECK(false, "%s [%s] N=%zu K=%zu M=%zu bias=%d clamp=%s rows[%zu,%zu) padded=%d: "
                  "y[%zu][%zu]=%.9g ref=%.9g tol=%.3g", uk.name, what, N, K, M, int(with_bias),
                  cl.name, n_begin, n_end, int(padded), r, j, got, ref, tol);
    }
  }
  DSQ_CHECK(bad == 0, "%s [%s]: %d bad outputs (N=%zu K=%zu M=%zu)", uk.name, what, bad, N, K, M);
  return bad;
}

struct Shape {
  const char* name;
  size_t n, k;
  double density;
  size_t empty_every;
  size_t max_m;  // keeps the k > 65536 case small (x_t is k x M)
};
const Shape kShapes[] = {
    {"all-zero", 33, 67, 0.0, 0, 1000},
    {"dense", 19, 45, 1.0, 0, 1000},
    {"empty-rows", 40, 100, 0.3, 3, 1000},
    {"k=1", 21, 1, 1.0, 4, 1000},
    {"n=1", 1, 77, 0.5, 0, 1000},
    {"n=1,k=1", 1, 1, 1.0, 0, 1000},
    {"sparse", 37, 1000, 0.1, 0, 1000},
    {"k=31", 18, 31, 0.4, 0, 1000},
    {"k=33", 35, 33, 0.6, 0, 1000},
    {"u32 cols", 6, 70001, 0.002, 0, 33},  // also the k-blocked spmm path
};

struct ValueKind {
  const char* name;
  bool codebook;
  int bits;
  bool per_row;
};
const ValueKind kValueKinds[] = {
    {"f32", false, 0, false},      {"cb1", true, 1, false},     {"cb5", true, 5, false},
    {"cb8", true, 8, false},       {"cb1/row", true, 1, true},  {"cb5/row", true, 5, true},
    {"cb8/row", true, 8, true},
};

void test_kernels() {
  // The matrices, drawn once and shared by every variant (drawing the 70001-column shape
  // per variant took most of this test's time, minutes under ASan).
  constexpr size_t kShapeCount = sizeof(kShapes) / sizeof(kShapes[0]);
  constexpr size_t kKindCount = sizeof(kValueKinds) / sizeof(kValueKinds[0]);
  std::vector<Sparse> matrices;
  for (const ValueKind& vk : kValueKinds)
    for (const Shape& sh : kShapes)
      matrices.push_back(make_sparse(sh.n, sh.k, sh.density, sh.empty_every, vk.codebook, vk.bits, vk.per_row));
  static_assert(kShapeCount > 0 && kKindCount > 0, "cases");
  for (const Ukernel& uk : all_ukernels()) {
    if (!isa_supported(uk.isa)) {
      std::printf("skip %s (not supported here)\n", uk.name);
      continue;
    }
    const int fails_before = dsq_test::failures();
    size_t cases = 0;
    std::vector<size_t> Ms;
    if (uk.spmv) {
      Ms = {1};
    } else {
      for (size_t M : {size_t(1), size_t(2), uk.mr - 1, uk.mr, uk.mr + 1, size_t(67)})
        if (M && std::find(Ms.begin(), Ms.end(), M) == Ms.end()) Ms.push_back(M);
    }
    for (size_t vi = 0; vi < kKindCount; ++vi) {
      const ValueKind& vk = kValueKinds[vi];
      if (vk.codebook != uk.codebook) continue;
      for (size_t si = 0; si < kShapeCount; ++si) {
        const Shape& sh = kShapes[si];
        const Sparse& s = matrices[vi * kShapeCount + si];
        for (int b = 0; b < 2; ++b) {
          const PackedWeights pw = pack_sparse(s, b != 0);
          if (!compatible(uk, pw, 1 /* m checked below */) && !compatible(uk, pw, 2)) continue;
          if (uk.layout == Layout::kRowTiles && !pw.has_tiles) continue;
          char what[64];
          std::snprintf(what, sizeof what, "%s %s", vk.name, sh.name);
          size_t ci = 0;
          for (size_t M : Ms) {
            if (!compatible(uk, pw, M) || M > sh.max_m) continue;
            for (int padded = 0; padded < 2; ++padded) {
              const Clamp& cl = kClamps[(ci++) % 3];
              run_case(uk, s, pw, b != 0, M, cl, 0, sh.n, padded != 0, what);
              ++cases;
            }
            // Sub-ranges of rows: the rest keeps the sentinel.
            if (sh.n >= 3) {
              run_case(uk, s, pw, b != 0, M, kClamps[1], sh.n / 3, sh.n - sh.n / 4, false, what);
              run_case(uk, s, pw, b != 0, M, kClamps[2], 1, 2, true, what);
              cases += 2;
            }
            run_case(uk, s, pw, b != 0, M, kClamps[0], sh.n, sh.n, false, what);  // empty
            ++cases;
          }
        }
      }
    }
    // Bigger row-tile case: several 16-row groups, windows, unaligned ranges.
    if (uk.codebook) {
      const Sparse s = make_sparse(100, 300, 0.15, 7, true, 5, false);
      const PackedWeights pw = pack_sparse(s, true);
      if (compatible(uk, pw, 1)) {
        for (size_t nb : {size_t(0), size_t(5), size_t(16), size_t(17)})
          for (size_t ne : {size_t(31), size_t(32), size_t(100)}) {
            run_case(uk, s, pw, true, 1, kClamps[0], nb, ne, false, "cb5 100x300");
            ++cases;
          }
      }
    }
    std::printf("%-28s mr=%-2zu isa=%-7s %s%s: %zu cases %s\n", uk.name, uk.mr, isa_name(uk.isa),
                uk.codebook ? "codebook" : "f32", uk.spmv ? " spmv" : "", cases,
                dsq_test::failures() == fails_before ? "ok" : "FAILED");
  }
}

void test_pack() {
  const Sparse s = make_sparse(40, 100, 0.3, 5, true, 5, false);
  const PackedWeights pw = pack_sparse(s, false);
  DSQ_CHECK(pw.n == 40 && pw.k == 100 && pw.nnz == s.col.size(), "sizes");
  DSQ_CHECK(pw.codebook && pw.table_entries == 32 && !pw.table_per_row, "codebook fields");
  DSQ_CHECK(pw.cols_u16, "u16 columns for k <= 65536");
  DSQ_CHECK(pw.has_tiles, "row tiles for a per-tensor 5-bit codebook");
  bool sorted = true, zero_bias = true;
  for (size_t r = 0; r < pw.n; ++r) {
    for (uint32_t p = pw.rp()[r] + 1; p < pw.rp()[r + 1]; ++p) sorted &= pw.col16()[p - 1] < pw.col16()[p];
    zero_bias &= pw.bias_ptr()[r] == 0.f;
  }
  DSQ_CHECK(sorted, "columns sorted within rows");
  DSQ_CHECK(zero_bias, "no bias -> zeros");
  // Every nonzero appears exactly once in the tiles.
  size_t real = 0;
  for (size_t i = 0; i < pw.tile_steps * kTileRows; ++i) real += pw.tile_slots.as<uint16_t>()[i] != kTilePad;
  DSQ_CHECK(real == pw.nnz, "tiles hold %zu of %zu nonzeros", real, pw.nnz);

  const Sparse r8 = make_sparse(10, 20, 0.5, 0, true, 8, false);
  DSQ_CHECK(!pack_sparse(r8, false).has_tiles, "no tiles for 256 entries");
  const Sparse pr = make_sparse(10, 20, 0.5, 0, true, 5, true);
  DSQ_CHECK(!pack_sparse(pr, false).has_tiles, "no tiles for per-row tables");

  auto throws = [](auto f) {
    try {
      f();
    } catch (const std::invalid_argument&) {
      return true;
    }
    return false;
  };
  Sparse bad = make_sparse(5, 10, 1.0, 0, false, 0, false);
  bad.col[3] = 10;
  DSQ_CHECK(throws([&] { pack_sparse(bad, false); }), "column >= k must throw");
  Sparse badc = make_sparse(5, 10, 1.0, 0, true, 1, false);
  badc.codes[2] = 2;
  DSQ_CHECK(throws([&] { pack_sparse(badc, false); }), "code >= entries must throw");
  Sparse badr = make_sparse(5, 10, 1.0, 0, false, 0, false);
  badr.row_ptr[2] = badr.row_ptr[3] + 1;
  DSQ_CHECK(throws([&] { pack_sparse(badr, false); }), "decreasing row_ptr must throw");
  const Sparse f = make_sparse(5, 10, 1.0, 0, false, 0, false);
  DSQ_CHECK(throws([&] { run(*find_ukernel("spmv_cb_f32__scalar"), pack_sparse(f, false), 1,
                             nullptr, 4, nullptr, 4, 0, 5, 0.f, 1.f); }),
            "codebook kernel on f32 weights must throw");
}

void test_balanced() {
  // Skewed rows: a few heavy rows, many empty ones.
  Sparse s;
  s.n = 1000;
  s.k = 500;
  s.row_ptr.push_back(0);
  for (size_t r = 0; r < s.n; ++r) {
    size_t cnt = r % 97 == 0 ? 400 : (r % 3 == 0 ? 0 : rng()() % 40);
    for (size_t c = 0; c < cnt; ++c) s.col.push_back(static_cast<uint32_t>(c));
    s.row_ptr.push_back(static_cast<uint32_t>(s.col.size()));
  }
  s.values.assign(s.col.size(), 1.f);
  const PackedWeights pw = pack_sparse(s, false);
  for (size_t align : {size_t(1), kTileRows}) {
    for (size_t parts : {size_t(1), size_t(2), size_t(3), size_t(7), size_t(16)}) {
      const std::vector<size_t> b = balanced_row_ranges(pw, parts, align);
      DSQ_CHECK(b.size() == parts + 1 && b.front() == 0 && b.back() == s.n, "bounds parts=%zu", parts);
      bool mono = true, aligned = true;
      size_t worst = 0;
      for (size_t i = 0; i < parts; ++i) {
        mono &= b[i] <= b[i + 1];
        if (i > 0) aligned &= b[i] % align == 0;
        worst = std::max<size_t>(worst, s.row_ptr[b[i + 1]] - s.row_ptr[b[i]] + (b[i + 1] - b[i]));
      }
      DSQ_CHECK(mono && aligned, "monotone/aligned parts=%zu align=%zu", parts, align);
      // Slack: one heavy row plus the cost of align rows around each boundary.
      const double ideal = double(s.col.size() + s.n) / parts;
      const double slack = 401 + 2.0 * align * 41;
      DSQ_CHECK(worst <= ideal + slack, "parts=%zu align=%zu: worst %zu ideal %.0f", parts, align,
                worst, ideal);
    }
  }
  // Every row exactly once: ranges of consecutive parts touch.
  const std::vector<size_t> b = balanced_row_ranges(pw, 5);
  std::vector<int> seen(s.n, 0);
  for (size_t i = 0; i < 5; ++i)
    for (size_t r = b[i]; r < b[i + 1]; ++r) ++seen[r];
  DSQ_CHECK(std::all_of(seen.begin(), seen.end(), [](int v) { return v == 1; }), "rows once");
}

void test_dispatch() {
  const std::vector<Ukernel>& all = all_ukernels();
  DSQ_CHECK(!all.empty() && all.front().isa == Isa::kScalar, "reference first");
  for (bool cb : {false, true})
    for (bool spmv : {false, true}) {
      const Ukernel& best = best_ukernel(cb, spmv);
      DSQ_CHECK(isa_supported(best.isa) && best.codebook == cb && (spmv || !best.spmv),
                "best_ukernel(%d,%d) = %s", int(cb), int(spmv), best.name);
      std::printf("best ukernel (codebook=%d, spmv=%d): %s\n", int(cb), int(spmv), best.name);
    }
  for (const Ukernel& uk : all) {
    const Ukernel* f = find_ukernel(uk.name);
    DSQ_CHECK(isa_supported(uk.isa) ? f == &uk : f == nullptr, "find_ukernel(%s)", uk.name);
  }
  DSQ_CHECK(find_ukernel("spmm_f32_nope") == nullptr, "find_ukernel unknown");
  const Sparse s = make_sparse(10, 20, 0.5, 0, true, 8, true);
  const PackedWeights pw = pack_sparse(s, false);
  DSQ_CHECK(compatible(best_ukernel_for(pw, 1), pw, 1), "best_ukernel_for per-row table");
}

}  // namespace

int main() {
  test_pack();
  test_balanced();
  test_dispatch();
  test_kernels();
  DSQ_TEST_MAIN_END();
}
