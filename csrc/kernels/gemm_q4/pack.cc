// gemm_q4: weight packing, the tile loop (run) and dispatch over kernels.inc.
//
// Panel layout (chosen here; every ukernel with the same nr reads the same bytes).
// ceil(n / nr) panels of panel_bytes(w) = nr * round_up(k_padded, 8) / 2 bytes each.
// Within a panel, groups follow in order; group g (k in [g*G, min((g+1)*G, k_padded)))
// is a sequence of "pair blocks", one per 8 consecutive k starting at k0 = g*G + 8t:
//   byte[t][j * 4 + i] = nib(qw[p*nr + j][k0 + i]) | nib(qw[p*nr + j][k0 + 4 + i]) << 4
// for j < nr, i < 4: nr x 4 bytes, i.e. two gemm_qu8-style (nr x 4k) blocks interleaved
// by nibble. A 64-byte load is 16 columns; `v & 0xF0` is 16 * (k0+4.. block) and
// `(v << 4) & 0xF0` is 16 * (k0.. block) as signed bytes, each ready for vpdpbusd against
// the broadcast 4 activation bytes; the int32 sums are shifted right by 4 per group.
// The last group may end on an odd 4-k block: its pair block has zero high nibbles and
// ukernels do not read those activations. Columns past n and k past k are zero.
// gsum / w_scale: [panel][group][nr]; gsum = sum of the group's int4 weights.
#include <cstring>
#include <stdexcept>

#include "kernels/gemm_q4/gemm_q4.h"
#include "kernels/common/choose.h"
#include "kernels/gemm_q4/ukernels.h"

namespace dsq::gemm_q4 {

PackedWeights pack(const uint8_t* qw, const float* w_scale, const float* bias, size_t n,
                   size_t k, size_t group, size_t nr) {
  if (nr == 0) throw std::invalid_argument("gemm_q4::pack: nr must be > 0");
  if (group < 8 || (group & (group - 1)) != 0 || group > kMaxGroup)
    throw std::invalid_argument("gemm_q4::pack: group must be a power of two in [8, 65536]");
  PackedWeights w;
  w.n = n;
  w.k = k;
  w.k_padded = gemm_qu8::padded_k(k);
  w.nr = nr;
  w.group = group;
  w.groups = (k + group - 1) / group;
  const size_t panels = w.panel_count();
  const size_t pb = panel_bytes(w);
  w.panels.resize(panels * pb);
  w.gsum.resize(panels * w.groups * nr * sizeof(int32_t));
  w.w_scale.resize(panels * w.groups * nr * sizeof(float));
  w.bias.resize(panels * nr * sizeof(float));
  uint8_t* dst = w.panels.as<uint8_t>();
  int32_t* gsum = w.gsum.as<int32_t>();
  float* ws = w.w_scale.as<float>();
  float* bs = w.bias.as<float>();
  for (size_t col = 0; col < n; ++col) {
    const size_t p = col / nr, j = col % nr;
    uint8_t* panel = dst + p * pb;
    for (size_t kk = 0; kk < k; ++kk) {
      const size_t idx = col * k + kk;
      const uint8_t nib = (idx & 1) ? (qw[idx / 2] >> 4) : (qw[idx / 2] & 0x0F);
      const int32_t val = static_cast<int32_t>(nib ^ 8) - 8;
      const size_t g = kk / group, t = (kk % group) / 8, half = (kk % 8) / 4, i = kk % 4;
      // Groups before g are full: g * group / 8 pair blocks.
      uint8_t* blk = panel + (g * group / 8 + t) * nr * 4;
      blk[j * 4 + i] |= static_cast<uint8_t>(nib << (4 * half));
      gsum[(p * w.groups + g) * nr + j] += val;
    }
    for (size_t g = 0; g < w.groups; ++g) {
      ws[(p * w.groups + g) * nr + j] = w_scale[col * w.groups + g];
    }
    bs[col] = bias ? bias[col] : 0.0f;
  }
  return w;
}

void run(const Ukernel& uk, const PackedWeights& w, const uint8_t* a, size_t a_stride,
         float* c, size_t c_stride, size_t m_begin, size_t m_end, size_t p_begin,
         size_t p_end, const gemm_qu8::Epilogue& ep) {
  if (uk.nr != w.nr) throw std::invalid_argument("gemm_q4::run: ukernel nr != packed nr");
  const size_t mr = uk.mr, nr = w.nr;
  for (size_t p = p_begin; p < p_end; ++p) {
    const size_t n0 = p * nr;
    const size_t n_valid = w.n - n0 < nr ? w.n - n0 : nr;
    for (size_t m0 = m_begin; m0 < m_end; m0 += mr) {
      const size_t mt = m_end - m0 < mr ? m_end - m0 : mr;
      uk.fn(mt, a + m0 * a_stride, a_stride, w, p,
            reinterpret_cast<float*>(reinterpret_cast<char*>(c) + m0 * c_stride) + n0,
            c_stride, n_valid, ep);
    }
  }
}

const std::vector<Ukernel>& all_ukernels() {
  static const std::vector<Ukernel> list = {
#define DSQ_GEMM_Q4_UKERNEL(ident, isa, mr, nr) {#ident, Isa::isa, mr, nr, ident},
#include "kernels/gemm_q4/kernels.inc"
#undef DSQ_GEMM_Q4_UKERNEL
  };
  return list;
}

const Ukernel& best_ukernel() {
  const auto& list = all_ukernels();
  const Ukernel* best = &list.front();
  for (const Ukernel& uk : list) {
    if (isa_supported(uk.isa) && static_cast<int>(uk.isa) > static_cast<int>(best->isa)) {
      best = &uk;
    }
  }
  return *best;
}

const Ukernel& best_ukernel_for(size_t n) { return least_padded_ukernel(all_ukernels(), best_ukernel(), n); }

const Ukernel* find_ukernel(const char* name) {
  for (const Ukernel& uk : all_ukernels()) {
    if (std::strcmp(uk.name, name) == 0) return &uk;
  }
  return nullptr;
}

}  // namespace dsq::gemm_q4
