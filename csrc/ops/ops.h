// Ops: one Layer per graph node, prepared at load (weights decoded and packed for the
// chosen kernel family), then run many times without allocation.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/threadpool.h"
#include "format/file.h"
#include "kernels/gemm_qu8/gemm_qu8.h"

namespace dsq::rt {

// Logical shape in PyTorch's order. Rank-4 tensors are stored NHWC in memory (see
// storage_dims); every other rank is stored row-major as is.
struct Shape {
  std::vector<int64_t> dims;
  int rank() const { return static_cast<int>(dims.size()); }
  // Saturates at INT64_MAX (a shape from a file may claim more than int64 holds; the
  // planner rejects anything above its element limit).
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : dims)
      if (__builtin_mul_overflow(n, d, &n)) return INT64_MAX;
    return n;
  }
  bool operator==(const Shape& o) const { return dims == o.dims; }
  bool operator!=(const Shape& o) const { return dims != o.dims; }
  std::string str() const;
};
// Fixed-capacity dims (rank <= 8), so run-time code needs no heap.
struct Dims {
  int64_t d[8] = {};
  int n = 0;
  int64_t operator[](int i) const { return d[i]; }
  int64_t& operator[](int i) { return d[i]; }
};
// The dims in memory order: (N, H, W, C) for rank 4, unchanged otherwise.
Dims storage_dims(const Shape& s);
// Maps a logical axis of a rank-r tensor to its memory axis.
int storage_axis(int axis, int rank);

// Work counted per layer and per run: feeds Model.counters and the energy model.
struct Cost {
  uint64_t macs_f32 = 0, macs_int8 = 0, macs_int4 = 0;
  uint64_t weight_bytes = 0;      // weight bytes the kernel reads per run
  uint64_t activation_bytes = 0;  // activation bytes read + written
  // Dynamic: MACs (counted in macs_f32) not executed because their input activation was
  // zero (batch-1 zero-skipping of sparse layers). A plan's static cost has 0 here; runs
  // report it through RunEnv::skipped_macs.
  uint64_t skipped_macs = 0;
  // Dynamic: Huffman symbols decoded by the run (decode="stream" layers; 0 otherwise).
  uint64_t huffman_symbols = 0;
  // Codebook (weight-sharing) table reads the kernel does: one per MAC at batch 1, one
  // per nonzero and tile of rows in the batched kernels (the energy model prices them).
  // Static, like the MACs: a zero-skipped batch-1 MAC of a codebook layer also skips its
  // look-up (energy.py subtracts skipped_macs for them).
  uint64_t table_lookups = 0;
  // Layer calls these counts add up over: 1 per layer and run, or 1 per slice of a
  // micro-batched run (the energy model prices a call's activations, not the run's).
  uint64_t calls = 0;
  void add(const Cost& o, uint64_t times = 1) {
    macs_f32 += o.macs_f32 * times;
    macs_int8 += o.macs_int8 * times;
    macs_int4 += o.macs_int4 * times;
    weight_bytes += o.weight_bytes * times;
    activation_bytes += o.activation_bytes * times;
    skipped_macs += o.skipped_macs * times;
    huffman_symbols += o.huffman_symbols * times;
    table_lookups += o.table_lookups * times;
    calls += o.calls * times;
  }
};

struct RunEnv {
  ThreadPool* pool;
  uint8_t* scratch;  // 64-byte aligned, scratch_bytes() long
  // Dynamic counters of this run (one RunEnv per run, layers run one after another):
  // a layer adds from the thread that called run(), after its parallel_for (tasks count
  // into locals), so no atomics are needed. Model::execute adds them to Model.counters.
  uint64_t* skipped_macs = nullptr;
  uint64_t* huffman_symbols = nullptr;
  // Set by the executor for a layer that also does the residual add after it (see
  // Layer::fuses_residual): out = clamp(layer(x) + residual, residual_lo, residual_hi),
  // the add layer's own arithmetic; residual has the output's shape and layout.
  const float* residual = nullptr;
  float residual_lo = 0.f, residual_hi = 0.f;
  // Set by a layer for a call too small to pay for waking the pool's workers.
  bool serial = false;
  // u8 activation chaining (planned by the Model, see Layer::takes_u8_input): input 0
  // arrives as in_u8, the codes of the layer's own static input quantization in the f32
  // tensor's memory order; in_bad: its producer met a NaN or Inf (the NaN-output rule).
  const uint8_t* in_u8 = nullptr;
  bool in_bad = false;
  // Output 0 goes to out_u8 as codes of out_quant (the reader's input quantization, the
  // bytes gemm_qu8::quantize would give); the layer sets *out_bad to 1 when any output is
  // NaN or Inf (or the whole output would be NaN), else to 0.
  uint8_t* out_u8 = nullptr;
  gemm_qu8::QuantParams out_quant{1.f, 0};
  uint8_t* out_bad = nullptr;
  size_t threads() const { return serial ? 1 : pool->threads(); }
};

