// deepstack/rope.hpp - rotary position embeddings: the 3D (t, h, w) positions of a prompt
// (interleaved M-RoPE) and the 2D rotary of the vision encoder.
#pragma once
#include "common.hpp"

#include <array>
#include <cmath>

namespace deepstack::detail {

// A block of visual placeholder tokens in the prompt: one image, or one temporal patch of a
// video, with its merged grid (gh x gw tokens, row-major).
struct VisualBlock {
    int token_id;  // image or video pad id
    int gh, gw;    // merged grid (patch grid / merge size)
};

// 3D positions of a token sequence, planar: pos[axis][i], axis 0 = t, 1 = h, 2 = w.
struct Positions {
    std::array<std::vector<int64_t>, 3> pos;
    int64_t next = 0;  // the position the next token gets on all three axes

    size_t size() const { return pos[0].size(); }
};

// Positions of `ids` continuing from `start`: text tokens get (p, p, p) and advance p by one; each
// run of pad tokens takes the next block of `blocks` (in prompt order) and gets (s, s+r, s+c),
// after which p = s + max(gh, gw). Throws when the pad tokens do not match the blocks.
inline Positions mrope_positions(const std::vector<int>& ids, const std::vector<VisualBlock>& blocks, int64_t start = 0) {
    Positions out;
    for (auto& axis : out.pos) axis.resize(ids.size());
    int64_t p = start;
    size_t b = 0;
    for (size_t i = 0; i < ids.size();) {
        const bool is_pad = b < blocks.size() && ids[i] == blocks[b].token_id;
        if (!is_pad) {
            for (auto& axis : out.pos) axis[i] = p;
            ++p;
            ++i;
            continue;
        }
        const VisualBlock& vb = blocks[b++];
        const size_t n = size_t(vb.gh) * size_t(vb.gw);
        if (i + n > ids.size())
            throw Error("prompt has fewer visual placeholder tokens than the visual input needs (" + std::to_string(n) + ")");
        for (size_t k = 0; k < n; ++k) {
            if (ids[i + k] != vb.token_id)
                throw Error("visual placeholder run is shorter than its grid (" + std::to_string(vb.gh) + "x" +
                            std::to_string(vb.gw) + " tokens)");
            out.pos[0][i + k] = p;
            out.pos[1][i + k] = p + int64_t(k) / vb.gw;
            out.pos[2][i + k] = p + int64_t(k) % vb.gw;
        }
        p += std::max(vb.gh, vb.gw);
        i += n;
    }
    if (b != blocks.size())
        throw Error("prompt has " + std::to_string(b) + " visual placeholder blocks but " + std::to_string(blocks.size()) +
                    " visual inputs were given");
    out.next = p;
    return out;
}

// cos/sin tables for the text decoder's interleaved M-RoPE: for each token, head_dim/2 angles
// (slot i uses the h axis when i%3==1 and i < 3*section[1], w when i%3==2 and i < 3*section[2],
// t otherwise). Output cos/sin [T, head_dim/2].
inline void mrope_tables(const Positions& p, size_t first, size_t count, int head_dim, double theta,
                         const std::array<int, 3>& section, float* cos_out, float* sin_out) {
    const int half = head_dim / 2;
    std::vector<float> inv_freq(static_cast<size_t>(half));
    std::vector<int> axis(static_cast<size_t>(half));
    for (int i = 0; i < half; ++i) {
        inv_freq[size_t(i)] = float(1.0 / std::pow(theta, double(2 * i) / head_dim));
        axis[size_t(i)] = (i % 3 == 1 && i < 3 * section[1]) ? 1 : (i % 3 == 2 && i < 3 * section[2]) ? 2 : 0;
    }
    for (size_t t = 0; t < count; ++t)
        for (int i = 0; i < half; ++i) {
            const float angle = float(p.pos[size_t(axis[size_t(i)])][first + t]) * inv_freq[size_t(i)];
            cos_out[t * size_t(half) + size_t(i)] = float(std::cos(double(angle)));
            sin_out[t * size_t(half) + size_t(i)] = float(std::sin(double(angle)));
        }
}

// Calls fn(row, col) for each patch of a t x h x w grid in merge-window order (t, block row,
// block col, row in block, col in block): the order of the preprocessor's patches.
template <typename Fn>
inline void for_each_window_patch(int t, int h, int w, int merge, Fn&& fn) {
    for (int tt = 0; tt < t; ++tt)
        for (int bh = 0; bh < h / merge; ++bh)
            for (int bw = 0; bw < w / merge; ++bw)
                for (int ih = 0; ih < merge; ++ih)
                    for (int iw = 0; iw < merge; ++iw) fn(bh * merge + ih, bw * merge + iw);
}

// cos/sin tables for the vision encoder's 2D rotary, one row per patch in merge-window order.
// head_dim dh; the first dh/4 angles use the patch row, the next dh/4 the patch column.
// Output cos/sin [t*h*w, dh/2].
inline void vision_rope_tables(int t, int h, int w, int merge, int head_dim, float* cos_out, float* sin_out) {
    const int half = head_dim / 2, quarter = head_dim / 4;
    std::vector<float> inv_freq(static_cast<size_t>(quarter));
    for (int k = 0; k < quarter; ++k) inv_freq[size_t(k)] = float(1.0 / std::pow(10000.0, double(2 * k) / half));
    size_t patch = 0;
    for_each_window_patch(t, h, w, merge, [&](int row, int col) {
        float* c = cos_out + patch * size_t(half);
        float* s = sin_out + patch * size_t(half);
        for (int k = 0; k < quarter; ++k) {
            const float a_row = float(row) * inv_freq[size_t(k)], a_col = float(col) * inv_freq[size_t(k)];
            c[k] = float(std::cos(double(a_row)));
            s[k] = float(std::sin(double(a_row)));
            c[quarter + k] = float(std::cos(double(a_col)));
            s[quarter + k] = float(std::sin(double(a_col)));
        }
        ++patch;
    });
}

}  // namespace deepstack::detail
