// deepstack/kernels_quant.hpp - Q8 / Q4 weights made at load time (see QuantWeights in kernels.hpp):
// quantize(), and the matmul paths that read them directly:
//   M <= 8 : GEMV that dequantizes each group of 32 in registers and applies the group scale once
//            per group (fp32 activations, fp32 accumulation);
//   M >  8 : the packed GEMM of kernels_gemm.hpp, whose per-block packing dequantizes the block
//            (dequant_row_segment) - never a dequantized copy of the whole matrix.
//
// A level body: kernels_levels.hpp compiles it once per SIMD level, inside that level's namespace and
// target region; included on its own it brings in the whole kernel layer.
#ifndef DEEPSTACK_KERNEL_LEVEL
#include "kernels.hpp"
#else

namespace deepstack::detail {
namespace DEEPSTACK_KERNEL_LEVEL {

namespace gemm {

// The exact GEMV (M <= kGemvRows) reads the block layout as fast mode's GEMV does: a block of 16 groups
// (QuantWeights) comes as 64-byte lines holding the same 4 bytes of each group, and the activations
// are laid out once per call in the order of those bytes (xl, [M][kpad] fp32). Q8: 8 lines per
// block (line j = elements 4j..4j+3 of each group), stored q + 128; Q4: 4 lines (stored q + 8, byte
// i of a group holding elements i and 16 + i), their low nibbles in xl's even lines, the high ones
// in the odd. Widened to fp32 lanes, 4 consecutive lanes belong to one group; the lanes' products
// sum over the block and each group's scale multiplies its 4 lanes once per block. The groups after
// the last whole block are summed one at a time (tail_groups_dot).

// sum over the groups after the last whole block of row n: scale * sum(q * x), x one activation row.
inline float tail_groups_dot(const QuantWeights& qw, int64_t n, const float* x) {
    const int64_t K = qw.cols, G = qw.groups();
    float tail = 0.f;
    for (int64_t g = G / kQuantBlock * kQuantBlock; g < G; ++g) {
        simd::vf q[kQuantGroup / simd::W];
        load_quant_group(qw, n, g, q);
        alignas(64) float xg[kQuantGroup] = {};
        for (int64_t k = g * kQuantGroup; k < std::min(K, (g + 1) * kQuantGroup); ++k) xg[k - g * kQuantGroup] = x[k];
        simd::vf t = simd::mul(q[0], simd::load(xg));
        for (int v = 1; v < kQuantGroup / simd::W; ++v) t = simd::fma(q[v], simd::load(xg + v * simd::W), t);
        tail += qw.scale_at(n, g) * simd::hsum(t);
    }
    return tail;
}

#if defined(DEEPSTACK_SIMD_AVX512)
// AVX-512: 16 bytes at a time widened straight to 16 fp32 lanes (Q8: minus 128; Q4: each nibble
// through a 16-entry vpermps table of q, cheaper than an integer subtract and conversion per
// element), the group scales spread over the lanes by
// vpermps.
template <int MM>
inline void gemv_quant_blocks(const QuantWeights& qw, const float* xl, const float* x, float* y, const float* bias, int64_t n0, int64_t n1) {
    const int64_t N = qw.rows, K = qw.cols, kpad = qw.kpad, G = qw.groups(), blocks = G / kQuantBlock, row_bytes = qw.row_bytes();
    const bool q8 = qw.type == DType::Q8;
    const WeightPrefetch where = weight_prefetch();
    __m512i lane_group[4];  // lanes of widened bytes [16i, 16i + 16): groups 4i + lane / 4
DEEPSTACK_UNROLL
    for (int i = 0; i < 4; ++i)
        lane_group[i] = _mm512_add_epi32(_mm512_set1_epi32(4 * i), _mm512_srli_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), 2));
    const __m512i shift = _mm512_set1_epi32(128);  // Q8's stored offset
    const __m512 q4_values = _mm512_set_ps(7, 6, 5, 4, 3, 2, 1, 0, -1, -2, -3, -4, -5, -6, -7, -8);  // stored q + 8 -> q
    for (int64_t n = n0; n < n1; ++n) {
        const int8_t* wr = qw.q.data() + n * row_bytes;
        const uint16_t* ws = qw.scale.data() + n * G;  // bf16
        __m512 acc[MM];
DEEPSTACK_UNROLL
        for (int m = 0; m < MM; ++m) acc[m] = _mm512_setzero_ps();
        for (int64_t b = 0; b < blocks; ++b) {
            __m512 part[MM][4];  // lanes of groups 4i .. 4i + 3, summed over the block's lines
DEEPSTACK_UNROLL
            for (int m = 0; m < MM; ++m)
DEEPSTACK_UNROLL
                for (int i = 0; i < 4; ++i) part[m][i] = _mm512_setzero_ps();
            const float* xb = xl + b * kQuantBlock * kQuantGroup;
            const int8_t* wb = wr + b * kQuantBlock * qw.group_bytes();
            if (q8) {
DEEPSTACK_UNROLL
                for (int j = 0; j < 8; ++j) {
                    simd::prefetch_ahead(wb + j * 64, where);
DEEPSTACK_UNROLL
                    for (int i = 0; i < 4; ++i) {
                        const __m512i u = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb + j * 64 + 16 * i)));
                        const __m512 q = _mm512_cvtepi32_ps(_mm512_sub_epi32(u, shift));
DEEPSTACK_UNROLL
                        for (int m = 0; m < MM; ++m) part[m][i] = _mm512_fmadd_ps(q, _mm512_loadu_ps(xb + m * kpad + j * 64 + 16 * i), part[m][i]);
                    }
                }
            } else {
DEEPSTACK_UNROLL
                for (int j = 0; j < 4; ++j) {
                    simd::prefetch_ahead(wb + j * 64, where);
DEEPSTACK_UNROLL
                    for (int i = 0; i < 4; ++i) {
                        const __m512i u = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb + j * 64 + 16 * i)));
                        const __m512 lo = _mm512_permutexvar_ps(u, q4_values);
                        const __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(u, 4), q4_values);
