// pybind11 module _core: a thin layer over the C++ engine. The GIL is released while a
// model runs; errors become deepsqueeze.FormatError / ValueError / UnsupportedModelError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>

#include "base/crc32c.h"
#include "base/cpu.h"
#include "base/error.h"
#include "base/huffman.h"
#include "format/file.h"
#include "format/matrix.h"
#include "kernels/dwconv_f32/dwconv_f32.h"
#include "kernels/dwconv_qu8/dwconv_qu8.h"
#include "kernels/gemm_f32/gemm_f32.h"
#include "kernels/gemm_q4/gemm_q4.h"
#include "kernels/gemm_qu8/gemm_qu8.h"
#include "kernels/spmm_f32/spmm_f32.h"
#include "kernels/spmm_qu8/spmm_qu8.h"
#include "runtime/model.h"

namespace py = pybind11;
using namespace dsq;

namespace {

using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;

py::dict cost_dict(const rt::Cost& c) {
  py::dict d;
  d["macs_f32"] = c.macs_f32;
  d["macs_int8"] = c.macs_int8;
  d["macs_int4"] = c.macs_int4;
  d["weight_bytes"] = c.weight_bytes;
  d["activation_bytes"] = c.activation_bytes;
  d["skipped_macs"] = c.skipped_macs;
  d["huffman_symbols"] = c.huffman_symbols;
  d["calls"] = c.calls;
  d["table_lookups"] = c.table_lookups;
  return d;
}

std::vector<int64_t> dims_of(const py::array& a) {
  std::vector<int64_t> d;
  for (py::ssize_t i = 0; i < a.ndim(); ++i) d.push_back(a.shape(i));
  return d;
}

// The engine's Model as seen from Python.
class PyModel {
 public:
  explicit PyModel(std::shared_ptr<rt::Model> m) : model_(std::move(m)) {}

  static rt::Decode decode_mode(const std::string& decode) {
    if (decode == "load") return rt::Decode::kLoad;
    if (decode == "stream") return rt::Decode::kStream;
    throw InputError("decode must be \"load\" or \"stream\", got \"" + decode + "\"");
  }
  static PyModel from_file(const std::string& path, size_t threads, const std::string& force_kernel,
                           uint64_t max_memory, const std::string& decode) {
    rt::LoadOptions o;
    o.threads = threads;
    o.max_memory = max_memory ? max_memory : rt::kDefaultMaxMemory;
    o.force_kernel = force_kernel;
    o.decode = decode_mode(decode);
    std::shared_ptr<rt::Model> m;
    {
      py::gil_scoped_release release;
      m = rt::Model::load_file(path, o);
    }
    return PyModel(std::move(m));
  }
  static PyModel from_bytes(const py::buffer& buf, size_t threads, const std::string& force_kernel,
                            uint64_t max_memory, const std::string& decode) {
    const py::buffer_info info = buf.request();
    rt::LoadOptions o;
    o.threads = threads;
    o.force_kernel = force_kernel;
    o.max_memory = max_memory ? max_memory : rt::kDefaultMaxMemory;
    o.decode = decode_mode(decode);
    // The GIL stays held: another thread must not change a bytearray while it is parsed.
    return PyModel(rt::Model::load_bytes(static_cast<const uint8_t*>(info.ptr),
                                         static_cast<size_t>(info.size * info.itemsize), o));
  }

  py::list run(const py::sequence& inputs) {
    const auto& want = model_->inputs();
    const size_t n = static_cast<size_t>(py::len(inputs));
    if (n != want.size())
      throw InputError("the model takes " + std::to_string(want.size()) + " input(s), got " + std::to_string(n));
    std::vector<py::array> keep;
    keep.reserve(n);
    for (size_t i = 0; i < n; ++i) keep.push_back(checked_input(inputs[i], i));
    std::vector<py::array_t<float>> outs = run_arrays(keep);
    py::list result;
    for (auto& a : outs) result.append(a);
    return result;
  }

