// deepstack/kernels_simd.hpp - a thin fp32 vector layer for the kernels, one per SIMD level:
// AVX-512 (F+BW+VL), AVX2+FMA (+F16C), NEON (aarch64), or a 4-lane portable struct that the compiler
// may auto-vectorise. Only what the kernels need: loads (f32, bf16, f16; full and partial), stores,
// fma, horizontal sum, max, exp.
//
// A level body: kernels_levels.hpp compiles it once per SIMD level, inside that level's namespace and
// target region; included on its own it brings in the whole kernel layer.
#ifndef DEEPSTACK_KERNEL_LEVEL
#include "kernels.hpp"
#else

namespace deepstack::detail {
namespace DEEPSTACK_KERNEL_LEVEL {

namespace simd {

// Software prefetch of the line 4 KB past p, for the weight streams of the decode GEMVs whose
// loops issue several loads per weight line: the hardware prefetchers alone keep too few lines in
// flight for them (the bf16-compute GEMV, one load per line, goes without). `where` is weight_prefetch(), read once per kernel call: the branch is predicted
// perfectly. Never faults, so it may point past the end of a matrix.
inline void prefetch_ahead(const void* p, WeightPrefetch where) {
    const char* line = static_cast<const char*>(p) + 4096;
    if (where == WeightPrefetch::L2) __builtin_prefetch(line, 0, 2);
    else __builtin_prefetch(line, 0, 0);
}

#if defined(DEEPSTACK_SIMD_AVX512)
inline constexpr const char* kName = "avx512";
constexpr int W = 16;
using vf = __m512;
inline vf zero() { return _mm512_setzero_ps(); }
inline vf set1(float x) { return _mm512_set1_ps(x); }
inline vf load(const float* p) { return _mm512_loadu_ps(p); }
inline void store(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline __mmask16 tail_mask(int n) { return __mmask16((1u << n) - 1u); }
inline vf load_n(const float* p, int n) { return _mm512_maskz_loadu_ps(tail_mask(n), p); }
inline void store_n(float* p, vf v, int n) { _mm512_mask_storeu_ps(p, tail_mask(n), v); }
inline vf fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf add(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline vf mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf max(vf a, vf b) { return _mm512_max_ps(a, b); }
inline vf min(vf a, vf b) { return _mm512_min_ps(a, b); }
inline vf div(vf a, vf b) { return _mm512_div_ps(a, b); }
inline vf abs(vf a) { return _mm512_andnot_ps(_mm512_set1_ps(-0.f), a); }
inline vf copysign(vf mag, vf s) {  // |mag| with the sign of s
    const vf m = _mm512_set1_ps(-0.f);
    return _mm512_or_ps(_mm512_and_ps(s, m), _mm512_andnot_ps(m, mag));
}
// x < thr ? a : b
inline vf select_lt(vf x, vf thr, vf a, vf b) { return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, thr, _CMP_LT_OQ), b, a); }
inline vf round(vf a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// 2^n for integer-valued n in [-126, 127]
inline vf pow2n(vf n) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}
// (not _mm512_reduce_*_ps: GCC 12's header for those trips -Wmaybe-uninitialized)
inline float hsum(vf v) {
    __m256 h = _mm256_add_ps(_mm512_extractf32x8_ps(v, 0), _mm512_extractf32x8_ps(v, 1));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
inline float hmax(vf v) {
    __m256 h = _mm256_max_ps(_mm512_extractf32x8_ps(v, 0), _mm512_extractf32x8_ps(v, 1));
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
inline vf bf16x16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
inline vf load_bf16(const uint16_t* p) { return bf16x16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline vf load_bf16_n(const uint16_t* p, int n) { return bf16x16(_mm256_maskz_loadu_epi16(tail_mask(n), p)); }
// 2W bf16 values as two fp32 vectors: even = p[0], p[2], ...; odd = p[1], p[3], ... (a shift and a
// mask, no shuffles: the GEMV pairs them with activations stored even/odd the same way).
inline void load_bf16_pairs(const uint16_t* p, vf& even, vf& odd) {
    const __m512i w = _mm512_loadu_si512(p);
    even = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    odd = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(int(0xFFFF0000u))));
}
inline vf load_f16(const uint16_t* p) { return _mm512_maskz_cvtph_ps(__mmask16(0xffff), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
// int8 -> fp32 (W values); one quantization group of 32 int8 / 16 Q4 bytes as 32 / W vectors of q.
inline vf load_i8(const int8_t* p) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))); }
inline void load_q8_group(const int8_t* p, vf* out) {
    out[0] = load_i8(p);
    out[1] = load_i8(p + 16);
}
inline void load_q4_group(const int8_t* p, vf* out) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i m = _mm_set1_epi8(15), eight = _mm_set1_epi8(8);
    const __m128i lo = _mm_sub_epi8(_mm_and_si128(b, m), eight);
    const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), m), eight);
    out[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo));
    out[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi));
}
inline vf load_f16_n(const uint16_t* p, int n) { return _mm512_maskz_cvtph_ps(__mmask16(0xffff), _mm256_maskz_loadu_epi16(tail_mask(n), p)); }
// r[i][j] <- r[j][i] for a 16 x 16 block of 32-bit elements (the GEMMs' weight-panel packing):
// interleave 32-bit, then 64-bit elements of row pairs, then 128-bit lanes twice.
inline void transpose16x16_32(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int h = 0; h < 16; h += 8)
        for (int i = 0; i < 4; ++i) {
            t[h + i] = _mm512_shuffle_i32x4(r[h + i], r[h + i + 4], 0x88);
            t[h + i + 4] = _mm512_shuffle_i32x4(r[h + i], r[h + i + 4], 0xdd);
        }
    for (int i = 0; i < 8; ++i) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
    }
}
// 16 rows of 16 32-bit elements, rows 0-7 at lo + i * src_stride bytes and rows 8-15 at
// hi + (i - 8) * src_stride (rows >= valid read as zero), written transposed: dst + q * dst_stride
// bytes receives element q of every row. Two halves so that two 8-row weight tiles can be read.
inline void transpose16_rows(const void* lo, const void* hi, int64_t src_stride, int valid, void* dst, int64_t dst_stride) {
    __m512i r[16];
    for (int i = 0; i < 16; ++i)
        r[i] = i < valid ? _mm512_loadu_si512(static_cast<const char*>(i < 8 ? lo : hi) + (i % 8) * src_stride) : _mm512_setzero_si512();
    transpose16x16_32(r);
    for (int q = 0; q < 16; ++q) _mm512_storeu_si512(static_cast<char*>(dst) + q * dst_stride, r[q]);
}
// The same with row i at src + i * src_stride bytes.
inline void transpose16_rows(const void* src, int64_t src_stride, int valid, void* dst, int64_t dst_stride) {
    transpose16_rows(src, static_cast<const char*>(src) + 8 * src_stride, src_stride, valid, dst, dst_stride);
}

