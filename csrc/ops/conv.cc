// conv2d and linear: the layers that own weights. Each picks a kernel family from the
// weight encoding at load (f32/f16 -> gemm_f32, int8_channel -> gemm_qu8, int4_group ->
// gemm_q4; depthwise -> a direct NHWC kernel) and packs the weights for it once.
// Activations are NHWC, so a convolution is a GEMM over output pixels: rows are
// im2col patches ordered (kh, kw, cin), columns are output channels.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "base/error.h"
#include "format/matrix.h"
#include "kernels/dwconv_f32/dwconv_f32.h"
#include "kernels/dwconv_qu8/dwconv_qu8.h"
#include "kernels/gemm_f32/gemm_f32.h"
#include "kernels/gemm_q4/gemm_q4.h"
#include "kernels/gemm_qu8/gemm_qu8.h"
#include "ops/ops.h"

namespace dsq::rt {
namespace {

using format::Attr;
using format::Op;
using format::Values;

enum class Family { kF32, kQu8, kQ4, kDepthwiseF32, kDepthwiseQu8 };

constexpr size_t kRowsPerTask = 256;  // im2col rows per task: keeps the patch block in L2
constexpr size_t kMaxSlots = 64;      // most scratch slots a layer uses at once

// Copies n elements; im2col copies are often a few bytes (cin = 1..20), where a libc
// memcpy call costs more than the copy, so short ones use fixed-size (inlined) moves.
template <typename T>
inline void copy_short(T* dst, const T* src, size_t n) {
  size_t bytes = n * sizeof(T);
  if (bytes > 64) {
    std::memcpy(dst, src, bytes);
    return;
  }
  auto* d = reinterpret_cast<unsigned char*>(dst);
  auto* s = reinterpret_cast<const unsigned char*>(src);
  for (; bytes >= 16; bytes -= 16, d += 16, s += 16) std::memcpy(d, s, 16);
  if (bytes >= 8) { std::memcpy(d, s, 8); bytes -= 8; d += 8; s += 8; }
  if (bytes >= 4) { std::memcpy(d, s, 4); bytes -= 4; d += 4; s += 4; }
  if (bytes >= 2) { std::memcpy(d, s, 2); bytes -= 2; d += 2; s += 2; }
  if (bytes) *d = *s;
}

class ConvLayer : public Layer {
 public:
  ConvGeometry g;
  Family family = Family::kF32;
  float lo = -std::numeric_limits<float>::infinity(), hi = std::numeric_limits<float>::infinity();
  bool static_quant = false;
  gemm_qu8::QuantParams quant{1.f, 0};
  // int8 kxk conv without im2col: the GEMM rows are read straight from a zero-point padded
  // u8 copy of the input, kh segments of kw * cin bytes each (gemm_qu8::run_segmented).
  bool implicit_gemm = false;
  // Channels per pixel of that u8 copy: cin, or cin rounded up to 4 when kw * cin is not a
  // multiple of 4 (e.g. an RGB stem); the weights then have zero columns for the padding.
  int64_t implicit_cin = 0;
  // One packed weight set per group.
  const gemm_f32::Ukernel* f32_uk = nullptr;
  const gemm_qu8::Ukernel* qu8_uk = nullptr;
  const gemm_q4::Ukernel* q4_uk = nullptr;
  std::vector<gemm_f32::PackedWeights> f32_w;
  std::vector<gemm_qu8::PackedWeights> qu8_w;
  std::vector<gemm_q4::PackedWeights> q4_w;
  // Depthwise: weights [kh][kw][cout], bias [cout].
  std::vector<float> dw_weights, dw_bias;
  const dwconv_f32::Ukernel* dw_uk = nullptr;
  // Depthwise int8 (int8 weights and static input_quant): codes [kh][kw][cout], per channel
  // the activation scale times the weight scale (bias: dw_bias).
  std::vector<int8_t> dwq_weights;
  std::vector<float> dwq_scale;
  const dwconv_qu8::Ukernel* dwq_uk = nullptr;
  // 3-tap packed path (dwq_uk->packed, kw 3, dw 1): weights [kh][cout] u32 (dwconv_qu8.h)
  bool dwq_packed = false;
  std::vector<uint32_t> dwq_w3;
  std::string decoded_from;  // depthwise with quantized weights: which encoding
  uint64_t weight_read_bytes = 0;

