// deepstack/kernels_amx.hpp - the GEMM of fast mode and of exact mode on Intel AMX tiles (BF16
// weights, and Q8 / Q4 weights dequantized to bf16 a micro-panel at a time), and the tile product
// fast mode's attention uses, where the CPU and the OS allow them (Sapphire Rapids and later Xeons;
// Linux 5.16+ grants the tile state per process through arch_prctl). One TDPBF16PS multiplies a
// 16 x 32 bf16 tile of activations by a 32 x 16 tile of weights into a 16 x 16 fp32 tile: 8192
// multiply-adds per instruction, against 32 per VDPBF16PS. Fast mode: the semantics of
// gemm_bf16::gemm (activations rounded to bf16, to nearest even; fp32 accumulation; the same weight
// pairs), only the order of the fp32 additions differs.
//
// The weights' packed form is the AVX-512 GEMM's: micro-panels of 32 rows as [pairs][32] bf16 pairs
// (pack_b, or Matrix::panel_rows read in place), which are two B tiles side by side (16 pair rows of
// 64 bytes, row stride 128). The activations are packed once per call with every A tile's 1 KiB in
// one piece (pack_a). A block product holds a 32 x 32 block of the output in four accumulator tiles
// over a depth block and keeps it in a buffer of its own between depth blocks (block_product).
// Exact mode runs the same GEMM on the fp32 activations split exactly into three bf16 pieces
// (pack_a<3>, gemm's pieces = 3).
//
// Compiled at the avx512bf16 level and run where amx_active() (kernels_cpu.hpp): CPUID says AMX
// and Linux granted the tile data; kernels_select.hpp says which products take it.
//
// A level body: kernels_levels.hpp compiles it once per SIMD level, inside that level's namespace and
// target region; included on its own it brings in the whole kernel layer.
#ifndef DEEPSTACK_KERNEL_LEVEL
#include "kernels.hpp"
#else

namespace deepstack::detail {
namespace DEEPSTACK_KERNEL_LEVEL {

#if defined(DEEPSTACK_HAVE_AMX)
namespace gemm_amx {

constexpr int TR = 16;                          // rows of a tile (and columns of an fp32 tile)
constexpr int MR = 2 * TR, NR = gemm_bf16::NR;  // a micro-kernel's output block: 2 x 2 tiles
static_assert(NR == 2 * TR, "a micro-panel of 32 weight rows is two B tiles");
constexpr int64_t KC = 512;                     // depth per block: 16 tiles of 32
constexpr int64_t NC = NR * 8, MC = MR * 8;
constexpr int64_t TK = 32;                      // depth of a tile (16 pairs)

// Tiles 0-3: the 2 x 2 accumulators (fp32 16 x 16), 4-5: two A tiles (16 rows x 16 pairs), 6-7:
// two B tiles (16 pair rows x 16 columns); every one 16 rows of 64 bytes. The configuration is
// per thread: each thread's share of a call loads it and releases the tiles when done.
struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
    uint8_t rows[16] = {TR, TR, TR, TR, TR, TR, TR, TR};
};

// Activation rows [m0, m0 + mr) of x [M, K], cols [k0, k0 + kc), packed for gemm_block as
// [kp/16 steps][P pieces][MR rows][16 pairs]: every A tile (16 rows of one step and piece) 1 KiB
// in one piece, each step's tiles one after another. kp = kc rounded up to TK, halved; rows past mr
// and pairs past kc zero. P = 1: x rounded to bf16 (to nearest even). P = 3: x split exactly into
// three bf16 pieces, x = hi + mid + lo (hi = bf16(x), mid = bf16(x - hi), lo = x - hi - mid: each
// remainder has at most 16, then 8 significant bits, so the three cover fp32's 24; pieces below
// bf16's normal range, |x| < ~2^-102, flush to 0).
template <int P = 1>
inline void pack_a(const float* x, int64_t K, int64_t m0, int mr, int64_t k0, int64_t kc, uint32_t* dst) {
    static_assert(P == 1 || P == 3, "one rounded piece, or the exact split");
    const int64_t steps = (kc + TK - 1) / TK;
    const auto widen = [](__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); };
    for (int i = 0; i < MR; ++i) {
        const float* xi = x + (m0 + i) * K + k0;
        for (int64_t t = 0; t < steps; ++t) {
            uint32_t* out = dst + (t * P * MR + i) * 16;  // piece j at out + j * MR * 16
            const int n = i < mr ? int(std::min<int64_t>(TK, kc - t * TK)) : 0;  // columns k0 + 32t + [0, n)
            __m512 lo = _mm512_maskz_loadu_ps(simd::tail_mask(std::min(16, n)), xi + t * TK);
            __m512 hi = _mm512_maskz_loadu_ps(simd::tail_mask(std::max(0, n - 16)), xi + t * TK + 16);
            for (int j = 0; j < P; ++j) {
                const __m512i bf = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);  // columns 32t + [0, 16) from lo, [16, 32) from hi
                _mm512_storeu_si512(out + j * MR * 16, bf);
                if (j + 1 < P) {  // the remainders, exact in fp32
                    lo = _mm512_sub_ps(lo, widen(_mm512_castsi512_si256(bf)));
                    hi = _mm512_sub_ps(hi, widen(_mm512_extracti64x4_epi64(bf, 1)));
                }
            }
        }
    }
}