#elif defined(DEEPSTACK_SIMD_AVX2)
inline constexpr const char* kName = "avx2";
constexpr int W = 8;
using vf = __m256;
inline vf zero() { return _mm256_setzero_ps(); }
inline vf set1(float x) { return _mm256_set1_ps(x); }
inline vf load(const float* p) { return _mm256_loadu_ps(p); }
inline void store(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline __m256i tail_mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline vf load_n(const float* p, int n) { return _mm256_maskload_ps(p, tail_mask(n)); }
inline void store_n(float* p, vf v, int n) { _mm256_maskstore_ps(p, tail_mask(n), v); }
inline vf fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf add(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
inline vf mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf max(vf a, vf b) { return _mm256_max_ps(a, b); }
inline vf min(vf a, vf b) { return _mm256_min_ps(a, b); }
inline vf div(vf a, vf b) { return _mm256_div_ps(a, b); }
inline vf abs(vf a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.f), a); }
inline vf copysign(vf mag, vf s) {
    const vf m = _mm256_set1_ps(-0.f);
    return _mm256_or_ps(_mm256_and_ps(s, m), _mm256_andnot_ps(m, mag));
}
inline vf select_lt(vf x, vf thr, vf a, vf b) { return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, thr, _CMP_LT_OQ)); }
inline vf round(vf a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vf pow2n(vf n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
inline float hsum(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
inline float hmax(vf v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
inline vf bf16x8(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
inline vf load_bf16(const uint16_t* p) { return bf16x8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline void load_bf16_pairs(const uint16_t* p, vf& even, vf& odd) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    even = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
    odd = _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32(int(0xFFFF0000u))));
}
inline vf load_bf16_n(const uint16_t* p, int n) {
    alignas(16) uint16_t t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::memcpy(t, p, size_t(n) * 2);
    return bf16x8(_mm_load_si128(reinterpret_cast<const __m128i*>(t)));
}
inline vf load_i8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline void load_q8_group(const int8_t* p, vf* out) {
    for (int i = 0; i < 4; ++i) out[i] = load_i8(p + 8 * i);
}
inline void load_q4_group(const int8_t* p, vf* out) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i m = _mm_set1_epi8(15), eight = _mm_set1_epi8(8);
    const __m128i lo = _mm_sub_epi8(_mm_and_si128(b, m), eight);
    const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), m), eight);
    out[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
    out[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
    out[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
    out[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
}
#if defined(DEEPSTACK_HAVE_F16C)
inline vf load_f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
#else
inline vf load_f16(const uint16_t* p) {
    alignas(32) float t[8];
    for (int i = 0; i < 8; ++i) t[i] = f16_to_f32(p[i]);
    return _mm256_load_ps(t);
}
#endif
inline vf load_f16_n(const uint16_t* p, int n) {
    alignas(16) uint16_t t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::memcpy(t, p, size_t(n) * 2);
    return load_f16(t);
}

#elif defined(DEEPSTACK_SIMD_NEON)
inline constexpr const char* kName = "neon";
constexpr int W = 4;
using vf = float32x4_t;
inline vf zero() { return vdupq_n_f32(0.f); }
inline vf set1(float x) { return vdupq_n_f32(x); }
inline vf load(const float* p) { return vld1q_f32(p); }
inline void store(float* p, vf v) { vst1q_f32(p, v); }
inline vf load_n(const float* p, int n) {
    float t[4] = {0, 0, 0, 0};
    for (int i = 0; i < n; ++i) t[i] = p[i];
    return vld1q_f32(t);
}
inline void store_n(float* p, vf v, int n) {
    float t[4];
    vst1q_f32(t, v);
    for (int i = 0; i < n; ++i) p[i] = t[i];
}
inline vf fma(vf a, vf b, vf c) { return vfmaq_f32(c, a, b); }
inline vf add(vf a, vf b) { return vaddq_f32(a, b); }
inline vf sub(vf a, vf b) { return vsubq_f32(a, b); }
inline vf mul(vf a, vf b) { return vmulq_f32(a, b); }
inline vf max(vf a, vf b) { return vmaxq_f32(a, b); }
inline vf min(vf a, vf b) { return vminq_f32(a, b); }
inline vf div(vf a, vf b) { return vdivq_f32(a, b); }
inline vf abs(vf a) { return vabsq_f32(a); }
inline vf copysign(vf mag, vf s) { return vbslq_f32(vdupq_n_u32(0x80000000u), s, vabsq_f32(mag)); }
inline vf select_lt(vf x, vf thr, vf a, vf b) { return vbslq_f32(vcltq_f32(x, thr), a, b); }
inline vf round(vf a) { return vrndnq_f32(a); }
inline vf pow2n(vf n) {
    return vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23));
}
inline float hsum(vf v) { return vaddvq_f32(v); }
inline float hmax(vf v) { return vmaxvq_f32(v); }
inline vf load_bf16(const uint16_t* p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }
inline void load_bf16_pairs(const uint16_t* p, vf& even, vf& odd) {
    const uint32x4_t w = vreinterpretq_u32_u16(vld1q_u16(p));
    even = vreinterpretq_f32_u32(vshlq_n_u32(w, 16));
    odd = vreinterpretq_f32_u32(vandq_u32(w, vdupq_n_u32(0xFFFF0000u)));
}
inline vf load_bf16_n(const uint16_t* p, int n) {
    uint16_t t[4] = {0, 0, 0, 0};
    for (int i = 0; i < n; ++i) t[i] = p[i];
    return load_bf16(t);
}
inline vf load_f16(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
inline void load_q8_group(const int8_t* p, vf* out) {
    for (int i = 0; i < 4; ++i) {
        const int16x8_t h = vmovl_s8(vld1_s8(p + 8 * i));
        out[2 * i] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(h)));
        out[2 * i + 1] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(h)));
    }
}
inline void load_q4_group(const int8_t* p, vf* out) {
    const uint8x16_t b = vld1q_u8(reinterpret_cast<const uint8_t*>(p));
    int8_t t[32];
    vst1q_s8(t, vsubq_s8(vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(15))), vdupq_n_s8(8)));
    vst1q_s8(t + 16, vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(b, 4)), vdupq_n_s8(8)));
    load_q8_group(t, out);
}
inline vf load_f16_n(const uint16_t* p, int n) {
    uint16_t t[4] = {0, 0, 0, 0};
    for (int i = 0; i < n; ++i) t[i] = p[i];
    return load_f16(t);
}

