// The C API (csrc/include/deepsqueeze/dsq.h) over rt::Model. Every entry point catches
// everything: the engine's typed errors become status codes, the message goes to a
// thread-local string for dsq_last_error().
#include "deepsqueeze/dsq.h"

#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "base/error.h"
#include "format/file.h"
#include "runtime/model.h"

struct dsq_model {
  std::shared_ptr<dsq::rt::Model> model;
};

namespace {

thread_local std::string g_last_error;

dsq_status fail(dsq_status status, const std::string& message) {
  g_last_error = message;
  return status;
}

// Maps the exception in flight to a status. Order matters: the engine's classes derive
// from the std ones.
dsq_status from_exception() {
  try {
    throw;
  } catch (const dsq::FormatError& e) {
    return fail(DSQ_ERR_FORMAT, std::string("format error: ") + e.what());
  } catch (const dsq::InputError& e) {
    return fail(DSQ_ERR_INPUT, e.what());
  } catch (const dsq::LimitError& e) {
    return fail(DSQ_ERR_UNSUPPORTED, std::string("resource limit: ") + e.what());
  } catch (const dsq::UnsupportedError& e) {
    return fail(DSQ_ERR_UNSUPPORTED, e.what());
  } catch (const std::bad_alloc&) {
    return fail(DSQ_ERR_MEMORY, "out of memory");
  } catch (const std::length_error& e) {
    return fail(DSQ_ERR_MEMORY, std::string("allocation too large: ") + e.what());
  } catch (const std::invalid_argument& e) {
    return fail(DSQ_ERR_INPUT, e.what());
  } catch (const std::exception& e) {
    return fail(DSQ_ERR_INTERNAL, e.what());
  } catch (...) {
    return fail(DSQ_ERR_INTERNAL, "unknown error");
  }
}

// Wraps a body returning dsq_status: clears the message, converts exceptions.
template <class F>
dsq_status guarded(F&& body) noexcept {
  try {
    g_last_error.clear();
    return body();
  } catch (...) {
    return from_exception();
  }
}

dsq_status load(const uint8_t* data, size_t size, const dsq_load_options* opts, dsq_model** out_model) {
  const dsq_load_options defaults{};
  if (!opts) opts = &defaults;
  if (opts->threads < 0) return fail(DSQ_ERR_INPUT, "threads must be >= 0");
  dsq::rt::LoadOptions options;
  options.threads = static_cast<size_t>(opts->threads);
  options.max_memory = opts->max_memory ? opts->max_memory : dsq::rt::kDefaultMaxMemory;
  if (opts->decode != DSQ_DECODE_LOAD && opts->decode != DSQ_DECODE_STREAM)
    return fail(DSQ_ERR_INPUT, "decode must be DSQ_DECODE_LOAD or DSQ_DECODE_STREAM, got " +
                                   std::to_string(opts->decode));
  options.decode = opts->decode == DSQ_DECODE_STREAM ? dsq::rt::Decode::kStream : dsq::rt::Decode::kLoad;
  auto m = std::make_unique<dsq_model>();
  m->model = dsq::rt::Model::load_bytes(data, size, options);
  *out_model = m.release();
  return DSQ_OK;
}

}  // namespace