inline int64_t apack_offset(int64_t kb, int64_t mb, int64_t mblocks, int pieces) { return (kb * mblocks + mb) * pieces * MR * (KC / 2); }

// c_out [16 RT rows][16 CT columns] fp32 = c_in (0 when null) + a . b over kp pairs (a multiple of
// 16): a [16 RT rows][kp] bf16 pairs (row stride lda pairs), b [kp][16 CT] pairs (row stride ldb).
// Row strides of c_in / c_out in floats; ld_in may be 0 (every row starts as the same row).
template <int RT, int CT>
inline void tile_product(const uint32_t* a, int64_t lda, const uint32_t* b, int64_t ldb, int64_t kp, const float* c_in, int64_t ld_in,
                         float* c_out, int64_t ld_out) {
    static_assert(RT >= 1 && RT <= 2 && CT >= 1 && CT <= 2, "2 x 2 accumulator tiles at most");
    if (c_in) {
        _tile_loadd(0, c_in, ld_in * 4);
        if (CT > 1) _tile_loadd(1, c_in + TR, ld_in * 4);
        if (RT > 1) _tile_loadd(2, c_in + TR * ld_in, ld_in * 4);
        if (RT > 1 && CT > 1) _tile_loadd(3, c_in + TR * ld_in + TR, ld_in * 4);
    } else {
        _tile_zero(0);
        if (CT > 1) _tile_zero(1);
        if (RT > 1) _tile_zero(2);
        if (RT > 1 && CT > 1) _tile_zero(3);
    }
    for (int64_t p = 0; p < kp; p += TK / 2) {
        _tile_loadd(6, b + p * ldb, ldb * 4);
        if (CT > 1) _tile_loadd(7, b + p * ldb + TR, ldb * 4);
        _tile_loadd(4, a + p, lda * 4);
        _tile_dpbf16ps(0, 4, 6);
        if (CT > 1) _tile_dpbf16ps(1, 4, 7);
        if (RT > 1) {
            _tile_loadd(5, a + TR * lda + p, lda * 4);
            _tile_dpbf16ps(2, 5, 6);
            if (CT > 1) _tile_dpbf16ps(3, 5, 7);
        }
    }
    _tile_stored(0, c_out, ld_out * 4);
    if (CT > 1) _tile_stored(1, c_out + TR, ld_out * 4);
    if (RT > 1) _tile_stored(2, c_out + TR * ld_out, ld_out * 4);
    if (RT > 1 && CT > 1) _tile_stored(3, c_out + TR * ld_out + TR, ld_out * 4);
}