  std::vector<Shape> infer(const std::vector<Shape>& in) const override {
    const Shape& x = in[0];
    if (g.is_linear) {
      if (x.rank() < 2 || x.rank() == 4)
        fail("expects an (N, " + std::to_string(g.cin) + ") input, got " + x.str());
      if (x.dims.back() != g.cin)
        fail("input has " + std::to_string(x.dims.back()) + " features, the layer expects " + std::to_string(g.cin));
      Shape out = x;
      out.dims.back() = g.cout;
      return {out};
    }
    if (x.rank() != 4) fail("expects a 4-D (N, C, H, W) input, got " + x.str());
    if (x.dims[1] != g.cin)
      fail("input has " + std::to_string(x.dims[1]) + " channels, the layer expects " + std::to_string(g.cin));
    const int64_t oh = (x.dims[2] + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
    const int64_t ow = (x.dims[3] + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
    if (x.dims[2] + 2 * g.ph < g.dh * (g.kh - 1) + 1 || x.dims[3] + 2 * g.pw < g.dw * (g.kw - 1) + 1)
      fail("input " + x.str() + " is smaller than the (dilated) kernel");
    return {Shape{{x.dims[0], g.cout, oh, ow}}};
  }

  size_t padded_input_bytes(const Shape& x) const {
    return static_cast<size_t>(x.dims[0] * (x.dims[2] + 2 * g.ph) * (x.dims[3] + 2 * g.pw) * implicit_cin);
  }

  int64_t gemm_rows(const Shape& out) const {
    return g.is_linear ? out.numel() / g.cout : out.dims[0] * out.dims[2] * out.dims[3];
  }

  // Depthwise packed path: bands of output rows per image (one per thread), and the most
  // input rows a band reads.
  static int64_t packed_bands(int64_t OH, size_t threads) {
    return std::max<int64_t>(1, std::min<int64_t>(OH, static_cast<int64_t>(std::min<size_t>(threads, kMaxSlots))));
  }
  int64_t packed_span(int64_t H, int64_t OH, int64_t bands) const {
    const int64_t rows = (OH + bands - 1) / bands;
    return std::min<int64_t>(H, (rows - 1) * g.sh + (g.kh - 1) * g.dh + 1);
  }

  size_t scratch_bytes(const std::vector<Shape>& in, const std::vector<Shape>& out,
                       size_t threads) const override {
    if (family == Family::kDepthwiseF32) return 0;
    // the input quantized once (u8; a quantize call pads its row to 4 bytes), then for the
    // packed path, per task slot, the packed input rows of one band
    if (family == Family::kDepthwiseQu8) {
      size_t bytes = (static_cast<size_t>(in[0].numel()) + 63) / 64 * 64 + 64;
      if (dwq_packed) {  // (a layer running serially uses one slot for a whole image)
        const int64_t H = in[0].dims[2], OH = out[0].dims[2];
        const size_t row = static_cast<size_t>(out[0].dims[3] * g.cin) * 4;
        const size_t split = std::min<size_t>(threads, kMaxSlots) * packed_span(H, OH, packed_bands(OH, threads));
        bytes += std::max<size_t>(split, static_cast<size_t>(packed_span(H, OH, 1))) * row;
      }
      return bytes;
    }
    threads = std::min<size_t>(threads, kMaxSlots);  // task slots, see run_tasks
    const size_t kg = static_cast<size_t>(g.k_group());
    size_t bytes = 0;
    if (family == Family::kF32) {
      if (!g.pointwise() || g.groups > 1) bytes += threads * kRowsPerTask * kg * 4;
    } else if (implicit_gemm) {
      // the padded u8 input (+4: a row quantize writes its k padded to 4 bytes)
      return padded_input_bytes(in[0]) + 64;
    } else {
      const size_t kp = gemm_qu8::padded_k(kg);
      // whole input quantized once (u8), then per-task u8 patches
      bytes += (static_cast<size_t>(in[0].numel()) + 63) / 64 * 64;
      if (g.pointwise() && g.groups == 1)
        bytes += static_cast<size_t>(gemm_rows(out[0])) * kp;
      else
        bytes += threads * kRowsPerTask * kp;
    }
    return bytes;
  }

  Cost cost(const std::vector<Shape>& in, const std::vector<Shape>& out) const override {
    Cost c = Layer::cost(in, out);
    const uint64_t macs = static_cast<uint64_t>(gemm_rows(out[0])) * g.cout * g.k_group();
    if (family == Family::kQu8 || family == Family::kDepthwiseQu8) c.macs_int8 += macs;
    else if (family == Family::kQ4) c.macs_int4 += macs;
    else c.macs_f32 += macs;
    c.weight_bytes = weight_read_bytes;
    return c;
  }

  std::string kernel() const override {
    std::string k;
    switch (family) {
      case Family::kF32: k = f32_uk->name; break;
      case Family::kQu8: k = qu8_uk->name; break;
      case Family::kQ4: k = q4_uk->name; break;
      case Family::kDepthwiseF32:
        return std::string(dw_uk->name) + " nhwc" +
               (decoded_from.empty() ? "" : " (weights decoded from " + decoded_from + ")");
      case Family::kDepthwiseQu8:
        return std::string(dwq_uk->name) + (dwq_packed ? " 3-tap packed rows" : "") + " nhwc (static act quant)";
    }
    if (!g.is_linear && !g.pointwise()) k += implicit_gemm ? " + implicit gemm" : " + im2col";
    if (family == Family::kF32 && !decoded_from.empty()) k += " (weights decoded from " + decoded_from + ")";
    if (g.groups > 1) k += " x" + std::to_string(g.groups) + " groups";
    if ((family == Family::kQu8 || family == Family::kQ4))
      k += static_quant ? " (static act quant)" : " (dynamic act quant)";
    return k;
  }

  bool fuses_residual() const override {
    return lo == -std::numeric_limits<float>::infinity() && hi == std::numeric_limits<float>::infinity();
  }
  // Dynamic quantization takes one scale from the whole input, so it reads the batch.
  bool per_sample(const std::vector<Shape>&) const override {
    return static_quant || (family != Family::kQu8 && family != Family::kQ4);
  }

  // u8 chaining: the depthwise int8 layers read their input as u8 as it is and write u8
  // from their kernels' epilogue; so do the dense int8 pointwise GEMM (u8 rows read in
  // place when they need no padding: cin a multiple of 4) and the implicit-GEMM kxk conv
  // (u8 rows copied into its padded input; not with padded channels).
  bool takes_u8_input(const std::vector<Shape>&, const std::vector<Shape>&,
                      gemm_qu8::QuantParams* q) const override {
    const bool ok = static_quant && (family == Family::kDepthwiseQu8 ||
                                     (family == Family::kQu8 && g.pointwise() && g.groups == 1 &&
                                      gemm_qu8::padded_k(static_cast<size_t>(g.k_group())) ==
                                          static_cast<size_t>(g.k_group())) ||
                                     (family == Family::kQu8 && implicit_gemm && implicit_cin == g.cin));
    if (ok) *q = quant;
    return ok;
  }
  // The dense GEMM only where its activation range quantizes inside 0..255 for the reader
  // (e.g. ReLU6): its epilogue then skips the NaN check and clamps. With an open range
  // (ResNet-CIFAR's ReLUs) the epilogue quantize measured slower than the separate pass
  // (int8 batch 1: 272 vs 265 us).
  bool gives_u8_output(const std::vector<Shape>&, const std::vector<Shape>&,
                       const gemm_qu8::QuantParams& reader) const override {
    if (family == Family::kDepthwiseQu8) return true;
    if (family != Family::kQu8 || !(implicit_gemm || (g.pointwise() && g.groups == 1)) || !qu8_uk->u8_out) return false;
    const gemm_qu8::OutQuant o = gemm_qu8::prepare_out_quant(reader, lo, hi);
    return !o.check_bad && !o.clamp_low && !o.clamp_high;
  }

  void run(const std::vector<const float*>& in, const std::vector<Shape>& in_shapes,
           const std::vector<float*>& out, const std::vector<Shape>& out_shapes, const RunEnv& run_env) const override {
    RunEnv env = run_env;
    const bool dw = family == Family::kDepthwiseF32 || family == Family::kDepthwiseQu8;
    const uint64_t macs = static_cast<uint64_t>(gemm_rows(out_shapes[0])) * static_cast<uint64_t>(dw ? 1 : g.cout) *
                          static_cast<uint64_t>(dw ? g.cout * g.kh * g.kw : g.k_group());
    env.serial = run_env.serial || macs < min_parallel_macs();
    bool residual_done = false;  // the implicit GEMM path adds it row by row, in cache
    if (family == Family::kDepthwiseF32) run_depthwise(in[0], in_shapes[0], out[0], out_shapes[0], env);
    else if (family == Family::kDepthwiseQu8) run_depthwise_qu8(in[0], in_shapes[0], out[0], out_shapes[0], env);
    else if (family == Family::kF32) run_f32(in[0], in_shapes[0], out[0], out_shapes[0], env);
    else residual_done = run_quantized(in[0], in_shapes[0], out[0], out_shapes[0], env);
    if (env.residual && !residual_done)
      add_residual(out[0], env.residual, static_cast<size_t>(out_shapes[0].numel()), env.residual_lo, env.residual_hi,
                   env);
  }

 private:
  // Spreads `chunks` work items over at most 64 task slots; slot s owns scratch slot s.
  template <typename F>
  void run_tasks(const RunEnv& env, size_t chunks, F&& fn) const {
    env.pool->parallel_chunks(chunks, std::min<size_t>(env.threads(), kMaxSlots), fn);
  }

  // Input patch rows [m0, m0 + rows) for group `grp`, as a (rows x kg) block of T with
  // `pad` outside the image and `kpad_to` columns per row (padding columns zero).
  template <typename T>
  void im2col(const T* x, const Shape& xs, const Shape& ys, int64_t grp, int64_t m0, int64_t rows,
              T* dst, size_t row_len, T pad, bool channel_major = false) const {
    const int64_t H = xs.dims[2], W = xs.dims[3], C = g.cin, cg = g.cin / g.groups;
    const int64_t OH = ys.dims[2], OW = ys.dims[3];
    const int64_t kg = g.k_group();
    // Pixel (n, oh, ow) of row m0, then advanced row by row (no divisions per row).
    int64_t n = m0 / (OH * OW), oh = m0 % (OH * OW) / OW, ow = m0 % OW;
    for (int64_t r = 0; r < rows; ++r, ++ow) {
      if (ow == OW) {
        ow = 0;
        if (++oh == OH) oh = 0, ++n;
      }
      T* d = dst + r * row_len;
      if (channel_major) {  // (cin, kh, kw): the file order, used by int4 groups
        const int64_t taps = g.kh * g.kw;
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t ih = oh * g.sh - g.ph + i * g.dh;
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t iw = ow * g.sw - g.pw + j * g.dw;
            T* dd = d + i * g.kw + j;  // tap (i, j) of channel c lands at c * taps
            if (ih < 0 || ih >= H || iw < 0 || iw >= W) {
              for (int64_t c = 0; c < cg; ++c) dd[c * taps] = pad;
            } else {
              const T* src = x + ((n * H + ih) * W + iw) * C + grp * cg;
              for (int64_t c = 0; c < cg; ++c) dd[c * taps] = src[c];
            }
          }
        }
        std::fill(d + kg, d + row_len, T(0));
        continue;
      }
      // Taps in bounds of one kernel row are adjacent in NHWC when the layer is not grouped
      // and not dilated: one copy of (valid taps x cin) instead of one per tap.
      const bool contiguous_taps = g.groups == 1 && g.dw == 1;
      const int64_t w0 = ow * g.sw - g.pw;
      const int64_t j_begin = contiguous_taps ? std::min<int64_t>(g.kw, std::max<int64_t>(0, -w0)) : 0;
      const int64_t j_end = contiguous_taps ? std::max<int64_t>(j_begin, std::min<int64_t>(g.kw, W - w0)) : 0;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = oh * g.sh - g.ph + i * g.dh;
        T* dk = d + i * g.kw * cg;
        if (ih < 0 || ih >= H) {
          std::fill(dk, dk + g.kw * cg, pad);
          continue;
        }
        const T* src_row = x + (n * H + ih) * W * C + grp * cg;
        if (contiguous_taps) {
          std::fill(dk, dk + j_begin * cg, pad);
          copy_short(dk + j_begin * cg, src_row + (w0 + j_begin) * C, static_cast<size_t>((j_end - j_begin) * cg));
          std::fill(dk + j_end * cg, dk + g.kw * cg, pad);
          continue;
        }
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t iw = w0 + j * g.dw;
          T* dd = dk + j * cg;
          if (iw < 0 || iw >= W) std::fill(dd, dd + cg, pad);
          else copy_short(dd, src_row + iw * C, static_cast<size_t>(cg));
        }
      }
      std::fill(d + kg, d + row_len, T(0));
    }
  }

