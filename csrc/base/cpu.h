// Run-time CPU feature detection. Kernels are chosen by what the CPU running the
// code supports, never only by the flags of the build machine.
#pragma once
#include <string>

namespace dsq {

enum class Isa : int {
  kScalar = 0,
  kAvx2 = 1,        // AVX2 + FMA + F16C
  kAvx512 = 2,      // AVX-512 F/BW/DQ/VL
  kAvx512Vnni = 3,  // AVX-512 VNNI on top of kAvx512
  kAvx512Vbmi = 4,  // AVX-512 VBMI (vpermb) on top of kAvx512Vnni (Ice Lake, Zen 4 and later)
  kNeon = 10,
  kNeonDot = 11,
};

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512dq = false;
  bool avx512vl = false;
  bool avx512vnni = false;
  bool avx512vbmi = false;
  bool neon = false;
  bool neon_dot = false;
};

// Detected once, on first use.
const CpuFeatures& cpu_features();

// True when this CPU can execute kernels written for `isa`. Respects the
// DSQ_MAX_ISA environment variable (scalar|avx2|avx512|avx512vnni|avx512vbmi|neon|neondot) so tests and
// benchmarks can force a lower path.
bool isa_supported(Isa isa);

const char* isa_name(Isa isa);

}  // namespace dsq