// Below this many MACs (default 2^18) a conv/linear call runs on the calling thread: the
// hand-off to a worker costs a few microseconds even while it spins between layers (a
// sleeping one: a futex wake, ~10-30 us). 2^18 splits MobileNetV2-CIFAR's 8x8 and 4x4
// depthwise layers; 2^21 kept them serial (batch 1, 2 threads: 705 -> 540 us; LeNets' layers
// stay under it). DSQ_MIN_PARALLEL_MACS overrides it (the tests set 0 so small layers still
// exercise the threaded paths).
uint64_t min_parallel_macs();

struct WeightInfo {
  std::string name;
  std::vector<uint64_t> dims;
  std::string values, layout, entropy;
  uint64_t payload_bytes = 0;
  uint64_t f32_bytes = 0;
  uint64_t huffman_symbols = 0;  // symbols decoded from Huffman streams (once, at load)
};

// When compressed weights are decoded: kLoad = once at load into the kernel layout;
// kStream = the sparse / codebook layers keep their streams as stored (Huffman-coded or
// bit-packed) and decode them tile by tile inside each run (less resident memory, same
// results).
enum class Decode { kLoad = 0, kStream = 1 };

// Default of LoadOptions::max_memory: 16 GiB on 64-bit targets, 1 GiB on 32-bit ones.
constexpr uint64_t kDefaultMaxMemory = sizeof(size_t) >= 8 ? uint64_t(16) << 30 : uint64_t(1) << 30;

// force_kernel values that are test switches, not kernel names: "im2col" (convs keep the
// im2col path), "unfused" (no residual add is folded into its producer) and "unchained"
// (every activation stays f32 between layers: no u8 chaining).
inline bool is_path_switch(const std::string& force_kernel) {
  return force_kernel == "im2col" || force_kernel == "unfused" || force_kernel == "unchained";
}

struct LoadOptions {
  size_t threads = 0;  // 0 = hardware threads
  // Bytes a model may use: its packed weights, plus the activation arena and scratch of
  // one execution context for the input shapes of a run. Exceeding it throws LimitError
  // (at load, or at the run whose input shapes need more). 0 = kDefaultMaxMemory.
  uint64_t max_memory = kDefaultMaxMemory;
  Decode decode = Decode::kLoad;
  // Force every conv/linear of a weight encoding onto this kernel (by name); for tests.
  std::string force_kernel;
};

class Layer {
 public:
  virtual ~Layer() = default;
  // Output shapes from input shapes; throws InputError naming the node.
  virtual std::vector<Shape> infer(const std::vector<Shape>& in) const = 0;
  // Scratch for one run with up to `threads` threads working on this layer.
  virtual size_t scratch_bytes(const std::vector<Shape>& in, const std::vector<Shape>& out,
                               size_t threads) const {
    return 0;
  }
  virtual void run(const std::vector<const float*>& in, const std::vector<Shape>& in_shapes,
                   const std::vector<float*>& out, const std::vector<Shape>& out_shapes,
                   const RunEnv& env) const = 0;
  virtual Cost cost(const std::vector<Shape>& in, const std::vector<Shape>& out) const;
  // u8 activation chaining: true when run() can read input 0 as u8 codes (RunEnv::in_u8)
  // for these shapes; *q is then the input quantization the codes must use.
  virtual bool takes_u8_input(const std::vector<Shape>& in, const std::vector<Shape>& out,
                              gemm_qu8::QuantParams* q) const {
    return false;
  }
  // True when run() can write output 0 as u8 codes of `reader` (its reader's input
  // quantization; RunEnv::out_u8) for these shapes, quantizing in its kernels' epilogue,
  // and that pays.
  virtual bool gives_u8_output(const std::vector<Shape>& in, const std::vector<Shape>& out,
                               const gemm_qu8::QuantParams& reader) const {
    return false;
  }
  // The kernel this layer runs (shown by summary/inspect).
  virtual std::string kernel() const { return "ref"; }
  // True when run() honours RunEnv::residual (a following same-shape add folded into
  // this layer's output pass; the layer must have no activation of its own).
  virtual bool fuses_residual() const { return false; }
  // An add without broadcasting that could be folded into its producer: its clamp range.
  virtual bool residual_add_range(float* lo, float* hi) const { return false; }
  // True when each sample (index on axis 0) of the output depends only on the same
  // sample of the inputs, with the same bits whatever the batch size: the layer may then
  // run on slices of a batch (micro-batching). False for a layer that reads the whole
  // batch (dynamic activation quantization: one scale per call; softmax or concat on
  // axis 0).
  virtual bool per_sample(const std::vector<Shape>& in) const { return false; }
  // The smallest batch from which this layer's results are the same bits at any batch
  // size: 2 for a layer whose batch-1 kernels sum in another order. Slices are no smaller.
  virtual int64_t min_slice_rows() const { return 1; }

