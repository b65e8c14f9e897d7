// Canonical writer of docs/FORMAT.md: the same bytes the Python writer produces.
#include <algorithm>
#include <cstring>

#include "base/crc32c.h"
#include "format/file.h"

namespace dsq::format {
namespace {

class Bytes {
 public:
  template <typename T>
  void put(T v) {
    const size_t at = b_.size();
    b_.resize(at + sizeof(T));
    std::memcpy(b_.data() + at, &v, sizeof(T));
  }
  void str(const std::string& s) {
    put<uint32_t>(static_cast<uint32_t>(s.size()));
    b_.insert(b_.end(), s.begin(), s.end());
  }
  void raw(const uint8_t* p, size_t n) { b_.insert(b_.end(), p, p + n); }
  std::vector<uint8_t>& bytes() { return b_; }

 private:
  std::vector<uint8_t> b_;
};

size_t align_up(size_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; }

}  // namespace

std::vector<uint8_t> serialize(const File& f) {
  Bytes meta, graph, tensors, payload;
  meta.put<uint32_t>(static_cast<uint32_t>(f.metadata.size()));
  for (const auto& e : f.metadata) {
    meta.str(e.key);
    meta.put<uint8_t>(static_cast<uint8_t>(e.type));
    if (e.type == MetaType::kString) meta.str(e.s);
    if (e.type == MetaType::kInt) meta.put<int64_t>(e.i);
    if (e.type == MetaType::kFloat) meta.put<double>(e.f);
  }
  const Graph& g = f.graph;
  graph.put<uint32_t>(static_cast<uint32_t>(g.values.size()));
  for (size_t i = 0; i < g.values.size(); ++i) {
    graph.str(g.values[i]);
    graph.put<uint8_t>(i < g.value_dtypes.size() ? g.value_dtypes[i] : 1);
  }
  graph.put<uint32_t>(static_cast<uint32_t>(g.inputs.size()));
  for (const auto& in : g.inputs) {
    graph.put<uint32_t>(in.value);
    graph.put<uint8_t>(static_cast<uint8_t>(in.dims.size()));
    for (int64_t d : in.dims) graph.put<int64_t>(d);
  }
  graph.put<uint32_t>(static_cast<uint32_t>(g.outputs.size()));
  for (uint32_t o : g.outputs) graph.put<uint32_t>(o);
  graph.put<uint32_t>(static_cast<uint32_t>(g.nodes.size()));
  for (const auto& n : g.nodes) {
    graph.put<uint16_t>(static_cast<uint16_t>(n.op));
    graph.put<uint16_t>(0);
    graph.str(n.name);
    graph.put<uint16_t>(static_cast<uint16_t>(n.inputs.size()));
    graph.put<uint16_t>(static_cast<uint16_t>(n.outputs.size()));
    graph.put<uint16_t>(static_cast<uint16_t>(n.weights.size()));
    graph.put<uint16_t>(static_cast<uint16_t>(n.attrs.size()));
    for (uint32_t v : n.inputs) graph.put<uint32_t>(v);
    for (uint32_t v : n.outputs) graph.put<uint32_t>(v);
    for (uint32_t w : n.weights) graph.put<uint32_t>(w);
    for (const auto& a : n.attrs) {
      graph.put<uint16_t>(static_cast<uint16_t>(a.key));
      graph.put<uint8_t>(a.is_float ? 2 : 1);
      graph.put<uint8_t>(0);
      if (a.is_float) {
        graph.put<uint32_t>(static_cast<uint32_t>(a.floats.size()));
        for (float v : a.floats) graph.put<float>(v);
      } else {
        graph.put<uint32_t>(static_cast<uint32_t>(a.ints.size()));
        for (int64_t v : a.ints) graph.put<int64_t>(v);
      }
    }
  }
  tensors.put<uint32_t>(static_cast<uint32_t>(f.tensors.size()));
  for (const auto& t : f.tensors) {
    tensors.str(t.name);
    tensors.put<uint8_t>(static_cast<uint8_t>(t.dims.size()));
    tensors.put<uint8_t>(static_cast<uint8_t>(t.layout));
    tensors.put<uint8_t>(static_cast<uint8_t>(t.values));
    tensors.put<uint8_t>(static_cast<uint8_t>(t.entropy));
    for (uint64_t d : t.dims) tensors.put<uint64_t>(d);
    tensors.put<uint32_t>(t.group_size);
    tensors.put<uint32_t>(t.codebook_bits);
    tensors.put<uint32_t>(t.block_rows);
    tensors.put<uint32_t>(t.block_cols);
    tensors.put<uint32_t>(static_cast<uint32_t>(t.streams.size()));
    for (const auto& s : t.streams) {
      payload.bytes().resize(align_up(payload.bytes().size()), 0);
      const uint64_t offset = payload.bytes().size();
      payload.raw(s.data, s.nbytes);
      tensors.put<uint8_t>(static_cast<uint8_t>(s.role));
      tensors.put<uint8_t>(static_cast<uint8_t>(s.elem_type));
      tensors.put<uint8_t>(static_cast<uint8_t>(s.entropy));
      tensors.put<uint8_t>(s.bits);
      tensors.put<uint32_t>(0);
      tensors.put<uint64_t>(s.count);
      tensors.put<uint64_t>(offset);
      tensors.put<uint64_t>(s.nbytes);
    }
  }
  std::vector<uint8_t>* parts[4] = {&meta.bytes(), &graph.bytes(), &tensors.bytes(), &payload.bytes()};
  std::vector<uint8_t> out(kHeaderSize + 4 * kDirectoryEntrySize, 0);
  Bytes dir;
  for (uint32_t k = 0; k < 4; ++k) {
    out.resize(align_up(out.size()), 0);
    const uint64_t offset = out.size();
    out.insert(out.end(), parts[k]->begin(), parts[k]->end());
    dir.put<uint32_t>(k + 1);
    dir.put<uint32_t>(0);
    dir.put<uint64_t>(offset);
    dir.put<uint64_t>(parts[k]->size());
    dir.put<uint32_t>(crc32c(parts[k]->data(), parts[k]->size()));
    dir.put<uint32_t>(0);
  }
  std::memcpy(out.data() + kHeaderSize, dir.bytes().data(), dir.bytes().size());
  uint8_t* h = out.data();
  std::memcpy(h, "DSQF", 4);
  // A 1.0 file stays 1.0 byte for byte; any 1.1 code makes the file 1.1.
  uint16_t minor = f.version_minor;
  for (const auto& t : f.tensors) minor = std::max(minor, t.min_minor());
  const uint16_t major = f.version_major;
  const uint32_t flags = 0, count = 4;
  const uint64_t size = out.size();
  const uint32_t dir_crc = crc32c(out.data() + kHeaderSize, 4 * kDirectoryEntrySize);
  std::memcpy(h + 4, &major, 2);
  std::memcpy(h + 6, &minor, 2);
  std::memcpy(h + 8, &flags, 4);
  std::memcpy(h + 12, &count, 4);
  std::memcpy(h + 16, &size, 8);
  std::memcpy(h + 24, &dir_crc, 4);
  const uint32_t header_crc = crc32c(h, kHeaderSize);  // field at 28 is still zero
  std::memcpy(h + 28, &header_crc, 4);
  return out;
}

}  // namespace dsq::format
