// deepstack/kernels_gemm.hpp - y[M, N] = x[M, K] * W^T (+ bias) against weights in their stored
// dtype (F32 / BF16 / F16, and the load-time quantized Q8 / Q4), fp32 activations, fp32 accumulation.
//   M <= 8 : GEMV path (kGemvRows), bandwidth bound: each weight row is streamed once, converted in
//            registers, dotted with the activation rows (4 at a time); OpenMP over output rows.
//   M >  8 : packed, register-blocked GEMM: the activations are packed once per call into panels
//            [K/KC][M/MR][KC][MR] shared by the threads; per thread, blocks of KC x NC weights are
//            converted to fp32 into a private panel [NC/NR][KC][NR] (never the whole matrix), and an
//            MR x NR micro-kernel (broadcast x, FMA with NR/W weight vectors) accumulates in
//            registers. OpenMP over output columns (N).
//
// A level body: kernels_levels.hpp compiles it once per SIMD level, inside that level's namespace and
// target region; included on its own it brings in the whole kernel layer.
#ifndef DEEPSTACK_KERNEL_LEVEL
#include "kernels.hpp"
#else

namespace deepstack::detail {
namespace DEEPSTACK_KERNEL_LEVEL {

// Runs block(m0, m1, n0, n1) over an M x N product on nt threads: column blocks of nc handed out
// dynamically when there are at least two per thread (tolerates a core shared with other work),
// otherwise a static grid of row ranges (aligned to mr) x column ranges (aligned to nr).
template <typename Block>
inline void split_gemm(int64_t M, int64_t N, int nt, int64_t nc, int64_t nr, const Block& block, int64_t mr = 1) {
    const int64_t ncblocks = (N + nc - 1) / nc;
    if (nt > 1 && ncblocks >= 2 * nt) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
        for (int64_t nb = 0; nb < ncblocks; ++nb) block(int64_t(0), M, nb * nc, std::min(N, (nb + 1) * nc));
        return;
    }
    const int64_t nblocks = (N + nr - 1) / nr;
    const int tn = int(std::max<int64_t>(1, std::min<int64_t>(nt, nblocks)));
    const int tm = std::max(1, nt / tn);
    auto run = [&](int t) {
        const int ti = t / tn, tj = t % tn;
        const int64_t nb0 = nblocks * tj / tn, nb1 = nblocks * (tj + 1) / tn;
        auto row = [&](int i) { return std::min(M, (M * i / tm + mr - 1) / mr * mr); };
        block(row(ti), row(ti + 1), std::min(N, nb0 * nr), std::min(N, nb1 * nr));
    };
    if (tn * tm == 1) {
        run(0);
        return;
    }
#pragma omp parallel for schedule(static, 1) num_threads(tn * tm)
    for (int t = 0; t < tn * tm; ++t) run(t);
}

// Runs rows(n0, n1) over the N output rows of a GEMV (r rows per kernel step) on nt threads, in
// guided chunks of whole r-row units: each claim takes the remaining rows / nt (at least 1/64 of
// the matrix), so a thread starts with a long run (half the rows on two threads) and the runs
// shrink towards the end. Long runs keep each thread's weight stream sequential - every new run
// restarts the hardware prefetchers - while the short ones let a core busy with other work fall behind by a
// short run instead of half the matrix.
template <typename Rows>
inline void split_gemv(int64_t N, int64_t r, int nt, const Rows& rows) {
    if (nt == 1 || N < 2 * r) return rows(int64_t(0), N);
    const int64_t units = (N + r - 1) / r, min_units = std::max<int64_t>(1, units / 64);
    std::atomic<int64_t> next{0};
#pragma omp parallel num_threads(nt)
    for (;;) {
        int64_t u0 = next.load(std::memory_order_relaxed), take = 0;
        do {
            if (u0 >= units) break;
            take = std::min(units - u0, std::max(min_units, (units - u0) / nt));
        } while (!next.compare_exchange_weak(u0, u0 + take, std::memory_order_relaxed));
        if (u0 >= units) break;
        rows(u0 * r, std::min(N, (u0 + take) * r));
    }
}

// split_gemv for a GEMV of M <= kGemvRows activation rows: rows(m0, mm, n0, n1) computes rows
// [m0, m0 + mm) (mm <= kGemvChunk) of outputs [n0, n1). Over kGemvChunk rows, each run of 16 weight
// rows (a multiple of every kernel's rows per step, so the kernels' alignment holds) serves the
// chunks one after the other while it is in cache: the weights come from memory once.
template <typename Rows>
inline void split_gemv_chunks(int64_t M, int64_t N, int64_t r, int nt, const Rows& rows) {
    if (M <= kGemvChunk) return split_gemv(N, r, nt, [&](int64_t n0, int64_t n1) { rows(int64_t(0), M, n0, n1); });
    constexpr int64_t run = 16;
    split_gemv(N, run, nt, [&](int64_t n0, int64_t n1) {
        for (int64_t a = n0; a < n1; a += run)
            for (int64_t m0 = 0; m0 < M; m0 += kGemvChunk) rows(m0, std::min<int64_t>(kGemvChunk, M - m0), a, std::min(n1, a + run));
    });
}

// Calls pack(kb, mb) for every (depth block kb of kc, row panel mb of mr) of an M x K activation
// matrix, on nt threads: the packed GEMMs pack their activations once per call this way.
template <typename Pack>
inline void pack_panels(int64_t M, int64_t K, int64_t kc, int64_t mr, int nt, const Pack& pack) {
    const int64_t mblocks = (M + mr - 1) / mr, kblocks = (K + kc - 1) / kc;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t i = 0; i < kblocks * mblocks; ++i) pack(i / mblocks, i % mblocks);
}

