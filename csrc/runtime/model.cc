#include "runtime/model.h"

#include <algorithm>
#include <limits>
#include <cstring>
#include <unordered_map>

#include "base/env.h"
#include "base/error.h"

namespace dsq::rt {
namespace {

// Layout changes at graph inputs/outputs: blocked transposes of each image's
// (C x HW) <-> (HW x C) matrix, split over the pool by blocks of rows.
constexpr int64_t kBlock = 32;

void transpose_batch(const float* x, float* y, int64_t N, int64_t rows, int64_t cols, ThreadPool& pool) {
  const int64_t row_blocks = (rows + kBlock - 1) / kBlock;
  const int64_t tasks = N * row_blocks;
  auto body = [&](size_t t) {
    const int64_t n = static_cast<int64_t>(t) / row_blocks, b = static_cast<int64_t>(t) % row_blocks;
    const int64_t r0 = b * kBlock, r1 = std::min(rows, (b + 1) * kBlock);
    transpose(x + (n * rows + r0) * cols, static_cast<size_t>(cols), y + n * rows * cols + r0,
              static_cast<size_t>(rows), static_cast<size_t>(r1 - r0), static_cast<size_t>(cols));
  };
  if (pool.threads() <= 1 || N * rows * cols < (1 << 15)) {
    for (int64_t t = 0; t < tasks; ++t) body(static_cast<size_t>(t));
  } else {
    pool.parallel_for(static_cast<size_t>(tasks), body);
  }
}

size_t align64(size_t n) { return (n + 63) / 64 * 64; }

// Arena bytes of value v: u8 codes and their flag byte, or f32.
size_t value_bytes(const Plan& plan, size_t v) {
  const size_t n = static_cast<size_t>(plan.value_shapes[v].numel());
  return plan.value_u8.size() > v && plan.value_u8[v] ? align64(n) + 64 : align64(n * 4);
}
size_t value_flag_offset(const Plan& plan, size_t v) {
  return static_cast<size_t>(plan.value_offset[v]) + align64(static_cast<size_t>(plan.value_shapes[v].numel()));
}

// Per activation tensor. On 32-bit targets (armv7) the byte size must fit size_t:
// 2^28 floats = 1 GiB, so numel * 4 and the arena offsets below cannot wrap.
constexpr int64_t kMaxElements = sizeof(size_t) >= 8 ? int64_t(1) << 36 : int64_t(1) << 28;

// Micro-batching sizes each slice so its activation arena takes about this many bytes: a
// slice's layers then pass their activations through L2 / the near L3 instead of memory.
// Measured (MobileNetV2-CIFAR int8, batch 64, 1 thread): 49 ms in slices of 1-2 samples
// vs 90 ms whole.
constexpr uint64_t kSliceArenaBytes = uint64_t(2) << 20;

}  // namespace

std::shared_ptr<Model> Model::load_file(const std::string& path, const LoadOptions& options) {
  // Everything the layers need is copied (packed) at load, so the mapping is released
  // before this returns: changing or deleting the file later cannot affect the model.
  format::MappedFile mapped(path);
  return load_bytes(mapped.data(), mapped.size(), options);
}

std::shared_ptr<Model> Model::load_bytes(const uint8_t* data, size_t size, const LoadOptions& options) {
  const format::File file = format::parse(data, size);
  auto model = std::shared_ptr<Model>(new Model());
  model->init(file, options);
  return model;
}

// What building a layer from this tensor allocates at least, checked before it is
// built: the decoded streams; a sparse layout's row pointers and per-column arrays (so
// a tiny file claiming 10^8 columns is refused before they exist); a dense codebook's
// per-element index and code.
static uint64_t unpack_bytes_lower_bound(const format::Tensor& t) {
  uint64_t b = 0;
  for (const auto& s : t.streams) b += format::elem_bytes(s.elem_type, s.count, s.bits);
  if (t.layout != format::Layout::kDense) b += 4 * (t.rows() + 1) + 4 * (t.cols() + 1);
  else if (t.values == format::Values::kCodebook) b += 5 * t.numel();
  return b;
}

static std::string mib(uint64_t bytes) {
  return std::to_string(bytes) + " bytes (" + std::to_string((bytes + (1 << 20) - 1) >> 20) + " MiB)";
}

void Model::init(const format::File& file, const LoadOptions& options) {
  max_memory_ = options.max_memory ? options.max_memory : kDefaultMaxMemory;
  graph_ = file.graph;
  metadata_ = file.metadata;
  for (const auto& in : graph_.inputs) inputs_.push_back({graph_.values[in.value], in.dims});
  for (uint32_t v : graph_.outputs) outputs_.push_back({graph_.values[v], {}});
  decode_ = options.decode;
  fuse_residual_ = options.force_kernel != "unfused";
  chain_u8_ = options.force_kernel != "unchained";
  // Before anything is unpacked: the streams once entropy-decoded are a lower bound of
  // what the packed weights take, so a small Huffman-coded file that expands past the
  // limit is refused before it allocates.
  uint64_t decoded = 0;
  for (const auto& t : file.tensors)
    for (const auto& s : t.streams) decoded += format::elem_bytes(s.elem_type, s.count, s.bits);
  if (decoded > max_memory_)
    throw LimitError("the weights decode to " + mib(decoded) + ", more than max_memory " + mib(max_memory_));
  for (const auto& node : graph_.nodes) {
    uint64_t unpack = 0;
    for (uint32_t w : node.weights)
      if (w != format::kAbsent) unpack += unpack_bytes_lower_bound(file.tensors[w]);
    if (weight_memory_ + unpack > max_memory_)
      throw LimitError("node '" + node.name + "': its weights need at least " + mib(unpack) + " to unpack, on top of " +
                       mib(weight_memory_) + " already packed: more than max_memory " + mib(max_memory_));
    layers_.push_back(make_layer(node, file, options));
    weight_memory_ += layers_.back()->packed_bytes;
    if (weight_memory_ > max_memory_)
      throw LimitError("the packed weights take more than max_memory " + mib(max_memory_) + " (at node '" +
                       node.name + "')");
  }
  // Huffman symbols each weight decoded at load (the energy model reports them apart).
  std::unordered_map<std::string, const format::Tensor*> by_name;
  for (const auto& t : file.tensors) by_name.emplace(t.name, &t);
  for (auto& layer : layers_)
    for (auto& w : layer->weights) {
      auto it = by_name.find(w.name);
      if (it == by_name.end()) continue;
      for (const auto& st : it->second->streams)
        if (st.entropy == format::Entropy::kHuffman) w.huffman_symbols += st.count;
    }
  pool_ = std::make_shared<ThreadPool>(options.threads ? options.threads : hardware_threads());
  // Check the graph plans for the declared shapes (dynamic dims as 1), so a model that
  // cannot run fails at load, not at its first call.
  Plan plan;
  try {
    plan = make_plan(default_input_shapes());
  } catch (const InputError& e) {
    // The file's own declared inputs do not fit its layers: the file is at fault.
    throw UnsupportedError(std::string("the graph cannot run on its declared input shapes: ") + e.what());
  }
  for (size_t i = 0; i < outputs_.size(); ++i) outputs_[i].dims = plan.value_shapes[graph_.outputs[i]].dims;
  for (size_t i = 0; i < outputs_.size(); ++i)
    for (size_t d = 0; d < outputs_[i].dims.size(); ++d)
      if (d == 0 && !inputs_.empty() && !inputs_[0].dims.empty() && inputs_[0].dims[0] == -1) outputs_[i].dims[0] = -1;
}

std::vector<Shape> Model::default_input_shapes() const {
  std::vector<Shape> shapes;
  for (const auto& in : inputs_) {
    Shape s;
    for (int64_t d : in.dims) s.dims.push_back(d < 0 ? 1 : d);
    shapes.push_back(s);
  }
  return shapes;
}

void Model::set_threads(size_t threads) {
  std::atomic_store(&pool_, std::make_shared<ThreadPool>(threads ? threads : hardware_threads()));
}

Plan Model::make_plan(const std::vector<Shape>& input_shapes, size_t threads) const {
  Plan plan;
  plan.input_shapes = input_shapes;
  plan.threads = threads ? threads : this->threads();
  const size_t nv = graph_.values.size();
  if (input_shapes.size() != inputs_.size())
    throw InputError("the model takes " + std::to_string(inputs_.size()) + " input(s), got " +
                     std::to_string(input_shapes.size()));
  plan.value_shapes.assign(nv, Shape{});
  std::vector<bool> known(nv, false);
  for (size_t i = 0; i < inputs_.size(); ++i) {
    const auto& want = inputs_[i].dims;
    const Shape& got = input_shapes[i];
    bool ok = got.dims.size() == want.size();
    for (size_t d = 0; ok && d < want.size(); ++d) ok = want[d] == -1 ? got.dims[d] >= 1 : got.dims[d] == want[d];
    if (!ok) {
      Shape w{want};
      std::string ws = w.str();
      for (size_t p = 0; (p = ws.find("-1", p)) != std::string::npos;) ws.replace(p, 2, "N");
      throw InputError("input '" + inputs_[i].name + "': expected shape " + ws + ", got " + got.str());
    }
    if (got.numel() > kMaxElements) throw InputError("input '" + inputs_[i].name + "' is too large: " + got.str());
    plan.value_shapes[graph_.inputs[i].value] = got;
    known[graph_.inputs[i].value] = true;
  }
  // Shapes, node by node (the file guarantees topological order).
  plan.node_cost.resize(layers_.size());
  for (size_t i = 0; i < layers_.size(); ++i) {
    const auto& node = graph_.nodes[i];
    std::vector<Shape> in;
    for (uint32_t v : node.inputs) in.push_back(plan.value_shapes[v]);
    std::vector<Shape> out = layers_[i]->infer(in);
    if (out.size() != node.outputs.size())
      throw UnsupportedError("node '" + node.name + "' produces " + std::to_string(out.size()) + " outputs, the graph names " +
                             std::to_string(node.outputs.size()));
    for (size_t k = 0; k < out.size(); ++k) {
      if (out[k].numel() > kMaxElements || out[k].rank() < 1 || out[k].rank() > format::kMaxRank)
        throw InputError("node '" + node.name + "' would produce a tensor of shape " + out[k].str() + " (too large)");
      plan.value_shapes[node.outputs[k]] = out[k];
    }
    plan.scratch_bytes = std::max(plan.scratch_bytes, layers_[i]->scratch_bytes(in, out, plan.threads));
    plan.node_in_shapes.push_back(in);
    plan.node_out_shapes.push_back(out);
    plan.node_cost[i] = layers_[i]->cost(in, out);
    plan.node_cost[i].calls = 1;
    plan.total_cost.add(plan.node_cost[i]);
  }
  plan_residual_adds(plan);
  plan_u8_chains(plan);
  // Liveness: a value lives from the node that makes it to its last reader; graph
  // outputs live to the end. Graph inputs of rank != 4 are read in place from the
  // caller's buffer; rank-4 inputs are converted to NHWC into the arena first.
  const int64_t end = static_cast<int64_t>(layers_.size());
  std::vector<int64_t> first(nv, -2), last(nv, -2);
  for (const auto& in : graph_.inputs) first[in.value] = last[in.value] = -1;
  for (int64_t i = 0; i < end; ++i) {
    for (uint32_t v : graph_.nodes[i].inputs) last[v] = std::max(last[v], i);
    for (uint32_t v : graph_.nodes[i].outputs) first[v] = last[v] = i;
  }
  for (uint32_t v : graph_.outputs) last[v] = end;
  // A fused add's output is written by its producer: it must not share memory with
  // anything live from there on (the producer's own input above all).
  for (int64_t i = 0; i < end; ++i)
    if (plan.residual_add[i] >= 0) first[graph_.nodes[plan.residual_add[i]].outputs[0]] = i;
  plan.value_offset.assign(nv, -1);
  struct Placed {
    size_t offset, bytes;
    int64_t first, last;
  };
  std::vector<Placed> placed;
  auto place = [&](uint32_t v) {
    const size_t bytes = value_bytes(plan, v);
    std::vector<std::pair<size_t, size_t>> busy;
    for (const auto& p : placed)
      if (p.first <= last[v] && first[v] <= p.last) busy.push_back({p.offset, p.offset + p.bytes});
    std::sort(busy.begin(), busy.end());
    size_t offset = 0;
    for (const auto& b : busy) {
      if (offset + bytes <= b.first) break;
      offset = std::max(offset, b.second);
    }
    if (offset > std::numeric_limits<size_t>::max() - bytes)
      throw InputError("the activations for input shapes " + input_shapes[0].str() +
                       " do not fit this target's address space");
    placed.push_back({offset, bytes, first[v], last[v]});
    plan.value_offset[v] = static_cast<int64_t>(offset);
    plan.arena_bytes = std::max(plan.arena_bytes, offset + bytes);
  };
  for (size_t i = 0; i < inputs_.size(); ++i)
    if (input_shapes[i].rank() == 4) place(graph_.inputs[i].value);
  for (int64_t i = 0; i < end; ++i)
    for (uint32_t v : graph_.nodes[i].outputs) place(v);
  const uint64_t need = weight_memory_ + plan.arena_bytes + plan.scratch_bytes;
  if (need > max_memory_ || plan.arena_bytes > max_memory_ || plan.scratch_bytes > max_memory_) {
    std::string shapes;
    for (const auto& s : input_shapes) shapes += (shapes.empty() ? "" : ", ") + s.str();
    throw LimitError("input shapes " + shapes + " need " + mib(plan.arena_bytes + plan.scratch_bytes) +
                     " of activations and scratch on top of " + mib(weight_memory_) +
                     " of weights, more than max_memory " + mib(max_memory_));
  }
  return plan;
}

void Model::plan_slices(Plan& plan) const {
  // DSQ_MICRO_BATCH: samples per slice (0: never slice); unset: chosen below.
  const uint64_t forced = env_uint64("DSQ_MICRO_BATCH", UINT64_MAX);
  if (forced == 0 || inputs_.empty() || plan.input_shapes[0].rank() < 1) return;
  const int64_t n = plan.input_shapes[0].dims[0];
  if (n < 2) return;
  for (const auto& in : inputs_)  // a slice needs a batch axis the file leaves open
    if (in.dims.empty() || in.dims[0] != -1) return;
  // Every value must keep the batch on axis 0, and every layer treat samples apart.
  for (const auto& s : plan.value_shapes)
    if (s.rank() < 1 || s.dims[0] != n) return;
  int64_t min_rows = 1;
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (!layers_[i]->per_sample(plan.node_in_shapes[i])) return;
    min_rows = std::max(min_rows, layers_[i]->min_slice_rows());
  }
  const size_t threads = plan.threads;
  int64_t count;
  if (forced != UINT64_MAX) {
    count = static_cast<int64_t>((static_cast<uint64_t>(n) + forced - 1) / forced);
  } else {
    const uint64_t per_sample = std::max<uint64_t>(1, plan.arena_bytes / static_cast<uint64_t>(n));
    const int64_t rows = static_cast<int64_t>(std::max<uint64_t>(1, kSliceArenaBytes / per_sample));
    count = (n + rows - 1) / rows;
    if (threads > 1) count = std::max<int64_t>(count, std::min<int64_t>(n, static_cast<int64_t>(threads)));
    // Each slice reads the weights again: that must cost less than the activation
    // traffic the slices keep in cache.
    const uint64_t w = plan.total_cost.weight_bytes;
    if (w) count = std::min<int64_t>(count, static_cast<int64_t>(plan.total_cost.activation_bytes / w));
  }
  count = std::min(count, n / min_rows);
  if (count < 2) return;
  const int64_t q = n / count, larger = n % count;
  const size_t slots = threads > 1 ? std::min<size_t>(threads, static_cast<size_t>(count)) : 1;
  std::shared_ptr<const Plan> parts[2];
  uint64_t arena = 0, scratch = 0;
  for (int k = 0; k < 2; ++k) {
    if (k == 1 && larger == 0) break;
    const int64_t rows = q + k;
    std::vector<Shape> shapes = plan.input_shapes;
    for (auto& s : shapes) s.dims[0] = rows;
    auto part = std::make_shared<Plan>(make_plan(shapes, slots > 1 ? 1 : threads));
    for (size_t v = 0; v < part->value_shapes.size(); ++v) {
      Shape whole = part->value_shapes[v];
      if (whole.rank() < 1 || whole.dims[0] != rows) return;
      whole.dims[0] = n;
      if (whole != plan.value_shapes[v]) return;
    }
    arena = std::max<uint64_t>(arena, align64(part->arena_bytes));
    scratch = std::max<uint64_t>(scratch, align64(part->scratch_bytes));
    parts[k] = std::move(part);
  }
  if (weight_memory_ + slots * (arena + scratch) > max_memory_) return;
  plan.slice_count = count;
  plan.slice_rows = q;
  plan.slice_larger = larger;
  plan.slice_slots = slots;
  plan.slice_plan[0] = std::move(parts[0]);
  plan.slice_plan[1] = std::move(parts[1]);
}

