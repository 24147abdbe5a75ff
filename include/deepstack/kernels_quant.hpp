// deepstack/kernels_quant.hpp - Q8 / Q4 weights made at load time (see QuantWeights in kernels.hpp):
// quantize(), and the matmul paths that read them directly:
//   M <= 4 : GEMV that dequantizes each group of 32 in registers and applies the group scale once
//            per group (fp32 activations, fp32 accumulation);
//   M >  4 : the packed GEMM of kernels_gemm.hpp, whose per-block packing dequantizes the block
//            (dequant_row_segment) - never a dequantized copy of the whole matrix.
// Included from kernels.hpp.
#pragma once
#include "kernels_simd.hpp"

#include <algorithm>
#include <cmath>
#include <memory>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace deepstack {

// Quantize a weight matrix (any stored dtype) to Q8 or Q4 (symmetric, groups of 32 along the
// input dim, fp32 scales). The result owns its bytes through Matrix::storage.
inline Matrix quantize(const Matrix& w, DType target) {
    if (target != DType::Q8 && target != DType::Q4)
        throw Error(std::string("quantize: target must be Q8 or Q4, got ") + dtype_name(target));
    auto qw = std::make_shared<QuantWeights>();
    qw->type = target;
    qw->rows = w.rows;
    qw->cols = w.cols;
    qw->kpad = (w.cols + kQuantGroup - 1) / kQuantGroup * kQuantGroup;
    const int64_t G = qw->groups(), rb = qw->row_bytes();
    qw->q.assign(size_t(w.rows * rb), 0);
    qw->scale.assign(size_t(w.rows * G), 0.f);
    const float qmax = target == DType::Q8 ? 127.f : 7.f;
#pragma omp parallel
    {
        std::vector<float> row(size_t(qw->kpad), 0.f);
#pragma omp for schedule(static)
        for (int64_t n = 0; n < w.rows; ++n) {
            detail::weight_segment_f32(w, n, 0, w.cols, row.data());
            for (int64_t g = 0; g < G; ++g) {
                const float* v = row.data() + g * kQuantGroup;
                float amax = 0.f;
                for (int j = 0; j < kQuantGroup; ++j) amax = std::max(amax, std::fabs(v[j]));
                const float s = amax / qmax, inv = amax > 0.f ? qmax / amax : 0.f;
                qw->scale[size_t(n * G + g)] = s;
                int q[kQuantGroup];
                for (int j = 0; j < kQuantGroup; ++j)
                    q[j] = int(std::max(-qmax, std::min(qmax, std::nearbyint(v[j] * inv))));
                int8_t* dst = qw->q.data() + n * rb;
                if (target == DType::Q8) {
                    for (int j = 0; j < kQuantGroup; ++j) dst[g * kQuantGroup + j] = int8_t(q[j]);
                } else {
                    for (int j = 0; j < 16; ++j) dst[g * 16 + j] = int8_t(uint8_t((q[j] + 8) | ((q[j + 16] + 8) << 4)));
                }
            }
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

namespace detail {

// One group of 32 quantized weights (row n, group g) as 32 / W vectors of q (not yet scaled).
inline void load_quant_group(const QuantWeights& qw, int64_t n, int64_t g, simd::vf* out) {
    if (qw.type == DType::Q8) simd::load_q8_group(qw.q.data() + n * qw.kpad + g * kQuantGroup, out);
    else simd::load_q4_group(qw.q.data() + n * (qw.kpad / 2) + g * 16, out);
}

inline void dequant_row_segment(const Matrix& w, int64_t n, int64_t k0, int64_t kc, float* out) {
    using namespace simd;
    if (w.dtype != DType::Q8 && w.dtype != DType::Q4)
        throw Error(std::string("matmul: unsupported weight dtype ") + dtype_name(w.dtype));
    const auto& qw = *static_cast<const QuantWeights*>(w.data);
    constexpr int GV = kQuantGroup / W;
    alignas(64) float tmp[kQuantGroup];
    const int64_t k1 = k0 + kc;
    for (int64_t g = k0 / kQuantGroup; g * kQuantGroup < k1; ++g) {
        vf q[GV];
        load_quant_group(qw, n, g, q);
        const vf s = set1(qw.scale[size_t(n * qw.groups() + g)]);
        const int64_t gb = g * kQuantGroup, lo = std::max(k0, gb), hi = std::min(k1, gb + kQuantGroup);
        if (lo == gb && hi == gb + kQuantGroup) {
            for (int v = 0; v < GV; ++v) store(out + (gb - k0) + v * W, mul(q[v], s));
        } else {
            for (int v = 0; v < GV; ++v) store(tmp + v * W, mul(q[v], s));
            for (int64_t k = lo; k < hi; ++k) out[k - k0] = tmp[k - gb];
        }
    }
}

namespace gemm {

// GEMV over quantized rows [n0, n1): per group, t = sum(q * x) in fp32 vectors, acc += scale * t.
template <int MM, int R>
inline void gemv_quant_rows(const float* x, const QuantWeights& qw, float* y, const float* bias, int64_t n0, int64_t n1) {
    using namespace simd;
    constexpr int GV = kQuantGroup / W;
    const int64_t K = qw.cols, N = qw.rows, G = qw.groups();
    int64_t n = n0;
    for (; n + R <= n1; n += R) {
        vf acc[MM][R];
        for (int m = 0; m < MM; ++m)
            for (int r = 0; r < R; ++r) acc[m][r] = zero();
        for (int64_t g = 0; g < G; ++g) {
            const int64_t kb = g * kQuantGroup;
            vf xv[MM][GV];
            if (kb + kQuantGroup <= K) {
                for (int m = 0; m < MM; ++m)
                    for (int v = 0; v < GV; ++v) xv[m][v] = load(x + m * K + kb + v * W);
            } else {
                for (int m = 0; m < MM; ++m)
                    for (int v = 0; v < GV; ++v) {
                        const int64_t cnt = std::max<int64_t>(0, std::min<int64_t>(W, K - kb - v * W));
                        xv[m][v] = cnt > 0 ? load_n(x + m * K + kb + v * W, int(cnt)) : zero();
                    }
            }
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) {
                vf q[GV];
                load_quant_group(qw, n + r, g, q);
                const vf s = set1(qw.scale[size_t((n + r) * G + g)]);
#pragma GCC unroll 4
                for (int m = 0; m < MM; ++m) {
                    vf t = mul(q[0], xv[m][0]);
#pragma GCC unroll 8
                    for (int v = 1; v < GV; ++v) t = simd::fma(q[v], xv[m][v], t);
                    acc[m][r] = simd::fma(s, t, acc[m][r]);
                }
            }
        }
        for (int m = 0; m < MM; ++m)
            for (int r = 0; r < R; ++r) y[m * N + n + r] = hsum(acc[m][r]) + (bias ? bias[n + r] : 0.f);
    }
    if (n < n1) gemv_quant_rows<MM, 1>(x, qw, y, bias, n, n1);
}

template <int MM>
inline void gemv_quant(const float* x, const QuantWeights& qw, float* y, const float* bias) {
    constexpr int R = 4;
    const int64_t N = qw.rows;
    const int nt = omp_threads();
    const int64_t chunks = (N + R - 1) / R;
    if (nt == 1 || chunks < 2) {
        gemv_quant_rows<MM, R>(x, qw, y, bias, 0, N);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_tid();
        const int64_t c0 = chunks * t / nt, c1 = chunks * (t + 1) / nt;
        gemv_quant_rows<MM, R>(x, qw, y, bias, std::min(N, c0 * R), std::min(N, c1 * R));
    }
}

}  // namespace gemm

inline bool matmul_quant(const float* x, int64_t M, const Matrix& W, float* y, const float* bias) {
    if (W.dtype != DType::Q8 && W.dtype != DType::Q4) return false;
    const auto& qw = *static_cast<const QuantWeights*>(W.data);
    switch (M) {
        case 1: gemm::gemv_quant<1>(x, qw, y, bias); return true;
        case 2: gemm::gemv_quant<2>(x, qw, y, bias); return true;
        case 3: gemm::gemv_quant<3>(x, qw, y, bias); return true;
        case 4: gemm::gemv_quant<4>(x, qw, y, bias); return true;
        default: return false;
    }
}

}  // namespace detail
}  // namespace deepstack

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
