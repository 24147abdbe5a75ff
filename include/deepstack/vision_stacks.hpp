// deepstack/vision_stacks.hpp - DeepStack-V: the same items at r times the size run through the
// vision tower's input path and its first layer_start blocks; that hidden state, cut into r*r
// stacks of 2-D neighbours aligned with the processor-sized patches, is added to the inputs of
// blocks layer_start + q*layer_interval of the processor-sized stream.
#pragma once
#include "vision.hpp"

namespace deepstack::detail {

// Row, within one item's block of patches, of patch (tt, row, col) of a t x h x w grid in
// merge-window order (merge windows row by row, patches row by row inside a window).
inline int64_t window_order_row(int tt, int row, int col, int h, int w, int merge) {
    return int64_t(tt) * h * w + (int64_t(row / merge) * (w / merge) + col / merge) * merge * merge + (row % merge) * merge + col % merge;
}

// Cuts the high-resolution hidden state `highres` [sum_i t_i*(r*h_i)*(r*w_i), Dv] (items in
// order, each in its own merge-window order) into r*r stacks [P, Dv], P = sum_i t_i*h_i*w_i:
// stack q = dy*r + dx holds, for the processor-sized patch (tt, i, j) of an item, the high-res
// patch (tt, r*i + dy, r*j + dx) of the same item; rows follow the processor-sized patches'
// order. grids: (t, h, w) of each item's processor-sized stream. Returns [r*r, P, Dv].
inline std::vector<float> cut_stacks(const float* highres, int64_t highres_rows, const std::vector<std::array<int, 3>>& grids, int r,
                                     int merge, int64_t Dv) {
    int64_t P = 0;
    for (const auto& g : grids) P += int64_t(g[0]) * g[1] * g[2];
    const int64_t expected = P * r * r;
    if (highres_rows != expected)
        throw Error("DeepStack-V: the high-resolution stream has " + std::to_string(highres_rows) + " patches, expected " +
                    std::to_string(expected) + " (" + std::to_string(r) + "x" + std::to_string(r) + " per patch)");
    std::vector<float> stacks(size_t(r * r * P * Dv));
    int64_t row = 0, item_start = 0;  // the next processor-sized patch; the item's first high-res row
    for (const auto& g : grids) {
        const int H = r * g[1], W = r * g[2];
        for (int tt = 0; tt < g[0]; ++tt)
            for_each_window_patch(1, g[1], g[2], merge, [&](int i, int j) {
                for (int dy = 0; dy < r; ++dy)
                    for (int dx = 0; dx < r; ++dx) {
                        const float* src = highres + (item_start + window_order_row(tt, r * i + dy, r * j + dx, H, W, merge)) * Dv;
                        std::copy(src, src + Dv, stacks.begin() + ((dy * r + dx) * P + row) * Dv);
                    }
                ++row;
            });
        item_start += int64_t(g[0]) * H * W;
    }
    return stacks;
}

// The high-resolution stream's hidden state entering block layer_start: the tower's input path
// on its own grids, then blocks 0..layer_start-1, no taps. Traces "<prefix>.vision.highres_*".
inline big_vector<float> highres_hidden(const VisionWeights& W, const VisionConfig& cfg, const float* pixels,
                                        const std::vector<std::array<int, 3>>& grids, const Trace& trace, const std::string& prefix) {
    VisionStream st = embed_patches(W, cfg, pixels, grids, trace, prefix + ".vision.highres_");
    const int64_t Dv = cfg.hidden_size;
    for (int b = 0; b < cfg.fusion.layer_start; ++b) {
        run_vision_block(st, W, cfg, b);
        if (trace) trace(prefix + ".vision.highres_block" + std::to_string(b), {st.patches, Dv}, st.x.data());
    }
    if (trace) trace(prefix + ".vision.highres_hidden", {st.patches, Dv}, st.x.data());
    return std::move(st.x);
}

// DeepStack-V encoding: pixels / grids as for encode_vision (processor-sized stream), with
// highres_pixels / highres_grids the same items at r times the height and width. The features
// come from the processor-sized stream, the stacks added to its block inputs on the schedule of
// cfg.fusion. Traces "<prefix>.stacks" [r*r, P, Dv] besides encode_vision's tensors.
inline VisionFeatures encode_vision_stacked(const VisionWeights& W, const VisionConfig& cfg, const float* pixels,
                                            const std::vector<std::array<int, 3>>& grids, const float* highres_pixels,
                                            const std::vector<std::array<int, 3>>& highres_grids, const Trace& trace = {},
                                            const std::string& prefix = "image") {
    const FusionConfig& f = cfg.fusion;
    const int r = f.scale;
    if (highres_grids.size() != grids.size())
        throw Error("DeepStack-V: " + std::to_string(highres_grids.size()) + " high-resolution items for " + std::to_string(grids.size()) +
                    " items");
    for (size_t i = 0; i < grids.size(); ++i) {
        const auto& g = grids[i];
        const auto& h = highres_grids[i];
        if (h[0] != g[0] || int64_t(h[1]) != int64_t(r) * g[1] || int64_t(h[2]) != int64_t(r) * g[2])
            throw Error("DeepStack-V: item " + std::to_string(i) + " has the high-resolution grid (" + std::to_string(h[0]) + ", " +
                        std::to_string(h[1]) + ", " + std::to_string(h[2]) + "), expected " + std::to_string(r) + " times (" +
                        std::to_string(g[0]) + ", " + std::to_string(g[1]) + ", " + std::to_string(g[2]) + ") in height and width");
    }
    const int64_t Dv = cfg.hidden_size;
    std::vector<float> stacks;
    {
        const big_vector<float> hidden = highres_hidden(W, cfg, highres_pixels, highres_grids, trace, prefix);
        stacks = cut_stacks(hidden.data(), int64_t(hidden.size()) / Dv, grids, r, cfg.spatial_merge_size, Dv);
    }
    const int64_t P = int64_t(stacks.size()) / (int64_t(r) * r * Dv);
    if (trace) trace(prefix + ".stacks", {int64_t(r) * r, P, Dv}, stacks.data());
    std::vector<VisionInjection> injections;
    for (int q = 0; q < r * r; ++q) injections.push_back({f.stack_target(q), stacks.data() + int64_t(q) * P * Dv});
    return encode_vision(W, cfg, pixels, grids, trace, prefix, injections);
}

}  // namespace deepstack::detail