void Model::run_graph(const Plan& plan, uint8_t* arena, uint8_t* scratch, RunTables& tables,
                      const std::vector<const float*>& inputs, const std::vector<float*>& outputs,
                      ThreadPool& pool) const {
  const size_t nv = graph_.values.size();
  std::vector<const float*>& ptr = tables.value_ptr;
  ptr.resize(nv);  // sized at prepare(): no allocation here
  tables.node_in.resize(layers_.size());
  tables.node_out.resize(layers_.size());
  for (size_t v = 0; v < nv; ++v)
    ptr[v] = plan.value_offset[v] >= 0 ? reinterpret_cast<const float*>(arena + plan.value_offset[v]) : nullptr;
  for (size_t i = 0; i < inputs_.size(); ++i) {
    const uint32_t v = graph_.inputs[i].value;
    const Shape& s = plan.value_shapes[v];
    if (s.rank() == 4) {
      transpose_batch(inputs[i], const_cast<float*>(ptr[v]), s.dims[0], s.dims[1], s.dims[2] * s.dims[3], pool);
    } else {
      ptr[v] = inputs[i];
    }
  }
  std::vector<uint64_t>& node_skipped = tables.node_skipped;
  uint64_t skipped_macs = 0;
  RunEnv env{&pool, scratch, &skipped_macs, &tables.huffman_symbols};
  for (size_t i = 0; i < layers_.size(); ++i) {
    const uint64_t skipped_before = skipped_macs;
    const auto& node = graph_.nodes[i];
    auto& in = tables.node_in[i];
    auto& out = tables.node_out[i];
    in.resize(node.inputs.size());
    out.resize(node.outputs.size());
    if (plan.fused_away[i]) continue;  // done by its producer
    for (size_t k = 0; k < node.inputs.size(); ++k) in[k] = ptr[node.inputs[k]];
    for (size_t k = 0; k < node.outputs.size(); ++k) out[k] = const_cast<float*>(ptr[node.outputs[k]]);
    RunEnv chained = env;
    if (plan.node_u8_in[i] >= 0) {
      const size_t v = static_cast<size_t>(plan.node_u8_in[i]);
      chained.in_u8 = arena + plan.value_offset[v];
      chained.in_bad = arena[value_flag_offset(plan, v)] != 0;
    }
    if (plan.node_u8_out[i] >= 0) {
      const size_t v = static_cast<size_t>(plan.node_u8_out[i]);
      chained.out_u8 = arena + plan.value_offset[v];
      chained.out_quant = plan.value_quant[v];
      chained.out_bad = arena + value_flag_offset(plan, v);
    }
    if (plan.residual_add[i] >= 0) {
      const int64_t j = plan.residual_add[i];
      out[0] = const_cast<float*>(ptr[graph_.nodes[j].outputs[0]]);
      RunEnv fused = chained;
      fused.residual = ptr[plan.residual_value[i]];
      layers_[j]->residual_add_range(&fused.residual_lo, &fused.residual_hi);
      layers_[i]->run(in, plan.node_in_shapes[i], out, plan.node_out_shapes[i], fused);
    } else {
      layers_[i]->run(in, plan.node_in_shapes[i], out, plan.node_out_shapes[i], chained);
    }
    node_skipped[i] += skipped_macs - skipped_before;
  }
  for (size_t i = 0; i < outputs_.size(); ++i) {
    const uint32_t v = graph_.outputs[i];
    const Shape& s = plan.value_shapes[v];
    const bool stored_nhwc = s.rank() == 4 && plan.value_offset[v] >= 0;
    if (stored_nhwc)
      transpose_batch(ptr[v], outputs[i], s.dims[0], s.dims[2] * s.dims[3], s.dims[1], pool);
    else
      std::memcpy(outputs[i], ptr[v], static_cast<size_t>(s.numel()) * 4);
  }
}

