// Per-layer variant choice shared by the dense integer families (gemm_qu8, gemm_q4).
#pragma once
#include <cstddef>
#include <vector>

namespace dsq {

// Among `list`'s variants of dflt's ISA, the one that pads n output columns least
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
