// The load path under fuzzing: used by the libFuzzer target (fuzz_load.cc) and by the
// replay driver (replay_main.cc, any compiler) that sanitizer builds run over the seed
// corpus and the committed crash regressions.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace dsq::fuzz {

// What one input ended in (replay prints the counts).
enum class Outcome { kFormatError, kUnsupported, kLimit, kLoadedTooBig, kRan };

// Rewrites file_size, the section CRCs, the directory CRC and the header CRC of a file
// that has the 1.x header and a 4-entry directory, so that mutations get past the
// checksums into the parser. Leaves anything shorter alone.
void fix_checksums(std::vector<uint8_t>& bytes);

// Loads `data` (threads 1, a small max_memory) and, when that succeeds and the plan for
// the declared input shapes (any-size dims = 1) is small, runs it once on a fixed input.
// Returns how it ended; the engine's typed errors are outcomes, anything else escapes
// (the fuzzer reports it as a crash).
Outcome load_and_run(const uint8_t* data, size_t size);

// Both of the above: the raw bytes, then a copy with fixed checksums. Returns the
// outcome of the fixed copy.
Outcome fuzz_one(const uint8_t* data, size_t size);

}  // namespace dsq::fuzz