void Model::execute(const Plan& plan, uint8_t* arena, size_t arena_stride, uint8_t* scratch, size_t scratch_stride,
                    std::vector<RunTables>& tables, const std::vector<const float*>& inputs,
                    const std::vector<float*>& outputs, ThreadPool& pool) const {
  for (auto& t : tables) {
    t.node_skipped.assign(layers_.size(), 0);  // sized at the first run: no allocation after
    t.huffman_symbols = 0;
  }
  if (plan.slice_count == 0) {
    run_graph(plan, arena, scratch, tables[0], inputs, outputs, pool);
  } else {
    // Slice s covers samples [first, first + rows): the larger slices come first.
    auto run_slice = [&](size_t s, size_t slot) {
      const int64_t big = plan.slice_larger, q = plan.slice_rows, idx = static_cast<int64_t>(s);
      const int64_t first = idx < big ? idx * (q + 1) : big * (q + 1) + (idx - big) * q;
      const Plan& part = *plan.slice_plan[idx < big ? 1 : 0];
      RunTables& t = tables[slot];
      const int64_t n = plan.input_shapes[0].dims[0];
      for (size_t i = 0; i < inputs.size(); ++i)
        t.slice_in[i] = inputs[i] + plan.input_shapes[i].numel() / n * first;
      for (size_t i = 0; i < outputs.size(); ++i)
        t.slice_out[i] = outputs[i] + plan.value_shapes[graph_.outputs[i]].numel() / n * first;
      run_graph(part, arena + slot * arena_stride, scratch + slot * scratch_stride, t, t.slice_in, t.slice_out,
                plan.slice_slots > 1 ? const_cast<ThreadPool&>(serial_pool_) : pool);
    };
    if (plan.slice_slots > 1) {
      pool.parallel_chunks(static_cast<size_t>(plan.slice_count), plan.slice_slots, run_slice);
    } else {
      for (int64_t s = 0; s < plan.slice_count; ++s) run_slice(static_cast<size_t>(s), 0);
    }
  }
  std::lock_guard<std::mutex> lock(counters_mutex_);
  ++counters_.runs;
  if (counters_.layers.size() != layers_.size()) counters_.layers.assign(layers_.size(), Cost{});
  auto add_plan = [&](const Plan& p, uint64_t times) {
    counters_.total.add(p.total_cost, times);
    for (size_t i = 0; i < layers_.size(); ++i) counters_.layers[i].add(p.node_cost[i], times);
  };
  if (plan.slice_count == 0) {
    add_plan(plan, 1);
  } else {
    if (plan.slice_larger) add_plan(*plan.slice_plan[1], static_cast<uint64_t>(plan.slice_larger));
    add_plan(*plan.slice_plan[0], static_cast<uint64_t>(plan.slice_count - plan.slice_larger));
  }
  for (const auto& t : tables) {
    counters_.total.huffman_symbols += t.huffman_symbols;
    for (size_t i = 0; i < layers_.size(); ++i) {
      counters_.total.skipped_macs += t.node_skipped[i];
      counters_.layers[i].skipped_macs += t.node_skipped[i];
    }
  }
}

