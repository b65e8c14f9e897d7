// conv2d and linear with sparse weights (csr, csr_relative, block_csr; f32, f16, int8,
// int4 or codebook values): the spmm_f32 family, whose lanes run along the batch/pixel
// dimension (Elsen et al.). Weights stay sparse: only their nonzeros are packed, codebook
// values stay u8 codes into the table. Activations are moved into the transposed
// (k, m) layout per chunk of rows and the results moved back. Dense codebooks (groups 1)
// run here too: batch 1 on the dense code tiles (gemv_cb_*), batch > 1 on the CSR.
// Convolution columns keep the file's (cin, kh, kw) order. Stride-1 kxk convs run direct
// (run_direct): no im2col, the kernels read shifted windows of one padded input plane per
// image. Other kxk convs (stride > 1, decode="stream") build the patches transposed
// (im2col_t); both paths sum the same products in the same order (bit-identical).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "base/error.h"
#include "format/matrix.h"
#include "kernels/gemm_qu8/gemm_qu8.h"
#include "kernels/spmm_f32/spmm_f32.h"
#include "kernels/spmm_qu8/spmm_qu8.h"
#include "ops/ops.h"
#include "ops/sparse_stream.h"

namespace dsq::rt {
namespace {

using format::Attr;
using format::Op;

constexpr size_t kChunk = 256;  // rows (batch items or pixels) per task

// Batch-1 zero-skipping (EIE): a pointwise layer whose input column has at least this
// fraction of exact zeros runs the CSC scatter kernel (one thread), which skips the zero
// inputs' columns entirely; below it, the (multi-threaded) row kernel. The break-even
// depends on the row kernel it replaces. Measured on Zen 4 (FC 4096x4096, 90% sparse,
// batch 1, 1-2 threads): the scalar CSC scatter costs ~0.65 ns per executed MAC; the
// scalar CSR row kernels 0.35 (f32) / 0.48 (codebook) ns per nonzero -> break-even at
// ~46% / ~28% zeros: 0.5 (f32 at 50% zeros: 1.10x, 80%: 2.7x). The AVX-512 row-tile
// codebook kernel runs ~0.15 ns per nonzero -> break-even ~78%: 0.8 (50% zeros would be 2x
// slower; 80%: 1.2x, 95%: 4.5x).
constexpr double kZeroSkipMinFraction = 0.5;
// Sparse int8 layers use the quad kernels from this quad fill (nonzeros / 4 per stored
// quad). Measured on Zen 4, 1 thread: ResNet-CIFAR at 70% sparsity, batch 64, runs in
// 17.6-19.5 ms with block-pruned weights (fill 1.0) on the quad kernel, against 30-35 ms
// for unstructured weights (fill about 0.4) on the CSR kernel; at batch 1 on 300 x 784 at
// 10% density, the quad tiles match the byte-window tiles at fill 1.0 and are 2.5x
// slower at fill 0.34. The crossover lies between; 0.5 was not measured exactly.
constexpr double kQuadMinFill = 0.5;
constexpr double kZeroSkipMinFractionVsRowTiles = 0.8;

class SparseLayer : public Layer {
 public:
  bool is_linear = false;
  int64_t cout = 0, cin = 0, kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
  float lo = -std::numeric_limits<float>::infinity(), hi = std::numeric_limits<float>::infinity();
  spmm_f32::PackedWeights w;
  const spmm_f32::Ukernel* spmm_uk = nullptr;  // m > 1
  const spmm_f32::Ukernel* spmv_uk = nullptr;  // m == 1
  // Zero-skipping CSC kernel for m == 1 pointwise (null: none). csc_always: forced by name,
  // runs for every batch-1 input (spmv_uk is then the same kernel).
  const spmm_f32::Ukernel* csc_uk = nullptr;
  bool csc_always = false;
  // Stride-1 kxk conv (decode="load", f32/codebook): run_direct instead of im2col_t.
  bool direct = false;
  double zero_skip_min_fraction = kZeroSkipMinFraction;
  std::vector<size_t> spmv_ranges;             // row ranges balanced by nonzeros
  uint64_t weight_read_bytes = 0;  // f32 / stream layers; int8 ones depend on the shape (cost())
  // decode="stream": the weights as stored, decoded tile by tile in run() (w stays empty).
  std::unique_ptr<StreamWeights> stream;
  // Sparse int8 path (w stays empty): activations quantized per tensor to u8 (static from
  // the file's input_quant, else dynamic over the whole input), int8 weights per row.
  bool int8 = false;
  spmm_qu8::PackedWeights qw;
  const spmm_qu8::Ukernel* q_uk = nullptr;        // m >= kQu8MinM
  const spmm_qu8::Ukernel* q_small_uk = nullptr;  // m < kQu8MinM
  // m == 1 on a pointwise layer: the row-tile kernel (null when this CPU has none).
  const spmm_qu8::Ukernel* q_spmv_uk = nullptr;
  // m > 1 when the nonzeros fill their quads well (block-pruned weights): the quad kernel,
  // x as quads (null: the CSR kernels above).
  const spmm_qu8::Ukernel* q_quad_uk = nullptr;
  // The quad direct path (quad_direct()): each quad's channel quad and tap (kh x kw index),
  // from which a run remaps the quad columns to plane offsets without divisions.
  std::vector<uint32_t> quad_channel_quad, quad_tap;
  bool static_quant = false;
  gemm_qu8::QuantParams quant{1.f, 0};
  // The VNNI tile computes 64 m lanes: below 16 rows most of them are wasted and the
  // scalar reference (bit-identical) is used instead.
  static constexpr size_t kQu8MinM = 16;

  int64_t k() const { return cin * kh * kw; }
  bool pointwise() const { return is_linear || (kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0); }

