// deepstack/kernels_amx.hpp - fast mode's GEMM on Intel AMX tiles (BF16 weights, and Q8 / Q4 weights
// dequantized to bf16 a micro-panel at a time), and the tile product its attention uses, where the CPU
// and the OS allow them (Sapphire Rapids and later Xeons; Linux 5.16+ grants the tile state per
// process through arch_prctl). One TDPBF16PS multiplies a 16 x 32 bf16 tile of activations by a
// 32 x 16 tile of weights into a 16 x 16 fp32 tile: 8192 multiply-adds per instruction, against 32
// per VDPBF16PS. Same semantics as gemm_bf16::gemm (activations rounded to bf16, to nearest even;
// fp32 accumulation; the same weight pairs), only the order of the fp32 additions differs.
//
// The weights' packed form is the AVX-512 GEMM's: micro-panels of 32 rows as [pairs][32] bf16 pairs
// (pack_b, or Matrix::panel_rows read in place), which are two B tiles side by side (16 pair rows of
// 64 bytes, row stride 128). The activations are packed once per call as [32 rows][KC/2 pairs]
// panels (two A tiles, row stride KC * 2 bytes). A micro-kernel holds a 32 x 32 block of the output
// in four accumulator tiles over a depth block.
//
// Selected at run time by matmul_bf16, the mode-selecting matmul (Q8 / Q4, M > 4) and attention_bf16
// when compiled for AMX (-march=native on such a CPU, or DEEPSTACK_ARCH=avx512) and amx_usable():
// CPUID says AMX-BF16 and the kernel granted the tile data; DEEPSTACK_AMX=0 in the environment turns
// it off (for A/B measurements). Included from kernels_bf16.hpp.
#pragma once
#include "kernels_simd.hpp"

#if defined(DEEPSTACK_HAVE_DPBF16) && defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
#define DEEPSTACK_HAVE_AMX 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#endif

