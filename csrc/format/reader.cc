// The only C++ reader of docs/FORMAT.md. Every offset, length, count and enum is
// checked before it is used; counts are checked against the bytes left before any
// allocation, so no file can make the reader allocate without bound.
#include <cstdlib>
#include <cstring>
#include <set>
#include <unordered_set>

#include "base/crc32c.h"
#include "base/error.h"
#include "format/file.h"
#include "format/matrix.h"

namespace dsq::format {
namespace {

class Cursor {
 public:
  Cursor(const uint8_t* file, uint64_t begin, uint64_t end, const char* section)
      : file_(file), pos_(begin), end_(end), section_(section) {}

  [[noreturn]] void fail(const std::string& what) const { throw FormatError(section_, pos_, what); }
  [[noreturn]] void fail_at(uint64_t at, const std::string& what) const {
    throw FormatError(section_, at, what);
  }
  uint64_t pos() const { return pos_; }
  const uint8_t* file() const { return file_; }
  uint64_t left() const { return end_ - pos_; }
  bool at_end() const { return pos_ == end_; }
  const char* section() const { return section_; }

  void need(uint64_t n, const char* what) const {
    if (n > left())
      fail(std::string("truncated: ") + what + " needs " + std::to_string(n) + " bytes, " +
           std::to_string(left()) + " left in section");
  }
  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, file_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string string(const char* what, size_t limit = kMaxString) {
    const uint64_t at = pos_;
    const uint32_t n = read<uint32_t>(what);
    if (n > limit)
      fail_at(at, std::string(what) + " length " + std::to_string(n) + " exceeds " + std::to_string(limit));
    need(n, what);
    std::string s(reinterpret_cast<const char*>(file_ + pos_), n);
    if (!valid_utf8(s)) fail(std::string(what) + " is not valid UTF-8");
    pos_ += n;
    return s;
  }
  static bool valid_utf8(const std::string& s) {
    size_t i = 0;
    while (i < s.size()) {
      const unsigned char c = static_cast<unsigned char>(s[i]);
      size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
      if (!len || i + len > s.size()) return false;
      uint32_t cp = len == 1 ? c : c & (0x7F >> len);
      for (size_t k = 1; k < len; ++k) {
        const unsigned char cc = static_cast<unsigned char>(s[i + k]);
        if ((cc & 0xC0) != 0x80) return false;
        cp = (cp << 6) | (cc & 0x3F);
      }
      if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
          (cp >= 0xD800 && cp <= 0xDFFF))
        return false;
      i += len;
    }
    return true;
  }
  // A count of items that each take at least min_item_bytes: rejects counts the
  // remaining bytes cannot hold, before anything is allocated.
  uint32_t count(const char* what, uint64_t min_item_bytes) {
    const uint64_t at = pos_;
    const uint32_t n = read<uint32_t>(what);
    if (min_item_bytes && static_cast<uint64_t>(n) * min_item_bytes > left())
      fail_at(at, std::string(what) + " " + std::to_string(n) + " cannot fit in the " +
                      std::to_string(left()) + " bytes left in section");
    return n;
  }

