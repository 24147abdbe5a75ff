// deepstack/kernels_bf16.hpp - the "fast" compute mode for BF16 weights: activations are rounded to
// bf16 (round to nearest even) and products of bf16 pairs are accumulated in fp32 with AVX-512 BF16
// VDPBF16PS (32 multiply-adds per instruction). Reference semantics (matmul_bf16_ref): round x to
// bf16, then exact fp32 dot products with the bf16 weights. Without AVX-512 BF16 the same semantics
// are computed by rounding x and running the exact-mode kernels.
// Included from kernels.hpp.
#pragma once
#include "kernels_simd.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#if defined(DEEPSTACK_SIMD_AVX512) && defined(__AVX512BF16__)
#define DEEPSTACK_HAVE_DPBF16 1
#endif

namespace deepstack {
namespace detail {

// Compute mode of a matmul: Exact = fp32 activations x stored weights, fp32 accumulation.
// Fast = bf16 activations (VDPBF16PS) for BF16 weights, int8 activations (VNNI) for Q8 / Q4
// weights with M > 4; F32 / F16 weights always run Exact. Fast also runs attention with 8 or more
// queries (vision, prefill) on bf16 queries, keys, values and probabilities (attention_bf16).
enum class Compute { Exact, Fast };

// Scalar reference of the fast mode: x rounded to bf16, fp32 accumulation.
inline void matmul_bf16_ref(const float* x, int64_t M, const Matrix& W, float* y, const float* bias = nullptr) {
    const int64_t K = W.cols;
    std::vector<float> xr(size_t(M * K));
    for (size_t i = 0; i < xr.size(); ++i) xr[i] = bf16_to_f32(f32_to_bf16(x[i]));
    matmul_ref(xr.data(), M, W, y, bias);
}

#if defined(DEEPSTACK_HAVE_DPBF16)
namespace gemm_bf16 {

constexpr int MR = 12, NV = 2, NR = NV * 16;
static_assert(NR == kPanelRows, "a group of pair panels (Matrix::panel_rows) is one micro-panel");
constexpr int64_t KC = 512;  // k depth per packed block (256 bf16 pairs)
constexpr int64_t NC = NR * 8;
constexpr int64_t MC = MR * 16;

inline uint32_t pair_at(const uint16_t* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// c[mr, nvalid] (=|+=) sum over kp pairs; a packed [kp][MR] u32 (bf16 pair), b packed [kp][NR] u32.
// prefetch (may be null): kp * 8 bytes from there are fetched into L1 on the way, one line per 8 pairs.
inline void micro_kernel(const uint32_t* __restrict a, const uint32_t* __restrict b, int64_t kp, float* c, int64_t ldc,
                         int mr, int nvalid, bool first, const float* bias, const char* prefetch = nullptr) {
    __m512 acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kp; ++k) {
        if (prefetch && k % 8 == 0) __builtin_prefetch(prefetch + k * 8, 0, 3);
        __m512bh bv[NV];
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) bv[j] = (__m512bh)_mm512_loadu_si512(b + k * NR + j * 16);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
            const __m512bh av = (__m512bh)_mm512_set1_epi32(int(a[k * MR + i]));
#pragma GCC unroll 4
            for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], av, bv[j]);
        }
    }
    for (int i = 0; i < mr; ++i) {
        float* ci = c + i * ldc;
        for (int j = 0; j < NV; ++j) {
            const int col = j * 16, cnt = std::min(16, nvalid - col);
            if (cnt <= 0) break;
            const __mmask16 m = simd::tail_mask(cnt);
            __m512 v = acc[i][j];
            if (!first) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, ci + col));
            else if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias + col));
            _mm512_mask_storeu_ps(ci + col, m, v);
        }
    }
}

// Weight rows [n0, n0 + nvalid), cols [k0, k0 + kc) as bf16 pairs [kp][NR] (zero padded): whole
// blocks of 16 rows x 16 pairs by a register transpose, the remaining pairs one by one.
inline void pack_b(const uint16_t* w, int64_t K, int64_t n0, int nvalid, int64_t k0, int64_t kc, uint32_t* dst) {
    const int64_t kp = (kc + 1) / 2, full = kc / 2, p16 = full / 16 * 16;
    for (int h = 0; h < NR; h += 16)
        for (int64_t p = 0; p < p16; p += 16)
            simd::transpose16_rows(w + (n0 + h) * K + k0 + 2 * p, K * 2, nvalid - h, dst + p * NR + h, NR * 4);
    for (int j = 0; j < NR; ++j) {
        if (j < nvalid) {
            const uint16_t* src = w + (n0 + j) * K + k0;
            for (int64_t p = p16; p < full; ++p) dst[p * NR + j] = pair_at(src + 2 * p);
            if (kc & 1) dst[full * NR + j] = src[kc - 1];
        } else {
            for (int64_t p = p16; p < kp; ++p) dst[p * NR + j] = 0;
        }
    }
}