  // Fast path of Model.run for one input and one output (batch-1 calls are dominated by
  // the call overhead): no sequence, no list, the output array returned directly.
  py::array run_one(const py::handle& x) {
    if (model_->inputs().size() != 1 || model_->outputs().size() != 1)
      throw InputError("run_one needs a model with one input and one output");
    std::vector<py::array> keep{checked_input(x, 0)};
    return std::move(run_arrays(keep)[0]);
  }

 private:
  py::array checked_input(const py::handle& h, size_t i) const {
    const auto& want = model_->inputs();
    if (!py::isinstance<py::array>(h))
      throw InputError("input '" + want[i].name + "': expected a numpy array of float32, got " +
                       std::string(py::str(py::type::handle_of(h).attr("__name__"))));
    py::array a = py::reinterpret_borrow<py::array>(h);
    if (!a.dtype().is(py::dtype::of<float>()))
      throw InputError("input '" + want[i].name + "': expected dtype float32, got " + std::string(py::str(a.dtype())));
    return a;
  }

  // Strided inputs are copied (once) only after the shapes and the memory limit passed.
  std::vector<py::array_t<float>> run_arrays(std::vector<py::array>& arrays) {
    std::vector<rt::Shape> shapes;
    std::vector<const float*> ptrs;
    shapes.reserve(arrays.size());
    ptrs.reserve(arrays.size());
    for (const auto& a : arrays) {
      shapes.push_back(rt::Shape{dims_of(a)});
    }
    std::unique_ptr<rt::Context> ctx = model_->acquire_context();
    struct Release {
      const rt::Model& m;
      std::unique_ptr<rt::Context>& c;
      ~Release() { m.release_context(std::move(c)); }
    } release_guard{*model_, ctx};
    // Shapes and the memory limit are checked before a strided input is copied, so a
    // huge broadcast view fails with a clear error instead of an allocation attempt.
    const rt::Plan& plan = ctx->prepare(shapes);
    for (auto& a : arrays) {
      if (!(a.flags() & py::array::c_style)) a = F32Array::ensure(a);  // one copy for strided input
      ptrs.push_back(static_cast<const float*>(a.data()));
    }
    std::vector<float*> outs;
    std::vector<py::array_t<float>> out_arrays;
    out_arrays.reserve(model_->outputs().size());
    for (size_t i = 0; i < model_->outputs().size(); ++i) {
      // output value index -> shape
      const auto& s = plan.value_shapes[model_->output_values()[i]];
      out_arrays.emplace_back(s.dims);
      outs.push_back(out_arrays.back().mutable_data());
    }
    {
      py::gil_scoped_release release;
      ctx->run(ptrs, outs);
    }
    return out_arrays;
  }

 public:
  py::list io(bool inputs) const {
    py::list out;
    for (const auto& io : inputs ? model_->inputs() : model_->outputs()) {
      py::dict d;
      d["name"] = io.name;
      py::list dims;
      for (int64_t v : io.dims) {
        if (v < 0) dims.append(py::none());
        else dims.append(v);
      }
      d["shape"] = py::tuple(dims);
      d["dtype"] = "float32";
      out.append(d);
    }
    return out;
  }

