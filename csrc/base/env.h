// Settings read from the environment.
#pragma once
#include <cstdint>
#include <cstdlib>

namespace dsq {

// The unsigned integer in environment variable `name`, or `fallback` when it is unset or
// not a whole decimal number.
inline uint64_t env_uint64(const char* name, uint64_t fallback) {
  const char* e = std::getenv(name);
  char* end = nullptr;
  const unsigned long long parsed = e ? std::strtoull(e, &end, 10) : 0;
  return e && end != e && *end == '\0' ? static_cast<uint64_t>(parsed) : fallback;
}

}  // namespace dsq