// pack_b for rows that all lie in row tiles (Matrix::tile_rows; n0 a multiple of 8, k0 and kc of
// 32): each 16 x 16-pair block is read from two tiles, 8 rows 64 bytes apart in each.
inline void pack_b_tiled(const Matrix& w, int64_t n0, int nvalid, int64_t k0, int64_t kc, uint32_t* dst) {
    const auto* wd = static_cast<const uint16_t*>(w.data);
    const int64_t last = n0 + nvalid - 1;  // rows past it are zero
    for (int h = 0; h < NR; h += 16)
        for (int64_t p = 0; p < kc / 2; p += 16) {
            const int64_t k = k0 + 2 * p;
            simd::transpose16_rows(wd + weight_index(w, std::min(n0 + h, last), k), wd + weight_index(w, std::min(n0 + h + 8, last), k),
                                   kTileCols * 2, nvalid - h, dst + p * NR + h, NR * 4);
        }
}

// pack_b for the rows of w that are not in pair panels (row-major or row tiles; kc <= KC).
inline void pack_b_rows(const Matrix& w, int64_t n0, int nvalid, int64_t k0, int64_t kc, uint32_t* dst) {
    const auto* wd = static_cast<const uint16_t*>(w.data);
    if (!w.tile_rows) return pack_b(wd, w.cols, n0, nvalid, k0, kc, dst);
    if (n0 + nvalid <= w.rows / kTileRows * kTileRows) return pack_b_tiled(w, n0, nvalid, k0, kc, dst);
    // rows past the tiles among them: gather the rows row-major first, [NR][kc]
    auto* rows_tmp = reinterpret_cast<uint16_t*>(scratch<26>(size_t(NR * KC / 2)));
    for (int j = 0; j < nvalid; ++j)
        for_each_row_piece(w, n0 + j, k0, kc, [&](int64_t i, int64_t at, int64_t len) {
            std::memcpy(rows_tmp + j * kc + at, wd + i, size_t(len) * sizeof(uint16_t));
        });
    pack_b(rows_tmp, kc, 0, nvalid, 0, kc, dst);
}

// Activation rows [m0, m0 + mr), cols [k0, k0 + kc) of x [M, K], rounded to bf16 (nearest even),
// as pairs [kp][MR] (zero padded): 16 pairs of each row by one conversion, a 16 x 16 register
// transpose (rows past mr zero), then MR lanes stored per pair.
inline void pack_a(const float* x, int64_t K, int64_t m0, int mr, int64_t k0, int64_t kc, uint32_t* dst) {
    static_assert(MR <= 16, "one register transpose covers a panel's rows");
    const int64_t kp = (kc + 1) / 2;
    for (int64_t p = 0; p < kp; p += 16) {
        const int n = int(std::min<int64_t>(32, kc - 2 * p));  // columns k0 + 2p + [0, n)
        __m512i r[16];
        for (int i = 0; i < 16; ++i) {
            if (i >= mr) {
                r[i] = _mm512_setzero_si512();
                continue;
            }
            const float* xi = x + (m0 + i) * K + k0 + 2 * p;
            const __m512 lo = _mm512_maskz_loadu_ps(simd::tail_mask(std::min(16, n)), xi);
            const __m512 hi = _mm512_maskz_loadu_ps(simd::tail_mask(std::max(0, n - 16)), xi + 16);
            r[i] = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
        }
        simd::transpose16x16_32(r);
        for (int64_t q = 0; q < std::min<int64_t>(16, kp - p); ++q) _mm512_mask_storeu_epi32(dst + (p + q) * MR, simd::tail_mask(MR), r[q]);
    }
}

// Activation panels of the whole call, packed once and shared by the threads: [K/KC][M/MR] panels
// of [KC/2][MR] bf16 pairs, panel (kb, mb) at apack_offset(kb, mb).
inline int64_t apack_offset(int64_t kb, int64_t mb, int64_t mblocks) { return (kb * mblocks + mb) * (KC / 2) * MR; }