// The loop nest of one thread's share of a packed GEMM (f32 here, bf16 and int8 in their files),
// output rows [m_begin, m_end) (m_begin a multiple of mr) x columns [n_begin, n_end): per block of
// nc weight columns and kc depth (K and kc in the GEMM's depth unit) the weight panels are packed,
// pack_panel(p, n0, nvalid, k0, kcur), then the micro-kernel runs on every mr-row panel of the
// rows, mc rows at a time so their panels stay in L2 with the weights: kernel(p, m0, mvalid, n0,
// nvalid, k0, kcur).
template <typename PackPanel, typename Kernel>
inline void gemm_loops(int64_t K, int64_t kc, int64_t nc, int64_t nr, int64_t mc, int64_t mr, int64_t m_begin, int64_t m_end,
                       int64_t n_begin, int64_t n_end, const PackPanel& pack_panel, const Kernel& kernel) {
    if (m_begin >= m_end || n_begin >= n_end) return;
    for (int64_t nc0 = n_begin; nc0 < n_end; nc0 += nc) {
        const int64_t ncur = std::min(nc, n_end - nc0), npanels = (ncur + nr - 1) / nr;
        for (int64_t k0 = 0; k0 < K; k0 += kc) {
            const int64_t kcur = std::min(kc, K - k0);
            for (int64_t p = 0; p < npanels; ++p) pack_panel(p, nc0 + p * nr, int(std::min(nr, ncur - p * nr)), k0, kcur);
            for (int64_t mc0 = m_begin; mc0 < m_end; mc0 += mc)
                for (int64_t p = 0; p < npanels; ++p)
                    for (int64_t m0 = mc0; m0 < std::min(m_end, mc0 + mc); m0 += mr)
                        kernel(p, m0, int(std::min(mr, m_end - m0)), nc0 + p * nr, int(std::min(nr, ncur - p * nr)), k0, kcur);
        }
    }
}

