// deepstack/kernels.hpp - the numeric kernels the forward pass is written in: matrix products
// against weights in their stored dtype, norms, activations, rotary, attention.
// Each kernel has a plain scalar form (the reference); SIMD forms are chosen at compile time
// (kernels_simd.hpp: AVX-512 / AVX2+FMA / NEON / portable), OpenMP over the large dimension.
//
// In namespace deepstack::detail (x, y fp32 row-major; W a Matrix in [out, in] layout):
//   matmul(x, M, W, y, bias)            exact mode: fp32 activations, fp32 accumulation, weights
//                                       F32/BF16/F16/Q8/Q4 read in place (kernels_gemm.hpp); BF16
//                                       with M > 4 on AMX tiles where usable, each activation split
//                                       exactly into three bf16 pieces (matmul_exact_amx)
//   matmul(x, M, W, y, bias, Compute)   Compute::Fast: BF16 -> matmul_bf16, Q8/Q4 -> matmul_quant_fast
//   matmul_bf16(...)                    bf16-rounded activations, AVX-512 BF16 dot products; the GEMM
//                                       (M > 4) on AMX tiles where usable (kernels_amx.hpp), which also
//                                       take fast mode's Q8 / Q4 GEMMs and bf16 attention products there
//   matmul_quant_fast(...)              int8 activations per group of 32, AVX-512 VNNI GEMM and GEMV
//                                       (without VNNI: the exact kernels)
//   matmul_shared_input(x, M, W[], y[]) several matrices on one input (one GEMV region where it pays)
//   layernorm, rmsnorm                  SIMD; gelu_tanh_inplace, gelu_erf_inplace, silu_inplace,
//                                       silu_mul (array forms); gelu_tanh/gelu_erf/silu (scalar)
//   attention(...)                      tiled, online softmax, strided q / k / v (kernels_attention.hpp)
//   attention_cached_bf16(...)          causal attention over a bf16 KV cache (fast mode where
//                                       kv_cache_bf16); round_to_bf16 writes its rows
//   *_ref                               scalar references of all of the above
//   tile_bf16_rows, panel_bf16_rows     re-lay a BF16 matrix in place for the GEMV / the bf16 GEMM
// In namespace deepstack: quantize(W, DType::Q8 | DType::Q4) -> Matrix owning its QuantWeights.
#pragma once
#include "common.hpp"
#include "kernels_simd.hpp"

#include <algorithm>
#include <cmath>
#include <memory>

#ifdef _OPENMP
#include <omp.h>
#endif

// GCC 12's AVX-512 intrinsic headers trip -W(maybe-)uninitialized (_mm512_undefined_* inside the
// intrinsics) once inlined at -O3; silence that false positive for the kernels only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace deepstack {