inline void gemm(const float* x, int64_t M, const Matrix& w, float* y, const float* bias) {
    const int64_t N = w.rows, K = w.cols;
    const int nt = omp_threads_for(double(M) * double(N) * double(K));
    const int64_t mblocks = (M + MR - 1) / MR, kblocks = (K + KC - 1) / KC;
    auto* apack = reinterpret_cast<uint32_t*>(scratch<6>(size_t(kblocks * mblocks * (KC / 2) * MR)));
    pack_panels(M, K, KC, MR, nt, [&](int64_t kb, int64_t mb) {
        pack_a(x, K, mb * MR, int(std::min<int64_t>(MR, M - mb * MR)), kb * KC, std::min(KC, K - kb * KC), apack + apack_offset(kb, mb, mblocks));
    });
    const auto* wd = static_cast<const uint16_t*>(w.data);
    const int64_t panel_end = w.panel_rows ? N / kPanelRows * kPanelRows : 0;  // rows [0, panel_end) in pair panels
    auto block = [&](int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end) {
        auto* bpanel = reinterpret_cast<uint32_t*>(scratch<5>(size_t(NC * KC / 2)));  // [NC/NR][kc/2][NR] pairs
        const uint32_t* panel[NC / NR];  // the micro-panels [kc/2][NR] of the current block: packed or in place
        gemm_loops(
            K, KC, NC, NR, MC, MR, m_begin, m_end, n_begin, n_end,
            [&](int64_t p, int64_t n0, int nvalid, int64_t k0, int64_t kc) {
                if (n0 < panel_end) {  // n0 a multiple of NR: a whole group of pair panels
                    panel[p] = reinterpret_cast<const uint32_t*>(wd + n0 * K + k0 * kPanelRows);
                    return;
                }
                uint32_t* dst = bpanel + p * ((kc + 1) / 2) * NR;
                panel[p] = dst;
                pack_b_rows(w, n0, nvalid, k0, kc, dst);
            },
            [&](int64_t p, int64_t m0, int mvalid, int64_t n0, int nvalid, int64_t k0, int64_t kc) {
                const int64_t kp = (kc + 1) / 2;
                // Weights in place: the first 16 calls on a micro-panel (the first row block) each fetch
                // 1/16 of the next one (kp * NR pairs), which would otherwise come from memory on demand.
                const int64_t step = (m0 - m_begin) / MR, nc0 = n0 - p * NR;
                int64_t n_next = n0 + NR, k_next = k0;
                if (n_next >= std::min(n_end, nc0 + NC)) n_next = nc0, k_next = k0 + KC;  // the next depth block's first
                const char* next = nullptr;
                if (step < MC / MR && n_next < panel_end && k_next < K && std::min(KC, K - k_next) == kc)  // as deep as this one
                    next = reinterpret_cast<const char*>(wd + n_next * K + k_next * kPanelRows) + step * kp * 8;
                micro_kernel(apack + apack_offset(k0 / KC, m0 / MR, mblocks), panel[p], kp, y + m0 * N + n0, N, mvalid, nvalid,
                             k0 == 0, bias ? bias + n0 : nullptr, next);
            });
    };
    split_gemm(M, N, nt, NC, NR, block, MR);
}

// GEMV (M <= 4): xb holds the activations as bf16, each row zero padded to kpad (multiple of 32).
// Tiled: rows [n0, n1) lie in row tiles (Matrix::tile_rows), n0 and n1 multiples of R.
template <int MM, int R, bool Tiled = false>
inline void gemv_rows(const uint16_t* xb, int64_t kpad, const uint16_t* w, int64_t K, float* y, int64_t N,
                      const float* bias, int64_t n0, int64_t n1) {
    static_assert(!Tiled || kTileRows % R == 0, "an R-row group stays inside one tile");
    // Prefetched into L2 where that is the weight prefetch (Intel); on AMD, NTA lost 2-7% here
    const bool prefetch = simd::weight_prefetch() == simd::WeightPrefetch::L2;
    int64_t n = n0;
    for (; n + R <= n1; n += R) {
        __m512 acc[MM][R];
        for (int m = 0; m < MM; ++m)
            for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
        // row r, columns [k, k + 32): wr + r * rstep + k * kstep (in a tile: chunk after chunk of 8 rows)
        const uint16_t* wr = Tiled ? w + (n / kTileRows) * kTileRows * K + (n % kTileRows) * kTileCols : w + n * K;
        const int64_t rstep = Tiled ? kTileCols : K, kstep = Tiled ? kTileRows : 1;
        int64_t k = 0;
        for (; k + 32 <= K; k += 32) {
            __m512bh xv[MM];
            for (int m = 0; m < MM; ++m) xv[m] = (__m512bh)_mm512_loadu_si512(xb + m * kpad + k);
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) {
                if (prefetch) simd::prefetch_ahead(wr + r * rstep + k * kstep, simd::WeightPrefetch::L2);
                const __m512bh wv = (__m512bh)_mm512_loadu_si512(wr + r * rstep + k * kstep);
                for (int m = 0; m < MM; ++m) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv[m], wv);
            }
        }
        if (k < K) {
            const __mmask32 mk = __mmask32((uint64_t(1) << (K - k)) - 1);
            __m512bh xv[MM];
            for (int m = 0; m < MM; ++m) xv[m] = (__m512bh)_mm512_loadu_si512(xb + m * kpad + k);
            for (int r = 0; r < R; ++r) {
                const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(mk, wr + r * rstep + k * kstep);
                for (int m = 0; m < MM; ++m) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv[m], wv);
            }
        }
        for (int m = 0; m < MM; ++m)
            for (int r = 0; r < R; ++r) y[m * N + n + r] = simd::hsum(acc[m][r]) + (bias ? bias[n + r] : 0.f);
    }
    if (n < n1) gemv_rows<MM, 1, Tiled>(xb, kpad, w, K, y, N, bias, n, n1);
}

