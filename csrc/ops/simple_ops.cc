// Everything that is not a convolution or a linear layer: element-wise ops, pools,
// broadcasting binaries, concat, reshape/flatten, softmax, standalone batch norm.
// Rank-4 tensors are NHWC in memory; logical axes are mapped with storage_axis().
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "base/error.h"
#include "ops/ops.h"

namespace dsq::rt {
namespace {

using format::Attr;
using format::Op;

int normalize_axis(const Layer& l, int64_t axis, int rank, const char* what);

// Splits a task over rows among threads only when it is big enough to pay.
// fn(begin, end, task) with task < max_tasks(env).
constexpr int64_t kTasksPerThread = 4;
int64_t max_tasks(size_t threads) { return static_cast<int64_t>(threads) * kTasksPerThread; }

template <typename F>
void parallel_rows_tasks(const RunEnv& env, int64_t rows, int64_t work_per_row, F&& fn) {
  const int64_t total = rows * std::max<int64_t>(work_per_row, 1);
  const int64_t threads = static_cast<int64_t>(env.pool->threads());
  if (threads <= 1 || total < (1 << 15) || rows < 2) {
    fn(int64_t(0), rows, int64_t(0));
    return;
  }
  const int64_t tasks = std::min<int64_t>(rows, max_tasks(threads));
  env.pool->parallel_for(static_cast<size_t>(tasks), [&](size_t t) {
    const int64_t b = rows * static_cast<int64_t>(t) / tasks;
    const int64_t e = rows * static_cast<int64_t>(t + 1) / tasks;
    if (b < e) fn(b, e, static_cast<int64_t>(t));
  });
}

template <typename F>
void parallel_rows(const RunEnv& env, int64_t rows, int64_t work_per_row, F&& fn) {
  parallel_rows_tasks(env, rows, work_per_row, [&](int64_t b, int64_t e, int64_t) { fn(b, e); });
}

class UnaryLayer : public Layer {
 public:
  std::vector<Shape> infer(const std::vector<Shape>& in) const override { return {in[0]}; }
  void run(const std::vector<const float*>& in, const std::vector<Shape>& in_shapes,
           const std::vector<float*>& out, const std::vector<Shape>&, const RunEnv& env) const override {
    const float* x = in[0];
    float* y = out[0];
    const int64_t n = in_shapes[0].numel();
    const int64_t chunk = 4096;
    parallel_rows(env, (n + chunk - 1) / chunk, chunk, [&](int64_t b, int64_t e) {
      const int64_t lo = b * chunk, hi = std::min(n, e * chunk);
      switch (op) {
        case Op::kRelu:
          for (int64_t i = lo; i < hi; ++i) y[i] = x[i] > 0.f ? x[i] : 0.f;
          break;
        case Op::kRelu6:
          for (int64_t i = lo; i < hi; ++i) y[i] = std::min(std::max(x[i], 0.f), 6.f);
          break;
        case Op::kHardswish:
          for (int64_t i = lo; i < hi; ++i) y[i] = x[i] * std::min(std::max(x[i] + 3.f, 0.f), 6.f) / 6.f;
          break;
        case Op::kSigmoid:
          for (int64_t i = lo; i < hi; ++i) y[i] = 1.f / (1.f + std::exp(-x[i]));
          break;
        default:
          break;
      }
    });
  }
  std::string kernel() const override { return std::string(format::op_name(op)) + "_f32"; }
  bool per_sample(const std::vector<Shape>&) const override { return true; }
};

int64_t pool_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  const int64_t span = in + 2 * p - d * (k - 1) - 1;
  if (span < 0) return 0;
  int64_t out = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

class PoolLayer : public Layer {
 public:
  int64_t kh, kw, sh, sw, ph, pw, dh = 1, dw = 1;
  bool ceil_mode = false, count_include_pad = true, is_max = true;