// A weight matrix [rows, cols] in PyTorch [out, in] layout, in its stored dtype (a view into the
// mapped file) or in a quantized format made at load time (then `storage` owns the bytes).
//
// Row tiles (BF16 only, tile_rows = kTileRows): the rows come in groups of 8, each group stored as
// [cols/32][8][32] - 32 columns of its first row, the same 32 of the next row, ... - in the bytes
// the 8 rows held row-major, so a GEMV over 8 rows reads one sequential stream instead of 8
// (decode ran ~15% faster on the project's VM). Rows past the last whole group stay row-major.
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
// weights instead of 4 (Q4 10% fewer bytes per token than with fp32 scales, Q8 5.6%). A group's bytes:
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
struct QuantWeights {
    DType type = DType::Q8;
    int64_t rows = 0, cols = 0, kpad = 0;
    detail::big_vector<int8_t> q;     // rows * row_bytes() (2 MiB pages)
    detail::big_vector<uint16_t> scale;  // rows * (kpad / 32), bf16 (the scale_at values, exactly)
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

namespace detail {

// fp32 -> IEEE half, round to nearest even, overflow to inf, NaN kept (for tests and F16 caches).
inline uint16_t f32_to_f16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf
    if (ax < 0x38800000u) {                                   // below 2^-14: subnormal half
        float a;
        std::memcpy(&a, &ax, 4);
        return uint16_t(sign | uint32_t(std::nearbyint(a * 16777216.0f)));
    }
    const uint32_t r = ax + 0xc8000fffu + ((ax >> 13) & 1u);  // rebias exponent, round to nearest even
    return uint16_t(sign | (r >> 13));
}

// Index of element (r, c) in w.data, in either layout (see Matrix).
inline int64_t weight_index(const Matrix& w, int64_t r, int64_t c) {
    if (w.panel_rows && r < w.rows / kPanelRows * kPanelRows)
        return (r / kPanelRows) * kPanelRows * w.cols + (c / 2) * (2 * kPanelRows) + (r % kPanelRows) * 2 + c % 2;
    if (w.tile_rows == 0 || r >= w.rows / kTileRows * kTileRows) return r * w.cols + c;
    return (r / kTileRows) * kTileRows * w.cols + (c / kTileCols) * (kTileRows * kTileCols) + (r % kTileRows) * kTileCols + c % kTileCols;
}

// Calls chunk(index, offset, len) for the contiguous pieces of row n, columns [k0, k0 + kc), in
// either layout: one piece for a row-major row, one per 32-column chunk (or part) in a row tile;
// index is the piece's first element in w.data, offset its first column minus k0.
template <typename Chunk>
inline void for_each_row_piece(const Matrix& w, int64_t n, int64_t k0, int64_t kc, const Chunk& chunk) {
    const bool in_panel = w.panel_rows && n < w.rows / kPanelRows * kPanelRows;
    if (!in_panel && (w.tile_rows == 0 || n >= w.rows / kTileRows * kTileRows)) return chunk(n * w.cols + k0, int64_t(0), kc);
    const int64_t piece = in_panel ? 2 : kTileCols;
    for (int64_t k = k0; k < k0 + kc;) {
        const int64_t len = std::min(k0 + kc, (k / piece + 1) * piece) - k;
        chunk(weight_index(w, n, k), k - k0, len);
        k += len;
    }
}

// Can w be stored in row tiles (BF16, whole 32-column chunks, at least one group of 8 rows)?
inline bool tileable(const Matrix& w) {
    return w.dtype == DType::BF16 && w.tile_rows == 0 && w.panel_rows == 0 && w.cols % kTileCols == 0 && w.rows >= kTileRows;
}

// Can w be stored in pair panels (BF16, an even column count, at least one group of 32 rows)?
inline bool panelable(const Matrix& w) {
    return w.dtype == DType::BF16 && w.tile_rows == 0 && w.panel_rows == 0 && w.cols % 2 == 0 && w.rows >= kPanelRows;
}

// Rewrites a row-major BF16 matrix as row tiles in place; `data` is w.data, writable.
inline void tile_bf16_rows(Matrix& w, uint16_t* data) {
    if (!tileable(w) || data != w.data) throw Error("tile_bf16_rows: needs a writable row-major BF16 matrix with whole 32-column chunks");
    const int64_t K = w.cols, groups = w.rows / kTileRows;
#pragma omp parallel if (groups >= 64)
    {
        std::vector<uint16_t> group(size_t(kTileRows * K));
#pragma omp for schedule(static)
        for (int64_t g = 0; g < groups; ++g) {
            uint16_t* base = data + g * kTileRows * K;
            std::memcpy(group.data(), base, group.size() * sizeof(uint16_t));
            for (int64_t c = 0; c < K; c += kTileCols)
                for (int r = 0; r < kTileRows; ++r)
                    std::memcpy(base + c * kTileRows + r * kTileCols, group.data() + r * K + c, kTileCols * sizeof(uint16_t));
        }
    }
    w.tile_rows = kTileRows;
}

// Rewrites a row-major BF16 matrix as pair panels in place; `data` is w.data, writable.
inline void panel_bf16_rows(Matrix& w, uint16_t* data) {
    if (!panelable(w) || data != w.data) throw Error("panel_bf16_rows: needs a writable row-major BF16 matrix with an even column count");
    const int64_t K = w.cols, groups = w.rows / kPanelRows;
#pragma omp parallel if (groups >= 16)
    {
        std::vector<uint16_t> group(size_t(kPanelRows * K));  // the group's rows, row-major
#pragma omp for schedule(static)
        for (int64_t g = 0; g < groups; ++g) {
            uint16_t* base = data + g * kPanelRows * K;
            std::memcpy(group.data(), base, group.size() * sizeof(uint16_t));
            for (int64_t c = 0; c < K; c += 2)
                for (int r = 0; r < kPanelRows; ++r) std::memcpy(base + c * kPanelRows + 2 * r, group.data() + r * K + c, 2 * sizeof(uint16_t));
        }
    }
    w.panel_rows = kPanelRows;
}

// Weight element (r, c) as float; used by the scalar reference and by small one-off reads.
inline float weight_at(const Matrix& w, int64_t r, int64_t c) {
    const int64_t i = weight_index(w, r, c);
    switch (w.dtype) {
        case DType::F32: return static_cast<const float*>(w.data)[i];
        case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(w.data)[i]);
        case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(w.data)[i]);
        case DType::Q8:
        case DType::Q4: {
            const auto* qw = static_cast<const QuantWeights*>(w.data);
            const int64_t g = c / kQuantGroup, j = c % kQuantGroup;
            const float s = qw->scale_at(r, g);
            if (w.dtype == DType::Q8) return s * float(int(uint8_t(qw->group_byte(r, g, j))) - 128);
            const uint8_t b = uint8_t(qw->group_byte(r, g, j & 15));
            return s * float(int((j < 16) ? (b & 15) : (b >> 4)) - 8);
        }
        default: throw Error(std::string("weight_at: unsupported dtype ") + dtype_name(w.dtype));
    }
}