template <int MM>
inline void gemv(const float* x, const Matrix& w, float* y, const float* bias) {
    constexpr int R = MM <= 2 ? 8 : 4;
    const int64_t N = w.rows, K = w.cols, kpad = (K + 31) / 32 * 32;
    auto* xb = reinterpret_cast<uint16_t*>(scratch<7>(size_t(MM * kpad / 2 + 16)));
    for (int m = 0; m < MM; ++m) {
        for (int64_t k = 0; k < K; ++k) xb[m * kpad + k] = f32_to_bf16(x[m * K + k]);
        for (int64_t k = K; k < kpad; ++k) xb[m * kpad + k] = 0;
    }
    const auto* wd = static_cast<const uint16_t*>(w.data);
    const int64_t tiled_rows = w.tile_rows ? N / kTileRows * kTileRows : 0;  // rows [0, tiled_rows) in row tiles
    split_gemv(N, R, omp_threads_for(double(MM) * double(N) * double(K)), [&](int64_t n0, int64_t n1) {
        if (n0 < tiled_rows) {
            gemv_rows<MM, R, true>(xb, kpad, wd, K, y, N, bias, n0, std::min(n1, tiled_rows));
            n0 = std::min(n1, tiled_rows);
        }
        gemv_rows<MM, R>(xb, kpad, wd, K, y, N, bias, n0, n1);
    });
}

}  // namespace gemm_bf16
#endif  // DEEPSTACK_HAVE_DPBF16

// out[i] = bf16(x[i]) as vcvtneps2bf16 rounds: to nearest even, NaN kept quiet, and subnormal inputs
// to a zero of their sign (f32_to_bf16 keeps them; the attention's packing flushes them anyway).
inline void round_to_bf16(const float* x, int64_t n, uint16_t* out) {
    int64_t i = 0;
#if defined(DEEPSTACK_HAVE_DPBF16)
    for (; i + 16 <= n; i += 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + i)));
#endif
    for (; i < n; ++i) out[i] = f32_to_bf16(std::fabs(x[i]) < FLT_MIN ? std::copysign(0.f, x[i]) : x[i]);
}

}  // namespace detail
}  // namespace deepstack

#include "kernels_amx.hpp"

