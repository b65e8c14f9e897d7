// The AVX-512 vector type of the depthwise int8 row kernel (16 channels per vector);
// kVnni: one vpdpwssd per tap instead of vpmaddwd + vpaddd (x86_avx512vnni.cc).
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "kernels/dwconv_qu8/dwconv_qu8.h"
#include "kernels/gemm_qu8/x86_avx512_quantize.h"

namespace dsq::dwconv_qu8 {

// u8 output codes of 16 results, quantized in registers (gemm_qu8::quantize's bytes).
struct Avx512Codes : gemm_qu8::Avx512CodeStore {
  explicit Avx512Codes(const Geometry& g)
      : Avx512CodeStore(g.out_prepared.valid
                            ? g.out_prepared
                            : gemm_qu8::prepare_out_quant(gemm_qu8::QuantParams{g.out_scale, g.out_zero}, g.lo, g.hi),
                        /*branch_free=*/true, g.out_bad) {}
};

template <bool kVnni>
struct Avx512Vec {
  static constexpr int64_t kLanes = 16;
  using IReg = __m512i;
  using FReg = __m512;
  using Codes = Avx512Codes;
  // The maskz forms (all lanes) compile to the same vpmovzxbd / vpmovsxbd; GCC 12 warns
  // about the plain forms' undefined pass-through operand.
  static IReg load_x(const uint8_t* p) {
    return _mm512_maskz_cvtepu8_epi32(0xFFFF, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static IReg load_w(const int8_t* p) {
    return _mm512_maskz_cvtepi8_epi32(0xFFFF, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static IReg madd(IReg acc, IReg x, IReg w) {
    if constexpr (kVnni) return _mm512_dpwssd_epi32(acc, x, w);
    else return _mm512_add_epi32(acc, _mm512_madd_epi16(x, w));
  }
  static IReg add(IReg a, IReg b) { return _mm512_add_epi32(a, b); }
  static IReg sub(IReg a, IReg b) { return _mm512_sub_epi32(a, b); }
  static IReg mullo(IReg a, IReg b) { return _mm512_mullo_epi32(a, b); }
  static IReg izero() { return _mm512_setzero_si512(); }
  static IReg iset1(int32_t v) { return _mm512_set1_epi32(v); }
  static FReg to_float(IReg v) { return _mm512_cvtepi32_ps(v); }
  static FReg fload(const float* p) { return _mm512_loadu_ps(p); }
  static void fstore(float* p, FReg v) { _mm512_storeu_ps(p, v); }
  static FReg fset1(float v) { return _mm512_set1_ps(v); }
  static FReg fma(FReg a, FReg b, FReg c) { return _mm512_fmadd_ps(a, b, c); }
  static FReg fmax(FReg a, FReg b) { return _mm512_max_ps(a, b); }
  static FReg fmin(FReg a, FReg b) { return _mm512_min_ps(a, b); }
};

}  // namespace dsq::dwconv_qu8