#else
inline constexpr const char* kName = "scalar";
constexpr int W = 4;
struct vf {
    float v[4];
};
inline vf zero() { return vf{{0.f, 0.f, 0.f, 0.f}}; }
inline vf set1(float x) { return vf{{x, x, x, x}}; }
inline vf load(const float* p) { return vf{{p[0], p[1], p[2], p[3]}}; }
inline void store(float* p, vf v) {
    for (int i = 0; i < 4; ++i) p[i] = v.v[i];
}
inline vf load_n(const float* p, int n) {
    vf r = zero();
    for (int i = 0; i < n; ++i) r.v[i] = p[i];
    return r;
}
inline void store_n(float* p, vf v, int n) {
    for (int i = 0; i < n; ++i) p[i] = v.v[i];
}
inline vf fma(vf a, vf b, vf c) {
    for (int i = 0; i < 4; ++i) c.v[i] = std::fma(a.v[i], b.v[i], c.v[i]);
    return c;
}
inline vf add(vf a, vf b) {
    for (int i = 0; i < 4; ++i) a.v[i] += b.v[i];
    return a;
}
inline vf sub(vf a, vf b) {
    for (int i = 0; i < 4; ++i) a.v[i] -= b.v[i];
    return a;
}
inline vf mul(vf a, vf b) {
    for (int i = 0; i < 4; ++i) a.v[i] *= b.v[i];
    return a;
}
inline vf max(vf a, vf b) {
    for (int i = 0; i < 4; ++i) a.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i];
    return a;
}
inline vf min(vf a, vf b) {
    for (int i = 0; i < 4; ++i) a.v[i] = a.v[i] < b.v[i] ? a.v[i] : b.v[i];
    return a;
}
inline vf div(vf a, vf b) {
    for (int i = 0; i < 4; ++i) a.v[i] /= b.v[i];
    return a;
}
inline vf abs(vf a) {
    for (int i = 0; i < 4; ++i) a.v[i] = std::fabs(a.v[i]);
    return a;
}
inline vf copysign(vf mag, vf s) {
    for (int i = 0; i < 4; ++i) mag.v[i] = std::copysign(mag.v[i], s.v[i]);
    return mag;
}
inline vf select_lt(vf x, vf thr, vf a, vf b) {
    for (int i = 0; i < 4; ++i) a.v[i] = x.v[i] < thr.v[i] ? a.v[i] : b.v[i];
    return a;
}
inline vf round(vf a) {
    for (int i = 0; i < 4; ++i) a.v[i] = std::nearbyint(a.v[i]);
    return a;
}
inline vf pow2n(vf n) {
    for (int i = 0; i < 4; ++i) n.v[i] = std::ldexp(1.f, int(n.v[i]));
    return n;
}
inline float hsum(vf v) { return (v.v[0] + v.v[1]) + (v.v[2] + v.v[3]); }
inline float hmax(vf v) {
    float a = v.v[0] > v.v[1] ? v.v[0] : v.v[1], b = v.v[2] > v.v[3] ? v.v[2] : v.v[3];
    return a > b ? a : b;
}
inline vf load_bf16(const uint16_t* p) { return vf{{bf16_to_f32(p[0]), bf16_to_f32(p[1]), bf16_to_f32(p[2]), bf16_to_f32(p[3])}}; }
inline void load_bf16_pairs(const uint16_t* p, vf& even, vf& odd) {
    for (int i = 0; i < 4; ++i) even.v[i] = bf16_to_f32(p[2 * i]), odd.v[i] = bf16_to_f32(p[2 * i + 1]);
}
inline vf load_bf16_n(const uint16_t* p, int n) {
    vf r = zero();
    for (int i = 0; i < n; ++i) r.v[i] = bf16_to_f32(p[i]);
    return r;
}
inline void load_q8_group(const int8_t* p, vf* out) {
    for (int i = 0; i < 8; ++i) out[i] = vf{{float(p[4 * i]), float(p[4 * i + 1]), float(p[4 * i + 2]), float(p[4 * i + 3])}};
}
inline void load_q4_group(const int8_t* p, vf* out) {
    int8_t t[32];
    for (int i = 0; i < 16; ++i) {
        const uint8_t b = uint8_t(p[i]);
        t[i] = int8_t(int(b & 15) - 8);
        t[i + 16] = int8_t(int(b >> 4) - 8);
    }
    load_q8_group(t, out);
}
inline vf load_f16(const uint16_t* p) { return vf{{f16_to_f32(p[0]), f16_to_f32(p[1]), f16_to_f32(p[2]), f16_to_f32(p[3])}}; }
inline vf load_f16_n(const uint16_t* p, int n) {
    vf r = zero();
    for (int i = 0; i < n; ++i) r.v[i] = f16_to_f32(p[i]);
    return r;
}
#endif

