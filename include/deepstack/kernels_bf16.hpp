// deepstack/kernels_bf16.hpp - the "fast" compute mode for BF16 weights: activations are rounded to
// bf16 (round to nearest even) and products of bf16 pairs are accumulated in fp32 with AVX-512 BF16
// VDPBF16PS (32 multiply-adds per instruction). Reference semantics (matmul_bf16_ref): round x to
// bf16, then exact fp32 dot products with the bf16 weights. Without AVX-512 BF16 the same semantics
// are computed by rounding x and running the exact-mode kernels.
//
// A level body: kernels_levels.hpp compiles it once per SIMD level, inside that level's namespace and
// target region; included on its own it brings in the whole kernel layer.
#ifndef DEEPSTACK_KERNEL_LEVEL
#include "kernels.hpp"
#else

namespace deepstack::detail {
namespace DEEPSTACK_KERNEL_LEVEL {

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
    auto* rows_tmp = reinterpret_cast<uint16_t*>(thread_workspace<GemmWorkspace>().b_rows.get(size_t(NR * KC / 2)));
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
    auto* apack = reinterpret_cast<uint32_t*>(thread_workspace<GemmWorkspace>().a_panels.get(size_t(kblocks * mblocks * (KC / 2) * MR)));
    pack_panels(M, K, KC, MR, nt, [&](int64_t kb, int64_t mb) {
        pack_a(x, K, mb * MR, int(std::min<int64_t>(MR, M - mb * MR)), kb * KC, std::min(KC, K - kb * KC), apack + apack_offset(kb, mb, mblocks));
    });
    const auto* wd = static_cast<const uint16_t*>(w.data);
    const int64_t panel_end = w.panel_rows ? N / kPanelRows * kPanelRows : 0;  // rows [0, panel_end) in pair panels
    auto block = [&](int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end) {
        auto* bpanel = reinterpret_cast<uint32_t*>(thread_workspace<GemmWorkspace>().b_panel.get(size_t(NC * KC / 2)));  // [NC/NR][kc/2][NR] pairs
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

// GEMV (M <= kGemvRows, kGemvChunk rows at a time): xb holds the activations as bf16, each row zero padded to kpad (multiple of 32).
// Tiled: rows [n0, n1) lie in row tiles (Matrix::tile_rows), n0 and n1 multiples of R.
template <int MM, int R, bool Tiled = false>
inline void gemv_rows(const uint16_t* xb, int64_t kpad, const uint16_t* w, int64_t K, float* y, int64_t N,
                      const float* bias, int64_t n0, int64_t n1) {
    static_assert(!Tiled || kTileRows % R == 0, "an R-row group stays inside one tile");
    // Prefetched into L2 where that is the weight prefetch (Intel); without it otherwise (one load
    // per weight line: the hardware prefetchers keep up)
    const bool prefetch = weight_prefetch() == WeightPrefetch::L2;
    int64_t n = n0;
    for (; n + R <= n1; n += R) {
        __m512 acc[MM][R];
DEEPSTACK_UNROLL
        for (int m = 0; m < MM; ++m)
DEEPSTACK_UNROLL
            for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
        // row r, columns [k, k + 32): wr + r * rstep + k * kstep (in a tile: chunk after chunk of 8 rows)
        const uint16_t* wr = Tiled ? w + (n / kTileRows) * kTileRows * K + (n % kTileRows) * kTileCols : w + n * K;
        const int64_t rstep = Tiled ? kTileCols : K, kstep = Tiled ? kTileRows : 1;
        int64_t k = 0;
        for (; k + 32 <= K; k += 32) {
            __m512bh xv[MM];
DEEPSTACK_UNROLL
            for (int m = 0; m < MM; ++m) xv[m] = (__m512bh)_mm512_loadu_si512(xb + m * kpad + k);
DEEPSTACK_UNROLL
            for (int r = 0; r < R; ++r) {
                if (prefetch) simd::prefetch_ahead(wr + r * rstep + k * kstep, WeightPrefetch::L2);
                const __m512bh wv = (__m512bh)_mm512_loadu_si512(wr + r * rstep + k * kstep);
DEEPSTACK_UNROLL
                for (int m = 0; m < MM; ++m) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv[m], wv);
            }
        }
        if (k < K) {
            const __mmask32 mk = __mmask32((uint64_t(1) << (K - k)) - 1);
            __m512bh xv[MM];
DEEPSTACK_UNROLL
            for (int m = 0; m < MM; ++m) xv[m] = (__m512bh)_mm512_loadu_si512(xb + m * kpad + k);
DEEPSTACK_UNROLL
            for (int r = 0; r < R; ++r) {
                const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(mk, wr + r * rstep + k * kstep);
DEEPSTACK_UNROLL
                for (int m = 0; m < MM; ++m) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv[m], wv);
            }
        }
DEEPSTACK_UNROLL
        for (int m = 0; m < MM; ++m)
DEEPSTACK_UNROLL
            for (int r = 0; r < R; ++r) y[m * N + n + r] = simd::hsum(acc[m][r]) + (bias ? bias[n + r] : 0.f);
    }
    if (n < n1) gemv_rows<MM, 1, Tiled>(xb, kpad, w, K, y, N, bias, n, n1);
}

// M <= kGemvRows rows of x.
inline void gemv(const float* x, int64_t M, const Matrix& w, float* y, const float* bias) {
    const int64_t N = w.rows, K = w.cols, kpad = (K + 31) / 32 * 32;
    auto* xb = reinterpret_cast<uint16_t*>(thread_workspace<GemmWorkspace>().x_rounded.get(size_t(M * kpad / 2 + 16)));
    for (int64_t m = 0; m < M; ++m) {
        for (int64_t k = 0; k < K; ++k) xb[m * kpad + k] = f32_to_bf16(x[m * K + k]);
        for (int64_t k = K; k < kpad; ++k) xb[m * kpad + k] = 0;
    }
    const auto* wd = static_cast<const uint16_t*>(w.data);
    const int64_t tiled_rows = w.tile_rows ? N / kTileRows * kTileRows : 0;  // rows [0, tiled_rows) in row tiles
    // rows [n0, n1) for MM rows of xb at xm into ym; R weight rows per step (any R: each sum's order is the same)
    auto rows = [&](auto mm_rows, const uint16_t* xm, float* ym, int64_t n0, int64_t n1) {
        constexpr int MM = decltype(mm_rows)::value, R = MM <= 2 ? 8 : 4;
        if (n0 < tiled_rows) {
            gemv_rows<MM, R, true>(xm, kpad, wd, K, ym, N, bias, n0, std::min(n1, tiled_rows));
            n0 = std::min(n1, tiled_rows);
        }
        gemv_rows<MM, R>(xm, kpad, wd, K, ym, N, bias, n0, n1);
    };
    split_gemv_chunks(M, N, 8, omp_threads_for(double(M) * double(N) * double(K)), [&](int64_t m0, int64_t mm, int64_t n0, int64_t n1) {
        const uint16_t* xm = xb + m0 * kpad;
        float* ym = y + m0 * N;
        switch (mm) {
            case 1: return rows(std::integral_constant<int, 1>(), xm, ym, n0, n1);
            case 2: return rows(std::integral_constant<int, 2>(), xm, ym, n0, n1);
            case 3: return rows(std::integral_constant<int, 3>(), xm, ym, n0, n1);
            default: return rows(std::integral_constant<int, 4>(), xm, ym, n0, n1);
        }
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

}  // namespace DEEPSTACK_KERNEL_LEVEL
}  // namespace deepstack::detail

#endif  // DEEPSTACK_KERNEL_LEVEL