template <class Src>
inline void convert_segment(const typename Src::T* p, int64_t kc, float* out) {
    using namespace simd;
    int64_t k = 0;
    for (; k + W <= kc; k += W) store(out + k, Src::load(p + k));
    if (k < kc) store_n(out + k, Src::load_n(p + k, int(kc - k)), int(kc - k));
}

// One group of 32 quantized weights (row n, group g) as 32 / W vectors of q (not yet scaled).
inline void load_quant_group(const QuantWeights& qw, int64_t n, int64_t g, simd::vf* out) {
    alignas(64) int8_t bytes[kQuantGroup];
    group_bytes(qw, n, g, bytes);
    if (qw.type == DType::Q8) {
        for (int i = 0; i < kQuantGroup; ++i) bytes[i] = int8_t(bytes[i] ^ 0x80);  // q + 128 -> q
        simd::load_q8_group(bytes, out);
    } else {
        simd::load_q4_group(bytes, out);
    }
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
        const vf s = set1(qw.scale_at(n, g));
        const int64_t gb = g * kQuantGroup, lo = std::max(k0, gb), hi = std::min(k1, gb + kQuantGroup);
        if (lo == gb && hi == gb + kQuantGroup) {
            for (int v = 0; v < GV; ++v) store(out + (gb - k0) + v * W, mul(q[v], s));
        } else {
            for (int v = 0; v < GV; ++v) store(tmp + v * W, mul(q[v], s));
            for (int64_t k = lo; k < hi; ++k) out[k - k0] = tmp[k - gb];
        }
    }
}

// Weight row n, columns [k0, k0 + kc) of any dtype, converted to fp32 into out.
inline void weight_segment_f32(const Matrix& w, int64_t n, int64_t k0, int64_t kc, float* out) {
    const int64_t off = n * w.cols + k0;
    switch (w.dtype) {
        case DType::F32: convert_segment<simd::F32Src>(static_cast<const float*>(w.data) + off, kc, out); return;
        case DType::BF16:
            for_each_row_piece(w, n, k0, kc, [&](int64_t i, int64_t at, int64_t len) {
                convert_segment<simd::BF16Src>(static_cast<const uint16_t*>(w.data) + i, len, out + at);
            });
            return;
        case DType::F16: convert_segment<simd::F16Src>(static_cast<const uint16_t*>(w.data) + off, kc, out); return;
        default: dequant_row_segment(w, n, k0, kc, out); return;
    }
}

namespace gemm {

#if defined(DEEPSTACK_SIMD_AVX512)
constexpr int MR = 12, NV = 2;
#elif defined(DEEPSTACK_SIMD_AVX2)
constexpr int MR = 6, NV = 2;
#elif defined(DEEPSTACK_SIMD_NEON)
constexpr int MR = 8, NV = 3;
#else
constexpr int MR = 4, NV = 4;
#endif
constexpr int NR = NV * simd::W;
constexpr int64_t KC = 256;       // k depth of one packed block
constexpr int64_t NC = NR * 8;    // weight columns per packed block
constexpr int64_t MC = MR * 16;   // activation rows per packed block

// c[mr, nvalid] (=|+=) a[MR x kc] * b[kc x NR]; a packed [kc][MR], b packed [kc][NR].
// first: c = acc + bias (bias may be null); else c += acc.
inline void micro_kernel(const float* __restrict a, const float* __restrict b, int64_t kc, float* c, int64_t ldc,
                         int mr, int nvalid, bool first, const float* bias) {
    using namespace simd;
    vf acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[i][j] = zero();
    for (int64_t k = 0; k < kc; ++k) {
        vf bv[NV];
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) bv[j] = load(b + k * NR + j * W);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
            const vf av = set1(a[k * MR + i]);
#pragma GCC unroll 4
            for (int j = 0; j < NV; ++j) acc[i][j] = simd::fma(av, bv[j], acc[i][j]);
        }
    }
    for (int i = 0; i < mr; ++i) {
        float* ci = c + i * ldc;
        for (int j = 0; j < NV; ++j) {
            const int col = j * W, cnt = std::min(W, nvalid - col);
            if (cnt <= 0) break;
            vf v = acc[i][j];
            if (cnt == W) {
                if (!first) v = add(v, load(ci + col));
                else if (bias) v = add(v, load(bias + col));
                store(ci + col, v);
            } else {
                if (!first) v = add(v, load_n(ci + col, cnt));
                else if (bias) v = add(v, load_n(bias + col, cnt));
                store_n(ci + col, v, cnt);
            }
        }
    }
}