// tile_product with the tile counts known at run time: rt, ct 1 or 2.
inline void tile_product(int rt, int ct, const uint32_t* a, int64_t lda, const uint32_t* b, int64_t ldb, int64_t kp, const float* c_in,
                         int64_t ld_in, float* c_out, int64_t ld_out) {
    if (rt > 1 && ct > 1) tile_product<2, 2>(a, lda, b, ldb, kp, c_in, ld_in, c_out, ld_out);
    else if (rt > 1) tile_product<2, 1>(a, lda, b, ldb, kp, c_in, ld_in, c_out, ld_out);
    else if (ct > 1) tile_product<1, 2>(a, lda, b, ldb, kp, c_in, ld_in, c_out, ld_out);
    else tile_product<1, 1>(a, lda, b, ldb, kp, c_in, ld_in, c_out, ld_out);
}

// Loads this thread's tile configuration (once per thread's share of a call; tiles released after).
inline void configure_tiles() {
    static const TileConfig config;
    _tile_loadconfig(&config);
}

// The 16 RT x 32 block c (its tiles one after another, each 16 x 16 fp32 in one piece: [RT][2][16][16])
// (=|+=) the product of an A panel (pack_a<P>) and a B micro-panel [kp][NR] pairs over kp pairs (a
// multiple of 16). first: c starts as the 32 values bias (every row; 0 when null) instead of its
// contents. RT: 2 if the panel has more than 16 rows (else only its first A tile's rows exist). The
// block stays in a buffer of its own between depth blocks: as rows of the output (a row stride of
// N floats, often a multiple of 4 KiB) the tiles' 32 rows fall in a few L1 sets and evict each other.
template <int RT, int P>
inline void block_product(const uint32_t* a, const uint32_t* b, int64_t kp, float* c, bool first, const float* bias) {
    constexpr int T = TR * TR;  // floats per tile
    if (!first) {
        _tile_loadd(0, c, 64);
        _tile_loadd(1, c + T, 64);
        if (RT > 1) {
            _tile_loadd(2, c + 2 * T, 64);
            _tile_loadd(3, c + 3 * T, 64);
        }
    } else if (bias) {
        _tile_loadd(0, bias, 0);
        _tile_loadd(1, bias + TR, 0);
        if (RT > 1) {
            _tile_loadd(2, bias, 0);
            _tile_loadd(3, bias + TR, 0);
        }
    } else {
        _tile_zero(0);
        _tile_zero(1);
        if (RT > 1) {
            _tile_zero(2);
            _tile_zero(3);
        }
    }
    for (int64_t t = 0; t < kp / (TK / 2); ++t) {
        const uint32_t* bt = b + t * (TK / 2) * NR;
        _tile_loadd(6, bt, NR * 4);
        _tile_loadd(7, bt + TR, NR * 4);
        // A tiles streamed (TILELOADDT1): read once here, they need not evict the B micro-panel,
        // which the next row panels read again
        for (int j = 0; j < P; ++j) {
            const uint32_t* at = a + (t * P + j) * MR * 16;
            _tile_stream_loadd(4, at, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            if (RT > 1) {
                _tile_stream_loadd(5, at + TR * 16, 64);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
            }
        }
    }
    _tile_stored(0, c, 64);
    _tile_stored(1, c + T, 64);
    if (RT > 1) {
        _tile_stored(2, c + 2 * T, 64);
        _tile_stored(3, c + 3 * T, 64);
    }
}

// Rows [n0, n0 + nvalid) of a Q8 / Q4 matrix, cols [k0, k0 + kc), dequantized (q * scale in fp32,
// rounded to bf16 to nearest even) as pairs [kp][NR]: one micro-panel at a time, never the matrix.
inline void pack_b_quant(const Matrix& w, int64_t n0, int nvalid, int64_t k0, int64_t kc, uint32_t* dst) {
    float* row = thread_workspace<GemmWorkspace>().b_row_f32.get(size_t(KC));
    auto* rows = reinterpret_cast<uint16_t*>(thread_workspace<GemmWorkspace>().b_rows.get(size_t(NR * KC / 2)));  // [nvalid][kc] bf16
    for (int j = 0; j < nvalid; ++j) {
        dequant_row_segment(w, n0 + j, k0, kc, row);
        round_to_bf16(row, kc, rows + j * kc);
    }
    gemm_bf16::pack_b(rows, kc, 0, nvalid, 0, kc, dst);
}

// One thread's share of gemm: output rows [m_begin, m_end) (m_begin a multiple of MR) x columns
// [n_begin, n_end), from the activations packed for all threads (apack, pack_a<P>). Per block of NC
// columns: per depth block of KC the weight micro-panels are packed (or read in place), then every
// (row panel, micro-panel) block accumulates in the thread's block buffer, MC rows at a time so
// their panels stay in L2 with the weights; the finished blocks go to y.
template <int P>
inline void gemm_block(const uint32_t* apack, int64_t mblocks, const Matrix& w, const float* bias, float* y, int64_t m_begin, int64_t m_end,
                       int64_t n_begin, int64_t n_end) {
    const int64_t N = w.rows, K = w.cols, mpanels = (m_end - m_begin + MR - 1) / MR;
    const auto* wd = static_cast<const uint16_t*>(w.data);
    const int64_t panel_end = w.panel_rows ? N / kPanelRows * kPanelRows : 0;  // rows [0, panel_end) in pair panels
    auto* bpanel = reinterpret_cast<uint32_t*>(thread_workspace<GemmWorkspace>().b_panel.get(size_t(NC * KC / 2)));  // [NC/NR][kp][NR] pairs
    float* cbuf = thread_workspace<GemmWorkspace>().c_blocks.get(size_t(mpanels * (NC / NR) * MR * NR));         // [row panel][micro-panel][2][2][16][16]
    const uint32_t* panel[NC / NR];  // the micro-panels [kp][NR] of the current block: packed or in place
    alignas(64) float bias_edge[NR];
    for (int64_t nc0 = n_begin; nc0 < n_end; nc0 += NC) {
        const int64_t ncur = std::min(NC, n_end - nc0), npanels = (ncur + NR - 1) / NR;
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            const int64_t kc = std::min(KC, K - k0), kp = (kc + TK - 1) / TK * TK / 2, have = (kc + 1) / 2;  // pairs the kernel reads / that hold weights
            for (int64_t p = 0; p < npanels; ++p) {
                const int64_t n0 = nc0 + p * NR;
                const int nvalid = int(std::min<int64_t>(NR, ncur - p * NR));
                if (n0 < panel_end && kp == have && kc % 2 == 0) {  // a whole group of pair panels, as deep as a tile multiple
                    panel[p] = reinterpret_cast<const uint32_t*>(wd + n0 * K + k0 * kPanelRows);
                    continue;
                }
                uint32_t* dst = bpanel + p * (KC / 2) * NR;
                panel[p] = dst;
                if (n0 < panel_end) std::memcpy(dst, wd + n0 * K + k0 * kPanelRows, size_t(kc) * kPanelRows * sizeof(uint16_t));
                else if (w.dtype == DType::Q8 || w.dtype == DType::Q4) pack_b_quant(w, n0, nvalid, k0, kc, dst);
                else gemm_bf16::pack_b_rows(w, n0, nvalid, k0, kc, dst);
                std::fill(dst + have * NR, dst + kp * NR, 0u);
            }
            auto bias_of = [&](int64_t p) -> const float* {
                const int64_t n0 = nc0 + p * NR;
                const int nvalid = int(std::min<int64_t>(NR, ncur - p * NR));
                if (k0 != 0 || !bias) return nullptr;
                if (nvalid == NR) return bias + n0;
                std::fill(bias_edge, bias_edge + NR, 0.f);  // the bias tile reads 32 values
                std::memcpy(bias_edge, bias + n0, size_t(nvalid) * sizeof(float));
                return bias_edge;
            };
            auto run = [&](int64_t mp, int64_t p, const float* b) {
                const int64_t m0 = m_begin + mp * MR;
                const uint32_t* a = apack + apack_offset(k0 / KC, m0 / MR, mblocks, P);
                float* c = cbuf + (mp * (NC / NR) + p) * MR * NR;
                if (m_end - m0 > TR) block_product<2, P>(a, panel[p], kp, c, k0 == 0, b);
                else block_product<1, P>(a, panel[p], kp, c, k0 == 0, b);
            };
            for (int64_t mc0 = 0; mc0 < mpanels; mc0 += MC / MR)
                for (int64_t p = 0; p < npanels; ++p) {
                    const float* b = bias_of(p);
                    for (int64_t mp = mc0; mp < std::min(mpanels, mc0 + MC / MR); ++mp) run(mp, p, b);
                }
        }
        for (int64_t mp = 0; mp < mpanels; ++mp)  // the finished blocks to y: row i of a block is row i % 16 of tiles (i / 16, 0 and 1)
            for (int64_t p = 0; p < npanels; ++p) {
                const int64_t m0 = m_begin + mp * MR, n0 = nc0 + p * NR;
                const int mvalid = int(std::min<int64_t>(MR, m_end - m0)), nvalid = int(std::min<int64_t>(NR, ncur - p * NR));
                const float* c = cbuf + (mp * (NC / NR) + p) * MR * NR;
                for (int i = 0; i < mvalid; ++i) {
                    const float* tile_row = c + (i / TR) * 2 * TR * TR + (i % TR) * TR;
                    float* out = y + (m0 + i) * N + n0;
                    std::memcpy(out, tile_row, size_t(std::min(nvalid, TR)) * sizeof(float));
                    if (nvalid > TR) std::memcpy(out + TR, tile_row + TR * TR, size_t(nvalid - TR) * sizeof(float));
                }
            }
    }
}