namespace deepstack {
namespace detail {

// Fast mode for BF16 weights: y = bf16(x) * W^T (+ bias), fp32 accumulation. Other weight dtypes
// run the exact mode. Matches matmul_bf16_ref to fp32 summation-order rounding.
inline void matmul_bf16(const float* x, int64_t M, const Matrix& W, float* y, const float* bias = nullptr) {
    if (W.dtype != DType::BF16 || M <= 0 || W.rows <= 0 || W.cols <= 0) {
        matmul(x, M, W, y, bias);
        return;
    }
#if defined(DEEPSTACK_HAVE_DPBF16)
    switch (W.panel_rows ? 0 : M) {  // pair panels: always the GEMM, which reads them in place
        case 1: gemm_bf16::gemv<1>(x, W, y, bias); return;
        case 2: gemm_bf16::gemv<2>(x, W, y, bias); return;
        case 3: gemm_bf16::gemv<3>(x, W, y, bias); return;
        case 4: gemm_bf16::gemv<4>(x, W, y, bias); return;
        default:
#if defined(DEEPSTACK_HAVE_AMX)
            if (gemm_amx::amx_usable()) return gemm_amx::gemm(x, M, W, y, bias);
#endif
            gemm_bf16::gemm(x, M, W, y, bias);
            return;
    }
#else
    const int64_t K = W.cols;
    float* xr = scratch<7>(size_t(M * K));
    for (int64_t i = 0; i < M * K; ++i) xr[i] = bf16_to_f32(f32_to_bf16(x[i]));
    matmul(xr, M, W, y, bias);
#endif
}

#if defined(DEEPSTACK_HAVE_DPBF16)
namespace attn {

// Keys per block (one online-softmax update per query row): 256, four passes of the 64-key score
// loop; the per-row max, rescale and sums cost more against the halved dot products than in fp32
// (784 / 3136 patches: 4-5% faster than 64-key blocks).
constexpr int BKB = 256;

// o_u [C*16 floats at t0] += sum_jp pp_u[jp] . vt_jp for the QN rows u (pairs; pp, o row strides
// BKB/2 and dv, vt rows of dv pairs)
template <int C>
inline void pv_chunk_bf16(const uint32_t* pp, int jpmax, const uint32_t* vt, int dv, int t0, float* o) {
    __m512 a[QN][C];
    for (int u = 0; u < QN; ++u)
        for (int c = 0; c < C; ++c) a[u][c] = _mm512_loadu_ps(o + u * dv + t0 + c * 16);
    for (int jp = 0; jp < jpmax; ++jp) {
        __m512bh vv[C];
        for (int c = 0; c < C; ++c) vv[c] = (__m512bh)_mm512_loadu_si512(vt + jp * dv + t0 + c * 16);
        for (int u = 0; u < QN; ++u) {
            const __m512bh pv = (__m512bh)_mm512_set1_epi32(int(pp[u * (BKB / 2) + jp]));
            for (int c = 0; c < C; ++c) a[u][c] = _mm512_dpbf16_ps(a[u][c], pv, vv[c]);
        }
    }
    for (int u = 0; u < QN; ++u)
        for (int c = 0; c < C; ++c) _mm512_storeu_ps(o + u * dv + t0 + c * 16, a[u][c]);
}

// One task of attention_bf16: query rows [i0, i0 + bq) of head h against every key it sees (causal:
// query i at position q_offset + i sees keys 0..q_offset + i). kt: this kv head's keys as
// [nkb][dpp][BKB] pairs (dims 2t, 2t+1 of key j), vt: its values as [nkb][BKB/2][dv] pairs (keys 2j,
// 2j+1 of dim t); dp = d/2 rounded up, dpp = dp rounded up to 16, dv = d rounded up to 16.
inline void attention_task_bf16(const float* q, int64_t qstride, int64_t Tk, int Hq, int d, float scale, bool causal, int64_t q_offset,
                                int64_t i0, int bq, int h, const uint32_t* kt, const uint32_t* vt, float* out, float* work, bool amx) {
    const int dp = (d + 1) / 2, dpp = (dp + 15) / 16 * 16, dv = (d + 15) / 16 * 16, nvo = dv / 16;
    uint32_t* qp = reinterpret_cast<uint32_t*>(work);  // [BQP][dpp] scaled query pairs (rows >= bq, pairs >= dp zero)
    float* o = work + BQP * dpp;                         // [BQP][dv] unnormalised outputs
    float* sc = o + BQP * dv;                            // [BQP][BKB] scores, then probabilities
    uint32_t* pp = reinterpret_cast<uint32_t*>(sc + BQP * BKB);  // [BQP][BKB/2] probability pairs
    float* mrow = reinterpret_cast<float*>(pp + BQP * BKB / 2);  // [BQ] running max
    float* lrow = mrow + BQ;                                    // [BQ] running sum
    std::fill(qp + bq * dpp, qp + BQP * dpp, 0u);
    const __m512 sv = _mm512_set1_ps(scale);
    for (int i = 0; i < bq; ++i) {
        const float* qi = q + (i0 + i) * qstride + h * int64_t(d);
        for (int t = 0; t < 2 * dpp; t += 32) {  // 32 values -> 16 pairs (zero past d)
            const __m512 lo = _mm512_mul_ps(_mm512_maskz_loadu_ps(simd::tail_mask(std::clamp(d - t, 0, 16)), qi + t), sv);
            const __m512 hi = _mm512_mul_ps(_mm512_maskz_loadu_ps(simd::tail_mask(std::clamp(d - t - 16, 0, 16)), qi + t + 16), sv);
            _mm512_storeu_si512(qp + i * dpp + t / 2, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
        mrow[i] = -INFINITY;
        lrow[i] = 0.f;
    }
    std::fill(o, o + BQP * dv, 0.f);
    const int64_t n_keys = causal ? std::min(Tk, q_offset + i0 + bq) : Tk;  // keys any row of the task sees
    for (int64_t kb = 0; kb * BKB < n_keys; ++kb) {
        const int bk = int(std::min<int64_t>(BKB, n_keys - kb * BKB));
        const uint32_t* ktb = kt + kb * dpp * BKB;
#if defined(DEEPSTACK_HAVE_AMX)
        if (amx) {  // scores of 32 (or 16) queries x 32 (or 16) keys per tile product
            const int kt16 = (bk + 15) / 16;
            for (int c = 0; c < kt16; c += 2)
                gemm_amx::tile_product(bq > 16 ? 2 : 1, std::min(2, kt16 - c), qp, dpp, ktb + c * 16, BKB, dpp, nullptr, 0, sc + c * 16, BKB);
        }
#endif
        for (int i = 0; i < bq && !amx; i += QN)
            for (int c0 = 0; c0 < bk; c0 += NVK * 16) {  // 64 keys per pass
                __m512 a[QN][NVK];
                for (int u = 0; u < QN; ++u)
                    for (int c = 0; c < NVK; ++c) a[u][c] = _mm512_setzero_ps();
                for (int t = 0; t < dp; ++t) {
                    __m512bh kv[NVK];
                    for (int c = 0; c < NVK; ++c) kv[c] = (__m512bh)_mm512_loadu_si512(ktb + t * BKB + c0 + c * 16);
                    for (int u = 0; u < QN; ++u) {
                        const __m512bh qv = (__m512bh)_mm512_set1_epi32(int(qp[(i + u) * dpp + t]));
                        for (int c = 0; c < NVK; ++c) a[u][c] = _mm512_dpbf16_ps(a[u][c], qv, kv[c]);
                    }
                }
                for (int u = 0; u < QN; ++u)
                    for (int c = 0; c < NVK; ++c) _mm512_storeu_ps(sc + (i + u) * BKB + c0 + c * 16, a[u][c]);
            }
        // online softmax (fp32) over the lim keys row i sees, then the probabilities as bf16 pairs (zero
        // past lim)
        for (int i = 0; i < bq; ++i) {
            float* s = sc + i * BKB;
            const int lim = causal ? int(std::clamp<int64_t>(q_offset + i0 + i + 1 - kb * BKB, 0, bk)) : bk;
            if (lim == 0) {
                std::fill(pp + i * (BKB / 2), pp + (i + 1) * (BKB / 2), 0u);
                continue;
            }
            online_softmax_step(s, lim, BKB, mrow[i], lrow[i], o + i * dv, dv);
            // 32 floats -> 32 bf16 in order, that is 16 pairs (s[2j], s[2j+1]) as 32-bit lanes
            for (int j = 0; j < BKB; j += 32)
                _mm512_storeu_si512(pp + i * (BKB / 2) + j / 2,
                                    (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + j + 16), _mm512_loadu_ps(s + j)));
        }
        std::fill(pp + bq * (BKB / 2), pp + BQP * (BKB / 2), 0u);
        // O += P V, QN queries at a time
        const uint32_t* vtb = vt + kb * (BKB / 2) * dv;
        const int jpmax = (bk + 1) / 2;
#if defined(DEEPSTACK_HAVE_AMX)
        if (amx) {  // 32 (or 16) output rows x 32 (or 16) dims per tile product, over the block's key pairs in 16s
            const int64_t kp = (jpmax + 15) / 16 * 16;  // pairs past jpmax: zero probabilities, zero values
            for (int c = 0; c < nvo; c += 2)
                gemm_amx::tile_product(bq > 16 ? 2 : 1, std::min(2, nvo - c), pp, BKB / 2, vtb + c * 16, dv, kp, o + c * 16, dv, o + c * 16, dv);
        }
#endif
        for (int i = 0; i < bq && !amx; i += QN) {
            int c0 = 0;
            for (; c0 + 4 <= nvo; c0 += 4) pv_chunk_bf16<4>(pp + i * (BKB / 2), jpmax, vtb, dv, c0 * 16, o + i * dv);
            for (; c0 < nvo; ++c0) pv_chunk_bf16<1>(pp + i * (BKB / 2), jpmax, vtb, dv, c0 * 16, o + i * dv);
        }
    }
    for (int i = 0; i < bq; ++i) {
        float* dst = out + ((i0 + i) * Hq + h) * int64_t(d);
        const float inv = lrow[i] > 0.f ? 1.f / lrow[i] : 0.f;
        for (int t = 0; t < d; ++t) dst[t] = o[i * dv + t] * inv;
    }
}

}  // namespace attn

// Fast-mode attention: scores and P*V with vdpbf16ps on bf16 queries (scaled), keys, values and
// probabilities, fp32 accumulation and an fp32 online softmax; otherwise as attention(): q [Tq, Hq,
// d], k/v [Tk, Hkv, d], out [Tq, Hq, d], row strides ldq / ldkv (0: packed), causal or not, tiled,
// no Tq x Tk matrix. Keys and values are packed once per call as bf16 pairs per (kv head, key block).
// k / v hold KV::T values: fp32 (simd::F32Src) or a fast-mode bf16 KV cache (BF16Src), read as fp32
// and rounded to bf16 (exact for bf16).
template <typename KV>
inline void attention_bf16(const float* q, int64_t Tq, const typename KV::T* k, const typename KV::T* v, int64_t Tk, int Hq, int Hkv, int d, float scale,
                           bool causal, int64_t q_offset, float* out, int64_t ldq = 0, int64_t ldkv = 0, bool use_amx = true) {
    if (Tq <= 0 || Hq <= 0 || d <= 0) return;
    if (Hkv <= 0 || Hq % Hkv != 0) throw Error("attention: Hq must be a multiple of Hkv");
    using namespace attn;
    const int G = Hq / Hkv, dp = (d + 1) / 2, dv = (d + 15) / 16 * 16;
    const int64_t nkb = (Tk + BKB - 1) / BKB, kvstride = ldkv ? ldkv : int64_t(Hkv) * d, qstride = ldq ? ldq : int64_t(Hq) * d;
    const int nt = omp_threads_for(2.0 * double(Tq) * double(Tk) * double(Hq) * double(d));
    // keys as [Hkv][nkb][dpp][BKB] pairs (dpp = dp rounded up to 16; rows past dp and keys past Tk
    // zero), values as [Hkv][nkb][BKB/2][dv] pairs (keys past Tk and dims past d zero)
    const int dpp = (dp + 15) / 16 * 16;
    auto* kt = reinterpret_cast<uint32_t*>(scratch<4>(size_t(Hkv * nkb * dpp * BKB)));
    auto* vt = reinterpret_cast<uint32_t*>(scratch<27>(size_t(Hkv * nkb * (BKB / 2) * dv)));
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t blk = 0; blk < Hkv * nkb; ++blk) {
        const int64_t hk = blk / nkb, j0 = (blk % nkb) * BKB;
        const int bk = int(std::min<int64_t>(BKB, Tk - j0));
        const typename KV::T* kb = k + j0 * kvstride + hk * d;  // key jj of the block at kb + jj * kvstride
        const typename KV::T* vb = v + j0 * kvstride + hk * d;
        // each key row as pairs, [BKB][dpp], then 16 x 16 register transposes into [dpp][BKB]
        auto* rows = reinterpret_cast<uint32_t*>(scratch<28>(size_t(BKB * dpp)));
        for (int jj = 0; jj < BKB; ++jj)
            for (int t = 0; t < 2 * dpp; t += 32) {
                const __m512 lo = KV::load_n(kb + jj * kvstride + t, jj < bk ? std::max(0, std::min(16, d - t)) : 0);
                const __m512 hi = KV::load_n(kb + jj * kvstride + t + 16, jj < bk ? std::max(0, std::min(16, d - t - 16)) : 0);
                _mm512_storeu_si512(rows + jj * dpp + t / 2, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
            }
        uint32_t* ktb = kt + blk * dpp * BKB;
        for (int jj = 0; jj < BKB; jj += 16)
            for (int t = 0; t < dpp; t += 16) simd::transpose16_rows(rows + jj * dpp + t, dpp * 4, 16, ktb + t * BKB + jj, BKB * 4);
        // value pairs: keys 2jp (low half) and 2jp + 1 of 16 dims per store
        uint32_t* vtb = vt + blk * (BKB / 2) * dv;
        for (int jp = 0; jp < BKB / 2; ++jp)
            for (int t = 0; t < dv; t += 16) {
                const int n = std::min(16, d - t);
                const __m512 a = KV::load_n(vb + 2 * jp * kvstride + t, 2 * jp < bk ? n : 0);
                const __m512 b = KV::load_n(vb + (2 * jp + 1) * kvstride + t, 2 * jp + 1 < bk ? n : 0);
                const __m512i pa = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(a));
                const __m512i pb = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(b));
                _mm512_storeu_si512(vtb + jp * dv + t, _mm512_or_si512(pa, _mm512_slli_epi32(pb, 16)));
            }
    }
    const int64_t nqb = (Tq + BQ - 1) / BQ, tasks = nqb * Hq;
    const size_t work_floats = size_t(BQP * (dpp + dv + BKB + BKB / 2) + 2 * BQ);
#if defined(DEEPSTACK_HAVE_AMX)
    const bool amx = use_amx && gemm_amx::amx_usable();
#else
    const bool amx = false;
    (void)use_amx;
#endif
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1 && tasks > 1)
    for (int64_t task = 0; task < tasks; ++task) {
        // query blocks innermost: the threads work on one head at a time and share its keys and values
        const int h = int(task / nqb);
        const int64_t qb = task % nqb, hk = h / G;
#if defined(DEEPSTACK_HAVE_AMX)
        if (amx) gemm_amx::configure_tiles();
#endif
        attention_task_bf16(q, qstride, Tk, Hq, d, scale, causal, q_offset, qb * BQ, int(std::min<int64_t>(BQ, Tq - qb * BQ)), h,
                            kt + hk * nkb * dpp * BKB, vt + hk * nkb * (BKB / 2) * dv, out, scratch<3>(work_floats), amx);
#if defined(DEEPSTACK_HAVE_AMX)
        if (amx) _tile_release();
#endif
    }
}
#endif  // DEEPSTACK_HAVE_DPBF16

