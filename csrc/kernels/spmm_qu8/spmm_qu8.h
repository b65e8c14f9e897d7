// Sparse int8 family: Y = clamp(fma(float(acc - a_zero * rowsum[n]), a_scale * w_scale[n],
// bias[n]), lo, hi) with acc[n][m] = sum_p qw[p] * qx_t[col_p][m] (exact int32), W an
// N x K CSR matrix of int8 values with a symmetric per-row scale, X quantized per tensor
// to u8 (scale a_scale, zero point a_zero) as the dense int8 path does. Lanes run along m
// (batch or pixels) as in spmm_f32: qx_t[k][m] (k rows of u8, x_stride bytes apart),
// y_t[n][m] f32 (y_stride bytes apart). The epilogue is computed in exactly this order
// (std::fma / vfmadd), so every variant is bit-identical to the scalar reference.
// M = 1 (batch-1 Linear) has its own kernels (spmv_*, Layout::kRowTiles): see the row
// tiles below and best_spmv_ukernel().
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "base/aligned.h"
#include "base/cpu.h"
#include "kernels/gemm_qu8/gemm_qu8.h"

namespace dsq::spmm_qu8 {

// Row-tile layout for the batch-1 kernels (spmv_qu8_16x64__*): rows are grouped 16 at a
// time (lane j = row 16g + j, one int32 accumulator per row), columns in windows of 64
// (one zmm of x). A step holds, for each of the 16 lanes, up to 4 nonzeros of that lane's
// row lying in one window: 64 index bytes (byte 4j + i = column - 64 * window of lane j's
// i-th nonzero) followed by 64 int8 weights (same order). Unused slots hold index 0 and
// weight 0, so they add exactly 0. Steps of a group are ordered by window; a window with
// up to 4c nonzeros in its fullest lane takes c steps.
constexpr size_t kTileRows = 16;
constexpr size_t kTileCols = 64;
constexpr size_t kTileStepBytes = 128;  // 64 index bytes + 64 weights

// Quad layout (build_quads(), Layout::kQuads): the columns in aligned groups of 4 (quad b
// = columns 4b .. 4b+3). A row stores each quad that holds any of its nonzeros, with all 4
// weights (0 for the columns it does not store: they add exactly 0). The quad kernels
// read x as quads too: quad column b's row starts at x_t + quad_col * x_stride and holds 4
// bytes per m lane (lane m at byte 4m, columns 4b .. 4b+3 in order). One vpdpbusd then
// does 16 lanes x 4 columns with no byte interleaving: fast when the nonzeros come in
// quads (pruned in blocks of 4 input channels), about even with the CSR kernel at 40 %
// fill (70 % unstructured sparsity).
// The quad kernels write pixel-major, the layout of the layer's NHWC output, so no
// transpose follows them: row n of lane m goes to y_t + pixel(m) * y_stride + 4 n bytes,
// with the grid mapping of the Epilogue (pixel(m) = m by default) and its optional fused
// residual.
constexpr size_t kQuad = 4;
constexpr size_t kQuadWindow = 64;  // quads per quad-tile window (256 bytes of x)

// Quad tiles (build_quad_tiles(), Layout::kQuadTiles) for the batch-1 quad kernels: the
// rows sorted by quad count (most first) and dealt 16 to a group, lane j of group g being
// row quad_tile_rows[16 g + j] (n for an empty lane). The quad columns go in windows of 64
// quads (256 bytes of x, four zmm). Step s of a group holds, for each lane, one quad of
// its row in the step's window: 16 weight dwords (quad_tile_w) and 16 index bytes
// (quad_tile_idx, the quad's place in the window, 0..63); lanes without one pad with
// index 0 and weights 0 (exact). Steps of a group go window by window. Per step two
// vpermt2d and a blend fetch the 16 lanes' x dwords, one vpdpbusd adds them: 84 bytes per
// up to 64 nonzeros, where the byte-window row tiles read 132 per 64 slots.
// Row ranges of these kernels count sorted positions: [n_begin, n_end) must start at a
// group boundary (a multiple of 16) and end at one or at n.
enum class Layout : int { kCsr = 0, kRowTiles = 1, kQuads = 2, kQuadTiles = 3 };

struct PackedWeights {
  size_t n = 0, k = 0, nnz = 0;
  AlignedBuffer row_ptr;  // u32[n + 1]
  AlignedBuffer cols;     // u16 (k <= 65536) or u32 [nnz], increasing within a row
  bool cols_u16 = true;
  AlignedBuffer values;   // int8[nnz]
  AlignedBuffer w_scale;  // f32[n]
  AlignedBuffer rowsum;   // int32[n]: sum of the row's int8 values
  AlignedBuffer bias;     // f32[n]
  // Row tiles (build_row_tiles()): only for batch-1 (spmv) kernels.
  bool has_tiles = false;
  size_t tile_steps = 0;
  AlignedBuffer tile_step_ptr;  // u32[groups() + 1]: first step of each 16-row group
  AlignedBuffer tile_window;    // u32[tile_steps]: window of the step (first column / 64)
  AlignedBuffer tile_data;      // tile_steps * kTileStepBytes (64-byte aligned steps)
  // Quads (build_quads()): only for the quad kernels.
  bool has_quads = false;
  size_t quads = 0;
  AlignedBuffer quad_row_ptr;  // u32[n + 1]
  AlignedBuffer quad_cols;     // u32[quads]: quad column (column / 4), increasing within a row
  AlignedBuffer quad_vals;     // int8[quads * 4]: the weights of columns 4 b .. 4 b + 3
  // Nonzeros per stored weight slot (1 = every quad full).
  double quad_fill() const { return quads ? double(nnz) / double(quads * kQuad) : 1.0; }
  size_t quad_bytes() const;  // bytes a quad call reads for the weights
  // Quad tiles (build_quad_tiles()): only for the batch-1 quad kernels.
  bool has_quad_tiles = false;
  size_t quad_tile_steps = 0;
  AlignedBuffer quad_tile_step_ptr;  // u32[groups() + 1]
  AlignedBuffer quad_tile_rows;      // u32[groups() * 16]
  AlignedBuffer quad_tile_window;    // u32[quad_tile_steps]: window of the step (quad column / 64)
  AlignedBuffer quad_tile_w;         // quad_tile_steps * 64 bytes: 16 weight dwords
  AlignedBuffer quad_tile_idx;       // quad_tile_steps * 16 bytes: quad within the window
  size_t quad_tile_bytes() const;    // bytes a batch-1 quad tile call reads for the weights
  size_t groups() const { return (n + kTileRows - 1) / kTileRows; }
  size_t tile_bytes() const;    // bytes a batch-1 tile call reads for the weights
  const uint32_t* rp() const { return row_ptr.as<uint32_t>(); }
  const uint16_t* col16() const { return cols.as<uint16_t>(); }
  const uint32_t* col32() const { return cols.as<uint32_t>(); }
  const int8_t* vals() const { return values.as<int8_t>(); }
  size_t bytes() const;  // bytes a call reads for the weights
};

struct Epilogue {
  int32_t a_zero;
  float a_scale;
  float lo, hi;
  // Quad kernels only. With grid_w > 0, lane m stands for grid column g = grid_base + m
  // and goes to pixel g / grid_w * out_w + g % grid_w; lanes with g % grid_w >= out_w are
  // dropped (the direct convs' padding columns). With grid_w == 0 lane m is pixel m.
  size_t grid_base = 0, grid_w = 0, out_w = 0;
  // Quad kernels only: when set, out = min(max(out + residual, res_lo), res_hi) with
  // residual laid out as y_t (a fused residual add).
  const float* residual = nullptr;
  float res_lo = 0.f, res_hi = 0.f;
  // Quad kernels only, without a residual: u8 output (activation chaining). y_t then
  // points at bytes (row n of pixel p at y_t + p * y_stride + n) holding the code
  // gemm_qu8::quantize gives each output for (out_scale, out_zero); a NaN or Inf output
  // sets *out_bad = 1.
  bool out_u8 = false;
  float out_scale = 1.f;
  int32_t out_zero = 0;
  uint8_t* out_bad = nullptr;
  // gemm_qu8::prepare_out_quant of the above and [lo, hi]; run() fills it when the caller
  // has not.
  gemm_qu8::OutQuant out_prepared{};
};

// row_ptr u32[n + 1], col u32[nnz] (< k, sorted within rows), q int8[nnz], w_scale f32[n],
// bias f32[n] or null. Throws std::invalid_argument on inconsistent input.
// build_tiles = true also builds the row tiles (build_row_tiles()).
PackedWeights pack(size_t n, size_t k, const uint32_t* row_ptr, const uint32_t* col, const int8_t* q,
                   const float* w_scale, const float* bias, bool build_tiles = false);

// Adds the quads the quad kernels read, from the CSR. Idempotent. Costs 8 bytes per quad.
void build_quads(PackedWeights& w);
// The number of quads build_quads would store (nnz / (4 * count_quads) is their fill).
size_t count_quads(const PackedWeights& w);

// Adds the quad tiles the batch-1 quad kernels read (needs build_quads()). Idempotent.
void build_quad_tiles(PackedWeights& w);

// Adds the row tiles the batch-1 kernels read, from the CSR. Idempotent. Costs
// tile_steps * 132 bytes (at 90 % sparsity about one step per 16 rows x 64 columns).
void build_row_tiles(PackedWeights& w);

using UkernelFn = void (*)(const PackedWeights& w, size_t m, const uint8_t* x_t, size_t x_stride, float* y_t,
                           size_t y_stride, size_t n_begin, size_t n_end, const Epilogue& ep);

struct Ukernel {
  const char* name;
  Isa isa;
  size_t mr;  // m tile; a kernel may read x_t rows up to a multiple of mr past m (the
              // caller's rows hold round_up(m, mr) bytes), never writes past m
  UkernelFn fn;
  bool spmv = false;             // batch-1 kernel: runs only m == 1
  Layout layout = Layout::kCsr;  // which packed layout it reads
};

// Every built variant (kernels.inc), references first.
const std::vector<Ukernel>& all_ukernels();
// The best supported kernel for any m on the CSR (never an spmv or quad kernel).
const Ukernel& best_ukernel();
// The best supported SIMD quad kernel, or nullptr when this CPU has none (the scalar quad
// reader is a layout check, not faster than the CSR kernels).
const Ukernel* best_quad_ukernel();
// The best supported kernel for m == 1 on these weights: the quad-tile kernel when w has
// quad tiles and the CPU runs it, else the row-tile kernel when w has tiles and the CPU
// has AVX-512 VBMI + VNNI, else the scalar reference.
const Ukernel& best_spmv_ukernel(const PackedWeights& w);
// True when uk can run w with m columns (m == 1 for spmv kernels, tiles for kRowTiles,
// quads for kQuads, quad tiles for kQuadTiles).
bool compatible(const Ukernel& uk, const PackedWeights& w, size_t m);
// Look up by name; nullptr when not built or not supported by this CPU.
const Ukernel* find_ukernel(const char* name);

// Rows [n_begin, n_end) for all m columns (a quad kernel reads x_t as quads, see kQuad;
// quad-tile kernels take group-aligned ranges, see kQuadTiles). Throws
// std::invalid_argument when uk is not compatible with w and m, or a quad-tile range is
// not group-aligned. The spmv kernels read x_t[k][0] for k < w.k only (no padding needed);
// x_stride == 1 (the k bytes contiguous) is fastest, other strides are first copied to a
// contiguous per-thread buffer.
void run(const Ukernel& uk, const PackedWeights& w, size_t m, const uint8_t* x_t, size_t x_stride, float* y_t,
         size_t y_stride, size_t n_begin, size_t n_end, const Epilogue& ep);

namespace detail {
// x_t[k][0] for k < n as contiguous bytes: x itself when x_stride == 1, else a copy in a
// per-thread buffer (of a multiple of 64 bytes).
const uint8_t* contiguous_x(const uint8_t* x, size_t x_stride, size_t n);
}  // namespace detail

}  // namespace dsq::spmm_qu8