  void run_f32(const float* x, const Shape& xs, float* y, const Shape& ys, const RunEnv& env) const {
    const int64_t M = gemm_rows(ys);
    const size_t kg = static_cast<size_t>(g.k_group());
    const size_t c_stride = static_cast<size_t>(g.cout) * 4;
    const size_t cog = static_cast<size_t>(g.cout_group());
    if (g.pointwise() && g.groups == 1) {
      // Rows straight from the input; split rows and panels over threads.
      const auto& w = f32_w[0];
      const size_t panels = w.panel_count();
      const size_t mr = f32_uk->mr;
      const size_t m_blocks = (static_cast<size_t>(M) + mr - 1) / mr;
      const size_t threads = env.threads();
      // Few rows (batch-1 linear): split panels; many rows: split rows.
      const size_t m_tasks = std::min(m_blocks, std::max<size_t>(1, threads * 4 / std::max<size_t>(1, std::min(panels, threads * 4))));
      const size_t p_tasks = std::min(panels, threads * 4);
      const size_t tasks = (threads <= 1) ? 1 : m_tasks * p_tasks;
      auto body = [&](size_t t) {
        const size_t mt = t % m_tasks, pt = t / m_tasks;
        const size_t mb = m_blocks * mt / m_tasks * mr, me = std::min<size_t>(M, m_blocks * (mt + 1) / m_tasks * mr);
        const size_t pb = panels * pt / p_tasks, pe = panels * (pt + 1) / p_tasks;
        gemm_f32::run(*f32_uk, w, x, kg * 4, y, c_stride, mb, me, pb, pe, lo, hi);
      };
      if (tasks <= 1) gemm_f32::run(*f32_uk, w, x, kg * 4, y, c_stride, 0, M, 0, panels, lo, hi);
      else env.pool->parallel_for(tasks, body);
      return;
    }
    const size_t chunks = (static_cast<size_t>(M) + kRowsPerTask - 1) / kRowsPerTask;
    run_tasks(env, chunks * g.groups, [&](size_t task, size_t slot) {
      const int64_t grp = static_cast<int64_t>(task % g.groups);
      const int64_t m0 = static_cast<int64_t>(task / g.groups * kRowsPerTask);
      const int64_t rows = std::min<int64_t>(kRowsPerTask, M - m0);
      float* patches = reinterpret_cast<float*>(env.scratch) + slot * kRowsPerTask * kg;
      const float* a;
      size_t a_stride;
      if (g.pointwise()) {  // grouped 1x1: read the group's channels in place
        a = x + m0 * g.cin + grp * static_cast<int64_t>(kg);
        a_stride = static_cast<size_t>(g.cin) * 4;
      } else {
        im2col<float>(x, xs, ys, grp, m0, rows, patches, kg, 0.f);
        a = patches;
        a_stride = kg * 4;
      }
      const auto& w = f32_w[grp];
      gemm_f32::run(*f32_uk, w, a, a_stride, y + m0 * g.cout + grp * cog, c_stride, 0, rows, 0,
                    w.panel_count(), lo, hi);
    });
  }

