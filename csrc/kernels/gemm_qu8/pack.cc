// gemm_qu8: weight packing, the tile loop (run), dispatch over kernels.inc, and the
// dynamic activation quantization entry points.
//
// Panel layout (fixed by gemm_qu8.h): ceil(n / nr) panels of k_padded * nr bytes; panel p
// holds k_padded / 4 blocks of nr x 4 bytes, panel[(kb * nr + j) * 4 + i] =
// qw[p * nr + j][kb * 4 + i], zero padded in k and in n. One block is exactly what
// vpdpbusd consumes: 16 columns x 4 k per 64-byte zmm load.
#include <cmath>
#include <cstring>
#include <string>
#include <stdexcept>

#include "kernels/gemm_qu8/gemm_qu8.h"
#include "kernels/common/choose.h"
#include "kernels/gemm_qu8/ukernels.h"

namespace dsq::gemm_qu8 {

PackedWeights pack(const int8_t* qw, const float* w_scale, const float* bias, size_t n,
                   size_t k, size_t nr) {
  if (nr == 0) throw std::invalid_argument("gemm_qu8::pack: nr must be > 0");
  PackedWeights w;
  w.n = n;
  w.k = k;
  w.k_padded = padded_k(k);
  w.nr = nr;
  const size_t panels = w.panel_count();
  const size_t n_padded = panels * nr;
  w.panels.resize(panels * w.k_padded * nr);
  w.colsum.resize(n_padded * sizeof(int32_t));
  w.w_scale.resize(n_padded * sizeof(float));
  w.bias.resize(n_padded * sizeof(float));
  int8_t* dst = w.panels.as<int8_t>();
  int32_t* colsum = w.colsum.as<int32_t>();
  float* ws = w.w_scale.as<float>();
  float* bs = w.bias.as<float>();
  for (size_t col = 0; col < n; ++col) {
    const size_t p = col / nr, j = col % nr;
    int8_t* panel = dst + p * w.k_padded * nr;
    const int8_t* src = qw + col * k;
    int32_t sum = 0;
    for (size_t kk = 0; kk < k; ++kk) {
      panel[((kk / kKr) * nr + j) * kKr + kk % kKr] = src[kk];
      sum += src[kk];
    }
    colsum[col] = sum;
    ws[col] = w_scale[col];
    bs[col] = bias ? bias[col] : 0.0f;
  }
  return w;
}

void run(const Ukernel& uk, const PackedWeights& w, const uint8_t* a, size_t a_stride,
         float* c, size_t c_stride, size_t m_begin, size_t m_end, size_t p_begin,
         size_t p_end, const Epilogue& ep_in) {
  if (uk.nr != w.nr) throw std::invalid_argument("gemm_qu8::run: ukernel nr != packed nr");
  if (ep_in.has_residual) throw std::invalid_argument("gemm_qu8::run: a fused residual needs run_segmented");
  if (ep_in.out_u8 && !uk.u8_out) throw std::invalid_argument(std::string("gemm_qu8::run: ") + uk.name + " has no u8 output");
  Epilogue ep = ep_in;
  if (ep.out_u8 && !ep.out_prepared.valid)
    ep.out_prepared = prepare_out_quant(QuantParams{ep.out_scale, ep.out_zero}, ep.lo, ep.hi);
  const size_t mr = uk.mr, nr = w.nr, out_bytes = ep.out_u8 ? 1 : 4;
  // Panel-outer: one panel stays in L1/L2 while every row tile of A streams past it.
  for (size_t p = p_begin; p < p_end; ++p) {
    const size_t n0 = p * nr;
    const size_t n_valid = w.n - n0 < nr ? w.n - n0 : nr;
    for (size_t m0 = m_begin; m0 < m_end; m0 += mr) {
      const size_t mt = m_end - m0 < mr ? m_end - m0 : mr;
      uk.fn(mt, a + m0 * a_stride, a_stride, w, p,
            reinterpret_cast<float*>(reinterpret_cast<char*>(c) + m0 * c_stride + n0 * out_bytes), c_stride, n_valid,
            ep);
    }
  }
}

bool segmented_ok(const Ukernel& uk, const PackedWeights& w, size_t segs) {
  return uk.seg_fn && uk.nr == w.nr && segs > 0 && w.k_padded == w.k && w.k % (kKr * segs) == 0;
}

void run_segmented(const Ukernel& uk, const PackedWeights& w, const uint8_t* a, size_t a_stride, size_t segs,
                   size_t seg_stride, float* c, size_t c_stride, size_t m_begin, size_t m_end, size_t p_begin,
                   size_t p_end, const Epilogue& ep_in) {
  if (!segmented_ok(uk, w, segs))
    throw std::invalid_argument("gemm_qu8::run_segmented: no segmented twin, or k does not split into segments");
  if (ep_in.out_u8 && (ep_in.has_residual || !uk.u8_out))
    throw std::invalid_argument("gemm_qu8::run_segmented: a u8 output needs a u8_out variant and no residual");
  Epilogue ep = ep_in;
  if (ep.out_u8 && !ep.out_prepared.valid)
    ep.out_prepared = prepare_out_quant(QuantParams{ep.out_scale, ep.out_zero}, ep.lo, ep.hi);
  const size_t mr = uk.mr, nr = w.nr, out_bytes = ep.out_u8 ? 1 : 4;
  for (size_t p = p_begin; p < p_end; ++p) {
    const size_t n0 = p * nr;
    const size_t n_valid = w.n - n0 < nr ? w.n - n0 : nr;
    for (size_t m0 = m_begin; m0 < m_end; m0 += mr) {
      const size_t mt = m_end - m0 < mr ? m_end - m0 : mr;
      uk.seg_fn(mt, a + m0 * a_stride, a_stride, segs, seg_stride, w, p,
                reinterpret_cast<float*>(reinterpret_cast<char*>(c) + m0 * c_stride + n0 * out_bytes), c_stride,
                n_valid, ep);
    }
  }
}

OutQuant prepare_out_quant(QuantParams p, float lo, float hi) {
  OutQuant o;
  o.valid = true;
  o.scale = p.scale;
  o.inv = 1.0f / p.scale;
  o.zero = p.zero;
  o.fast = fast_reciprocal_ok(p.scale);
  o.exact_fma_ok = p.scale >= 0x1p-60f && p.scale <= 0x1p100f;
  const bool finite = std::isfinite(lo) && std::isfinite(hi) && lo <= hi;
  o.check_bad = !finite;
  if (finite) {
    // The extreme codes either form of the quotient can give (both monotonic in x).
    const float lo_q = std::fmin(std::nearbyint(lo * o.inv), std::nearbyint(lo / p.scale));
    const float hi_q = std::fmax(std::nearbyint(hi * o.inv), std::nearbyint(hi / p.scale));
    o.clamp_low = !(lo_q + static_cast<float>(p.zero) >= 0.0f);
    o.clamp_high = !(hi_q + static_cast<float>(p.zero) <= 255.0f);
  }
  return o;
}

const std::vector<Ukernel>& all_ukernels() {
  static const std::vector<Ukernel> list = [] {
    std::vector<Ukernel> l = {
#define DSQ_GEMM_QU8_UKERNEL(ident, isa, mr, nr) {#ident, Isa::isa, mr, nr, ident},
#include "kernels/gemm_qu8/kernels.inc"
#undef DSQ_GEMM_QU8_UKERNEL
    };
#if DSQ_X86
    for (Ukernel& uk : l) uk.seg_fn = avx512vnni_segmented(uk.fn);
#endif
    // The AVX2 variant writes f32 only (its quantize pass is vectorized, its epilogue not).
    for (Ukernel& uk : l) uk.u8_out = uk.isa != Isa::kAvx2;
    return l;
  }();
  return list;
}

const Ukernel& best_ukernel() {
  const auto& list = all_ukernels();
  const Ukernel* best = &list.front();  // the scalar reference
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

void minmax(const float* x, size_t m, size_t k, size_t x_stride, float* lo, float* hi) {
#if DSQ_X86
  if (isa_supported(Isa::kAvx512)) return minmax_avx512(x, m, k, x_stride, lo, hi);
  if (isa_supported(Isa::kAvx2)) return minmax_avx2(x, m, k, x_stride, lo, hi);
#endif
  minmax_scalar(x, m, k, x_stride, lo, hi);
}

QuantParams choose_params(float lo, float hi) {
  lo = lo < 0.0f ? lo : 0.0f;
  hi = hi > 0.0f ? hi : 0.0f;
  // In double so that a range wider than FLT_MAX still gives a finite scale.
  float scale = static_cast<float>((static_cast<double>(hi) - lo) / 255.0);
  if (!(scale > 0.0f) || !std::isfinite(scale)) return {1.0f, 0};
  float zero = std::nearbyint(-lo / scale);
  zero = zero > 0.0f ? zero : 0.0f;
  zero = zero < 255.0f ? zero : 255.0f;
  return {scale, static_cast<int32_t>(zero)};
}

bool quantize(const float* x, size_t m, size_t k, size_t x_stride, uint8_t* q,
              size_t q_stride, QuantParams p) {
#if DSQ_X86
  if (isa_supported(Isa::kAvx512)) return quantize_avx512(x, m, k, x_stride, q, q_stride, p);
  if (isa_supported(Isa::kAvx2)) return quantize_avx2(x, m, k, x_stride, q, q_stride, p);
#endif
  return quantize_scalar_rows(x, m, k, x_stride, q, q_stride, p);
}

bool quantize_as_epilogue(const float* x, size_t n, uint8_t* q, QuantParams p, float lo, float hi, bool branch_free) {
#if DSQ_X86
  if (isa_supported(Isa::kAvx512)) return quantize_as_epilogue_avx512(x, n, q, p, lo, hi, branch_free);
#endif
  bool finite = true;
  for (size_t i = 0; i < n; ++i) {
    finite = finite && is_finite_bits(x[i]);
    q[i] = quantize_scalar(x[i], p.scale, static_cast<float>(p.zero));
  }
  return finite;
}

}  // namespace dsq::gemm_qu8