// Pack weight rows [n0, n0 + nvalid) x cols [k0, k0 + kc) as fp32 [kc][NR] (zero padded columns).
// rows_tmp: [NR][KC] floats, the rows converted to fp32 before they are transposed (16 x 16
// register blocks with AVX-512, element by element otherwise).
inline void pack_b(const Matrix& w, int64_t n0, int nvalid, int64_t k0, int64_t kc, float* dst, float* rows_tmp) {
    for (int j = 0; j < nvalid; ++j) weight_segment_f32(w, n0 + j, k0, kc, rows_tmp + j * KC);
    int64_t k_done = 0;
#if defined(DEEPSTACK_SIMD_AVX512)
    static_assert(NR % 16 == 0, "the packing transposes 16 columns at a time");
    k_done = kc / 16 * 16;
    for (int h = 0; h < NR; h += 16)
        for (int64_t k = 0; k < k_done; k += 16)
            simd::transpose16_rows(rows_tmp + h * KC + k, KC * 4, nvalid - h, dst + k * NR + h, NR * 4);
#endif
    for (int64_t k = k_done; k < kc; ++k)
        for (int j = 0; j < NR; ++j) dst[k * NR + j] = j < nvalid ? rows_tmp[j * KC + k] : 0.f;
}

// Pack activation rows [m0, m0 + mr) x cols [k0, k0 + kc) as [kc][MR] (zero padded rows): with
// AVX-512, 16 columns of every row at a time by a 16 x 16 register transpose (rows past mr zero),
// then MR lanes stored per column; element by element otherwise.
inline void pack_a(const float* x, int64_t ldx, int64_t m0, int mr, int64_t k0, int64_t kc, float* dst) {
#if defined(DEEPSTACK_SIMD_AVX512)
    static_assert(MR <= 16, "one register transpose covers a panel's rows");
    for (int64_t k = 0; k < kc; k += 16) {
        const int n = int(std::min<int64_t>(16, kc - k));  // columns k0 + k + [0, n)
        __m512i r[16];
        for (int i = 0; i < 16; ++i)
            r[i] = i < mr ? _mm512_maskz_loadu_epi32(simd::tail_mask(n), x + (m0 + i) * ldx + k0 + k) : _mm512_setzero_si512();
        simd::transpose16x16_32(r);
        for (int q = 0; q < n; ++q) _mm512_mask_storeu_epi32(dst + (k + q) * MR, simd::tail_mask(MR), r[q]);
    }
#else
    for (int i = 0; i < MR; ++i) {
        if (i < mr) {
            const float* xi = x + (m0 + i) * ldx + k0;
            for (int64_t k = 0; k < kc; ++k) dst[k * MR + i] = xi[k];
        } else {
            for (int64_t k = 0; k < kc; ++k) dst[k * MR + i] = 0.f;
        }
    }
#endif
}

// Activations packed once per call as panels [K/KC][M/MR][KC][MR] (zero padded rows), shared by
// all threads: panel (kb, mb) holds rows [mb*MR, +MR) x cols [kb*KC, +KC) at apack_offset(kb, mb).
inline int64_t apack_offset(int64_t kb, int64_t mb, int64_t mblocks) { return (kb * mblocks + mb) * KC * MR; }