DEEPSTACK_UNROLL
                        for (int m = 0; m < MM; ++m) {
                            part[m][i] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xb + m * kpad + 2 * j * 64 + 16 * i), part[m][i]);
                            part[m][i] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + m * kpad + (2 * j + 1) * 64 + 16 * i), part[m][i]);
                        }
                    }
                }
            }
            const __m512 scales = _mm512_castsi512_ps(
                _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ws + b * kQuantBlock))), 16));
DEEPSTACK_UNROLL
            for (int i = 0; i < 4; ++i) {
                const __m512 s = _mm512_permutexvar_ps(lane_group[i], scales);
DEEPSTACK_UNROLL
                for (int m = 0; m < MM; ++m) acc[m] = _mm512_fmadd_ps(s, part[m][i], acc[m]);
            }
        }
DEEPSTACK_UNROLL
        for (int m = 0; m < MM; ++m) y[m * N + n] = _mm512_reduce_add_ps(acc[m]) + tail_groups_dot(qw, n, x + m * K) + (bias ? bias[n] : 0.f);
    }
}

#else
// Other SIMD levels: each 64-byte line made signed in a buffer (Q8: q + 128 ^ 0x80; Q4: nibble - 8,
// low and high halves apart), converted by load_q8_group, and the scales spread over the lanes
// through a 64-entry buffer per block.
template <int MM>
inline void gemv_quant_blocks(const QuantWeights& qw, const float* xl, const float* x, float* y, const float* bias, int64_t n0, int64_t n1) {
    using namespace simd;
    constexpr int LV = 64 / W, HV = 32 / W;  // vectors per line, per half line
    const int64_t N = qw.rows, K = qw.cols, kpad = qw.kpad, G = qw.groups(), blocks = G / kQuantBlock, row_bytes = qw.row_bytes();
    const bool q8 = qw.type == DType::Q8;
    const WeightPrefetch where = weight_prefetch();
    for (int64_t n = n0; n < n1; ++n) {
        const int8_t* wr = qw.q.data() + n * row_bytes;
        const uint16_t* ws = qw.scale.data() + n * G;  // bf16
        vf acc[MM];
DEEPSTACK_UNROLL
        for (int m = 0; m < MM; ++m) acc[m] = zero();
        for (int64_t b = 0; b < blocks; ++b) {
            vf part[MM][LV];  // lane l of vector v: group (v W + l) / 4, summed over the block's lines
DEEPSTACK_UNROLL
            for (int m = 0; m < MM; ++m)
DEEPSTACK_UNROLL
                for (int v = 0; v < LV; ++v) part[m][v] = zero();
            const float* xb = xl + b * kQuantBlock * kQuantGroup;
            const int8_t* wb = wr + b * kQuantBlock * qw.group_bytes();
            auto add_line = [&](const int8_t* line, const float* xline) {  // 64 signed q against 64 activations
                vf q[LV];
                load_q8_group(line, q);
                load_q8_group(line + 32, q + HV);
DEEPSTACK_UNROLL
                for (int m = 0; m < MM; ++m)
DEEPSTACK_UNROLL
                    for (int v = 0; v < LV; ++v) part[m][v] = simd::fma(q[v], load(xline + m * kpad + v * W), part[m][v]);
            };
            alignas(64) int8_t lo[64], hi[64];
            for (int j = 0; j < (q8 ? 8 : 4); ++j) {
                prefetch_ahead(wb + j * 64, where);
                const uint8_t* u = reinterpret_cast<const uint8_t*>(wb + j * 64);
                if (q8) {
DEEPSTACK_UNROLL
                    for (int i = 0; i < 64; ++i) lo[i] = int8_t(u[i] ^ 0x80u);
                    add_line(lo, xb + j * 64);
                } else {
DEEPSTACK_UNROLL
                    for (int i = 0; i < 64; ++i) lo[i] = int8_t(int(u[i] & 15u) - 8), hi[i] = int8_t(int(u[i] >> 4) - 8);
                    add_line(lo, xb + 2 * j * 64);
                    add_line(hi, xb + (2 * j + 1) * 64);
                }
            }
            alignas(64) float lane_scale[64];
DEEPSTACK_UNROLL
            for (int i = 0; i < 64; ++i) lane_scale[i] = bf16_to_f32(ws[b * kQuantBlock + i / 4]);
DEEPSTACK_UNROLL
            for (int m = 0; m < MM; ++m)
DEEPSTACK_UNROLL
                for (int v = 0; v < LV; ++v) acc[m] = simd::fma(load(lane_scale + v * W), part[m][v], acc[m]);
        }
DEEPSTACK_UNROLL
        for (int m = 0; m < MM; ++m) y[m * N + n] = hsum(acc[m]) + tail_groups_dot(qw, n, x + m * K) + (bias ? bias[n] : 0.f);
    }
}
#endif

