// deepstack/kernels_dispatch.hpp - the kernels the rest of the library calls, each forwarding to the
// level that active_isa() names (kernels_cpu.hpp). Which level runs is this table; which kernel a
// level runs for a product is kernels_select.hpp.
#pragma once
#include "kernels_cpu.hpp"
#include "kernels_levels.hpp"
#include "kernels_types.hpp"

#include <cstdint>

namespace deepstack::detail {

// One level's entry points.
struct KernelSet {
    void (*matmul_exact)(const float*, int64_t, const Matrix&, float*, const float*);
    void (*matmul_in_mode)(const float*, int64_t, const Matrix&, float*, const float*, Compute);
    void (*matmul_bf16)(const float*, int64_t, const Matrix&, float*, const float*);
    void (*matmul_quant_fast)(const float*, int64_t, const Matrix&, float*, const float*);
    void (*matmul_shared_input)(const float*, int64_t, const Matrix* const*, float* const*, int, Compute);
    void (*attention)(const float*, int64_t, const float*, const float*, int64_t, int, int, int, float, bool, int64_t, float*, int64_t, int64_t);
    void (*attention_in_mode)(const float*, int64_t, const float*, const float*, int64_t, int, int, int, float, bool, int64_t, float*, Compute,
                              int64_t, int64_t);
    void (*attention_cached_bf16)(const float*, int64_t, const uint16_t*, const uint16_t*, int64_t, int, int, int, float, float*);
    void (*attention_decode_bf16)(const DecodeQueryBf16*, int, int, int, int, float);
    bool has_dpbf16;
    bool has_amx;  // the AMX tile kernels are compiled in (they run where amx_active())
    void (*round_to_bf16)(const float*, int64_t, uint16_t*);
    void (*layernorm)(const float*, int64_t, int64_t, const float*, const float*, float, float*);
    void (*rmsnorm)(const float*, int64_t, int64_t, const float*, float, float*);
    void (*add_layernorm)(float*, const float*, int64_t, int64_t, const float*, const float*, float, float*);
    void (*add_rmsnorm)(float*, const float*, int64_t, int64_t, const float*, float, float*);
    void (*gelu_tanh_inplace)(float*, int64_t);
    void (*gelu_erf_inplace)(float*, int64_t);
    void (*silu_inplace)(float*, int64_t);
    void (*silu_mul)(const float*, const float*, float*, int64_t);
    void (*add_inplace)(float*, const float*, int64_t);
    double (*fma_loop)(int64_t);
    double (*dpbf16_loop)(int64_t);
    double (*dpbusd_loop)(int64_t);
    double (*amx_loop)(int64_t);
    double (*stream_sum)(const float*, int64_t);
    double fma_flops_per_iter;
};

#define DEEPSTACK_KERNEL_SET(level)                                                                                           \
    KernelSet {                                                                                                               \
        level::matmul_exact, level::matmul_in_mode, level::matmul_bf16, level::matmul_quant_fast, level::matmul_shared_input,   \
            level::attention, level::attention_in_mode, level::attention_cached_bf16, level::attention_decode_bf16,             \
            level::kHasDpbf16, level::kHasAmx,                                                                                  \
            level::round_to_bf16, level::layernorm, level::rmsnorm, level::add_layernorm, level::add_rmsnorm,                   \
            level::gelu_tanh_inplace, level::gelu_erf_inplace, level::silu_inplace, level::silu_mul, level::add_inplace,        \
            level::peaks::fma_loop, level::peaks::dpbf16_loop, level::peaks::dpbusd_loop, level::peaks::amx_loop,               \
            level::peaks::stream_sum, level::peaks::kFmaFlops                                                                   \
    }

// The kernels of a level: every level at or below the CPU's may be asked for.
inline const KernelSet& kernels_at(Isa isa) {
    static const KernelSet scalar = DEEPSTACK_KERNEL_SET(kern_scalar);
#if defined(__aarch64__)
    static const KernelSet neon = DEEPSTACK_KERNEL_SET(kern_neon);
#endif
#if defined(DEEPSTACK_LEVEL_AVX2)
    static const KernelSet avx2 = DEEPSTACK_KERNEL_SET(kern_avx2);
#endif
#if defined(DEEPSTACK_LEVEL_AVX512)
    static const KernelSet avx512 = DEEPSTACK_KERNEL_SET(kern_avx512);
#endif
#if defined(DEEPSTACK_LEVEL_AVX512BF16)
    static const KernelSet avx512bf16 = DEEPSTACK_KERNEL_SET(kern_avx512bf16);  // also amx: the tile kernels check amx_active()
#endif
    // the highest level compiled at or below isa
#if defined(DEEPSTACK_LEVEL_AVX512BF16)
    if (int(isa) >= int(Isa::Avx512Bf16)) return avx512bf16;
#endif
#if defined(DEEPSTACK_LEVEL_AVX512)
    if (int(isa) >= int(Isa::Avx512)) return avx512;
#endif
#if defined(DEEPSTACK_LEVEL_AVX2)
    if (int(isa) >= int(Isa::Avx2)) return avx2;
#endif
#if defined(__aarch64__)
    if (isa == Isa::Neon) return neon;
#endif
    (void)isa;
    return scalar;
}
#undef DEEPSTACK_KERNEL_SET

inline const KernelSet& kernels() { return kernels_at(active_isa()); }

// ---- the kernels by name (x, y fp32 row-major; W a Matrix in [out, in] layout) ----

// y[M, W.rows] = x[M, W.cols] * W^T (+ bias[W.rows]), fp32 activations and accumulation.
inline void matmul(const float* x, int64_t M, const Matrix& W, float* y, const float* bias = nullptr) {
    kernels().matmul_exact(x, M, W, y, bias);
}
// The same product in a compute mode (kernels_select.hpp).
inline void matmul(const float* x, int64_t M, const Matrix& W, float* y, const float* bias, Compute mode) {
    kernels().matmul_in_mode(x, M, W, y, bias, mode);
}
// Fast mode's products: bf16 activations (BF16 weights), int8 activations (Q8 / Q4 weights).
inline void matmul_bf16(const float* x, int64_t M, const Matrix& W, float* y, const float* bias = nullptr) {
    kernels().matmul_bf16(x, M, W, y, bias);
}
inline void matmul_quant_fast(const float* x, int64_t M, const Matrix& W, float* y, const float* bias = nullptr) {
    kernels().matmul_quant_fast(x, M, W, y, bias);
}
// y[i] = x W[i]^T for `count` (<= 4 fused) matrices sharing one input.
inline void matmul_shared_input(const float* x, int64_t M, const Matrix* const* W, float* const* y, int count, Compute mode) {
    kernels().matmul_shared_input(x, M, W, y, count, mode);
}

// Attention with grouped KV heads (Hq a multiple of Hkv): q [Tq, Hq, d], k / v [Tk, Hkv, d], out
// [Tq, Hq, d]; rows ldq / ldkv floats apart (0: packed). causal: query i sits at position
// q_offset + i and sees keys 0..q_offset + i. Tiled, online softmax; matches attention_ref to a
// few ulp of the output magnitude.
inline void attention(const float* q, int64_t Tq, const float* k, const float* v, int64_t Tk, int Hq, int Hkv, int d, float scale,
                      bool causal, int64_t q_offset, float* out, int64_t ldq = 0, int64_t ldkv = 0) {
    kernels().attention(q, Tq, k, v, Tk, Hq, Hkv, d, scale, causal, q_offset, out, ldq, ldkv);
}
inline void attention(const float* q, int64_t Tq, const float* k, const float* v, int64_t Tk, int Hq, int Hkv, int d, float scale,
                      bool causal, int64_t q_offset, float* out, Compute mode, int64_t ldq = 0, int64_t ldkv = 0) {
    kernels().attention_in_mode(q, Tq, k, v, Tk, Hq, Hkv, d, scale, causal, q_offset, out, mode, ldq, ldkv);
}
// Causal attention of Tq new queries over a bf16 KV cache (the queries' own rows last).
inline void attention_cached_bf16(const float* q, int64_t Tq, const uint16_t* k, const uint16_t* v, int64_t Tk, int Hq, int Hkv, int d,
                                  float scale, float* out) {
    kernels().attention_cached_bf16(q, Tq, k, v, Tk, Hq, Hkv, d, scale, out);
}
// Decode attention of several sequences over their bf16 caches at once (one query row per head
// each); each gets the bits attention_cached_bf16 gives it alone.
inline void attention_decode_bf16(const DecodeQueryBf16* queries, int count, int Hq, int Hkv, int d, float scale) {
    kernels().attention_decode_bf16(queries, count, Hq, Hkv, d, scale);
}
// Whether the active level has bf16 dot products (VDPBF16PS): fast mode's bf16 GEMM, which reads
// pair panels in place, and its bf16 attention.
inline bool has_bf16_dot_products() { return kernels().has_dpbf16; }
// Fast mode keeps the KV cache in bf16 where the level has VDPBF16PS: its attention packs keys and
// values as bf16 anyway, and decode, which streams the whole cache per token, reads half the bytes.
inline bool kv_cache_bf16(Compute mode) { return mode == Compute::Fast && has_bf16_dot_products(); }
// out[i] = bf16(x[i]), to nearest even, subnormals to zero (as VCVTNEPS2BF16).
inline void round_to_bf16(const float* x, int64_t n, uint16_t* out) { kernels().round_to_bf16(x, n, out); }
// Whether exact mode's BF16 GEMMs run on AMX tiles now.
inline bool exact_gemm_on_amx() { return kernels().has_amx && amx_active(); }

// Row-wise kernels (y may equal x): LayerNorm / RMSNorm over the last dim n of [M, n]; the residual
// add fused with the norm after it (h += r, y = norm(h)); activations in place; SwiGLU out = silu(gate)
// * up; x += y.
inline void layernorm(const float* x, int64_t M, int64_t n, const float* w, const float* b, float eps, float* y) {
    kernels().layernorm(x, M, n, w, b, eps, y);
}
inline void rmsnorm(const float* x, int64_t M, int64_t n, const float* w, float eps, float* y) { kernels().rmsnorm(x, M, n, w, eps, y); }
inline void add_layernorm(float* h, const float* r, int64_t M, int64_t n, const float* w, const float* b, float eps, float* y) {
    kernels().add_layernorm(h, r, M, n, w, b, eps, y);
}
inline void add_rmsnorm(float* h, const float* r, int64_t M, int64_t n, const float* w, float eps, float* y) {
    kernels().add_rmsnorm(h, r, M, n, w, eps, y);
}
inline void gelu_tanh_inplace(float* x, int64_t n) { kernels().gelu_tanh_inplace(x, n); }
inline void gelu_erf_inplace(float* x, int64_t n) { kernels().gelu_erf_inplace(x, n); }
inline void silu_inplace(float* x, int64_t n) { kernels().silu_inplace(x, n); }
inline void silu_mul(const float* gate, const float* up, float* out, int64_t n) { kernels().silu_mul(gate, up, out, n); }
inline void add_inplace(float* x, const float* y, int64_t n) { kernels().add_inplace(x, y, n); }

}  // namespace deepstack::detail
