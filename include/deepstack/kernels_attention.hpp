// deepstack/kernels_attention.hpp - tiled attention with an online softmax (flash-attention style):
// per task (block of BQ queries, one head) the keys are visited in blocks of BK; scores for the block
// are computed against a transposed copy of the key block (SIMD over keys, no horizontal sums), the
// running max / sum are updated and the output rows rescaled, then P*V is accumulated (SIMD over d).
// Memory per thread is O(BQ*d + BK*d), plus one shared copy of K and V per call, never Tq x Tk.
// OpenMP over (query blocks x heads).
//
// A level body: kernels_levels.hpp compiles it once per SIMD level, inside that level's namespace and
// target region; included on its own it brings in the whole kernel layer.
#ifndef DEEPSTACK_KERNEL_LEVEL
#include "kernels.hpp"
#else

namespace deepstack::detail {
namespace DEEPSTACK_KERNEL_LEVEL {

namespace attn {

constexpr int BQ = 32;             // queries per task
constexpr int NVK = 4;             // vectors per key block
constexpr int BK = NVK * simd::W;  // keys per block

// Queries handled together by the score and P*V loops (they share each K / V vector load).
constexpr int QN = simd::W >= 16 ? 4 : 2;
constexpr int BQP = BQ + QN;  // rows of the per-task buffers (padding rows are scratch)

// The largest of s[0, n), n >= 1.
inline float row_max(const float* s, int64_t n) {
    using namespace simd;
    vf mx = set1(-INFINITY);
    int64_t j = 0;
    for (; j + W <= n; j += W) mx = simd::max(mx, load(s + j));
    float m = hmax(mx);
    for (; j < n; ++j) m = std::max(m, s[j]);
    return m;
}

// s[0, n) <- exp(s - m) in place; returns their sum.
inline float exp_shifted_sum(float* s, int64_t n, float m) {
    using namespace simd;
    const vf mv = set1(m);
    vf sum = zero();
    int64_t j = 0;
    for (; j + W <= n; j += W) {
        const vf p = simd::exp(sub(load(s + j), mv));
        store(s + j, p);
        sum = add(sum, p);
    }
    float total = hsum(sum);
    if (j < n) {
        const int r = int(n - j);
        store_n(s + j, simd::exp(sub(load_n(s + j, r), mv)), r);
        for (; j < n; ++j) total += s[j];
    }
    return total;
}

// One online-softmax step of a query row over a new key block: its scores s[0, lim) (lim >= 1)
// become exp(s - m), zero on [lim, width); the running max m and sum l are updated, and the row's
// unnormalised output o[0, n) is rescaled when the max grows.
inline void online_softmax_step(float* s, int lim, int width, float& m, float& l, float* o, int n) {
    using namespace simd;
    const float m_new = std::max(m, row_max(s, lim));
    if (m_new > m) {
        const float alpha = std::exp(m - m_new);
        if (l != 0.f) {
            l *= alpha;
            const vf av = set1(alpha);
            int t = 0;
            for (; t + W <= n; t += W) store(o + t, mul(load(o + t), av));
            for (; t < n; ++t) o[t] *= alpha;
        }
        m = m_new;
    }
    l += exp_shifted_sum(s, lim, m_new);
    std::fill(s + lim, s + width, 0.f);
}

// o_u [C*W floats at t0] += sum_jj p_u[jj] * v_jj for the QN rows u (p, o row strides BK and d);
// Tail: only the first n < W floats (the end of a row, C = 1).
template <int C, bool Tail = false>
inline void pv_chunk(const float* p, int jmax, const float* vbase, int64_t vstride, int t0, float* o, int d, int n = simd::W) {
    using namespace simd;
    auto ld = [&](const float* x) { return Tail ? load_n(x, n) : load(x); };
    vf a[QN][C];
    for (int u = 0; u < QN; ++u)
        for (int c = 0; c < C; ++c) a[u][c] = ld(o + u * d + t0 + c * W);
    for (int jj = 0; jj < jmax; ++jj) {
        const float* vr = vbase + jj * vstride + t0;
        vf b[QN];
        for (int u = 0; u < QN; ++u) b[u] = set1(p[u * BK + jj]);
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) {
            const vf vv = in_register(ld(vr + c * W));
            for (int u = 0; u < QN; ++u) a[u][c] = simd::fma(b[u], vv, a[u][c]);
        }
    }
    for (int u = 0; u < QN; ++u)
        for (int c = 0; c < C; ++c) {
            if (Tail) store_n(o + u * d + t0 + c * W, a[u][c], n);
            else store(o + u * d + t0 + c * W, a[u][c]);
        }
}

// One task: query rows [r0, r0 + bq) of kv head kvh, where row r is query position r / G of head
// kvh * G + r % G (G = Hq / Hkv: the heads sharing this K/V are processed together). work: >= 2*BQP*d + BQP*BK + 2*BQ floats.
// ktall: keys transposed per (kv head, key block) as [Hkv][nkb][d][BK], or null (then scores are
// direct dot products against the key rows: few queries, where transposing would cost more).
// q, k: rows of stride qstride, kvstride; vh: the value rows of head kvh, row j at vh + j * vstride.
inline void attention_task(const float* q, int64_t qstride, const float* k, int64_t kvstride, const float* vh, int64_t vstride, int64_t Tk,
                           int Hq, int Hkv, int d, float scale, bool causal, int64_t q_offset, int64_t r0, int bq, int kvh, float* out,
                           float* work, const float* ktall, int64_t nkb) {
    using namespace simd;
    const int G = Hq / Hkv;
    float* qs = work;                          // [BQP][d] scaled queries (rows >= bq zero)
    float* o = qs + BQP * d;                   // [BQP][d] unnormalised outputs
    float* sc = o + BQP * d;                   // [BQP][BK] scores, then probabilities
    float* mrow = sc + BQP * BK;               // [BQ] running max
    float* lrow = mrow + BQ;                   // [BQ] running sum
    for (int i = 0; i < bq; ++i) {
        const int64_t r = r0 + i;
        const float* qi = q + (r / G) * qstride + (kvh * G + r % G) * int64_t(d);
        for (int t = 0; t < d; ++t) qs[i * d + t] = qi[t] * scale;
        mrow[i] = -INFINITY;
        lrow[i] = 0.f;
    }
    std::fill(o, o + BQP * int64_t(d), 0.f);
    std::fill(qs + bq * d, qs + BQP * d, 0.f);
    // keys any query of the block can see
    const int64_t n_keys = causal ? std::min<int64_t>(Tk, std::max<int64_t>(0, q_offset + (r0 + bq - 1) / G + 1)) : Tk;
    for (int64_t j0 = 0; j0 < n_keys; j0 += BK) {
        const int bk = int(std::min<int64_t>(BK, n_keys - j0));
        if (ktall) {
            // scores from the pre-transposed key block kt[t][jj], QN queries at a time
            const float* kt = ktall + (int64_t(kvh) * nkb + j0 / BK) * int64_t(d) * BK;
            for (int i = 0; i < bq; i += QN) {
                const float* q0 = qs + i * d;
                vf a[QN][NVK];
                for (int u = 0; u < QN; ++u)
                    for (int c = 0; c < NVK; ++c) a[u][c] = zero();
                for (int t = 0; t < d; ++t) {
                    vf b[QN];
                    for (int u = 0; u < QN; ++u) b[u] = set1(q0[u * d + t]);
#pragma GCC unroll 4
                    for (int c = 0; c < NVK; ++c) {
                        const vf kv = in_register(load(kt + t * BK + c * W));
                        for (int u = 0; u < QN; ++u) a[u][c] = simd::fma(b[u], kv, a[u][c]);
                    }
                }
                for (int u = 0; u < QN; ++u)
                    for (int c = 0; c < NVK; ++c) store(sc + (i + u) * BK + c * W, a[u][c]);
            }
        } else {
            // few queries: direct dot products along d against the key rows, four keys at a time
            const float* kb = k + j0 * kvstride + int64_t(kvh) * d;
            for (int i = 0; i < bq; ++i) {
                const float* qi = qs + i * d;
                float* s = sc + i * BK;
                int jj = 0;
                for (; jj < bk; jj += 4) {
                    const int nk = std::min(4, bk - jj);
                    const float* kr[4];
                    for (int u = 0; u < 4; ++u) kr[u] = kb + int64_t(jj + std::min(u, nk - 1)) * kvstride;
                    vf a[4] = {zero(), zero(), zero(), zero()};
                    int t = 0;
                    for (; t + W <= d; t += W) {
                        const vf qv = load(qi + t);
                        for (int u = 0; u < 4; ++u) a[u] = simd::fma(qv, load(kr[u] + t), a[u]);
                    }
                    if (t < d) {
                        const vf qv = load_n(qi + t, d - t);
                        for (int u = 0; u < 4; ++u) a[u] = simd::fma(qv, load_n(kr[u] + t, d - t), a[u]);
                    }
                    for (int u = 0; u < nk; ++u) s[jj + u] = hsum(a[u]);
                }
            }
        }
        // online softmax update per query; probabilities overwrite the scores, zero past the limit
        int jmax_all = 0;
        for (int i = 0; i < bq; ++i) {
            float* s = sc + i * BK;
            const int64_t lim64 = causal ? std::min<int64_t>(bk, q_offset + (r0 + i) / G + 1 - j0) : bk;
            const int lim = int(std::max<int64_t>(0, lim64));
            if (lim == 0) {
                std::fill(s, s + BK, 0.f);
                continue;
            }
            jmax_all = std::max(jmax_all, lim);
            online_softmax_step(s, lim, BK, mrow[i], lrow[i], o + i * int64_t(d), d);
        }
        if (jmax_all == 0) continue;
        // O += P V, QN queries at a time (probability rows past bq are zero scratch)
        std::fill(sc + bq * BK, sc + BQP * BK, 0.f);
        const float* vbase = vh + j0 * vstride;
        for (int i = 0; i < bq; i += QN) {
            const float* p = sc + i * BK;
            float* oi = o + i * int64_t(d);
            int t0 = 0;
            for (; t0 + 4 * W <= d; t0 += 4 * W) pv_chunk<4>(p, jmax_all, vbase, vstride, t0, oi, d);
            for (; t0 + W <= d; t0 += W) pv_chunk<1>(p, jmax_all, vbase, vstride, t0, oi, d);
            if (t0 < d) pv_chunk<1, true>(p, jmax_all, vbase, vstride, t0, oi, d, d - t0);
        }
    }
    for (int i = 0; i < bq; ++i) {
        const int64_t r = r0 + i;
        float* dst = out + ((r / G) * Hq + kvh * G + r % G) * int64_t(d);
        const float inv = lrow[i] > 0.f ? 1.f / lrow[i] : 0.f;
        for (int t = 0; t < d; ++t) dst[t] = o[i * int64_t(d) + t] * inv;
    }
}

// Decode attention fetches the K / V rows this many keys ahead (prefetch_row): the hardware
// prefetchers alone keep too few cache lines in flight for one sequential stream per thread. Into
// L2 (T1), not L1: 4 sequences' caches at 256 keys (112 MB, a 2B step, 2 threads on Zen 4) took
// 6.6 ms with T0 and 4.7-5.1 ms with T1; a longer distance did not help.
constexpr int64_t kPrefetchKeys = 4;
template <typename T>
inline void prefetch_row(const T* p, int n) {
    const char* b = reinterpret_cast<const char*>(p);
    for (int64_t i = 0; i < int64_t(n) * int64_t(sizeof(T)); i += 64) __builtin_prefetch(b + i, 0, 2);  // T1, any ISA
}

// Decode attention takes this many keys per pass (key_scores, value_rows): each query vector or
// output vector is loaded once for all of them (bf16 cache, a layer of the 2B, 2 threads: 256 keys
// 33 -> 24 us with other data streaming between layers, 30 -> 19 us from the caches; 1024 keys
// 115 -> 85 us; the same bits).
constexpr int kKeysPerPass = 4;

// The UN query rows q + u * d against the NK key rows kh + j * kvstride, times scale, into
// s[u * sstride + j] (UN and NK fixed at compile time so the UN x NK sums stay in registers).
template <typename KV, int NK, int UN>
inline void query_block_dots(const float* q, const typename KV::T* kh, int64_t kvstride, int d, float scale, float* s, int64_t sstride) {
    using namespace simd;
    vf a[UN][NK];
    for (int u = 0; u < UN; ++u)
        for (int j = 0; j < NK; ++j) a[u][j] = zero();
    int t = 0;
    for (; t + W <= d; t += W) {
        vf kv[NK];
        for (int j = 0; j < NK; ++j) kv[j] = KV::load(kh + j * kvstride + t);
        for (int u = 0; u < UN; ++u) {
            const vf qv = load(q + u * d + t);
            for (int j = 0; j < NK; ++j) a[u][j] = simd::fma(qv, kv[j], a[u][j]);
        }
    }
    if (t < d) {
        vf kv[NK];
        for (int j = 0; j < NK; ++j) kv[j] = KV::load_n(kh + j * kvstride + t, d - t);
        for (int u = 0; u < UN; ++u) {
            const vf qv = load_n(q + u * d + t, d - t);
            for (int j = 0; j < NK; ++j) a[u][j] = simd::fma(qv, kv[j], a[u][j]);
        }
    }
    for (int u = 0; u < UN; ++u)
        for (int j = 0; j < NK; ++j) s[u * sstride + j] = hsum(a[u][j]) * scale;
}

// s[h * sstride + j] = scale * (q_h . k_j[h / G]) for the Hq = Hkv * G query rows q_h = q + h * d and
// the NK key rows k_j = kr + j * kvstride (Hkv heads of d values each; KV::T values: simd::F32Src for
// an fp32 KV cache, BF16Src for fast mode's bf16 one). prefetch: fetch the NK rows kPrefetchKeys on.
template <typename KV, int NK>
inline void key_scores(const float* q, int G, int Hkv, const typename KV::T* kr, int64_t kvstride, int d, float scale, float* s,
                       int64_t sstride, bool prefetch) {
    for (int hk = 0; hk < Hkv; ++hk) {
        const typename KV::T* kh = kr + int64_t(hk) * d;
        if (prefetch)
            for (int j = 0; j < NK; ++j) prefetch_row(kh + (kPrefetchKeys + j) * kvstride, d);
        for (int g0 = 0; g0 < G; g0 += 4) {  // up to 4 query rows at a time
            const int64_t h0 = int64_t(hk) * G + g0;
            const float* qg = q + h0 * d;
            float* sg = s + h0 * sstride;
            switch (std::min(4, G - g0)) {
                case 1: query_block_dots<KV, NK, 1>(qg, kh, kvstride, d, scale, sg, sstride); break;
                case 2: query_block_dots<KV, NK, 2>(qg, kh, kvstride, d, scale, sg, sstride); break;
                case 3: query_block_dots<KV, NK, 3>(qg, kh, kvstride, d, scale, sg, sstride); break;
                default: query_block_dots<KV, NK, 4>(qg, kh, kvstride, d, scale, sg, sstride); break;
            }
        }
    }
}

// o[h] += sum over the NK keys j of p[h * pstride + j] * v_j[h / G] for every query head h, where
// v_j = vr + j * kvstride (as key_scores). A head's G query rows share each loaded value vector, and
// an output vector takes the NK products in registers before it is stored, in the order one key at
// a time would add them. prefetch: as key_scores.
template <typename KV, int NK>
inline void value_rows(const typename KV::T* vr, int64_t kvstride, const float* p, int64_t pstride, int G, int Hkv, int d, float* o,
                       bool prefetch) {
    using namespace simd;
    for (int hk = 0; hk < Hkv; ++hk) {
        const typename KV::T* vh = vr + int64_t(hk) * d;
        if (prefetch)
            for (int j = 0; j < NK; ++j) prefetch_row(vh + (kPrefetchKeys + j) * kvstride, d);
        int t = 0;
        for (; t + W <= d; t += W) {
            vf vals[NK];
            for (int j = 0; j < NK; ++j) vals[j] = KV::load(vh + j * kvstride + t);
            for (int g = 0; g < G; ++g) {
                const int64_t h = int64_t(hk) * G + g;
                vf acc = load(o + h * d + t);
                for (int j = 0; j < NK; ++j) acc = simd::fma(set1(p[h * pstride + j]), vals[j], acc);
                store(o + h * d + t, acc);
            }
        }
        for (; t < d; ++t)
            for (int g = 0; g < G; ++g) {
                const int64_t h = int64_t(hk) * G + g;
                for (int j = 0; j < NK; ++j) o[h * d + t] += p[h * pstride + j] * KV::scalar(vh + j * kvstride + t);
            }
    }
}

// The key chunks of a decode query over n_keys keys whose own work would take nt threads: each
// chunk is one task. A query gets the same chunks, and so the same bits, in any batch.
inline int64_t decode_chunks(int64_t n_keys, int nt) { return std::max<int64_t>(1, std::min<int64_t>(n_keys / 64, 4 * nt)); }

// Decode attention of `count` sequences, one query row per head each, against its own cache (rows
// kvstride apart, >= Hkv * d; KV::T values, as key_scores), in one parallel region: the tasks are the
// sequences' key chunks. A task streams its K rows, then its V rows, for all heads at once - a
// position's heads are contiguous in the cache, so every task reads two sequential streams (a task
// per head would read small pieces far apart) - and keeps its own softmax (max m, sum l,
// unnormalised output o per head). Then each (sequence, head) merges its chunks by their maxima.
template <typename KV>
inline void attention_decode(const DecodeQueryOf<typename KV::T>* queries, int count, int64_t kvstride, int Hq, int Hkv, int d, float scale) {
    using namespace simd;
    const int G = Hq / Hkv;
    const int64_t hd = int64_t(Hq) * d, part_floats = hd + 2 * Hq;  // per chunk: o [Hq][d], then m [Hq], l [Hq]
    std::vector<int64_t> first(size_t(count) + 1, 0);  // query i's chunks are tasks [first[i], first[i + 1])
    double flops = 0;
    for (int i = 0; i < count; ++i) {
        const double f = 2.0 * double(queries[i].n_keys) * double(Hq) * double(d);  // Q K^T and P V
        first[size_t(i) + 1] = first[size_t(i)] + decode_chunks(queries[i].n_keys, omp_threads_for(f));
        flops += f;
    }
    const int64_t tasks = first[size_t(count)];
    const int nt = omp_threads_for(flops);
    float* part = thread_workspace<AttentionWorkspace>().partials.get(size_t(tasks * part_floats));
#pragma omp parallel num_threads(nt) if (nt > 1 && tasks > 1)
    {
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < tasks; ++task) {
            const size_t i = size_t(std::upper_bound(first.begin(), first.end(), task) - first.begin()) - 1;
            const DecodeQueryOf<typename KV::T>& qr = queries[i];
            const int64_t chunks = first[i + 1] - first[i], per = (qr.n_keys + chunks - 1) / chunks;
            const int64_t j0 = (task - first[i]) * per, len = std::max<int64_t>(0, std::min(qr.n_keys, j0 + per) - j0);
            float* o = part + task * part_floats;
            float* m = o + hd;
            float* l = m + Hq;
            float* p = thread_workspace<AttentionWorkspace>().scores.get(size_t(Hq * per));  // [Hq][per] scores, then probabilities
            const typename KV::T* kc = qr.k + j0 * kvstride;  // the chunk's first key and value rows
            const typename KV::T* vc = qr.v + j0 * kvstride;
            int64_t j = 0;
            for (; j + kKeysPerPass <= len; j += kKeysPerPass)
                key_scores<KV, kKeysPerPass>(qr.q, G, Hkv, kc + j * kvstride, kvstride, d, scale, p + j, per, j + kKeysPerPass + kPrefetchKeys <= len);
            for (; j < len; ++j) key_scores<KV, 1>(qr.q, G, Hkv, kc + j * kvstride, kvstride, d, scale, p + j, per, false);
            for (int h = 0; h < Hq; ++h) {
                float* ph = p + int64_t(h) * per;
                m[h] = len > 0 ? row_max(ph, len) : -INFINITY;
                l[h] = len > 0 ? exp_shifted_sum(ph, len, m[h]) : 0.f;
            }
            std::fill(o, o + hd, 0.f);
            for (j = 0; j + kKeysPerPass <= len; j += kKeysPerPass)
                value_rows<KV, kKeysPerPass>(vc + j * kvstride, kvstride, p + j, per, G, Hkv, d, o, j + kKeysPerPass + kPrefetchKeys <= len);
            for (; j < len; ++j) value_rows<KV, 1>(vc + j * kvstride, kvstride, p + j, per, G, Hkv, d, o, false);
        }
#pragma omp for schedule(static)
        for (int64_t ih = 0; ih < int64_t(count) * Hq; ++ih) {
            const size_t i = size_t(ih / Hq);
            const int h = int(ih % Hq);
            const float* pi = part + first[i] * part_floats;  // query i's chunks
            const int64_t chunks = first[i + 1] - first[i];
            float mmax = -INFINITY, lsum = 0.f;
            for (int64_t c = 0; c < chunks; ++c) mmax = std::max(mmax, pi[c * part_floats + hd + h]);
            float* dst = queries[i].out + int64_t(h) * d;
            std::fill(dst, dst + d, 0.f);
            if (mmax == -INFINITY) continue;  // no key visible
            for (int64_t c = 0; c < chunks; ++c) {
                const float* pc = pi + c * part_floats;
                const float w = std::exp(pc[hd + h] - mmax);  // 0 for an empty chunk (m = -inf)
                if (w == 0.f) continue;
                lsum += w * pc[hd + Hq + h];
                for (int t = 0; t < d; ++t) dst[t] += w * pc[int64_t(h) * d + t];
            }
            const float inv = 1.f / lsum;
            for (int t = 0; t < d; ++t) dst[t] *= inv;
        }
    }
}

}  // namespace attn