// Row r of a weight matrix converted to float.
inline void weight_row(const Matrix& w, int64_t r, float* out) {
    for (int64_t c = 0; c < w.cols; ++c) out[c] = weight_at(w, r, c);
}

// y[M, rows] = x[M, cols] * W^T (+ bias[rows]). Scalar reference.
inline void matmul_ref(const float* x, int64_t M, const Matrix& W, float* y, const float* bias = nullptr) {
    const int64_t N = W.rows, K = W.cols;
#pragma omp parallel if (double(M) * double(N) * double(K) >= double(1 << 20))
    {
        std::vector<float> row(static_cast<size_t>(K), 0.f);
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            weight_row(W, n, row.data());
            for (int64_t m = 0; m < M; ++m) {
                const float* xm = x + m * K;
                float acc = 0.f;
                for (int64_t k = 0; k < K; ++k) acc += xm[k] * row[size_t(k)];
                y[m * N + n] = acc + (bias ? bias[n] : 0.f);
            }
        }
    }
}

}  // namespace detail
}  // namespace deepstack

#include "kernels_gemm.hpp"

namespace deepstack {
namespace detail {

// LayerNorm over the last dim (n) of rows [M, n], in place allowed (y may equal x). Scalar reference.
inline void layernorm_ref(const float* x, int64_t M, int64_t n, const float* w, const float* b, float eps, float* y) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
        const float* xm = x + m * n;
        float* ym = y + m * n;
        double mean = 0;
        for (int64_t i = 0; i < n; ++i) mean += xm[i];
        mean /= double(n);
        double var = 0;
        for (int64_t i = 0; i < n; ++i) var += (xm[i] - mean) * (xm[i] - mean);
        var /= double(n);
        const float inv = float(1.0 / std::sqrt(var + eps)), mu = float(mean);
        for (int64_t i = 0; i < n; ++i) ym[i] = (xm[i] - mu) * inv * w[i] + b[i];
    }
}

