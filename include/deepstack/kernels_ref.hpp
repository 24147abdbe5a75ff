// deepstack/kernels_ref.hpp - the scalar references of the kernels: plain loops that define what
// each SIMD kernel computes (the kernel tests compare every level against them).
#pragma once
#include "common.hpp"
#include "kernels_layout.hpp"
#include "kernels_types.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace deepstack::detail {

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

// Scalar reference of the fast mode: x rounded to bf16, fp32 accumulation.
inline void matmul_bf16_ref(const float* x, int64_t M, const Matrix& W, float* y, const float* bias = nullptr) {
    const int64_t K = W.cols;
    std::vector<float> xr(size_t(M * K));
    for (size_t i = 0; i < xr.size(); ++i) xr[i] = bf16_to_f32(f32_to_bf16(x[i]));
    matmul_ref(xr.data(), M, W, y, bias);
}

// One activation row -> int8 groups (zero padded to kpad) and scales [kpad / 32].
inline void quantize_act_row(const float* x, int64_t K, int64_t kpad, int8_t* q, float* s) {
    for (int64_t g = 0; g * kQuantGroup < kpad; ++g) {
        const int64_t k0 = g * kQuantGroup, k1 = std::min(K, k0 + kQuantGroup);
        float amax = 0.f;
        for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(x[k]));
        const float inv = amax > 0.f ? 127.f / amax : 0.f;
        s[g] = amax / 127.f;
        for (int64_t k = k0; k < k0 + kQuantGroup; ++k)
            q[k] = k < k1 ? int8_t(std::max(-127.f, std::min(127.f, std::nearbyint(x[k] * inv)))) : int8_t(0);
    }
}

// Scalar reference of the fast quantized mode.
inline void matmul_quant_fast_ref(const float* x, int64_t M, const Matrix& W, float* y, const float* bias = nullptr) {
    if (W.dtype != DType::Q8 && W.dtype != DType::Q4) throw Error("matmul_quant_fast_ref: weights must be Q8 or Q4");
    const auto& qw = *static_cast<const QuantWeights*>(W.data);
    const int64_t K = W.cols, N = W.rows, G = qw.groups();
    std::vector<int8_t> xq(static_cast<size_t>(qw.kpad));
    std::vector<float> sx(static_cast<size_t>(G));
    for (int64_t m = 0; m < M; ++m) {
        quantize_act_row(x + m * K, K, qw.kpad, xq.data(), sx.data());
        for (int64_t n = 0; n < N; ++n) {
            float acc = 0.f;
            for (int64_t g = 0; g < G; ++g) {
                int32_t d = 0;
                for (int64_t k = g * kQuantGroup; k < std::min(K, (g + 1) * kQuantGroup); ++k) d += int32_t(xq[size_t(k)]) * quant_q(qw, n, k);
                acc += float(d) * (sx[size_t(g)] * qw.scale_at(n, g));
            }
            y[m * N + n] = acc + (bias ? bias[n] : 0.f);
        }
    }
}

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

}  // namespace deepstack::detail