  std::vector<Shape> infer(const std::vector<Shape>& in) const override {
    const Shape& x = in[0];
    if (x.rank() != 4) fail("expects a 4-D (N, C, H, W) input, got " + x.str());
    if (ph * 2 > kh || pw * 2 > kw) fail("padding must be at most half the kernel");
    const int64_t oh = pool_out_size(x.dims[2], kh, sh, ph, dh, ceil_mode);
    const int64_t ow = pool_out_size(x.dims[3], kw, sw, pw, dw, ceil_mode);
    if (oh <= 0 || ow <= 0) fail("input " + x.str() + " is smaller than the pooling window");
    return {Shape{{x.dims[0], x.dims[1], oh, ow}}};
  }
  void run(const std::vector<const float*>& in, const std::vector<Shape>& in_shapes,
           const std::vector<float*>& out, const std::vector<Shape>& out_shapes, const RunEnv& env) const override {
    const auto& xs = in_shapes[0].dims;
    const auto& ys = out_shapes[0].dims;
    const int64_t N = xs[0], C = xs[1], H = xs[2], W = xs[3], OH = ys[2], OW = ys[3];
    const float* x = in[0];
    float* y = out[0];
    // One accumulator row per task, from the scratch (no allocation while running).
    float* acc_base = reinterpret_cast<float*>(env.scratch);
    parallel_rows_tasks(env, N * OH, OW * C * kh * kw, [&](int64_t b, int64_t e, int64_t task) {
      float* acc = acc_base + task * C;
      for (int64_t row = b; row < e; ++row) {
        const int64_t n = row / OH, oh = row % OH;
        for (int64_t ow = 0; ow < OW; ++ow) {
          float* yp = y + ((n * OH + oh) * OW + ow) * C;
          const int64_t h0 = oh * sh - ph, w0 = ow * sw - pw;
          if (is_max) {
            // Straight into the output row (no accumulator copy); `m < v ? v : m` is
            // std::max's NaN behaviour and compiles to packed max instructions.
            float* __restrict m = yp;
            std::fill(m, m + C, -std::numeric_limits<float>::infinity());
            for (int64_t i = 0; i < kh; ++i) {
              const int64_t ih = h0 + i * dh;
              if (ih < 0 || ih >= H) continue;
              for (int64_t j = 0; j < kw; ++j) {
                const int64_t iw = w0 + j * dw;
                if (iw < 0 || iw >= W) continue;
                const float* __restrict xp = x + ((n * H + ih) * W + iw) * C;
                for (int64_t c = 0; c < C; ++c) m[c] = m[c] < xp[c] ? xp[c] : m[c];
              }
            }
          } else {
            std::fill(acc, acc + C, 0.f);
            const int64_t hend_pad = std::min(h0 + kh, H + ph), wend_pad = std::min(w0 + kw, W + pw);
            const int64_t pool_size = (hend_pad - h0) * (wend_pad - w0);
            const int64_t hs = std::max<int64_t>(h0, 0), ws = std::max<int64_t>(w0, 0);
            const int64_t he = std::min(h0 + kh, H), we = std::min(w0 + kw, W);
            for (int64_t ih = hs; ih < he; ++ih)
              for (int64_t iw = ws; iw < we; ++iw) {
                const float* xp = x + ((n * H + ih) * W + iw) * C;
                for (int64_t c = 0; c < C; ++c) acc[c] += xp[c];
              }
            const int64_t count = count_include_pad ? pool_size : (he - hs) * (we - ws);
            const float inv = count > 0 ? 1.f / static_cast<float>(count) : 0.f;
            for (int64_t c = 0; c < C; ++c) yp[c] = acc[c] * inv;
          }
        }
      }
    });
  }
  size_t scratch_bytes(const std::vector<Shape>& in, const std::vector<Shape>&, size_t threads) const override {
    return static_cast<size_t>(in[0].dims[1]) * 4 * static_cast<size_t>(max_tasks(threads));
  }
  std::string kernel() const override { return is_max ? "maxpool_f32_nhwc" : "avgpool_f32_nhwc"; }
  bool per_sample(const std::vector<Shape>&) const override { return true; }
};

class GlobalAvgPoolLayer : public Layer {
 public:
  std::vector<Shape> infer(const std::vector<Shape>& in) const override {
    if (in[0].rank() != 4) fail("expects a 4-D (N, C, H, W) input, got " + in[0].str());
    return {Shape{{in[0].dims[0], in[0].dims[1], 1, 1}}};
  }
  void run(const std::vector<const float*>& in, const std::vector<Shape>& in_shapes,
           const std::vector<float*>& out, const std::vector<Shape>&, const RunEnv& env) const override {
    const auto& d = in_shapes[0].dims;
    const int64_t N = d[0], C = d[1], HW = d[2] * d[3];
    const float inv = 1.f / static_cast<float>(HW);
    parallel_rows(env, N, HW * C, [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) {
        float* y = out[0] + n * C;
        std::fill(y, y + C, 0.f);
        const float* x = in[0] + n * HW * C;
        for (int64_t p = 0; p < HW; ++p)
          for (int64_t c = 0; c < C; ++c) y[c] += x[p * C + c];
        for (int64_t c = 0; c < C; ++c) y[c] *= inv;
      }
    });
  }
  std::string kernel() const override { return "global_avgpool_f32_nhwc"; }
  bool per_sample(const std::vector<Shape>&) const override { return true; }
};

// Per-logical-dim strides (in elements) of a tensor's memory, aligned right to `rank`;
// broadcast (size-1 or missing) dims get stride 0.
Dims broadcast_strides(const Shape& s, int rank) {
  const int r = s.rank();
  const Dims storage = storage_dims(s);
  Dims mem_stride;
  int64_t acc = 1;
  for (int i = r - 1; i >= 0; --i) {
    mem_stride[i] = acc;
    acc *= storage[i];
  }
  Dims logical;
  for (int i = 0; i < r; ++i) logical[i] = mem_stride[storage_axis(i, r)];
  Dims out;
  out.n = rank;
  for (int i = 0; i < r; ++i) out[rank - r + i] = s.dims[i] == 1 ? 0 : logical[i];
  return out;
}

class BinaryLayer : public Layer {
 public:
  float lo = -std::numeric_limits<float>::infinity(), hi = std::numeric_limits<float>::infinity();

