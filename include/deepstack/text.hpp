// deepstack/text.hpp - the Qwen3 text decoder: RMSNorm, GQA attention with per-head
// q/k RMSNorm and interleaved M-RoPE, SwiGLU MLP, the KV cache, and the hook that adds
// visual features to the hidden states at the visual positions (DeepStack).
#pragma once
#include "kv_cache_pool.hpp"
#include "rope.hpp"
#include "weights.hpp"

namespace deepstack::detail {

// Keys and values of the tokens so far, per layer [max_tokens][Hkv * head_dim] each: fp32, or bf16
// in fast mode where the CPU has vdpbf16ps (detail::kv_cache_bf16; decided at the first use). The
// whole context is reserved at the first use: big_alloc maps it without touching it, so memory is
// committed only as tokens are written, and the cache never moves (growing it by reallocation
// had copied and re-zeroed the whole cache at the first generated token after a prefill and at
// every doubling). A copy copies the tokens held, not the reservation. With a pool, the arrays
// come from an ended session's cache where one is kept, and go back to the pool at the end.
struct KVCache {
    int64_t length = 0;      // tokens cached
    int64_t max_tokens = 0;  // hard limit (context size)
    int64_t row = 0;         // values per token and layer (Hkv * head_dim); 0 until reserved
    KVArrays arrays;                    // per layer: [max_tokens, row] keys and values, fp32 or bf16
    std::shared_ptr<KVCachePool> pool;  // where the arrays come from and go back to; may be null
    bool bf16() const { return arrays.bf16(); }

    KVCache() = default;
    KVCache(KVCache&& o) noexcept { swap(o); }
    KVCache& operator=(KVCache&& o) noexcept {
        swap(o);
        return *this;
    }
    KVCache(const KVCache& o) : length(o.length), max_tokens(o.max_tokens), row(o.row), pool(o.pool) {
        copy_layers(o.arrays.k, arrays.k);
        copy_layers(o.arrays.v, arrays.v);
        copy_layers(o.arrays.k16, arrays.k16);
        copy_layers(o.arrays.v16, arrays.v16);
    }
    KVCache& operator=(const KVCache& o) {
        if (this != &o) *this = KVCache(o);
        return *this;
    }
    ~KVCache() {
        if (pool && row) pool->give(std::move(arrays), size_t(length * row));
    }

