// dsq-run: runs a .dsq model on .npy inputs without Python (for boards without it).
//   dsq-run MODEL.dsq --input x.npy [--input ...] [--output y.npy ...] [--threads N] [--repeat N]
//           [--decode load|stream] [--force-kernel NAME]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "runtime/model.h"

namespace {

struct Npy {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

Npy read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open '" + path + "'");
  char magic[8];
  f.read(magic, 8);
  if (!f || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error("'" + path + "' is not a .npy file");
  uint32_t hlen = 0;
  if (magic[6] == 1) {
    uint16_t h;
    f.read(reinterpret_cast<char*>(&h), 2);
    hlen = h;
  } else {
    f.read(reinterpret_cast<char*>(&hlen), 4);
  }
  if (hlen > 65536) throw std::runtime_error("'" + path + "': header too long");
  std::string header(hlen, '\0');
  f.read(&header[0], hlen);
  if (header.find("'<f4'") == std::string::npos)
    throw std::runtime_error("'" + path + "': only little-endian float32 (<f4) arrays are supported");
  if (header.find("'fortran_order': True") != std::string::npos)
    throw std::runtime_error("'" + path + "': Fortran-order arrays are not supported");
  const size_t lp = header.find('('), rp = header.find(')');
  if (lp == std::string::npos || rp == std::string::npos) throw std::runtime_error("'" + path + "': no shape");
  Npy out;
  std::stringstream ss(header.substr(lp + 1, rp - lp - 1));
  std::string item;
  int64_t numel = 1;
  while (std::getline(ss, item, ',')) {
    if (item.find_first_not_of(" ") == std::string::npos) continue;
    const int64_t d = std::stoll(item);
    if (d < 0 || d > (int64_t(1) << 32)) throw std::runtime_error("'" + path + "': bad shape");
    out.shape.push_back(d);
    numel *= d;
  }
  out.data.resize(static_cast<size_t>(numel));
  f.read(reinterpret_cast<char*>(out.data.data()), numel * 4);
  if (!f) throw std::runtime_error("'" + path + "': truncated data");
  return out;
}

void write_npy(const std::string& path, const std::vector<int64_t>& shape, const float* data, size_t numel) {
  std::string dims;
  for (int64_t d : shape) dims += std::to_string(d) + ", ";
  if (shape.size() > 1) dims.erase(dims.size() - 1);
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  while ((10 + header.size() + 1) % 64) header += ' ';
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot write '" + path + "'");
  f.write("\x93NUMPY\x01\x00", 8);
  const uint16_t hlen = static_cast<uint16_t>(header.size());
  f.write(reinterpret_cast<const char*>(&hlen), 2);
  f.write(header.data(), header.size());
  f.write(reinterpret_cast<const char*>(data), numel * 4);
}

int usage() {
  std::fprintf(stderr,
               "usage: dsq-run MODEL.dsq --input x.npy [--input ...] [--output y.npy ...]\n"
               "               [--threads N] [--repeat N] [--decode load|stream] [--force-kernel NAME]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  std::string model_path;
  std::vector<std::string> inputs, outputs;
  size_t threads = 0, repeat = 1;
  dsq::rt::Decode decode = dsq::rt::Decode::kLoad;
  std::string force_kernel;  // a kernel name or a path switch ("unchained", ...), as Python's load()
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
      return argv[++i];
    };
    try {
      if (a == "--help" || a == "-h") {
        usage();
        return 0;
      } else if (a == "--input") {
        inputs.push_back(next());
      } else if (a == "--output") {
        outputs.push_back(next());
      } else if (a == "--threads") {
        threads = std::stoul(next());
      } else if (a == "--decode") {
        const std::string d = next();
        if (d != "load" && d != "stream") throw std::runtime_error("--decode must be load or stream, got '" + d + "'");
        decode = d == "stream" ? dsq::rt::Decode::kStream : dsq::rt::Decode::kLoad;
      } else if (a == "--force-kernel") {
        force_kernel = next();
      } else if (a == "--repeat") {
        repeat = std::max<size_t>(1, std::stoul(next()));
      } else if (model_path.empty() && a[0] != '-') {
        model_path = a;
      } else {
        std::fprintf(stderr, "dsq-run: unknown argument '%s'\n", a.c_str());
        return usage();
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "dsq-run: %s\n", e.what());
      return 2;
    }
  }
  if (model_path.empty()) return usage();
  try {
    dsq::rt::LoadOptions options;
    options.threads = threads;
    options.decode = decode;
    options.force_kernel = force_kernel;
    auto model = dsq::rt::Model::load_file(model_path, options);
    if (inputs.size() != model->inputs().size())
      throw dsq::InputError("the model takes " + std::to_string(model->inputs().size()) + " input(s), got " +
                            std::to_string(inputs.size()) + " --input");
    std::vector<Npy> arrays;
    std::vector<dsq::rt::Shape> shapes;
    std::vector<const float*> ptrs;
    for (const auto& p : inputs) arrays.push_back(read_npy(p));
    for (const auto& a : arrays) {
      shapes.push_back(dsq::rt::Shape{a.shape});
      ptrs.push_back(a.data.data());
    }
    auto ctx = model->acquire_context();
    const auto& plan = ctx->prepare(shapes);
    std::vector<std::vector<float>> out_data;
    std::vector<float*> out_ptrs;
    for (uint32_t v : model->output_values()) out_data.emplace_back(plan.value_shapes[v].numel());
    for (auto& o : out_data) out_ptrs.push_back(o.data());
    std::vector<double> times;
    for (size_t r = 0; r < repeat; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      ctx->run(ptrs, out_ptrs);
      times.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    }
    for (size_t i = 0; i < outputs.size() && i < out_data.size(); ++i)
      write_npy(outputs[i], plan.value_shapes[model->output_values()[i]].dims, out_data[i].data(), out_data[i].size());
    if (repeat > 1) {
      std::sort(times.begin(), times.end());
      const auto c = model->counters();
      std::printf("runs %zu  min %.1f us  median %.1f us  max %.1f us\n", repeat, times.front(), times[times.size() / 2],
                  times.back());
      std::printf("per run: macs_f32 %llu  macs_int8 %llu  macs_int4 %llu  weight_bytes %llu  activation_bytes %llu\n",
                  (unsigned long long)(c.total.macs_f32 / c.runs), (unsigned long long)(c.total.macs_int8 / c.runs),
                  (unsigned long long)(c.total.macs_int4 / c.runs), (unsigned long long)(c.total.weight_bytes / c.runs),
                  (unsigned long long)(c.total.activation_bytes / c.runs));
      std::printf("weight memory %llu bytes (decode=%s)  per run: skipped_macs %llu  huffman_symbols %llu\n",
                  (unsigned long long)model->weight_memory(), decode == dsq::rt::Decode::kStream ? "stream" : "load",
                  (unsigned long long)(c.total.skipped_macs / c.runs),
                  (unsigned long long)(c.total.huffman_symbols / c.runs));
      if (plan.slice_count)  // micro-batched (DSQ_MICRO_BATCH sets the slice size)
        std::printf("micro-batched: %lld slices of %lld-%lld samples, %zu at once\n", (long long)plan.slice_count,
                    (long long)plan.slice_rows, (long long)(plan.slice_rows + (plan.slice_larger ? 1 : 0)),
                    plan.slice_slots);
    }
    model->release_context(std::move(ctx));
  } catch (const dsq::FormatError& e) {
    std::fprintf(stderr, "dsq-run: format error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsq-run: %s\n", e.what());
    return 1;
  }
  return 0;
}