// The exact GEMV for M <= kGemvRows rows of x: lays the activations out in line order, then
// gemv_quant_blocks over the weight rows.
inline void gemv_quant(const float* x, int64_t M, const QuantWeights& qw, float* y, const float* bias) {
    const int64_t N = qw.rows, K = qw.cols, kpad = qw.kpad, blocks = qw.groups() / kQuantBlock;
    const bool q8 = qw.type == DType::Q8;
    float* xl = thread_workspace<GemmWorkspace>().x_line_order.get(size_t(M * kpad));  // [M][kpad]: each block's activations in line order
    for (int64_t m = 0; m < M; ++m) activations_in_line_order(x + m * K, blocks, q8, xl + m * kpad);
    split_gemv_chunks(M, N, 1, omp_threads_for(double(M) * double(N) * double(K)), [&](int64_t m0, int64_t mm, int64_t n0, int64_t n1) {
        const float *xm = x + m0 * K, *xlm = xl + m0 * kpad;
        float* ym = y + m0 * N;
        switch (mm) {
            case 1: return gemv_quant_blocks<1>(qw, xlm, xm, ym, bias, n0, n1);
            case 2: return gemv_quant_blocks<2>(qw, xlm, xm, ym, bias, n0, n1);
            case 3: return gemv_quant_blocks<3>(qw, xlm, xm, ym, bias, n0, n1);
            default: return gemv_quant_blocks<4>(qw, xlm, xm, ym, bias, n0, n1);
        }
    });
}

}  // namespace gemm

#if defined(DEEPSTACK_HAVE_VNNI)
namespace gemm_q {

constexpr int MR = 6, NV = 2, NR = NV * 16;
constexpr int64_t GK = 8;  // groups of 32 per packed k block (KC = 256)
constexpr int64_t NC = NR * 8;
constexpr int64_t MC = MR * 16;
constexpr int QPG = kQuantGroup / 4;  // 4-byte quads per group

// quantize_act_row with AVX-512 for the whole groups (the same float operations: x * (127 / amax)
// rounded to nearest even, so the same bytes for finite inputs; tested), scalar for a partial last
// group. Also returns each group's sum of q in gsum when given.
inline void quantize_act_row_simd(const float* x, int64_t K, int64_t kpad, int8_t* q, float* s, int32_t* gsum = nullptr) {
    const int64_t whole = K / kQuantGroup;
    for (int64_t g = 0; g < whole; ++g) {
        const float* xg = x + g * kQuantGroup;
        const __m512 a = _mm512_loadu_ps(xg), b = _mm512_loadu_ps(xg + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
        const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
        s[g] = amax / 127.f;
        const __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, inv)), qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, inv));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + g * kQuantGroup), _mm512_cvtsepi32_epi8(qa));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + g * kQuantGroup + 16), _mm512_cvtsepi32_epi8(qb));
        if (gsum) gsum[g] = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
    }
    if (whole * kQuantGroup < kpad) {
        const int64_t k0 = whole * kQuantGroup;
        quantize_act_row(x + k0, K - k0, kpad - k0, q + k0, s + whole);
        if (gsum)
            for (int64_t g = whole; g < kpad / kQuantGroup; ++g) {
                gsum[g] = 0;
                for (int i = 0; i < kQuantGroup; ++i) gsum[g] += q[g * kQuantGroup + i];
            }
    }
}

// a: [ng][QPG][MR] u32 (4 x (xq + 128)), asx: [ng][MR]; b: [ng][QPG][NR] 4 x int8 weights,
// bs: [ng][NR] weight scales, bc: [ng][NR] -128 * sum(wq) (undoes the +128 of the activations).
inline void micro_kernel(const uint32_t* __restrict a, const float* __restrict asx, const int32_t* __restrict b,
                         const float* __restrict bs, const int32_t* __restrict bc, int64_t ng, float* c, int64_t ldc,
                         int mr, int nvalid, bool first, const float* bias) {
    __m512 accf[MR][NV];
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NV; ++j) accf[i][j] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; ++g) {
        __m512i acci[MR][NV];
        for (int j = 0; j < NV; ++j) {
            const __m512i c0 = _mm512_loadu_si512(bc + g * NR + j * 16);
            for (int i = 0; i < MR; ++i) acci[i][j] = c0;
        }
#pragma GCC unroll 8
        for (int q = 0; q < QPG; ++q) {
            __m512i bv[NV];
            for (int j = 0; j < NV; ++j) bv[j] = _mm512_loadu_si512(b + (g * QPG + q) * NR + j * 16);
#pragma GCC unroll 8
            for (int i = 0; i < MR; ++i) {
                const __m512i av = _mm512_set1_epi32(int(a[(g * QPG + q) * MR + i]));
                for (int j = 0; j < NV; ++j) acci[i][j] = _mm512_dpbusd_epi32(acci[i][j], av, bv[j]);
            }
        }
        __m512 sw[NV];
        for (int j = 0; j < NV; ++j) sw[j] = _mm512_loadu_ps(bs + g * NR + j * 16);
        for (int i = 0; i < MR; ++i) {
            const __m512 sxi = _mm512_set1_ps(asx[g * MR + i]);
            for (int j = 0; j < NV; ++j)
                accf[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acci[i][j]), _mm512_mul_ps(sw[j], sxi), accf[i][j]);
        }
    }
    for (int i = 0; i < mr; ++i) {
        float* ci = c + i * ldc;
        for (int j = 0; j < NV; ++j) {
            const int col = j * 16, cnt = std::min(16, nvalid - col);
            if (cnt <= 0) break;
            const __mmask16 m = simd::tail_mask(cnt);
            __m512 v = accf[i][j];
            if (!first) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, ci + col));
            else if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias + col));
            _mm512_mask_storeu_ps(ci + col, m, v);
        }
    }
}

