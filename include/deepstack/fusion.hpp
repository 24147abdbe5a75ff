// deepstack/fusion.hpp - how visual features enter the decoder:
//   inject: the final merger's tokens replace the pad embeddings; DeepStack level k is added at
//           the visual positions after decoder layer k (Qwen3-VL).
//   gated:  a softmax gate over the levels mixes them into one token per position, then LayerNorm.
//   stack:  DeepStack-L: the high-resolution stream's tokens, grouped by 2-D neighbours into r*r
//           stacks, are added to the input of layers layer_start + q*layer_interval.
//   stack_vit: DeepStack-V stacks inside the vision encoder (vision_stacks.hpp); its features
//           then enter the decoder as inject's do.
#pragma once
#include "text.hpp"
#include "vision.hpp"

namespace deepstack::detail {

// The visual part of a prompt as the decoder consumes it. Rows follow the prompt's visual
// positions in order.
struct VisualEmbedding {
    struct Level {
        int layer = 0;
        bool before = false;     // add to the layer's input (true) or output (false)
        std::vector<float> rows; // [V, D]
    };
    int64_t tokens = 0;          // V
    std::vector<float> embeds;   // [V, D] replacing the pad-token embeddings
    std::vector<Level> levels;

    std::vector<Injection> injections() const {
        std::vector<Injection> out;
        for (const auto& l : levels) out.push_back({l.layer, l.before, l.rows.data()});
        return out;
    }
};

// Host control over DeepStack: switch the per-layer additions off, or keep only some levels.
struct FusionOptions {
    bool deepstack = true;         // false: visual tokens only at the input, no per-layer additions
                                   // (stack_vit: the stacks inside the vision tower stay)
    std::vector<int> levels;       // inject scheme: keep only these level indexes (empty = all)
};

// Qwen3-VL: level k after layer k.
inline VisualEmbedding fuse_inject(VisionFeatures f, const FusionOptions& opt = {}) {
    VisualEmbedding out;
    out.tokens = f.tokens;
    out.embeds = std::move(f.embeds);
    if (!opt.deepstack) return out;
    for (size_t k = 0; k < f.deepstack.size(); ++k) {
        const bool keep = opt.levels.empty() || std::find(opt.levels.begin(), opt.levels.end(), int(k)) != opt.levels.end();
        if (keep) out.levels.push_back({int(k), false, std::move(f.deepstack[k])});
    }
    return out;
}

// Gated fusion: levels G_0..G_{K-1} = DeepStack mergers, G_K = final merger.
// Per token n: a = mean_l G_l[n]; g = softmax(gate_proj(a)); fused = LayerNorm(sum_l g_l G_l[n]).
inline VisualEmbedding fuse_gated(const VisionFeatures& f, const GatedFusionWeights& W, float eps, int64_t D,
                                  const Trace& trace = {}, const std::string& trace_prefix = "image") {
    std::vector<const float*> levels;
    for (const auto& d : f.deepstack) levels.push_back(d.data());
    levels.push_back(f.embeds.data());
    const int64_t L = int64_t(levels.size()), N = f.tokens;
    std::vector<float> mean(size_t(N * D), 0.f), gate_logits(size_t(N * L)), mixed(size_t(N * D), 0.f);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t l = 0; l < L; ++l)
            for (int64_t c = 0; c < D; ++c) mean[size_t(n * D + c)] += levels[size_t(l)][n * D + c] / float(L);
    detail::matmul(mean.data(), N, W.gate_proj.w, gate_logits.data(), W.gate_proj.b.data());
    for (int64_t n = 0; n < N; ++n) {
        float* g = gate_logits.data() + n * L;
        const float mx = *std::max_element(g, g + L);
        float sum = 0.f;
        for (int64_t l = 0; l < L; ++l) sum += g[l] = std::exp(g[l] - mx);
        for (int64_t l = 0; l < L; ++l) g[l] /= sum;
        for (int64_t l = 0; l < L; ++l)
            for (int64_t c = 0; c < D; ++c) mixed[size_t(n * D + c)] += g[l] * levels[size_t(l)][n * D + c];
    }
    VisualEmbedding out;
    out.tokens = N;
    out.embeds.resize(size_t(N * D));
    detail::layernorm(mixed.data(), N, D, W.norm.w.data(), W.norm.b.data(), eps, out.embeds.data());
    if (trace) {
        std::vector<float> all;
        for (const float* l : levels) all.insert(all.end(), l, l + N * D);
        trace(trace_prefix + ".fusion_levels", {L, N, D}, all.data());
        trace(trace_prefix + ".fusion_gates", {N, L}, gate_logits.data());
        trace(trace_prefix + ".embeds_fused", {N, D}, out.embeds.data());
    }
    return out;
}

// DeepStack-L. global: the processor-sized stream; highres_embeds: the final-merger tokens of the
// same items at r times the size, [sum_i t_i * (r*gh_i) * (r*gw_i), D]; merged_grids: (t, gh, gw)
// of each item's global stream. Stack q = dy*r + dx holds highres token (r*i+dy, r*j+dx) for each
// global token (i, j); it is added to the input of layer layer_start + q*layer_interval.
inline VisualEmbedding fuse_stack(VisionFeatures global, const std::vector<float>& highres_embeds,
                                  const std::vector<std::array<int, 3>>& merged_grids, const FusionConfig& cfg, int64_t D,
                                  const FusionOptions& opt = {}, const Trace& trace = {}, const std::string& trace_prefix = "image") {
    const int r = cfg.scale;
    const int64_t N = global.tokens;
    std::vector<std::vector<float>> stacks(size_t(r * r), std::vector<float>(size_t(N * D)));
    int64_t g_row = 0, h_row = 0;  // running offsets in the global and high-res token lists
    for (const auto& g : merged_grids) {
        const int gh = g[1], gw = g[2], hw = gw * r;
        for (int tt = 0; tt < g[0]; ++tt) {
            for (int i = 0; i < gh; ++i)
                for (int j = 0; j < gw; ++j, ++g_row)
                    for (int dy = 0; dy < r; ++dy)
                        for (int dx = 0; dx < r; ++dx) {
                            const int64_t src = h_row + int64_t(r * i + dy) * hw + (r * j + dx);
                            std::copy(highres_embeds.begin() + src * D, highres_embeds.begin() + (src + 1) * D,
                                      stacks[size_t(dy * r + dx)].begin() + g_row * D);
                        }
            h_row += int64_t(gh) * r * hw;
        }
    }
    if (h_row * D != int64_t(highres_embeds.size()))
        throw Error("DeepStack-L: the high-resolution stream has " + std::to_string(highres_embeds.size() / size_t(D)) +
                    " tokens, expected " + std::to_string(h_row));
    if (trace) {
        std::vector<float> all;
        for (auto& s : stacks) all.insert(all.end(), s.begin(), s.end());
        trace(trace_prefix + ".stacks", {int64_t(r) * r, N, D}, all.data());
    }
    VisualEmbedding out;
    out.tokens = N;
    out.embeds = std::move(global.embeds);
    if (!opt.deepstack) return out;
    for (int q = 0; q < r * r; ++q)
        out.levels.push_back({cfg.layer_start + q * cfg.layer_interval, true, std::move(stacks[size_t(q)])});
    return out;
}

}  // namespace deepstack::detail
