// In-memory form of a .dsq file (docs/FORMAT.md). The reader fills it from bytes after
// validating every field; the writer turns it back into the same bytes. Stream data
// points into the mapped file (or into owned storage when built in memory).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace dsq::format {

constexpr uint16_t kVersionMajor = 1;
constexpr uint16_t kVersionMinor = 2;  // the newest minor version this reader reads
constexpr uint32_t kAbsent = 0xFFFFFFFFu;
constexpr size_t kAlignment = 64;
constexpr size_t kHeaderSize = 64;
constexpr size_t kDirectoryEntrySize = 32;
constexpr size_t kMaxString = 4096;
constexpr size_t kMaxMetaString = size_t(1) << 20;
constexpr int kMaxRank = 8;

enum class SectionKind : uint32_t { kMeta = 1, kGraph = 2, kTensors = 3, kPayload = 4 };

enum class Op : uint16_t {
  kConv2d = 1, kLinear = 2, kRelu = 3, kRelu6 = 4, kHardswish = 5, kSigmoid = 6,
  kMaxPool2d = 7, kAvgPool2d = 8, kGlobalAvgPool2d = 9, kAdd = 10, kMul = 11,
  kConcat = 12, kFlatten = 13, kReshape = 14, kSoftmax = 15, kBatchNorm = 16,
};
constexpr uint16_t kMaxOp = 16;
const char* op_name(Op op);

enum class Attr : uint16_t {
  kStride = 1, kPadding = 2, kDilation = 3, kGroups = 4, kKernel = 5, kActivation = 6,
  kCeilMode = 7, kCountIncludePad = 8, kAxis = 9, kStartDim = 10, kEndDim = 11,
  kShape = 12, kEps = 13, kInputQuant = 14,
};
constexpr uint16_t kMaxAttr = 14;
const char* attr_name(Attr a);
bool attr_is_float(Attr a);

// Codes marked 1.1 need version_minor >= 1 in the file; the 1.2 additions (u16 row_ptr, one
// int8 scale for every row, sparse Huffman code lengths) need 2 (Tensor::min_minor).
enum class Layout : uint8_t { kDense = 0, kCsr = 1, kCsrRelative = 2, kBlockCsr = 3 };
enum class Values : uint8_t { kF32 = 0, kF16 = 1, kInt8Channel = 2, kInt4Group = 3, kCodebook = 4 };
enum class Entropy : uint8_t { kNone = 0, kHuffman = 1 };
enum class Role : uint8_t { kValues = 1, kScales = 2, kRowPtr = 3, kColIdx = 4, kCodebook = 5, kIndices = 6 };
enum class ElemType : uint8_t {
  kF32 = 1, kF16 = 2, kI8 = 3, kU8 = 4, kI4 = 5, kU16 = 6, kU32 = 7, kI32 = 8, kBits = 9
};
constexpr uint8_t kMaxLayout = 3, kMaxValues = 4, kMaxEntropy = 1, kMaxRole = 6, kMaxElemType = 9;
constexpr unsigned kMaxHuffmanBits = 8;  // a Huffman-coded bits stream is at most 8 wide
const char* layout_name(Layout l);
const char* values_name(Values v);
const char* entropy_name(Entropy e);
const char* role_name(Role r);
const char* elem_type_name(ElemType t);
// Bytes needed for `count` raw elements (i4: two per byte, rounded up; bits: `bits` each,
// packed, rounded up).
uint64_t elem_bytes(ElemType t, uint64_t count, unsigned bits = 0);
// Huffman alphabet of a stream of this elem type (u8/i8 256, i4 16, bits 2^bits).
unsigned huffman_alphabet(ElemType t, unsigned bits);

enum class MetaType : uint8_t { kString = 1, kInt = 2, kFloat = 3 };
struct MetaEntry {
  std::string key;
  MetaType type = MetaType::kString;
  std::string s;
  int64_t i = 0;
  double f = 0;
};

struct AttrValue {
  Attr key;
  bool is_float = false;
  std::vector<int64_t> ints;
  std::vector<float> floats;
};

struct Node {
  Op op;
  std::string name;
  std::vector<uint32_t> inputs, outputs, weights;  // weights: tensor index or kAbsent
  std::vector<AttrValue> attrs;
  const AttrValue* find(Attr key) const;
};

struct GraphInput {
  uint32_t value;
  std::vector<int64_t> dims;  // -1 = any
};

struct Graph {
  std::vector<std::string> values;
  std::vector<uint8_t> value_dtypes;
  std::vector<GraphInput> inputs;
  std::vector<uint32_t> outputs;
  std::vector<Node> nodes;
};

struct Stream {
  Role role;
  ElemType elem_type;
  Entropy entropy = Entropy::kNone;
  uint8_t bits = 0;     // elem_type kBits: the width 1..16; 0 otherwise
  uint64_t count = 0;   // elements (decoded symbols when Huffman coded)
  uint64_t offset = 0;  // relative to the payload section
  uint64_t nbytes = 0;  // stored bytes (coded size when Huffman coded)
  const uint8_t* data = nullptr;  // into the payload
};

// Element i of a row_ptr stream: u32, or u16 (format 1.2).
inline uint64_t row_ptr_at(const Stream& s, uint64_t i) {
  if (s.elem_type == ElemType::kU16) {
    uint16_t v;
    std::memcpy(&v, s.data + 2 * i, 2);
    return v;
  }
  uint32_t v;
  std::memcpy(&v, s.data + 4 * i, 4);
  return v;
}

// Scale of row r of an int8_channel tensor's scales stream: one per row, or one for every
// row (format 1.2).
inline float int8_row_scale(const Stream& s, uint64_t r) {
  float v;
  std::memcpy(&v, s.data + 4 * (s.count == 1 ? 0 : r), 4);
  return v;
}

struct Tensor {
  std::string name;
  std::vector<uint64_t> dims;
  Layout layout = Layout::kDense;
  Values values = Values::kF32;
  Entropy entropy = Entropy::kNone;
  uint32_t group_size = 0, codebook_bits = 0, block_rows = 0, block_cols = 0;
  std::vector<Stream> streams;
  uint64_t numel() const;
  // A rank-1 tensor is one row (docs/FORMAT.md).
  uint64_t rows() const { return dims.size() < 2 ? 1 : dims[0]; }
  uint64_t cols() const { return rows() ? numel() / rows() : 0; }
  const Stream* stream(Role role) const;
  uint64_t payload_bytes() const;
  // The minor version this tensor's codes need (1 when it uses any 1.1 code).
  uint16_t min_minor() const;
};

struct File {
  // serialize() writes max(version_minor, the minor the tensors' codes need).
  uint16_t version_major = kVersionMajor, version_minor = 0;
  std::vector<MetaEntry> metadata;
  Graph graph;
  std::vector<Tensor> tensors;
};

// Parses and validates; throws dsq::FormatError. The returned File's stream pointers
// point into `data`, which must outlive it.
File parse(const uint8_t* data, size_t size);

// Serializes with the canonical layout of docs/FORMAT.md.
std::vector<uint8_t> serialize(const File& file);

// A read-only file mapping (falls back to reading into memory where mmap fails).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
  std::vector<uint8_t> fallback_;
};

}  // namespace dsq::format