inline void pack_b(const QuantWeights& qw, int64_t n0, int nvalid, int64_t g0, int64_t ng, int32_t* dq, float* ds, int32_t* dc) {
    alignas(64) int8_t t[kQuantGroup];
    // groups [g0, g0 + ng) inside one 16-group block: stored quad q of group g0 + g at quad0 + q * 64 + 4 * g
    const bool in_block = g0 % kQuantBlock + ng <= kQuantBlock && qw.quad_stride(g0) != 4;
    const bool q8_in_block = qw.type == DType::Q8 && in_block, q4_in_block = qw.type == DType::Q4 && in_block;
    for (int j = 0; j < NR; ++j) {
        if (q4_in_block && j < nvalid) {
            // stored quad q (q < 4) holds elements 4q..4q+3 in its low nibbles and 16+4q.. in its high
            // ones, each as e + 8; per byte, e = ((nibble | 0x80) - 8) ^ 0x80 (no borrow leaves a byte)
            const int64_t n = n0 + j;
            const int8_t* quad0 = qw.quant_quad(n, g0, 0);
            for (int64_t g = 0; g < ng; ++g) {
                int32_t nibble_sum = 0;
                for (int q = 0; q < QPG / 2; ++q) {
                    uint32_t v;
                    std::memcpy(&v, quad0 + q * (4 * kQuantBlock) + 4 * g, 4);
                    const uint32_t lo = v & 0x0F0F0F0Fu, hi = (v >> 4) & 0x0F0F0F0Fu;
                    const uint32_t elo = ((lo | 0x80808080u) - 0x08080808u) ^ 0x80808080u;
                    const uint32_t ehi = ((hi | 0x80808080u) - 0x08080808u) ^ 0x80808080u;
                    std::memcpy(dq + (g * QPG + q) * NR + j, &elo, 4);
                    std::memcpy(dq + (g * QPG + q + QPG / 2) * NR + j, &ehi, 4);
                    nibble_sum += int32_t(((lo * 0x01010101u) >> 24) + ((hi * 0x01010101u) >> 24));  // bytes <= 15: no carry
                }
                ds[g * NR + j] = qw.scale_at(n, g0 + g);
                dc[g * NR + j] = -128 * (nibble_sum - 8 * kQuantGroup);
            }
            continue;
        }
        if (q8_in_block && j < nvalid) {
            const int64_t n = n0 + j;
            const int8_t* quad0 = qw.quant_quad(n, g0, 0);
            int32_t sums[GK] = {};
            for (int q = 0; q < QPG; ++q)
                for (int64_t g = 0; g < ng; ++g) {
                    const uint8_t* p = reinterpret_cast<const uint8_t*>(quad0 + q * (4 * kQuantBlock) + 4 * g);
                    uint32_t v;  // 4 x (q + 128) -> 4 x q
                    std::memcpy(&v, p, 4);
                    v ^= 0x80808080u;
                    std::memcpy(dq + (g * QPG + q) * NR + j, &v, 4);
                    sums[g] += p[0] + p[1] + p[2] + p[3] - 4 * 128;
                }
            for (int64_t g = 0; g < ng; ++g) {
                ds[g * NR + j] = qw.scale_at(n, g0 + g);
                dc[g * NR + j] = -128 * sums[g];
            }
            continue;
        }
        for (int64_t g = 0; g < ng; ++g) {
            if (j < nvalid) {
                const int64_t n = n0 + j, gg = g0 + g;
                const int8_t* quad0 = qw.quant_quad(n, gg, 0);
                const int64_t qs = qw.quad_stride(gg);
                if (qw.type == DType::Q8) {  // the group's values in order
                    for (int q = 0; q < QPG; ++q) std::memcpy(t + 4 * q, quad0 + q * qs, 4);
                    for (int u = 0; u < kQuantGroup; ++u) t[u] = int8_t(t[u] ^ 0x80);  // q + 128 -> q
                } else {
                    for (int q = 0; q < QPG / 2; ++q)
                        for (int u = 0; u < 4; ++u) {
                            const uint8_t bb = uint8_t(quad0[q * qs + u]);
                            t[4 * q + u] = int8_t(int(bb & 15) - 8);
                            t[4 * q + u + 16] = int8_t(int(bb >> 4) - 8);
                        }
                }
                int32_t sum = 0;
                for (int u = 0; u < kQuantGroup; ++u) sum += t[u];
                for (int q = 0; q < QPG; ++q) std::memcpy(dq + (g * QPG + q) * NR + j, t + 4 * q, 4);
                ds[g * NR + j] = qw.scale_at(n, gg);
                dc[g * NR + j] = -128 * sum;
            } else {
                for (int q = 0; q < QPG; ++q) dq[(g * QPG + q) * NR + j] = 0;
                ds[g * NR + j] = 0.f;
                dc[g * NR + j] = 0;
            }
        }
    }
}