  std::vector<Shape> infer(const std::vector<Shape>& in) const override {
    const Shape& x = in[0];
    if (is_linear) {
      if (x.rank() < 2 || x.rank() == 4) fail("expects an (N, " + std::to_string(cin) + ") input, got " + x.str());
      if (x.dims.back() != cin)
        fail("input has " + std::to_string(x.dims.back()) + " features, the layer expects " + std::to_string(cin));
      Shape out = x;
      out.dims.back() = cout;
      return {out};
    }
    if (x.rank() != 4) fail("expects a 4-D (N, C, H, W) input, got " + x.str());
    if (x.dims[1] != cin)
      fail("input has " + std::to_string(x.dims[1]) + " channels, the layer expects " + std::to_string(cin));
    if (x.dims[2] + 2 * ph < dh * (kh - 1) + 1 || x.dims[3] + 2 * pw < dw * (kw - 1) + 1)
      fail("input " + x.str() + " is smaller than the (dilated) kernel");
    const int64_t oh = (x.dims[2] + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
    const int64_t ow = (x.dims[3] + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
    return {Shape{{x.dims[0], cout, oh, ow}}};
  }

  int64_t rows_of(const Shape& out) const {
    return is_linear ? out.numel() / cout : out.dims[0] * out.dims[2] * out.dims[3];
  }

  size_t slot_bytes() const {
    // per task: x_t (k x chunk; im2col_t writes the patches there), y_t (cout x chunk)
    const size_t kk = static_cast<size_t>(k());
    return (kk * kChunk + static_cast<size_t>(cout) * kChunk) * 4 + 64;
  }

  // The direct path's geometry for one input shape: the padded plane of one image (Hp x Wp
  // per channel) and its columns on the padded-width output grid.
  struct DirectShape {
    size_t Hp, Wp, plane, extent, grid;  // extent = cin * plane; grid = columns m' per image
    bool cols_u16;                       // every offset < 65536
  };
  // The kernels read up to this many floats past the last column they compute (none on
  // the computed grid; a safety margin for vector tails).
  static constexpr size_t kPlanePad = 64;
  DirectShape direct_shape(const Shape& xs, const Shape& ys) const {
    DirectShape d;
    d.Hp = static_cast<size_t>(xs.dims[2] + 2 * ph);
    d.Wp = static_cast<size_t>(xs.dims[3] + 2 * pw);
    d.plane = d.Hp * d.Wp;
    d.extent = static_cast<size_t>(cin) * d.plane;
    // Output (oh, ow) is column oh * Wp + ow; columns past the last output are not computed,
    // so the widest tap of the last one ends at the plane's last float.
    d.grid = static_cast<size_t>(ys.dims[2] - 1) * d.Wp + static_cast<size_t>(ys.dims[3]);
    d.cols_u16 = d.extent <= 65536;
    return d;
  }
  static size_t a64(size_t b) { return (b + 63) / 64 * 64; }
  // Offsets are u32: a plane of 2^32 floats or more (16 GiB per image) takes im2col_t.
  bool use_direct(const Shape& xs, const Shape& ys) const {
    return direct && direct_shape(xs, ys).extent + kPlanePad < (uint64_t(1) << 32);
  }
  // A direct path's y_t (cout x chunk) and the same pixel-major (grid_to_nhwc).
  size_t grid_out_bytes() const { return 2 * a64(static_cast<size_t>(cout) * kChunk * 4); }
  // Shared: offsets of the k logical columns (u32) + the remapped columns; per slot: one
  // padded plane + y_t (cout x chunk) and its pixel-major copy.
  size_t direct_shared_bytes(const DirectShape& d) const {
    return a64(static_cast<size_t>(k()) * 4) + a64(w.nnz * (d.cols_u16 ? 2 : 4));
  }
  size_t direct_slot_bytes(const DirectShape& d) const {
    return a64((d.extent + kPlanePad) * 4) + grid_out_bytes();
  }

  // The int8 direct path: shared offsets (u32 per column) + remapped columns; per slot one
  // padded u8 plane (+ the kernel's 64-byte over-read), the image channel-major (f32), one
  // quantized channel row, y_t.
  size_t q8_direct_shared_bytes(const DirectShape& d) const {
    return a64(static_cast<size_t>(k()) * 4) + a64(qw.nnz * (d.cols_u16 ? 2 : 4));
  }
  size_t q8_direct_slot_bytes(const DirectShape& d, const Shape& xs) const {
    const size_t wd = static_cast<size_t>(xs.dims[3]), hw = static_cast<size_t>(xs.dims[2]) * wd;
    return a64(d.extent + kPlanePad) + a64(hw * static_cast<size_t>(cin) * 4) + a64(gemm_qu8::padded_k(wd)) +
           grid_out_bytes();
  }

  // The direct path with the quad kernel (every quad is 4 channels of one tap): shared
  // remapped quad columns (u32); per slot one padded plane of channel quads (u32 per pixel
  // per quad) and the quantized image (NHWC u8). The kernel writes the output itself.
  bool quad_direct() const { return q_quad_uk && cin % 4 == 0; }
  // Quads whose channels are not whole (cin % 4 != 0) run on im2col patches instead.
  bool use_int8_direct(const Shape& xs, const Shape& ys) const {
    return use_direct(xs, ys) && (!q_quad_uk || quad_direct());
  }
  size_t quad_direct_shared_bytes() const { return a64(qw.quads * 4); }
  size_t quad_direct_slot_bytes(const Shape& xs) const {
    const size_t pixels = static_cast<size_t>(xs.dims[2] * xs.dims[3]);
    const DirectShape d = direct_shape(xs, xs);  // the plane only depends on the input
    return a64(d.extent + 4 * kPlanePad) + a64(gemm_qu8::padded_k(pixels * static_cast<size_t>(cin)));
  }

  size_t q8_slot_bytes() const {
    // per task: patches (chunk x k f32) when not pointwise, quantized rows (chunk x k_padded),
    // their transpose (k_padded x chunk u8; as quads: k_padded / 4 rows of chunk x 4 bytes),
    // y_t (cout x chunk f32)
    const size_t kk = static_cast<size_t>(k()), kp = gemm_qu8::padded_k(kk);
    auto a64 = [](size_t b) { return (b + 63) / 64 * 64; };
    return a64(pointwise() ? 0 : kChunk * kk * 4) + a64(kChunk * kp) + a64(kp * kChunk) +
           a64(static_cast<size_t>(cout) * kChunk * 4);
  }

  size_t scratch_bytes(const std::vector<Shape>& in, const std::vector<Shape>& out, size_t threads) const override {
    const size_t slots = std::min<size_t>(threads, 64);
    if (int8) {
      if (use_int8_direct(in[0], out[0])) {
        const DirectShape d = direct_shape(in[0], out[0]);
        if (quad_direct()) return quad_direct_shared_bytes() + quad_direct_slot_bytes(in[0]) * slots;
        return q8_direct_shared_bytes(d) + q8_direct_slot_bytes(d, in[0]) * slots;
      }
      return q8_slot_bytes() * slots;
    }
    if (stream) {
      // Per thread one decoded tile; batch > 1 also one shared x_t / y_t slab.
      const size_t tiles = stream->tile_scratch_bytes() * slots;
      return rows_of(out[0]) == 1 && pointwise() ? tiles : tiles + slot_bytes();
    }
    if (rows_of(out[0]) == 1 && pointwise()) return 0;  // the batch-1 path needs no scratch
    if (use_direct(in[0], out[0])) {
      const DirectShape d = direct_shape(in[0], out[0]);
      return direct_shared_bytes(d) + direct_slot_bytes(d) * slots;
    }
    return slot_bytes() * slots;
  }

  Cost cost(const std::vector<Shape>& in, const std::vector<Shape>& out) const override {
    Cost c = Layer::cost(in, out);
    const uint64_t M = static_cast<uint64_t>(rows_of(out[0]));
    const uint64_t nnz = int8 ? qw.nnz : stream ? stream->nnz() : w.nnz;
    (int8 ? c.macs_int8 : c.macs_f32) = M * nnz;
    if (!int8 && (stream ? stream->codebook() : bool(w.codebook))) {
      // Batch 1 (pointwise): one look-up per MAC. Otherwise the spmm kernels decode each
      // code once per tile of mr rows (the value is then broadcast across the tile's
      // lanes), and rows come in chunks of kChunk.
      if (M == 1 && pointwise()) {
        c.table_lookups = nnz;
      } else {
        const uint64_t mr = std::max<uint64_t>(1, spmm_uk ? spmm_uk->mr : 1), full = M / kChunk,
                       rest = M % kChunk;
        const uint64_t tiles = full * ((kChunk + mr - 1) / mr) + (rest + mr - 1) / mr;
        c.table_lookups = nnz * tiles;
      }
    }
    // int8: what the kernels of this shape read: row tiles at batch 1, quads, or the CSR.
    if (!int8) c.weight_bytes = weight_read_bytes;
    else if (M == 1 && pointwise() && q_spmv_uk)
      c.weight_bytes = q_spmv_uk->layout == spmm_qu8::Layout::kQuadTiles ? qw.quad_tile_bytes() : qw.tile_bytes();
    else
      c.weight_bytes = q_quad_uk ? qw.quad_bytes() : qw.bytes();
    return c;
  }

  // Dynamic quantization takes one scale from the whole input, so it reads the batch.
  bool per_sample(const std::vector<Shape>&) const override { return !int8 || static_quant; }
  // f32 / codebook: batch 1 runs the spmv, zero-skip or gemv_cb kernels (another order of
  // sums than the batched ones); int8 sums exactly.
  int64_t min_slice_rows() const override { return int8 ? 1 : 2; }

  std::string kernel() const override {
    if (int8)
      return (q_spmv_uk ? std::string(q_spmv_uk->name) + " | " : std::string()) +
             (q_quad_uk ? std::string(q_quad_uk->name) + " (quads " + std::to_string(static_cast<int>(qw.quad_fill() * 100 + 0.5)) + "% full)"
                        : std::string(q_small_uk->name) + " | " + q_uk->name) +
             (pointwise() ? "" : direct ? " + direct conv" : " + im2col") +
             (static_quant ? " (static act quant)" : " (dynamic act quant)");
    std::string k = std::string(spmv_uk->name) + " | " + spmm_uk->name;
    if (stream) k = "stream-decode " + std::to_string(stream->tiles()) + " tiles: " + k;
    if (!pointwise()) k += direct ? " + direct conv" : " + im2col";
    if (csc_uk && !csc_always)
      k += std::string(" | zero-skip ") + csc_uk->name + " at >= " +
           std::to_string(static_cast<int>(zero_skip_min_fraction * 100 + 0.5)) + "% zeros";
    return k;
  }

  bool fuses_residual() const override {
    return lo == -std::numeric_limits<float>::infinity() && hi == std::numeric_limits<float>::infinity();
  }

  // u8 chaining on the int8 quad paths: a pointwise layer's chunks of pixels (not the
  // batch-1 row tiles), which read u8 rows in place when they need no padding (cin a
  // multiple of 4), and the direct conv on quads, which reads the u8 image; both write u8
  // from the quad kernels' epilogue.
  bool quad_u8_path(const Shape& xs, const Shape& ys) const {
    if (!int8 || stream || !q_quad_uk) return false;
    if (pointwise())
      return !(rows_of(ys) == 1 && q_spmv_uk) &&
             gemm_qu8::padded_k(static_cast<size_t>(k())) == static_cast<size_t>(k());
    return use_int8_direct(xs, ys) && quad_direct();
  }
  bool takes_u8_input(const std::vector<Shape>& in, const std::vector<Shape>& out,
                      gemm_qu8::QuantParams* q) const override {
    const bool ok = static_quant && quad_u8_path(in[0], out[0]);
    if (ok) *q = quant;
    return ok;
  }
  bool gives_u8_output(const std::vector<Shape>& in, const std::vector<Shape>& out,
                       const gemm_qu8::QuantParams&) const override {
    return quad_u8_path(in[0], out[0]);
  }

  void run(const std::vector<const float*>& in, const std::vector<Shape>& in_shapes,
           const std::vector<float*>& out, const std::vector<Shape>& out_shapes, const RunEnv& env) const override {
    // The quad kernels and the direct conv paths add env.residual while each output is in
    // cache; the others after the layer (add_residual's expression either way).
    const bool spmv = int8 && q_spmv_uk && pointwise() && rows_of(out_shapes[0]) == 1;
    const bool fused = !stream && ((int8 && q_quad_uk && !spmv) ||
                                   (!pointwise() && (int8 ? use_int8_direct(in_shapes[0], out_shapes[0])
                                                          : use_direct(in_shapes[0], out_shapes[0]))));
    // Calls under min_parallel_macs() executed MACs stay on this thread (see ops.h).
    RunEnv layer_env = env;
    const uint64_t nnz = int8 ? qw.nnz : stream ? stream->nnz() : w.nnz;
    layer_env.serial = env.serial || static_cast<uint64_t>(rows_of(out_shapes[0])) * nnz < min_parallel_macs();
    run_layer(in, in_shapes, out, out_shapes, layer_env);
    if (env.residual && !fused)
      add_residual(out[0], env.residual, static_cast<size_t>(out_shapes[0].numel()), env.residual_lo, env.residual_hi,
                   env);
  }

  void run_layer(const std::vector<const float*>& in, const std::vector<Shape>& in_shapes,
                 const std::vector<float*>& out, const std::vector<Shape>& out_shapes, const RunEnv& env) const {
    const float* x = in[0];
    float* y = out[0];
    const int64_t M = rows_of(out_shapes[0]);
    const size_t kk = static_cast<size_t>(k());
    if (int8) {
      run_int8(x, in_shapes[0], out_shapes[0], y, M, env);
      return;
    }
    if (stream) {
      run_stream(x, in_shapes[0], out_shapes[0], y, M, env);
      return;
    }
    if (M == 1 && pointwise()) {
      // Batch 1: x is already one (k x 1) column, y one (n x 1) column.
      if (csc_uk && (csc_always || static_cast<double>(spmm_f32::count_zeros(x, 4, kk)) >=
                                       zero_skip_min_fraction * static_cast<double>(kk))) {
        // Zero-skipping scatter on this thread only: splitting the columns between
        // threads would need per-thread partial outputs whose float sum depends on the
        // thread count (results must not), and rows cannot be split in CSC.
        const uint64_t skipped = spmm_f32::skipped_macs(w, x, 4);
        spmm_f32::run(*csc_uk, w, 1, x, 4, y, 4, 0, w.n, lo, hi);
        if (env.skipped_macs) *env.skipped_macs += skipped;
        return;
      }
      const size_t parts = spmv_ranges.size() - 1;
      auto body = [&](size_t t) {
        spmm_f32::run(*spmv_uk, w, 1, x, 4, y, 4, spmv_ranges[t], spmv_ranges[t + 1], lo, hi);
      };
      if (env.threads() <= 1 || parts <= 1) {
        spmm_f32::run(*spmv_uk, w, 1, x, 4, y, 4, 0, w.n, lo, hi);
      } else {
        env.pool->parallel_for(parts, body);
      }
      return;
    }
    if (use_direct(in_shapes[0], out_shapes[0])) {
      run_direct(x, in_shapes[0], out_shapes[0], y, env);
      return;
    }
    const size_t chunks = (static_cast<size_t>(M) + kChunk - 1) / kChunk;
    const size_t slots = std::min<size_t>({chunks, env.threads(), 64});
    auto do_chunk = [&](size_t chunk, size_t slot) {
      const int64_t m0 = static_cast<int64_t>(chunk * kChunk);
      const int64_t rows = std::min<int64_t>(kChunk, M - m0);
      float* x_t = reinterpret_cast<float*>(env.scratch + slot * slot_bytes());
      float* y_t = x_t + kk * kChunk;
      if (pointwise())
        transpose(x + m0 * cin, static_cast<size_t>(cin), x_t, kChunk, static_cast<size_t>(rows), kk);
      else
        im2col_t(x, in_shapes[0], out_shapes[0], m0, rows, x_t, kChunk);
      spmm_f32::run(*spmm_uk, w, static_cast<size_t>(rows), x_t, kChunk * 4, y_t, kChunk * 4, 0, w.n, lo, hi);
      transpose(y_t, kChunk, y + m0 * cout, static_cast<size_t>(cout), static_cast<size_t>(cout),
                static_cast<size_t>(rows));
    };
    env.pool->parallel_chunks(chunks, slots, do_chunk);
  }

 private:
  // Sparse int8: quantize the input once per tensor, then per chunk of 256 rows: quantize
  // (k padded), transpose to (k, m) bytes, run the spmm_qu8 kernel, transpose back.
  void run_int8(const float* x, const Shape& xs, const Shape& ys, float* y, int64_t M, const RunEnv& env) const {
    // As the dense int8 layers: one scale serves the whole input, so a NaN or Inf would
    // turn into finite wrong outputs; the output is NaN instead (docs/HARDENING.md). The
    // paths learn it from quantize() as they read the input.
    if (env.out_u8) *env.out_bad = 0;
    if (!run_int8_finite(x, xs, ys, y, M, env)) nan_output(y, static_cast<size_t>(ys.numel()), env);
  }

  // Returns false when the input holds a NaN or Inf (the outputs are then garbage).
  bool run_int8_finite(const float* x, const Shape& xs, const Shape& ys, float* y, int64_t M, const RunEnv& env) const {
    const size_t kk = static_cast<size_t>(k()), kp = gemm_qu8::padded_k(kk);
    gemm_qu8::QuantParams qp = quant;
    if (!static_quant) {
      const size_t in_rows = static_cast<size_t>(xs.numel() / cin);
      float mn, mx;
      gemm_qu8::minmax(x, in_rows, static_cast<size_t>(cin), static_cast<size_t>(cin) * 4, &mn, &mx);
      qp = gemm_qu8::choose_params(mn, mx);
    }
    const spmm_qu8::Epilogue ep{qp.zero, qp.scale, lo, hi};
    if (M == 1 && q_spmv_uk) {
      // Batch 1: quantize the row (stride 1, as the tile kernel reads it) and run the row
      // tiles straight into y; threads split 16-row groups.
      uint8_t* qa = env.scratch;
      const bool finite = gemm_qu8::quantize(x, 1, kk, kk * 4, qa, kp, qp);
      // Several parts per thread: the pool hands them out as threads arrive.
      const size_t groups = qw.groups(), threads1 = env.threads() <= 1 ? 1 : std::min<size_t>({env.threads() * 4, groups, 64});
      if (threads1 <= 1) {
        spmm_qu8::run(*q_spmv_uk, qw, 1, qa, 1, y, 4, 0, qw.n, ep);
      } else {
        env.pool->parallel_for(threads1, [&](size_t t) {
          const size_t r0 = groups * t / threads1 * spmm_qu8::kTileRows;
          const size_t r1 = std::min(qw.n, groups * (t + 1) / threads1 * spmm_qu8::kTileRows);
          spmm_qu8::run(*q_spmv_uk, qw, 1, qa, 1, y, 4, r0, r1, ep);
        });
      }
      return finite;
    }
    if (use_int8_direct(xs, ys)) {
      if (quad_direct()) return run_quad_direct(x, xs, ys, y, qp, ep, env);
      return run_int8_direct(x, xs, ys, y, qp, ep, env);
    }
    const size_t chunks = (static_cast<size_t>(M) + kChunk - 1) / kChunk;
    const size_t threads = std::min<size_t>(env.threads(), 64);
    // Parts of a chunk's rows when threads share one chunk: several per thread, handed out
    // as threads arrive.
    const size_t parts = threads <= 1 ? 1 : std::min<size_t>(threads * 4, 64);
    auto a64 = [](size_t b) { return (b + 63) / 64 * 64; };
    char finite[64];  // per slot
    std::fill(finite, finite + 64, 1);
    uint8_t bad[64] = {};  // chained output: NaN / Inf outputs met, per slot or part
    if (env.in_u8 && env.in_bad) return false;
    const gemm_qu8::OutQuant out_q = env.out_u8 ? gemm_qu8::prepare_out_quant(env.out_quant, lo, hi)
                                                : gemm_qu8::OutQuant{};
    // One chunk: quantize + transpose its activations, then output rows [n0, n1).
    auto prepare = [&](size_t chunk, uint8_t* base, size_t slot) {
      const int64_t m0 = static_cast<int64_t>(chunk * kChunk);
      const size_t rows = static_cast<size_t>(std::min<int64_t>(kChunk, M - m0));
      float* patches = reinterpret_cast<float*>(base);
      uint8_t* qa = base + a64(pointwise() ? 0 : kChunk * kk * 4);
      uint8_t* qa_t = qa + a64(kChunk * kp);
      const float* a = x + m0 * cin;
      if (!pointwise()) {
        im2col(x, xs, ys, m0, static_cast<int64_t>(rows), patches);
        a = patches;
      }
      if (env.in_u8) {
        qa = const_cast<uint8_t*>(env.in_u8) + static_cast<size_t>(m0) * kp;  // chained: read only (kp == k)
      } else if (!gemm_qu8::quantize(a, rows, kk, kk * 4, qa, kp, qp)) {
        finite[slot] = 0;
      }
      if (q_quad_uk) {  // (rows, k / 4) -> (k / 4, rows) quads of 4 bytes: a 32-bit transpose
        transpose(reinterpret_cast<const float*>(qa), kp / 4, reinterpret_cast<float*>(qa_t), kChunk, rows, kp / 4);
        return;
      }
      for (size_t r = 0; r < rows; ++r)  // (rows, k) -> (k, rows) bytes
        for (size_t c = 0; c < kk; ++c) qa_t[c * kChunk + r] = qa[r * kp + c];
    };
    auto compute = [&](size_t chunk, const uint8_t* base, size_t n0, size_t n1, uint8_t* bad_flag) {
      const size_t rows = static_cast<size_t>(std::min<int64_t>(kChunk, M - static_cast<int64_t>(chunk * kChunk)));
      const uint8_t* qa_t = base + a64(pointwise() ? 0 : kChunk * kk * 4) + a64(kChunk * kp);
      float* y_t = reinterpret_cast<float*>(const_cast<uint8_t*>(qa_t) + a64(kp * kChunk));
      if (q_quad_uk) {  // pixel-major: straight into the output rows, with the residual
        const size_t m0 = chunk * kChunk;
        spmm_qu8::Epilogue eq = ep;
        eq.residual = env.residual ? env.residual + m0 * static_cast<size_t>(cout) : nullptr;
        eq.res_lo = env.residual_lo;
        eq.res_hi = env.residual_hi;
        if (env.out_u8) {  // chained: u8 codes, cout bytes per pixel
          set_u8_output(eq, env, out_q, bad_flag);
          spmm_qu8::run(*q_quad_uk, qw, rows, qa_t, kChunk * spmm_qu8::kQuad,
                        reinterpret_cast<float*>(env.out_u8 + m0 * static_cast<size_t>(cout)), static_cast<size_t>(cout),
                        n0, n1, eq);
          return;
        }
        spmm_qu8::run(*q_quad_uk, qw, rows, qa_t, kChunk * spmm_qu8::kQuad, y + m0 * static_cast<size_t>(cout),
                      static_cast<size_t>(cout) * 4, n0, n1, eq);
        return;
      }
      const spmm_qu8::Ukernel& uk = rows >= kQu8MinM ? *q_uk : *q_small_uk;
      spmm_qu8::run(uk, qw, rows, qa_t, kChunk, y_t, kChunk * 4, n0, n1, ep);
    };
    auto note_bad = [&] {
      if (env.out_u8 && std::any_of(bad, bad + 64, [](uint8_t b) { return b != 0; })) *env.out_bad = 1;
    };
    auto finish = [&](size_t chunk, const uint8_t* base) {
      if (q_quad_uk) return;  // written in place
      const int64_t m0 = static_cast<int64_t>(chunk * kChunk);
      const size_t rows = static_cast<size_t>(std::min<int64_t>(kChunk, M - m0));
      const float* y_t = reinterpret_cast<const float*>(base + a64(pointwise() ? 0 : kChunk * kk * 4) +
                                                        a64(kChunk * kp) + a64(kp * kChunk));
      transpose(y_t, kChunk, y + m0 * cout, static_cast<size_t>(cout), static_cast<size_t>(cout), rows);
    };
    if (threads > 1 && chunks < threads) {
      // Fewer chunks than threads (e.g. batch 64): each chunk's output rows are split
      // between the threads instead (ranges of about equal nonzeros). Rows are
      // independent, so the result does not depend on the split.
      const uint32_t* rp = qw.rp();
      size_t bounds[65] = {0};  // parts <= 64; no allocation in a run
      for (size_t t = 1; t < parts; ++t) {
        const uint64_t target = (uint64_t(rp[qw.n]) + qw.n) * t / parts;
        size_t r = bounds[t - 1];
        while (r < qw.n && uint64_t(rp[r]) + r < target) ++r;
        bounds[t] = r;
      }
      bounds[parts] = qw.n;
      for (size_t c = 0; c < chunks; ++c) {
        uint8_t* base = env.scratch;
        prepare(c, base, 0);
        env.pool->parallel_for(parts, [&](size_t t) { compute(c, base, bounds[t], bounds[t + 1], bad + t); });
        finish(c, base);
      }
      note_bad();
      return finite[0] != 0;
    }
    const size_t slots = std::min<size_t>(chunks, threads);
    auto do_chunk = [&](size_t chunk, size_t slot) {
      uint8_t* base = env.scratch + slot * q8_slot_bytes();
      prepare(chunk, base, slot);
      compute(chunk, base, 0, qw.n, bad + slot);
      finish(chunk, base);
    };
    env.pool->parallel_chunks(chunks, slots, do_chunk);
    note_bad();
    return std::all_of(finite, finite + 64, [](char f) { return f != 0; });
  }

  // decode="stream": the load path's steps with each tile of rows decoded into per-thread
  // scratch just before its kernel call (same kernels, same per-row arithmetic).
  void run_stream(const float* x, const Shape& xs, const Shape& ys, float* y, int64_t M, const RunEnv& env) const {
    const StreamWeights& sw = *stream;
    const size_t tiles = sw.tiles(), tb = sw.tile_scratch_bytes(), kk = static_cast<size_t>(k());
    const size_t slots = std::min<size_t>({tiles, env.threads(), 64});
    uint64_t symbols[64] = {};
    // body(slot, tile) on every tile, on at most `slots` threads.
    auto for_tiles = [&](auto&& body) {
      env.pool->parallel_chunks(tiles, slots, [&](size_t t, size_t s) { body(s, t); });
    };
    if (M == 1 && pointwise()) {
      if (csc_uk && (csc_always || static_cast<double>(spmm_f32::count_zeros(x, 4, kk)) >=
                                       zero_skip_min_fraction * static_cast<double>(kk))) {
        // Zero-skipping on this thread, tile by tile (each row's sum runs over increasing
        // columns, as with the whole-matrix CSC).
        uint64_t skipped = 0;
        for (size_t t = 0; t < tiles; ++t) {
          spmm_f32::PackedWeights tw;
          symbols[0] += sw.decode_tile(t, env.scratch, tw, StreamWeights::Needs{false, true, false});
          skipped += spmm_f32::skipped_macs(tw, x, 4);
          spmm_f32::run(*csc_uk, tw, 1, x, 4, y + sw.tile_row_begin(t), 4, 0, tw.n, lo, hi);
        }
        if (env.skipped_macs) *env.skipped_macs += skipped;
        if (env.huffman_symbols) *env.huffman_symbols += symbols[0];
        return;
      }
      const StreamWeights::Needs lay{spmv_uk->layout == spmm_f32::Layout::kRowTiles, false,
                                     spmv_uk->layout == spmm_f32::Layout::kDenseTiles};
      for_tiles([&](size_t s, size_t t) {
        spmm_f32::PackedWeights tw;
        symbols[s] += sw.decode_tile(t, env.scratch + s * tb, tw, lay);
        spmm_f32::run(*spmv_uk, tw, 1, x, 4, y + sw.tile_row_begin(t), 4, 0, tw.n, lo, hi);
      });
    } else {
      float* x_t = reinterpret_cast<float*>(env.scratch + slots_for_scratch(env) * tb);
      float* y_t = x_t + kk * kChunk;
      for (int64_t m0 = 0; m0 < M; m0 += static_cast<int64_t>(kChunk)) {
        const size_t rows = static_cast<size_t>(std::min<int64_t>(kChunk, M - m0));
        if (pointwise())
          transpose(x + m0 * cin, static_cast<size_t>(cin), x_t, kChunk, rows, kk);
        else
          im2col_t(x, xs, ys, m0, static_cast<int64_t>(rows), x_t, kChunk);
        for_tiles([&](size_t s, size_t t) {
          spmm_f32::PackedWeights tw;
          symbols[s] += sw.decode_tile(t, env.scratch + s * tb, tw, StreamWeights::Needs{});
          spmm_f32::run(*spmm_uk, tw, rows, x_t, kChunk * 4, y_t + sw.tile_row_begin(t) * kChunk, kChunk * 4, 0,
                        tw.n, lo, hi);
        });
        transpose(y_t, kChunk, y + m0 * cout, static_cast<size_t>(cout), static_cast<size_t>(cout), rows);
      }
    }
    if (env.huffman_symbols)
      for (size_t s = 0; s < 64; ++s) *env.huffman_symbols += symbols[s];
  }
  // The tile slots scratch_bytes() reserved before the shared slab.
  static size_t slots_for_scratch(const RunEnv& env) { return std::min<size_t>(env.pool->threads(), 64); }

  // The direct paths' column remap: offsets[c] = the shift of logical column c into the
  // padded plane (columns in (cin, kh, kw) order when channel_major, else (kh, kw, cin)),
  // then every stored column index of pw replaced by its shift in `cols` (u16 when the
  // plane allows, else u32), in the same CSR order.
  template <typename Packed>
  void remap_to_plane(const Packed& pw, const DirectShape& d, bool channel_major, uint32_t* offsets,
                      uint8_t* cols) const {
    const size_t kk = static_cast<size_t>(k()), taps = static_cast<size_t>(kh * kw), c_in = static_cast<size_t>(cin);
    const size_t kw_ = static_cast<size_t>(kw), kwc = kw_ * c_in;
    for (size_t c = 0; c < kk; ++c) {
      const size_t ch = channel_major ? c / taps : c % c_in;
      const size_t i = channel_major ? c % taps / kw_ : c / kwc, j = channel_major ? c % kw_ : c % kwc / c_in;
      offsets[c] = static_cast<uint32_t>(ch * d.plane + i * static_cast<size_t>(dh) * d.Wp + j * static_cast<size_t>(dw));
    }
    for (size_t p = 0; p < pw.nnz; ++p) {
      const uint32_t off = offsets[pw.cols_u16 ? pw.col16()[p] : pw.col32()[p]];
      if (d.cols_u16) reinterpret_cast<uint16_t*>(cols)[p] = static_cast<uint16_t>(off);
      else reinterpret_cast<uint32_t*>(cols)[p] = off;
    }
  }

  // Grid columns [g0, g1) of y_t (cout x kChunk, column g - g0) into image n's NHWC output
  // (OW x cout per row), dropping the grid's padding columns ow >= OW: one transpose of the
  // whole chunk into the pixel-major buffer after y_t (whole 4 x 4 blocks, unlike transposes
  // of each short run), then one contiguous copy per run of kept pixels. With a fused
  // residual (env.residual), image n's part of it (rn, laid out as yn) is added in that copy.
  void grid_to_nhwc(const float* y_t, size_t g0, size_t g1, const DirectShape& d, int64_t OW, float* yn,
                    const float* rn, const RunEnv& env) const {
    const size_t c_out = static_cast<size_t>(cout), ow_n = static_cast<size_t>(OW);
    float* pix = const_cast<float*>(y_t) + a64(c_out * kChunk * 4) / 4;
    transpose(y_t, kChunk, pix, c_out, c_out, g1 - g0);
    for (size_t g = g0; g < g1;) {
      const size_t oh = g / d.Wp, ow = g % d.Wp;
      const size_t run_end = std::min(g1, oh * d.Wp + ow_n);
      if (ow < ow_n) {
        float* out = yn + (oh * ow_n + ow) * c_out;
        const float* src = pix + (g - g0) * c_out;
        const size_t len = (run_end - g) * c_out;
        if (rn) {
          const float* r = rn + (out - yn);
          const float rlo = env.residual_lo, rhi = env.residual_hi;
          for (size_t i = 0; i < len; ++i) out[i] = std::min(std::max(src[i] + r[i], rlo), rhi);
        } else {
          std::memcpy(out, src, len * 4);
        }
      }
      g = (oh + 1) * d.Wp;  // skip the padding columns ow >= OW
    }
  }

  // The direct paths' schedule over N images: build(n, slot) fills slot's plane with image
  // n; cols(n, plane_slot, g0, g1, work_slot) computes grid columns [g0, g1) (chunks of
  // kChunk) from that plane using work_slot's y_t. Images are spread over the slots;
  // with fewer images than threads (batch 1) one shared plane per image has its chunks
  // split instead.
  template <typename Build, typename Cols>
  void schedule_direct(const RunEnv& env, int64_t N, const DirectShape& d, Build&& build, Cols&& cols) const {
    const size_t chunks = (d.grid + kChunk - 1) / kChunk;
    const size_t slots = std::min<size_t>(env.threads(), 64);
    auto whole_image = [&](int64_t n, size_t slot) {
      build(n, slot);
      for (size_t c = 0; c < chunks; ++c) cols(n, slot, c * kChunk, std::min(d.grid, (c + 1) * kChunk), slot);
    };
    if (slots <= 1) {
      for (int64_t n = 0; n < N; ++n) whole_image(n, 0);
    } else if (static_cast<size_t>(N) >= slots || chunks <= 1) {
      env.pool->parallel_chunks(static_cast<size_t>(N), slots,
                                [&](size_t n, size_t s) { whole_image(static_cast<int64_t>(n), s); });
    } else {
      for (int64_t n = 0; n < N; ++n) {
        build(n, 0);
        env.pool->parallel_chunks(chunks, slots, [&](size_t c, size_t s) {
          cols(n, 0, c * kChunk, std::min(d.grid, (c + 1) * kChunk), s);
        });
      }
    }
  }

  // Direct stride-1 conv. Per image the input is copied once into a zero-padded channel-
  // major plane xp[c][Hp][Wp]; output (oh, ow) is computed as column m' = oh * Wp + ow of a
  // padded-width grid, where tap (c, i, j) reads xp[c * Hp * Wp + i * dh * Wp + j * dw + m']:
  // a constant shift of m'. So the spmm kernels run unchanged with x_stride = one float and
  // each column index replaced by its shift (in the same CSR order as im2col_t's rows: the
  // same sums, bit for bit). The remap depends on H and W, so it is built for each run in
  // the run's scratch (O(k + nnz), tiny next to the MACs; no shared state between runs on
  // several threads). Columns ow >= OW of the grid are computed and dropped.
  void run_direct(const float* x, const Shape& xs, const Shape& ys, float* y, const RunEnv& env) const {
    const DirectShape d = direct_shape(xs, ys);
    const int64_t N = xs.dims[0], H = xs.dims[2], W = xs.dims[3], OH = ys.dims[2], OW = ys.dims[3];
    const size_t kk = static_cast<size_t>(k());
    uint32_t* offsets = reinterpret_cast<uint32_t*>(env.scratch);
    uint8_t* cols = env.scratch + a64(kk * 4);
    uint8_t* slot0 = env.scratch + direct_shared_bytes(d);
    remap_to_plane(w, d, /*channel_major=*/true, offsets, cols);
    // The packed weights with the remapped columns (views: nothing is copied).
    spmm_f32::PackedWeights dwts;
    dwts.n = w.n;
    dwts.k = w.k;
    dwts.nnz = w.nnz;
    dwts.row_ptr = AlignedBuffer::view(w.row_ptr.data(), w.row_ptr.size());
    dwts.cols = AlignedBuffer::view(cols, w.nnz * (d.cols_u16 ? 2 : 4));
    dwts.cols_u16 = d.cols_u16;
    dwts.codebook = w.codebook;
    dwts.values = AlignedBuffer::view(w.values.data(), w.values.size());
    dwts.codes = AlignedBuffer::view(w.codes.data(), w.codes.size());
    dwts.table = AlignedBuffer::view(w.table.data(), w.table.size());
    dwts.table_entries = w.table_entries;
    dwts.table_stride = w.table_stride;
    dwts.table_per_row = w.table_per_row;
    dwts.bias = AlignedBuffer::view(w.bias.data(), w.bias.size());
    dwts.direct_offsets = offsets;

    const size_t slot_b = direct_slot_bytes(d);
    auto plane_of = [&](size_t slot) { return reinterpret_cast<float*>(slot0 + slot * slot_b); };
    auto y_t_of = [&](size_t slot) { return reinterpret_cast<float*>(slot0 + slot * slot_b + a64((d.extent + kPlanePad) * 4)); };
    const size_t c_in = static_cast<size_t>(cin), c_out = static_cast<size_t>(cout);
    // Image n (NHWC) into the padded plane: zero borders, one transpose per input row.
    auto build_plane = [&](int64_t n, float* xp) {
      const size_t h = static_cast<size_t>(H), wd = static_cast<size_t>(W), p_h = static_cast<size_t>(ph),
                   p_w = static_cast<size_t>(pw);
      for (size_t c = 0; c < c_in; ++c) {
        float* pc = xp + c * d.plane;
        std::fill(pc, pc + p_h * d.Wp, 0.f);
        std::fill(pc + (p_h + h) * d.Wp, pc + d.plane, 0.f);
        if (p_w)
          for (size_t r = p_h; r < p_h + h; ++r) {
            std::fill(pc + r * d.Wp, pc + r * d.Wp + p_w, 0.f);
            std::fill(pc + r * d.Wp + p_w + wd, pc + (r + 1) * d.Wp, 0.f);
          }
      }
      std::fill(xp + d.extent, xp + d.extent + kPlanePad, 0.f);
      const float* src = x + static_cast<size_t>(n) * h * wd * c_in;
      for (size_t r = 0; r < h; ++r)
        transpose(src + r * wd * c_in, c_in, xp + (r + p_h) * d.Wp + p_w, d.plane, wd, c_in);
    };
    // Grid columns [g0, g1) of image n: spmm into y_t, then the kept columns to NHWC.
    const size_t img_out = static_cast<size_t>(OH * OW) * c_out;
    schedule_direct(env, N, d, [&](int64_t n, size_t slot) { build_plane(n, plane_of(slot)); },
                    [&](int64_t n, size_t ps, size_t g0, size_t g1, size_t ws) {
                      spmm_f32::run(*spmm_uk, dwts, g1 - g0, plane_of(ps) + g0, 4, y_t_of(ws), kChunk * 4, 0, w.n,
                                    lo, hi);
                      grid_to_nhwc(y_t_of(ws), g0, g1, d, OW, y + static_cast<size_t>(n) * img_out,
                                   env.residual ? env.residual + static_cast<size_t>(n) * img_out : nullptr, env);
                    });
  }

  // The int8 twin of run_direct: per image a zero-point padded u8 plane xp[c][Hp][Wp] (the
  // input quantized exactly as the im2col path quantizes it), the spmm_qu8 kernel on shifted
  // windows (x_stride = 1 byte, columns remapped to shifts), y_t back to NHWC without the
  // grid's padding columns. Integer sums: the same outputs as the im2col path, bit for bit.
  bool run_int8_direct(const float* x, const Shape& xs, const Shape& ys, float* y, const gemm_qu8::QuantParams& qp,
                       const spmm_qu8::Epilogue& ep, const RunEnv& env) const {
    const DirectShape d = direct_shape(xs, ys);
    const int64_t N = xs.dims[0], H = xs.dims[2], W = xs.dims[3], OH = ys.dims[2], OW = ys.dims[3];
    const size_t kk = static_cast<size_t>(k()), c_in = static_cast<size_t>(cin), c_out = static_cast<size_t>(cout);
    uint32_t* offsets = reinterpret_cast<uint32_t*>(env.scratch);
    uint8_t* cols = env.scratch + a64(kk * 4);
    uint8_t* slot0 = env.scratch + q8_direct_shared_bytes(d);
    remap_to_plane(qw, d, /*channel_major=*/false, offsets, cols);  // make_int8 ordered them (kh, kw, cin)
    spmm_qu8::PackedWeights dq;
    dq.n = qw.n;
    dq.k = qw.k;
    dq.nnz = qw.nnz;
    dq.row_ptr = AlignedBuffer::view(qw.row_ptr.data(), qw.row_ptr.size());
    dq.cols = AlignedBuffer::view(cols, qw.nnz * (d.cols_u16 ? 2 : 4));
    dq.cols_u16 = d.cols_u16;
    dq.values = AlignedBuffer::view(qw.values.data(), qw.values.size());
    dq.w_scale = AlignedBuffer::view(qw.w_scale.data(), qw.w_scale.size());
    dq.rowsum = AlignedBuffer::view(qw.rowsum.data(), qw.rowsum.size());
    dq.bias = AlignedBuffer::view(qw.bias.data(), qw.bias.size());

    const size_t slot_b = q8_direct_slot_bytes(d, xs);
    const size_t wd_ = static_cast<size_t>(W), hw = static_cast<size_t>(H) * wd_;
    const size_t plane_b = a64(d.extent + kPlanePad), imgt_b = a64(hw * c_in * 4);
    auto plane_of = [&](size_t slot) { return slot0 + slot * slot_b; };
    auto imgt_of = [&](size_t slot) { return reinterpret_cast<float*>(slot0 + slot * slot_b + plane_b); };
    auto qrow_of = [&](size_t slot) { return slot0 + slot * slot_b + plane_b + imgt_b; };
    auto y_t_of = [&](size_t slot) {
      return reinterpret_cast<float*>(slot0 + slot * slot_b + plane_b + imgt_b + a64(gemm_qu8::padded_k(wd_)));
    };
    const uint8_t zero = static_cast<uint8_t>(qp.zero);
    // The image (H*W x cin floats) to channel-major with the fast float transpose, then
    // each channel quantized (as the im2col path quantizes it) into the plane's interior.
    char finite[64];  // per slot
    std::fill(finite, finite + 64, 1);
    auto build_plane = [&](int64_t n, uint8_t* xp, float* imgt, uint8_t* qrow, size_t slot) {
      const size_t h = static_cast<size_t>(H), wd = wd_, p_h = static_cast<size_t>(ph), p_w = static_cast<size_t>(pw);
      std::memset(xp, zero, d.extent);  // borders (the interior is overwritten below)
      std::memset(xp + d.extent, 0, kPlanePad);
      transpose(x + static_cast<size_t>(n) * hw * c_in, c_in, imgt, hw, hw, c_in);
      for (size_t c = 0; c < c_in; ++c) {
        uint8_t* dst = xp + c * d.plane + p_h * d.Wp + p_w;
        bool ok = true;
        if (wd % gemm_qu8::kKr == 0) {  // rows of whole 4-byte blocks: straight into the plane
          ok = gemm_qu8::quantize(imgt + c * hw, h, wd, wd * 4, dst, d.Wp, qp);
        } else {  // quantize pads its rows to 4 bytes: via qrow, so no border byte changes
          for (size_t r = 0; r < h; ++r) {
            ok &= gemm_qu8::quantize(imgt + c * hw + r * wd, 1, wd, 0, qrow, gemm_qu8::padded_k(wd), qp);
            std::memcpy(dst + r * d.Wp, qrow, wd);
          }
        }
        if (!ok) finite[slot] = 0;
      }
    };
    const size_t img_out = static_cast<size_t>(OH * OW) * c_out;
    schedule_direct(env, N, d,
                    [&](int64_t n, size_t slot) { build_plane(n, plane_of(slot), imgt_of(slot), qrow_of(slot), slot); },
                    [&](int64_t n, size_t ps, size_t g0, size_t g1, size_t ws) {
                      spmm_qu8::run(*q_uk, dq, g1 - g0, plane_of(ps) + g0, 1, y_t_of(ws), kChunk * 4, 0, qw.n, ep);
                      grid_to_nhwc(y_t_of(ws), g0, g1, d, OW, y + static_cast<size_t>(n) * img_out,
                                   env.residual ? env.residual + static_cast<size_t>(n) * img_out : nullptr, env);
                    });
    return std::all_of(finite, finite + 64, [](char f) { return f != 0; });
  }

  // run_int8_direct with the quad kernel: per image the input quantized once (NHWC u8, as
  // the other int8 paths quantize it), then each input row's pixels x channel quads
  // transposed as 32-bit words into a zero-point padded plane of quads xq[cin / 4][Hp][Wp]
  // (4 channels per word). Quad column (tap i, j; channels 4q .. 4q+3) then reads output
  // grid column m' at byte (q * Hp * Wp + i * dh * Wp + j * dw + m') * 4: the quad columns
  // are remapped to those byte offsets (x_stride = 1) and the quad kernel runs unchanged.
  bool run_quad_direct(const float* x, const Shape& xs, const Shape& ys, float* y, const gemm_qu8::QuantParams& qp,
                       const spmm_qu8::Epilogue& ep, const RunEnv& env) const {
    const DirectShape d = direct_shape(xs, ys);
    const int64_t N = xs.dims[0], H = xs.dims[2], W = xs.dims[3], OH = ys.dims[2], OW = ys.dims[3];
    const size_t c_in = static_cast<size_t>(cin), c_out = static_cast<size_t>(cout), quads_in = c_in / 4;
    const size_t h = static_cast<size_t>(H), wd = static_cast<size_t>(W), p_h = static_cast<size_t>(ph),
                 p_w = static_cast<size_t>(pw);
    uint32_t* cols = reinterpret_cast<uint32_t*>(env.scratch);
    uint8_t* slot0 = env.scratch + quad_direct_shared_bytes();
    {  // quad (tap i, j; channels 4q .. 4q+3) -> byte offset of its plane window
      size_t tap_offset[64];
      std::vector<size_t> tap_offset_heap;
      const size_t taps = static_cast<size_t>(kh * kw);
      size_t* to = taps <= 64 ? tap_offset : (tap_offset_heap.resize(taps), tap_offset_heap.data());
      for (size_t t = 0; t < taps; ++t)
        to[t] = t / static_cast<size_t>(kw) * static_cast<size_t>(dh) * d.Wp + t % static_cast<size_t>(kw) * static_cast<size_t>(dw);
      for (size_t p = 0; p < qw.quads; ++p)
        cols[p] = static_cast<uint32_t>((quad_channel_quad[p] * d.plane + to[quad_tap[p]]) * 4);
    }
    spmm_qu8::PackedWeights dq;
    dq.n = qw.n;
    dq.k = qw.k;
    dq.nnz = qw.nnz;
    dq.has_quads = true;
    dq.quads = qw.quads;
    dq.quad_row_ptr = AlignedBuffer::view(qw.quad_row_ptr.data(), qw.quad_row_ptr.size());
    dq.quad_cols = AlignedBuffer::view(reinterpret_cast<uint8_t*>(cols), qw.quads * 4);
    dq.quad_vals = AlignedBuffer::view(qw.quad_vals.data(), qw.quad_vals.size());
    dq.w_scale = AlignedBuffer::view(qw.w_scale.data(), qw.w_scale.size());
    dq.rowsum = AlignedBuffer::view(qw.rowsum.data(), qw.rowsum.size());
    dq.bias = AlignedBuffer::view(qw.bias.data(), qw.bias.size());

    const size_t slot_b = quad_direct_slot_bytes(xs), plane_b = a64(d.extent + 4 * kPlanePad);
    auto plane_of = [&](size_t slot) { return slot0 + slot * slot_b; };
    auto qimg_of = [&](size_t slot) { return slot0 + slot * slot_b + plane_b; };
    const uint32_t zero4 = uint32_t(qp.zero) * 0x01010101u;
    char finite[64];  // per slot
    std::fill(finite, finite + 64, 1);
    uint8_t bad[64] = {};  // chained output: NaN / Inf outputs met, per slot or part
    if (env.in_u8 && env.in_bad) return false;
    const gemm_qu8::OutQuant out_q = env.out_u8 ? gemm_qu8::prepare_out_quant(env.out_quant, lo, hi)
                                                : gemm_qu8::OutQuant{};
    auto build_plane = [&](int64_t n, uint8_t* xp_bytes, uint8_t* qimg, size_t slot) {
      uint32_t* xp = reinterpret_cast<uint32_t*>(xp_bytes);
      for (size_t q = 0; q < quads_in; ++q) {  // the zero-point border of each quad plane
        uint32_t* pq = xp + q * d.plane;
        std::fill(pq, pq + p_h * d.Wp, zero4);
        std::fill(pq + (p_h + h) * d.Wp, pq + d.plane, zero4);
        if (p_w)
          for (size_t r = p_h; r < p_h + h; ++r) {
            std::fill(pq + r * d.Wp, pq + r * d.Wp + p_w, zero4);
            std::fill(pq + r * d.Wp + p_w + wd, pq + (r + 1) * d.Wp, zero4);
          }
      }
      std::fill(xp + quads_in * d.plane, xp + quads_in * d.plane + kPlanePad, 0u);
      const size_t img = h * wd * c_in;
      if (env.in_u8)  // chained: the image's codes as they are (read only)
        qimg = const_cast<uint8_t*>(env.in_u8) + static_cast<size_t>(n) * img;
      else if (!gemm_qu8::quantize(x + static_cast<size_t>(n) * img, 1, img, 0, qimg, gemm_qu8::padded_k(img), qp))
        finite[slot] = 0;
      for (size_t r = 0; r < h; ++r)  // (pixels, quads) -> (quads, pixels) 32-bit words
        transpose(reinterpret_cast<const float*>(qimg + r * wd * c_in), quads_in,
                  reinterpret_cast<float*>(xp + (r + p_h) * d.Wp + p_w), d.plane, wd, quads_in);
    };
    const size_t img_out = static_cast<size_t>(OH * OW) * c_out;
    schedule_direct(env, N, d, [&](int64_t n, size_t slot) { build_plane(n, plane_of(slot), qimg_of(slot), slot); },
                    [&](int64_t n, size_t ps, size_t g0, size_t g1, size_t ws) {
                      // Grid columns straight into image n's NHWC output (padding columns dropped).
                      spmm_qu8::Epilogue eq = ep;
                      eq.grid_base = g0;
                      eq.grid_w = d.Wp;
                      eq.out_w = static_cast<size_t>(OW);
                      eq.residual = env.residual ? env.residual + static_cast<size_t>(n) * img_out : nullptr;
                      eq.res_lo = env.residual_lo;
                      eq.res_hi = env.residual_hi;
                      if (env.out_u8) {  // chained: u8 codes, c_out bytes per pixel
                        set_u8_output(eq, env, out_q, bad + ws);
                        spmm_qu8::run(*q_quad_uk, dq, g1 - g0, plane_of(ps) + 4 * g0, 1,
                                      reinterpret_cast<float*>(env.out_u8 + static_cast<size_t>(n) * img_out), c_out, 0,
                                      qw.n, eq);
                        return;
                      }
                      spmm_qu8::run(*q_quad_uk, dq, g1 - g0, plane_of(ps) + 4 * g0, 1,
                                    y + static_cast<size_t>(n) * img_out, c_out * 4, 0, qw.n, eq);
                    });
    if (env.out_u8 && std::any_of(bad, bad + 64, [](uint8_t b) { return b != 0; })) *env.out_bad = 1;
    return std::all_of(finite, finite + 64, [](char f) { return f != 0; });
  }

  // The patches of output rows [m0, m0 + rows), written transposed straight into x_t: row
  // c * kh * kw + i * kw + j (the file's column order), column r = output row m0 + r, ld
  // floats between rows. Per tap, each run of output pixels on one output row is one
  // (pixels x cin) -> (cin x pixels) transpose; taps outside the image are zeros.
  void im2col_t(const float* x, const Shape& xs, const Shape& ys, int64_t m0, int64_t rows, float* x_t,
                size_t ld) const {
    const int64_t H = xs.dims[2], W = xs.dims[3], OH = ys.dims[2], OW = ys.dims[3];
    const size_t cstride = static_cast<size_t>(kh * kw) * ld;  // between channels of one tap
    const size_t c_in = static_cast<size_t>(cin);
    for (int64_t r = 0; r < rows;) {
      const int64_t m = m0 + r, n = m / (OH * OW), rem = m % (OH * OW), oh = rem / OW, ow0 = rem % OW;
      const int64_t len = std::min(rows - r, OW - ow0);
      for (int64_t i = 0; i < kh; ++i) {
        const int64_t ih = oh * sh - ph + i * dh;
        for (int64_t j = 0; j < kw; ++j) {
          float* d = x_t + static_cast<size_t>(i * kw + j) * ld + static_cast<size_t>(r);
          // Output ow reads input column iw = ow * sw + shift; [a, b) = the run's pixels
          // (relative to ow0) with 0 <= iw < W.
          const int64_t shift = j * dw - pw;
          int64_t a = 0, b = 0;
          if (ih >= 0 && ih < H) {
            const int64_t first = shift >= 0 ? 0 : (-shift + sw - 1) / sw;   // first ow with iw >= 0
            const int64_t last = W - 1 - shift < 0 ? -1 : (W - 1 - shift) / sw;  // last ow with iw < W
            a = std::min(std::max<int64_t>(first - ow0, 0), len);
            b = std::min(std::max<int64_t>(last + 1 - ow0, a), len);
          }
          if (b > a)
            transpose(x + ((n * H + ih) * W + (ow0 + a) * sw + shift) * cin, static_cast<size_t>(sw) * c_in,
                      d + a, cstride, static_cast<size_t>(b - a), c_in);
          if (a > 0 || b < len)
            for (size_t c = 0; c < c_in; ++c) {
              std::fill(d + c * cstride, d + c * cstride + a, 0.f);
              std::fill(d + c * cstride + b, d + c * cstride + len, 0.f);
            }
        }
      }
      r += len;
    }
  }

  // Patch rows in (kh, kw, cin) order (the sparse int8 path; make_int8 remaps its columns
  // to match).
  void im2col(const float* x, const Shape& xs, const Shape& ys, int64_t m0, int64_t rows, float* dst) const {
    const int64_t H = xs.dims[2], W = xs.dims[3], OH = ys.dims[2], OW = ys.dims[3];
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t m = m0 + r, n = m / (OH * OW), rem = m % (OH * OW), oh = rem / OW, ow = rem % OW;
      float* d = dst + r * k();
      for (int64_t i = 0; i < kh; ++i) {
        const int64_t ih = oh * sh - ph + i * dh;
        for (int64_t j = 0; j < kw; ++j) {
          const int64_t iw = ow * sw - pw + j * dw;
          float* dd = d + (i * kw + j) * cin;
          if (ih < 0 || ih >= H || iw < 0 || iw >= W)
            std::fill(dd, dd + cin, 0.f);
          else
            std::memcpy(dd, x + ((n * H + ih) * W + iw) * cin, cin * 4);
        }
      }
    }
  }
};

[[noreturn]] void bad(const format::Node& n, const std::string& what) {
  throw UnsupportedError("node '" + n.name + "' (" + format::op_name(n.op) + "): " + what);
}

// The sparse int8 layer: int8_channel weights keep their stored values and scales; any
// other values are quantized per row, symmetric: scale = max |w| / 127, q = round(w / scale).
std::unique_ptr<Layer> make_int8(std::unique_ptr<SparseLayer> layer, const format::Node& n, const format::Tensor& wt,
                                 const std::vector<float>& bias, bool kxk, const format::AttrValue* iq,
                                 const std::string& force) {
  if (iq) {
    const float scale = iq->floats[0], zero = iq->floats[1];
    if (!(scale > 0.f) || !std::isfinite(scale) || !(zero >= 0.f && zero <= 255.f) || zero != std::floor(zero))
      bad(n, "input_quant must be (scale > 0, integer zero point in 0..255)");
    layer->static_quant = true;
    layer->quant = {scale, static_cast<int32_t>(zero)};
  }
  const format::SparseRows s = format::decode_sparse(wt);
  const size_t rows = static_cast<size_t>(s.rows);
  std::vector<uint32_t> row_ptr(s.row_ptr), col(s.col);
  std::vector<int8_t> q(col.size());
  std::vector<float> scale(rows, 1.f);
  const bool exact = wt.values == format::Values::kInt8Channel;
  const format::Stream* sc = exact ? wt.stream(format::Role::kScales) : nullptr;
  for (size_t r = 0; r < rows; ++r) {
    const uint32_t b = row_ptr[r], e = row_ptr[r + 1];
    auto value = [&](uint32_t p) { return s.coded ? s.table[(s.per_row ? r * s.table_entries : 0) + s.codes[p]] : s.values[p]; };
    if (exact) {
      scale[r] = format::int8_row_scale(*sc, r);
      if (!std::isfinite(scale[r])) bad(n, "weight '" + wt.name + "' has a non-finite scale");
      // The decoded values are scale * q exactly; recover q.
      for (uint32_t p = b; p < e; ++p)
        q[p] = static_cast<int8_t>(scale[r] != 0.f ? std::nearbyint(value(p) / scale[r]) : 0.f);
    } else {
      float mx = 0.f;
      for (uint32_t p = b; p < e; ++p) mx = std::max(mx, std::fabs(value(p)));
      if (!std::isfinite(mx)) bad(n, "weight '" + wt.name + "' has non-finite values");
      scale[r] = mx > 0.f ? mx / 127.f : 1.f;
      for (uint32_t p = b; p < e; ++p)
        q[p] = static_cast<int8_t>(std::max(-127.f, std::min(127.f, std::nearbyint(value(p) / scale[r]))));
    }
    // int32 accumulation stays exact while a row has at most 2^31 / (255 * 128) entries.
    if (e - b > 65536) bad(n, "a row with more than 65536 stored entries cannot run in int8");
  }
  if (kxk) {
    // File columns run (cin, kh, kw); the patches run (kh, kw, cin): remap, re-sort rows.
    const uint32_t taps = static_cast<uint32_t>(layer->kh * layer->kw), c_in = static_cast<uint32_t>(layer->cin);
    std::vector<std::pair<uint32_t, int8_t>> tmp;
    for (size_t r = 0; r < rows; ++r) {
      tmp.clear();
      for (uint32_t p = row_ptr[r]; p < row_ptr[r + 1]; ++p) tmp.push_back({(col[p] % taps) * c_in + col[p] / taps, q[p]});
      std::sort(tmp.begin(), tmp.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      for (size_t i = 0; i < tmp.size(); ++i) {
        col[row_ptr[r] + i] = tmp[i].first;
        q[row_ptr[r] + i] = tmp[i].second;
      }
    }
  }
  layer->qw = spmm_qu8::pack(rows, static_cast<size_t>(s.cols), row_ptr.data(), col.data(), q.data(), scale.data(),
                             bias.data());
  layer->int8 = true;
  // Stride-1 convs (not pointwise) run direct (run_int8_direct); force_kernel "im2col" keeps im2col.
  layer->direct = !layer->pointwise() && layer->sh == 1 && layer->sw == 1 && force != "im2col";
  layer->q_uk = &spmm_qu8::best_ukernel();
  layer->q_small_uk = &spmm_qu8::all_ukernels()[0];  // the scalar reference
  if (force.rfind("spmm_qu8", 0) == 0) {
    const spmm_qu8::Ukernel* uk = spmm_qu8::find_ukernel(force.c_str());
    if (!uk) bad(n, "forced kernel '" + force + "' is not available on this CPU");
    layer->q_uk = layer->q_small_uk = uk;
  }
  // Quads where the nonzeros fill them well enough to beat the CSR kernel (it interleaves
  // bytes for every 4 nonzeros; the quad kernel pays a full quad for each stored one).
  const spmm_qu8::Ukernel* quad_uk = force.empty() || is_path_switch(force) ? spmm_qu8::best_quad_ukernel()
                                     : force.rfind("spmm_qu8_quad", 0) == 0 ? layer->q_uk : nullptr;
  if (quad_uk) {
    const size_t quads = spmm_qu8::count_quads(layer->qw);
    const bool forced = !(force.empty() || is_path_switch(force));
    if (forced || static_cast<double>(layer->qw.nnz) >= kQuadMinFill * spmm_qu8::kQuad * static_cast<double>(quads)) {
      spmm_qu8::build_quads(layer->qw);
      layer->q_quad_uk = quad_uk;
    }
  }
  if (layer->quad_direct() && layer->direct) {  // quad column b = (kh, kw, cin) columns 4b .. 4b+3
    const uint32_t* qc = layer->qw.quad_cols.as<uint32_t>();
    const size_t c_in = static_cast<size_t>(layer->cin);
    layer->quad_channel_quad.resize(layer->qw.quads);
    layer->quad_tap.resize(layer->qw.quads);
    for (size_t p = 0; p < layer->qw.quads; ++p) {
      layer->quad_channel_quad[p] = static_cast<uint32_t>(size_t(qc[p]) * 4 % c_in / 4);
      layer->quad_tap[p] = static_cast<uint32_t>(size_t(qc[p]) * 4 / c_in);
    }
  }
  if (layer->pointwise() && (force.empty() || is_path_switch(force))) {
    // Batch 1: quad tiles where the quads are full enough for the quad kernels (half the
    // weight bytes of the row tiles, so less energy, though slower: gathers), else row
    // tiles; only where a SIMD kernel runs them (best_spmv_ukernel returns the scalar CSR
    // reference otherwise).
    if (layer->q_quad_uk) spmm_qu8::build_quad_tiles(layer->qw);
    else spmm_qu8::build_row_tiles(layer->qw);
    const spmm_qu8::Ukernel& uk = spmm_qu8::best_spmv_ukernel(layer->qw);
    if (uk.layout == spmm_qu8::Layout::kQuadTiles || uk.layout == spmm_qu8::Layout::kRowTiles) {
      layer->q_spmv_uk = &uk;
    } else {
      layer->qw.has_quad_tiles = false;
      layer->qw.quad_tile_step_ptr = AlignedBuffer();
      layer->qw.quad_tile_rows = AlignedBuffer();
      layer->qw.quad_tile_window = AlignedBuffer();
      layer->qw.quad_tile_w = AlignedBuffer();
      layer->qw.quad_tile_idx = AlignedBuffer();
      layer->qw.has_tiles = false;
      layer->qw.tile_step_ptr = AlignedBuffer();
      layer->qw.tile_window = AlignedBuffer();
      layer->qw.tile_data = AlignedBuffer();
    }
  }
  layer->packed_bytes = layer->qw.row_ptr.size() + layer->qw.cols.size() + layer->qw.values.size() +
                        layer->qw.w_scale.size() + layer->qw.rowsum.size() + layer->qw.bias.size() +
                        layer->qw.tile_step_ptr.size() + layer->qw.tile_window.size() + layer->qw.tile_data.size() +
                        layer->qw.quad_tile_step_ptr.size() + layer->qw.quad_tile_rows.size() +
                        layer->qw.quad_tile_window.size() + layer->qw.quad_tile_w.size() +
                        layer->qw.quad_tile_idx.size() +
                        layer->qw.quad_row_ptr.size() + layer->qw.quad_cols.size() + layer->qw.quad_vals.size() +
                        (layer->quad_channel_quad.size() + layer->quad_tap.size()) * 4;
  return layer;
}

}  // namespace

std::unique_ptr<Layer> make_sparse_layer(const format::Node& n, const format::File& file, const LoadOptions& options,
                                         const ConvGeometry& g) {
  if (g.groups != 1) bad(n, "sparse weights with groups > 1 are not supported yet");
  auto layer = std::make_unique<SparseLayer>();
  layer->name = n.name;
  layer->op = n.op;
  layer->is_linear = g.is_linear;
  layer->cout = g.cout;
  layer->cin = g.cin;
  layer->kh = g.kh;
  layer->kw = g.kw;
  layer->sh = g.sh;
  layer->sw = g.sw;
  layer->ph = g.ph;
  layer->pw = g.pw;
  layer->dh = g.dh;
  layer->dw = g.dw;
  const format::Tensor& wt = file.tensors[n.weights[0]];
  const format::Tensor* bt = (n.weights.size() == 2 && n.weights[1] != format::kAbsent) ? &file.tensors[n.weights[1]] : nullptr;
  if (bt && bt->numel() != static_cast<uint64_t>(layer->cout))
    bad(n, "bias '" + bt->name + "' has " + std::to_string(bt->numel()) + " values, expected " + std::to_string(layer->cout));
  activation_range(attr_int(n, Attr::kActivation, 0, 0), &layer->lo, &layer->hi);
  std::vector<float> bias = bt ? decode_to_f32(*bt) : std::vector<float>(static_cast<size_t>(layer->cout), 0.f);
  layer->weights.push_back({wt.name, wt.dims, format::values_name(wt.values), format::layout_name(wt.layout),
                            format::entropy_name(wt.entropy), wt.payload_bytes(), wt.numel() * 4});
  if (bt)
    layer->weights.push_back({bt->name, bt->dims, format::values_name(bt->values), format::layout_name(bt->layout),
                              format::entropy_name(bt->entropy), bt->payload_bytes(), bt->numel() * 4});
  const bool codebook = wt.values == format::Values::kCodebook;
  // Dense codebook (weight sharing without pruning): batch 1 runs the gemv_cb kernels on
  // the dense u8 code tiles (1 byte per weight, no column indices); batch > 1 the CSR
  // spmm_cb kernels. No row tiles (the dense tiles replace them), no zero-skipping copy.
  const bool dense_cb = codebook && wt.layout == format::Layout::kDense;
  const bool kxk = !layer->is_linear && (layer->kh * layer->kw) > 1;
  const size_t min_tiles = hardware_threads() * 4;
  const std::string& force_q = options.force_kernel;
  const format::AttrValue* iq = n.find(Attr::kInputQuant);
  // Sparse int8 (u8 activations): when forced by kernel name, or when the file asks for
  // quantized activations (input_quant) on int8 weights, as the dense int8 path does.
  if (force_q.rfind("spmm_qu8", 0) == 0 || (iq && wt.values == format::Values::kInt8Channel)) {
    return make_int8(std::move(layer), n, wt, bias, kxk, iq, force_q);
  }
  if (options.decode == Decode::kStream) {
    // Kernel choice below looks at the flags of `sel`: the tiles will get the layouts
    // pack() would have built for the whole matrix.
    // Columns stay in the file's (cin, kh, kw) order (taps = 1: no remap), as im2col_t builds them.
    layer->stream = std::make_unique<StreamWeights>(wt, 1, static_cast<uint32_t>(layer->cin), bias.data(),
                                                    StreamWeights::Needs{}, min_tiles);
    spmm_f32::PackedWeights& p = layer->stream->proto();
    p.has_tiles = codebook && !dense_cb && !p.table_per_row && p.table_entries <= 32 && p.k < (size_t(1) << 21);
    p.has_dense = dense_cb;
    layer->stream_decoded = true;
  } else {
    // Columns in the file's (cin, kh, kw) order: im2col_t's rows, run_direct's remap.
    format::SparseRows s = format::decode_sparse(wt);
    layer->w = spmm_f32::pack(s.rows, s.cols, s.row_ptr.data(), s.col.data(), codebook ? nullptr : s.values.data(),
                              codebook ? s.codes.data() : nullptr, codebook ? s.table.data() : nullptr,
                              codebook ? s.table_entries : 0, s.per_row, bias.data(), !dense_cb);
    if (dense_cb) spmm_f32::build_dense_tiles(layer->w);
  }
  spmm_f32::PackedWeights& sel = layer->stream ? layer->stream->proto() : layer->w;
  auto add_csc = [&]() {
    if (layer->stream) sel.has_csc = true;
    else spmm_f32::build_csc(layer->w);
  };
  layer->spmv_uk = &spmm_f32::best_ukernel_for(sel, 1);
  layer->spmm_uk = &spmm_f32::best_ukernel_for(sel, 2);
  // force_kernel "im2col" (tests, benchmarks): stride-1 kxk convs keep the im2col path;
  // no kernel is forced.
  const bool force_im2col = options.force_kernel == "im2col";
  const std::string force = is_path_switch(options.force_kernel) ? std::string() : options.force_kernel;
  layer->direct = !layer->pointwise() && !layer->stream && layer->sh == 1 && layer->sw == 1 && !force_im2col;
  if (!force.empty() && (force.rfind("spmm", 0) == 0 || force.rfind("spmv", 0) == 0 || force.rfind("gemv_cb", 0) == 0)) {
    const spmm_f32::Ukernel* uk = spmm_f32::find_ukernel(force.c_str());
    if (!uk) bad(n, "forced kernel '" + force + "' is not available on this CPU");
    if (uk->layout == spmm_f32::Layout::kCsc) {
      if (uk->codebook != sel.codebook) bad(n, "forced kernel '" + force + "' cannot run these weights");
      if (layer->pointwise()) {
        add_csc();
        layer->csc_uk = layer->spmv_uk = uk;
        layer->csc_always = true;
      }
    } else if (uk->spmv) {
      if (!spmm_f32::compatible(*uk, sel, 1)) bad(n, "forced kernel '" + force + "' cannot run these weights");
      layer->spmv_uk = uk;
    } else {
      if (!spmm_f32::compatible(*uk, sel, 2)) bad(n, "forced kernel '" + force + "' cannot run these weights");
      layer->spmm_uk = uk;
      layer->spmv_uk = uk;  // an spmm kernel also runs m == 1
    }
  }
  // Zero-skipping for batch-1 pointwise layers (not when a row kernel is forced by name:
  // the forced kernel is what runs).
  if (force.empty() && layer->pointwise() && !dense_cb) {
    add_csc();
    layer->csc_uk = &spmm_f32::best_csc_ukernel(sel);
  }
  if (layer->spmv_uk->layout == spmm_f32::Layout::kRowTiles) layer->zero_skip_min_fraction = kZeroSkipMinFractionVsRowTiles;
  const spmm_f32::Layout spmv_layout = layer->spmv_uk->layout;
  if (layer->stream) {
    layer->stream->set_needs(StreamWeights::Needs{spmv_layout == spmm_f32::Layout::kRowTiles, layer->csc_uk != nullptr,
                                                  spmv_layout == spmm_f32::Layout::kDenseTiles});
    // What a run reads for the weights: the resident streams (decoded on the fly).
    layer->weight_read_bytes = layer->packed_bytes = layer->stream->resident_bytes();
    return layer;
  }
  const size_t parts = std::max<size_t>(1, std::min<size_t>(min_tiles, layer->w.n / 16 + 1));
  const size_t align = (spmv_layout == spmm_f32::Layout::kRowTiles || spmv_layout == spmm_f32::Layout::kDenseTiles)
                           ? spmm_f32::kTileRows : 1;
  layer->spmv_ranges = spmm_f32::balanced_row_ranges(layer->w, parts, align);
  layer->weight_read_bytes = spmv_layout == spmm_f32::Layout::kRowTiles     ? layer->w.tile_bytes()
                             : spmv_layout == spmm_f32::Layout::kDenseTiles ? layer->w.dense_bytes()
                                                                            : layer->w.csr_bytes();
  layer->packed_bytes = layer->w.resident_bytes();
  return layer;
}

}  // namespace dsq::rt