// Attention in a compute mode: Fast with at least 8 queries (the vision tower, text prefill) ->
// attention_bf16 where the CPU has vdpbf16ps; everything else (decode, short chunks: a few queries
// would not repay packing the keys and values) -> attention (fp32). ldq, ldkv: row strides (0: packed).
inline void attention(const float* q, int64_t Tq, const float* k, const float* v, int64_t Tk, int Hq, int Hkv, int d, float scale,
                      bool causal, int64_t q_offset, float* out, Compute mode, int64_t ldq = 0, int64_t ldkv = 0) {
#if defined(DEEPSTACK_HAVE_DPBF16)
    if (mode == Compute::Fast && Tq >= 8) return attention_bf16<simd::F32Src>(q, Tq, k, v, Tk, Hq, Hkv, d, scale, causal, q_offset, out, ldq, ldkv);
#endif
    (void)mode;
    attention(q, Tq, k, v, Tk, Hq, Hkv, d, scale, causal, q_offset, out, ldq, ldkv);
}

// Fast mode keeps the KV cache in bf16 where the CPU has vdpbf16ps: its attention packs keys and
// values as bf16 anyway, and decode, which streams the whole cache per token, reads half the bytes.
inline bool kv_cache_bf16(Compute mode) {
#if defined(DEEPSTACK_HAVE_DPBF16)
    return mode == Compute::Fast;
#else
    (void)mode;
    return false;
#endif
}


