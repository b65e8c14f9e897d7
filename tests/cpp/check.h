// Minimal test harness for the C++ unit tests (no dependencies, so the same tests run
// on cross-compiled targets under qemu).
#pragma once
#include <cstdio>
#include <cstdlib>

namespace dsq_test {
inline int& failures() {
  static int n = 0;
  return n;
}
inline int& checks() {
  static int n = 0;
  return n;
}
}  // namespace dsq_test

#define DSQ_CHECK(cond, ...)                                            \
  do {                                                                  \
    ++dsq_test::checks();                                               \
    if (!(cond)) {                                                      \
      ++dsq_test::failures();                                           \
      std::fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                \
      std::fprintf(stderr, "\n");                                       \
      if (dsq_test::failures() > 20) std::exit(1);                      \
    }                                                                   \
  } while (0)

#define DSQ_TEST_MAIN_END()                                                         \
  do {                                                                              \
    std::printf("%d checks, %d failed\n", dsq_test::checks(), dsq_test::failures()); \
    return dsq_test::failures() ? 1 : 0;                                            \
  } while (0)