  // Returns true when it has also added env.residual (the implicit GEMM path).
  bool run_quantized(const float* x, const Shape& xs, float* y, const Shape& ys, const RunEnv& env) const {
    const int64_t M = gemm_rows(ys);
    const size_t kg = static_cast<size_t>(g.k_group());
    const size_t kp = gemm_qu8::padded_k(kg);
    const size_t c_stride = static_cast<size_t>(g.cout) * 4;
    const size_t cog = static_cast<size_t>(g.cout_group());
    const int64_t in_rows = g.is_linear ? M : xs.dims[0] * xs.dims[2] * xs.dims[3];
    // One quantization scale serves the whole input, so a NaN or Inf anywhere would be
    // turned into ordinary numbers (NaN -> 0, Inf -> an infinite scale) and give finite,
    // wrong outputs. Instead the whole output is NaN (docs/HARDENING.md): quantize()
    // reports non-finite inputs while it reads them (choose_params copes with any range).
    auto nan_output = [&] {
      rt::nan_output(y, static_cast<size_t>(ys.numel()), env);
      return false;
    };
    gemm_qu8::QuantParams qp = quant;
    if (!static_quant) {
      float mn, mx;
      gemm_qu8::minmax(x, in_rows, g.cin, static_cast<size_t>(g.cin) * 4, &mn, &mx);
      qp = gemm_qu8::choose_params(mn, mx);
    }
    const gemm_qu8::Epilogue ep{qp.zero, qp.scale, lo, hi};
    uint8_t* scratch = env.scratch;
    auto gemm = [&](int64_t grp, const uint8_t* a, size_t a_stride, int64_t m0, int64_t m_end, size_t pb, size_t pe,
                    float* c) {
      if (family == Family::kQu8)
        gemm_qu8::run(*qu8_uk, qu8_w[grp], a, a_stride, c, c_stride, m0, m_end, pb, pe, ep);
      else
        gemm_q4::run(*q4_uk, q4_w[grp], a, a_stride, c, c_stride, m0, m_end, pb, pe, ep);
    };
    const size_t panels = family == Family::kQu8 ? qu8_w[0].panel_count() : q4_w[0].panel_count();
    if (g.pointwise() && g.groups == 1) {
      // Quantize the rows once (k padded), then split rows and panels over threads.
      const uint8_t* qa = env.in_u8;  // chained: the codes as they are (kp == kg)
      if (qa && env.in_bad) return nan_output();
      if (!qa) {
        uint8_t* q = scratch + (static_cast<size_t>(xs.numel()) + 63) / 64 * 64;
        if (!quantize_parallel(env, x, M, kg, kg * 4, q, kp, qp)) return nan_output();
        qa = q;
      }
      const size_t threads = env.threads();
      const size_t mr = family == Family::kQu8 ? qu8_uk->mr : q4_uk->mr;
      const size_t m_blocks = (static_cast<size_t>(M) + mr - 1) / mr;
      const size_t p_tasks = std::min(panels, threads * 4);
      const size_t m_tasks = std::min(m_blocks, std::max<size_t>(1, threads * 4 / std::max<size_t>(1, p_tasks)));
      const size_t tasks = threads <= 1 ? 1 : m_tasks * p_tasks;
      // Chained output (dense int8 only): u8 codes, cout bytes per row; each task slot
      // notes the NaN / Inf outputs it met in its own byte.
      uint8_t bad[kMaxSlots] = {};
      const gemm_qu8::OutQuant out_q = env.out_u8 ? gemm_qu8::prepare_out_quant(env.out_quant, lo, hi)
                                                  : gemm_qu8::OutQuant{};
      auto part = [&](size_t t, size_t slot) {  // task t of tasks; one task: everything
        const size_t mt = t % m_tasks, pt = t / m_tasks, m_parts = tasks <= 1 ? 1 : m_tasks;
        const size_t p_parts = tasks <= 1 ? 1 : p_tasks;
        const size_t mb = m_blocks * mt / m_parts * mr, me = std::min<size_t>(M, m_blocks * (mt + 1) / m_parts * mr);
        const size_t pb = panels * pt / p_parts, pe = panels * (pt + 1) / p_parts;
        if (!env.out_u8) return gemm(0, qa, kp, mb, me, pb, pe, y);
        gemm_qu8::Epilogue eq = ep;
        set_u8_output(eq, env, out_q, bad + slot);
        gemm_qu8::run(*qu8_uk, qu8_w[0], qa, kp, reinterpret_cast<float*>(env.out_u8), static_cast<size_t>(g.cout), mb,
                      me, pb, pe, eq);
      };
      if (tasks <= 1) part(0, 0);
      else env.pool->parallel_chunks(tasks, std::min<size_t>(threads, kMaxSlots), part);
      if (env.out_u8) *env.out_bad = std::any_of(bad, bad + kMaxSlots, [](uint8_t b) { return b != 0; });
      return false;
    }
    if (implicit_gemm) return run_implicit(x, xs, y, ys, qp, ep, env) || nan_output();
    // Quantize the whole input once (NHWC u8), then build u8 patches per task with the
    // zero point as padding (it stands for 0.0).
    uint8_t* qx = scratch;
    if (!gemm_qu8::quantize(x, 1, static_cast<size_t>(xs.numel()), 0, qx,
                            gemm_qu8::padded_k(static_cast<size_t>(xs.numel())), qp))
      return nan_output();
    uint8_t* patch_base = scratch + (static_cast<size_t>(xs.numel()) + 63) / 64 * 64;
    const size_t chunks = (static_cast<size_t>(M) + kRowsPerTask - 1) / kRowsPerTask;
    run_tasks(env, chunks * g.groups, [&](size_t task, size_t slot) {
      const int64_t grp = static_cast<int64_t>(task % g.groups);
      const int64_t m0 = static_cast<int64_t>(task / g.groups * kRowsPerTask);
      const int64_t rows = std::min<int64_t>(kRowsPerTask, M - m0);
      uint8_t* patches = patch_base + slot * kRowsPerTask * kp;
      if (g.pointwise()) {
        for (int64_t r = 0; r < rows; ++r) {
          std::memcpy(patches + r * kp, qx + (m0 + r) * g.cin + grp * static_cast<int64_t>(kg), kg);
          std::memset(patches + r * kp + kg, 0, kp - kg);
        }
      } else {
        im2col<uint8_t>(qx, xs, ys, grp, m0, rows, patches, kp, static_cast<uint8_t>(qp.zero), family == Family::kQ4);
      }
      const size_t pcount = family == Family::kQu8 ? qu8_w[grp].panel_count() : q4_w[grp].panel_count();
      gemm(grp, patches, kp, 0, rows, 0, pcount, y + m0 * g.cout + grp * cog);
    });
    return false;
  }

