// libFuzzer target over the whole load path (parse, validation, layer packing, planning)
// and one run of what loads. Built by -DDSQ_FUZZ=ON with clang; docs/HARDENING.md.
#include "fuzz/fuzz_load.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dsq::fuzz::fuzz_one(data, size);
  return 0;
}