// RMSNorm over rows [M, n] (statistics in fp32), y may equal x. Scalar reference.
inline void rmsnorm_ref(const float* x, int64_t M, int64_t n, const float* w, float eps, float* y) {
    for (int64_t m = 0; m < M; ++m) {
        const float* xm = x + m * n;
        float* ym = y + m * n;
        float ss = 0.f;
        for (int64_t i = 0; i < n; ++i) ss += xm[i] * xm[i];
        const float inv = 1.f / std::sqrt(ss / float(n) + eps);
        for (int64_t i = 0; i < n; ++i) ym[i] = xm[i] * inv * w[i];
    }
}

inline float gelu_tanh(float x) {
    const float k = 0.7978845608028654f;  // sqrt(2/pi)
    return 0.5f * x * (1.f + std::tanh(k * (x + 0.044715f * x * x * x)));
}
inline float gelu_erf(float x) { return 0.5f * x * (1.f + std::erf(x * 0.7071067811865476f)); }
inline float silu(float x) { return x / (1.f + std::exp(-x)); }

// Rows of a [M, n] elementwise/norm job spread over threads when there is enough work.
inline bool worth_threads(int64_t elems) { return elems >= (int64_t(1) << 16) && omp_threads() > 1; }

// LayerNorm of one row x[0, n) into y (may equal x). SIMD, two-pass fp32 statistics (mean, then
// mean of squared deviations); matches layernorm_ref to ~1e-6 relative.
inline void layernorm_row(const float* xm, int64_t n, const float* w, const float* b, float eps, float* ym) {
    using namespace simd;
    vf s0 = zero(), s1 = zero();
    int64_t i = 0;
    for (; i + 2 * W <= n; i += 2 * W) {
        s0 = add(s0, load(xm + i));
        s1 = add(s1, load(xm + i + W));
    }
    for (; i + W <= n; i += W) s0 = add(s0, load(xm + i));
    if (i < n) s1 = add(s1, load_n(xm + i, int(n - i)));
    const float mu = hsum(add(s0, s1)) / float(n);
    const vf muv = set1(mu);
    s0 = zero();
    float tail = 0.f;
    for (i = 0; i + W <= n; i += W) {
        const vf d = sub(load(xm + i), muv);
        s0 = simd::fma(d, d, s0);
    }
    for (; i < n; ++i) tail += (xm[i] - mu) * (xm[i] - mu);
    const float var = (hsum(s0) + tail) / float(n);
    const float inv = 1.f / std::sqrt(var + eps);
    const vf iv = set1(inv);
    for (i = 0; i + W <= n; i += W) {
        const vf v = mul(sub(load(xm + i), muv), iv);
        store(ym + i, simd::fma(v, load(w + i), load(b + i)));
    }
    if (i < n) {
        const int r = int(n - i);
        const vf v = mul(sub(load_n(xm + i, r), muv), iv);
        store_n(ym + i, simd::fma(v, load_n(w + i, r), load_n(b + i, r)), r);
    }
}

// RMSNorm of one row x[0, n) into y (may equal x), statistics in fp32. SIMD.
inline void rmsnorm_row(const float* xm, int64_t n, const float* w, float eps, float* ym) {
    using namespace simd;
    vf s0 = zero(), s1 = zero();
    int64_t i = 0;
    for (; i + 2 * W <= n; i += 2 * W) {
        const vf a = load(xm + i), c = load(xm + i + W);
        s0 = simd::fma(a, a, s0);
        s1 = simd::fma(c, c, s1);
    }
    for (; i + W <= n; i += W) {
        const vf a = load(xm + i);
        s0 = simd::fma(a, a, s0);
    }
    if (i < n) {
        const vf a = load_n(xm + i, int(n - i));
        s1 = simd::fma(a, a, s1);
    }
    const float inv = 1.f / std::sqrt(hsum(add(s0, s1)) / float(n) + eps);
    const vf iv = set1(inv);
    for (i = 0; i + W <= n; i += W) store(ym + i, mul(mul(load(xm + i), iv), load(w + i)));
    if (i < n) {
        const int r = int(n - i);
        store_n(ym + i, mul(mul(load_n(xm + i, r), iv), load_n(w + i, r)), r);
    }
}