extern "C" {

const char* dsq_last_error(void) { return g_last_error.c_str(); }

const char* dsq_status_name(dsq_status status) {
  switch (status) {
    case DSQ_OK: return "DSQ_OK";
    case DSQ_ERR_FORMAT: return "DSQ_ERR_FORMAT";
    case DSQ_ERR_INPUT: return "DSQ_ERR_INPUT";
    case DSQ_ERR_UNSUPPORTED: return "DSQ_ERR_UNSUPPORTED";
    case DSQ_ERR_IO: return "DSQ_ERR_IO";
    case DSQ_ERR_MEMORY: return "DSQ_ERR_MEMORY";
    case DSQ_ERR_INTERNAL: return "DSQ_ERR_INTERNAL";
  }
  return "DSQ_ERR_UNKNOWN";
}

dsq_status dsq_model_load_file(const char* path, int threads, dsq_model** out_model) {
  dsq_load_options options{};
  options.threads = threads;
  return dsq_model_load_file_ex(path, &options, out_model);
}

dsq_status dsq_model_load_buffer(const void* data, size_t size, int threads, dsq_model** out_model) {
  dsq_load_options options{};
  options.threads = threads;
  return dsq_model_load_buffer_ex(data, size, &options, out_model);
}

dsq_status dsq_model_load_file_ex(const char* path, const dsq_load_options* options, dsq_model** out_model) {
  return guarded([&] {
    if (!path || !out_model) return fail(DSQ_ERR_INPUT, "dsq_model_load_file: null argument");
    *out_model = nullptr;
    std::unique_ptr<dsq::format::MappedFile> mapped;
    try {
      mapped = std::make_unique<dsq::format::MappedFile>(path);
    } catch (const std::bad_alloc&) {
      throw;
    } catch (const std::exception& e) {
      return fail(DSQ_ERR_IO, e.what());
    }
    // The model copies (packs) what it needs; the mapping is released on return.
    return load(mapped->data(), mapped->size(), options, out_model);
  });
}

dsq_status dsq_model_load_buffer_ex(const void* data, size_t size, const dsq_load_options* options,
                                    dsq_model** out_model) {
  return guarded([&] {
    if (!out_model || (!data && size)) return fail(DSQ_ERR_INPUT, "dsq_model_load_buffer: null argument");
    *out_model = nullptr;
    static const uint8_t empty = 0;
    return load(data ? static_cast<const uint8_t*>(data) : &empty, size, options, out_model);
  });
}

void dsq_model_free(dsq_model* model) { delete model; }

dsq_status dsq_model_num_inputs(const dsq_model* model, int* out_count) {
  return guarded([&] {
    if (!model || !out_count) return fail(DSQ_ERR_INPUT, "dsq_model_num_inputs: null argument");
    *out_count = static_cast<int>(model->model->inputs().size());
    return DSQ_OK;
  });
}

dsq_status dsq_model_num_outputs(const dsq_model* model, int* out_count) {
  return guarded([&] {
    if (!model || !out_count) return fail(DSQ_ERR_INPUT, "dsq_model_num_outputs: null argument");
    *out_count = static_cast<int>(model->model->outputs().size());
    return DSQ_OK;
  });
}

dsq_status dsq_model_input_info(const dsq_model* model, int index, const char** out_name, int* out_rank,
                                int64_t dims[DSQ_MAX_RANK]) {
  return guarded([&] {
    if (!model) return fail(DSQ_ERR_INPUT, "dsq_model_input_info: null model");
    const auto& ins = model->model->inputs();
    if (index < 0 || static_cast<size_t>(index) >= ins.size())
      return fail(DSQ_ERR_INPUT, "input index " + std::to_string(index) + " out of range (the model has " +
                                     std::to_string(ins.size()) + " input(s))");
    const auto& info = ins[static_cast<size_t>(index)];
    if (info.dims.size() > DSQ_MAX_RANK) return fail(DSQ_ERR_UNSUPPORTED, "input rank above DSQ_MAX_RANK");
    if (out_name) *out_name = info.name.c_str();
    if (out_rank) *out_rank = static_cast<int>(info.dims.size());
    if (dims)
      for (size_t k = 0; k < DSQ_MAX_RANK; ++k) dims[k] = k < info.dims.size() ? info.dims[k] : 0;
    return DSQ_OK;
  });
}

dsq_status dsq_model_output_name(const dsq_model* model, int index, const char** out_name) {
  return guarded([&] {
    if (!model || !out_name) return fail(DSQ_ERR_INPUT, "dsq_model_output_name: null argument");
    const auto& outs = model->model->outputs();
    if (index < 0 || static_cast<size_t>(index) >= outs.size())
      return fail(DSQ_ERR_INPUT, "output index " + std::to_string(index) + " out of range");
    *out_name = outs[static_cast<size_t>(index)].name.c_str();
    return DSQ_OK;
  });
}

dsq_status dsq_model_run(dsq_model* model, int n_inputs, const float* const* inputs,
                         const int64_t* const* input_dims, const int* input_ranks, int n_outputs,
                         float* const* outputs, const size_t* output_capacity_elems,
                         int64_t (*output_dims)[DSQ_MAX_RANK], int* output_ranks) {
  return guarded([&] {
    if (!model) return fail(DSQ_ERR_INPUT, "dsq_model_run: null model");
    const dsq::rt::Model& m = *model->model;
    if (n_inputs < 0 || static_cast<size_t>(n_inputs) != m.inputs().size())
      return fail(DSQ_ERR_INPUT, "the model takes " + std::to_string(m.inputs().size()) + " input(s), got " +
                                     std::to_string(n_inputs));
    if (n_outputs < 0 || static_cast<size_t>(n_outputs) != m.outputs().size())
      return fail(DSQ_ERR_INPUT, "the model has " + std::to_string(m.outputs().size()) + " output(s), got " +
                                     std::to_string(n_outputs));
    if (n_inputs && (!inputs || !input_dims || !input_ranks))
      return fail(DSQ_ERR_INPUT, "dsq_model_run: null inputs, input_dims or input_ranks");
    std::vector<dsq::rt::Shape> shapes(static_cast<size_t>(n_inputs));
    std::vector<const float*> in_ptrs(static_cast<size_t>(n_inputs));
    for (int i = 0; i < n_inputs; ++i) {
      const int r = input_ranks[i];
      if (r < 1 || r > DSQ_MAX_RANK || !input_dims[i])
        return fail(DSQ_ERR_INPUT, "input '" + m.inputs()[i].name + "': bad rank " + std::to_string(r));
      shapes[i].dims.assign(input_dims[i], input_dims[i] + r);
      for (int64_t d : shapes[i].dims)
        if (d < 0) return fail(DSQ_ERR_INPUT, "input '" + m.inputs()[i].name + "': negative dimension");
      if (!inputs[i] && shapes[i].numel() > 0)
        return fail(DSQ_ERR_INPUT, "input '" + m.inputs()[i].name + "': null data");
      in_ptrs[i] = inputs[i];
    }
    // The context goes back to the pool on every path (also when prepare/run throw).
    struct Lease {
      const dsq::rt::Model& m;
      std::unique_ptr<dsq::rt::Context> ctx;
      ~Lease() {
        try {
          if (ctx) m.release_context(std::move(ctx));
        } catch (...) {
        }
      }
    } lease{m, m.acquire_context()};
    const dsq::rt::Plan& plan = lease.ctx->prepare(shapes);  // InputError for bad shapes
    std::vector<float*> out_ptrs(static_cast<size_t>(n_outputs));
    bool too_small = false;
    std::string small_msg;
    for (int j = 0; j < n_outputs; ++j) {
      const dsq::rt::Shape& s = plan.value_shapes[m.output_values()[j]];
      if (s.rank() > DSQ_MAX_RANK) return fail(DSQ_ERR_UNSUPPORTED, "output rank above DSQ_MAX_RANK");
      if (output_ranks) output_ranks[j] = s.rank();
      if (output_dims)
        for (int k = 0; k < DSQ_MAX_RANK; ++k) output_dims[j][k] = k < s.rank() ? s.dims[k] : 0;
      const uint64_t need = static_cast<uint64_t>(s.numel());
      const uint64_t have = output_capacity_elems ? output_capacity_elems[j] : 0;
      if (need > have || (need && !(outputs && outputs[j]))) {
        if (!too_small)
          small_msg = "output '" + m.outputs()[j].name + "' of shape " + s.str() + " needs " +
                      std::to_string(need) + " floats, the buffer holds " + std::to_string(have);
        too_small = true;
      } else {
        out_ptrs[j] = outputs[j];
      }
    }
    if (too_small) return fail(DSQ_ERR_INPUT, small_msg);
    lease.ctx->run(in_ptrs, out_ptrs);
    return DSQ_OK;
  });
}

dsq_status dsq_model_counters(const dsq_model* model, dsq_counters* out) {
  return guarded([&] {
    if (!model || !out) return fail(DSQ_ERR_INPUT, "dsq_model_counters: null argument");
    const dsq::rt::Counters c = model->model->counters();
    out->runs = c.runs;
    out->macs_f32 = c.total.macs_f32;
    out->macs_int8 = c.total.macs_int8;
    out->macs_int4 = c.total.macs_int4;
    out->weight_bytes = c.total.weight_bytes;
    out->activation_bytes = c.total.activation_bytes;
    out->skipped_macs = c.total.skipped_macs;
    out->huffman_symbols = c.total.huffman_symbols;
    return DSQ_OK;
  });
}

dsq_status dsq_model_weight_memory(const dsq_model* model, uint64_t* out_bytes) {
  return guarded([&] {
    if (!model || !out_bytes) return fail(DSQ_ERR_INPUT, "dsq_model_weight_memory: null argument");
    *out_bytes = model->model->weight_memory();
    return DSQ_OK;
  });
}

dsq_status dsq_model_reset_counters(dsq_model* model) {
  return guarded([&] {
    if (!model) return fail(DSQ_ERR_INPUT, "dsq_model_reset_counters: null model");
    model->model->reset_counters();
    return DSQ_OK;
  });
}

}  // extern "C"