// ---- math on vectors, written once over the primitives above ----

// e^x, Cephes-style: range reduction by ln2 and a degree-6 polynomial. Max relative error ~2 ulp
// (about 1.5e-7) on [-87.3, 88]; inputs are clamped to that range (so exp(-inf) gives ~1e-38, not 0).
inline vf exp(vf x) {
    x = min(max(x, set1(-87.33654f)), set1(88.0f));
    const vf n = round(mul(x, set1(1.44269504088896341f)));
    vf r = fma(n, set1(-0.693359375f), x);
    r = fma(n, set1(2.12194440e-4f), r);
    vf p = set1(1.9875691500e-4f);
    p = fma(p, r, set1(1.3981999507e-3f));
    p = fma(p, r, set1(8.3334519073e-3f));
    p = fma(p, r, set1(4.1665795894e-2f));
    p = fma(p, r, set1(1.6666665459e-1f));
    p = fma(p, r, set1(5.0000001201e-1f));
    const vf r2 = mul(r, r);
    const vf y = add(fma(p, r2, r), set1(1.f));
    return mul(y, pow2n(n));
}

// x * sigmoid(x) = x / (1 + e^-x); relative error ~3e-7 where the result is not tiny.
inline vf silu(vf x) { return div(x, add(set1(1.f), exp(sub(zero(), x)))); }