  // The u8 input with its padding as a real border (the zero point stands for 0.0), then
  // per output row one segmented GEMM: row ow starts at padded pixel (oh * sh, ow * sw),
  // segment i (kernel row i) dh padded rows further down.
  // Returns false (and computes nothing) when the input holds a NaN or Inf; otherwise true,
  // with env.residual (if any) added.
  bool run_implicit(const float* x, const Shape& xs, float* y, const Shape& ys, const gemm_qu8::QuantParams& qp,
                    const gemm_qu8::Epilogue& ep, const RunEnv& env) const {
    const int64_t N = xs.dims[0], H = xs.dims[2], W = xs.dims[3], C = implicit_cin;
    const int64_t Hp = H + 2 * g.ph, Wp = W + 2 * g.pw, OH = ys.dims[2], OW = ys.dims[3];
    const size_t row_bytes = static_cast<size_t>(Wp * C);
    const bool padded_channels = C != g.cin;
    uint8_t* xp = env.scratch;
    const uint8_t zero = static_cast<uint8_t>(qp.zero);
    // Interior rows, then the borders. A quantize call writes its row padded to 4 bytes:
    // when W * cin is not a multiple of 4 those extra bytes land on the next row (or the
    // border, filled afterwards), so the rows go in order on one thread; otherwise the
    // rows are split over the threads.
    const size_t in_rows = static_cast<size_t>(N * H), row_len = static_cast<size_t>(W * g.cin);
    char finite[kMaxSlots];
    std::fill(finite, finite + kMaxSlots, 1);
    auto quantize_rows = [&](size_t r0, size_t r1, size_t slot) {
      for (size_t r = r0; r < r1; ++r) {
        const int64_t n = static_cast<int64_t>(r) / H, h = static_cast<int64_t>(r) % H;
        uint8_t* dst = xp + ((n * Hp + h + g.ph) * Wp + g.pw) * C;
        if (env.in_u8) {  // chained: the row's codes as they are
          std::memcpy(dst, env.in_u8 + r * row_len, row_len);
          continue;
        }
        // Padded channels: one quantize row per pixel, cin values then zeros up to C (the
        // weights of those channels are 0).
        const bool ok = padded_channels
                            ? gemm_qu8::quantize(x + r * row_len, static_cast<size_t>(W), static_cast<size_t>(g.cin),
                                                 static_cast<size_t>(g.cin) * 4, dst, static_cast<size_t>(C), qp)
                            : gemm_qu8::quantize(x + r * row_len, 1, row_len, 0, dst, gemm_qu8::padded_k(row_len), qp);
        if (!ok) finite[slot] = 0;
      }
    };
    if (env.in_u8 && env.in_bad) return false;
    if (!padded_channels && row_len % gemm_qu8::kKr != 0) {
      quantize_rows(0, in_rows, 0);
    } else {
      constexpr size_t kRowsPerChunk = 16;
      run_tasks(env, (in_rows + kRowsPerChunk - 1) / kRowsPerChunk, [&](size_t chunk, size_t slot) {
        quantize_rows(chunk * kRowsPerChunk, std::min(in_rows, (chunk + 1) * kRowsPerChunk), slot);
      });
    }
    if (!std::all_of(finite, finite + kMaxSlots, [](char f) { return f != 0; })) return false;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < Hp; ++h) {
        uint8_t* row = xp + (n * Hp + h) * Wp * C;
        if (h < g.ph || h >= g.ph + H) {
          std::memset(row, zero, row_bytes);
        } else {
          std::memset(row, zero, static_cast<size_t>(g.pw * C));
          std::memset(row + (g.pw + W) * C, zero, static_cast<size_t>(g.pw * C));
        }
      }
    const auto& w = qu8_w[0];
    const size_t panels = w.panel_count(), c_stride = static_cast<size_t>(g.cout) * 4;
    const size_t out_rows = static_cast<size_t>(N * OH);
    const size_t rows_per_task = std::max<size_t>(1, kRowsPerTask / static_cast<size_t>(OW));
    const size_t chunks = (out_rows + rows_per_task - 1) / rows_per_task;
    // The fused residual add goes into the ukernels' epilogue (add_residual's expression):
    // the residual has the output's layout, so it sits at one fixed offset from every output.
    gemm_qu8::Epilogue eps = ep;
    if (env.residual) {
      eps.has_residual = true;
      eps.residual_offset = reinterpret_cast<const char*>(env.residual) - reinterpret_cast<const char*>(y);
      eps.res_lo = env.residual_lo;
      eps.res_hi = env.residual_hi;
    }
    // Chained output: u8 codes, cout bytes per pixel; each task slot notes the NaN / Inf
    // outputs it met in its own byte.
    uint8_t bad[kMaxSlots] = {};
    const gemm_qu8::OutQuant out_q = env.out_u8 ? gemm_qu8::prepare_out_quant(env.out_quant, ep.lo, ep.hi)
                                                : gemm_qu8::OutQuant{};
    run_tasks(env, chunks, [&](size_t chunk, size_t slot) {
      gemm_qu8::Epilogue ept = eps;
      if (env.out_u8) set_u8_output(ept, env, out_q, bad + slot);
      const size_t r_end = std::min(out_rows, (chunk + 1) * rows_per_task);
      for (size_t r = chunk * rows_per_task; r < r_end; ++r) {
        const int64_t n = static_cast<int64_t>(r) / OH, oh = static_cast<int64_t>(r) % OH;
        const uint8_t* a = xp + (n * Hp + oh * g.sh) * Wp * C;
        float* yr = env.out_u8 ? reinterpret_cast<float*>(env.out_u8 + r * OW * g.cout) : y + r * OW * g.cout;
        gemm_qu8::run_segmented(*qu8_uk, w, a, static_cast<size_t>(g.sw * C), static_cast<size_t>(g.kh),
                                static_cast<size_t>(g.dh) * row_bytes, yr,
                                env.out_u8 ? static_cast<size_t>(g.cout) : c_stride, 0, static_cast<size_t>(OW), 0,
                                panels, ept);
      }
    });
    if (env.out_u8) *env.out_bad = std::any_of(bad, bad + kMaxSlots, [](uint8_t b) { return b != 0; });
    return true;
  }

  void run_depthwise(const float* x, const Shape& xs, float* y, const Shape& ys, const RunEnv& env) const {
    const int64_t N = xs.dims[0], H = xs.dims[2], W = xs.dims[3], C = g.cin;
    const int64_t OH = ys.dims[2], OW = ys.dims[3], CO = g.cout;
    const dwconv_f32::Geometry dg{H, W, C, CO, OW, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, lo, hi};
    run_tasks(env, static_cast<size_t>(N * OH), [&](size_t row, size_t) {
      const int64_t n = static_cast<int64_t>(row) / OH, oh = static_cast<int64_t>(row) % OH;
      dw_uk->fn(dg, x + n * H * W * C, dw_weights.data(), dw_bias.data(), y + (n * OH + oh) * OW * CO, oh);
    });
  }

  void run_depthwise_qu8(const float* x, const Shape& xs, float* y, const Shape& ys, const RunEnv& env) const {
    const int64_t N = xs.dims[0], H = xs.dims[2], W = xs.dims[3], C = g.cin;
    const int64_t OH = ys.dims[2], OW = ys.dims[3];
    const size_t n_in = static_cast<size_t>(xs.numel());
    uint8_t* qx = env.scratch;
    dwconv_qu8::Geometry dg{H, W, C, OW, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, quant.zero, lo, hi};
    // Chained output: each task slot notes the NaN / Inf outputs it met in its own byte.
    uint8_t bad[kMaxSlots] = {};
    if (env.out_u8) {
      set_u8_output(dg, env, gemm_qu8::prepare_out_quant(env.out_quant, lo, hi), nullptr);  // bad: per slot
      *env.out_bad = 0;
    }
    auto geometry = [&](size_t slot) {
      dwconv_qu8::Geometry gs = dg;
      gs.out_bad = bad + slot;
      return gs;
    };
    auto out_row = [&](int64_t r) {  // output row r of the batch (bytes when chained)
      return env.out_u8 ? reinterpret_cast<float*>(env.out_u8 + r * OW * C) : y + r * OW * C;
    };
    auto nan_output = [&] { rt::nan_output(y, static_cast<size_t>(ys.numel()), env); };
    auto finish = [&] {
      if (env.out_u8 && std::any_of(bad, bad + kMaxSlots, [](uint8_t b) { return b != 0; })) *env.out_bad = 1;
    };
    const bool fused = dwq_packed && dwq_uk->quant_pack && g.sw == 1 && !env.in_u8;
    // A non-finite input gives a NaN output, as on the other int8 paths (HARDENING.md).
    if (env.in_u8) {
      if (env.in_bad) return nan_output();
      qx = const_cast<uint8_t*>(env.in_u8);  // read only
    } else if (!fused && !quantize_parallel(env, x, 1, n_in, 0, qx, gemm_qu8::padded_k(n_in), quant)) {
      return nan_output();
    }
    if (dwq_packed) {
      // One task per band of output rows: it packs the input rows its band reads into its
      // own slot (a band's halo rows are packed twice) and runs the band, so the packed
      // rows stay in that core's cache and there is one parallel region.
      const int64_t bands = packed_bands(OH, env.threads());
      uint32_t* slots = reinterpret_cast<uint32_t*>(env.scratch + (n_in + 63) / 64 * 64 + 64);
      const size_t slot_words = static_cast<size_t>(packed_span(H, OH, bands) * OW * C);
      char finite[kMaxSlots];
      std::fill(finite, finite + kMaxSlots, 1);
      auto span = [&](int64_t b, int64_t* oh0, int64_t* oh1, int64_t* lo, int64_t* hi) {
        *oh0 = OH * b / bands;
        *oh1 = OH * (b + 1) / bands;
        *lo = std::max<int64_t>(0, *oh0 * g.sh - g.ph);
        *hi = std::min<int64_t>(H, (*oh1 - 1) * g.sh - g.ph + (g.kh - 1) * g.dh + 1);
      };
      run_tasks(env, static_cast<size_t>(N * bands), [&](size_t task, size_t slot) {
        const int64_t n = static_cast<int64_t>(task) / bands;
        int64_t oh0, oh1, lo, hi;
        span(static_cast<int64_t>(task) % bands, &oh0, &oh1, &lo, &hi);
        if (oh0 >= oh1) return;
        uint32_t* band = slots + slot * slot_words;
        for (int64_t ih = lo; ih < hi; ++ih) {
          uint32_t* dst = band + (ih - lo) * OW * C;
          if (!fused) dwq_uk->pack(dg, qx + (n * H + ih) * W * C, dst);
          else if (!dwq_uk->quant_pack(dg, x + (n * H + ih) * W * C, quant.scale, quant.zero, dst)) finite[slot] = 0;
        }
        const dwconv_qu8::Geometry gs = geometry(slot);
        for (int64_t oh = oh0; oh < oh1; ++oh)
          dwq_uk->packed(gs, band, lo, dwq_w3.data(), dwq_scale.data(), dw_bias.data(), out_row(n * OH + oh), oh);
      });
      if (fused) {
        // Rows no band reads were not quantized: the NaN rule still looks at them. Band
        // spans start in order, so the unread rows are the gaps between them and the tail.
        auto check_rows = [&](int64_t r0, int64_t r1) {
          for (int64_t n = 0; n < N; ++n)
            for (const float *p = x + (n * H + r0) * W * C, *e = x + (n * H + r1) * W * C; p < e; ++p)
              if (!std::isfinite(*p)) finite[0] = 0;
        };
        int64_t read_to = 0;
        for (int64_t b = 0; b < bands; ++b) {
          int64_t oh0, oh1, lo, hi;
          span(b, &oh0, &oh1, &lo, &hi);
          if (oh0 >= oh1 || lo >= hi) continue;
          if (lo > read_to) check_rows(read_to, lo);
          read_to = std::max(read_to, hi);
        }
        if (read_to < H) check_rows(read_to, H);
        if (!std::all_of(finite, finite + kMaxSlots, [](char f) { return f != 0; })) return nan_output();
      }
      return finish();
    }
    run_tasks(env, static_cast<size_t>(N * OH), [&](size_t row, size_t slot) {
      const int64_t n = static_cast<int64_t>(row) / OH, oh = static_cast<int64_t>(row) % OH;
      dwq_uk->fn(geometry(slot), qx + n * H * W * C, dwq_weights.data(), dwq_scale.data(), dw_bias.data(),
                 out_row(n * OH + oh), oh);
    });
    finish();
  }
};

