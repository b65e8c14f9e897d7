#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "base/error.h"
#include "format/file.h"

namespace dsq::format {

const char* op_name(Op op) {
  switch (op) {
    case Op::kConv2d: return "conv2d";
    case Op::kLinear: return "linear";
    case Op::kRelu: return "relu";
    case Op::kRelu6: return "relu6";
    case Op::kHardswish: return "hardswish";
    case Op::kSigmoid: return "sigmoid";
    case Op::kMaxPool2d: return "max_pool2d";
    case Op::kAvgPool2d: return "avg_pool2d";
    case Op::kGlobalAvgPool2d: return "global_avg_pool2d";
    case Op::kAdd: return "add";
    case Op::kMul: return "mul";
    case Op::kConcat: return "concat";
    case Op::kFlatten: return "flatten";
    case Op::kReshape: return "reshape";
    case Op::kSoftmax: return "softmax";
    case Op::kBatchNorm: return "batch_norm";
  }
  return "unknown";
}

const char* attr_name(Attr a) {
  static const char* names[] = {"?", "stride", "padding", "dilation", "groups", "kernel",
                                "activation", "ceil_mode", "count_include_pad", "axis",
                                "start_dim", "end_dim", "shape", "eps", "input_quant"};
  const auto i = static_cast<uint16_t>(a);
  return i <= kMaxAttr ? names[i] : "?";
}

bool attr_is_float(Attr a) { return a == Attr::kEps || a == Attr::kInputQuant; }

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::kDense: return "dense";
    case Layout::kCsr: return "csr";
    case Layout::kCsrRelative: return "csr_relative";
    case Layout::kBlockCsr: return "block_csr";
  }
  return "?";
}
const char* values_name(Values v) {
  switch (v) {
    case Values::kF32: return "f32";
    case Values::kF16: return "f16";
    case Values::kInt8Channel: return "int8_channel";
    case Values::kInt4Group: return "int4_group";
    case Values::kCodebook: return "codebook";
  }
  return "?";
}
const char* entropy_name(Entropy e) {
  switch (e) {
    case Entropy::kNone: return "none";
    case Entropy::kHuffman: return "huffman";
  }
  return "?";
}
const char* role_name(Role r) {
  switch (r) {
    case Role::kValues: return "values";
    case Role::kScales: return "scales";
    case Role::kRowPtr: return "row_ptr";
    case Role::kColIdx: return "col_idx";
    case Role::kCodebook: return "codebook";
    case Role::kIndices: return "indices";
  }
  return "?";
}
const char* elem_type_name(ElemType t) {
  switch (t) {
    case ElemType::kF32: return "f32";
    case ElemType::kF16: return "f16";
    case ElemType::kI8: return "i8";
    case ElemType::kU8: return "u8";
    case ElemType::kI4: return "i4";
    case ElemType::kU16: return "u16";
    case ElemType::kU32: return "u32";
    case ElemType::kI32: return "i32";
    case ElemType::kBits: return "bits";
  }
  return "?";
}

uint64_t elem_bytes(ElemType t, uint64_t count, unsigned bits) {
  switch (t) {
    case ElemType::kF32: case ElemType::kU32: case ElemType::kI32: return count * 4;
    case ElemType::kF16: case ElemType::kU16: return count * 2;
    case ElemType::kI8: case ElemType::kU8: return count;
    case ElemType::kI4: return (count + 1) / 2;
    case ElemType::kBits: return (count * bits + 7) / 8;
  }
  return 0;
}

unsigned huffman_alphabet(ElemType t, unsigned bits) {
  switch (t) {
    case ElemType::kU8: case ElemType::kI8: return 256;
    case ElemType::kI4: return 16;
    case ElemType::kBits: return 1u << bits;
    default: return 0;
  }
}

uint16_t Tensor::min_minor() const {
  for (const auto& s : streams)
    if ((s.role == Role::kRowPtr && s.elem_type == ElemType::kU16) ||
        (s.role == Role::kScales && values == Values::kInt8Channel && s.count == 1 && rows() > 1) ||
        (s.entropy == Entropy::kHuffman && s.data && s.nbytes > 1 && s.data[1] != 0))
      return 2;
  if (layout != Layout::kDense || values == Values::kCodebook || entropy != Entropy::kNone) return 1;
  for (const auto& s : streams)
    if (static_cast<uint8_t>(s.role) > 2 || s.elem_type == ElemType::kBits || s.entropy != Entropy::kNone)
      return 1;
  return 0;
}

const AttrValue* Node::find(Attr key) const {
  for (const auto& a : attrs)
    if (a.key == key) return &a;
  return nullptr;
}

uint64_t Tensor::numel() const {
  uint64_t n = 1;
  for (uint64_t d : dims) n *= d;
  return n;
}

const Stream* Tensor::stream(Role role) const {
  for (const auto& s : streams)
    if (s.role == role) return &s;
  return nullptr;
}

uint64_t Tensor::payload_bytes() const {
  uint64_t n = 0;
  for (const auto& s : streams) n += s.nbytes;
  return n;
}

MappedFile::MappedFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot open '" + path + "': " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw std::runtime_error("'" + path + "' is not a regular file");
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p != MAP_FAILED) {
      data_ = static_cast<const uint8_t*>(p);
      mapped_ = true;
    } else {
      fallback_.resize(size_);
      size_t got = 0;
      while (got < size_) {
        const ssize_t r = ::pread(fd, fallback_.data() + got, size_ - got, static_cast<off_t>(got));
        if (r <= 0) break;
        got += static_cast<size_t>(r);
      }
      size_ = got;
      data_ = fallback_.data();
    }
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (mapped_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

}  // namespace dsq::format
