// A loaded model: validated file, one prepared Layer per node, a plan per input shape.
// One Model serves many threads at once; each call takes a Context (its activation
// arena and scratch) from a pool, so a run allocates nothing once a Context has seen
// the input shapes.
#pragma once
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/aligned.h"
#include "base/threadpool.h"
#include "format/file.h"
#include "ops/ops.h"

namespace dsq::rt {

struct IoInfo {
  std::string name;
  std::vector<int64_t> dims;  // -1 = any size
};

struct Counters {
  uint64_t runs = 0;
  Cost total;
  std::vector<Cost> layers;  // per graph node, summed over runs (same fields as total)
};

struct LayerInfo {
  std::string name, op, kernel;
  std::vector<Shape> input_shapes, output_shapes;  // for the last planned input shapes
  std::vector<WeightInfo> weights;
  uint64_t packed_bytes = 0;
  std::string decode;  // "load" | "stream": when this layer's weights are decoded
  Cost cost;  // per run, for those shapes
};

// Execution plan for one set of input shapes.
struct Plan {
  std::vector<Shape> input_shapes;
  std::vector<Shape> value_shapes;       // per graph value
  std::vector<int64_t> value_offset;     // byte offset in the arena; -1 = graph input
  size_t arena_bytes = 0, scratch_bytes = 0;
  size_t threads = 1;  // scratch is sized for this many threads
  std::vector<Cost> node_cost;
  Cost total_cost;
  // Per node, the shapes its layer sees (kept so a run builds nothing).
  std::vector<std::vector<Shape>> node_in_shapes, node_out_shapes;
  // Residual adds folded into the layer that produces one of their inputs (a conv without
  // activation whose output only that add reads; shapes equal, no broadcasting): for the
  // producer, the add's node index and the other input's value (-1: none); the add itself
  // is skipped (fused_away). The add's output is then born at the producer (liveness).
  std::vector<int64_t> residual_add, residual_value;
  std::vector<bool> fused_away;
  // u8 activation chaining: a value whose producer quantizes it in its epilogue for its
  // only reader (both layers agree for these shapes; see Layer::takes_u8_input) is held
  // as u8 codes of value_quant[v], followed at value_flag_offset(v) by one byte: 1 when
  // the producer met a NaN or Inf. Its arena slot takes numel bytes instead of 4 numel.
  std::vector<bool> value_u8;
  std::vector<gemm_qu8::QuantParams> value_quant;
  // Per node: the u8 value it writes as output 0 / reads as input 0, or -1.
  std::vector<int64_t> node_u8_out, node_u8_in;
  // Micro-batching (Model::plan_slices): the batch runs as `slice_count` slices, the first
  // `slice_larger` of slice_rows + 1 samples and the rest of slice_rows, each through the
  // whole graph on the plan for its size (slice_plan[0]: slice_rows, [1]: slice_rows + 1).
  // With slice_slots > 1, that many slices run at once, one per thread, each with its own
  // arena and scratch (the slice plans are then planned for one thread).
  // slice_count == 0: the batch runs whole on this plan.
  int64_t slice_count = 0, slice_rows = 0, slice_larger = 0;
  size_t slice_slots = 0;
  std::shared_ptr<const Plan> slice_plan[2];
};

// Per-run pointer tables, sized at prepare() and refilled by each run (one per slot of a
// micro-batched run).
struct RunTables {
  std::vector<const float*> value_ptr;
  std::vector<std::vector<const float*>> node_in;
  std::vector<std::vector<float*>> node_out;
  std::vector<uint64_t> node_skipped;  // zero-skipped MACs of each node, summed over the run
  uint64_t huffman_symbols = 0;        // decoded by the run
  std::vector<const float*> slice_in;  // the caller's buffers, offset to a slice
  std::vector<float*> slice_out;
};

class Model;

class Context {
 public:
  explicit Context(const Model& model) : model_(model) {}
  // Plans for these input shapes (reuses the last plan when they match) and returns
  // the output shapes. Throws InputError for shapes the model cannot take.
  const Plan& prepare(const std::vector<Shape>& input_shapes);
  // Runs the prepared plan. inputs: C-contiguous f32 in PyTorch's layout (NCHW for
  // rank 4); outputs: buffers of the prepared output shapes, PyTorch's layout.
  void run(const std::vector<const float*>& inputs, const std::vector<float*>& outputs);