    // Checks that `extra` more tokens fit; reserves the context at the first call, as bf16 or fp32.
    void reserve_more(int64_t extra, const TextConfig& c, bool as_bf16) {
        const int64_t need = length + extra;
        if (need > max_tokens)
            throw Error("context is full: " + std::to_string(need) + " tokens needed, the context holds " +
                        std::to_string(max_tokens) + " (raise max_context)");
        if (row) return;
        const int64_t n = int64_t(c.num_key_value_heads) * c.head_dim;
        if (pool) arrays = pool->take(size_t(c.num_hidden_layers), size_t(max_tokens * n), as_bf16);
        const bool kept = !arrays.empty();
        try {
            for (int l = 0; !kept && l < c.num_hidden_layers; ++l) {
                if (as_bf16) {
                    arrays.k16.emplace_back(size_t(max_tokens * n));
                    arrays.v16.emplace_back(size_t(max_tokens * n));
                } else {
                    arrays.k.emplace_back(size_t(max_tokens * n));
                    arrays.v.emplace_back(size_t(max_tokens * n));
                }
            }
        } catch (const std::bad_alloc&) {
            arrays = KVArrays();
            throw Error("cannot reserve address space for a KV cache of " + std::to_string(max_tokens) + " tokens (" +
                        std::to_string(2 * c.num_hidden_layers * max_tokens * n * int64_t(as_bf16 ? 2 : 4) >> 20) +
                        " MiB): lower Session::Options::max_context");
        }
        row = n;
    }

private:
    void swap(KVCache& o) noexcept {
        std::swap(length, o.length), std::swap(max_tokens, o.max_tokens), std::swap(row, o.row);
        std::swap(arrays, o.arrays);
        pool.swap(o.pool);
    }
    template <typename T>
    void copy_layers(const std::vector<big_array<T>>& from, std::vector<big_array<T>>& to) {
        for (const auto& layer : from) {
            to.emplace_back(layer.size());
            std::copy(layer.data(), layer.data() + length * row, to.back().data());
        }
    }
};

// Visual features added to the hidden states at the visual rows of a chunk: before layer `layer`
// runs (its input) or after it (its output). Qwen3-VL adds DeepStack level k after layer k; the
// DeepStack paper's scheme adds stack q before layer layer_start + q*interval.
struct Injection {
    int layer = 0;
    bool before = false;
    const float* rows = nullptr;  // [visual rows, D], one per entry of the chunk's visual_rows
};


inline void add_rows(float* h, int64_t D, const std::vector<int64_t>& visual_rows, const float* rows) {
    for (size_t i = 0; i < visual_rows.size(); ++i) {
        float* dst = h + visual_rows[i] * D;
        const float* src = rows + int64_t(i) * D;
        for (int64_t c = 0; c < D; ++c) dst[c] += src[c];
    }
}

// The rows of a decoder pass that belong to one sequence: rows [first, first + rows) of h, which
// follow the cache->length tokens its cache holds. A prefill is one segment of T rows; a batched
// decode step one segment of one row per sequence.
struct Segment {
    KVCache* cache = nullptr;
    int64_t first = 0, rows = 0;
};

// A decoder layer's activations, per thread, reused by every layer and call: the [T, D] normed
// input, queries and attention output [T, Hq*hd], a projection's output [T, D], gate and up [T, I],
// and the rows' new keys and values [T, Hkv*hd] before they go into the caches.
struct DecoderLayerWorkspace {
    Workspace normed, queries, attention, projected, gate, up, new_keys, new_values;
};

// One decoder layer on h [T, D] (in place), the rows of several sequences (segments) at once: the
// norms and matrix products run over all T rows (the weights read once), the keys and values of
// each segment are appended to its own cache for `layer`, and each segment's queries attend to
// its own cache. cos_t / sin_t [T, hd/2]: each row's rotary angles. A sparse layer's MLP is the
// mixture of experts (moe.hpp), traced as "text.layer{i}.moe.*".
inline void decoder_layer(float* h, int64_t T, const TextLayerWeights& L, const TextConfig& c, const std::vector<Segment>& segments,
                          int layer, const float* cos_t, const float* sin_t, Compute mode, const Trace& trace = {}) {
    const int64_t D = c.hidden_size, hd = c.head_dim, Hq = c.num_attention_heads, Hkv = c.num_key_value_heads,
                  I = c.intermediate_size;
    auto& ws = thread_workspace<DecoderLayerWorkspace>();
    float* a = ws.normed.get(size_t(T * D));
    float* q = ws.queries.get(size_t(T * Hq * hd));
    float* o = ws.attention.get(size_t(T * Hq * hd));
    float* y = ws.projected.get(size_t(T * D));
    float* gate = ws.gate.get(size_t(T * I));
    float* up = ws.up.get(size_t(T * I));
    // the rows' keys and values: straight into the cache of a lone fp32 segment, else in the
    // workspace, then copied (or rounded to bf16) into each segment's cache
    const int64_t row = Hkv * hd;
    const bool direct = segments.size() == 1 && !segments[0].cache->bf16();
    float* kc = direct ? segments[0].cache->arrays.k[size_t(layer)].data() + segments[0].cache->length * row : ws.new_keys.get(size_t(T * row));
    float* vc = direct ? segments[0].cache->arrays.v[size_t(layer)].data() + segments[0].cache->length * row : ws.new_values.get(size_t(T * row));

    rmsnorm(h, T, D, L.input_norm.data(), c.rms_norm_eps, a);
    const Matrix* qkv_w[] = {&L.q, &L.k, &L.v};
    float* qkv_out[] = {q, kc, vc};
    matmul_shared_input(a, T, qkv_w, qkv_out, 3, mode);
    rmsnorm(q, T * Hq, hd, L.q_norm.data(), c.rms_norm_eps, q);
    rmsnorm(kc, T * Hkv, hd, L.k_norm.data(), c.rms_norm_eps, kc);
    for (int64_t t = 0; t < T; ++t) {
        for (int64_t hh = 0; hh < Hq; ++hh) rope_rotate_half(q + (t * Hq + hh) * hd, int(hd), cos_t + t * hd / 2, sin_t + t * hd / 2);
        for (int64_t hh = 0; hh < Hkv; ++hh) rope_rotate_half(kc + (t * Hkv + hh) * hd, int(hd), cos_t + t * hd / 2, sin_t + t * hd / 2);
    }
    const float scale = 1.f / std::sqrt(float(hd));
    std::vector<DecodeQueryBf16> decode_queries;  // the one-row segments on bf16 caches, attended together
    for (const Segment& s : segments) {
        KVCache& cache = *s.cache;
        const int64_t past = cache.length;
        const float *ks = kc + s.first * row, *vs = vc + s.first * row, *qs = q + s.first * Hq * hd;
        float* os = o + s.first * Hq * hd;
        if (cache.bf16()) {
            uint16_t* k16 = cache.arrays.k16[size_t(layer)].data();
            uint16_t* v16 = cache.arrays.v16[size_t(layer)].data();
            round_to_bf16(ks, s.rows * row, k16 + past * row);
            round_to_bf16(vs, s.rows * row, v16 + past * row);
            if (s.rows == 1)
                decode_queries.push_back({qs, k16, v16, past + 1, os});
            else
                attention_cached_bf16(qs, s.rows, k16, v16, past + s.rows, int(Hq), int(Hkv), int(hd), scale, os);
        } else {
            float* k = cache.arrays.k[size_t(layer)].data();
            float* v = cache.arrays.v[size_t(layer)].data();
            if (!direct) {
                std::copy(ks, ks + s.rows * row, k + past * row);
                std::copy(vs, vs + s.rows * row, v + past * row);
            }
            attention(qs, s.rows, k, v, past + s.rows, int(Hq), int(Hkv), int(hd), scale, true, past, os, mode);
        }
    }
    if (!decode_queries.empty()) attention_decode_bf16(decode_queries.data(), int(decode_queries.size()), int(Hq), int(Hkv), int(hd), scale);
    matmul(o, T, L.o, y, nullptr, mode);
    add_rmsnorm(h, y, T, D, L.post_norm.data(), c.rms_norm_eps, a);  // h += y; a = RMSNorm(h)
    if (L.moe) {
        moe_block(a, T, *L.moe, c, mode, y, trace, "text.layer" + std::to_string(layer) + ".moe");
    } else {
        const Matrix* gate_up_w[] = {&L.gate, &L.up};
        float* gate_up_out[] = {gate, up};
        matmul_shared_input(a, T, gate_up_w, gate_up_out, 2, mode);
        silu_mul(gate, up, gate, T * I);
        matmul(gate, T, L.down, y, nullptr, mode);
    }
    add_inplace(h, y, T * D);
}


// Token embeddings [ids.size(), D].
inline std::vector<float> embed_tokens(const TextWeights& W, const TextConfig& c, const std::vector<int>& ids) {
    std::vector<float> x(ids.size() * size_t(c.hidden_size));
    for (size_t i = 0; i < ids.size(); ++i) {
        if (ids[i] < 0 || ids[i] >= c.vocab_size)
            throw Error("token id " + std::to_string(ids[i]) + " is outside the vocabulary (" + std::to_string(c.vocab_size) + ")");
        detail::weight_row(W.embed, ids[i], x.data() + i * size_t(c.hidden_size));
    }
    return x;
}

// Logits [rows, V] of hidden states h [rows, D]: the final norm, then lm_head.
inline std::vector<float> final_logits(const TextWeights& W, const TextConfig& c, const float* h, int64_t rows, const Trace& trace = {}) {
    const int64_t D = c.hidden_size;
    std::vector<float> normed(size_t(rows * D)), logits(size_t(rows) * size_t(c.vocab_size));
    detail::rmsnorm(h, rows, D, W.norm.data(), c.rms_norm_eps, normed.data());
    if (trace) trace("text.final_norm", {rows, D}, normed.data());
    detail::matmul(normed.data(), rows, W.lm_head, logits.data(), nullptr, W.compute);
    return logits;
}

// Runs T tokens with hidden states h [T, D] (embeddings, visual features already scattered in)
// through the decoder, appending them to `cache`. pos/pos_first: the 3D positions of these
// tokens. visual_rows: rows of h holding visual tokens (for `injections`). Returns logits
// [T, V] when all_logits, else [1, V] for the last token. Traces "text.layer{i}",
// "text.final_norm" (and the mixture-of-experts tensors of sparse layers).
inline std::vector<float> decode_tokens(const TextWeights& W, const TextConfig& c, KVCache& cache, std::vector<float>& h,
                                        const Positions& pos, size_t pos_first, const std::vector<int64_t>& visual_rows,
                                        const std::vector<Injection>& injections, bool all_logits, const Trace& trace = {}) {
    const int64_t T = int64_t(h.size()) / c.hidden_size, D = c.hidden_size;
    cache.reserve_more(T, c, detail::kv_cache_bf16(W.compute));
    std::vector<float> cos_t(size_t(T * c.head_dim / 2)), sin_t(size_t(T * c.head_dim / 2));
    mrope_tables(pos, pos_first, size_t(T), c.head_dim, c.rope_theta, c.mrope_section, cos_t.data(), sin_t.data());
    auto inject = [&](int layer, bool before) {
        for (const auto& inj : injections)
            if (inj.layer == layer && inj.before == before) detail::add_rows(h.data(), D, visual_rows, inj.rows);
    };
    const std::vector<Segment> segments{{&cache, 0, T}};
    for (int l = 0; l < c.num_hidden_layers; ++l) {
        inject(l, true);
        detail::decoder_layer(h.data(), T, W.layers[size_t(l)], c, segments, l, cos_t.data(), sin_t.data(), W.compute, trace);
        inject(l, false);
        if (trace) trace("text.layer" + std::to_string(l), {T, D}, h.data());
    }
    cache.length += T;
    const int64_t rows = all_logits ? T : 1;
    return final_logits(W, c, h.data() + (T - rows) * D, rows, trace);
}

// One decode step of B sequences at once: tokens[b] is appended to caches[b] at M-RoPE position
// positions[b] (a generated token takes it on all three axes), and the B rows run through each
// layer together, so the weights are read once for the step. The caches must be distinct; a
// full one throws before any cache changes. Returns logits [B, V]; row b has the bits that
// sequence gets decoded alone (the matrix products give each row the same bits for up to
// kGemvRows rows, the attention runs per sequence).
inline std::vector<float> decode_step(const TextWeights& W, const TextConfig& c, const std::vector<KVCache*>& caches,
                                      const std::vector<int>& tokens, const std::vector<int64_t>& positions) {
    const int64_t B = int64_t(caches.size());
    if (B == 0 || tokens.size() != caches.size() || positions.size() != caches.size())
        throw Error("decode_step: one token and one position per cache, at least one");
    for (KVCache* cache : caches) cache->reserve_more(1, c, detail::kv_cache_bf16(W.compute));
    std::vector<float> h = embed_tokens(W, c, tokens);
    Positions pos;
    for (auto& axis : pos.pos) axis = positions;
    std::vector<float> cos_t(size_t(B * c.head_dim / 2)), sin_t(size_t(B * c.head_dim / 2));
    mrope_tables(pos, 0, size_t(B), c.head_dim, c.rope_theta, c.mrope_section, cos_t.data(), sin_t.data());
    std::vector<Segment> segments;
    for (int64_t b = 0; b < B; ++b) segments.push_back({caches[size_t(b)], b, 1});
    for (int l = 0; l < c.num_hidden_layers; ++l)
        detail::decoder_layer(h.data(), B, W.layers[size_t(l)], c, segments, l, cos_t.data(), sin_t.data(), W.compute);
    for (KVCache* cache : caches) cache->length += 1;
    return final_logits(W, c, h.data(), B);
}

}  // namespace deepstack::detail