 private:
  const uint8_t* file_;
  uint64_t pos_, end_;
  const char* section_;
};

struct SectionRange {
  uint64_t offset = 0, size = 0;
  bool present = false;
};

const char* kind_name(uint32_t kind) {
  switch (kind) {
    case 1: return "META";
    case 2: return "GRAPH";
    case 3: return "TENSORS";
    case 4: return "PAYLOAD";
  }
  return "?";
}

void parse_meta(Cursor& c, File& f) {
  const uint32_t n = c.count("metadata count", 5);
  std::unordered_set<std::string> keys;
  for (uint32_t i = 0; i < n; ++i) {
    const uint64_t at = c.pos();
    MetaEntry e;
    e.key = c.string("metadata key");
    if (e.key.empty()) c.fail_at(at, "metadata entry " + std::to_string(i) + ": empty key");
    if (!keys.insert(e.key).second) c.fail_at(at, "duplicate metadata key '" + e.key + "'");
    const uint64_t type_at = c.pos();
    const uint8_t type = c.read<uint8_t>("metadata type");
    switch (type) {
      case 1: e.type = MetaType::kString; e.s = c.string("metadata string value", kMaxMetaString); break;
      case 2: e.type = MetaType::kInt; e.i = c.read<int64_t>("metadata int value"); break;
      case 3: e.type = MetaType::kFloat; e.f = c.read<double>("metadata float value"); break;
      default:
        c.fail_at(type_at, "metadata key '" + e.key + "': unknown value type " + std::to_string(type));
    }
    f.metadata.push_back(std::move(e));
  }
}

// Which attributes each op accepts, and how many values each holds (0 = any >= 1).
struct AttrRule {
  Attr key;
  int count;
};
std::vector<AttrRule> allowed_attrs(Op op) {
  switch (op) {
    case Op::kConv2d:
      return {{Attr::kStride, 2}, {Attr::kPadding, 2}, {Attr::kDilation, 2}, {Attr::kGroups, 1},
              {Attr::kActivation, 1}, {Attr::kInputQuant, 2}};
    case Op::kLinear: return {{Attr::kActivation, 1}, {Attr::kInputQuant, 2}};
    case Op::kMaxPool2d:
      return {{Attr::kKernel, 2}, {Attr::kStride, 2}, {Attr::kPadding, 2}, {Attr::kDilation, 2},
              {Attr::kCeilMode, 1}};
    case Op::kAvgPool2d:
      return {{Attr::kKernel, 2}, {Attr::kStride, 2}, {Attr::kPadding, 2}, {Attr::kCeilMode, 1},
              {Attr::kCountIncludePad, 1}};
    case Op::kAdd: return {{Attr::kActivation, 1}};
    case Op::kConcat: return {{Attr::kAxis, 1}};
    case Op::kFlatten: return {{Attr::kStartDim, 1}, {Attr::kEndDim, 1}};
    case Op::kReshape: return {{Attr::kShape, 0}};
    case Op::kSoftmax: return {{Attr::kAxis, 1}};
    case Op::kBatchNorm: return {{Attr::kEps, 1}};
    default: return {};
  }
}

void parse_graph(Cursor& c, File& f) {
  Graph& g = f.graph;
  const uint32_t nv = c.count("value count", 5);
  g.values.reserve(nv);
  std::unordered_set<std::string> names;
  for (uint32_t i = 0; i < nv; ++i) {
    const uint64_t at = c.pos();
    std::string name = c.string("value name");
    if (name.empty()) c.fail_at(at, "value " + std::to_string(i) + ": empty name");
    if (!names.insert(name).second) c.fail_at(at, "duplicate value name '" + name + "'");
    const uint64_t dt_at = c.pos();
    const uint8_t dtype = c.read<uint8_t>("value dtype");
    if (dtype != 1)
      c.fail_at(dt_at, "value '" + name + "': unknown dtype " + std::to_string(dtype));
    g.values.push_back(std::move(name));
    g.value_dtypes.push_back(dtype);
  }
  auto check_value = [&](uint64_t at, uint32_t v, const std::string& where) {
    if (v >= nv)
      c.fail_at(at, where + ": value " + std::to_string(v) + " out of range (value_count " +
                        std::to_string(nv) + ")");
  };
  std::vector<uint8_t> produced(nv, 0);  // 1 = graph input, 2 = node output
  const uint32_t ni = c.count("input count", 5);
  if (ni == 0) c.fail("graph has no inputs");
  for (uint32_t i = 0; i < ni; ++i) {
    GraphInput in;
    const uint64_t at = c.pos();
    in.value = c.read<uint32_t>("input value");
    check_value(at, in.value, "graph input " + std::to_string(i));
    if (produced[in.value]) c.fail_at(at, "value '" + g.values[in.value] + "' is a graph input twice");
    produced[in.value] = 1;
    const uint64_t rank_at = c.pos();
    const uint8_t rank = c.read<uint8_t>("input rank");
    if (rank < 1 || rank > kMaxRank)
      c.fail_at(rank_at, "graph input '" + g.values[in.value] + "': rank " + std::to_string(rank) +
                             " not in 1.." + std::to_string(kMaxRank));
    for (uint8_t d = 0; d < rank; ++d) {
      const uint64_t dim_at = c.pos();
      const int64_t dim = c.read<int64_t>("input dim");
      if (dim < -1 || dim == 0 || dim > (int64_t(1) << 32))
        c.fail_at(dim_at, "graph input '" + g.values[in.value] + "': bad dim " + std::to_string(dim));
      in.dims.push_back(dim);
    }
    g.inputs.push_back(std::move(in));
  }
  const uint32_t no = c.count("output count", 4);
  if (no == 0) c.fail("graph has no outputs");
  std::vector<uint64_t> output_at;
  for (uint32_t i = 0; i < no; ++i) {
    const uint64_t at = c.pos();
    const uint32_t v = c.read<uint32_t>("output value");
    check_value(at, v, "graph output " + std::to_string(i));
    g.outputs.push_back(v);
    output_at.push_back(at);
  }
  const uint32_t nn = c.count("node count", 16);
  g.nodes.reserve(nn);
  std::unordered_set<std::string> node_names;
  for (uint32_t i = 0; i < nn; ++i) {
    Node node;
    const uint64_t at = c.pos();
    const uint16_t op = c.read<uint16_t>("node op");
    if (op < 1 || op > kMaxOp) c.fail_at(at, "node " + std::to_string(i) + ": unknown op " + std::to_string(op));
    node.op = static_cast<Op>(op);
    if (c.read<uint16_t>("node reserved") != 0) c.fail_at(at + 2, "node " + std::to_string(i) + ": reserved field not zero");
    const uint64_t name_at = c.pos();
    node.name = c.string("node name");
    const std::string where = "node " + std::to_string(i) + " ('" + node.name + "')";
    if (node.name.empty()) c.fail_at(name_at, where + ": empty name");
    if (!node_names.insert(node.name).second) c.fail_at(name_at, where + ": duplicate node name");
    const uint16_t n_in = c.read<uint16_t>("node input count");
    const uint16_t n_out = c.read<uint16_t>("node output count");
    const uint16_t n_w = c.read<uint16_t>("node weight count");
    const uint16_t n_attr = c.read<uint16_t>("node attribute count");
    c.need((uint64_t(n_in) + n_out + n_w) * 4 + uint64_t(n_attr) * 8, "node lists");
    for (uint16_t k = 0; k < n_in; ++k) {
      const uint64_t vat = c.pos();
      const uint32_t v = c.read<uint32_t>("node input");
      check_value(vat, v, where + ": input " + std::to_string(k));
      if (!produced[v])
        c.fail_at(vat, where + ": input '" + g.values[v] + "' is used before it is produced (nodes must be in topological order; no cycles)");
      node.inputs.push_back(v);
    }
    for (uint16_t k = 0; k < n_out; ++k) {
      const uint64_t vat = c.pos();
      const uint32_t v = c.read<uint32_t>("node output");
      check_value(vat, v, where + ": output " + std::to_string(k));
      if (produced[v])
        c.fail_at(vat, where + ": output '" + g.values[v] + "' is already produced elsewhere");
      produced[v] = 2;
      node.outputs.push_back(v);
    }
    for (uint16_t k = 0; k < n_w; ++k) node.weights.push_back(c.read<uint32_t>("node weight"));
    const auto rules = allowed_attrs(node.op);
    std::set<uint16_t> seen;
    for (uint16_t k = 0; k < n_attr; ++k) {
      const uint64_t aat = c.pos();
      const uint16_t key = c.read<uint16_t>("attribute key");
      const uint8_t type = c.read<uint8_t>("attribute type");
      const uint8_t reserved = c.read<uint8_t>("attribute reserved");
      const uint64_t cnt_at = c.pos();
      const uint32_t cnt = c.read<uint32_t>("attribute count");
      const AttrRule* rule = nullptr;
      for (const auto& r : rules)
        if (static_cast<uint16_t>(r.key) == key) rule = &r;
      if (!rule)
        c.fail_at(aat, where + ": attribute key " + std::to_string(key) + " is not defined for op " + op_name(node.op));
      const Attr akey = static_cast<Attr>(key);
      if (!seen.insert(key).second) c.fail_at(aat, where + ": duplicate attribute " + attr_name(akey));
      const bool is_float = attr_is_float(akey);
      if (type != (is_float ? 2 : 1) || reserved != 0)
        c.fail_at(aat, where + ": attribute " + attr_name(akey) + " has wrong type " + std::to_string(type));
      if ((rule->count && cnt != uint32_t(rule->count)) || cnt == 0 || cnt > 64)
        c.fail_at(cnt_at, where + ": attribute " + attr_name(akey) + " has " + std::to_string(cnt) + " values");
      if (akey == Attr::kActivation) {
        int64_t act;
        c.need(8, "attribute value");
        const uint64_t vat = c.pos();
        act = c.read<int64_t>("attribute value");
        if (act < 0 || act > 2) c.fail_at(vat, where + ": unknown activation " + std::to_string(act));
        AttrValue a;
        a.key = akey;
        a.ints.push_back(act);
        node.attrs.push_back(std::move(a));
        continue;
      }
      AttrValue a;
      a.key = akey;
      a.is_float = is_float;
      for (uint32_t j = 0; j < cnt; ++j) {
        if (is_float)
          a.floats.push_back(c.read<float>("attribute value"));
        else
          a.ints.push_back(c.read<int64_t>("attribute value"));
      }
      node.attrs.push_back(std::move(a));
    }
    g.nodes.push_back(std::move(node));
  }
  for (uint32_t i = 0; i < no; ++i)
    if (!produced[g.outputs[i]])
      c.fail_at(output_at[i], "graph output '" + g.values[g.outputs[i]] + "' is never produced");
}

// One stream an encoding needs: role, allowed elem types, widths and counts.
struct Slot {
  Role role;
  ElemType types[2];
  int ntypes = 1;
  unsigned bits_lo = 0, bits_hi = 0;  // a bits stream's allowed widths
  uint64_t counts[2];
  int ncounts = 1;
};

Slot slot(Role role, ElemType type, uint64_t count) {
  Slot s;
  s.role = role;
  s.types[0] = type;
  s.counts[0] = count;
  return s;
}

// The streams of a tensor's encoding, in file order (docs/FORMAT.md). `entries` is the
// col_idx stream's count (unused for dense).
std::vector<Slot> stream_plan(const Tensor& t, uint64_t entries, uint16_t minor) {
  std::vector<Slot> out;
  const uint64_t rows = t.rows(), cols = t.cols();
  // 1.2: row_ptr may be u16, an int8_channel tensor may hold one scale for every row.
  auto row_ptr_slot = [&](uint64_t count) {
    Slot s = slot(Role::kRowPtr, ElemType::kU32, count);
    if (minor >= 2) {
      s.types[1] = ElemType::kU16;
      s.ntypes = 2;
    }
    return s;
  };
  uint64_t stored = rows * cols;
  switch (t.layout) {
    case Layout::kDense: break;
    case Layout::kCsr:
    case Layout::kCsrRelative: {
      out.push_back(row_ptr_slot(rows + 1));
      if (t.layout == Layout::kCsr) {
        out.push_back(slot(Role::kColIdx, cols <= 65536 ? ElemType::kU16 : ElemType::kU32, entries));
      } else {
        Slot s = slot(Role::kColIdx, ElemType::kBits, entries);
        s.bits_lo = 2;
        s.bits_hi = 8;
        out.push_back(s);
      }
      stored = entries;
      break;
    }
    case Layout::kBlockCsr: {
      const uint64_t nbr = (rows + t.block_rows - 1) / t.block_rows, nbc = (cols + t.block_cols - 1) / t.block_cols;
      out.push_back(row_ptr_slot(nbr + 1));
      out.push_back(slot(Role::kColIdx, nbc <= 65536 ? ElemType::kU16 : ElemType::kU32, entries));
      stored = entries * t.block_rows * t.block_cols;
      break;
    }
  }
  switch (t.values) {
    case Values::kF32: out.push_back(slot(Role::kValues, ElemType::kF32, stored)); break;
    case Values::kF16: out.push_back(slot(Role::kValues, ElemType::kF16, stored)); break;
    case Values::kInt8Channel:
      out.push_back(slot(Role::kValues, ElemType::kI8, stored));
      out.push_back(slot(Role::kScales, ElemType::kF32, rows));
      if (minor >= 2 && rows > 1) {
        out.back().counts[1] = 1;
        out.back().ncounts = 2;
      }
      break;
    case Values::kInt4Group:
      out.push_back(slot(Role::kValues, ElemType::kI4, stored));
      out.push_back(slot(Role::kScales, ElemType::kF32, rows * ((cols + t.group_size - 1) / t.group_size)));
      break;
    case Values::kCodebook: {
      const uint64_t k = uint64_t(1) << t.codebook_bits;
      Slot cb = slot(Role::kCodebook, ElemType::kF32, k);
      cb.types[1] = ElemType::kF16;
      cb.ntypes = 2;
      if (rows > 1) {
        cb.counts[1] = rows * k;
        cb.ncounts = 2;
      }
      out.push_back(cb);
      Slot idx = slot(Role::kIndices, ElemType::kBits, stored);
      idx.bits_lo = idx.bits_hi = t.codebook_bits;
      out.push_back(idx);
      break;
    }
  }
  return out;
}

void parse_tensors(Cursor& c, File& f) {
  const uint32_t nt = c.count("tensor count", 25);
  f.tensors.reserve(nt);
  std::unordered_set<std::string> names;
  const uint16_t minor = f.version_minor;
  const std::string file_version = "1." + std::to_string(minor);
  for (uint32_t i = 0; i < nt; ++i) {
    Tensor t;
    const uint64_t at = c.pos();
    t.name = c.string("tensor name");
    const std::string where = "tensor " + std::to_string(i) + " ('" + t.name + "')";
    if (t.name.empty()) c.fail_at(at, where + ": empty name");
    if (!names.insert(t.name).second) c.fail_at(at, where + ": duplicate tensor name");
    const uint64_t enc_at = c.pos();
    const uint8_t rank = c.read<uint8_t>("tensor rank");
    const uint8_t layout = c.read<uint8_t>("tensor layout");
    const uint8_t values = c.read<uint8_t>("tensor values");
    const uint8_t entropy = c.read<uint8_t>("tensor entropy");
    if (rank < 1 || rank > kMaxRank) c.fail_at(enc_at, where + ": rank " + std::to_string(rank) + " not in 1..8");
    // Codes of 1.1 need a 1.1 file.
    if (layout > kMaxLayout || (layout >= 1 && minor < 1))
      c.fail_at(enc_at + 1, where + ": unknown layout " + std::to_string(layout) +
                                (layout <= kMaxLayout ? std::string(" (") + layout_name(Layout(layout)) +
                                                            " needs format 1.1, file is " + file_version + ")"
                                                      : ""));
    if (values > kMaxValues || (values == 4 && minor < 1))
      c.fail_at(enc_at + 2, where + ": unknown values encoding " + std::to_string(values) +
                                (values <= kMaxValues ? " (codebook needs format 1.1, file is " + file_version + ")" : ""));
    if (entropy > kMaxEntropy || (entropy == 1 && minor < 1))
      c.fail_at(enc_at + 3, where + ": unknown entropy coding " + std::to_string(entropy) +
                                (entropy <= kMaxEntropy ? " (huffman needs format 1.1, file is " + file_version + ")" : ""));
    t.layout = static_cast<Layout>(layout);
    t.values = static_cast<Values>(values);
    t.entropy = static_cast<Entropy>(entropy);
    uint64_t numel = 1;
    for (uint8_t d = 0; d < rank; ++d) {
      const uint64_t dat = c.pos();
      const uint64_t dim = c.read<uint64_t>("tensor dim");
      if (dim < 1 || dim > (uint64_t(1) << 40) || numel * dim >= (uint64_t(1) << 40))
        c.fail_at(dat, where + ": dim " + std::to_string(dim) + " out of range (numel must stay below 2^40)");
      numel *= dim;
      t.dims.push_back(dim);
    }
    const uint64_t rows = t.rows(), cols = numel / rows;
    const uint64_t params_at = c.pos();
    t.group_size = c.read<uint32_t>("group_size");
    t.codebook_bits = c.read<uint32_t>("codebook_bits");
    t.block_rows = c.read<uint32_t>("block_rows");
    t.block_cols = c.read<uint32_t>("block_cols");
    if (t.values == Values::kCodebook) {
      if (t.codebook_bits < 1 || t.codebook_bits > 8)
        c.fail_at(params_at + 4, where + ": codebook_bits " + std::to_string(t.codebook_bits) + " not in 1..8");
    } else if (t.codebook_bits) {
      c.fail_at(params_at + 4, where + ": codebook_bits must be 0 for " + values_name(t.values) + ", found " +
                                   std::to_string(t.codebook_bits));
    }
    if (t.layout == Layout::kBlockCsr) {
      if (t.block_rows < 1 || t.block_rows > 16)
        c.fail_at(params_at + 8, where + ": block_rows " + std::to_string(t.block_rows) + " not in 1..16");
      if (t.block_cols < 1 || t.block_cols > 16)
        c.fail_at(params_at + 12, where + ": block_cols " + std::to_string(t.block_cols) + " not in 1..16");
      if (t.block_rows == 1 && t.block_cols == 1)
        c.fail_at(params_at + 8, where + ": block_csr with 1x1 blocks is not allowed (use csr)");
    } else {
      if (t.block_rows) c.fail_at(params_at + 8, where + ": block_rows must be 0 for layout " + layout_name(t.layout));
      if (t.block_cols) c.fail_at(params_at + 12, where + ": block_cols must be 0 for layout " + layout_name(t.layout));
    }
    if (t.values == Values::kInt4Group) {
      const uint32_t gs = t.group_size;
      if (gs < 8 || gs > 65536 || (gs & (gs - 1)))
        c.fail_at(params_at, where + ": int4 group_size " + std::to_string(gs) + " is not a power of two in 8..65536");
    } else if (t.group_size) {
      c.fail_at(params_at, where + ": group_size must be 0 for " + values_name(t.values));
    }
    const uint64_t ns_at = c.pos();
    const uint32_t ns = c.count("stream count", 32);
    c.need(uint64_t(ns) * 32, "stream entries");
    // The layout's entry count N is the col_idx stream's count (stream 1), bounded by
    // the positions the matrix (or block grid) has.
    uint64_t entries = 0;
    if (t.layout != Layout::kDense && ns >= 2) {
      uint64_t n1;
      std::memcpy(&n1, c.file() + ns_at + 4 + 32 + 8, 8);
      uint64_t limit = numel;
      if (t.layout == Layout::kBlockCsr)
        limit = ((rows + t.block_rows - 1) / t.block_rows) * ((cols + t.block_cols - 1) / t.block_cols);
      if (n1 > limit)
        c.fail_at(ns_at + 4 + 32 + 8, where + ": stream 1: col_idx count " + std::to_string(n1) +
                                          " is more entries than the matrix holds (" + std::to_string(limit) + ")");
      entries = n1;
    }
    const std::vector<Slot> want = stream_plan(t, entries, minor);
    if (ns != want.size()) {
      std::string roles;
      for (const auto& w : want) roles += std::string(roles.empty() ? "" : ", ") + role_name(w.role);
      c.fail_at(ns_at, where + ": layout " + layout_name(t.layout) + " with values " + values_name(t.values) +
                           " needs " + std::to_string(want.size()) + " streams, found " + std::to_string(ns) +
                           " (expected: " + roles + ")");
    }
    bool any_huffman = false;
    for (uint32_t s = 0; s < ns; ++s) {
      const uint64_t sat = c.pos();
      Stream st;
      const uint8_t role = c.read<uint8_t>("stream role");
      const uint8_t et = c.read<uint8_t>("stream elem_type");
      const uint8_t sent = c.read<uint8_t>("stream entropy");
      const uint8_t bits = c.read<uint8_t>("stream bits");
      const uint32_t r1 = c.read<uint32_t>("stream reserved");
      st.count = c.read<uint64_t>("stream count");
      st.offset = c.read<uint64_t>("stream offset");
      st.nbytes = c.read<uint64_t>("stream nbytes");
      const std::string sw = where + ": stream " + std::to_string(s);
      const Slot& w = want[s];
      if (role < 1 || role > kMaxRole || (role > 2 && minor < 1))
        c.fail_at(sat, sw + ": unknown role " + std::to_string(role));
      if (et < 1 || et > kMaxElemType || (et == 9 && minor < 1))
        c.fail_at(sat + 1, sw + ": unknown elem_type " + std::to_string(et));
      if (role != static_cast<uint8_t>(w.role))
        c.fail_at(sat, sw + ": role " + std::to_string(role) + " (" + role_name(Role(role)) + "), expected " +
                           std::to_string(int(w.role)) + " (" + role_name(w.role) + ")");
      bool type_ok = false;
      std::string types;
      for (int k = 0; k < w.ntypes; ++k) {
        type_ok |= et == static_cast<uint8_t>(w.types[k]);
        types += std::string(k ? " or " : "") + std::to_string(int(w.types[k])) + " (" + elem_type_name(w.types[k]) + ")";
      }
      if (!type_ok)
        c.fail_at(sat + 1, sw + ": elem_type " + std::to_string(et) + " (" + elem_type_name(ElemType(et)) +
                               "), expected " + types);
      if (sent > kMaxEntropy || (sent == 1 && minor < 1))
        c.fail_at(sat + 2, sw + ": unknown entropy coding " + std::to_string(sent));
      st.role = w.role;
      st.elem_type = static_cast<ElemType>(et);
      st.entropy = static_cast<Entropy>(sent);
      if (st.elem_type == ElemType::kBits) {
        if (bits < w.bits_lo || bits > w.bits_hi)
          c.fail_at(sat + 3, sw + ": bits width " + std::to_string(bits) + ", expected " +
                                 (w.bits_lo == w.bits_hi ? std::to_string(w.bits_lo)
                                                         : std::to_string(w.bits_lo) + ".." + std::to_string(w.bits_hi)));
      } else if (bits) {
        c.fail_at(sat + 3, sw + ": reserved byte not zero (the bits width is only for elem_type bits)");
      }
      st.bits = bits;
      if (r1) c.fail_at(sat + 4, sw + ": reserved field not zero");
      bool count_ok = false;
      std::string counts;
      for (int k = 0; k < w.ncounts; ++k) {
        count_ok |= st.count == w.counts[k];
        counts += std::string(k ? " or " : "") + std::to_string(w.counts[k]);
      }
      if (!count_ok)
        c.fail_at(sat + 8, sw + ": count " + std::to_string(st.count) + " but the tensor needs " + counts);
      if (st.entropy == Entropy::kHuffman) {
        any_huffman = true;
        const bool eligible = st.elem_type == ElemType::kU8 || st.elem_type == ElemType::kI8 ||
                              st.elem_type == ElemType::kI4 ||
                              (st.elem_type == ElemType::kBits && st.bits <= kMaxHuffmanBits);
        if (!eligible)
          c.fail_at(sat + 2, sw + ": a " + elem_type_name(st.elem_type) +
                                 " stream cannot be Huffman coded (only u8, i8, i4 and bits up to 8 wide)");
        if (st.count == 0) c.fail_at(sat + 2, sw + ": an empty stream cannot be Huffman coded");
      } else if (st.nbytes != elem_bytes(st.elem_type, st.count, st.bits)) {
        c.fail_at(sat + 24, sw + ": nbytes " + std::to_string(st.nbytes) + " does not match count " +
                                std::to_string(st.count) + " of " + elem_type_name(st.elem_type) + " (" +
                                std::to_string(elem_bytes(st.elem_type, st.count, st.bits)) + ")");
      }
      if (st.offset % kAlignment) c.fail_at(sat + 16, sw + ": offset " + std::to_string(st.offset) + " not 64-byte aligned");
      t.streams.push_back(st);
    }
    if ((t.entropy == Entropy::kHuffman) != any_huffman)
      c.fail_at(enc_at + 3, where + ": tensor entropy " + std::to_string(entropy) + " (" + entropy_name(t.entropy) +
                                ") but " + (any_huffman ? "some" : "no") + " stream is Huffman coded");
    f.tensors.push_back(std::move(t));
  }
}

// Absolute offset of a Huffman error: the stream's offset plus the byte the codec names.
uint64_t huffman_error_at(uint64_t stream_at, const char* what) {
  const char* p = std::strstr(what, "at byte ");
  if (!p) return stream_at;
  return stream_at + std::strtoull(p + 8, nullptr, 10);
}

// Content rules of docs/FORMAT.md 1.1 for one tensor whose stream data are set: every
// Huffman stream decodes (chunk by chunk: linear time, one chunk of memory); row_ptr
// starts at 0, never decreases and ends at the entry count; col_idx in range and
// strictly increasing within a row; relative gaps never run past the last column.
void check_payload(const Tensor& t, size_t i, const std::vector<uint64_t>& at, uint16_t minor) {
  const std::string where = "tensor " + std::to_string(i) + " ('" + t.name + "')";
  for (size_t k = 0; k < t.streams.size(); ++k) {
    const Stream& s = t.streams[k];
    if (s.entropy != Entropy::kHuffman) continue;
    const std::string sw = where + " stream " + std::to_string(k) + " (" + role_name(s.role) + ")";
    if (s.nbytes > 1 && s.data[1] != 0 && minor < 2)
      throw FormatError("PAYLOAD", at[k] + 1, sw + ": Huffman lengths_form " + std::to_string(s.data[1]) +
                                                  " unknown in format 1." + std::to_string(minor) +
                                                  " (sparse code lengths need 1.2)");
    try {
      SymbolReader r(s);
      for (uint64_t e = 0; e < s.count; ++e) r.next();
    } catch (const std::invalid_argument& e) {
      throw FormatError("PAYLOAD", huffman_error_at(at[k], e.what()), sw + ": bad Huffman stream: " + e.what());
    }
  }
  if (t.layout == Layout::kDense) return;
  uint64_t rows = t.rows(), cols = t.cols();
  if (t.layout == Layout::kBlockCsr) {
    rows = (rows + t.block_rows - 1) / t.block_rows;
    cols = (cols + t.block_cols - 1) / t.block_cols;
  }
  const Stream& rp = t.streams[0];
  const Stream& ci = t.streams[1];
  const uint64_t n = ci.count;
  auto row_ptr = [&](uint64_t r) { return row_ptr_at(rp, r); };
  const uint64_t rp_size = rp.elem_type == ElemType::kU16 ? 2 : 4;
  {
    const std::string sw = where + " stream 0 (row_ptr)";
    if (row_ptr(0) != 0)
      throw FormatError("PAYLOAD", at[0], sw + ": row_ptr[0] is " + std::to_string(row_ptr(0)) + ", must be 0");
    for (uint64_t r = 1; r <= rows; ++r)
      if (row_ptr(r) < row_ptr(r - 1))
        throw FormatError("PAYLOAD", at[0] + rp_size * r, sw + ": row_ptr decreases at " + std::to_string(r) + " (" +
                                                        std::to_string(row_ptr(r - 1)) + " -> " +
                                                        std::to_string(row_ptr(r)) + ")");
    if (row_ptr(rows) != n)
      throw FormatError("PAYLOAD", at[0] + rp_size * rows, sw + ": row_ptr[" + std::to_string(rows) + "] is " +
                                                         std::to_string(row_ptr(rows)) + " but col_idx holds " +
                                                         std::to_string(n) + " entries");
  }
  const std::string sw = where + " stream 1 (col_idx)";
  if (t.layout == Layout::kCsrRelative) {
    SymbolReader gaps(ci);  // a coded stream was checked above
    const unsigned filler = (1u << ci.bits) - 1;
    uint64_t e = 0;
    for (uint64_t r = 0; r < rows; ++r) {
      int64_t c = -1;
      for (const uint64_t end = row_ptr(r + 1); e < end; ++e) {
        const unsigned g = gaps.next();
        c += g == filler ? g : g + 1;
        if (static_cast<uint64_t>(c) >= cols)
          throw FormatError("PAYLOAD", ci.entropy == Entropy::kHuffman ? at[1] : at[1] + e * ci.bits / 8,
                            sw + ": " + (g == filler ? "filler " : "entry ") + std::to_string(e) + " lands on column " +
                                std::to_string(c) + ", past the last column " + std::to_string(cols - 1) +
                                " (gaps run past cols)");
      }
    }
    return;
  }
  const bool u16 = ci.elem_type == ElemType::kU16;
  const uint64_t esize = u16 ? 2 : 4;
  const char* what = t.layout == Layout::kBlockCsr ? "block column " : "column ";
  uint64_t e = 0;
  for (uint64_t r = 0; r < rows; ++r) {
    uint64_t prev = 0;
    for (const uint64_t end = row_ptr(r + 1); e < end; ++e) {
      uint64_t col;
      if (u16) {
        uint16_t v;
        std::memcpy(&v, ci.data + 2 * e, 2);
        col = v;
      } else {
        uint32_t v;
        std::memcpy(&v, ci.data + 4 * e, 4);
        col = v;
      }
      if (col >= cols)
        throw FormatError("PAYLOAD", at[1] + esize * e, sw + ": entry " + std::to_string(e) + ": " + what +
                                                            std::to_string(col) + " >= " + std::to_string(cols));
      if (e > row_ptr(r) && col <= prev)
        throw FormatError("PAYLOAD", at[1] + esize * e, sw + ": entry " + std::to_string(e) + ": " + what +
                                                            std::to_string(col) + " is not above the previous " + what +
                                                            std::to_string(prev) + " of its row");
      prev = col;
    }
  }
}

}  // namespace

