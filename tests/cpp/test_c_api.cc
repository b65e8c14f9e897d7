// The C API (deepsqueeze/dsq.h): builds a tiny model with the C++ format writer, loads
// it from a buffer and from a temp file, runs it, checks outputs against hand-computed
// values and the error codes for a corrupt file, a bad input shape and a small buffer.
#include <cstdio>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>
#include <unistd.h>

#include "check.h"
#include "deepsqueeze/dsq.h"
#include "format/file.h"

namespace fmt = dsq::format;

namespace {

// y = relu(x @ W^T + b), x (-1, 3), W (2, 3).
const float kW[6] = {1.f, 2.f, 3.f, -1.f, 0.5f, 0.25f};
const float kB[2] = {0.5f, -1.f};

fmt::Tensor dense_f32(const std::string& name, std::vector<uint64_t> dims, const float* data, uint64_t n) {
  fmt::Tensor t;
  t.name = name;
  t.dims = std::move(dims);
  fmt::Stream s;
  s.role = fmt::Role::kValues;
  s.elem_type = fmt::ElemType::kF32;
  s.count = n;
  s.nbytes = n * 4;
  s.data = reinterpret_cast<const uint8_t*>(data);
  t.streams.push_back(s);
  return t;
}

std::vector<uint8_t> tiny_model() {
  fmt::File f;
  f.metadata.push_back({"dsq.producer", fmt::MetaType::kString, "test_c_api", 0, 0});
  f.graph.values = {"x", "y"};
  f.graph.value_dtypes = {1, 1};
  f.graph.inputs.push_back({0, {-1, 3}});
  f.graph.outputs = {1};
  fmt::Node n;
  n.op = fmt::Op::kLinear;
  n.name = "fc";
  n.inputs = {0};
  n.outputs = {1};
  n.weights = {0, 1};
  fmt::AttrValue act;
  act.key = fmt::Attr::kActivation;
  act.ints = {1};  // relu
  n.attrs.push_back(act);
  f.graph.nodes.push_back(n);
  f.tensors.push_back(dense_f32("fc.weight", {2, 3}, kW, 6));
  f.tensors.push_back(dense_f32("fc.bias", {2}, kB, 2));
  return fmt::serialize(f);
}

void expected(const float* x, int rows, float* y) {
  for (int r = 0; r < rows; ++r)
    for (int o = 0; o < 2; ++o) {
      float acc = kB[o];
      for (int k = 0; k < 3; ++k) acc += x[r * 3 + k] * kW[o * 3 + k];
      y[r * 2 + o] = acc > 0 ? acc : 0;
    }
}

void check_model(dsq_model* m, const char* what) {
  int ni = -1, no = -1;
  DSQ_CHECK(dsq_model_num_inputs(m, &ni) == DSQ_OK && ni == 1, "%s: inputs %d", what, ni);
  DSQ_CHECK(dsq_model_num_outputs(m, &no) == DSQ_OK && no == 1, "%s: outputs %d", what, no);
  const char* name = nullptr;
  int rank = 0;
  int64_t dims[DSQ_MAX_RANK];
  DSQ_CHECK(dsq_model_input_info(m, 0, &name, &rank, dims) == DSQ_OK, "%s: input_info", what);
  DSQ_CHECK(name && std::string(name) == "x" && rank == 2 && dims[0] == -1 && dims[1] == 3,
            "%s: input info %s rank %d", what, name ? name : "(null)", rank);
  const char* oname = nullptr;
  DSQ_CHECK(dsq_model_output_name(m, 0, &oname) == DSQ_OK && std::string(oname) == "y", "%s: output name", what);
  DSQ_CHECK(dsq_model_input_info(m, 1, &name, &rank, dims) == DSQ_ERR_INPUT, "%s: index out of range", what);

  // Two rows (one with a negative pre-activation so relu matters).
  const float x[6] = {1.f, -2.f, 0.5f, 0.25f, 1.f, -3.f};
  const int64_t xd[2] = {2, 3};
  const float* ins[1] = {x};
  const int64_t* in_dims[1] = {xd};
  const int in_ranks[1] = {2};
  float y[4] = {-7, -7, -7, -7};
  float* outs[1] = {y};
  size_t cap[1] = {4};
  int64_t od[1][DSQ_MAX_RANK];
  int oranks[1] = {0};
  dsq_status st = dsq_model_run(m, 1, ins, in_dims, in_ranks, 1, outs, cap, od, oranks);
  DSQ_CHECK(st == DSQ_OK, "%s: run: %s %s", what, dsq_status_name(st), dsq_last_error());
  DSQ_CHECK(oranks[0] == 2 && od[0][0] == 2 && od[0][1] == 2, "%s: output shape", what);
  float want[4];
  expected(x, 2, want);
  for (int i = 0; i < 4; ++i)
    DSQ_CHECK(std::fabs(y[i] - want[i]) <= 1e-6f * (1 + std::fabs(want[i])), "%s: y[%d] %g want %g", what, i, y[i],
              want[i]);
  DSQ_CHECK(want[0] == 0.f || want[1] == 0.f || want[2] == 0.f || want[3] == 0.f, "relu never clipped");

  // Sizing call: zero capacity -> DSQ_ERR_INPUT but the shape is reported.
  size_t zero[1] = {0};
  oranks[0] = 0;
  st = dsq_model_run(m, 1, ins, in_dims, in_ranks, 1, nullptr, zero, od, oranks);
  DSQ_CHECK(st == DSQ_ERR_INPUT && oranks[0] == 2 && od[0][0] == 2, "%s: sizing call %s", what, dsq_status_name(st));
  DSQ_CHECK(std::strstr(dsq_last_error(), "needs 4 floats") != nullptr, "%s: msg '%s'", what, dsq_last_error());

  // Wrong inner dimension -> DSQ_ERR_INPUT with a message.
  const int64_t bad[2] = {2, 4};
  const int64_t* bad_dims[1] = {bad};
  float xb[8] = {0};
  const float* bins[1] = {xb};
  st = dsq_model_run(m, 1, bins, bad_dims, in_ranks, 1, outs, cap, od, oranks);
  DSQ_CHECK(st == DSQ_ERR_INPUT, "%s: bad shape gave %s", what, dsq_status_name(st));
  DSQ_CHECK(std::strlen(dsq_last_error()) > 0, "%s: no message for a bad shape", what);
  // Wrong input count.
  st = dsq_model_run(m, 0, nullptr, nullptr, nullptr, 1, outs, cap, od, oranks);
  DSQ_CHECK(st == DSQ_ERR_INPUT, "%s: input count gave %s", what, dsq_status_name(st));
  // A good run after the failures still works (the context went back to the pool).
  st = dsq_model_run(m, 1, ins, in_dims, in_ranks, 1, outs, cap, nullptr, nullptr);
  DSQ_CHECK(st == DSQ_OK && y[0] == want[0], "%s: rerun", what);
  DSQ_CHECK(dsq_last_error()[0] == '\0', "%s: message not cleared on success", what);

  dsq_counters c;
  DSQ_CHECK(dsq_model_counters(m, &c) == DSQ_OK, "%s: counters", what);
  DSQ_CHECK(c.runs == 2 && c.macs_f32 == 2 * 2 * 2 * 3, "%s: counters runs %llu macs %llu", what,
            (unsigned long long)c.runs, (unsigned long long)c.macs_f32);
  DSQ_CHECK(dsq_model_reset_counters(m) == DSQ_OK && dsq_model_counters(m, &c) == DSQ_OK && c.runs == 0,
            "%s: reset", what);
}

}  // namespace