// Causal attention of Tq new queries over a bf16 KV cache (k / v [Tk, Hkv * d], the queries' own
// rows last): decode reads the cache directly, 8 or more queries pack it (attention_bf16), and a
// few queries run the fp32 kernel on an fp32 copy of the rows.
inline void attention_cached_bf16(const float* q, int64_t Tq, const uint16_t* k, const uint16_t* v, int64_t Tk, int Hq, int Hkv, int d,
                                  float scale, float* out) {
    if (Tq <= 0 || Hq <= 0 || d <= 0) return;
    if (Hkv <= 0 || Hq % Hkv != 0) throw Error("attention: Hq must be a multiple of Hkv");
    const int64_t row = int64_t(Hkv) * d, q_offset = Tk - Tq;
    const int nt = omp_threads_for(2.0 * double(Tq) * double(Tk) * double(Hq) * double(d));
    if (Tq == 1) return attn::attention_one_query<simd::BF16Src>(q, k, v, row, Tk, Hq, Hkv, d, scale, out, nt);
#if defined(DEEPSTACK_HAVE_DPBF16)
    if (Tq >= 8) return attention_bf16<simd::BF16Src>(q, Tq, k, v, Tk, Hq, Hkv, d, scale, true, q_offset, out);
#endif
    float* kf = scratch<29>(size_t(Tk * row));
    float* vf = scratch<30>(size_t(Tk * row));
    for (int64_t i = 0; i < Tk * row; ++i) kf[i] = bf16_to_f32(k[i]), vf[i] = bf16_to_f32(v[i]);
    attention(q, Tq, kf, vf, Tk, Hq, Hkv, d, scale, true, q_offset, out);
}