// tanh-approximated GELU via the identity 0.5 (1 + tanh(u)) = sigmoid(2u):
// x / (1 + e^(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3). Relative error <= 1.5e-6 for |x| <= 4;
// up to ~1e-5 further into the negative tail (x < -6, results < 1e-10), where the fp32 rounding of
// the argument 2u (|2u| up to ~80) dominates (the scalar fp32 gelu_tanh has the same error there).
inline vf gelu_tanh(vf x) {
    const vf x3 = mul(mul(x, x), x);
    const vf u2 = mul(fma(x3, set1(0.044715f), x), set1(-2.f * 0.7978845608028654f));
    return div(x, add(set1(1.f), exp(u2)));
}

// erf-GELU 0.5 x (1 + erf(x / sqrt 2)) with Cephes' single-precision erf / erfc rational fits:
// |z| < 1: z * T(z^2); |z| >= 1: erfc(|z|) = e^(-z^2) / |z| * P(1/z^2) (P for |z| < 2, R beyond),
// with z^2 = x^2/2 split exactly (fma) before the exp. Relative error <= 1e-6 against the exact
// function (~5e-7 typical), including the far negative tail where 1 + erf(z) = erfc(|z|) is tiny.
inline vf gelu_erf(vf x) {
    const vf z = mul(x, set1(0.7071067811865476f));
    const vf a = abs(z);
    const vf z2 = mul(z, z);
    vf t = set1(7.853861353153693e-5f);
    t = fma(t, z2, set1(-8.010193625184903e-4f));
    t = fma(t, z2, set1(5.188327685732524e-3f));
    t = fma(t, z2, set1(-2.685381193529856e-2f));
    t = fma(t, z2, set1(1.128358514861418e-1f));
    t = fma(t, z2, set1(-3.761262582423300e-1f));
    t = fma(t, z2, set1(1.128379165726710e+0f));
    const vf small = add(set1(1.f), mul(z, t));  // 1 + erf(z), |z| < 1
    const vf q = div(set1(1.f), max(a, set1(1.f)));
    const vf y = mul(q, q);
    vf p = set1(2.326819970068386e-2f);
    p = fma(p, y, set1(-1.387039388740657e-1f));
    p = fma(p, y, set1(3.687424674597105e-1f));
    p = fma(p, y, set1(-5.824733027278666e-1f));
    p = fma(p, y, set1(6.210004621745983e-1f));
    p = fma(p, y, set1(-4.944515323274145e-1f));
    p = fma(p, y, set1(3.404879937665872e-1f));
    p = fma(p, y, set1(-2.741127028184656e-1f));
    p = fma(p, y, set1(5.638259427386472e-1f));
    vf r = set1(-1.047766399936249e+1f);
    r = fma(r, y, set1(1.297719955372516e+1f));
    r = fma(r, y, set1(-7.495518717768503e+0f));
    r = fma(r, y, set1(2.921019019210786e+0f));
    r = fma(r, y, set1(-1.015265279202700e+0f));
    r = fma(r, y, set1(4.218463358204948e-1f));
    r = fma(r, y, set1(-2.820767439740514e-1f));
    r = fma(r, y, set1(5.641895067754075e-1f));
    const vf pr = select_lt(a, set1(2.f), p, r);
    // z^2 = x^2 / 2 split exactly as hi + lo from x itself (z = x / sqrt 2 is already rounded and
    // its error, times z^2 ~ 70 in the tail, would cost ~1e-5 relative)
    const vf xx = mul(x, x);
    const vf hi = mul(xx, set1(0.5f));
    const vf lo = mul(fma(x, x, sub(zero(), xx)), set1(0.5f));
    const vf erfc_a = mul(mul(exp(sub(zero(), hi)), sub(set1(1.f), lo)), mul(q, pr));
    // 1 + erf(z): z >= 1 -> 2 - erfc(a); z <= -1 -> erfc(a)
    const vf large = select_lt(z, zero(), erfc_a, sub(set1(2.f), erfc_a));
    const vf onep = select_lt(a, set1(1.f), small, large);
    return mul(mul(x, set1(0.5f)), onep);
}