[[noreturn]] void bad(const format::Node& n, const std::string& what) {
  throw UnsupportedError("node '" + n.name + "' (" + format::op_name(n.op) + "): " + what);
}

// The plain value stream of a dense int8 / int4 weight: the stored bytes, or the
// Huffman-decoded symbols in `storage` (int4 repacked two per byte).
const uint8_t* integer_value_bytes(const format::Tensor& wt, std::vector<uint8_t>& storage) {
  const format::Stream* vs = wt.stream(format::Role::kValues);
  if (vs->entropy == format::Entropy::kNone) return vs->data;
  const std::vector<uint8_t> symbols = format::decode_symbols(*vs);
  if (wt.values == Values::kInt8Channel) {
    storage = symbols;
  } else {
    storage.assign((symbols.size() + 1) / 2, 0);
    for (size_t i = 0; i < symbols.size(); ++i)
      storage[i / 2] |= static_cast<uint8_t>((i & 1) ? symbols[i] << 4 : symbols[i] & 0xF);
  }
  return storage.data();
}

// Weights of one group in GEMM order: [cout_g][kh][kw][cin_g] (matches NHWC im2col).
std::vector<float> gemm_order_f32(const std::vector<float>& w, const ConvGeometry& g, int64_t grp) {
  const int64_t cog = g.cout_group(), cig = g.cin / g.groups, kg = g.k_group();
  std::vector<float> out(static_cast<size_t>(cog * kg));
  for (int64_t o = 0; o < cog; ++o)
    for (int64_t c = 0; c < cig; ++c)
      for (int64_t i = 0; i < g.kh; ++i)
        for (int64_t j = 0; j < g.kw; ++j)
          out[o * kg + (i * g.kw + j) * cig + c] = w[(((grp * cog + o) * cig + c) * g.kh + i) * g.kw + j];
  return out;
}

}  // namespace