  std::string name;
  format::Op op;
  std::vector<WeightInfo> weights;
  uint64_t packed_bytes = 0;  // memory the packed weights take at run time
  bool stream_decoded = false;  // decode="stream": weights decoded per tile in run()

 protected:
  [[noreturn]] void fail(const std::string& what) const;
};

std::unique_ptr<Layer> make_layer(const format::Node& node, const format::File& file,
                                  const LoadOptions& options);

// Weight decoding (load time): any encoding to dense f32, row-major in file order.
std::vector<float> decode_to_f32(const format::Tensor& t);

// Per-op constructors (ops/conv.cc, ops/simple_ops.cc).
std::unique_ptr<Layer> make_conv_or_linear(const format::Node& node, const format::File& file,
                                           const LoadOptions& options);
std::unique_ptr<Layer> make_simple_layer(const format::Node& node, const format::File& file);
// The shape of a conv2d / linear, parsed and range-checked from the node and its weight
// once at load (ops/conv.cc) and shared by every kernel family that runs it.
struct ConvGeometry {
  int64_t cout = 0, cin = 0, kh = 1, kw = 1;
  int64_t sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1, groups = 1;
  bool is_linear = false;
  bool pointwise() const {  // the input rows are the GEMM rows: no im2col
    return is_linear || (kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0);
  }
  int64_t k_group() const { return (cin / groups) * kh * kw; }
  int64_t cout_group() const { return cout / groups; }
};

// conv2d (groups 1) / linear whose weights use a sparse layout or a codebook
// (ops/sparse.cc); `g` is the geometry make_conv_or_linear already validated.
std::unique_ptr<Layer> make_sparse_layer(const format::Node& node, const format::File& file,
                                         const LoadOptions& options, const ConvGeometry& g);

// Shared helpers.
int64_t attr_int(const format::Node& n, format::Attr key, size_t i, int64_t dflt);
float attr_float(const format::Node& n, format::Attr key, size_t i, float dflt);
// False when any of x[0..n) is Inf or NaN.
bool all_finite(const float* x, size_t n);
// dst[c][r] = src[r][c] for r < rows, c < cols (strides in elements), in cache blocks.
void transpose(const float* src, size_t src_stride, float* dst, size_t dst_stride, size_t rows, size_t cols);
// gemm_qu8::quantize split over the pool's threads when the call is big enough to pay
// for the hand-off (and the layer is not running serially); the same bytes as one call.
// m == 1 is one flat row (q_stride = padded_k(k)): it is cut at multiples of 64 values.
// Returns false when any input is NaN or +-Inf, as quantize().
bool quantize_parallel(const RunEnv& env, const float* x, size_t m, size_t k, size_t x_stride, uint8_t* q,
                       size_t q_stride, const gemm_qu8::QuantParams& qp);

// out[i] = clamp(out[i] + residual[i], lo, hi) for i < n, with the add layer's expression
// (so a fused add gives the same bits as the separate one), split over the pool.
void add_residual(float* out, const float* residual, size_t n, float lo, float hi, const RunEnv& env);
// Fused activation as a clamp range.
void activation_range(int64_t activation, float* lo, float* hi);
// Points a kernel's epilogue (gemm_qu8 / spmm_qu8 Epilogue, dwconv_qu8 Geometry) at the
// run's u8 output (RunEnv::out_u8): the reader's quantization, prepared once per layer
// call (q), and the NaN / Inf flag of the calling task (bad).
template <typename Epilogue>
void set_u8_output(Epilogue& e, const RunEnv& env, const gemm_qu8::OutQuant& q, uint8_t* bad) {
  e.out_u8 = true;
  e.out_scale = env.out_quant.scale;
  e.out_zero = env.out_quant.zero;
  e.out_prepared = q;
  e.out_bad = bad;
}
// A layer's all-NaN output (the NaN-output rule of the int8 layers, docs/HARDENING.md):
// n NaNs at y, or under u8 chaining the poison flag its reader turns into NaNs again.
void nan_output(float* y, size_t n, const RunEnv& env);

}  // namespace dsq::rt
