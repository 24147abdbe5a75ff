// deepstack/kernels_types.hpp - the types the kernels work on: a weight Matrix in its stored dtype
// or layout, the bytes of quantized weights (QuantWeights), and the compute mode of a product.
#pragma once
#include "common.hpp"

#include <cstdint>
#include <memory>

namespace deepstack::detail {

// Compute mode of a matmul: Exact = fp32 activations x stored weights, fp32 accumulation.
// Fast = bf16 activations (VDPBF16PS or AMX tiles) for BF16 weights, int8 activations (VNNI) or
// bf16 tiles for Q8 / Q4 weights; F32 / F16 weights always run Exact. Fast also runs attention
// with 8 or more queries (vision, prefill) on bf16 queries, keys, values and probabilities.
enum class Compute { Exact, Fast };

// Products of up to kGemvRows activation rows take the GEMV kernels (a decode step of that many
// sequences: the weights read once for all of them). Their registers hold kGemvChunk rows; more
// rows run chunk after chunk over each short run of weight rows while it is in cache. Each row's
// sums run in the same order for any row count in 1..kGemvRows, so a sequence decoded in a batch
// gets the bits it gets alone.
constexpr int kGemvRows = 8, kGemvChunk = 4;
// Fast mode's Q8 / Q4 products take the int8 GEMV up to this many rows too (a short prompt's
// prefill): the int8 GEMM first unpacks the weights into panels, which costs about as much as 40
// rows of the GEMV, and past that its rows cost about what the GEMV's do (2-core Zen 4, q4:
// 6144 x 2048 at 20 rows 1.2 ms against 3.5 ms, at 128 rows 7.3 against 8.0).
constexpr int kQuantGemvMaxRows = 128;

// One sequence's query in a decode step: its query row per head q [Hq, d], the keys and values of
// its cache [n_keys, Hkv * d] (its own new row last; T: float, or uint16_t holding bf16), out [Hq, d].
template <typename T>
struct DecodeQueryOf {
    const float* q;
    const T* k;
    const T* v;
    int64_t n_keys;
    float* out;
};
using DecodeQueryBf16 = DecodeQueryOf<uint16_t>;

// A weight matrix [rows, cols] in PyTorch [out, in] layout, in its stored dtype (a view into the
// mapped file) or in a quantized format made at load time (then `storage` owns the bytes).
//
// Row tiles (BF16 only, tile_rows = kTileRows): the rows come in groups of 8, each group stored as
// [cols/32][8][32] - 32 columns of its first row, the same 32 of the next row, ... - in the bytes
// the 8 rows held row-major, so a GEMV over 8 rows reads one sequential stream instead of 8
//. Rows past the last whole group stay row-major.
// Made in place at load for weights read into memory (tile_bf16_rows); weight_at, weight_row,
// weight_segment_f32 and every kernel read both layouts.
//
// Pair panels (BF16 only, panel_rows = kPanelRows): the rows come in groups of 32, each group
// stored as [cols/2][32][2] - columns (0, 1) of its 32 rows, then columns (2, 3), ... - in the
// bytes the 32 rows held row-major: the fast-mode GEMM's packed weight operand (kernels_bf16.hpp),
// which reads it in place instead of repacking the weights in every call. Rows past the last whole
// group stay row-major. Made at load for the vision tower in fast mode and, on AMX, in exact mode
// (panel_bf16_rows); the other readers see single pairs (correct, not fast) and the GEMVs hand such
// a matrix to a GEMM.
constexpr int kTileRows = 8, kTileCols = 32, kPanelRows = 32;
struct Matrix {
    DType dtype = DType::F32;
    const void* data = nullptr;
    int64_t rows = 0, cols = 0;
    std::shared_ptr<const void> storage;  // owner of quantized data, empty for mapped weights
    int tile_rows = 0;                    // 0: row-major; kTileRows: row tiles (above)
    int panel_rows = 0;                   // 0: row-major; kPanelRows: pair panels (above)
};

// The bytes behind a Q8 / Q4 Matrix (Matrix::data points at this object, Matrix::storage owns it).
// Symmetric per-group quantization along K (the `cols` / input dim) in groups of kQuantGroup = 32,
// K zero-padded to kpad (a multiple of 32), one bf16 scale per (row, group): 2 bytes per 32
// weights. A group's bytes:
//   Q8: 32 bytes, byte i = q of element i stored as q + 128 (u8) with q in [-127, 127],
//       w ~ scale * q, scale = max|w| / 127 rounded to bf16 (unsigned, as the VNNI GEMV multiplies it)
//   Q4: 16 bytes; byte i holds element i (low nibble) and element i + 16 (high nibble),
//       stored as q + 8 with q in [-8, 7], w ~ scale * q, scale = max|w| / 7 rounded to bf16
// q = w * (1 / scale) rounded to nearest, clamped to [-127, 127] / [-7, 7] (the bf16 rounding may
// put max|w| / scale just above 127 or 7). Rounding error per element <= scale / 2 (max|w| / 254
// for Q8, max|w| / 14 for Q4, give or take the scale's bf16 rounding: at most 2^-9 of it).
// Each row holds row_bytes(): its groups in blocks of kQuantBlock = 16, a block interleaved as
// [quad][16 groups][4 bytes] (quad j = bytes 4j..4j+3 of each group: one 64-byte load gives the
// same 4 bytes of 16 groups, so each 32-bit SIMD lane stays in one group and the GEMV scales once
// per block), then the groups after the last whole block one after the other (quant_quad).
constexpr int kQuantGroup = 32, kQuantBlock = 16;

// The values or scales of a QuantWeights: an array of its own (assign), or a view into a buffer
// shared with other matrices that `owner` keeps alive (view: a layer's experts, laid out together
// in 2 MiB pages). Not copyable: a copy would point into the original's array.
template <typename T>
class QuantArray {
public:
    QuantArray() = default;
    QuantArray(const QuantArray&) = delete;
    QuantArray& operator=(const QuantArray&) = delete;
    void assign(size_t n, T value) {
        own_.assign(n, value);
        p_ = own_.data(), n_ = n;
        owner_.reset();
    }
    void view(T* p, size_t n, std::shared_ptr<const void> owner) {
        big_vector<T>().swap(own_);
        p_ = p, n_ = n;
        owner_ = std::move(owner);
    }
    T* data() { return p_; }
    const T* data() const { return p_; }
    size_t size() const { return n_; }
    T& operator[](size_t i) { return p_[i]; }
    const T& operator[](size_t i) const { return p_[i]; }

private:
    big_vector<T> own_;
    T* p_ = nullptr;
    size_t n_ = 0;
    std::shared_ptr<const void> owner_;
};

struct QuantWeights {
    DType type = DType::Q8;
    int64_t rows = 0, cols = 0, kpad = 0;
    QuantArray<int8_t> q;         // rows * row_bytes()
    QuantArray<uint16_t> scale;   // rows * (kpad / 32), bf16 (the scale_at values, exactly)
    int64_t groups() const { return kpad / kQuantGroup; }
    int64_t group_bytes() const { return type == DType::Q8 ? kQuantGroup : kQuantGroup / 2; }
    int64_t row_bytes() const { return groups() * group_bytes(); }
    float scale_at(int64_t n, int64_t g) const { return detail::bf16_to_f32(scale[size_t(n * groups() + g)]); }
    // Quad j (4 bytes) of group g of row n: quant_quad(n, g, 0) + j * quad_stride(g).
    int64_t quad_stride(int64_t g) const { return g < groups() / kQuantBlock * kQuantBlock ? 4 * kQuantBlock : 4; }
    const int8_t* quant_quad(int64_t n, int64_t g, int64_t j) const {
        const int64_t gb = group_bytes();
        const int8_t* row = q.data() + n * row_bytes();
        if (quad_stride(g) != 4) return row + (g / kQuantBlock) * kQuantBlock * gb + j * (4 * kQuantBlock) + (g % kQuantBlock) * 4;
        return row + g * gb + j * 4;
    }
    int8_t* quant_quad(int64_t n, int64_t g, int64_t j) {
        return const_cast<int8_t*>(static_cast<const QuantWeights*>(this)->quant_quad(n, g, j));
    }
    // Byte i of group g of row n.
    int8_t group_byte(int64_t n, int64_t g, int64_t i) const { return quant_quad(n, g, i / 4)[i % 4]; }
};

}  // namespace deepstack::detail