const Plan& Context::prepare(const std::vector<Shape>& input_shapes) {
  if (plan_ && plan_->input_shapes == input_shapes && plan_->threads == model_.threads()) return *plan_;
  auto plan = std::make_unique<Plan>(model_.make_plan(input_shapes));
  model_.plan_slices(*plan);
  size_t slots = 1;
  arena_stride_ = plan->arena_bytes;
  scratch_stride_ = plan->scratch_bytes;
  if (plan->slice_count) {
    slots = std::max<size_t>(1, plan->slice_slots);
    arena_stride_ = scratch_stride_ = 0;
    for (const auto& part : plan->slice_plan)
      if (part) {
        arena_stride_ = std::max(arena_stride_, align64(part->arena_bytes));
        scratch_stride_ = std::max(scratch_stride_, align64(part->scratch_bytes));
      }
  }
  if (arena_.size() < arena_stride_ * slots) arena_.resize(arena_stride_ * slots);
  if (scratch_.size() < scratch_stride_ * slots) scratch_.resize(scratch_stride_ * slots);
  if (tables_.size() < slots) tables_.resize(slots);
  for (auto& t : tables_) {
    t.slice_in.resize(input_shapes.size());
    t.slice_out.resize(model_.outputs().size());
  }
  plan_ = std::move(plan);
  return *plan_;
}