// xq: [M][kpad] int8, sx: [M][G]
inline void pack_a(const int8_t* xq, const float* sx, int64_t kpad, int64_t G, int64_t m0, int mr, int64_t g0, int64_t ng,
                   uint32_t* da, float* dsx) {
    for (int i = 0; i < MR; ++i)
        for (int64_t g = 0; g < ng; ++g) {
            if (i < mr) {
                // xq holds int8 values; xq + 128 as u8 is xq ^ 0x80 bytewise
                const int8_t* src = xq + (m0 + i) * kpad + (g0 + g) * kQuantGroup;
                for (int q = 0; q < QPG; ++q) {
                    uint32_t v;
                    std::memcpy(&v, src + 4 * q, 4);
                    da[(g * QPG + q) * MR + i] = v ^ 0x80808080u;
                }
                dsx[g * MR + i] = sx[(m0 + i) * G + g0 + g];
            } else {
                for (int q = 0; q < QPG; ++q) da[(g * QPG + q) * MR + i] = 0x80808080u;
                dsx[g * MR + i] = 0.f;
            }
        }
}

// Activation panels of the whole call, packed once and shared by the threads: per (group block kb
// of GK, row panel mb) the u32 quads [GK][QPG][MR] at aq_offset and the scales [GK][MR] at as_offset.
inline int64_t aq_offset(int64_t kb, int64_t mb, int64_t mblocks) { return (kb * mblocks + mb) * GK * QPG * MR; }
inline int64_t as_offset(int64_t kb, int64_t mb, int64_t mblocks) { return (kb * mblocks + mb) * GK * MR; }

inline void gemm(const float* x, int64_t M, const Matrix& W, float* y, const float* bias) {
    const auto& qw = *static_cast<const QuantWeights*>(W.data);
    const int64_t N = qw.rows, K = qw.cols, G = qw.groups(), kpad = qw.kpad, mblocks = (M + MR - 1) / MR, kblocks = (G + GK - 1) / GK;
    // activations quantized once per call, then packed as panels (shared by the threads)
    auto* xq = reinterpret_cast<int8_t*>(thread_workspace<GemmWorkspace>().x_int8.get(size_t(M * kpad / 4 + 16)));
    float* sx = thread_workspace<GemmWorkspace>().x_int8_scales.get(size_t(M * G));
    const int nt = omp_threads_for(double(M) * double(N) * double(K));
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && M * K >= (1 << 15))
    for (int64_t m = 0; m < M; ++m) quantize_act_row_simd(x + m * K, K, kpad, xq + m * kpad, sx + m * G);
    auto* aq = reinterpret_cast<uint32_t*>(thread_workspace<GemmWorkspace>().a_panels.get(size_t(kblocks * mblocks * GK * QPG * MR)));
    float* asx = thread_workspace<GemmWorkspace>().a_scales.get(size_t(kblocks * mblocks * GK * MR));
    pack_panels(M, G, GK, MR, nt, [&](int64_t kb, int64_t mb) {
        pack_a(xq, sx, kpad, G, mb * MR, int(std::min<int64_t>(MR, M - mb * MR)), kb * GK, std::min(GK, G - kb * GK),
               aq + aq_offset(kb, mb, mblocks), asx + as_offset(kb, mb, mblocks));
    });
    auto block = [&](int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end) {
        // this thread's weight block: quads [NC/NR][ng][QPG][NR], scales and -128 * sums [NC/NR][ng][NR]
        auto* bq = reinterpret_cast<int32_t*>(thread_workspace<GemmWorkspace>().b_panel.get(size_t(NC * GK * QPG)));
        float* bsc = thread_workspace<GemmWorkspace>().b_scales.get(size_t(NC * GK));
        auto* bcor = reinterpret_cast<int32_t*>(thread_workspace<GemmWorkspace>().b_sums.get(size_t(NC * GK)));
        gemm_loops(
            G, GK, NC, NR, MC, MR, m_begin, m_end, n_begin, n_end,
            [&](int64_t p, int64_t n0, int nvalid, int64_t g0, int64_t ng) {
                pack_b(qw, n0, nvalid, g0, ng, bq + p * ng * QPG * NR, bsc + p * ng * NR, bcor + p * ng * NR);
            },
            [&](int64_t p, int64_t m0, int mvalid, int64_t n0, int nvalid, int64_t g0, int64_t ng) {
                const int64_t kb = g0 / GK, mb = m0 / MR;
                micro_kernel(aq + aq_offset(kb, mb, mblocks), asx + as_offset(kb, mb, mblocks), bq + p * ng * QPG * NR, bsc + p * ng * NR,
                             bcor + p * ng * NR, ng, y + m0 * N + n0, N, mvalid, nvalid, g0 == 0, bias ? bias + n0 : nullptr);
            });
    };
    split_gemm(M, N, nt, NC, NR, block, MR);
}