// Mode-selecting overload (the forward pass may carry a Compute setting).
// Fast: BF16 weights -> matmul_bf16; Q8 / Q4 -> matmul_quant_fast, or for M > 4 where AMX is usable
// the AMX GEMM on bf16 activations and the weights dequantized to bf16 per micro-panel (on the
// Intel Xeon measured, the VNNI int8 GEMM ran at a third of its peak and AMX bf16 twice as fast);
// F32 / F16 -> exact.
inline void matmul(const float* x, int64_t M, const Matrix& W, float* y, const float* bias, Compute mode) {
    if (mode == Compute::Fast && (W.dtype == DType::Q8 || W.dtype == DType::Q4)) {
#if defined(DEEPSTACK_HAVE_AMX)
        if (M > 4 && W.rows > 0 && gemm_amx::amx_usable()) return gemm_amx::gemm(x, M, W, y, bias);
#endif
        matmul_quant_fast(x, M, W, y, bias);
    } else if (mode == Compute::Fast) matmul_bf16(x, M, W, y, bias);
    else matmul(x, M, W, y, bias);
}

// y_i = x W_i^T for the `count` matrices W[i] that share the input x [M, K] (a decoder layer's q / k
// / v, gate / up). Fast mode, M <= 4, Q8 / Q4 weights of one format with AVX-512 VNNI: x is
// quantized once and one parallel region covers all their rows (a region's start and its threads'
// uneven finish cost microseconds each, ~200 regions per decoded token); otherwise one matmul each.
inline void matmul_shared_input(const float* x, int64_t M, const Matrix* const* W, float* const* y, int count, Compute mode) {
#if defined(DEEPSTACK_HAVE_VNNI)
    bool fused = mode == Compute::Fast && M >= 1 && M <= 4 && count <= 4;
    for (int i = 0; fused && i < count; ++i) fused = W[i]->dtype == W[0]->dtype && (W[i]->dtype == DType::Q8 || W[i]->dtype == DType::Q4) &&
                                                    W[i]->cols == W[0]->cols && W[i]->rows > 0;
    if (fused) {
        gemm_q::GemvOut outs[4];
        for (int i = 0; i < count; ++i) outs[i] = {static_cast<const QuantWeights*>(W[i]->data), y[i], nullptr};
        return gemm_q::gemv_fast(x, M, outs, count);
    }
#endif
    for (int i = 0; i < count; ++i) matmul(x, M, *W[i], y[i], nullptr, mode);
}

}  // namespace detail
}  // namespace deepstack

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
