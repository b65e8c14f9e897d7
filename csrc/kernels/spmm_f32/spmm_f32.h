// Sparse-weight f32 family: Y = clamp(W . X + bias, lo, hi) with W an N x K sparse matrix
// (CSR by output row) whose values are f32 or codebook indices (u8 code into a table of
// f32, one table per tensor or one per row).
//
// Activations use the "transposed" layout of Elsen et al. (Fast Sparse ConvNets) and
// XNNPACK spmm: x_t[k][m] (row k of K, x_stride bytes between rows) and y_t[n][m]
// (row n of N, y_stride bytes between rows). Vector lanes run along m (batch or pixels):
// each nonzero w[n][k] is broadcast and FMA'd into y_t[n][m0:m0+mr] += w * x_t[k][m0:m0+mr].
// M = 1 (batch-1 SpMV) has its own kernels (spmv_*): scalar loads of x (gathers are slow
// on Zen 4) and, for per-tensor codebooks of <= 32 entries on AVX-512, a row-tile layout
// (16 rows x 32-column windows, x held in two zmm and looked up with vpermt2ps).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "base/aligned.h"
#include "base/cpu.h"

namespace dsq::spmm_f32 {

// Row-tile layout for the batch-1 codebook kernel (spmv_cb_f32_16x32__avx512): rows are
// grouped 16 at a time (lane j = row 16g + j), columns in windows of 32. A step is one
// nonzero per lane from a single window: slot = column-in-window (bits 0-4) | code << 8,
// bit 15 set on padding lanes (lane has no more nonzeros in that window). Steps of a group
// are ordered by window.
constexpr size_t kTileRows = 16;
constexpr size_t kTileCols = 32;
constexpr uint16_t kTilePad = 0x8000;

struct PackedWeights {
  size_t n = 0, k = 0, nnz = 0;
  // CSR (always built): row_ptr u32[n + 1]; columns u16 when k <= 65536, else u32.
  AlignedBuffer row_ptr;
  AlignedBuffer cols;
  bool cols_u16 = true;
  // Values: f32[nnz] (values) or u8[nnz] codes + table f32[(per_row ? n : 1) * table_stride].
  bool codebook = false;
  AlignedBuffer values;
  AlignedBuffer codes;
  AlignedBuffer table;         // zero padded to table_stride (>= 32) entries per table
  size_t table_entries = 0;    // 2^b, b <= 8
  size_t table_stride = 0;     // floats between per-row tables
  bool table_per_row = false;
  AlignedBuffer bias;          // f32[n], zeros when no bias was given
  // Row tiles (built only for per-tensor codebooks with <= 32 entries, and k < 2^21).
  bool has_tiles = false;
  AlignedBuffer tile_step_ptr;  // u32[groups + 1]: first step of each 16-row group
  AlignedBuffer tile_window;    // u16[steps]: window index (first column / 32)
  AlignedBuffer tile_slots;     // u16[steps * 16]
  size_t tile_steps = 0;
  // Column-major copy (CSC, built by build_csc() for layers that zero-skip at batch 1):
  // csc_col_ptr u32[k + 1]; row indices u16 when n <= 65536, else u32; values f32[nnz]
  // or u8 codes[nnz] (same table as the CSR). Within a column rows are increasing.
  bool has_csc = false;
  AlignedBuffer csc_col_ptr;
  AlignedBuffer csc_rows;
  bool csc_rows_u16 = true;
  AlignedBuffer csc_values;
  AlignedBuffer csc_codes;
  // Dense codebook tiles (built by build_dense_tiles() when every row holds all k entries:
  // k-means weight sharing without pruning) for gemv_cb_*: u8 codes, no column indices.
  // Tile (g, win) = rows 16g..16g+15 x columns 32win..32win+31, stored column by column
  // (16 codes per column, lane j = row 16g + j) at byte ((g * dense_windows + win) * 32 +
  // c) * 16; rows >= n and columns >= k hold code 0.
  bool has_dense = false;
  size_t dense_windows = 0;   // ceil(k / 32)
  AlignedBuffer dense_codes;
  // Direct convolution (ops/sparse.cc, stride-1 convs without im2col): the columns are
  // element offsets (in x_stride units) into one zero-padded input plane instead of indices
  // < k, and direct_offsets[c] (c < k) is the offset of logical column c, non-decreasing.
  // The AVX-512 kernels split long rows into blocks of logical columns for L2; they find
  // the block ends through it, so a row is split at the same nonzeros (same sums, same
  // rounding) as with the logical columns. Null: the columns are the logical indices.
  const uint32_t* direct_offsets = nullptr;