// x[0, n) += y[0, n), SIMD (one row of a residual add).
inline void add_row(float* x, const float* y, int64_t n) {
    using namespace simd;
    int64_t i = 0;
    for (; i + W <= n; i += W) store(x + i, add(load(x + i), load(y + i)));
    for (; i < n; ++i) x[i] += y[i];
}

// LayerNorm / RMSNorm over the last dim (n) of rows [M, n], y may equal x.
inline void layernorm(const float* x, int64_t M, int64_t n, const float* w, const float* b, float eps, float* y) {
#pragma omp parallel for schedule(static) if (worth_threads(M * n))
    for (int64_t m = 0; m < M; ++m) layernorm_row(x + m * n, n, w, b, eps, y + m * n);
}
inline void rmsnorm(const float* x, int64_t M, int64_t n, const float* w, float eps, float* y) {
#pragma omp parallel for schedule(static) if (worth_threads(M * n))
    for (int64_t m = 0; m < M; ++m) rmsnorm_row(x + m * n, n, w, eps, y + m * n);
}

// The residual add fused with the norm after it, row by row (the row stays in L1 between the two):
// h += r, then y = LayerNorm(h) / RMSNorm(h); y may equal r. Same results as add_inplace and the norm.
inline void add_layernorm(float* h, const float* r, int64_t M, int64_t n, const float* w, const float* b, float eps, float* y) {
#pragma omp parallel for schedule(static) if (worth_threads(M * n))
    for (int64_t m = 0; m < M; ++m) {
        add_row(h + m * n, r + m * n, n);
        layernorm_row(h + m * n, n, w, b, eps, y + m * n);
    }
}
inline void add_rmsnorm(float* h, const float* r, int64_t M, int64_t n, const float* w, float eps, float* y) {
#pragma omp parallel for schedule(static) if (worth_threads(M * n))
    for (int64_t m = 0; m < M; ++m) {
        add_row(h + m * n, r + m * n, n);
        rmsnorm_row(h + m * n, n, w, eps, y + m * n);
    }
}

// Apply a vector function to x[0..n) in place (threads for large arrays).
template <class F>
inline void map_inplace(float* x, int64_t n, F f) {
    using namespace simd;
    constexpr int64_t CH = 4096;
    const int64_t chunks = (n + CH - 1) / CH;
#pragma omp parallel for schedule(static) if (worth_threads(n))
    for (int64_t c = 0; c < chunks; ++c) {
        const int64_t e = std::min(n, (c + 1) * CH);
        int64_t i = c * CH;
        for (; i + W <= e; i += W) store(x + i, f(load(x + i)));
        if (i < e) store_n(x + i, f(load_n(x + i, int(e - i))), int(e - i));
    }
}

// Array forms (SIMD; see simd::gelu_tanh / gelu_erf / silu for the approximations: relative error
// <= ~1e-6 against the exact functions in double, except where the result underflows towards 0).
inline void gelu_tanh_inplace(float* x, int64_t n) { map_inplace(x, n, [](simd::vf v) { return simd::gelu_tanh(v); }); }
inline void gelu_erf_inplace(float* x, int64_t n) { map_inplace(x, n, [](simd::vf v) { return simd::gelu_erf(v); }); }
inline void silu_inplace(float* x, int64_t n) { map_inplace(x, n, [](simd::vf v) { return simd::silu(v); }); }

