// Helpers shared by the AVX-512 VNNI ukernels (include only from files compiled with
// -mavx512vnni).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace dsq::vnni {

inline int32_t load_u32(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// acc += a(u8) . b(s8). Written as inline asm with the accumulator tied to the output:
// GCC 12 otherwise copies every accumulator through a second register (and, for larger
// tiles, through the stack) on each k step.
inline __m512i dpbusd(__m512i acc, __m512i a, __m512i b) {
#if defined(__GNUC__)
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
#else
  return _mm512_dpbusd_epi32(acc, a, b);
#endif
}

}  // namespace dsq::vnni
