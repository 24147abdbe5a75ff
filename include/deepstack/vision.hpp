// deepstack/vision.hpp - the vision encoder: patch embedding, interpolated learned
// position embedding, 2D rotary, LayerNorm blocks, DeepStack taps and the patch mergers.
#pragma once
#include "rope.hpp"
#include "weights.hpp"

#include <array>

namespace deepstack::detail {

// Output of the vision encoder for one or more visual items, in item order.
struct VisionFeatures {
    int64_t tokens = 0;                          // merged tokens over all items
    std::vector<float> embeds;                   // [tokens, D] final merger
    std::vector<std::vector<float>> deepstack;   // one [tokens, D] per deepstack_visual_indexes entry
};


// torch.linspace(0, end, steps) in float32 (symmetric evaluation from both ends).
inline float linspace_at(float end, int steps, int i) {
    if (steps == 1) return 0.f;
    const float step = end / float(steps - 1);
    return i < steps / 2 ? float(i) * step : end - float(steps - 1 - i) * step;
}

// Learned position embedding bilinearly interpolated (align corners) from the side x side table
// to an h x w grid, tiled t times, in merge-window order, written to out [t*h*w, Dv].
inline void position_embedding(const Matrix& table, int t, int h, int w, int merge, float* out) {
    const int side = int(std::lround(std::sqrt(double(table.rows))));
    const int64_t Dv = table.cols;
    std::vector<float> grid(size_t(h) * size_t(w) * size_t(Dv), 0.f);  // [h, w, Dv] row-major
    std::vector<float> r0(size_t(Dv), 0.f), r1(size_t(Dv), 0.f), r2(size_t(Dv), 0.f), r3(size_t(Dv), 0.f);
    for (int i = 0; i < h; ++i) {
        const float hs = linspace_at(float(side - 1), h, i);
        const int h0 = int(hs), h1 = std::min(h0 + 1, side - 1);
        const float dh = hs - float(h0);
        for (int j = 0; j < w; ++j) {
            const float ws = linspace_at(float(side - 1), w, j);
            const int w0 = int(ws), w1 = std::min(w0 + 1, side - 1);
            const float dw = ws - float(w0);
            const float c00 = (1 - dh) * (1 - dw), c01 = (1 - dh) * dw, c10 = dh * (1 - dw), c11 = dh * dw;
            weight_row(table, int64_t(h0) * side + w0, r0.data());
            weight_row(table, int64_t(h0) * side + w1, r1.data());
            weight_row(table, int64_t(h1) * side + w0, r2.data());
            weight_row(table, int64_t(h1) * side + w1, r3.data());
            float* g = grid.data() + (size_t(i) * size_t(w) + size_t(j)) * size_t(Dv);
            for (int64_t c = 0; c < Dv; ++c) g[c] = c00 * r0[size_t(c)] + c01 * r1[size_t(c)] + c10 * r2[size_t(c)] + c11 * r3[size_t(c)];
        }
    }
    size_t patch = 0;
    for_each_window_patch(t, h, w, merge, [&](int row, int col) {
        const float* g = grid.data() + (size_t(row) * size_t(w) + size_t(col)) * size_t(Dv);
        std::copy(g, g + Dv, out + patch++ * size_t(Dv));
    });
}

inline void linear_forward(const float* x, int64_t M, const Linear& l, float* y, Compute mode) {
    matmul(x, M, l.w, y, l.b.empty() ? nullptr : l.b.data(), mode);
}

// A vision block's activations, per thread, reused by every block and call: y [S, Dv] the normed
// input or a projection's output, qkv [S, 3*Dv] (later the MLP hidden [S, I]), attn [S, Dv].
struct VisionBlockWorkspace {
    Workspace normed, qkv_or_hidden, attention;
};

// One vision block over all patches S; `segments` are [begin, end) row ranges that attend
// only within themselves; cos/sin [S, dh/2].
inline void vision_block(float* x, int64_t S, const VisionBlockWeights& blk, const VisionConfig& cfg,
                         const std::vector<std::pair<int64_t, int64_t>>& segments, const float* cos_t, const float* sin_t,
                         Compute mode) {
    const int64_t Dv = cfg.hidden_size, I = cfg.intermediate_size;
    const int heads = cfg.num_heads, dh = cfg.head_dim();
    auto& ws = thread_workspace<VisionBlockWorkspace>();
    float* y = ws.normed.get(size_t(S * Dv));
    float* qkv = ws.qkv_or_hidden.get(size_t(S * std::max<int64_t>(3 * Dv, I)));
    float* attn = ws.attention.get(size_t(S * Dv));
    layernorm(x, S, Dv, blk.norm1.w.data(), blk.norm1.b.data(), 1e-6f, y);
    linear_forward(y, S, blk.qkv, qkv, mode);
    // qkv row = [q heads | k heads | v heads]: rotate q and k in place; attention reads the three
    // as [S, heads, dh] views with a row stride of 3*Dv.
#pragma omp parallel for schedule(static)
    for (int64_t s = 0; s < S; ++s)
        for (int h = 0; h < 2 * heads; ++h) rope_rotate_half(qkv + s * 3 * Dv + h * dh, dh, cos_t + s * (dh / 2), sin_t + s * (dh / 2));
    const float scale = 1.f / std::sqrt(float(dh));
    for (auto [b, e] : segments) {
        const float* q = qkv + b * 3 * Dv;
        attention(q, e - b, q + Dv, q + 2 * Dv, e - b, heads, heads, dh, scale, false, 0, attn + b * Dv, mode, 3 * Dv, 3 * Dv);
    }
    linear_forward(attn, S, blk.proj, y, mode);
    float* hidden = qkv;  // [S, I]
    add_layernorm(x, y, S, Dv, blk.norm2.w.data(), blk.norm2.b.data(), 1e-6f, y);  // x += y; y = LayerNorm(x)
    linear_forward(y, S, blk.fc1, hidden, mode);
    gelu_tanh_inplace(hidden, S * I);
    linear_forward(hidden, S, blk.fc2, y, mode);
    add_inplace(x, y, S * Dv);
}

// Patch merger: x [S, Dv] in merge-window order -> out [S/m², D].
inline std::vector<float> merge_patches(const float* x, int64_t S, const MergerWeights& m, const VisionConfig& cfg, Compute mode) {
    const int64_t Dv = cfg.hidden_size, merged = cfg.merged_dim(), N = S * Dv / merged, D = cfg.out_hidden_size;
    // temporaries in 2 MiB pages (big_vector): megabytes each, and 4 KiB page faults are slow here
    big_vector<float> z(size_t(S * Dv));  // viewed as [N, merged]: consecutive window rows concatenated
    if (m.postshuffle)
        layernorm(x, N, merged, m.norm.w.data(), m.norm.b.data(), 1e-6f, z.data());
    else
        layernorm(x, S, Dv, m.norm.w.data(), m.norm.b.data(), 1e-6f, z.data());
    big_vector<float> hidden(size_t(N * merged));
    std::vector<float> out(size_t(N * D));
    linear_forward(z.data(), N, m.fc1, hidden.data(), mode);
    gelu_erf_inplace(hidden.data(), int64_t(hidden.size()));
    linear_forward(hidden.data(), N, m.fc2, out.data(), mode);
    return out;
}

// One stream of patches through the vision tower: its residual stream and what its attention
// needs. A stream holds one or more items (images, videos), each in merge-window order.
struct VisionStream {
    int64_t patches = 0;                                // S
    std::vector<std::pair<int64_t, int64_t>> segments;  // [begin, end) rows of each (item, temporal patch)
    std::vector<float> cos_t, sin_t;                    // 2-D rotary of each patch [S, dh/2]
    big_vector<float> x;                                // the residual stream [S, Dv]
};

// The tower's input path: x = patch_embed(pixels) + the learned position embedding interpolated
// to each item's own grid. Traces "<names>patch_embed" and "<names>pos_embed".
inline VisionStream embed_patches(const VisionWeights& W, const VisionConfig& cfg, const float* pixels,
                                  const std::vector<std::array<int, 3>>& grids, const Trace& trace, const std::string& names) {
    const int merge = cfg.spatial_merge_size, dh = cfg.head_dim();
    const int64_t Dv = cfg.hidden_size;
    VisionStream st;
    int64_t& S = st.patches;
    for (auto& g : grids) {
        if (g[0] <= 0 || g[1] <= 0 || g[2] <= 0 || g[1] % merge || g[2] % merge)
            throw Error("vision grid (" + std::to_string(g[0]) + ", " + std::to_string(g[1]) + ", " + std::to_string(g[2]) +
                        ") must be positive with h and w multiples of " + std::to_string(merge));
        for (int tt = 0; tt < g[0]; ++tt) {
            st.segments.emplace_back(S, S + int64_t(g[1]) * g[2]);
            S += int64_t(g[1]) * g[2];
        }
    }
    st.x = big_vector<float>(size_t(S * Dv));
    linear_forward(pixels, S, W.patch_embed, st.x.data(), W.compute);
    if (trace) trace(names + "patch_embed", {S, Dv}, st.x.data());

    big_vector<float> pos(size_t(S * Dv));
    st.cos_t.resize(size_t(S * dh / 2));
    st.sin_t.resize(size_t(S * dh / 2));
    int64_t row = 0;
    for (auto& g : grids) {
        position_embedding(W.pos_embed, g[0], g[1], g[2], merge, pos.data() + row * Dv);
        vision_rope_tables(g[0], g[1], g[2], merge, dh, st.cos_t.data() + row * (dh / 2), st.sin_t.data() + row * (dh / 2));
        row += int64_t(g[0]) * g[1] * g[2];
    }
    if (trace) trace(names + "pos_embed", {S, Dv}, pos.data());
    add_inplace(st.x.data(), pos.data(), S * Dv);
    return st;
}

inline void run_vision_block(VisionStream& st, const VisionWeights& W, const VisionConfig& cfg, int block) {
    vision_block(st.x.data(), st.patches, W.blocks[size_t(block)], cfg, st.segments, st.cos_t.data(), st.sin_t.data(), W.compute);
}

// Rows added to the input of vision block `block` (DeepStack-V stacks): [S, Dv], aligned with
// the patches given to encode_vision.
struct VisionInjection {
    int block = 0;
    const float* rows = nullptr;
};


// Runs the vision encoder on the patches of one or more items.
// pixels: [sum_i t_i*h_i*w_i, patch_dim] in merge-window order per item (as the preprocessor
// makes them); grids: (t, h, w) per item in patch units. `trace_prefix` (e.g. "image") names the
// traced tensors "<prefix>.vision.block{i}", "<prefix>.embeds", "<prefix>.deepstack{k}".
// `injections` are added to the inputs of their blocks.
inline VisionFeatures encode_vision(const VisionWeights& W, const VisionConfig& cfg, const float* pixels,
                                    const std::vector<std::array<int, 3>>& grids, const Trace& trace = {},
                                    const std::string& trace_prefix = "image", const std::vector<detail::VisionInjection>& injections = {}) {
    using namespace detail;
    const int merge = cfg.spatial_merge_size;
    const int64_t Dv = cfg.hidden_size;
    VisionStream st = embed_patches(W, cfg, pixels, grids, trace, trace_prefix + ".vision.");
    const int64_t S = st.patches;

    VisionFeatures out;
    out.deepstack.resize(cfg.deepstack_visual_indexes.size());
    for (int b = 0; b < cfg.depth; ++b) {
        for (const VisionInjection& inj : injections)
            if (inj.block == b) add_inplace(st.x.data(), inj.rows, S * Dv);
        run_vision_block(st, W, cfg, b);
        if (trace) trace(trace_prefix + ".vision.block" + std::to_string(b), {S, Dv}, st.x.data());
        for (size_t k = 0; k < cfg.deepstack_visual_indexes.size(); ++k)
            if (cfg.deepstack_visual_indexes[k] == b)
                out.deepstack[k] = merge_patches(st.x.data(), S, W.deepstack_mergers[k], cfg, W.compute);
    }
    out.embeds = merge_patches(st.x.data(), S, W.merger, cfg, W.compute);
    out.tokens = S / (merge * merge);
    if (trace) {
        trace(trace_prefix + ".embeds", {out.tokens, cfg.out_hidden_size}, out.embeds.data());
        for (size_t k = 0; k < out.deepstack.size(); ++k)
            trace(trace_prefix + ".deepstack" + std::to_string(k), {out.tokens, cfg.out_hidden_size}, out.deepstack[k].data());
    }
    return out;
}

}  // namespace deepstack::detail