// GEMV (M <= kQuantGemvMaxRows) in fast mode: the same int8 activations and integer group dot products as the GEMM.
// A block of 16 groups (QuantWeights layout) is read as 64-byte steps (Q8: 8, Q4: 4) holding the
// same 4 bytes of each group, so 32-bit lane L stays in group L: its integer dot product runs over
// the whole block and is scaled once per block (weight and activation scales of the 16 groups are
// contiguous). The weights are stored unsigned and the shift is undone by starting each lane from
// xneg = -(shift * sum of the group's x):
//   Q8: the stored bytes are q + 128: vpdpbusd(xneg, bytes, x), shift 128 (stored signed, each
//       64-byte line would need an XOR first).
//   Q4: the stored nibbles are q + 8 (u8): vpdpbusd over the low nibbles (elements 0-15) and the
//       high nibbles (16-31) against x in the same order, shift 8.
// xl holds the activations in that order per block: Q8 step j = bytes 4j..4j+3 of each of the 16
// groups; Q4 step j = elements 4j..4j+3 of each group, then elements 16+4j..16+4j+3. The groups
// after the last whole block (stored one after the other) are read 64 bytes at a time too - Q8: 2
// groups, Q4: 4 - against activations laid out once per call to match (TailStep), lane L of the
// integer sums in group L / 4 (Q4) or L / 8 (Q8).

// One 64-byte step of the groups after the last whole block, for one activation row: 64 floats.
//   x:     Q4: the low-nibble elements (0-15) of the step's 4 groups, then the high ones (16-31);
//          Q8: the 32 elements of its 2 groups (zero past the last group)
//   neg:   per lane, -shift * the group's activation sum in the group's first lane, else 0
//   scale: per lane, the activation scale of the lane's group (0 past the last group)
struct TailStep {
    int8_t x[128];
    int32_t neg[16];
    float scale[16];
};
constexpr int64_t kTailStepFloats = int64_t(sizeof(TailStep) / sizeof(float));

inline int64_t tail_groups_per_step(bool q8) { return q8 ? 2 : 4; }

// The tail steps of one activation row: xq [kpad] int8, sx / neg [G] (neg = -shift * group sums).
inline void lay_out_tail_steps(const int8_t* xq, const float* sx, const int32_t* neg, int64_t G, bool q8, TailStep* steps) {
    const int64_t first = G / kQuantBlock * kQuantBlock, per = tail_groups_per_step(q8), lanes = 16 / per;
    for (int64_t s = 0; first + s * per < G; ++s) {
        TailStep& t = steps[s];
        std::memset(&t, 0, sizeof t);
        for (int64_t j = 0; j < per && first + s * per + j < G; ++j) {
            const int64_t g = first + s * per + j;
            if (q8) {
                std::memcpy(t.x + 32 * j, xq + g * kQuantGroup, 32);
            } else {
                std::memcpy(t.x + 16 * j, xq + g * kQuantGroup, 16);
                std::memcpy(t.x + 64 + 16 * j, xq + g * kQuantGroup + 16, 16);
            }
            t.neg[j * lanes] = neg[g];
            for (int64_t l = 0; l < lanes; ++l) t.scale[j * lanes + l] = sx[g];
        }
    }
}

// Makes the compiler keep v in a register. Without it GCC folds a load that several instructions
// use into each of them as a memory operand: gemv_fast_step's activation pieces would be loaded
// once per weight row and its weight lines twice (for the low and the high nibbles), and 64-byte
// loads, one per cycle on Zen 4, bound its loop (one core, q4 4096 x 2048 from cache: 4 rows
// 17.4 -> 21.2 GB/s, 1 row 44.5 -> 54.9 with the loads kept once).
inline void keep_in_register(__m512i& v) { __asm__("" : "+v"(v)); }

// Weight rows n + r * gap (r < R) against MM activation rows: each 64-byte piece of the
// activations is loaded once for the R rows, and each (activation row, weight row) pair sums in C
// independent chains (one chain of 8 vpdpbusd per block would be bound by their latency). The
// integer sums are exact and a row's float operations come in the same order for any R, C and
// gap, so a row has the same bits whichever step computes it.
template <int MM, int R, int C>
inline void gemv_fast_step(const QuantWeights& qw, const float* sx, const int8_t* xl, const int32_t* xneg, const TailStep* tail, float* y,
                           const float* bias, int64_t n, int64_t gap, WeightPrefetch where) {
    const int64_t N = qw.rows, kpad = qw.kpad, G = qw.groups(), blocks = G / kQuantBlock, row_bytes = qw.row_bytes();
    const bool q8 = qw.type == DType::Q8;
    const __m512i nib = _mm512_set1_epi8(15);
    // the tail: steps of `per` groups; lane L's group within its step
    const int64_t per = tail_groups_per_step(q8), first_tail = blocks * kQuantBlock, steps = (G - first_tail + per - 1) / per;
    const __m512i tail_lane_group = _mm512_srli_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), q8 ? 3 : 2);
    const int8_t* wr = qw.q.data() + n * row_bytes;  // row n + r * gap at wr + r * wgap
    const uint16_t* ws = qw.scale.data() + n * G;    // bf16, row n + r * gap at ws + r * sgap
    const int64_t wgap = gap * row_bytes, sgap = gap * G;
    __m512 acc[MM][R];
DEEPSTACK_UNROLL
    for (int m = 0; m < MM; ++m)