  py::list layers(py::object input_shapes) const {
    std::vector<rt::Shape> shapes = model_->default_input_shapes();
    if (!input_shapes.is_none()) {
      shapes.clear();
      for (auto s : input_shapes) shapes.push_back(rt::Shape{s.cast<std::vector<int64_t>>()});
    }
    py::list out;
    for (const auto& l : model_->layers(shapes)) {
      py::dict d;
      d["name"] = l.name;
      d["op"] = l.op;
      d["kernel"] = l.kernel;
      py::list ins, outs, ws;
      for (const auto& s : l.input_shapes) ins.append(py::tuple(py::cast(s.dims)));
      for (const auto& s : l.output_shapes) outs.append(py::tuple(py::cast(s.dims)));
      for (const auto& w : l.weights) {
        py::dict wd;
        wd["name"] = w.name;
        wd["shape"] = py::tuple(py::cast(w.dims));
        wd["values"] = w.values;
        wd["layout"] = w.layout;
        wd["entropy"] = w.entropy;
        wd["payload_bytes"] = w.payload_bytes;
        wd["f32_bytes"] = w.f32_bytes;
        wd["huffman_symbols"] = w.huffman_symbols;
        ws.append(wd);
      }
      d["input_shapes"] = ins;
      d["output_shapes"] = outs;
      d["weights"] = ws;
      d["packed_bytes"] = l.packed_bytes;
      d["decode"] = l.decode;
      d["cost"] = cost_dict(l.cost);
      out.append(d);
    }
    return out;
  }

  py::dict counters() const {
    const rt::Counters c = model_->counters();
    py::dict d = cost_dict(c.total);
    d["runs"] = c.runs;
    return d;
  }
  // Per graph node (layers() order), summed over the runs since load / reset.
  py::list layer_counters() const {
    const rt::Counters c = model_->counters();
    py::list out;
    for (const auto& cost : c.layers) out.append(cost_dict(cost));
    return out;
  }
  void reset_counters() { model_->reset_counters(); }

  py::dict metadata() const {
    py::dict d;
    for (const auto& e : model_->metadata()) {
      if (e.type == format::MetaType::kString) d[py::str(e.key)] = py::str(e.s);
      else if (e.type == format::MetaType::kInt) d[py::str(e.key)] = e.i;
      else d[py::str(e.key)] = e.f;
    }
    return d;
  }
  uint64_t weight_memory() const { return model_->weight_memory(); }
  std::string decode() const { return model_->decode() == rt::Decode::kStream ? "stream" : "load"; }
  size_t threads() const { return model_->threads(); }
  const std::shared_ptr<rt::Model>& model() const { return model_; }
  void set_threads(size_t n) { model_->set_threads(n); }