// x[i] += y[i] (the residual adds), on all threads for large arrays.
inline void add_inplace(float* x, const float* y, int64_t n) {
    constexpr int64_t CH = 4096;
    const int64_t chunks = (n + CH - 1) / CH;
#pragma omp parallel for schedule(static) if (worth_threads(n))
    for (int64_t c = 0; c < chunks; ++c) add_row(x + c * CH, y + c * CH, std::min(CH, n - c * CH));
}

// SwiGLU: out[i] = silu(gate[i]) * up[i] (out may alias gate or up).
inline void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
    using namespace simd;
    constexpr int64_t CH = 4096;
    const int64_t chunks = (n + CH - 1) / CH;
#pragma omp parallel for schedule(static) if (worth_threads(n))
    for (int64_t c = 0; c < chunks; ++c) {
        const int64_t e = std::min(n, (c + 1) * CH);
        int64_t i = c * CH;
        for (; i + W <= e; i += W) store(out + i, mul(simd::silu(load(gate + i)), load(up + i)));
        if (i < e) {
            const int r = int(e - i);
            store_n(out + i, mul(simd::silu(load_n(gate + i, r)), load_n(up + i, r)), r);
        }
    }
}


// Rotate-half rotary on one head vector of size d with angles cos/sin[d/2]:
// pair (j, j + d/2).
inline void rope_rotate_half(float* v, int d, const float* cos_a, const float* sin_a) {
    const int half = d / 2;
    for (int j = 0; j < half; ++j) {
        const float a = v[j], b = v[j + half];
        v[j] = a * cos_a[j] - b * sin_a[j];
        v[j + half] = b * cos_a[j] + a * sin_a[j];
    }
}

// Attention with grouped KV heads. Scalar reference (full score row per query).
// q [Tq, Hq, d], k/v [Tk, Hkv, d] (row strides Hq*d and Hkv*d), out [Tq, Hq, d].
// causal: query i sits at absolute position q_offset + i and sees keys 0..q_offset+i.
inline void attention_ref(const float* q, int64_t Tq, const float* k, const float* v, int64_t Tk, int Hq, int Hkv, int d,
                      float scale, bool causal, int64_t q_offset, float* out) {
    const int group = Hq / Hkv;
#pragma omp parallel if (double(Tq) * double(Tk) * double(Hq) * double(d) >= double(1 << 20))
    {
        std::vector<float> scores(static_cast<size_t>(Tk), 0.f);
#pragma omp for collapse(2) schedule(static)
        for (int64_t i = 0; i < Tq; ++i) {
            for (int h = 0; h < Hq; ++h) {
                const float* qi = q + (i * Hq + h) * d;
                const int kvh = h / group;
                const int64_t n_keys = causal ? std::min(Tk, q_offset + i + 1) : Tk;
                float mx = -INFINITY;
                for (int64_t j = 0; j < n_keys; ++j) {
                    const float* kj = k + (j * Hkv + kvh) * d;
                    float s = 0.f;
                    for (int t = 0; t < d; ++t) s += qi[t] * kj[t];
                    scores[size_t(j)] = s * scale;
                    mx = std::max(mx, scores[size_t(j)]);
                }
                float sum = 0.f;
                for (int64_t j = 0; j < n_keys; ++j) sum += scores[size_t(j)] = std::exp(scores[size_t(j)] - mx);
                float* o = out + (i * Hq + h) * d;
                std::fill(o, o + d, 0.f);
                for (int64_t j = 0; j < n_keys; ++j) {
                    const float p = scores[size_t(j)] / sum;
                    const float* vj = v + (j * Hkv + kvh) * d;
                    for (int t = 0; t < d; ++t) o[t] += p * vj[t];
                }
            }
        }
    }
}

}  // namespace detail
}  // namespace deepstack

#include "kernels_attention.hpp"
#include "kernels_quant.hpp"
#include "kernels_bf16.hpp"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