DEEPSTACK_UNROLL
        for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; ++b) {
        __m512i d[MM][R][C];
DEEPSTACK_UNROLL
        for (int m = 0; m < MM; ++m) {
            const __m512i neg = _mm512_loadu_si512(xneg + m * G + b * kQuantBlock);
DEEPSTACK_UNROLL
            for (int r = 0; r < R; ++r) {
                d[m][r][0] = neg;
DEEPSTACK_UNROLL
                for (int c = 1; c < C; ++c) d[m][r][c] = _mm512_setzero_si512();
            }
        }
        const int8_t* xb = xl + b * kQuantBlock * kQuantGroup;  // 512 bytes of activations per block
        // u[r]: the unsigned weights of row r's piece i of the block (Q8: step i; Q4: step i / 2,
        // low nibbles for even i, high for odd), dotted with xb's piece i into chain i % C
        auto dot = [&](const __m512i* u, int i) {
DEEPSTACK_UNROLL
            for (int m = 0; m < MM; ++m) {
                __m512i xv = _mm512_loadu_si512(xb + m * kpad + i * 64);
                keep_in_register(xv);
DEEPSTACK_UNROLL
                for (int r = 0; r < R; ++r) d[m][r][i % C] = _mm512_dpbusd_epi32(d[m][r][i % C], u[r], xv);
            }
        };
        if (q8) {
DEEPSTACK_UNROLL
            for (int i = 0; i < 8; ++i) {
                __m512i u[R];
DEEPSTACK_UNROLL
                for (int r = 0; r < R; ++r) {
                    const int8_t* line = wr + r * wgap + b * kQuantBlock * kQuantGroup + i * 64;
                    simd::prefetch_ahead(line, where);
                    u[r] = _mm512_loadu_si512(line);  // stored as q + 128
                }
                dot(u, i);
            }
        } else {
DEEPSTACK_UNROLL
            for (int j = 0; j < 4; ++j) {
                __m512i lo[R], hi[R];
DEEPSTACK_UNROLL
                for (int r = 0; r < R; ++r) {
                    const int8_t* line = wr + r * wgap + b * kQuantBlock * kQuantGroup / 2 + j * 64;
                    simd::prefetch_ahead(line, where);
                    __m512i w = _mm512_loadu_si512(line);
                    keep_in_register(w);
                    lo[r] = _mm512_and_si512(w, nib);
                    hi[r] = _mm512_and_si512(_mm512_srli_epi16(w, 4), nib);
                }
                dot(lo, 2 * j);
                dot(hi, 2 * j + 1);
            }
        }
DEEPSTACK_UNROLL
        for (int r = 0; r < R; ++r) {
            const __m512 wsv = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ws + r * sgap + b * kQuantBlock))), 16));
DEEPSTACK_UNROLL
            for (int m = 0; m < MM; ++m) {
                __m512i dm = d[m][r][0];
DEEPSTACK_UNROLL
                for (int c = 1; c < C; ++c) dm = _mm512_add_epi32(dm, d[m][r][c]);
                acc[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dm), _mm512_mul_ps(wsv, _mm512_loadu_ps(sx + m * G + b * kQuantBlock)), acc[m][r]);
            }
        }
    }
    for (int64_t st = 0; st < steps; ++st) {
        const int64_t g0 = first_tail + st * per, groups = std::min(per, G - g0);
        const __mmask64 bytes = groups * qw.group_bytes() == 64 ? ~0ull : (1ull << (groups * qw.group_bytes())) - 1;
        __m512i u[R];
        __m512 wsv[R];
DEEPSTACK_UNROLL
        for (int r = 0; r < R; ++r) {
            u[r] = _mm512_maskz_loadu_epi8(bytes, wr + r * wgap + g0 * qw.group_bytes());
            wsv[r] = _mm512_permutexvar_ps(tail_lane_group, _mm512_castsi512_ps(_mm512_slli_epi32(
                                                                _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(__mmask16((1u << groups) - 1), ws + r * sgap + g0)), 16)));
        }
DEEPSTACK_UNROLL
        for (int m = 0; m < MM; ++m) {
            const TailStep& t = tail[m * steps + st];
            const __m512i neg = _mm512_loadu_si512(t.neg);
            __m512i x0 = _mm512_loadu_si512(t.x), x1 = _mm512_loadu_si512(t.x + 64);
            keep_in_register(x0);
            keep_in_register(x1);
            const __m512 scale = _mm512_loadu_ps(t.scale);
DEEPSTACK_UNROLL
            for (int r = 0; r < R; ++r) {
                __m512i d;
                if (q8) {
                    d = _mm512_dpbusd_epi32(neg, u[r], x0);
                } else {
                    d = _mm512_dpbusd_epi32(neg, _mm512_and_si512(u[r], nib), x0);
                    d = _mm512_dpbusd_epi32(d, _mm512_and_si512(_mm512_srli_epi16(u[r], 4), nib), x1);
                }
                acc[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(wsv[r], scale), acc[m][r]);
            }
        }
    }
DEEPSTACK_UNROLL
    for (int m = 0; m < MM; ++m)
DEEPSTACK_UNROLL
        for (int r = 0; r < R; ++r) y[m * N + n + r * gap] = _mm512_reduce_add_ps(acc[m][r]) + (bias ? bias[n + r * gap] : 0.f);
}