 private:
  const Model& model_;
  std::unique_ptr<Plan> plan_;
  AlignedBuffer arena_, scratch_;  // one arena / scratch per slot (see Plan::slice_slots)
  size_t arena_stride_ = 0, scratch_stride_ = 0;
  std::vector<RunTables> tables_;
};

class Model {
 public:
  static std::shared_ptr<Model> load_file(const std::string& path, const LoadOptions& options);
  static std::shared_ptr<Model> load_bytes(const uint8_t* data, size_t size, const LoadOptions& options);

  const std::vector<IoInfo>& inputs() const { return inputs_; }
  const std::vector<IoInfo>& outputs() const { return outputs_; }
  const std::vector<format::MetaEntry>& metadata() const { return metadata_; }
  // Graph value index of each output (indexes Plan::value_shapes).
  const std::vector<uint32_t>& output_values() const { return graph_.outputs; }
  std::vector<LayerInfo> layers(const std::vector<Shape>& input_shapes) const;
  // Input shapes with every -1 replaced by 1 (what summary/inspect show).
  std::vector<Shape> default_input_shapes() const;

  std::shared_ptr<ThreadPool> pool() const { return std::atomic_load(&pool_); }
  size_t threads() const { return pool()->threads(); }
  void set_threads(size_t threads);

  // LoadOptions::max_memory in force, and the bytes held for weights after load (every
  // layer's packed / resident weights).
  uint64_t max_memory() const { return max_memory_; }
  uint64_t weight_memory() const { return weight_memory_; }
  Decode decode() const { return decode_; }

  Counters counters() const;
  void reset_counters();

  std::unique_ptr<Context> acquire_context() const;
  void release_context(std::unique_ptr<Context> ctx) const;

  // Internal (Context). make_plan plans for `threads` threads (0: the model's).
  Plan make_plan(const std::vector<Shape>& input_shapes, size_t threads = 0) const;
  // Decides whether `plan`'s batch runs in slices and plans them (see Plan::slice_count).
  void plan_slices(Plan& plan) const;
  // Runs `plan` (whole or in slices); `tables` has one entry per slot, arena and scratch
  // one stride each per slot.
  void execute(const Plan& plan, uint8_t* arena, size_t arena_stride, uint8_t* scratch, size_t scratch_stride,
               std::vector<RunTables>& tables, const std::vector<const float*>& inputs,
               const std::vector<float*>& outputs, ThreadPool& pool) const;

 private:
  void init(const format::File& file, const LoadOptions& options);
  void plan_residual_adds(Plan& plan) const;
  void plan_u8_chains(Plan& plan) const;
  // One pass of the graph over plan's shapes; adds its dynamic counts into `tables`.
  void run_graph(const Plan& plan, uint8_t* arena, uint8_t* scratch, RunTables& tables,
                 const std::vector<const float*>& inputs, const std::vector<float*>& outputs,
                 ThreadPool& pool) const;

  format::Graph graph_;
  std::vector<format::MetaEntry> metadata_;
  std::vector<std::unique_ptr<Layer>> layers_;
  Decode decode_ = Decode::kLoad;
  bool fuse_residual_ = true;  // LoadOptions::force_kernel "unfused" turns it off (tests)
  bool chain_u8_ = true;      // LoadOptions::force_kernel "unchained" turns it off (tests)
  std::vector<IoInfo> inputs_, outputs_;
  std::shared_ptr<ThreadPool> pool_;
  ThreadPool serial_pool_{1};  // the slices of a concurrent micro-batched run (no workers)
  uint64_t max_memory_ = kDefaultMaxMemory, weight_memory_ = 0;
  mutable std::mutex contexts_mutex_;
  mutable std::vector<std::unique_ptr<Context>> contexts_;
  mutable std::mutex counters_mutex_;
  mutable Counters counters_;
};

}  // namespace dsq::rt
