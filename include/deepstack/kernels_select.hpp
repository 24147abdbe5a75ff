// deepstack/kernels_select.hpp - which kernel computes each product at one SIMD level: the matrix
// products by compute mode, weight dtype and row count, and attention by mode and query count.
// What each level has (the DEEPSTACK_HAVE_* of kernels_levels.hpp):
//
//   product                        rows    dtype          kernel
//   exact (fp32 activations)       M > 8   BF16           AMX tiles, x split into 3 bf16 pieces [amx]
//                                  M <= 8  F32/BF16/F16   gemm::gemv (weights converted in registers)
//                                  M <= 8  Q8/Q4          gemm::gemv_quant (block layout read in place)
//                                  else    any            gemm::gemm (packed fp32 GEMM)
//   fast, BF16 weights             M <= 8  BF16           gemm_bf16::gemv (VDPBF16PS) [dpbf16]
//                                  M > 8   BF16           AMX tiles [amx], else gemm_bf16::gemm [dpbf16]
//                                  any     BF16           x rounded to bf16, then exact [no dpbf16]
//   fast, Q8 / Q4 weights          M <= 128 Q8/Q4         gemm_q::gemv_fast (int8 activations) [vnni]
//                                  M > 128 Q8/Q4          AMX tiles, weights dequantized to bf16 [amx]
//                                  M > 128 Q8/Q4          gemm_q::gemm (int8 activations) [vnni]
//                                  any     Q8/Q4          exact [no vnni]
//   fast, F32 / F16 weights        any                    exact
//   attention, fast mode           Tq >= 8                attention_bf16 [dpbf16]
//                                  else                   attention (fp32)
// Pair panels (Matrix::panel_rows) always take a GEMM, which reads them in place. The GEMVs
// (M <= kGemvRows; Q8 / Q4 in fast mode M <= kQuantGemvMaxRows) give each row the same bits for any
// M in that range: a decode step of several sequences matches each one decoded alone.
//
// A level body: kernels_levels.hpp compiles it once per SIMD level, inside that level's namespace and
// target region; included on its own it brings in the whole kernel layer.
#ifndef DEEPSTACK_KERNEL_LEVEL
#include "kernels.hpp"
#else