inline void gemm(const float* x, int64_t M, const Matrix& w, float* y, const float* bias) {
    const int64_t N = w.rows, K = w.cols, mblocks = (M + MR - 1) / MR;
    const int nt = omp_threads_for(double(M) * double(N) * double(K));
    float* apack = thread_workspace<GemmWorkspace>().a_panels.get(size_t(((K + KC - 1) / KC) * mblocks * KC * MR));
    pack_panels(M, K, KC, MR, nt, [&](int64_t kb, int64_t mb) {
        pack_a(x, K, mb * MR, int(std::min<int64_t>(MR, M - mb * MR)), kb * KC, std::min(KC, K - kb * KC), apack + apack_offset(kb, mb, mblocks));
    });
    auto block = [&](int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end) {
        float* bpanel = thread_workspace<GemmWorkspace>().b_panel.get(size_t(NC * KC));  // [NC/NR][kc][NR] this thread's weight block
        float* rows_tmp = thread_workspace<GemmWorkspace>().b_rows.get(size_t(NR * KC));
        gemm_loops(
            K, KC, NC, NR, MC, MR, m_begin, m_end, n_begin, n_end,
            [&](int64_t p, int64_t n0, int nvalid, int64_t k0, int64_t kc) { pack_b(w, n0, nvalid, k0, kc, bpanel + p * kc * NR, rows_tmp); },
            [&](int64_t p, int64_t m0, int mvalid, int64_t n0, int nvalid, int64_t k0, int64_t kc) {
                micro_kernel(apack + apack_offset(k0 / KC, m0 / MR, mblocks), bpanel + p * kc * NR, kc, y + m0 * N + n0, N, mvalid, nvalid,
                             k0 == 0, bias ? bias + n0 : nullptr);
            });
    };
    split_gemm(M, N, nt, NC, NR, block, MR);
}

// ---- GEMV (M <= kGemvRows): stream each weight row once ----

// y[m, n] for n in [n0, n1), MM activation rows, R weight rows at a time.
template <class Src, int MM, int R>
inline void gemv_rows(const float* x, int64_t K, const typename Src::T* wdata, float* y, int64_t N, const float* bias,
                      int64_t n0, int64_t n1) {
    using namespace simd;
    // U independent accumulator sets over consecutive vectors of k (more loads in flight per row)
    constexpr int U = (MM * R * 2 <= 16) ? 2 : 1;
    int64_t n = n0;
    for (; n + R <= n1; n += R) {
        vf acc[U][MM][R];
#pragma GCC unroll 2
        for (int u = 0; u < U; ++u)
#pragma GCC unroll 4
            for (int m = 0; m < MM; ++m)
#pragma GCC unroll 8
                for (int r = 0; r < R; ++r) acc[u][m][r] = zero();
        const typename Src::T* wr = wdata + n * K;
        int64_t k = 0;
        for (; k + U * W <= K; k += U * W) {
#pragma GCC unroll 2
            for (int u = 0; u < U; ++u) {
                // weights of the R rows first, then each activation vector is loaded once for R FMAs
                vf wv[R];
#pragma GCC unroll 8
                for (int r = 0; r < R; ++r) wv[r] = Src::load(wr + r * K + k + u * W);
#pragma GCC unroll 4
                for (int m = 0; m < MM; ++m) {
                    const vf xv = load(x + m * K + k + u * W);
#pragma GCC unroll 8
                    for (int r = 0; r < R; ++r) acc[u][m][r] = simd::fma(xv, wv[r], acc[u][m][r]);
                }
            }
        }
        for (; k + W <= K; k += W) {
            for (int r = 0; r < R; ++r) {
                const vf wv = Src::load(wr + r * K + k);
                for (int m = 0; m < MM; ++m) acc[0][m][r] = simd::fma(load(x + m * K + k), wv, acc[0][m][r]);
            }
        }
        if (k < K) {
            const int t = int(K - k);
            vf xv[MM];
            for (int m = 0; m < MM; ++m) xv[m] = load_n(x + m * K + k, t);
            for (int r = 0; r < R; ++r) {
                const vf wv = Src::load_n(wr + r * K + k, t);
                for (int m = 0; m < MM; ++m) acc[0][m][r] = simd::fma(xv[m], wv, acc[0][m][r]);
            }
        }
        for (int m = 0; m < MM; ++m)
            for (int r = 0; r < R; ++r) {
                vf a = acc[0][m][r];
                for (int u = 1; u < U; ++u) a = add(a, acc[u][m][r]);
                y[m * N + n + r] = hsum(a) + (bias ? bias[n + r] : 0.f);
            }
    }
    if (n < n1) gemv_rows<Src, MM, 1>(x, K, wdata, y, N, bias, n, n1);
}

