// deepstack/kernels_elementwise.hpp - the row-wise kernels of the forward pass: LayerNorm and
// RMSNorm (also fused with the residual add before them), the activations (GELU tanh / erf, SiLU,
// SwiGLU) and residual adds, SIMD over a row, OpenMP over rows or chunks of large arrays.
//
// A level body: kernels_levels.hpp compiles it once per SIMD level, inside that level's namespace and
// target region; included on its own it brings in the whole kernel layer.
#ifndef DEEPSTACK_KERNEL_LEVEL
#include "kernels.hpp"
#else

namespace deepstack::detail {
namespace DEEPSTACK_KERNEL_LEVEL {

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

// body(begin, end) over [0, n) in chunks of 4096 values, on all threads for large arrays.
template <class Body>
inline void for_chunks(int64_t n, Body body) {
    constexpr int64_t CH = 4096;
    const int64_t chunks = (n + CH - 1) / CH;
#pragma omp parallel for schedule(static) if (worth_threads(n))
    for (int64_t c = 0; c < chunks; ++c) body(c * CH, std::min(n, (c + 1) * CH));
}

// Apply a vector function to x[0..n) in place.
template <class F>
inline void map_inplace(float* x, int64_t n, F f) {
    using namespace simd;
    for_chunks(n, [&](int64_t i, int64_t e) {
        for (; i + W <= e; i += W) store(x + i, f(load(x + i)));
        if (i < e) store_n(x + i, f(load_n(x + i, int(e - i))), int(e - i));
    });
}

// Array forms (SIMD; see simd::gelu_tanh / gelu_erf / silu for the approximations: relative error
// <= ~1e-6 against the exact functions in double, except where the result underflows towards 0).
inline void gelu_tanh_inplace(float* x, int64_t n) { map_inplace(x, n, [](simd::vf v) { return simd::gelu_tanh(v); }); }
inline void gelu_erf_inplace(float* x, int64_t n) { map_inplace(x, n, [](simd::vf v) { return simd::gelu_erf(v); }); }
inline void silu_inplace(float* x, int64_t n) { map_inplace(x, n, [](simd::vf v) { return simd::silu(v); }); }

// x[i] += y[i] (the residual adds).
inline void add_inplace(float* x, const float* y, int64_t n) {
    for_chunks(n, [&](int64_t i, int64_t e) { add_row(x + i, y + i, e - i); });
}

// SwiGLU: out[i] = silu(gate[i]) * up[i] (out may alias gate or up).
inline void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
    using namespace simd;
    for_chunks(n, [&](int64_t i, int64_t e) {
        for (; i + W <= e; i += W) store(out + i, mul(simd::silu(load(gate + i)), load(up + i)));
        if (i < e) {
            const int r = int(e - i);
            store_n(out + i, mul(simd::silu(load_n(gate + i, r)), load_n(up + i, r)), r);
        }
    });
}

}  // namespace DEEPSTACK_KERNEL_LEVEL
}  // namespace deepstack::detail

#endif  // DEEPSTACK_KERNEL_LEVEL