// Rows [n0, n1) of y [MM, N] = x w^T (+ bias), the activations as gemv_fast lays them out. Two rows
// per step, one from each half of the range (rows n and n + half): a thread then streams its
// weights from two places at once, with twice the cache misses in flight of one sequential stream
// (decode at high memory bandwidth is bound by those, not by the arithmetic). Two neighbouring
// rows per step would not do: 1 KiB apart, their interleaved lines defeat the hardware prefetchers.
template <int MM>
inline void gemv_fast_rows(const QuantWeights& qw, const float* sx, const int8_t* xl, const int32_t* xneg, const TailStep* tail, float* y,
                           const float* bias, int64_t n0, int64_t n1) {
    const WeightPrefetch where = weight_prefetch();
    const int64_t half = (n1 - n0) / 2;
    for (int64_t n = n0; n < n0 + half; ++n) gemv_fast_step<MM, 2, MM == 1 ? 2 : 1>(qw, sx, xl, xneg, tail, y, bias, n, half, where);
    if ((n1 - n0) % 2) gemv_fast_step<MM, 1, 4>(qw, sx, xl, xneg, tail, y, bias, n1 - 1, 0, where);
}

// One output of gemv_fast: y [M, w->rows] = x w^T (+ bias).
struct GemvOut {
    const QuantWeights* w;
    float* y;
    const float* bias;
};

// gemv_fast over matrices sharing the input x (same format and K, e.g. a layer's q / k / v): x is
// quantized once and one parallel region covers all their rows.
inline void gemv_fast(const float* x, int64_t M, const GemvOut* outs, int count) {
    const QuantWeights& qw = *outs[0].w;
    const int64_t K = qw.cols, G = qw.groups(), kpad = qw.kpad, blocks = G / kQuantBlock;
    const bool q8 = qw.type == DType::Q8;
    int64_t N = 0;  // rows of all outputs
    for (int i = 0; i < count; ++i) {
        if (outs[i].w->type != qw.type || outs[i].w->cols != K) throw Error("gemv_fast: the matrices of one call need the same format and width");
        N += outs[i].w->rows;
    }
    auto* xq = reinterpret_cast<int8_t*>(thread_workspace<GemmWorkspace>().x_int8.get(size_t(M * kpad / 4 + 16)));
    float* sx = thread_workspace<GemmWorkspace>().x_int8_scales.get(size_t(M * G));
    auto* xl = reinterpret_cast<int8_t*>(thread_workspace<GemmWorkspace>().x_line_order.get(size_t(M * kpad / 4 + 16)));     // [M][kpad] in block order
    auto* xneg = reinterpret_cast<int32_t*>(thread_workspace<GemmWorkspace>().x_neg_sums.get(size_t(M * G + 16)));          // [M][G] -shift * group sums
    const int64_t per = tail_groups_per_step(q8), steps = (G - blocks * kQuantBlock + per - 1) / per;
    auto* tail = reinterpret_cast<TailStep*>(thread_workspace<GemmWorkspace>().x_tail_steps.get(size_t(M * steps * kTailStepFloats + 16)));  // [M][steps]
    for (int64_t m = 0; m < M; ++m) {
        int8_t* q = xq + m * kpad;
        int32_t* neg = xneg + m * G;
        quantize_act_row_simd(x + m * K, K, kpad, q, sx + m * G, neg);
        for (int64_t g = 0; g < G; ++g) neg[g] *= -(q8 ? 128 : 8);
        activations_in_line_order(q, blocks, q8, xl + m * kpad);
        lay_out_tail_steps(q, sx + m * G, neg, G, q8, tail + m * steps);
    }
    // rows [m0, m0 + mm) of x against rows [n0, n1) of one output
    auto rows_of = [&](const GemvOut& o, int64_t m0, int64_t mm, int64_t n0, int64_t n1) {
        const int8_t* xlm = xl + m0 * kpad;
        const float* sxm = sx + m0 * G;
        const int32_t* xnegm = xneg + m0 * G;
        const TailStep* tailm = tail + m0 * steps;
        float* ym = o.y + m0 * o.w->rows;
        switch (mm) {
            case 1: return gemv_fast_rows<1>(*o.w, sxm, xlm, xnegm, tailm, ym, o.bias, n0, n1);
            case 2: return gemv_fast_rows<2>(*o.w, sxm, xlm, xnegm, tailm, ym, o.bias, n0, n1);
            case 3: return gemv_fast_rows<3>(*o.w, sxm, xlm, xnegm, tailm, ym, o.bias, n0, n1);
            default: return gemv_fast_rows<4>(*o.w, sxm, xlm, xnegm, tailm, ym, o.bias, n0, n1);
        }
    };
    // rows [n0, n1) of the outputs stacked in order
    split_gemv_chunks(M, N, 1, omp_threads_for(double(M) * double(N) * double(K)), [&](int64_t m0, int64_t mm, int64_t n0, int64_t n1) {
        int64_t first = 0;
        for (int i = 0; i < count && first < n1; first += outs[i++].w->rows) {
            const int64_t a = std::max(n0, first), b = std::min(n1, first + outs[i].w->rows);
            if (a < b) rows_of(outs[i], m0, mm, a - first, b - first);
        }
    });
}

inline void gemv_fast(const float* x, int64_t M, const QuantWeights& qw, float* y, const float* bias) {
    const GemvOut out{&qw, y, bias};
    gemv_fast(x, M, &out, 1);
}

}  // namespace gemm_q
#endif  // AVX-512 VNNI

}  // namespace DEEPSTACK_KERNEL_LEVEL
}  // namespace deepstack::detail

#endif  // DEEPSTACK_KERNEL_LEVEL