  bool residual_add_range(float* l, float* h) const override {
    if (op != Op::kAdd) return false;
    *l = lo;
    *h = hi;
    return true;
  }

  std::vector<Shape> infer(const std::vector<Shape>& in) const override {
    const Shape &a = in[0], &b = in[1];
    const int rank = std::max(a.rank(), b.rank());
    Shape out;
    out.dims.resize(rank);
    for (int i = 0; i < rank; ++i) {
      const int ia = i - (rank - a.rank()), ib = i - (rank - b.rank());
      const int64_t da = ia >= 0 ? a.dims[ia] : 1, db = ib >= 0 ? b.dims[ib] : 1;
      if (da != db && da != 1 && db != 1)
        fail("shapes " + a.str() + " and " + b.str() + " cannot be broadcast together");
      out.dims[i] = std::max(da, db);
    }
    return {out};
  }
  void run(const std::vector<const float*>& in, const std::vector<Shape>& in_shapes,
           const std::vector<float*>& out, const std::vector<Shape>& out_shapes, const RunEnv& env) const override {
    const Shape& os = out_shapes[0];
    const int rank = os.rank();
    const bool is_add = op == Op::kAdd;
    float* y = out[0];
    const float* a = in[0];
    const float* b = in[1];
    if (in_shapes[0] == os && in_shapes[1] == os) {  // the common residual case
      const int64_t n = os.numel(), chunk = 8192;
      parallel_rows(env, (n + chunk - 1) / chunk, chunk, [&](int64_t rb, int64_t re) {
        const int64_t s = rb * chunk, e = std::min(n, re * chunk);
        if (is_add)
          for (int64_t i = s; i < e; ++i) y[i] = std::min(std::max(a[i] + b[i], lo), hi);
        else
          for (int64_t i = s; i < e; ++i) y[i] = a[i] * b[i];
      });
      return;
    }
    // General broadcast: walk the output in memory order.
    const Dims sa = broadcast_strides(in_shapes[0], rank);
    const Dims sb = broadcast_strides(in_shapes[1], rank);
    const Dims od = storage_dims(os);
    Dims ma, mb;
    for (int i = 0; i < rank; ++i) {
      // memory axis m of the output holds logical axis l
      int l = i;
      if (rank == 4) {
        static const int inv[4] = {0, 2, 3, 1};
        l = inv[i];
      }
      ma[i] = sa[l];
      mb[i] = sb[l];
    }
    const int64_t inner = rank ? od[rank - 1] : 1;
    const int64_t outer = inner ? os.numel() / inner : 0;
    const int64_t ia = rank ? ma[rank - 1] : 0, ib = rank ? mb[rank - 1] : 0;
    parallel_rows(env, outer, inner, [&](int64_t rb, int64_t re) {
      for (int64_t row = rb; row < re; ++row) {
        int64_t rem = row, offa = 0, offb = 0;
        for (int i = rank - 2; i >= 0; --i) {
          const int64_t v = rem % od[i];
          rem /= od[i];
          offa += v * ma[i];
          offb += v * mb[i];
        }
        float* yp = y + row * inner;
        const float* ap = a + offa;
        const float* bp = b + offb;
        if (is_add)
          for (int64_t j = 0; j < inner; ++j) yp[j] = std::min(std::max(ap[j * ia] + bp[j * ib], lo), hi);
        else
          for (int64_t j = 0; j < inner; ++j) yp[j] = ap[j * ia] * bp[j * ib];
      }
    });
  }
  std::string kernel() const override { return is_add_name(); }
  bool per_sample(const std::vector<Shape>&) const override { return true; }