std::unique_ptr<Layer> make_conv_or_linear(const format::Node& n, const format::File& file,
                                           const LoadOptions& options) {
  auto layer = std::make_unique<ConvLayer>();
  layer->name = n.name;
  layer->op = n.op;
  ConvGeometry& g = layer->g;
  g.is_linear = n.op == Op::kLinear;
  if (n.inputs.size() != 1 || n.outputs.size() != 1) bad(n, "needs exactly 1 input and 1 output");
  if (n.weights.empty() || n.weights.size() > 2 || n.weights[0] == format::kAbsent) bad(n, "needs a weight tensor and an optional bias");
  const format::Tensor& wt = file.tensors[n.weights[0]];
  const format::Tensor* bt = (n.weights.size() == 2 && n.weights[1] != format::kAbsent) ? &file.tensors[n.weights[1]] : nullptr;
  if (g.is_linear) {
    if (wt.dims.size() != 2) bad(n, "weight '" + wt.name + "' must be 2-D (out, in)");
    g.cout = static_cast<int64_t>(wt.dims[0]);
    g.cin = static_cast<int64_t>(wt.dims[1]);
  } else {
    if (wt.dims.size() != 4) bad(n, "weight '" + wt.name + "' must be 4-D (out, in/groups, kh, kw)");
    g.groups = attr_int(n, Attr::kGroups, 0, 1);
    g.sh = attr_int(n, Attr::kStride, 0, 1);
    g.sw = attr_int(n, Attr::kStride, 1, 1);
    g.ph = attr_int(n, Attr::kPadding, 0, 0);
    g.pw = attr_int(n, Attr::kPadding, 1, 0);
    g.dh = attr_int(n, Attr::kDilation, 0, 1);
    g.dw = attr_int(n, Attr::kDilation, 1, 1);
    g.cout = static_cast<int64_t>(wt.dims[0]);
    g.kh = static_cast<int64_t>(wt.dims[2]);
    g.kw = static_cast<int64_t>(wt.dims[3]);
    if (g.groups < 1 || g.groups > g.cout || g.cout % g.groups)
      bad(n, "groups " + std::to_string(g.groups) + " must divide the " + std::to_string(g.cout) + " output channels");
    g.cin = static_cast<int64_t>(wt.dims[1]) * g.groups;
    if (g.sh < 1 || g.sw < 1 || g.sh > 4096 || g.sw > 4096 || g.ph < 0 || g.pw < 0 || g.ph > 4096 || g.pw > 4096 ||
        g.dh < 1 || g.dw < 1 || g.dh > 4096 || g.dw > 4096 || g.kh > 4096 || g.kw > 4096)
      bad(n, "stride/padding/dilation/kernel out of range");
  }
  if (bt && bt->numel() != static_cast<uint64_t>(g.cout))
    bad(n, "bias '" + bt->name + "' has " + std::to_string(bt->numel()) + " values, expected " + std::to_string(g.cout));
  activation_range(attr_int(n, Attr::kActivation, 0, 0), &layer->lo, &layer->hi);
  if (const auto* q = n.find(Attr::kInputQuant)) {
    const float scale = q->floats[0], zero = q->floats[1];
    if (!(scale > 0.f) || !std::isfinite(scale) || !(zero >= 0.f && zero <= 255.f) || zero != std::floor(zero))
      bad(n, "input_quant must be (scale > 0, integer zero point in 0..255)");
    layer->static_quant = true;
    layer->quant = {scale, static_cast<int32_t>(zero)};
  }
  std::vector<float> bias = bt ? decode_to_f32(*bt) : std::vector<float>(static_cast<size_t>(g.cout), 0.f);
  {
    WeightInfo wi{wt.name, wt.dims, format::values_name(wt.values), format::layout_name(wt.layout),
                  format::entropy_name(wt.entropy), wt.payload_bytes(), wt.numel() * 4};
    layer->weights.push_back(wi);
    if (bt)
      layer->weights.push_back({bt->name, bt->dims, format::values_name(bt->values), format::layout_name(bt->layout),
                                format::entropy_name(bt->entropy), bt->payload_bytes(), bt->numel() * 4});
  }
  const bool depthwise = !g.is_linear && g.groups > 1 && g.groups == g.cin;
  const std::string& force = options.force_kernel;
  // Depthwise with int8 weights, a static input_quant and multiplier 1: the int8 kernels
  // (unless a dwconv_f32 kernel is forced). Other depthwise encodings decode to f32.
  const format::Stream* dw_scales = wt.stream(format::Role::kScales);
  if (depthwise && wt.values == Values::kInt8Channel && wt.layout == format::Layout::kDense && layer->static_quant &&
      g.cout == g.cin && g.kh * g.kw <= dwconv_qu8::kMaxTaps && dw_scales &&
      dw_scales->entropy == format::Entropy::kNone && force.rfind("dwconv_f32", 0) != 0) {
    std::vector<uint8_t> storage;
    const auto* q = reinterpret_cast<const int8_t*>(integer_value_bytes(wt, storage));
    std::vector<float> scales(static_cast<size_t>(g.cout));
    for (size_t r = 0; r < scales.size(); ++r) scales[r] = format::int8_row_scale(*dw_scales, r);
    bool finite = true;
    for (float& sc : scales) {
      sc *= layer->quant.scale;
      finite = finite && std::isfinite(sc);
    }
    if (finite) {
      layer->family = Family::kDepthwiseQu8;
      const int64_t taps = g.kh * g.kw;
      layer->dwq_weights.resize(static_cast<size_t>(g.cout * taps));
      for (int64_t o = 0; o < g.cout; ++o)
        for (int64_t i = 0; i < taps; ++i) layer->dwq_weights[i * g.cout + o] = q[o * taps + i];
      layer->dwq_scale = std::move(scales);
      layer->dw_bias = bias;
      layer->dwq_uk = &dwconv_qu8::best_ukernel();
      if (force.rfind("dwconv_qu8", 0) == 0) {
        layer->dwq_uk = dwconv_qu8::find_ukernel(force.c_str());
        if (!layer->dwq_uk) bad(n, "forced kernel '" + force + "' is not available on this CPU");
      }
      layer->dwq_packed = layer->dwq_uk->packed && g.kw == 3 && g.dw == 1;
      if (layer->dwq_packed) {  // the packed kernels read [kh][C] u32 weights, not the codes
        layer->dwq_w3 = dwconv_qu8::pack_weights3(layer->dwq_weights.data(), g.kh, g.cout);
        std::vector<int8_t>().swap(layer->dwq_weights);
      }
      layer->weight_read_bytes = layer->dwq_weights.size() + layer->dwq_w3.size() * 4 + layer->dwq_scale.size() * 4;
      layer->packed_bytes = layer->weight_read_bytes + layer->dw_bias.size() * 4;
      return layer;
    }
  }
  if (depthwise) {
    layer->family = Family::kDepthwiseF32;
    if (wt.values != Values::kF32 && wt.values != Values::kF16) layer->decoded_from = format::values_name(wt.values);
    const std::vector<float> w = decode_to_f32(wt);
    layer->dw_weights.resize(static_cast<size_t>(g.cout * g.kh * g.kw));
    for (int64_t o = 0; o < g.cout; ++o)
      for (int64_t i = 0; i < g.kh * g.kw; ++i) layer->dw_weights[i * g.cout + o] = w[o * g.kh * g.kw + i];
    layer->dw_bias = bias;
    layer->dw_uk = &dwconv_f32::best_ukernel();
    if (force.rfind("dwconv_f32", 0) == 0) {
      layer->dw_uk = dwconv_f32::find_ukernel(force.c_str());
      if (!layer->dw_uk) bad(n, "forced kernel '" + force + "' is not available on this CPU");
    }
    layer->weight_read_bytes = layer->dw_weights.size() * 4;
    layer->packed_bytes = layer->weight_read_bytes + bias.size() * 4;
    return layer;
  }
  const int64_t cog = g.cout_group(), kg = g.k_group();
  if (wt.layout != format::Layout::kDense && g.groups == 1) return make_sparse_layer(n, file, options, g);
  // Dense codebooks (k-means weight sharing, no pruning) keep their u8 codes: the spmm_f32
  // family's dense tiles at batch 1 (gemv_cb_*), its CSR codebook kernels above. A forced
  // gemm_f32 kernel keeps the decode-to-dense path.
  if (wt.values == Values::kCodebook && g.groups == 1 && !(force.rfind("gemm_f32", 0) == 0))
    return make_sparse_layer(n, file, options, g);
  // Huffman-coded int8/int4 values are decoded once at load into the plain stream the
  // integer kernels read (decode="load").
  std::vector<uint8_t> decoded_values;
  const uint8_t* value_bytes = nullptr;
  if (wt.layout == format::Layout::kDense &&
      (wt.values == Values::kInt8Channel || wt.values == Values::kInt4Group))
    value_bytes = integer_value_bytes(wt, decoded_values);
  // Encodings without a kernel family of their own yet (grouped dense codebooks,
  // Huffman-coded f32 scales, grouped sparse convolutions) are decoded to f32 at load and run on the
  // dense f32 family.
  const bool scales_coded = wt.stream(format::Role::kScales) &&
                            wt.stream(format::Role::kScales)->entropy != format::Entropy::kNone;
  const bool decode_to_dense = wt.layout != format::Layout::kDense || wt.values == Values::kCodebook || scales_coded ||
                               ((wt.values == Values::kInt8Channel || wt.values == Values::kInt4Group) && !value_bytes);
  if (wt.values == Values::kF32 || wt.values == Values::kF16 || decode_to_dense) {
    layer->family = Family::kF32;
    if (decode_to_dense)
      layer->decoded_from = std::string(format::layout_name(wt.layout)) + ":" + format::values_name(wt.values) +
                            (wt.entropy != format::Entropy::kNone ? "+huffman" : "");
    // Least padding for cout; a linear layer may run one row per call (batch 1).
    layer->f32_uk = &gemm_f32::best_ukernel_for(static_cast<size_t>(cog), g.is_linear ? 1 : 0);
    if (!force.empty() && force.rfind("gemm_f32", 0) == 0) {
      layer->f32_uk = gemm_f32::find_ukernel(force.c_str());
      if (!layer->f32_uk) bad(n, "forced kernel '" + force + "' is not available on this CPU");
    }
    const std::vector<float> w = decode_to_f32(wt);
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const std::vector<float> wg = g.is_linear ? w : gemm_order_f32(w, g, grp);
      layer->f32_w.push_back(gemm_f32::pack(wg.data(), bias.data() + grp * cog, cog, kg, layer->f32_uk->nr));
      layer->packed_bytes += layer->f32_w.back().panels.size() + layer->f32_w.back().bias.size();
    }
    layer->weight_read_bytes = static_cast<uint64_t>(g.cout) * kg * 4;
    return layer;
  }
  if (wt.values == Values::kInt8Channel) {
    layer->family = Family::kQu8;
    layer->qu8_uk = &gemm_qu8::best_ukernel_for(static_cast<size_t>(cog));  // least padding for cout
    if (!force.empty() && force.rfind("gemm_qu8", 0) == 0) {
      layer->qu8_uk = gemm_qu8::find_ukernel(force.c_str());
      if (!layer->qu8_uk) bad(n, "forced kernel '" + force + "' is not available on this CPU");
    }
    const auto* q = reinterpret_cast<const int8_t*>(value_bytes);
    // The implicit GEMM (VNNI ukernels with a segmented twin) reads kh segments of kw * cin
    // bytes, whole 4-byte blocks: cin is padded to a multiple of 4 where kw * cin is not.
    const bool implicit_possible = !g.is_linear && !g.pointwise() && g.groups == 1 && g.dw == 1 &&
                                   force != "im2col" && layer->qu8_uk->seg_fn != nullptr;
    const int64_t cin_pad = implicit_possible && (g.kw * g.cin) % 4 != 0 ? (g.cin + 3) / 4 * 4 : g.cin;
    std::vector<float> scales(static_cast<size_t>(g.cout));
    const format::Stream& scale_stream = *wt.stream(format::Role::kScales);
    for (size_t r = 0; r < scales.size(); ++r) scales[r] = format::int8_row_scale(scale_stream, r);
    for (float s : scales)
      if (!std::isfinite(s)) bad(n, "weight '" + wt.name + "' has a non-finite scale");
    // (kh, kw, cin) columns per group, cig_pad channels per tap (cin / groups, or cin_pad).
    auto pack_groups = [&](int64_t cig_pad) {
      layer->qu8_w.clear();
      layer->packed_bytes = 0;
      const int64_t cig = g.cin / g.groups, kgp = g.kh * g.kw * cig_pad;
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        std::vector<int8_t> qg(static_cast<size_t>(cog * kgp), 0);
        for (int64_t o = 0; o < cog; ++o)
          for (int64_t c = 0; c < cig; ++c)
            for (int64_t i = 0; i < g.kh * g.kw; ++i)
              qg[o * kgp + i * cig_pad + c] = q[((grp * cog + o) * cig + c) * g.kh * g.kw + i];
        layer->qu8_w.push_back(gemm_qu8::pack(qg.data(), scales.data() + grp * cog, bias.data() + grp * cog, cog,
                                              static_cast<size_t>(kgp), layer->qu8_uk->nr));
        layer->packed_bytes += layer->qu8_w.back().panels.size() + 12 * cog;
      }
    };
    pack_groups(cin_pad != g.cin ? cin_pad : g.cin / g.groups);
    layer->implicit_gemm = implicit_possible &&
                           gemm_qu8::segmented_ok(*layer->qu8_uk, layer->qu8_w[0], static_cast<size_t>(g.kh));
    layer->implicit_cin = cin_pad;
    if (!layer->implicit_gemm && cin_pad != g.cin) {  // im2col rows have cin channels per tap
      pack_groups(g.cin / g.groups);
      layer->implicit_cin = g.cin;
    }
    layer->weight_read_bytes = static_cast<uint64_t>(g.cout) * kg + 4 * g.cout;
    return layer;
  }
  if (wt.values == Values::kInt4Group) {
    layer->family = Family::kQ4;
    layer->q4_uk = &gemm_q4::best_ukernel_for(static_cast<size_t>(cog));  // least padding for cout
    if (!force.empty() && force.rfind("gemm_q4", 0) == 0) {
      layer->q4_uk = gemm_q4::find_ukernel(force.c_str());
      if (!layer->q4_uk) bad(n, "forced kernel '" + force + "' is not available on this CPU");
    }
    // int4 groups run along each output channel's file order (cin/groups, kh, kw), so
    // the int4 path builds its im2col rows channel-major to match (see im2col).
    const uint8_t* nib = value_bytes;
    const uint64_t gs = wt.group_size, cols = wt.cols(), groups_per_row = (cols + gs - 1) / gs;
    // Copied out of the file bytes: a caller's buffer (dsq_model_load_buffer) need not be
    // 4-byte aligned, and armv7 VFP loads from an unaligned float* fault (SIGBUS).
    std::vector<float> scale_copy(static_cast<size_t>(static_cast<uint64_t>(g.cout) * groups_per_row));
    std::memcpy(scale_copy.data(), wt.stream(format::Role::kScales)->data, scale_copy.size() * 4);
    const float* file_scales = scale_copy.data();
    for (uint64_t i = 0; i < static_cast<uint64_t>(g.cout) * groups_per_row; ++i)
      if (!std::isfinite(file_scales[i])) bad(n, "weight '" + wt.name + "' has a non-finite scale");
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      // Rows of this group as their own nibble stream (a group may start mid-byte).
      std::vector<uint8_t> rows((static_cast<size_t>(cog * kg) + 1) / 2, 0);
      const uint64_t first = static_cast<uint64_t>(grp * cog) * cols;
      for (uint64_t i = 0; i < static_cast<uint64_t>(cog * kg); ++i) {
        const uint64_t src = first + i;
        const uint8_t v = (src & 1) ? (nib[src / 2] >> 4) : (nib[src / 2] & 0xF);
        rows[i / 2] |= static_cast<uint8_t>((i & 1) ? v << 4 : v);
      }
      layer->q4_w.push_back(gemm_q4::pack(rows.data(), file_scales + grp * cog * groups_per_row,
                                          bias.data() + grp * cog, cog, kg, gs, layer->q4_uk->nr));
      layer->packed_bytes += layer->q4_w.back().panels.size() + layer->q4_w.back().w_scale.size();
    }
    layer->weight_read_bytes = (static_cast<uint64_t>(g.cout) * kg + 1) / 2 + 4 * g.cout * groups_per_row;
    return layer;
  }
  bad(n, std::string("no kernel for weight encoding ") + format::values_name(wt.values));
}

}  // namespace dsq::rt