// y [M, N] = x [M, K] * W^T (+ bias) for a BF16 W (row-major, row tiles or pair panels), or a Q8 /
// Q4 W dequantized to bf16 a micro-panel at a time (pack_b_quant). pieces = 1: x rounded to bf16
// (fast mode); 3: x split exactly into three bf16 pieces (pack_a<3>), every product of a piece and
// a bf16 weight exact in fp32: an fp32 GEMM of x and W up to the order of its fp32 additions (exact
// mode, BF16 weights), on three times the tile products.
inline void gemm(const float* x, int64_t M, const Matrix& w, float* y, const float* bias, int pieces = 1) {
    const int64_t N = w.rows, K = w.cols;
    const int nt = omp_threads_for(double(M) * double(N) * double(K));
    const int64_t mblocks = (M + MR - 1) / MR, kblocks = (K + KC - 1) / KC;
    auto* apack = reinterpret_cast<uint32_t*>(thread_workspace<GemmWorkspace>().a_panels.get(size_t(kblocks * mblocks * pieces * MR * (KC / 2))));
    pack_panels(M, K, KC, MR, nt, [&](int64_t kb, int64_t mb) {
        const int mr = int(std::min<int64_t>(MR, M - mb * MR));
        const int64_t k0 = kb * KC, kc = std::min(KC, K - k0);
        uint32_t* dst = apack + apack_offset(kb, mb, mblocks, pieces);
        if (pieces == 3) pack_a<3>(x, K, mb * MR, mr, k0, kc, dst);
        else pack_a<1>(x, K, mb * MR, mr, k0, kc, dst);
    });
    split_gemm(
        M, N, nt, NC, NR,
        [&](int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end) {
            if (m_begin >= m_end || n_begin >= n_end) return;
            configure_tiles();
            if (pieces == 3) gemm_block<3>(apack, mblocks, w, bias, y, m_begin, m_end, n_begin, n_end);
            else gemm_block<1>(apack, mblocks, w, bias, y, m_begin, m_end, n_begin, n_end);
            _tile_release();
        },
        MR);
}

}  // namespace gemm_amx
#endif  // DEEPSTACK_HAVE_AMX

}  // namespace DEEPSTACK_KERNEL_LEVEL
}  // namespace deepstack::detail

#endif  // DEEPSTACK_KERNEL_LEVEL