// BF16 weights with K a multiple of 2W: each 2W-wide load of a weight row gives its even and odd
// elements as fp32 (load_bf16_pairs), dotted with the activations stored the same way,
// xp [MM][K] = per 2W block, W even then W odd elements (pair_activations). Fewer instructions per
// weight byte than converting W at a time, so the loop stays at memory speed.
inline void pair_activations(const float* x, int64_t MM, int64_t K, float* xp) {
    using simd::W;
    for (int64_t m = 0; m < MM; ++m)
        for (int64_t b = 0; b < K; b += 2 * W)
            for (int i = 0; i < W; ++i) {
                xp[m * K + b + i] = x[m * K + b + 2 * i];
                xp[m * K + b + W + i] = x[m * K + b + 2 * i + 1];
            }
}

// Tiled: the rows [n0, n1) lie in row tiles (Matrix::tile_rows), n0 and n1 multiples of R, R a
// divisor of kTileRows: row n's columns [k, k + 32) sit at tile(n) + k * kTileRows + (n % 8) * 32.
template <int MM, int R, bool Tiled = false>
inline void gemv_bf16_pairs(const float* xp, int64_t K, const uint16_t* wdata, float* y, int64_t N, const float* bias, int64_t n0,
                            int64_t n1) {
    using namespace simd;
    static_assert(!Tiled || (kTileRows % R == 0 && kTileCols % (2 * W) == 0), "a tiled step stays inside one tile chunk");
    // offset of (row r of the R-row group, column k) from the group's first element
    auto at = [K](int r, int64_t k) -> int64_t {
        if constexpr (Tiled) return (k - k % kTileCols) * kTileRows + r * kTileCols + k % kTileCols;
        else return r * K + k;
    };
    const WeightPrefetch where = weight_prefetch();
    int64_t n = n0;
    for (; n + R <= n1; n += R) {
        vf acc[MM][R][2];
#pragma GCC unroll 4
        for (int m = 0; m < MM; ++m)
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) acc[m][r][0] = acc[m][r][1] = zero();
        const uint16_t* wr = Tiled ? wdata + (n / kTileRows) * kTileRows * K + (n % kTileRows) * kTileCols : wdata + n * K;
        for (int64_t k = 0; k < K; k += 2 * W) {
            vf we[R], wo[R];
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) {
                prefetch_ahead(wr + at(r, k), where);
                load_bf16_pairs(wr + at(r, k), we[r], wo[r]);
            }
#pragma GCC unroll 4
            for (int m = 0; m < MM; ++m) {
                const vf xe = load(xp + m * K + k), xo = load(xp + m * K + k + W);
#pragma GCC unroll 8
                for (int r = 0; r < R; ++r) {
                    acc[m][r][0] = simd::fma(xe, we[r], acc[m][r][0]);
                    acc[m][r][1] = simd::fma(xo, wo[r], acc[m][r][1]);
                }
            }
        }
        for (int m = 0; m < MM; ++m)
            for (int r = 0; r < R; ++r) y[m * N + n + r] = hsum(add(acc[m][r][0], acc[m][r][1])) + (bias ? bias[n + r] : 0.f);
    }
    if (n < n1) gemv_bf16_pairs<MM, 1, Tiled>(xp, K, wdata, y, N, bias, n, n1);
}