namespace deepstack::detail {
namespace DEEPSTACK_KERNEL_LEVEL {

// Whether the AMX tile kernels run here: compiled at this level and active (kernels_cpu.hpp).
inline bool amx_here() {
#if defined(DEEPSTACK_HAVE_AMX)
    return amx_active();
#else
    return false;
#endif
}

// y[M, W.rows] = x[M, W.cols] * W^T (+ bias[W.rows]), fp32 activations, fp32 accumulation.
inline void matmul_exact(const float* x, int64_t M, const Matrix& W, float* y, const float* bias) {
    if (M <= 0 || W.rows <= 0) return;
    if (W.cols <= 0) {
        for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < W.rows; ++n) y[m * W.rows + n] = bias ? bias[n] : 0.f;
        return;
    }
#if defined(DEEPSTACK_HAVE_AMX)
    if (W.dtype == DType::BF16 && (M > kGemvRows || W.panel_rows) && amx_here()) return gemm_amx::gemm(x, M, W, y, bias, 3);
#endif
    if (M <= kGemvRows && !W.panel_rows) {
        switch (W.dtype) {
            case DType::F32: return gemm::gemv<simd::F32Src>(x, M, W, y, bias);
            case DType::BF16: return gemm::gemv<simd::BF16Src>(x, M, W, y, bias);
            case DType::F16: return gemm::gemv<simd::F16Src>(x, M, W, y, bias);
            case DType::Q8:
            case DType::Q4: return gemm::gemv_quant(x, M, *static_cast<const QuantWeights*>(W.data), y, bias);
            default: break;
        }
    }
    switch (W.dtype) {
        case DType::F32:
        case DType::BF16:
        case DType::F16:
        case DType::Q8:
        case DType::Q4: return gemm::gemm(x, M, W, y, bias);
        default: throw Error(std::string("matmul: unsupported weight dtype ") + dtype_name(W.dtype));
    }
}

// Fast mode for BF16 weights: y = bf16(x) * W^T (+ bias), fp32 accumulation (matmul_bf16_ref up to
// the order of the fp32 additions). Other weight dtypes run exact.
inline void matmul_bf16(const float* x, int64_t M, const Matrix& W, float* y, const float* bias) {
    if (W.dtype != DType::BF16 || M <= 0 || W.rows <= 0 || W.cols <= 0) return matmul_exact(x, M, W, y, bias);
#if defined(DEEPSTACK_HAVE_DPBF16)
    if (M <= kGemvRows && !W.panel_rows) return gemm_bf16::gemv(x, M, W, y, bias);
#if defined(DEEPSTACK_HAVE_AMX)
    if (amx_here()) return gemm_amx::gemm(x, M, W, y, bias);
#endif
    return gemm_bf16::gemm(x, M, W, y, bias);
#else
    const int64_t K = W.cols;
    float* xr = thread_workspace<GemmWorkspace>().x_rounded.get(size_t(M * K));
    for (int64_t i = 0; i < M * K; ++i) xr[i] = bf16_to_f32(f32_to_bf16(x[i]));
    matmul_exact(xr, M, W, y, bias);
#endif
}

// Fast mode for Q8 / Q4 weights with int8 activations per group of 32 (matmul_quant_fast_ref):
// VNNI integer dot products; without VNNI, exact mode's kernels (fp32 activations).
inline void matmul_quant_fast(const float* x, int64_t M, const Matrix& W, float* y, const float* bias) {
    if (W.dtype != DType::Q8 && W.dtype != DType::Q4) throw Error("matmul_quant_fast: weights must be Q8 or Q4");
    if (M <= 0 || W.rows <= 0) return;
#if defined(DEEPSTACK_HAVE_VNNI)
    if (M <= kQuantGemvMaxRows) return gemm_q::gemv_fast(x, M, *static_cast<const QuantWeights*>(W.data), y, bias);
    gemm_q::gemm(x, M, W, y, bias);
#else
    matmul_exact(x, M, W, y, bias);
#endif
}

// A product in a compute mode (the table above).
inline void matmul_in_mode(const float* x, int64_t M, const Matrix& W, float* y, const float* bias, Compute mode) {
    const bool quant = W.dtype == DType::Q8 || W.dtype == DType::Q4;
    if (mode == Compute::Exact) return matmul_exact(x, M, W, y, bias);
#if defined(DEEPSTACK_HAVE_AMX)
    if (quant && M > kQuantGemvMaxRows && W.rows > 0 && amx_here()) return gemm_amx::gemm(x, M, W, y, bias);
#endif
    if (quant) return matmul_quant_fast(x, M, W, y, bias);
    matmul_bf16(x, M, W, y, bias);
}

// y_i = x W_i^T for the `count` matrices W[i] that share the input x [M, K] (a decoder layer's q / k
// / v, gate / up). Fast mode, M <= kQuantGemvMaxRows, Q8 / Q4 weights of one format with VNNI: x is quantized once
// and one parallel region covers all their rows (a region's start and its threads' uneven finish
// cost microseconds each, and decode runs hundreds per token); otherwise one product each.
inline void matmul_shared_input(const float* x, int64_t M, const Matrix* const* W, float* const* y, int count, Compute mode) {
#if defined(DEEPSTACK_HAVE_VNNI)
    bool fused = mode == Compute::Fast && M >= 1 && M <= kQuantGemvMaxRows && count <= 4;
    for (int i = 0; fused && i < count; ++i) fused = W[i]->dtype == W[0]->dtype && (W[i]->dtype == DType::Q8 || W[i]->dtype == DType::Q4) &&
                                                    W[i]->cols == W[0]->cols && W[i]->rows > 0;
    if (fused) {
        gemm_q::GemvOut outs[4];
        for (int i = 0; i < count; ++i) outs[i] = {static_cast<const QuantWeights*>(W[i]->data), y[i], nullptr};
        return gemm_q::gemv_fast(x, M, outs, count);
    }
#endif
    for (int i = 0; i < count; ++i) matmul_in_mode(x, M, *W[i], y[i], nullptr, mode);
}

// Attention in a compute mode: fast with 8 or more queries (the vision tower, text prefill) ->
// attention_bf16 where the level has VDPBF16PS; everything else (decode, short chunks: a few queries
// would not repay packing the keys and values) -> attention (fp32). ldq, ldkv: row strides (0: packed).
inline void attention_in_mode(const float* q, int64_t Tq, const float* k, const float* v, int64_t Tk, int Hq, int Hkv, int d, float scale,
                              bool causal, int64_t q_offset, float* out, Compute mode, int64_t ldq, int64_t ldkv) {
#if defined(DEEPSTACK_HAVE_DPBF16)
    if (mode == Compute::Fast && Tq >= 8) return attention_bf16<simd::F32Src>(q, Tq, k, v, Tk, Hq, Hkv, d, scale, causal, q_offset, out, ldq, ldkv);
#endif
    (void)mode;
    attention(q, Tq, k, v, Tk, Hq, Hkv, d, scale, causal, q_offset, out, ldq, ldkv);
}

// Whether this level has bf16 dot products (VDPBF16PS): fast mode's bf16 GEMM and attention.
#if defined(DEEPSTACK_HAVE_DPBF16)
constexpr bool kHasDpbf16 = true;
#else
constexpr bool kHasDpbf16 = false;
#endif
#if defined(DEEPSTACK_HAVE_AMX)
constexpr bool kHasAmx = true;
#else
constexpr bool kHasAmx = false;
#endif

// Causal attention of Tq new queries over a bf16 KV cache (k / v [Tk, Hkv * d], the queries' own
// rows last): decode reads the cache directly, 8 or more queries pack it (attention_bf16), and a
// few queries run the fp32 kernel on an fp32 copy of the rows.
inline void attention_cached_bf16(const float* q, int64_t Tq, const uint16_t* k, const uint16_t* v, int64_t Tk, int Hq, int Hkv, int d,
                                  float scale, float* out) {
    if (Tq <= 0 || Hq <= 0 || d <= 0) return;
    if (Hkv <= 0 || Hq % Hkv != 0) throw Error("attention: Hq must be a multiple of Hkv");
    const int64_t row = int64_t(Hkv) * d, q_offset = Tk - Tq;
    if (Tq == 1) {
        const DecodeQueryBf16 query{q, k, v, Tk, out};
        return attn::attention_decode<simd::BF16Src>(&query, 1, row, Hq, Hkv, d, scale);
    }
#if defined(DEEPSTACK_HAVE_DPBF16)
    if (Tq >= 8) return attention_bf16<simd::BF16Src>(q, Tq, k, v, Tk, Hq, Hkv, d, scale, true, q_offset, out);
#endif
    float* kf = thread_workspace<AttentionWorkspace>().keys_f32.get(size_t(Tk * row));
    float* vf = thread_workspace<AttentionWorkspace>().values_f32.get(size_t(Tk * row));
    for (int64_t i = 0; i < Tk * row; ++i) kf[i] = bf16_to_f32(k[i]), vf[i] = bf16_to_f32(v[i]);
    attention(q, Tq, kf, vf, Tk, Hq, Hkv, d, scale, true, q_offset, out);
}

// Decode attention of several sequences, one query row per head each, over their bf16 caches, in
// one parallel region (a batched decode step's layer): each query gets the bits attention_cached_bf16
// gives it alone.
inline void attention_decode_bf16(const DecodeQueryBf16* queries, int count, int Hq, int Hkv, int d, float scale) {
    if (count <= 0 || Hq <= 0 || d <= 0) return;
    if (Hkv <= 0 || Hq % Hkv != 0) throw Error("attention: Hq must be a multiple of Hkv");
    attn::attention_decode<simd::BF16Src>(queries, count, int64_t(Hkv) * d, Hq, Hkv, d, scale);
}

}  // namespace DEEPSTACK_KERNEL_LEVEL
}  // namespace deepstack::detail

#endif  // DEEPSTACK_KERNEL_LEVEL