File parse(const uint8_t* data, size_t size) {
  File f;
  if (size < kHeaderSize)
    throw FormatError("header", 0, "file is " + std::to_string(size) + " bytes, shorter than the 64-byte header");
  Cursor h(data, 0, kHeaderSize, "header");
  if (std::memcmp(data, "DSQF", 4) != 0) throw FormatError("header", 0, "bad magic (not a .dsq file)");
  h.read<uint32_t>("magic");
  f.version_major = h.read<uint16_t>("version_major");
  f.version_minor = h.read<uint16_t>("version_minor");
  if (f.version_major != kVersionMajor || f.version_minor > kVersionMinor)
    throw FormatError("header", 4, "format version " + std::to_string(f.version_major) + "." +
                                       std::to_string(f.version_minor) + " is newer than this engine reads (" +
                                       std::to_string(kVersionMajor) + "." + std::to_string(kVersionMinor) + ")");
  const uint32_t flags = h.read<uint32_t>("flags");
  const uint32_t section_count = h.read<uint32_t>("section_count");
  const uint64_t file_size = h.read<uint64_t>("file_size");
  const uint32_t dir_crc = h.read<uint32_t>("directory_crc32c");
  uint32_t header_crc;
  std::memcpy(&header_crc, data + 28, 4);
  uint8_t header_copy[kHeaderSize];
  std::memcpy(header_copy, data, kHeaderSize);
  std::memset(header_copy + 28, 0, 4);
  if (crc32c(header_copy, kHeaderSize) != header_crc)
    throw FormatError("header", 28, "header CRC32C mismatch (corrupt header)");
  if (flags != 0) throw FormatError("header", 8, "unknown flags 0x" + std::to_string(flags));
  for (size_t i = 32; i < 64; ++i)
    if (data[i]) throw FormatError("header", i, "reserved header bytes must be zero");
  if (file_size != size)
    throw FormatError("header", 16, "header says the file has " + std::to_string(file_size) +
                                        " bytes but it has " + std::to_string(size) + " (truncated or padded)");
  if (section_count != 4)
    throw FormatError("header", 12, "section_count " + std::to_string(section_count) + ", format 1.0 has 4");
  const uint64_t dir_end = kHeaderSize + uint64_t(section_count) * kDirectoryEntrySize;
  if (dir_end > size) throw FormatError("directory", kHeaderSize, "section directory runs past the end of the file");
  if (crc32c(data + kHeaderSize, dir_end - kHeaderSize) != dir_crc)
    throw FormatError("directory", kHeaderSize, "section directory CRC32C mismatch");
  SectionRange sections[5];
  uint32_t section_crc[5] = {};
  Cursor d(data, kHeaderSize, dir_end, "directory");
  for (uint32_t i = 0; i < section_count; ++i) {
    const uint64_t at = d.pos();
    const uint32_t kind = d.read<uint32_t>("section kind");
    const uint32_t sflags = d.read<uint32_t>("section flags");
    const uint64_t offset = d.read<uint64_t>("section offset");
    const uint64_t ssize = d.read<uint64_t>("section size");
    const uint32_t crc = d.read<uint32_t>("section crc");
    const uint32_t reserved = d.read<uint32_t>("section reserved");
    if (kind < 1 || kind > 4) d.fail_at(at, "unknown section kind " + std::to_string(kind));
    if (sections[kind].present) d.fail_at(at, std::string("section ") + kind_name(kind) + " appears twice");
    if (sflags || reserved) d.fail_at(at + 4, "section flags/reserved must be zero");
    if (offset % kAlignment || offset < dir_end || offset > size || ssize > size - offset)
      d.fail_at(at + 8, std::string("section ") + kind_name(kind) + " range [" + std::to_string(offset) + ", +" +
                            std::to_string(ssize) + ") is misaligned or outside the file (" + std::to_string(size) + " bytes)");
    sections[kind] = {offset, ssize, true};
    section_crc[kind] = crc;
  }
  for (uint32_t a = 1; a <= 4; ++a)
    for (uint32_t b = a + 1; b <= 4; ++b) {
      const auto& x = sections[a];
      const auto& y = sections[b];
      if (x.offset < y.offset + y.size && y.offset < x.offset + x.size && x.size && y.size)
        throw FormatError("directory", kHeaderSize, std::string("sections ") + kind_name(a) + " and " + kind_name(b) + " overlap");
    }
  for (uint32_t k = 1; k <= 4; ++k) {
    if (crc32c(data + sections[k].offset, sections[k].size) != section_crc[k])
      throw FormatError(kind_name(k), sections[k].offset, "section CRC32C mismatch (corrupt data)");
  }
  {
    Cursor c(data, sections[1].offset, sections[1].offset + sections[1].size, "META");
    parse_meta(c, f);
    if (!c.at_end()) c.fail("trailing bytes after the last metadata entry");
  }
  {
    Cursor c(data, sections[2].offset, sections[2].offset + sections[2].size, "GRAPH");
    parse_graph(c, f);
    if (!c.at_end()) c.fail("trailing bytes after the last node");
  }
  {
    Cursor c(data, sections[3].offset, sections[3].offset + sections[3].size, "TENSORS");
    parse_tensors(c, f);
    if (!c.at_end()) c.fail("trailing bytes after the last tensor");
  }
  // Streams must lie inside the payload.
  const SectionRange& payload = sections[4];
  for (auto& t : f.tensors)
    for (auto& s : t.streams) {
      if (s.offset > payload.size || s.nbytes > payload.size - s.offset)
        throw FormatError("PAYLOAD", payload.offset + (s.offset > payload.size ? payload.size : s.offset),
                          "tensor '" + t.name + "': stream [" + std::to_string(s.offset) + ", +" +
                              std::to_string(s.nbytes) + ") runs past the payload (" + std::to_string(payload.size) + " bytes)");
      s.data = data + payload.offset + s.offset;
    }
  // Content rules of the streams (1.1), before anything uses them.
  for (size_t i = 0; i < f.tensors.size(); ++i) {
    std::vector<uint64_t> at;
    for (const auto& s : f.tensors[i].streams) at.push_back(payload.offset + s.offset);
    check_payload(f.tensors[i], i, at, f.version_minor);
  }
  // Weight references of the nodes.
  const uint32_t nt = static_cast<uint32_t>(f.tensors.size());
  for (size_t i = 0; i < f.graph.nodes.size(); ++i)
    for (uint32_t w : f.graph.nodes[i].weights)
      if (w != kAbsent && w >= nt)
        throw FormatError("GRAPH", sections[2].offset,
                          "node " + std::to_string(i) + " ('" + f.graph.nodes[i].name + "'): weight tensor " +
                              std::to_string(w) + " out of range (tensor_count " + std::to_string(nt) + ")");
  return f;
}

}  // namespace dsq::format
