// conv2d and linear with sparse weights (csr, csr_relative, block_csr; f32, f16, int8,
// int4 or codebook values): the spmm_f32 family, whose lanes run along the batch/pixel
// dimension (Elsen et al.). Weights stay sparse: only their nonzeros are packed, codebook
// values stay u8 codes into the table. Activations are moved into the transposed
// (k, m) layout per chunk of rows and the results moved back. Dense codebooks (groups 1)
// run here too: batch 1 on the dense code tiles (gemv_cb_*), batch > 1 on the CSR.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "base/error.h"
#include "format/matrix.h"
#include "kernels/spmm_f32/spmm_f32.h"
#include "ops/ops.h"

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
  double zero_skip_min_fraction = kZeroSkipMinFraction;
  std::vector<size_t> spmv_ranges;             // row ranges balanced by nonzeros
  uint64_t weight_read_bytes = 0;

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
    // per task: patches (chunk x k) when not pointwise, x_t (k x chunk), y_t (cout x chunk)
    const size_t kk = static_cast<size_t>(k());
    return ((pointwise() ? 0 : kChunk * kk) + kk * kChunk + static_cast<size_t>(cout) * kChunk) * 4 + 64;
  }

  size_t scratch_bytes(const std::vector<Shape>&, const std::vector<Shape>& out, size_t threads) const override {
    if (rows_of(out[0]) == 1 && pointwise()) return 0;  // the batch-1 path needs no scratch
    return slot_bytes() * std::min<size_t>(threads, 64);
  }

  Cost cost(const std::vector<Shape>& in, const std::vector<Shape>& out) const override {
    Cost c = Layer::cost(in, out);
    c.macs_f32 = static_cast<uint64_t>(rows_of(out[0])) * w.nnz;
    if (w.codebook) {
      // Batch 1 (pointwise): one look-up per MAC. Otherwise the spmm kernels decode each
      // code once per tile of mr rows (the value is then broadcast across the tile's
      // lanes), and rows come in chunks of kChunk.
      const uint64_t M = static_cast<uint64_t>(rows_of(out[0]));
      if (M == 1 && pointwise()) {
        c.table_lookups = w.nnz;
      } else {
        const uint64_t mr = std::max<uint64_t>(1, spmm_uk->mr), full = M / kChunk, rest = M % kChunk;
        const uint64_t tiles = full * ((kChunk + mr - 1) / mr) + (rest + mr - 1) / mr;
        c.table_lookups = static_cast<uint64_t>(w.nnz) * tiles;
      }
    }
    c.weight_bytes = weight_read_bytes;
    return c;
  }

  std::string kernel() const override {
    std::string k = std::string(spmv_uk->name) + " | " + spmm_uk->name;
    if (!pointwise()) k += " + im2col";
    if (csc_uk && !csc_always)
      k += std::string(" | zero-skip ") + csc_uk->name + " at >= " +
           std::to_string(static_cast<int>(zero_skip_min_fraction * 100 + 0.5)) + "% zeros";
    return k;
  }

  void run(const std::vector<const float*>& in, const std::vector<Shape>& in_shapes,
           const std::vector<float*>& out, const std::vector<Shape>& out_shapes, const RunEnv& env) const override {
    const float* x = in[0];
    float* y = out[0];
    const int64_t M = rows_of(out_shapes[0]);
    const size_t kk = static_cast<size_t>(k());
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
      if (env.pool->threads() <= 1 || parts <= 1) {
        spmm_f32::run(*spmv_uk, w, 1, x, 4, y, 4, 0, w.n, lo, hi);
      } else {
        env.pool->parallel_for(parts, body);
      }
      return;
    }
    const size_t chunks = (static_cast<size_t>(M) + kChunk - 1) / kChunk;
    const size_t slots = std::min<size_t>({chunks, env.pool->threads(), 64});
    auto do_chunk = [&](size_t chunk, size_t slot) {
      const int64_t m0 = static_cast<int64_t>(chunk * kChunk);
      const int64_t rows = std::min<int64_t>(kChunk, M - m0);
      float* base = reinterpret_cast<float*>(env.scratch + slot * slot_bytes());
      float* patches = base;
      float* x_t = base + (pointwise() ? 0 : kChunk * kk);
      float* y_t = x_t + kk * kChunk;
      const float* a = x + m0 * cin;
      size_t a_stride = static_cast<size_t>(cin);
      if (!pointwise()) {
        im2col(x, in_shapes[0], out_shapes[0], m0, rows, patches);
        a = patches;
        a_stride = kk;
      }
      transpose(a, a_stride, x_t, kChunk, static_cast<size_t>(rows), kk);
      spmm_f32::run(*spmm_uk, w, static_cast<size_t>(rows), x_t, kChunk * 4, y_t, kChunk * 4, 0, w.n, lo, hi);
      transpose(y_t, kChunk, y + m0 * cout, static_cast<size_t>(cout), static_cast<size_t>(cout),
                static_cast<size_t>(rows));
    };
    if (slots <= 1) {
      for (size_t c = 0; c < chunks; ++c) do_chunk(c, 0);
      return;
    }
    env.pool->parallel_for(slots, [&](size_t s) {
      for (size_t c = s; c < chunks; c += slots) do_chunk(c, s);
    });
  }

 private:
  // Patch rows in (kh, kw, cin) order; the packed columns were remapped to match.
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
  format::SparseRows s = format::decode_sparse(wt);
  if (!layer->is_linear && (layer->kh * layer->kw) > 1) {
    // File columns run (cin, kh, kw); the patches run (kh, kw, cin).
    const uint32_t taps = static_cast<uint32_t>(layer->kh * layer->kw), c_in = static_cast<uint32_t>(layer->cin);
    for (auto& c : s.col) c = (c % taps) * c_in + c / taps;
  }
  const bool codebook = s.coded;
  // Dense codebook (weight sharing without pruning): batch 1 runs the gemv_cb kernels on
  // the dense u8 code tiles (1 byte per weight, no column indices); batch > 1 the CSR
  // spmm_cb kernels. No row tiles (the dense tiles replace them), no zero-skipping copy.
  const bool dense_cb = codebook && wt.layout == format::Layout::kDense;
  layer->w = spmm_f32::pack(s.rows, s.cols, s.row_ptr.data(), s.col.data(), codebook ? nullptr : s.values.data(),
                            codebook ? s.codes.data() : nullptr, codebook ? s.table.data() : nullptr,
                            codebook ? s.table_entries : 0, s.per_row, bias.data(), !dense_cb);
  if (dense_cb) spmm_f32::build_dense_tiles(layer->w);
  layer->spmv_uk = &spmm_f32::best_ukernel_for(layer->w, 1);
  layer->spmm_uk = &spmm_f32::best_ukernel_for(layer->w, 2);
  const std::string& force = options.force_kernel;
  if (!force.empty() && (force.rfind("spmm", 0) == 0 || force.rfind("spmv", 0) == 0 || force.rfind("gemv_cb", 0) == 0)) {
    const spmm_f32::Ukernel* uk = spmm_f32::find_ukernel(force.c_str());
    if (!uk) bad(n, "forced kernel '" + force + "' is not available on this CPU");
    if (uk->layout == spmm_f32::Layout::kCsc) {
      if (uk->codebook != layer->w.codebook) bad(n, "forced kernel '" + force + "' cannot run these weights");
      if (layer->pointwise()) {
        spmm_f32::build_csc(layer->w);
        layer->csc_uk = layer->spmv_uk = uk;
        layer->csc_always = true;
      }
    } else if (uk->spmv) {
      if (!spmm_f32::compatible(*uk, layer->w, 1)) bad(n, "forced kernel '" + force + "' cannot run these weights");
      layer->spmv_uk = uk;
    } else {
      if (!spmm_f32::compatible(*uk, layer->w, 2)) bad(n, "forced kernel '" + force + "' cannot run these weights");
      layer->spmm_uk = uk;
      layer->spmv_uk = uk;  // an spmm kernel also runs m == 1
    }
  }
  // Zero-skipping for batch-1 pointwise layers (not when a row kernel is forced by name:
  // the forced kernel is what runs).
  if (force.empty() && layer->pointwise() && !dense_cb) {
    spmm_f32::build_csc(layer->w);
    layer->csc_uk = &spmm_f32::best_csc_ukernel(layer->w);
  }
  const size_t parts = std::max<size_t>(1, std::min<size_t>(hardware_threads() * 4, layer->w.n / 16 + 1));
  if (layer->spmv_uk->layout == spmm_f32::Layout::kRowTiles) layer->zero_skip_min_fraction = kZeroSkipMinFractionVsRowTiles;
  const spmm_f32::Layout spmv_layout = layer->spmv_uk->layout;
  const size_t align = (spmv_layout == spmm_f32::Layout::kRowTiles || spmv_layout == spmm_f32::Layout::kDenseTiles)
                           ? spmm_f32::kTileRows : 1;
  layer->spmv_ranges = spmm_f32::balanced_row_ranges(layer->w, parts, align);
  layer->weight_read_bytes = spmv_layout == spmm_f32::Layout::kRowTiles     ? layer->w.tile_bytes()
                             : spmv_layout == spmm_f32::Layout::kDenseTiles ? layer->w.dense_bytes()
                                                                            : layer->w.csr_bytes();
  layer->packed_bytes = layer->w.csr_bytes() + (layer->w.has_tiles ? layer->w.tile_bytes() : 0) + layer->w.csc_bytes() +
                        layer->w.dense_bytes();
  return layer;
}

}  // namespace dsq::rt