 private:
  std::shared_ptr<rt::Model> model_;
};

template <typename T>
const T* check_2d(const py::array_t<T, py::array::c_style | py::array::forcecast>& a, const char* name, size_t rows,
                  size_t cols) {
  if (a.ndim() != 2 || static_cast<size_t>(a.shape(0)) != rows || static_cast<size_t>(a.shape(1)) != cols)
    throw InputError(std::string(name) + ": expected shape (" + std::to_string(rows) + ", " + std::to_string(cols) + ")");
  return a.data();
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "deepsqueeze C++ engine (internal; use the deepsqueeze package)";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const FormatError& e) {
      py::object cls = py::module_::import("deepsqueeze.format").attr("FormatError");
      PyErr_SetObject(cls.ptr(), cls(e.what(), e.section(), e.offset()).ptr());
    } catch (const InputError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const LimitError& e) {
      py::object cls = py::module_::import("deepsqueeze.errors").attr("ResourceLimitError");
      PyErr_SetObject(cls.ptr(), cls(e.what()).ptr());
    } catch (const UnsupportedError& e) {
      py::object cls = py::module_::import("deepsqueeze.errors").attr("UnsupportedModelError");
      PyErr_SetObject(cls.ptr(), cls(e.what()).ptr());
    }
  });

  m.def("crc32c", [](const py::buffer& b) {
    const py::buffer_info info = b.request();
    return crc32c(info.ptr, static_cast<size_t>(info.size * info.itemsize));
  });

  m.def("huffman_encode", [](const py::buffer& symbols, unsigned alphabet, unsigned max_len, uint32_t chunk_symbols) {
    const py::buffer_info info = symbols.request();
    if (info.itemsize != 1) throw std::invalid_argument("huffman_encode: symbols must be bytes / uint8");
    const std::vector<uint8_t> out = huffman::encode(static_cast<const uint8_t*>(info.ptr),
                                                     static_cast<uint64_t>(info.size), alphabet, max_len, chunk_symbols);
    return py::bytes(reinterpret_cast<const char*>(out.data()), out.size());
  }, py::arg("symbols"), py::arg("alphabet"), py::arg("max_len") = 15, py::arg("chunk_symbols") = 4096);
  m.def("huffman_decode", [](const py::buffer& data, uint64_t count, unsigned alphabet) {
    const py::buffer_info info = data.request();
    const huffman::Stream s = huffman::parse(static_cast<const uint8_t*>(info.ptr),
                                             static_cast<uint64_t>(info.size * info.itemsize), count, alphabet);
    const huffman::Decoder decoder(s);
    py::array_t<uint8_t> out(static_cast<py::ssize_t>(count));
    uint8_t* dst = out.mutable_data();
    {
      py::gil_scoped_release release;
      decoder.decode_all(dst);
    }
    return out;
  }, py::arg("data"), py::arg("count"), py::arg("alphabet"));

  m.def("format_roundtrip", [](const py::bytes& data) {
    const std::string s = data;
    const format::File f = format::parse(reinterpret_cast<const uint8_t*>(s.data()), s.size());
    const std::vector<uint8_t> out = format::serialize(f);
    return py::bytes(reinterpret_cast<const char*>(out.data()), out.size());
  }, "Parse bytes with the C++ reader and serialize them again with the C++ writer.");

  m.def("decode_tensor_dense", [](const py::bytes& data, size_t index) {
    const std::string s = data;
    const format::File f = format::parse(reinterpret_cast<const uint8_t*>(s.data()), s.size());
    if (index >= f.tensors.size())
      throw InputError("tensor index " + std::to_string(index) + " out of range (" +
                       std::to_string(f.tensors.size()) + " tensors)");
    const format::Tensor& t = f.tensors[index];
    const std::vector<float> v = format::decode_dense(t);
    std::vector<py::ssize_t> shape(t.dims.begin(), t.dims.end());
    py::array_t<float> out(shape);
    std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(float));
    return out;
  }, py::arg("file_bytes"), py::arg("tensor_index"),
     "C++ decode of one tensor of a file (any encoding) to a dense float32 array of its dims.");

  m.def("decode_tensor_sparse", [](const py::bytes& data, size_t index) {
    const std::string s = data;
    const format::File f = format::parse(reinterpret_cast<const uint8_t*>(s.data()), s.size());
    if (index >= f.tensors.size())
      throw InputError("tensor index " + std::to_string(index) + " out of range");
    const format::SparseRows m = format::decode_sparse(f.tensors[index]);
    py::dict d;
    d["rows"] = m.rows;
    d["cols"] = m.cols;
    d["row_ptr"] = py::array_t<uint32_t>(m.row_ptr.size(), m.row_ptr.data());
    d["col"] = py::array_t<uint32_t>(m.col.size(), m.col.data());
    d["coded"] = m.coded;
    if (m.coded) {
      d["codes"] = py::array_t<uint8_t>(m.codes.size(), m.codes.data());
      d["table"] = py::array_t<float>(m.table.size(), m.table.data());
      d["table_entries"] = m.table_entries;
      d["per_row"] = m.per_row;
    } else {
      d["values"] = py::array_t<float>(m.values.size(), m.values.data());
    }
    return d;
  }, py::arg("file_bytes"), py::arg("tensor_index"),
     "C++ format::decode_sparse of one tensor: its stored entries row by row (a dict).");

  m.def("kernels", []() {
    py::list out;
    auto add = [&](const char* family, const char* name, Isa isa, size_t mr, size_t nr) {
      py::dict d;
      d["family"] = family;
      d["name"] = name;
      d["isa"] = isa_name(isa);
      d["mr"] = mr;
      d["nr"] = nr;
      d["supported"] = isa_supported(isa);
      out.append(d);
    };
    for (const auto& k : gemm_f32::all_ukernels()) add("gemm_f32", k.name, k.isa, k.mr, k.nr);
    for (const auto& k : gemm_qu8::all_ukernels()) add("gemm_qu8", k.name, k.isa, k.mr, k.nr);
    for (const auto& k : gemm_q4::all_ukernels()) add("gemm_q4", k.name, k.isa, k.mr, k.nr);
    for (const auto& k : spmm_f32::all_ukernels()) add("spmm_f32", k.name, k.isa, k.mr, 1);
    for (const auto& k : spmm_qu8::all_ukernels()) add("spmm_qu8", k.name, k.isa, k.mr, 1);
    for (const auto& k : dwconv_f32::all_ukernels()) add("dwconv_f32", k.name, k.isa, 1, 1);
    for (const auto& k : dwconv_qu8::all_ukernels()) add("dwconv_qu8", k.name, k.isa, 1, 1);
    return out;
  });

  m.def("gemm_f32", [](const std::string& kernel, F32Array a, F32Array w, py::object bias, float lo, float hi) {
    const auto* uk = gemm_f32::find_ukernel(kernel.c_str());
    if (!uk) throw InputError("kernel '" + kernel + "' is not available");
    if (a.ndim() != 2 || w.ndim() != 2 || a.shape(1) != w.shape(1)) throw InputError("gemm_f32: a (M, K), w (N, K)");
    const size_t M = a.shape(0), K = a.shape(1), N = w.shape(0);
    std::vector<float> b(N, 0.f);
    if (!bias.is_none()) {
      F32Array ba = bias.cast<F32Array>();
      if (static_cast<size_t>(ba.size()) != N) throw InputError("gemm_f32: bias must have N values");
      std::memcpy(b.data(), ba.data(), N * 4);
    }
    const auto packed = gemm_f32::pack(w.data(), b.data(), N, K, uk->nr);
    py::array_t<float> c({M, N});
    gemm_f32::run(*uk, packed, a.data(), K * 4, c.mutable_data(), N * 4, 0, M, 0, packed.panel_count(), lo, hi);
    return c;
  });

  m.def("gemm_qu8", [](const std::string& kernel, py::array_t<uint8_t, py::array::c_style | py::array::forcecast> qa,
                       py::array_t<int8_t, py::array::c_style | py::array::forcecast> qw, F32Array w_scale,
                       py::object bias, int32_t a_zero, float a_scale, float lo, float hi) {
    const auto* uk = gemm_qu8::find_ukernel(kernel.c_str());
    if (!uk) throw InputError("kernel '" + kernel + "' is not available");
    if (qa.ndim() != 2 || qw.ndim() != 2 || qa.shape(1) != qw.shape(1)) throw InputError("gemm_qu8: qa (M, K), qw (N, K)");
    const size_t M = qa.shape(0), K = qa.shape(1), N = qw.shape(0), kp = gemm_qu8::padded_k(K);
    if (static_cast<size_t>(w_scale.size()) != N) throw InputError("gemm_qu8: w_scale must have N values");
    std::vector<float> b(N, 0.f);
    if (!bias.is_none()) std::memcpy(b.data(), bias.cast<F32Array>().data(), N * 4);
    const auto packed = gemm_qu8::pack(qw.data(), w_scale.data(), b.data(), N, K, uk->nr);
    std::vector<uint8_t> a(M * kp, 0);
    for (size_t i = 0; i < M; ++i) std::memcpy(a.data() + i * kp, qa.data() + i * K, K);
    py::array_t<float> c({M, N});
    gemm_qu8::run(*uk, packed, a.data(), kp, c.mutable_data(), N * 4, 0, M, 0, packed.panel_count(),
                  gemm_qu8::Epilogue{a_zero, a_scale, lo, hi});
    return c;
  });

  m.def("gemm_q4", [](const std::string& kernel, py::array_t<uint8_t, py::array::c_style | py::array::forcecast> qa,
                      py::array_t<uint8_t, py::array::c_style | py::array::forcecast> nibbles, size_t n, size_t k,
                      size_t group, F32Array w_scale, py::object bias, int32_t a_zero, float a_scale, float lo, float hi) {
    const auto* uk = gemm_q4::find_ukernel(kernel.c_str());
    if (!uk) throw InputError("kernel '" + kernel + "' is not available");
    if (qa.ndim() != 2 || static_cast<size_t>(qa.shape(1)) != k) throw InputError("gemm_q4: qa must be (M, k)");
    if (static_cast<size_t>(nibbles.size()) != (n * k + 1) / 2) throw InputError("gemm_q4: nibbles must hold n*k values");
    const size_t groups = (k + group - 1) / group;
    if (static_cast<size_t>(w_scale.size()) != n * groups) throw InputError("gemm_q4: w_scale must be (n, groups)");
    const size_t M = qa.shape(0), kp = gemm_qu8::padded_k(k);
    std::vector<float> b(n, 0.f);
    if (!bias.is_none()) std::memcpy(b.data(), bias.cast<F32Array>().data(), n * 4);
    const auto packed = gemm_q4::pack(nibbles.data(), w_scale.data(), b.data(), n, k, group, uk->nr);
    std::vector<uint8_t> a(M * kp, 0);
    for (size_t i = 0; i < M; ++i) std::memcpy(a.data() + i * kp, qa.data() + i * k, k);
    py::array_t<float> c({M, n});
    gemm_q4::run(*uk, packed, a.data(), kp, c.mutable_data(), n * 4, 0, M, 0, packed.panel_count(),
                 gemm_qu8::Epilogue{a_zero, a_scale, lo, hi});
    return c;
  });

  m.def("quantize_u8", [](F32Array x, float scale, int32_t zero) {
    if (x.ndim() != 2) throw InputError("quantize_u8: x must be 2-D");
    const size_t M = x.shape(0), K = x.shape(1), kp = gemm_qu8::padded_k(K);
    py::array_t<uint8_t> q({M, kp});
    gemm_qu8::quantize(x.data(), M, K, K * 4, q.mutable_data(), kp, {scale, zero});
    return q;
  });
  m.def("choose_quant_params", [](float lo, float hi) {
    const auto p = gemm_qu8::choose_params(lo, hi);
    return py::make_tuple(p.scale, p.zero);
  });

  py::class_<PyModel>(m, "Model")
      .def_static("from_file", &PyModel::from_file, py::arg("path"), py::arg("threads") = 0,
                  py::arg("force_kernel") = "", py::arg("max_memory") = 0, py::arg("decode") = "load")
      .def_static("from_bytes", &PyModel::from_bytes, py::arg("data"), py::arg("threads") = 0,
                  py::arg("force_kernel") = "", py::arg("max_memory") = 0, py::arg("decode") = "load")
      .def_property_readonly("max_memory", [](const PyModel& p) { return p.model()->max_memory(); })
      .def("run", &PyModel::run)
      .def("run_one", &PyModel::run_one)
      .def("inputs", [](const PyModel& p) { return p.io(true); })
      .def("outputs", [](const PyModel& p) { return p.io(false); })
      .def("layers", &PyModel::layers, py::arg("input_shapes") = py::none())
      .def("counters", &PyModel::counters)
      .def("layer_counters", &PyModel::layer_counters)
      .def("reset_counters", &PyModel::reset_counters)
      .def("metadata", &PyModel::metadata)
      .def_property_readonly("weight_memory", &PyModel::weight_memory)
      .def_property_readonly("decode", &PyModel::decode)
      .def_property("threads", &PyModel::threads, &PyModel::set_threads);
}
