// deepstack/kernels_attention_bf16.hpp - fast mode's attention: scores and P*V on bf16 queries,
// keys, values and probabilities (VDPBF16PS, or AMX tile products where active), fp32
// accumulation and an fp32 online softmax.
//
// A level body: kernels_levels.hpp compiles it once per SIMD level, inside that level's namespace and
// target region; included on its own it brings in the whole kernel layer.
#ifndef DEEPSTACK_KERNEL_LEVEL
#include "kernels.hpp"
#else

namespace deepstack::detail {
namespace DEEPSTACK_KERNEL_LEVEL {

#if defined(DEEPSTACK_HAVE_DPBF16)
namespace attn {

// Keys per block (one online-softmax update per query row): 256, four passes of the 64-key score
// loop: the per-row max, rescale and sums cost more against the halved dot products than in fp32,
// so they are spread over more keys than attention()'s blocks.
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
    auto* kt = reinterpret_cast<uint32_t*>(thread_workspace<AttentionWorkspace>().keys.get(size_t(Hkv * nkb * dpp * BKB)));
    auto* vt = reinterpret_cast<uint32_t*>(thread_workspace<AttentionWorkspace>().values.get(size_t(Hkv * nkb * (BKB / 2) * dv)));
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t blk = 0; blk < Hkv * nkb; ++blk) {
        const int64_t hk = blk / nkb, j0 = (blk % nkb) * BKB;
        const int bk = int(std::min<int64_t>(BKB, Tk - j0));
        const typename KV::T* kb = k + j0 * kvstride + hk * d;  // key jj of the block at kb + jj * kvstride
        const typename KV::T* vb = v + j0 * kvstride + hk * d;
        // each key row as pairs, [BKB][dpp], then 16 x 16 register transposes into [dpp][BKB]
        auto* rows = reinterpret_cast<uint32_t*>(thread_workspace<AttentionWorkspace>().key_rows.get(size_t(BKB * dpp)));
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
    const bool amx = use_amx && amx_active();
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
                            kt + hk * nkb * dpp * BKB, vt + hk * nkb * (BKB / 2) * dv, out, thread_workspace<AttentionWorkspace>().task.get(work_floats), amx);
#if defined(DEEPSTACK_HAVE_AMX)
        if (amx) _tile_release();
#endif
    }
}
#endif  // DEEPSTACK_HAVE_DPBF16

}  // namespace DEEPSTACK_KERNEL_LEVEL
}  // namespace deepstack::detail

#endif  // DEEPSTACK_KERNEL_LEVEL