int main() {
  const std::vector<uint8_t> bytes = tiny_model();

  dsq_model* m = nullptr;
  dsq_status st = dsq_model_load_buffer(bytes.data(), bytes.size(), 1, &m);
  DSQ_CHECK(st == DSQ_OK && m, "load_buffer: %s %s", dsq_status_name(st), dsq_last_error());
  if (m) check_model(m, "buffer");
  dsq_model_free(m);

  // From a buffer that is not even 4-byte aligned (armv7 faults on unaligned VFP loads).
  std::vector<uint8_t> shifted(bytes.size() + 3);
  std::memcpy(shifted.data() + 3, bytes.data(), bytes.size());
  m = nullptr;
  st = dsq_model_load_buffer(shifted.data() + 3, bytes.size(), 1, &m);
  DSQ_CHECK(st == DSQ_OK && m, "load_buffer (unaligned): %s %s", dsq_status_name(st), dsq_last_error());
  if (m) check_model(m, "unaligned buffer");
  dsq_model_free(m);

  // The _ex loaders: DSQ_DECODE_STREAM (dense weights load as usual) and a bad mode.
  m = nullptr;
  dsq_load_options stream_options{};
  stream_options.threads = 1;
  stream_options.decode = DSQ_DECODE_STREAM;
  st = dsq_model_load_buffer_ex(bytes.data(), bytes.size(), &stream_options, &m);
  DSQ_CHECK(st == DSQ_OK && m, "load_buffer_ex stream: %s %s", dsq_status_name(st), dsq_last_error());
  if (m) {
    check_model(m, "buffer, decode stream");
    uint64_t wmem = 0;
    DSQ_CHECK(dsq_model_weight_memory(m, &wmem) == DSQ_OK && wmem >= (6 + 2) * 4, "weight memory %llu",
              (unsigned long long)wmem);
    DSQ_CHECK(dsq_model_weight_memory(m, nullptr) == DSQ_ERR_INPUT, "weight memory null");
  }
  dsq_model_free(m);
  m = reinterpret_cast<dsq_model*>(1);
  stream_options.decode = 7;
  st = dsq_model_load_buffer_ex(bytes.data(), bytes.size(), &stream_options, &m);
  DSQ_CHECK(st == DSQ_ERR_INPUT && m == nullptr, "bad decode mode gave %s", dsq_status_name(st));
  DSQ_CHECK(std::strstr(dsq_last_error(), "decode") != nullptr, "decode msg '%s'", dsq_last_error());

  char path[] = "/tmp/dsq_c_api_XXXXXX";
  const int fd = mkstemp(path);
  DSQ_CHECK(fd >= 0, "mkstemp");
  if (fd >= 0) {
    DSQ_CHECK(write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()), "write");
    close(fd);
    m = nullptr;
    st = dsq_model_load_file(path, 2, &m);
    DSQ_CHECK(st == DSQ_OK && m, "load_file: %s %s", dsq_status_name(st), dsq_last_error());
    if (m) check_model(m, "file");
    dsq_model_free(m);
    unlink(path);
  }

  // Missing file -> DSQ_ERR_IO.
  m = reinterpret_cast<dsq_model*>(1);
  st = dsq_model_load_file("/nonexistent/dir/model.dsq", 1, &m);
  DSQ_CHECK(st == DSQ_ERR_IO && m == nullptr, "missing file gave %s", dsq_status_name(st));
  DSQ_CHECK(std::strstr(dsq_last_error(), "cannot open") != nullptr, "io msg '%s'", dsq_last_error());

  // Corrupt magic -> DSQ_ERR_FORMAT naming the header.
  std::vector<uint8_t> bad = bytes;
  bad[0] ^= 0xFF;
  st = dsq_model_load_buffer(bad.data(), bad.size(), 1, &m);
  DSQ_CHECK(st == DSQ_ERR_FORMAT && m == nullptr, "bad magic gave %s", dsq_status_name(st));
  DSQ_CHECK(std::strstr(dsq_last_error(), "header") != nullptr, "magic msg '%s'", dsq_last_error());
  std::printf("bad magic: %s\n", dsq_last_error());
  // A flipped byte in the payload (the weights) -> checksum failure in that section.
  bad = bytes;
  bad[bad.size() - 8] ^= 0x5A;
  st = dsq_model_load_buffer(bad.data(), bad.size(), 1, &m);
  DSQ_CHECK(st == DSQ_ERR_FORMAT, "bad payload gave %s", dsq_status_name(st));
  DSQ_CHECK(std::strstr(dsq_last_error(), "PAYLOAD") != nullptr, "payload msg '%s'", dsq_last_error());
  std::printf("bad payload: %s\n", dsq_last_error());
  // Truncated file.
  st = dsq_model_load_buffer(bytes.data(), 40, 1, &m);
  DSQ_CHECK(st == DSQ_ERR_FORMAT, "truncated gave %s", dsq_status_name(st));
  // Null arguments.
  DSQ_CHECK(dsq_model_load_buffer(nullptr, 10, 1, &m) == DSQ_ERR_INPUT, "null buffer");
  DSQ_CHECK(dsq_model_num_inputs(nullptr, nullptr) == DSQ_ERR_INPUT, "null model");
  dsq_model_free(nullptr);

  DSQ_TEST_MAIN_END();
}