// Attention with grouped KV heads (Hq a multiple of Hkv).
// q [Tq, Hq, d], k/v [Tk, Hkv, d], out [Tq, Hq, d]; the rows of q and of k / v lie ldq and ldkv
// floats apart (0: packed, Hq * d and Hkv * d), so they may be views into one fused q|k|v array.
// causal: query i sits at absolute position q_offset + i and sees keys 0..q_offset+i.
// Tiled with an online softmax; softmax uses simd::exp (~2 ulp), so results differ from
// attention_ref by a few ulp of the output magnitude.
inline void attention(const float* q, int64_t Tq, const float* k, const float* v, int64_t Tk, int Hq, int Hkv, int d,
                      float scale, bool causal, int64_t q_offset, float* out, int64_t ldq = 0, int64_t ldkv = 0) {
    if (Tq <= 0 || Hq <= 0 || d <= 0) return;
    if (Hkv <= 0 || Hq % Hkv != 0) throw Error("attention: Hq must be a multiple of Hkv");
    const int64_t qstride = ldq ? ldq : int64_t(Hq) * d, kvstride = ldkv ? ldkv : int64_t(Hkv) * d;
    const int G = Hq / Hkv;
    const int64_t rows = Tq * G;  // query rows per kv head
    const int64_t nqb = (rows + attn::BQ - 1) / attn::BQ;
    const int64_t tasks = nqb * Hkv;
    const size_t work_floats = size_t(2 * attn::BQP * int64_t(d) + attn::BQP * attn::BK + 2 * attn::BQ);
    const int nt = omp_threads_for(2.0 * double(Tq) * double(Tk) * double(Hq) * double(d));  // Q K^T and P V
    if (Tq == 1) {
        const DecodeQueryOf<float> query{q, k, v, causal ? std::min(Tk, std::max<int64_t>(0, q_offset + 1)) : Tk, out};
        return attn::attention_decode<simd::F32Src>(&query, 1, kvstride, Hq, Hkv, d, scale);
    }
    // With many queries, copy K and V once per call and share the copies: K transposed into
    // [Hkv][nkb][d][BK] (zero padded), V into [Hkv][Tk][d]. A head's value rows in v lie Hkv * d
    // floats apart, 4 KB for 16 heads of 64 or 8 of 128: a key block's rows all fall into the same
    // L1 sets and evict each other before the next query rows reuse them.
    const int64_t nkb = (Tk + attn::BK - 1) / attn::BK;
    float* ktall = nullptr;
    const float* vh = v;  // head kvh's value rows: vh + kvh * vhead, stride vstride
    int64_t vhead = d, vstride = kvstride;
    if (Tq >= 8 && Tk > 0) {
        ktall = thread_workspace<AttentionWorkspace>().keys.get(size_t(Hkv) * size_t(nkb) * size_t(d) * attn::BK);
        float* vall = thread_workspace<AttentionWorkspace>().values.get(size_t(Hkv) * size_t(Tk) * size_t(d));
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
        for (int64_t blk = 0; blk < Hkv * nkb; ++blk) {
            const int kvh = int(blk / nkb);
            const int64_t j0 = (blk % nkb) * attn::BK;
            const int bk = int(std::min<int64_t>(attn::BK, Tk - j0));
            float* kt = ktall + blk * int64_t(d) * attn::BK;
            for (int jj = 0; jj < bk; ++jj) {
                const int64_t at = (j0 + jj) * kvstride + int64_t(kvh) * d;
                float* vr = vall + (kvh * Tk + j0 + jj) * d;
                int t = 0;
                for (; t + simd::W <= d; t += simd::W) simd::store(vr + t, simd::load(v + at + t));
                for (; t < d; ++t) vr[t] = v[at + t];
                for (t = 0; t < d; ++t) kt[t * attn::BK + jj] = k[at + t];
            }
            for (int t = 0; t < d; ++t) std::fill(kt + t * attn::BK + bk, kt + (t + 1) * attn::BK, 0.f);
        }
        vh = vall;
        vhead = Tk * d;
        vstride = d;
    }
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1 && tasks > 1)
    for (int64_t task = 0; task < tasks; ++task) {
        // query blocks innermost: the threads work on one kv head at a time and share its keys and values
        const int64_t qb = task % nqb;
        const int kvh = int(task / nqb);
        const int64_t r0 = qb * attn::BQ;
        const int bq = int(std::min<int64_t>(attn::BQ, rows - r0));
        float* work = thread_workspace<AttentionWorkspace>().task.get(work_floats);
        attn::attention_task(q, qstride, k, kvstride, vh + kvh * vhead, vstride, Tk, Hq, Hkv, d, scale, causal, q_offset, r0, bq, kvh, out,
                             work, ktall, nkb);
    }
}

}  // namespace DEEPSTACK_KERNEL_LEVEL
}  // namespace deepstack::detail

#endif  // DEEPSTACK_KERNEL_LEVEL