  const uint32_t* rp() const { return row_ptr.as<uint32_t>(); }
  const uint16_t* col16() const { return cols.as<uint16_t>(); }
  const uint32_t* col32() const { return cols.as<uint32_t>(); }
  const float* vals() const { return values.as<float>(); }
  const uint8_t* code() const { return codes.as<uint8_t>(); }
  const float* tab() const { return table.as<float>(); }
  const float* bias_ptr() const { return bias.as<float>(); }
  const uint32_t* cp() const { return csc_col_ptr.as<uint32_t>(); }
  size_t groups() const { return (n + kTileRows - 1) / kTileRows; }
  // The column value where logical column c (< k) starts.
  size_t block_col(size_t c) const { return direct_offsets ? direct_offsets[c] : c; }
  // Bytes a batch-1 call reads for the weights with the CSR layout / the row tiles.
  size_t csr_bytes() const;
  size_t tile_bytes() const;
  size_t csc_bytes() const;  // 0 without the CSC copy
  size_t dense_bytes() const;  // codes + bias (+ table) a gemv_cb call reads; 0 without tiles
  size_t resident_bytes() const;  // bytes its buffers own (views excluded)
};

// Builds the kernel layouts once at load. row_ptr: u32[n + 1] (row_ptr[0] = 0, non
// decreasing), col: u32[nnz] (< k, any order within a row), values: f32[nnz] (null for a
// codebook), codes: u8[nnz] (< table_entries; null for f32 values), table:
// f32[(per_row ? n : 1) * table_entries], bias: f32[n] or null. Throws
// std::invalid_argument on inconsistent input. `build_tiles` = false skips the row tiles
// (saves their memory when the layer never runs with batch 1).
PackedWeights pack(size_t n, size_t k, const uint32_t* row_ptr, const uint32_t* col,
                   const float* values, const uint8_t* codes, const float* table,
                   size_t table_entries, bool table_per_row, const float* bias,
                   bool build_tiles = true);

// Adds the column-major (CSC) copy the zero-skipping kernels (Layout::kCsc) read; the
// values/codes are the CSR's, reordered. Idempotent.
void build_csc(PackedWeights& w);

// Adds the dense codebook tiles (Layout::kDenseTiles) from the CSR codes. Needs a codebook
// whose rows each hold all k columns (nnz == n * k); throws std::invalid_argument
// otherwise. Idempotent.
void build_dense_tiles(PackedWeights& w);

// The same layouts built into caller memory, for weights decoded tile by tile at run time
// (decode="stream"): w holds the CSR of the tile (row_ptr, sorted columns, codes or
// values). They produce exactly what pack() / build_csc() / build_dense_tiles() would for
// those rows, so every kernel gives the same results on either.
// Row tiles: step_ptr u32[groups + 1], windows u16[steps], slots u16[steps * kTileRows];
// steps <= nnz (every step holds at least one nonzero); work: u32[row_tile_work_words(k)].
// Returns steps. Needs a codebook.
size_t row_tile_work_words(size_t k);
// The steps build_row_tiles_into() would produce (to size its buffers exactly).
size_t count_row_tile_steps(const PackedWeights& w, uint32_t* work);
size_t build_row_tiles_into(const PackedWeights& w, uint32_t* step_ptr, uint16_t* windows, uint16_t* slots,
                            uint32_t* work);
// CSC with u16 rows (w.n <= 65536): col_ptr u32[k + 1], next u32[k] (work space),
// rows u16[nnz], codes u8[nnz] (codebook) or values f32[nnz].
void build_csc_into(const PackedWeights& w, uint32_t* col_ptr, uint32_t* next, uint16_t* rows, uint8_t* codes,
                    float* values);
// Dense code tiles, groups * ceil(k / 32) * 32 * 16 bytes; every row must hold all k
// columns (not checked here).
void build_dense_tiles_into(const PackedWeights& w, uint8_t* out);

// Zero-skipping statistics of one input column x (k floats, x_stride bytes apart):
// the number of k with x[k] == 0 (+0 or -0).
size_t count_zeros(const float* x, size_t x_stride, size_t k);
// The MACs a CSC kernel skips for x: sum over k with x[k] == 0 of the nonzeros of column
// k. Needs build_csc().
uint64_t skipped_macs(const PackedWeights& w, const float* x, size_t x_stride);

// Computes rows [n_begin, n_end) of y_t for all m columns (single thread; the op layer
// splits rows between threads with balanced_row_ranges()).
using UkernelFn = void (*)(const PackedWeights& w, size_t m, const float* x_t, size_t x_stride,
                           float* y_t, size_t y_stride, size_t n_begin, size_t n_end, float lo,
                           float hi);

// kCsc: batch-1 zero-skipping kernels (EIE-style): y = bias, then for each k with
// x[k] != 0 scatter-add column k (y[row] += w * x[k]), then clamp. Never chosen by
// best_ukernel()/best_ukernel_for() (they serve the row path); see best_csc_ukernel().
// kDenseTiles: batch-1 dense codebook kernels (gemv_cb_*), preferred by best_ukernel_for()
// when the tiles exist; never chosen by best_ukernel().
enum class Layout : int { kCsr = 0, kRowTiles = 1, kCsc = 2, kDenseTiles = 3 };

struct Ukernel {
  const char* name;  // e.g. "spmm_cb_f32_32__avx512", "spmv_f32__avx512"
  Isa isa;
  size_t mr;         // m tile (1 for spmv kernels)
  bool codebook;     // values are codebook indices
  bool spmv;         // batch-1 kernel (only m == 1)
  Layout layout;     // which packed layout it reads
  UkernelFn fn;
};

// Every built variant (from kernels.inc), references first.
const std::vector<Ukernel>& all_ukernels();
// True when `uk` can run on `w` with m columns (value kind, layout present, m == 1 for spmv,
// per-tensor table of <= 32 entries for the row tiles).
bool compatible(const Ukernel& uk, const PackedWeights& w, size_t m);
// The best variant this CPU supports for the value kind and batch kind (generic choice,
// assumes a per-tensor table of <= 32 entries for codebook spmv).
const Ukernel& best_ukernel(bool codebook, bool spmv);
// The best supported variant that is compatible with these weights and m.
const Ukernel& best_ukernel_for(const PackedWeights& w, size_t m);
// The best supported zero-skipping (kCsc) variant for the value kind of w.
const Ukernel& best_csc_ukernel(const PackedWeights& w);
// Look up by name; nullptr when not built or not supported by this CPU.
const Ukernel* find_ukernel(const char* name);

// Runs `uk` on rows [n_begin, n_end) (clamped to n). Throws std::invalid_argument when the
// ukernel is not compatible with w / m.
void run(const Ukernel& uk, const PackedWeights& w, size_t m, const float* x_t,
         size_t x_stride, float* y_t, size_t y_stride, size_t n_begin, size_t n_end, float lo,
         float hi);

// Splits rows into `parts` contiguous ranges of about equal nonzeros (+ a per-row cost so
// empty rows still count): returns parts + 1 boundaries, b[0] = 0, b[parts] = n,
// non-decreasing. With align > 1 inner boundaries are multiples of align (use kTileRows
// for the row-tile kernel so no 16-row group is computed twice).
std::vector<size_t> balanced_row_ranges(const PackedWeights& w, size_t parts, size_t align = 1);

}  // namespace dsq::spmm_f32
