// Concurrency stress through the C API: one model, many threads, each running batches
// of varying size (so contexts re-plan) for a bounded time, every result compared with
// the serial run of the same input. Also built with -fsanitize=thread by
// tests/test_sanitizers.py. DSQ_STRESS_SECONDS sets the duration (default 0.5 s).
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "check.h"
#include "deepsqueeze/dsq.h"
#include "format/file.h"

namespace fmt = dsq::format;

namespace {

constexpr int kIn = 48, kHidden = 32, kOut = 10, kMaxBatch = 5, kThreads = 8;

std::vector<float> ramp(size_t n, float scale, int mod) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * static_cast<float>(int(i * 7 % mod) - mod / 2);
  return v;
}

fmt::Tensor dense_f32(const std::string& name, std::vector<uint64_t> dims, const std::vector<float>& data) {
  fmt::Tensor t;
  t.name = name;
  t.dims = std::move(dims);
  fmt::Stream s;
  s.role = fmt::Role::kValues;
  s.elem_type = fmt::ElemType::kF32;
  s.count = data.size();
  s.nbytes = data.size() * 4;
  s.data = reinterpret_cast<const uint8_t*>(data.data());
  t.streams.push_back(s);
  return t;
}

fmt::Node linear(const std::string& name, uint32_t in, uint32_t out, uint32_t w, uint32_t b, int act) {
  fmt::Node n;
  n.op = fmt::Op::kLinear;
  n.name = name;
  n.inputs = {in};
  n.outputs = {out};
  n.weights = {w, b};
  fmt::AttrValue a;
  a.key = fmt::Attr::kActivation;
  a.ints = {act};
  n.attrs.push_back(a);
  return n;
}

// x (-1, 48) -> linear+relu (32) -> linear (10).
std::vector<uint8_t> two_layer_model() {
  static const std::vector<float> w1 = ramp(kHidden * kIn, 0.01f, 13), b1 = ramp(kHidden, 0.1f, 5),
                                  w2 = ramp(kOut * kHidden, 0.02f, 11), b2 = ramp(kOut, 0.1f, 3);
  fmt::File f;
  f.graph.values = {"x", "h", "y"};
  f.graph.value_dtypes = {1, 1, 1};
  f.graph.inputs.push_back({0, {-1, kIn}});
  f.graph.outputs = {2};
  f.graph.nodes.push_back(linear("fc1", 0, 1, 0, 1, 1));
  f.graph.nodes.push_back(linear("fc2", 1, 2, 2, 3, 0));
  f.tensors.push_back(dense_f32("fc1.weight", {kHidden, kIn}, w1));
  f.tensors.push_back(dense_f32("fc1.bias", {kHidden}, b1));
  f.tensors.push_back(dense_f32("fc2.weight", {kOut, kHidden}, w2));
  f.tensors.push_back(dense_f32("fc2.bias", {kOut}, b2));
  return fmt::serialize(f);
}

dsq_status run(dsq_model* m, const std::vector<float>& x, int batch, std::vector<float>& y) {
  const int64_t dims[2] = {batch, kIn};
  const float* ins[1] = {x.data()};
  const int64_t* in_dims[1] = {dims};
  const int ranks[1] = {2};
  y.assign(size_t(batch) * kOut, -1.f);
  float* outs[1] = {y.data()};
  const size_t cap[1] = {y.size()};
  return dsq_model_run(m, 1, ins, in_dims, ranks, 1, outs, cap, nullptr, nullptr);
}

}  // namespace

int main() {
  double seconds = 0.5;
  if (const char* s = std::getenv("DSQ_STRESS_SECONDS")) seconds = std::atof(s);
  const std::vector<uint8_t> bytes = two_layer_model();
  dsq_load_options options{};
  options.threads = 2;  // the model's own pool is shared by the callers too
  dsq_model* m = nullptr;
  dsq_status st = dsq_model_load_buffer_ex(bytes.data(), bytes.size(), &options, &m);
  DSQ_CHECK(st == DSQ_OK, "load: %s %s", dsq_status_name(st), dsq_last_error());
  if (st != DSQ_OK) DSQ_TEST_MAIN_END();

  // Serial references, one per batch size (inputs differ per batch size).
  std::vector<std::vector<float>> xs(kMaxBatch + 1), want(kMaxBatch + 1);
  for (int b = 1; b <= kMaxBatch; ++b) {
    xs[b] = ramp(size_t(b) * kIn, 0.05f * b, 17);
    DSQ_CHECK(run(m, xs[b], b, want[b]) == DSQ_OK, "serial run batch %d: %s", b, dsq_last_error());
  }
  dsq_model_reset_counters(m);

  std::atomic<long> runs{0}, mismatches{0}, errors{0};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      std::vector<float> y;
      long i = t;
      do {
        const int b = 1 + int(i++ % kMaxBatch);
        if (run(m, xs[b], b, y) != DSQ_OK) {
          ++errors;
        } else if (std::memcmp(y.data(), want[b].data(), y.size() * 4) != 0) {
          ++mismatches;
        }
        ++runs;
      } while (std::chrono::steady_clock::now() < deadline);
    });
  for (auto& th : threads) th.join();
  DSQ_CHECK(errors == 0, "%ld runs failed", errors.load());
  DSQ_CHECK(mismatches == 0, "%ld of %ld runs differ from the serial result", mismatches.load(), runs.load());
  dsq_counters c;
  DSQ_CHECK(dsq_model_counters(m, &c) == DSQ_OK && c.runs == uint64_t(runs.load()),
            "counters saw %llu runs, threads made %ld", (unsigned long long)c.runs, runs.load());
  std::printf("%d threads, %ld runs in %.1f s\n", kThreads, runs.load(), seconds);

  // A memory limit below what the weights need is refused at load with a message.
  options.max_memory = 1024;
  dsq_model* small = nullptr;
  st = dsq_model_load_buffer_ex(bytes.data(), bytes.size(), &options, &small);
  DSQ_CHECK(st == DSQ_ERR_UNSUPPORTED && small == nullptr, "max_memory 1024 gave %s", dsq_status_name(st));
  DSQ_CHECK(std::strstr(dsq_last_error(), "resource limit") && std::strstr(dsq_last_error(), "max_memory"),
            "message: %s", dsq_last_error());
  // Just above the weights: batch 1 runs, a batch whose activations exceed the limit is
  // refused (and the model still runs afterwards).
  options.max_memory = 64 * 1024;
  st = dsq_model_load_buffer_ex(bytes.data(), bytes.size(), &options, &small);
  DSQ_CHECK(st == DSQ_OK, "max_memory 64 KiB: %s %s", dsq_status_name(st), dsq_last_error());
  if (st == DSQ_OK) {
    std::vector<float> y;
    DSQ_CHECK(run(small, xs[1], 1, y) == DSQ_OK && y == want[1], "batch 1 under the limit: %s", dsq_last_error());
    const std::vector<float> big(size_t(4096) * kIn, 0.5f);
    st = run(small, big, 4096, y);
    DSQ_CHECK(st == DSQ_ERR_UNSUPPORTED && std::strstr(dsq_last_error(), "resource limit"), "batch 4096: %s %s",
              dsq_status_name(st), dsq_last_error());
    DSQ_CHECK(run(small, xs[1], 1, y) == DSQ_OK && y == want[1], "batch 1 after a refused run");
    dsq_model_free(small);
  }
  dsq_model_free(m);
  DSQ_TEST_MAIN_END();
}