 private:
  std::string is_add_name() const { return op == Op::kAdd ? "add_f32_broadcast" : "mul_f32_broadcast"; }
};

class ConcatLayer : public Layer {
 public:
  int64_t axis = 1;
  std::vector<Shape> infer(const std::vector<Shape>& in) const override {
    if (in.empty()) fail("needs at least one input");
    const int rank = in[0].rank();
    const int ax = normalize_axis(*this, axis, rank, "axis");
    Shape out = in[0];
    for (size_t i = 1; i < in.size(); ++i) {
      if (in[i].rank() != rank) fail("input " + std::to_string(i) + " has rank " + std::to_string(in[i].rank()) + ", expected " + std::to_string(rank));
      for (int d = 0; d < rank; ++d)
        if (d != ax && in[i].dims[d] != in[0].dims[d])
          fail("input " + std::to_string(i) + " shape " + in[i].str() + " does not match " + in[0].str() + " outside axis " + std::to_string(ax));
      out.dims[ax] += in[i].dims[ax];
    }
    return {out};
  }
  void run(const std::vector<const float*>& in, const std::vector<Shape>& in_shapes,
           const std::vector<float*>& out, const std::vector<Shape>& out_shapes, const RunEnv&) const override {
    const int rank = out_shapes[0].rank();
    const int ax = storage_axis(normalize_axis(*this, axis, rank, "axis"), rank);
    const Dims od = storage_dims(out_shapes[0]);
    int64_t outer = 1, inner = 1;
    for (int i = 0; i < ax; ++i) outer *= od[i];
    for (int i = ax + 1; i < rank; ++i) inner *= od[i];
    const int64_t out_row = od[ax] * inner;
    int64_t offset = 0;
    for (size_t k = 0; k < in.size(); ++k) {
      const int64_t chunk = storage_dims(in_shapes[k])[ax] * inner;
      for (int64_t o = 0; o < outer; ++o)
        std::memcpy(out[0] + o * out_row + offset, in[k] + o * chunk, chunk * 4);
      offset += chunk;
    }
  }
  std::string kernel() const override { return "concat_f32"; }
  bool per_sample(const std::vector<Shape>& in) const override {
    return normalize_axis(*this, axis, in[0].rank(), "axis") != 0;
  }
};

// NHWC <-> NCHW copies for layout changes at reshapes.
// Per image one (HW x C) <-> (C x HW) transpose (register-blocked, see rt::transpose); with
// C == 1 or HW == 1 both layouts are the same bytes.
void nhwc_to_nchw(const float* x, float* y, int64_t N, int64_t C, int64_t H, int64_t W) {
  const size_t hw = static_cast<size_t>(H * W), c = static_cast<size_t>(C);
  for (int64_t n = 0; n < N; ++n) transpose(x + n * hw * c, c, y + n * hw * c, hw, hw, c);
}
void nchw_to_nhwc(const float* x, float* y, int64_t N, int64_t C, int64_t H, int64_t W) {
  const size_t hw = static_cast<size_t>(H * W), c = static_cast<size_t>(C);
  for (int64_t n = 0; n < N; ++n) transpose(x + n * hw * c, hw, y + n * hw * c, c, c, hw);
}

class ReshapeLayer : public Layer {
 public:
  // flatten: start/end dims; reshape: target dims.
  bool is_flatten = true;
  int64_t start_dim = 1, end_dim = -1;
  std::vector<int64_t> target;

