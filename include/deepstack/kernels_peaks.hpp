// deepstack/kernels_peaks.hpp - the machine's limits at one SIMD level, which deepstack-bench sets
// the kernels' speed against: register-resident multiply-add loops on one thread (fp32 FMA, bf16
// and int8 dot products, AMX tile products) and a streaming sum of memory. Each loop returns a
// checksum so that the compiler keeps it; 0 where the level lacks the instruction.
//
// A level body: kernels_levels.hpp compiles it once per SIMD level, inside that level's namespace and
// target region; included on its own it brings in the whole kernel layer.
#ifndef DEEPSTACK_KERNEL_LEVEL
#include "kernels.hpp"
#else

namespace deepstack::detail {
namespace DEEPSTACK_KERNEL_LEVEL {
namespace peaks {

// Independent accumulator chains per loop: enough to hide the FMA latency on two pipes.
constexpr int kChains = 12;

// Multiply-adds in one pass of each loop below (per iteration).
constexpr double kFmaFlops = 2.0 * simd::W * kChains;  // fp32 FMA, the level's widest vectors
constexpr double kDpbf16Flops = 64.0 * kChains;        // VDPBF16PS: 32 bf16 pairs into 16 lanes
constexpr double kDpbusdOps = 128.0 * kChains;         // VPDPBUSD: 64 u8 x s8 products into 16 lanes
constexpr double kAmxFlops = 4 * 16384.0 / 64;         // TDPBF16PS on four tiles, per 64 iterations

inline double fma_loop(int64_t iters) {
    using namespace simd;
    const vf a = set1(0.9999999f), b = set1(1e-7f);
    vf acc[kChains];
    for (int k = 0; k < kChains; ++k) acc[k] = set1(float(k));
    for (int64_t i = 0; i < iters; ++i)
#pragma GCC unroll 16
        for (int k = 0; k < kChains; ++k) acc[k] = simd::fma(acc[k], a, b);
    float s = 0;
    for (const vf& x : acc) s += hsum(x);
    return double(s);
}

inline double dpbf16_loop(int64_t iters) {
#if defined(DEEPSTACK_HAVE_DPBF16)
    const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(1e-3f));
    const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-4f), _mm512_set1_ps(1e-4f));
    __m512 acc[kChains];
    for (int k = 0; k < kChains; ++k) acc[k] = _mm512_set1_ps(float(k));
    for (int64_t i = 0; i < iters; ++i)
#pragma GCC unroll 16
        for (int k = 0; k < kChains; ++k) acc[k] = _mm512_dpbf16_ps(acc[k], a, b);
    float s = 0;
    for (const __m512& x : acc) s += simd::hsum(x);
    return double(s);
#else
    (void)iters;
    return 0;
#endif
}

inline double dpbusd_loop(int64_t iters) {
#if defined(DEEPSTACK_HAVE_VNNI)
    const __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(1);
    __m512i acc[kChains];
    for (int k = 0; k < kChains; ++k) acc[k] = _mm512_set1_epi32(k);
    for (int64_t i = 0; i < iters; ++i)
#pragma GCC unroll 16
        for (int k = 0; k < kChains; ++k) acc[k] = _mm512_dpbusd_epi32(acc[k], a, b);
    int64_t s = 0;
    for (const __m512i& x : acc) s += _mm512_reduce_add_epi32(x);
    return double(s);
#else
    (void)iters;
    return 0;
#endif
}

// Four independent accumulator tiles; 0 unless the AMX kernels are active.
inline double amx_loop(int64_t iters) {
#if defined(DEEPSTACK_HAVE_AMX)
    if (!amx_active()) return 0;
    gemm_amx::configure_tiles();
    alignas(64) uint16_t a[16 * 32], b[16 * 32];
    std::fill(a, a + 16 * 32, uint16_t(0x3a83));  // 1e-3
    std::fill(b, b + 16 * 32, uint16_t(0x38d1));  // 1e-4
    _tile_loadd(4, a, 64);
    _tile_loadd(6, b, 64);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t i = 0; i < iters / 64; ++i) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 6);
        _tile_dpbf16ps(2, 4, 6);
        _tile_dpbf16ps(3, 4, 6);
    }
    alignas(64) float c[16 * 16];
    _tile_stored(0, c, 64);
    _tile_release();
    return double(c[0]);
#else
    (void)iters;
    return 0;
#endif
}

// Sum of p[0, n), n a multiple of 4 W (4 W = 64 floats covers every level), in four vector chains.
inline double stream_sum(const float* p, int64_t n) {
    using namespace simd;
    vf a0 = zero(), a1 = zero(), a2 = zero(), a3 = zero();
    for (int64_t i = 0; i < n; i += 4 * W) {
        a0 = add(a0, load(p + i));
        a1 = add(a1, load(p + i + W));
        a2 = add(a2, load(p + i + 2 * W));
        a3 = add(a3, load(p + i + 3 * W));
    }
    return double(hsum(add(add(a0, a1), add(a2, a3))));
}

}  // namespace peaks
}  // namespace DEEPSTACK_KERNEL_LEVEL
}  // namespace deepstack::detail

#endif  // DEEPSTACK_KERNEL_LEVEL
