#include "base/cpu.h"

#include <cstdlib>
#include <cstring>

// The build passes DSQ_X86=0/1; decide from the compiler's target here (an #ifdef on
// DSQ_X86 is true on Arm too, where it is defined as 0).
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <cpuid.h>
#define DSQ_CPU_X86 1
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

namespace dsq {
namespace {

#ifdef DSQ_CPU_X86
unsigned long long read_xcr0() {
  unsigned int eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#ifdef DSQ_CPU_X86
  unsigned int eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return f;
  const bool osxsave = ecx & (1u << 27);
  f.fma = ecx & (1u << 12);
  f.f16c = ecx & (1u << 29);
  if (!osxsave) return f;
  const unsigned long long xcr0 = read_xcr0();
  const bool os_avx = (xcr0 & 0x6) == 0x6;
  const bool os_avx512 = (xcr0 & 0xE6) == 0xE6;
  if (!os_avx) {
    f.fma = f.f16c = false;
    return f;
  }
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  f.avx2 = ebx & (1u << 5);
  if (os_avx512) {
    f.avx512f = ebx & (1u << 16);
    f.avx512dq = ebx & (1u << 17);
    f.avx512bw = ebx & (1u << 30);
    f.avx512vl = ebx & (1u << 31);
    f.avx512vnni = ecx & (1u << 11);
    f.avx512vbmi = ecx & (1u << 1);
  }
#elif defined(__aarch64__)
  f.neon = true;
#if defined(__linux__)
  const unsigned long hwcap = getauxval(AT_HWCAP);
  f.neon_dot = hwcap & (1ul << 20);  // HWCAP_ASIMDDP
#endif
#elif defined(__ARM_NEON)
  f.neon = true;
#endif
  return f;
}

int max_isa_from_env() {
  const char* v = std::getenv("DSQ_MAX_ISA");
  if (!v || !*v) return 1000;
  if (!std::strcmp(v, "scalar")) return static_cast<int>(Isa::kScalar);
  if (!std::strcmp(v, "avx2")) return static_cast<int>(Isa::kAvx2);
  if (!std::strcmp(v, "avx512")) return static_cast<int>(Isa::kAvx512);
  if (!std::strcmp(v, "avx512vnni")) return static_cast<int>(Isa::kAvx512Vnni);
  if (!std::strcmp(v, "avx512vbmi")) return static_cast<int>(Isa::kAvx512Vbmi);
  if (!std::strcmp(v, "neon")) return static_cast<int>(Isa::kNeon);
  if (!std::strcmp(v, "neondot")) return static_cast<int>(Isa::kNeonDot);
  return 1000;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

bool isa_supported(Isa isa) {
  static const int max_isa = max_isa_from_env();
  const CpuFeatures& f = cpu_features();
  const int level = static_cast<int>(isa);
  if (isa == Isa::kScalar) return true;
  if (level < 10 && level > max_isa) return false;
  if (level >= 10 && max_isa < 10 && max_isa != 1000) return false;
  if (level >= 10 && max_isa >= 10 && level > max_isa) return false;  // neon caps neondot
  switch (isa) {
    case Isa::kAvx2: return f.avx2 && f.fma && f.f16c;
    case Isa::kAvx512: return f.avx2 && f.fma && f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl;
    case Isa::kAvx512Vnni:
      return f.avx2 && f.fma && f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl && f.avx512vnni;
    case Isa::kAvx512Vbmi:
      return f.avx2 && f.fma && f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl && f.avx512vnni &&
             f.avx512vbmi;
    case Isa::kNeon: return f.neon;
    case Isa::kNeonDot: return f.neon && f.neon_dot;
    default: return false;
  }
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx512Vnni: return "avx512vnni";
    case Isa::kAvx512Vbmi: return "avx512vbmi";
    case Isa::kNeon: return "neon";
    case Isa::kNeonDot: return "neondot";
  }
  return "unknown";
}

}  // namespace dsq