// Weight rows per step of gemv_rows for MM activation rows: as many as the registers hold while
// keeping its two accumulator sets (U = 2) for every MM, so each row's sums run in one order
// whatever MM is. (The BF16 pair kernel's order does not depend on its rows per step.)
template <int MM>
constexpr int gemv_step_rows() {
#if defined(DEEPSTACK_SIMD_AVX512)
    return MM == 1 ? 8 : MM == 2 ? 4 : 2;
#else
    return MM <= 2 ? 4 : 2;
#endif
}

// Rows [n0, n1) of y [MM, N] = x [MM, K] w^T (+ bias); xp: x in pair order (BF16 weights, K a
// multiple of 2W) or null. n0 a multiple of gemv_step_rows<1>() (a row tile holds whole steps).
template <class Src, int MM>
inline void gemv_chunk(const float* x, const float* xp, const Matrix& w, float* y, const float* bias, int64_t n0, int64_t n1) {
    constexpr int R = gemv_step_rows<MM>();
    static_assert(MM * R * 2 <= 16, "gemv_rows keeps two accumulator sets");
    const int64_t N = w.rows, K = w.cols;
    const auto* wd = static_cast<const typename Src::T*>(w.data);
    if constexpr (std::is_same_v<Src, simd::BF16Src>) {
#if defined(DEEPSTACK_SIMD_AVX512)
        constexpr int RP = MM == 1 ? 8 : 4;
#else
        constexpr int RP = MM <= 2 ? 4 : 2;
#endif
        const int64_t tiled_rows = w.tile_rows ? N / kTileRows * kTileRows : 0;  // rows [0, tiled_rows) in row tiles
        if (n0 < tiled_rows) {
            gemv_bf16_pairs<MM, RP, true>(xp, K, wd, y, N, bias, n0, std::min(n1, tiled_rows));
            n0 = std::min(n1, tiled_rows);
        }
        if (xp) return gemv_bf16_pairs<MM, RP>(xp, K, wd, y, N, bias, n0, n1);
    }
    gemv_rows<Src, MM, R>(x, K, wd, y, N, bias, n0, n1);
}

// M <= kGemvRows rows of x.
template <class Src>
inline void gemv(const float* x, int64_t M, const Matrix& w, float* y, const float* bias) {
    const int64_t N = w.rows, K = w.cols;
    const float* xp = nullptr;  // activations in pair order, when the BF16 pair kernel applies
    if constexpr (std::is_same_v<Src, simd::BF16Src>) {
        if (K % (2 * simd::W) == 0) {
            float* buf = thread_workspace<GemmWorkspace>().x_gemv.get(size_t(M * K));
            pair_activations(x, M, K, buf);
            xp = buf;
        }
    }
    split_gemv_chunks(M, N, gemv_step_rows<1>(), omp_threads_for(double(M) * double(N) * double(K)),
                      [&](int64_t m0, int64_t mm, int64_t n0, int64_t n1) {
                          const float* xm = x + m0 * K;
                          const float* xpm = xp ? xp + m0 * K : nullptr;
                          float* ym = y + m0 * N;
                          switch (mm) {
                              case 1: return gemv_chunk<Src, 1>(xm, xpm, w, ym, bias, n0, n1);
                              case 2: return gemv_chunk<Src, 2>(xm, xpm, w, ym, bias, n0, n1);
                              case 3: return gemv_chunk<Src, 3>(xm, xpm, w, ym, bias, n0, n1);
                              default: return gemv_chunk<Src, 4>(xm, xpm, w, ym, bias, n0, n1);
                          }
                      });
}

}  // namespace gemm

}  // namespace DEEPSTACK_KERNEL_LEVEL
}  // namespace deepstack::detail

#endif  // DEEPSTACK_KERNEL_LEVEL
