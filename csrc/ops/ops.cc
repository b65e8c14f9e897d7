#include "ops/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#if defined(__SSE2__)
#include <xmmintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

#include "base/env.h"
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

std::vector<float> decode_to_f32(const format::Tensor& t) { return format::decode_dense(t); }

uint64_t min_parallel_macs() {
  static const uint64_t v = env_uint64("DSQ_MIN_PARALLEL_MACS", uint64_t(1) << 18);
  return v;
}

bool quantize_parallel(const RunEnv& env, const float* x, size_t m, size_t k, size_t x_stride, uint8_t* q,
                       size_t q_stride, const gemm_qu8::QuantParams& qp) {
  // ~4 us of quantize on one core here: a spinning worker's hand-off costs well under half.
  constexpr size_t kMinValues = 1 << 15, kFlatAlign = 64;
  const size_t threads = env.threads(), total = m * k;
  if (threads <= 1 || total < kMinValues) return gemm_qu8::quantize(x, m, k, x_stride, q, q_stride, qp);
  char finite[64];
  const size_t tasks = std::min<size_t>(threads, sizeof(finite));
  std::fill(finite, finite + tasks, 1);
  if (m == 1) {
    const size_t piece = (k / tasks + kFlatAlign - 1) / kFlatAlign * kFlatAlign;
    env.pool->parallel_for(tasks, [&](size_t t) {
      const size_t b = std::min(k, t * piece), e = t + 1 == tasks ? k : std::min(k, (t + 1) * piece);
      if (b >= e) return;
      // Pieces before the last are multiples of 64 values: no row padding inside the row.
      const size_t padded = e == k ? q_stride - b : e - b;
      if (!gemm_qu8::quantize(x + b, 1, e - b, 0, q + b, padded, qp)) finite[t] = 0;
    });
  } else {
    env.pool->parallel_for(tasks, [&](size_t t) {
      const size_t b = m * t / tasks, e = m * (t + 1) / tasks;
      const float* xb = reinterpret_cast<const float*>(reinterpret_cast<const char*>(x) + b * x_stride);
      if (b < e && !gemm_qu8::quantize(xb, e - b, k, x_stride, q + b * q_stride, q_stride, qp))
        finite[t] = 0;
    });
  }
  return std::all_of(finite, finite + tasks, [](char f) { return f != 0; });
}

void add_residual(float* out, const float* residual, size_t n, float lo, float hi, const RunEnv& env) {
  constexpr size_t kChunk = 1 << 14;
  const size_t chunks = (n + kChunk - 1) / kChunk;
  auto body = [&](size_t c) {
    const size_t e = std::min(n, (c + 1) * kChunk);
    for (size_t i = c * kChunk; i < e; ++i) out[i] = std::min(std::max(out[i] + residual[i], lo), hi);
  };
  if (chunks <= 1 || env.threads() <= 1) {
    for (size_t c = 0; c < chunks; ++c) body(c);
  } else {
    env.pool->parallel_for(chunks, body);
  }
}

void nan_output(float* y, size_t n, const RunEnv& env) {
  if (env.out_u8) *env.out_bad = 1;
  else std::fill(y, y + n, std::numeric_limits<float>::quiet_NaN());
}

bool all_finite(const float* x, size_t n) {
  // Exponent bits all ones = Inf or NaN. Integer compares OR-ed over a block vectorize
  // (a std::isfinite loop with an early exit does not); the early exit is per block.
  constexpr size_t kBlock = 1024;
  for (size_t b = 0; b < n; b += kBlock) {
    const size_t e = std::min(n, b + kBlock);
    uint32_t bad = 0;
    for (size_t i = b; i < e; ++i) {
      uint32_t bits;
      std::memcpy(&bits, x + i, 4);
      bad |= (bits & 0x7f800000u) == 0x7f800000u;
    }
    if (bad) return false;
  }
  return true;
}

namespace {
// 4x4 block: dst[c][r] = src[r][c] for r, c < 4.
inline void transpose4x4(const float* src, size_t src_stride, float* dst, size_t dst_stride) {
#if defined(__SSE2__)
  __m128 r0 = _mm_loadu_ps(src), r1 = _mm_loadu_ps(src + src_stride);
  __m128 r2 = _mm_loadu_ps(src + 2 * src_stride), r3 = _mm_loadu_ps(src + 3 * src_stride);
  _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
  _mm_storeu_ps(dst, r0);
  _mm_storeu_ps(dst + dst_stride, r1);
  _mm_storeu_ps(dst + 2 * dst_stride, r2);
  _mm_storeu_ps(dst + 3 * dst_stride, r3);
#elif defined(__ARM_NEON)
  const float32x4x2_t a = vtrnq_f32(vld1q_f32(src), vld1q_f32(src + src_stride));
  const float32x4x2_t b = vtrnq_f32(vld1q_f32(src + 2 * src_stride), vld1q_f32(src + 3 * src_stride));
  vst1q_f32(dst, vcombine_f32(vget_low_f32(a.val[0]), vget_low_f32(b.val[0])));
  vst1q_f32(dst + dst_stride, vcombine_f32(vget_low_f32(a.val[1]), vget_low_f32(b.val[1])));
  vst1q_f32(dst + 2 * dst_stride, vcombine_f32(vget_high_f32(a.val[0]), vget_high_f32(b.val[0])));
  vst1q_f32(dst + 3 * dst_stride, vcombine_f32(vget_high_f32(a.val[1]), vget_high_f32(b.val[1])));
#else
  for (size_t c = 0; c < 4; ++c)
    for (size_t r = 0; r < 4; ++r) dst[c * dst_stride + r] = src[r * src_stride + c];
#endif
}
}  // namespace

void transpose(const float* src, size_t src_stride, float* dst, size_t dst_stride, size_t rows, size_t cols) {
  // A single row or column is a (strided) copy; contiguous on both sides, one memcpy
  // (e.g. NCHW <-> NHWC of a 1-channel image).
  if (rows == 0 || cols == 0) return;
  if (cols == 1 || rows == 1) {
    const size_t n = cols == 1 ? rows : cols;
    const size_t ss = cols == 1 ? src_stride : 1, ds = cols == 1 ? 1 : dst_stride;
    if (ss == 1 && ds == 1) {
      std::memcpy(dst, src, n * sizeof(float));
    } else {
      for (size_t i = 0; i < n; ++i) dst[i * ds] = src[i * ss];
    }
    return;
  }
  // Cache blocks of 32 x 32, moved in 4 x 4 register blocks (SSE / NEON; the baseline
  // ISA of the core library), edges element by element.
  constexpr size_t kBlock = 32;
  for (size_t rb = 0; rb < rows; rb += kBlock) {
    const size_t re = std::min(rb + kBlock, rows);
    const size_t re4 = rb + (re - rb) / 4 * 4;
    for (size_t cb = 0; cb < cols; cb += kBlock) {
      const size_t ce = std::min(cb + kBlock, cols);
      const size_t ce4 = cb + (ce - cb) / 4 * 4;
      for (size_t c = cb; c < ce4; c += 4)
        for (size_t r = rb; r < re4; r += 4) transpose4x4(src + r * src_stride + c, src_stride, dst + c * dst_stride + r, dst_stride);
      for (size_t c = cb; c < ce; ++c)
        for (size_t r = (c < ce4 ? re4 : rb); r < re; ++r) dst[c * dst_stride + r] = src[r * src_stride + c];
    }
  }
}

}  // namespace dsq::rt