void Context::run(const std::vector<const float*>& inputs, const std::vector<float*>& outputs) {
  auto pool = model_.pool();
  if (plan_->threads != pool->threads()) prepare(std::vector<Shape>(plan_->input_shapes));
  model_.execute(*plan_, arena_.as<uint8_t>(), arena_stride_, scratch_.as<uint8_t>(), scratch_stride_, tables_,
                 inputs, outputs, *pool);
}

std::unique_ptr<Context> Model::acquire_context() const {
  {
    std::lock_guard<std::mutex> lock(contexts_mutex_);
    if (!contexts_.empty()) {
      auto ctx = std::move(contexts_.back());
      contexts_.pop_back();
      return ctx;
    }
  }
  return std::make_unique<Context>(*this);
}

void Model::release_context(std::unique_ptr<Context> ctx) const {
  std::lock_guard<std::mutex> lock(contexts_mutex_);
  contexts_.push_back(std::move(ctx));
}

Counters Model::counters() const {
  std::lock_guard<std::mutex> lock(counters_mutex_);
  return counters_;
}

void Model::reset_counters() {
  std::lock_guard<std::mutex> lock(counters_mutex_);
  counters_ = Counters{};
}

void Model::plan_residual_adds(Plan& plan) const {
  const size_t n = layers_.size(), nv = graph_.values.size();
  plan.residual_add.assign(n, -1);
  plan.residual_value.assign(n, -1);
  plan.fused_away.assign(n, false);
  if (!fuse_residual_) return;
  std::vector<int64_t> producer(nv, -1), readers(nv, 0);
  for (size_t i = 0; i < n; ++i) {
    for (uint32_t v : graph_.nodes[i].outputs) producer[v] = static_cast<int64_t>(i);
    for (uint32_t v : graph_.nodes[i].inputs) ++readers[v];
  }
  for (uint32_t v : graph_.outputs) ++readers[v];
  for (size_t j = 0; j < n; ++j) {
    const auto& add = graph_.nodes[j];
    float lo, hi;
    if (!layers_[j]->residual_add_range(&lo, &hi) || add.inputs.size() != 2 || add.outputs.size() != 1) continue;
    const Shape& out = plan.node_out_shapes[j][0];
    if (plan.node_in_shapes[j][0] != out || plan.node_in_shapes[j][1] != out) continue;  // broadcasting
    for (size_t k = 0; k < 2; ++k) {
      const uint32_t u = add.inputs[k], v = add.inputs[1 - k];
      const int64_t i = producer[u];
      if (i < 0 || u == v || readers[u] != 1 || plan.residual_add[i] >= 0 || producer[v] >= i) continue;
      if (graph_.nodes[i].outputs.size() != 1 || !layers_[i]->fuses_residual()) continue;
      plan.residual_add[i] = static_cast<int64_t>(j);
      plan.residual_value[i] = v;
      plan.fused_away[j] = true;
      break;
    }
  }
}

