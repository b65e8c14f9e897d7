#pragma once
#include <cstddef>
#include <cstdint>

namespace dsq {
// CRC32C (Castagnoli), init/final xor 0xFFFFFFFF. Uses the SSE4.2 / ARMv8 CRC
// instruction when the CPU has it.
uint32_t crc32c(const void* data, size_t size);
}  // namespace dsq