namespace deepstack {
namespace detail {

#if defined(DEEPSTACK_HAVE_AMX)
namespace gemm_amx {

// Whether this process may run AMX: CPUID leaf 7 (AMX-TILE, AMX-BF16), then the kernel's permission
// for the tile data (ARCH_REQ_XCOMP_PERM, process-wide, asked once; refused where the OS has not
// enabled the tile state or a thread's alternate signal stack is too small for it).
inline bool amx_usable() {
    static const bool usable = [] {
        const char* env = std::getenv("DEEPSTACK_AMX");
        if (env && std::strcmp(env, "0") == 0) return false;
        unsigned a = 0, b = 0, c = 0, d = 0;
        if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
        const bool tile = (d >> 24) & 1u, bf16 = (d >> 22) & 1u;
        if (!tile || !bf16) return false;
        constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
        return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
    }();
    return usable;
}

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

// Activation rows [m0, m0 + mr) of x [M, K], cols [k0, k0 + kc), as P panels of MR rows x kp pairs
// (row stride KC/2 pairs, panel stride MR * KC/2), kp = kc rounded up to TK, halved; rows past mr
// and pairs past kc zero. P = 1: x rounded to bf16 (to nearest even). P = 3: x split exactly into
// three bf16 pieces, x = hi + mid + lo (hi = bf16(x), mid = bf16(x - hi), lo = x - hi - mid: each
// remainder has at most 16, then 8 significant bits, so the three cover fp32's 24; pieces below
// bf16's normal range, |x| < ~2^-102, flush to 0).
template <int P = 1>
inline void pack_a(const float* x, int64_t K, int64_t m0, int mr, int64_t k0, int64_t kc, uint32_t* dst) {
    static_assert(P == 1 || P == 3, "one rounded piece, or the exact split");
    constexpr int64_t piece = MR * (KC / 2);
    const int64_t kp = (kc + TK - 1) / TK * TK / 2;
    const auto widen = [](__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); };
    for (int i = 0; i < MR; ++i) {
        uint32_t* row = dst + i * (KC / 2);
        if (i >= mr) {
            for (int j = 0; j < P; ++j) std::fill(row + j * piece, row + j * piece + kp, 0u);
            continue;
        }
        const float* xi = x + (m0 + i) * K + k0;
        for (int64_t p = 0; p < kp; p += 16) {
            const int n = int(std::min<int64_t>(32, std::max<int64_t>(0, kc - 2 * p)));  // columns k0 + 2p + [0, n)
            __m512 lo = _mm512_maskz_loadu_ps(simd::tail_mask(std::min(16, n)), xi + 2 * p);
            __m512 hi = _mm512_maskz_loadu_ps(simd::tail_mask(std::max(0, n - 16)), xi + 2 * p + 16);
            for (int j = 0; j < P; ++j) {
                const __m512i bf = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);  // columns 2p + [0, 16) from lo, [16, 32) from hi
                _mm512_storeu_si512(row + j * piece + p, bf);
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
// P > 1: a is P panels (stride piece_stride pairs) whose products all add into c, each B tile
// loaded once for the P of them.
template <int RT, int CT, int P = 1>
inline void tile_product(const uint32_t* a, int64_t lda, const uint32_t* b, int64_t ldb, int64_t kp, const float* c_in, int64_t ld_in,
                         float* c_out, int64_t ld_out, int64_t piece_stride = 0) {
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
        for (int j = 0; j < P; ++j) {
            const uint32_t* aj = a + j * piece_stride + p;
            _tile_loadd(4, aj, lda * 4);
            _tile_dpbf16ps(0, 4, 6);
            if (CT > 1) _tile_dpbf16ps(1, 4, 7);
            if (RT > 1) {
                _tile_loadd(5, aj + TR * lda, lda * 4);
                _tile_dpbf16ps(2, 5, 6);
                if (CT > 1) _tile_dpbf16ps(3, 5, 7);
            }
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

// c[mr, nvalid] (=|+=) the product of P A panels (MR rows, row stride KC/2 pairs, one after
// another: pack_a<P>) and a B micro-panel [kp][NR] pairs over kp pairs (a multiple of 16), plus
// bias on the first depth block. RT: 2 if mr > 16 (else only the first A tile's rows exist). Whole
// tiles (mr = 16 RT, 32 columns) read and write c in place; other blocks go through a 32 x 32 buffer.
template <int RT, int P>
inline void micro_kernel(const uint32_t* a, const uint32_t* b, int64_t kp, float* c, int64_t ldc, int mr, int nvalid, bool first,
                         const float* bias) {
    constexpr int64_t piece = MR * (KC / 2);
    if (mr == TR * RT && nvalid == NR) {
        const float* c_in = !first ? c : bias;  // bias: every row starts as it (row stride 0)
        return tile_product<RT, 2, P>(a, KC / 2, b, NR, kp, c_in, !first ? ldc : 0, c, ldc, piece);
    }
    alignas(64) float buf[MR * NR];
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) buf[i * NR + j] = i >= mr || j >= nvalid ? 0.f : !first ? c[i * ldc + j] : bias ? bias[j] : 0.f;
    tile_product<RT, 2, P>(a, KC / 2, b, NR, kp, buf, NR, buf, NR, piece);
    for (int i = 0; i < mr; ++i) std::memcpy(c + i * ldc, buf + i * NR, size_t(nvalid) * sizeof(float));
}

// Rows [n0, n0 + nvalid) of a Q8 / Q4 matrix, cols [k0, k0 + kc), dequantized (q * scale in fp32,
// rounded to bf16 to nearest even) as pairs [kp][NR]: one micro-panel at a time, never the matrix.
inline void pack_b_quant(const Matrix& w, int64_t n0, int nvalid, int64_t k0, int64_t kc, uint32_t* dst) {
    float* row = scratch<31>(size_t(KC));
    auto* rows = reinterpret_cast<uint16_t*>(scratch<26>(size_t(NR * KC / 2)));  // [nvalid][kc] bf16
    for (int j = 0; j < nvalid; ++j) {
        dequant_row_segment(w, n0 + j, k0, kc, row);
        round_to_bf16(row, kc, rows + j * kc);
    }
    gemm_bf16::pack_b(rows, kc, 0, nvalid, 0, kc, dst);
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
    auto* apack = reinterpret_cast<uint32_t*>(scratch<6>(size_t(kblocks * mblocks * pieces * MR * (KC / 2))));
    pack_panels(M, K, KC, MR, nt, [&](int64_t kb, int64_t mb) {
        const int mr = int(std::min<int64_t>(MR, M - mb * MR));
        const int64_t k0 = kb * KC, kc = std::min(KC, K - k0);
        uint32_t* dst = apack + apack_offset(kb, mb, mblocks, pieces);
        if (pieces == 3) pack_a<3>(x, K, mb * MR, mr, k0, kc, dst);
        else pack_a<1>(x, K, mb * MR, mr, k0, kc, dst);
    });
    const auto* wd = static_cast<const uint16_t*>(w.data);
    const int64_t panel_end = w.panel_rows ? N / kPanelRows * kPanelRows : 0;  // rows [0, panel_end) in pair panels
    auto block = [&](int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end) {
        if (m_begin >= m_end || n_begin >= n_end) return;
        configure_tiles();
        auto* bpanel = reinterpret_cast<uint32_t*>(scratch<5>(size_t(NC * KC / 2)));  // [NC/NR][kp][NR] pairs
        const uint32_t* panel[NC / NR];  // the micro-panels [kp][NR] of the current block: packed or in place
        gemm_loops(
            K, KC, NC, NR, MC, MR, m_begin, m_end, n_begin, n_end,
            [&](int64_t p, int64_t n0, int nvalid, int64_t k0, int64_t kc) {
                const int64_t kp = (kc + TK - 1) / TK * TK / 2, have = (kc + 1) / 2;  // pairs the kernel reads / that hold weights
                if (n0 < panel_end && kp == have && kc % 2 == 0) {  // a whole group of pair panels, as deep as a tile multiple
                    panel[p] = reinterpret_cast<const uint32_t*>(wd + n0 * K + k0 * kPanelRows);
                    return;
                }
                uint32_t* dst = bpanel + p * (KC / 2) * NR;
                panel[p] = dst;
                if (n0 < panel_end) std::memcpy(dst, wd + n0 * K + k0 * kPanelRows, size_t(kc) * kPanelRows * sizeof(uint16_t));
                else if (w.dtype == DType::Q8 || w.dtype == DType::Q4) pack_b_quant(w, n0, nvalid, k0, kc, dst);
                else gemm_bf16::pack_b_rows(w, n0, nvalid, k0, kc, dst);
                std::fill(dst + have * NR, dst + kp * NR, 0u);
            },
            [&](int64_t p, int64_t m0, int mvalid, int64_t n0, int nvalid, int64_t k0, int64_t kc) {
                const int64_t kp = (kc + TK - 1) / TK * TK / 2;
                const uint32_t* a = apack + apack_offset(k0 / KC, m0 / MR, mblocks, pieces);
                float* c = y + m0 * N + n0;
                const float* b = bias ? bias + n0 : nullptr;
                if (pieces == 3) {
                    if (mvalid > TR) micro_kernel<2, 3>(a, panel[p], kp, c, N, mvalid, nvalid, k0 == 0, b);
                    else micro_kernel<1, 3>(a, panel[p], kp, c, N, mvalid, nvalid, k0 == 0, b);
                } else if (mvalid > TR) micro_kernel<2, 1>(a, panel[p], kp, c, N, mvalid, nvalid, k0 == 0, b);
                else micro_kernel<1, 1>(a, panel[p], kp, c, N, mvalid, nvalid, k0 == 0, b);
            });
        _tile_release();
    };
    split_gemm(M, N, nt, NC, NR, block, MR);
}

}  // namespace gemm_amx
#endif  // DEEPSTACK_HAVE_AMX

// Whether exact mode's GEMMs of BF16 weights run on AMX tiles here (matmul_exact_amx).
inline bool exact_gemm_on_amx() {
#if defined(DEEPSTACK_HAVE_AMX)
    return gemm_amx::amx_usable();
#else
    return false;
#endif
}

// Exact mode's GEMM for BF16 weights on AMX tiles (gemm_amx::gemm with the exact three-piece split
// of the activations) where usable; false otherwise (the caller runs the fp32 FMA GEMM).
inline bool matmul_exact_amx(const float* x, int64_t M, const Matrix& W, float* y, const float* bias) {
    if (W.dtype != DType::BF16 || !exact_gemm_on_amx()) return false;
#if defined(DEEPSTACK_HAVE_AMX)
    gemm_amx::gemm(x, M, W, y, bias, 3);
#else
    (void)x, (void)M, (void)y, (void)bias;
#endif
    return true;
}

}  // namespace detail
}  // namespace deepstack