void Model::plan_u8_chains(Plan& plan) const {
  const size_t n = layers_.size(), nv = graph_.values.size();
  plan.value_u8.assign(nv, false);
  plan.value_quant.assign(nv, gemm_qu8::QuantParams{1.f, 0});
  plan.node_u8_out.assign(n, -1);
  plan.node_u8_in.assign(n, -1);
  if (!chain_u8_) return;
  std::vector<int64_t> producer(nv, -1), reader(nv, -1), readers(nv, 0);
  for (size_t i = 0; i < n; ++i) {
    for (uint32_t v : graph_.nodes[i].outputs) producer[v] = static_cast<int64_t>(i);
    for (uint32_t v : graph_.nodes[i].inputs) ++readers[v], reader[v] = static_cast<int64_t>(i);
  }
  for (uint32_t v : graph_.outputs) ++readers[v];
  for (size_t v = 0; v < nv; ++v) {
    const int64_t i = producer[v], j = reader[v];
    if (i < 0 || j < 0 || readers[v] != 1 || plan.fused_away[i] || plan.fused_away[j]) continue;
    // The producer writes one plain output (no folded add); the reader takes it as its
    // only input.
    if (graph_.nodes[i].outputs.size() != 1 || plan.residual_add[i] >= 0) continue;
    if (graph_.nodes[j].inputs.size() != 1 || graph_.nodes[j].inputs[0] != v) continue;
    gemm_qu8::QuantParams q;
    if (!layers_[j]->takes_u8_input(plan.node_in_shapes[j], plan.node_out_shapes[j], &q)) continue;
    if (!layers_[i]->gives_u8_output(plan.node_in_shapes[i], plan.node_out_shapes[i], q)) continue;
    plan.value_u8[v] = true;
    plan.value_quant[v] = q;
    plan.node_u8_out[i] = static_cast<int64_t>(v);
    plan.node_u8_in[j] = static_cast<int64_t>(v);
    // One byte per element crosses the edge instead of four, written and read once.
    const uint64_t saved = 3 * static_cast<uint64_t>(plan.value_shapes[v].numel());
    for (const int64_t k : {i, j}) {
      plan.node_cost[k].activation_bytes -= saved;
      plan.total_cost.activation_bytes -= saved;
    }
  }
}