  std::vector<Shape> infer(const std::vector<Shape>& in) const override {
    const Shape& x = in[0];
    Shape out;
    if (is_flatten) {
      const int r = x.rank();
      const int s = normalize_axis(*this, start_dim, r, "start_dim");
      const int e = normalize_axis(*this, end_dim, r, "end_dim");
      if (s > e) fail("start_dim after end_dim");
      for (int i = 0; i < s; ++i) out.dims.push_back(x.dims[i]);
      int64_t m = 1;
      for (int i = s; i <= e; ++i) m *= x.dims[i];
      out.dims.push_back(m);
      for (int i = e + 1; i < r; ++i) out.dims.push_back(x.dims[i]);
    } else {
      int infer_at = -1;
      int64_t known = 1;
      for (size_t i = 0; i < target.size(); ++i) {
        int64_t d = target[i];
        if (d == 0) {
          if (i >= x.dims.size()) fail("shape entry 0 at position " + std::to_string(i) + " has no input dim to copy");
          d = x.dims[i];
        }
        if (d == -1) {
          if (infer_at >= 0) fail("more than one -1 in the target shape");
          infer_at = static_cast<int>(i);
          out.dims.push_back(1);
          continue;
        }
        if (d < 0) fail("bad target dim " + std::to_string(d));
        if (__builtin_mul_overflow(known, d, &known)) fail("target shape has more elements than int64 holds");
        out.dims.push_back(d);
      }
      if (infer_at >= 0) {
        if (known == 0 || x.numel() % known) fail("cannot reshape " + x.str() + " to the target shape");
        out.dims[infer_at] = x.numel() / known;
      }
      if (out.numel() != x.numel()) fail("cannot reshape " + x.str() + " into " + out.str());
      if (out.rank() < 1 || out.rank() > 8) fail("target rank must be 1..8");
    }
    return {out};
  }
  size_t scratch_bytes(const std::vector<Shape>& in, const std::vector<Shape>& out, size_t) const override {
    return (in[0].rank() == 4 && out[0].rank() == 4) ? static_cast<size_t>(in[0].numel()) * 4 : 0;
  }
  void run(const std::vector<const float*>& in, const std::vector<Shape>& in_shapes,
           const std::vector<float*>& out, const std::vector<Shape>& out_shapes, const RunEnv& env) const override {
    const Shape &xs = in_shapes[0], &ys = out_shapes[0];
    const bool in4 = xs.rank() == 4, out4 = ys.rank() == 4;
    if (!in4 && !out4) {
      std::memcpy(out[0], in[0], xs.numel() * 4);
    } else if (in4 && !out4) {
      nhwc_to_nchw(in[0], out[0], xs.dims[0], xs.dims[1], xs.dims[2], xs.dims[3]);
    } else if (!in4 && out4) {
      nchw_to_nhwc(in[0], out[0], ys.dims[0], ys.dims[1], ys.dims[2], ys.dims[3]);
    } else {
      float* tmp = reinterpret_cast<float*>(env.scratch);
      nhwc_to_nchw(in[0], tmp, xs.dims[0], xs.dims[1], xs.dims[2], xs.dims[3]);
      nchw_to_nhwc(tmp, out[0], ys.dims[0], ys.dims[1], ys.dims[2], ys.dims[3]);
    }
  }
  std::string kernel() const override { return is_flatten ? "flatten_f32" : "reshape_f32"; }
  // Row-major reshapes keep each sample's elements together when the output's axis 0 is
  // still the batch; the planner checks that every value keeps the batch on axis 0.
  bool per_sample(const std::vector<Shape>&) const override { return true; }
};

class SoftmaxLayer : public Layer {
 public:
  int64_t axis = -1;
  std::vector<Shape> infer(const std::vector<Shape>& in) const override {
    normalize_axis(*this, axis, in[0].rank(), "axis");
    return {in[0]};
  }
  void run(const std::vector<const float*>& in, const std::vector<Shape>& in_shapes,
           const std::vector<float*>& out, const std::vector<Shape>&, const RunEnv& env) const override {
    const Shape& s = in_shapes[0];
    const int rank = s.rank();
    const int ax = storage_axis(normalize_axis(*this, axis, rank, "axis"), rank);
    const Dims d = storage_dims(s);
    int64_t outer = 1, inner = 1;
    for (int i = 0; i < ax; ++i) outer *= d[i];
    for (int i = ax + 1; i < rank; ++i) inner *= d[i];
    const int64_t n = d[ax];
    parallel_rows(env, outer * inner, n * 4, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t o = r / inner, i = r % inner;
        const float* x = in[0] + o * n * inner + i;
        float* y = out[0] + o * n * inner + i;
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j * inner]);
        float sum = 0.f;
        for (int64_t j = 0; j < n; ++j) {
          const float v = std::exp(x[j * inner] - m);
          y[j * inner] = v;
          sum += v;
        }
        const float inv = 1.f / sum;
        for (int64_t j = 0; j < n; ++j) y[j * inner] *= inv;
      }
    });
  }
  std::string kernel() const override { return "softmax_f32"; }
  bool per_sample(const std::vector<Shape>& in) const override {
    return normalize_axis(*this, axis, in[0].rank(), "axis") != 0;
  }
};

