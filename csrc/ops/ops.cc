#include "ops/ops.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "base/error.h"
#include "format/matrix.h"

namespace dsq::rt {

std::string Shape::str() const {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + (dims.size() == 1 ? ",)" : ")");
}

Dims storage_dims(const Shape& s) {
  Dims d;
  d.n = s.rank();
  if (d.n == 4) {
    d[0] = s.dims[0];
    d[1] = s.dims[2];
    d[2] = s.dims[3];
    d[3] = s.dims[1];
    return d;
  }
  for (int i = 0; i < d.n && i < 8; ++i) d[i] = s.dims[i];
  return d;
}

int storage_axis(int axis, int rank) {
  if (rank != 4) return axis;
  static const int map[4] = {0, 3, 1, 2};
  return map[axis];
}

Cost Layer::cost(const std::vector<Shape>& in, const std::vector<Shape>& out) const {
  Cost c;
  for (const auto& s : in) c.activation_bytes += static_cast<uint64_t>(s.numel()) * 4;
  for (const auto& s : out) c.activation_bytes += static_cast<uint64_t>(s.numel()) * 4;
  return c;
}

void Layer::fail(const std::string& what) const {
  throw InputError("node '" + name + "' (" + format::op_name(op) + "): " + what);
}

int64_t attr_int(const format::Node& n, format::Attr key, size_t i, int64_t dflt) {
  const auto* a = n.find(key);
  if (!a || a->is_float || i >= a->ints.size()) return dflt;
  return a->ints[i];
}

float attr_float(const format::Node& n, format::Attr key, size_t i, float dflt) {
  const auto* a = n.find(key);
  if (!a || !a->is_float || i >= a->floats.size()) return dflt;
  return a->floats[i];
}

void activation_range(int64_t activation, float* lo, float* hi) {
  const float inf = std::numeric_limits<float>::infinity();
  *lo = -inf;
  *hi = inf;
  if (activation == 1) *lo = 0.f;
  if (activation == 2) {
    *lo = 0.f;
    *hi = 6.f;
  }
}

std::unique_ptr<Layer> make_layer(const format::Node& node, const format::File& file,
                                  const LoadOptions& options) {
  const auto op = node.op;
  if (op == format::Op::kConv2d || op == format::Op::kLinear)
    return make_conv_or_linear(node, file, options);
  return make_simple_layer(node, file);
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while (!(mant & 0x400));
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant & 0x3FF) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

std::vector<float> decode_to_f32(const format::Tensor& t) {
  // Sparse layouts, codebooks and Huffman streams: the generic decoder of format/matrix.
  if (t.layout != format::Layout::kDense || t.entropy != format::Entropy::kNone ||
      t.values == format::Values::kCodebook)
    return format::decode_dense(t);
  const uint64_t n = t.numel();
  std::vector<float> out(n);
  const format::Stream* values = t.stream(format::Role::kValues);
  const format::Stream* scales = t.stream(format::Role::kScales);
  const uint64_t rows = t.rows(), cols = t.cols();
  switch (t.values) {
    case format::Values::kF32:
      std::memcpy(out.data(), values->data, n * 4);
      break;
    case format::Values::kF16:
      for (uint64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, values->data + 2 * i, 2);
        out[i] = half_to_float(h);
      }
      break;
    case format::Values::kInt8Channel: {
      const auto* q = reinterpret_cast<const int8_t*>(values->data);
      for (uint64_t r = 0; r < rows; ++r) {
        float s;
        std::memcpy(&s, scales->data + 4 * r, 4);
        for (uint64_t c = 0; c < cols; ++c) out[r * cols + c] = s * q[r * cols + c];
      }
      break;
    }
    case format::Values::kInt4Group: {
      const uint64_t g = t.group_size, groups = (cols + g - 1) / g;
      for (uint64_t r = 0; r < rows; ++r)
        for (uint64_t c = 0; c < cols; ++c) {
          const uint64_t i = r * cols + c;
          const uint8_t byte = values->data[i / 2];
          const int nib = (i & 1) ? (byte >> 4) : (byte & 0xF);
          const int q = nib >= 8 ? nib - 16 : nib;
          float s;
          std::memcpy(&s, scales->data + 4 * (r * groups + c / g), 4);
          out[i] = s * static_cast<float>(q);
        }
      break;
    }
    case format::Values::kCodebook: break;  // handled above
  }
  return out;
}

}  // namespace dsq::rt
