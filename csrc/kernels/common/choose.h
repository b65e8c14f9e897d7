// Variant choice shared by the kernel families.
#pragma once
#include <cstddef>
#include <cstring>
#include <vector>

#include "base/cpu.h"

namespace dsq {

// The variant of the highest ISA this CPU runs (`list` starts with the scalar reference).
template <typename Ukernel>
const Ukernel& best_supported_ukernel(const std::vector<Ukernel>& list) {
  const Ukernel* b = &list.front();
  for (const Ukernel& uk : list)
    if (isa_supported(uk.isa) && static_cast<int>(uk.isa) > static_cast<int>(b->isa)) b = &uk;
  return *b;
}

// The variant named `name`; nullptr when unknown or not supported by this CPU.
template <typename Ukernel>
const Ukernel* find_supported_ukernel(const std::vector<Ukernel>& list, const char* name) {
  if (!name) return nullptr;
  for (const Ukernel& uk : list)
    if (!std::strcmp(uk.name, name)) return isa_supported(uk.isa) ? &uk : nullptr;
  return nullptr;
}

// Per-layer choice of the dense integer families (gemm_qu8, gemm_q4): among `list`'s
// variants of dflt's ISA, the one that pads n output columns least
// (n rounded up to its panel width nr); on a tie the wider panel (each activation
// broadcast feeds more columns), else dflt. n == 0: dflt.
template <typename Ukernel>
const Ukernel& least_padded_ukernel(const std::vector<Ukernel>& list, const Ukernel& dflt, size_t n) {
  if (n == 0) return dflt;
  const auto padded = [n](const Ukernel& uk) { return (n + uk.nr - 1) / uk.nr * uk.nr; };
  const Ukernel* best = &dflt;
  for (const Ukernel& uk : list) {
    if (uk.isa != dflt.isa) continue;
    if (padded(uk) < padded(*best) || (padded(uk) == padded(*best) && uk.nr > best->nr)) best = &uk;
  }
  return *best;
}

}  // namespace dsq