class BatchNormLayer : public Layer {
 public:
  std::vector<float> scale, shift;
  std::vector<Shape> infer(const std::vector<Shape>& in) const override {
    const Shape& x = in[0];
    if (x.rank() < 2) fail("expects (N, C, ...) input, got " + x.str());
    if (x.dims[1] != static_cast<int64_t>(scale.size()))
      fail("input has " + std::to_string(x.dims[1]) + " channels, parameters have " + std::to_string(scale.size()));
    return {x};
  }
  void run(const std::vector<const float*>& in, const std::vector<Shape>& in_shapes,
           const std::vector<float*>& out, const std::vector<Shape>&, const RunEnv& env) const override {
    const Shape& s = in_shapes[0];
    const int rank = s.rank();
    const int ax = storage_axis(1, rank);
    const Dims d = storage_dims(s);
    int64_t outer = 1, inner = 1;
    for (int i = 0; i < ax; ++i) outer *= d[i];
    for (int i = ax + 1; i < rank; ++i) inner *= d[i];
    const int64_t C = d[ax];
    parallel_rows(env, outer, C * inner, [&](int64_t b, int64_t e) {
      for (int64_t o = b; o < e; ++o)
        for (int64_t c = 0; c < C; ++c) {
          const float* x = in[0] + (o * C + c) * inner;
          float* y = out[0] + (o * C + c) * inner;
          for (int64_t i = 0; i < inner; ++i) y[i] = x[i] * scale[c] + shift[c];
        }
    });
  }
  std::string kernel() const override { return "batchnorm_f32"; }
  bool per_sample(const std::vector<Shape>&) const override { return true; }
};

int normalize_axis(const Layer& l, int64_t axis, int rank, const char* what) {
  const int64_t a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank)
    throw InputError("node '" + l.name + "' (" + format::op_name(l.op) + "): " + what + " " +
                     std::to_string(axis) + " out of range for rank " + std::to_string(rank));
  return static_cast<int>(a);
}

void expect_counts(const format::Node& n, size_t inputs, size_t weights_max) {
  if (n.inputs.size() != inputs || n.outputs.size() != 1 || n.weights.size() > weights_max)
    throw UnsupportedError("node '" + n.name + "' (" + format::op_name(n.op) + "): expects " +
                           std::to_string(inputs) + " input(s), 1 output and at most " +
                           std::to_string(weights_max) + " weights, has " + std::to_string(n.inputs.size()) +
                           ", " + std::to_string(n.outputs.size()) + ", " + std::to_string(n.weights.size()));
}

}  // namespace

