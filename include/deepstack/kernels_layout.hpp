// deepstack/kernels_layout.hpp - reading and re-laying weights: element and row access in every
// stored layout (row-major, row tiles, pair panels; F32 / BF16 / F16 / Q8 / Q4), the in-place
// re-layouts made at load, and quantize() to Q8 / Q4.
#pragma once
#include "common.hpp"
#include "kernels_types.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace deepstack::detail {

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

// Row r of a weight matrix converted to float: float formats piece by piece (for_each_row_piece),
// quantized ones element by element.
inline void weight_row(const Matrix& w, int64_t r, float* out) {
    if (w.dtype == DType::Q8 || w.dtype == DType::Q4) {
        for (int64_t c = 0; c < w.cols; ++c) out[c] = weight_at(w, r, c);
        return;
    }
    for_each_row_piece(w, r, 0, w.cols, [&](int64_t index, int64_t offset, int64_t len) {
        float* o = out + offset;
        switch (w.dtype) {
            case DType::F32: std::memcpy(o, static_cast<const float*>(w.data) + index, size_t(len) * sizeof(float)); return;
            case DType::BF16: {
                const uint16_t* h = static_cast<const uint16_t*>(w.data) + index;
                for (int64_t i = 0; i < len; ++i) o[i] = bf16_to_f32(h[i]);
                return;
            }
            case DType::F16: {
                const uint16_t* h = static_cast<const uint16_t*>(w.data) + index;
                for (int64_t i = 0; i < len; ++i) o[i] = f16_to_f32(h[i]);
                return;
            }
            default: throw Error(std::string("weight_row: unsupported dtype ") + dtype_name(w.dtype));
        }
    });
}

// The stored bytes of group g of row n, in order (32 for Q8, 16 for Q4), gathered from its quads.
inline void group_bytes(const QuantWeights& qw, int64_t n, int64_t g, int8_t* out) {
    for (int64_t quad = 0; quad < qw.group_bytes() / 4; ++quad) std::memcpy(out + 4 * quad, qw.quant_quad(n, g, quad), 4);
}

// Raw quantized value of weight (n, k).
inline int quant_q(const QuantWeights& qw, int64_t n, int64_t k) {
    const int64_t g = k / kQuantGroup, j = k % kQuantGroup;
    if (qw.type == DType::Q8) return int(uint8_t(qw.group_byte(n, g, j))) - 128;
    const uint8_t b = uint8_t(qw.group_byte(n, g, j & 15));
    return int((j < 16) ? (b & 15) : (b >> 4)) - 8;
}

// One activation row's whole 16-group blocks (x: blocks * 512 values) in the line order of the
// QuantWeights block layout (dst, as many values): line j (64 values) holds, for each of the 16
// groups in turn, its 4 elements from[j] .. from[j] + 3 - Q8: 4j; Q4: the low-nibble elements 4(j/2)
// for even j, the high-nibble ones 16 + 4(j/2) for odd j. The GEMVs that read the layout directly
// (fp32 for exact mode, int8 for fast mode) take their activations in this order.
template <typename T>
inline void activations_in_line_order(const T* x, int64_t blocks, bool q8, T* dst) {
    for (int64_t b = 0; b < blocks; ++b)
        for (int lane = 0; lane < kQuantBlock; ++lane)
            for (int j = 0; j < 8; ++j) {
                const int from = q8 ? 4 * j : (j % 2 == 0 ? 4 * (j / 2) : 16 + 4 * (j / 2));
                std::memcpy(dst + b * kQuantBlock * kQuantGroup + j * 64 + lane * 4, x + (b * kQuantBlock + lane) * kQuantGroup + from,
                            4 * sizeof(T));
            }
}


// x rounded to the nearest integer, ties to even, as std::nearbyint in the default rounding mode
// for |x| < 2^22 (adding 1.5 * 2^23 leaves no fraction bits); larger values, infinities and NaN
// come out large, infinite or NaN alike, which the quantizer's clamp treats as nearbyint's.
// Unlike nearbyint it is inlined and vectorised on every x86-64.
inline float round_to_nearest_even(float x) {
    constexpr float shifter = 12582912.f;  // 1.5 * 2^23
    return (x + shifter) - shifter;
}

