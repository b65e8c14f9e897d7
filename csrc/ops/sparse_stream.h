// decode="stream" for sparse / codebook weights: the tensor's streams stay resident as
// stored in the file (Huffman-coded or bit-packed), and each run decodes them tile by
// tile (a tile = a range of output rows) into per-run scratch, in the kernel layout the
// decode="load" path packs once (CSR, row tiles, CSC or dense code tiles), so the
// spmm_f32 kernels are shared and the results are bit-identical to decode="load".
//
// Random access: at load one pass decodes every tile in order (validating the streams
// as decode_sparse + pack would) and records, per Huffman stream, the bit offset where
// each tile's first code starts; a run starts each tile's decode there.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "base/aligned.h"
#include "base/huffman.h"
#include "format/file.h"
#include "kernels/spmm_f32/spmm_f32.h"

namespace dsq::rt {

class StreamWeights {
 public:
  // Which kernel layouts the layer's kernels read besides the CSR (decided before
  // construction: they size the scratch).
  struct Needs {
    bool row_tiles = false, csc = false, dense = false;
  };

  // t: the validated weight tensor (rows = output channels). taps / cin: a kxk conv's
  // columns are remapped from the file's (cin, kh, kw) order to (kh, kw, cin) as at load
  // (taps = kh * kw; 1 = no remap). bias: n floats. max_rows_hint: aim for at least this
  // many tiles' worth of parallelism (e.g. 4 x hardware threads).
  // Throws FormatError (PAYLOAD) for bad stream contents, UnsupportedError for sizes
  // beyond u32 entries.
  StreamWeights(const format::Tensor& t, uint32_t taps, uint32_t cin, const float* bias, Needs needs,
                size_t min_tiles);

  // A PackedWeights with the flags, sizes and table kind the tiles will have (no data):
  // what kernel selection (best_ukernel_for, compatible) looks at.
  const spmm_f32::PackedWeights& proto() const { return proto_; }
  spmm_f32::PackedWeights& proto() { return proto_; }
  void set_needs(Needs needs);  // recomputes the scratch layout
  const Needs& needs() const { return needs_; }

  size_t n() const { return n_; }
  size_t k() const { return k_; }
  size_t nnz() const { return nnz_; }
  size_t tiles() const { return tile_row_.size() - 1; }
  size_t tile_row_begin(size_t t) const { return tile_row_[t]; }
  // Row boundaries of the tiles (tiles() + 1 entries).
  const std::vector<size_t>& tile_rows() const { return tile_row_; }
  // Scratch one decode_tile call needs (64-byte aligned start).
  size_t tile_scratch_bytes() const { return scratch_.total; }

  // Decodes tile `t` into `scratch` and points `w` at it: rows tile_row_begin(t).. as
  // rows 0..w.n-1 (bias and per-row tables offset to match), columns global. With
  // needs: also the row tiles / CSC / dense tiles (the ones asked for in `layouts`).
  // Returns the Huffman symbols decoded.
  uint64_t decode_tile(size_t t, uint8_t* scratch, spmm_f32::PackedWeights& w, Needs layouts) const;

  // Bytes held for the weights: the streams as stored, row_ptr, scales, table, bias and
  // the tile table.
  size_t resident_bytes() const;
  uint64_t coded_symbols() const { return coded_symbols_; }  // Huffman symbols per full pass
  bool codebook() const { return values_ == format::Values::kCodebook; }

 private:
  // One symbol stream (col_idx gaps, codebook indices, int8 / int4 values) as stored.
  struct Symbols {
    bool present = false, coded = false;
    format::ElemType elem = format::ElemType::kU8;
    unsigned bits = 0;
    uint64_t count = 0;
    AlignedBuffer bytes;
    std::unique_ptr<huffman::Decoder> dec;
    std::vector<uint64_t> tile_bit;  // per tile: bit offset of its first code (coded only)
  };
  void copy_symbols(const format::Stream* s, Symbols& out);
  // Symbols [first, first + count) of `s` into out (Huffman: from bit `bit`); returns the
  // bit after (coded) and counts decoded symbols into *coded.
  uint64_t read_symbols(const Symbols& s, uint64_t first, uint64_t count, uint64_t bit, uint8_t* out,
                        uint64_t* coded) const;
  void plan_tiles(size_t min_tiles);
  void layout_scratch();
  // Tile t's [first, end) units (csr entries / blocks / rows) of the structure.
  uint64_t unit_begin(size_t t) const;
  uint64_t unit_end(size_t t) const;
  uint64_t decode_impl(size_t t, uint8_t* scratch, spmm_f32::PackedWeights& w, Needs layouts,
                       uint64_t* col_bit_out, uint64_t* val_bit_out) const;

  std::string name_;
  format::Layout layout_;
  format::Values values_;
  size_t n_ = 0, k_ = 0, nnz_ = 0;
  uint32_t taps_ = 1, cin_ = 0;
  uint32_t group_size_ = 0, groups_ = 0, block_rows_ = 1, block_cols_ = 1;
  std::vector<uint32_t> row_ptr_;       // csr / csr_relative rows + 1, block_csr block rows + 1
  AlignedBuffer cols_raw_;              // csr / block_csr: u16 or u32 column indices
  bool cols_raw_u16_ = true;
  AlignedBuffer values_raw_;            // f32 / f16 values
  Symbols gaps_, syms_;                 // csr_relative gaps; codebook indices or int8/int4 values
  std::vector<float> scales_;           // int8_channel / int4_group
  AlignedBuffer table_, bias_;          // table padded as pack() does
  size_t table_entries_ = 0, table_stride_ = 0;
  bool table_per_row_ = false;
  std::vector<size_t> tile_row_;        // tiles + 1 row boundaries
  size_t max_rows_ = 0, max_entries_ = 0, max_col_syms_ = 0, max_val_syms_ = 0, max_steps_ = 0;
  uint64_t coded_symbols_ = 0;
  Needs needs_;
  spmm_f32::PackedWeights proto_;
  struct ScratchLayout {
    size_t col_syms = 0, val_syms = 0, row_ptr = 0, cols = 0, vals = 0, keys = 0, tmp_vals = 0;
    size_t step_ptr = 0, windows = 0, slots = 0, tile_work = 0, csc_cp = 0, csc_next = 0, csc_rows = 0, csc_vals = 0, dense = 0;
    size_t total = 0;
  } scratch_;
};

}  // namespace dsq::rt