std::unique_ptr<Layer> make_simple_layer(const format::Node& n, const format::File& file) {
  std::unique_ptr<Layer> layer;
  switch (n.op) {
    case Op::kRelu: case Op::kRelu6: case Op::kHardswish: case Op::kSigmoid:
      expect_counts(n, 1, 0);
      layer = std::make_unique<UnaryLayer>();
      break;
    case Op::kMaxPool2d: case Op::kAvgPool2d: {
      expect_counts(n, 1, 0);
      auto p = std::make_unique<PoolLayer>();
      p->is_max = n.op == Op::kMaxPool2d;
      if (!n.find(Attr::kKernel)) throw UnsupportedError("node '" + n.name + "': pooling without a kernel attribute");
      p->kh = attr_int(n, Attr::kKernel, 0, 1);
      p->kw = attr_int(n, Attr::kKernel, 1, 1);
      p->sh = attr_int(n, Attr::kStride, 0, p->kh);
      p->sw = attr_int(n, Attr::kStride, 1, p->kw);
      p->ph = attr_int(n, Attr::kPadding, 0, 0);
      p->pw = attr_int(n, Attr::kPadding, 1, 0);
      p->dh = attr_int(n, Attr::kDilation, 0, 1);
      p->dw = attr_int(n, Attr::kDilation, 1, 1);
      p->ceil_mode = attr_int(n, Attr::kCeilMode, 0, 0) != 0;
      p->count_include_pad = attr_int(n, Attr::kCountIncludePad, 0, 1) != 0;
      if (p->kh < 1 || p->kw < 1 || p->sh < 1 || p->sw < 1 || p->ph < 0 || p->pw < 0 || p->dh < 1 ||
          p->dw < 1 || p->kh > 4096 || p->kw > 4096 || p->sh > 4096 || p->sw > 4096 || p->dh > 4096 || p->dw > 4096)
        throw UnsupportedError("node '" + n.name + "': pooling kernel/stride/padding/dilation out of range");
      layer = std::move(p);
      break;
    }
    case Op::kGlobalAvgPool2d:
      expect_counts(n, 1, 0);
      layer = std::make_unique<GlobalAvgPoolLayer>();
      break;
    case Op::kAdd: case Op::kMul: {
      expect_counts(n, 2, 0);
      auto b = std::make_unique<BinaryLayer>();
      activation_range(attr_int(n, Attr::kActivation, 0, 0), &b->lo, &b->hi);
      layer = std::move(b);
      break;
    }
    case Op::kConcat: {
      if (n.inputs.empty() || n.outputs.size() != 1 || !n.weights.empty())
        throw UnsupportedError("node '" + n.name + "' (concat): needs >= 1 input, 1 output, no weights");
      auto c = std::make_unique<ConcatLayer>();
      c->axis = attr_int(n, Attr::kAxis, 0, 1);
      layer = std::move(c);
      break;
    }
    case Op::kFlatten: case Op::kReshape: {
      expect_counts(n, 1, 0);
      auto r = std::make_unique<ReshapeLayer>();
      r->is_flatten = n.op == Op::kFlatten;
      r->start_dim = attr_int(n, Attr::kStartDim, 0, 1);
      r->end_dim = attr_int(n, Attr::kEndDim, 0, -1);
      if (!r->is_flatten) {
        const auto* a = n.find(Attr::kShape);
        if (!a) throw UnsupportedError("node '" + n.name + "' (reshape): no shape attribute");
        r->target = a->ints;
      }
      layer = std::move(r);
      break;
    }
    case Op::kSoftmax: {
      expect_counts(n, 1, 0);
      auto s = std::make_unique<SoftmaxLayer>();
      s->axis = attr_int(n, Attr::kAxis, 0, -1);
      layer = std::move(s);
      break;
    }
    case Op::kBatchNorm: {
      expect_counts(n, 1, 4);
      if (n.weights.size() != 4)
        throw UnsupportedError("node '" + n.name + "' (batch_norm): needs gamma, beta, running_mean, running_var");
      std::vector<float> p[4];
      for (int i = 0; i < 4; ++i) {
        if (n.weights[i] == format::kAbsent)
          throw UnsupportedError("node '" + n.name + "' (batch_norm): weight " + std::to_string(i) + " is absent");
        p[i] = decode_to_f32(file.tensors[n.weights[i]]);
        if (p[i].size() != p[0].size())
          throw UnsupportedError("node '" + n.name + "' (batch_norm): parameter sizes differ");
      }
      const float eps = attr_float(n, Attr::kEps, 0, 1e-5f);
      auto b = std::make_unique<BatchNormLayer>();
      for (size_t c = 0; c < p[0].size(); ++c) {
        const float s = p[0][c] / std::sqrt(p[3][c] + eps);
        b->scale.push_back(s);
        b->shift.push_back(p[1][c] - p[2][c] * s);
      }
      layer = std::move(b);
      break;
    }
    default:
      throw UnsupportedError("node '" + n.name + "': op " + format::op_name(n.op) + " has no implementation");
  }
  layer->name = n.name;
  layer->op = n.op;
  return layer;
}

}  // namespace dsq::rt
