#include <cstring>
#include <memory>
#include <vector>

#include "base/crc32c.h"
#include "base/error.h"
#include "format/file.h"
#include "fuzz/fuzz_load.h"
#include "runtime/model.h"

namespace dsq::fuzz {
namespace {

// Small enough that the fuzzer stays fast and never hits its own RSS limit.
constexpr uint64_t kMaxMemory = uint64_t(64) << 20;
constexpr uint64_t kMaxMacs = uint64_t(20) << 20;

uint32_t get32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint64_t get64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
void put32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
void put64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }

}  // namespace

void fix_checksums(std::vector<uint8_t>& b) {
  constexpr size_t kDirEnd = format::kHeaderSize + 4 * format::kDirectoryEntrySize;
  if (b.size() < kDirEnd || std::memcmp(b.data(), "DSQF", 4) != 0 || get32(b.data() + 12) != 4) return;
  put64(b.data() + 16, b.size());
  for (size_t e = format::kHeaderSize; e < kDirEnd; e += format::kDirectoryEntrySize) {
    const uint64_t offset = get64(b.data() + e + 8), size = get64(b.data() + e + 16);
    if (offset <= b.size() && size <= b.size() - offset) put32(b.data() + e + 24, crc32c(b.data() + offset, size));
  }
  put32(b.data() + 24, crc32c(b.data() + format::kHeaderSize, kDirEnd - format::kHeaderSize));
  put32(b.data() + 28, 0);
  put32(b.data() + 28, crc32c(b.data(), format::kHeaderSize));
}

Outcome load_and_run(const uint8_t* data, size_t size) {
  rt::LoadOptions options;
  options.threads = 1;
  options.max_memory = kMaxMemory;
  std::shared_ptr<rt::Model> model;
  try {
    model = rt::Model::load_bytes(data, size, options);
  } catch (const FormatError&) {
    return Outcome::kFormatError;
  } catch (const LimitError&) {
    return Outcome::kLimit;
  } catch (const UnsupportedError&) {
    return Outcome::kUnsupported;
  }
  // InputError from load would be a bug (load maps shape trouble to UnsupportedError).
  const std::vector<rt::Shape> shapes = model->default_input_shapes();
  std::unique_ptr<rt::Context> ctx = model->acquire_context();
  const rt::Plan* plan;
  try {
    plan = &ctx->prepare(shapes);
  } catch (const LimitError&) {
    return Outcome::kLimit;
  }
  const rt::Cost& cost = plan->total_cost;
  if (cost.macs_f32 + cost.macs_int8 + cost.macs_int4 > kMaxMacs) return Outcome::kLoadedTooBig;
  std::vector<std::vector<float>> in(shapes.size()), out(model->outputs().size());
  std::vector<const float*> in_ptr;
  std::vector<float*> out_ptr;
  for (size_t i = 0; i < shapes.size(); ++i) {
    in[i].resize(static_cast<size_t>(shapes[i].numel()));
    for (size_t k = 0; k < in[i].size(); ++k) in[i][k] = static_cast<float>(int(k % 7) - 3) * 0.5f;
    in_ptr.push_back(in[i].data());
  }
  for (size_t j = 0; j < out.size(); ++j) {
    out[j].resize(static_cast<size_t>(plan->value_shapes[model->output_values()[j]].numel()));
    out_ptr.push_back(out[j].data());
  }
  ctx->run(in_ptr, out_ptr);
  model->release_context(std::move(ctx));
  return Outcome::kRan;
}

Outcome fuzz_one(const uint8_t* data, size_t size) {
  load_and_run(data, size);
  std::vector<uint8_t> fixed(data, data + size);
  fix_checksums(fixed);
  return load_and_run(fixed.data(), fixed.size());
}

}  // namespace dsq::fuzz