std::vector<LayerInfo> Model::layers(const std::vector<Shape>& input_shapes) const {
  const Plan plan = make_plan(input_shapes);
  std::vector<LayerInfo> out;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const auto& node = graph_.nodes[i];
    LayerInfo info;
    info.name = node.name;
    info.op = format::op_name(node.op);
    info.kernel = layers_[i]->kernel();
    if (plan.fused_away[i])
      for (size_t p = 0; p < layers_.size(); ++p)
        if (plan.residual_add[p] == static_cast<int64_t>(i)) info.kernel += " (fused into '" + graph_.nodes[p].name + "')";
    if (plan.node_u8_in[i] >= 0 || plan.node_u8_out[i] >= 0)
      info.kernel += std::string(" [u8 ") + (plan.node_u8_in[i] >= 0 ? "in" : "") +
                     (plan.node_u8_in[i] >= 0 && plan.node_u8_out[i] >= 0 ? ", " : "") +
                     (plan.node_u8_out[i] >= 0 ? "out" : "") + "]";
    for (uint32_t v : node.inputs) info.input_shapes.push_back(plan.value_shapes[v]);
    for (uint32_t v : node.outputs) info.output_shapes.push_back(plan.value_shapes[v]);
    info.weights = layers_[i]->weights;
    info.packed_bytes = layers_[i]->packed_bytes;
    info.decode = layers_[i]->stream_decoded ? "stream" : "load";
    info.cost = plan.node_cost[i];
    out.push_back(std::move(info));
  }
  return out;
}

}  // namespace dsq::rt