// A vector loaded once and used by several FMAs: GCC otherwise folds the load into every FMA as a
// memory operand (one load per use), which leaves a small tile (attention's score and P*V tiles)
// bound by the load ports.
inline vf in_register(vf v) {
#if (defined(DEEPSTACK_SIMD_AVX512) || defined(DEEPSTACK_SIMD_AVX2)) && defined(__GNUC__)
    __asm__("" : "+v"(v));
#elif defined(DEEPSTACK_SIMD_NEON) && defined(__GNUC__)
    __asm__("" : "+w"(v));
#endif
    return v;
}

// Loads of W weights of a given storage type as fp32 (tag dispatch for the templated kernels).
struct F32Src {
    using T = float;
    static vf load(const float* p) { return simd::load(p); }
    static vf load_n(const float* p, int n) { return simd::load_n(p, n); }
    static float scalar(const float* p) { return *p; }
};
struct BF16Src {
    using T = uint16_t;
    static vf load(const uint16_t* p) { return simd::load_bf16(p); }
    static vf load_n(const uint16_t* p, int n) { return simd::load_bf16_n(p, n); }
    static float scalar(const uint16_t* p) { return bf16_to_f32(*p); }
};
struct F16Src {
    using T = uint16_t;
    static vf load(const uint16_t* p) { return simd::load_f16(p); }
    static vf load_n(const uint16_t* p, int n) { return simd::load_f16_n(p, n); }
    static float scalar(const uint16_t* p) { return f16_to_f32(*p); }
};

}  // namespace simd

}  // namespace DEEPSTACK_KERNEL_LEVEL
}  // namespace deepstack::detail

#endif  // DEEPSTACK_KERNEL_LEVEL