// Row n of qw from its float values row [qw.kpad] (zero past qw.cols); see quantize().
inline void quantize_row(const float* row, QuantWeights& qw, int64_t n) {
    const int64_t G = qw.groups();
    const float qmax = qw.type == DType::Q8 ? 127.f : 7.f;
    for (int64_t g = 0; g < G; ++g) {
        const float* v = row + g * kQuantGroup;
        float amax = 0.f;
        for (int j = 0; j < kQuantGroup; ++j) amax = std::max(amax, std::fabs(v[j]));
        const uint16_t s16 = f32_to_bf16(amax / qmax);
        const float s = bf16_to_f32(s16), inv = s > 0.f ? 1.f / s : 0.f;
        qw.scale[size_t(n * G + g)] = s16;
        int q[kQuantGroup];
        for (int j = 0; j < kQuantGroup; ++j) q[j] = int(std::max(-qmax, std::min(qmax, round_to_nearest_even(v[j] * inv))));
        int8_t bytes[kQuantGroup];
        if (qw.type == DType::Q8) {
            for (int j = 0; j < kQuantGroup; ++j) bytes[j] = int8_t(uint8_t(q[j] + 128));
        } else {
            for (int j = 0; j < 16; ++j) bytes[j] = int8_t(uint8_t((q[j] + 8) | ((q[j + 16] + 8) << 4)));
        }
        for (int64_t quad = 0; quad < qw.group_bytes() / 4; ++quad) std::memcpy(qw.quant_quad(n, g, quad), bytes + 4 * quad, 4);
    }
}

// Quantize a weight matrix (any stored dtype) to Q8 or Q4 (symmetric, groups of 32 along the
// input dim, bf16 scales: max|w| / qmax rounded to bf16 first, then q = w * (1 / scale) rounded to
// nearest and clamped to [-qmax, qmax], so the scale a kernel reads is the one the values were made
// with). The rows are shared by the threads unless `parallel` is false (a caller that runs one
// quantize per thread). The result owns its bytes through Matrix::storage, in arrays of its own or,
// given a QuantPlace, in the caller's buffer.
struct QuantPlace {
    int8_t* q = nullptr;         // quant_bytes(...).first bytes
    uint16_t* scale = nullptr;   // quant_bytes(...).second bytes
    std::shared_ptr<const void> owner;  // keeps them alive
};

// Bytes of the values and of the scales of a [rows, cols] matrix quantized to `target`.
inline std::pair<size_t, size_t> quant_bytes(DType target, int64_t rows, int64_t cols) {
    QuantWeights shape;
    shape.type = target, shape.kpad = (cols + kQuantGroup - 1) / kQuantGroup * kQuantGroup;
    return {size_t(rows * shape.row_bytes()), size_t(rows * shape.groups()) * sizeof(uint16_t)};
}

inline Matrix quantize(const Matrix& w, DType target, bool parallel = true, const QuantPlace& place = {}) {
    if (target != DType::Q8 && target != DType::Q4)
        throw Error(std::string("quantize: target must be Q8 or Q4, got ") + dtype_name(target));
    auto qw = std::make_shared<QuantWeights>();
    qw->type = target;
    qw->rows = w.rows;
    qw->cols = w.cols;
    qw->kpad = (w.cols + kQuantGroup - 1) / kQuantGroup * kQuantGroup;
    const auto [q_bytes, scale_bytes] = quant_bytes(target, w.rows, w.cols);
    if (place.q) {
        qw->q.view(place.q, q_bytes, place.owner);
        qw->scale.view(place.scale, scale_bytes / sizeof(uint16_t), place.owner);
    } else {
        qw->q.assign(q_bytes, 0);
        qw->scale.assign(scale_bytes / sizeof(uint16_t), 0);
    }
#pragma omp parallel if (parallel)
    {
        std::vector<float> row(size_t(qw->kpad), 0.f);
#pragma omp for schedule(static)
        for (int64_t n = 0; n < w.rows; ++n) {
            weight_row(w, n, row.data());
            quantize_row(row.data(), *qw, n);
        }
    }
    Matrix m;
    m.dtype = target;
    m.rows = w.rows;
    m.cols = w.cols;
    m.data = qw.get();
    m.storage = qw;
    return m;
}

}  // namespace deepstack::detail
