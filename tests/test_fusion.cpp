// The three fusion schemes on small cases worked out by hand (the golden fixtures tiny-gated and
// tiny-stack check them end to end against the reference).
#include <doctest/doctest.h>
#include <deepstack.hpp>

#include <cmath>

using namespace deepstack;
using namespace deepstack::detail;

namespace {

Matrix f32_matrix(const std::vector<float>& v, int64_t rows, int64_t cols) { return Matrix{DType::F32, v.data(), rows, cols, {}}; }

}  // namespace

TEST_CASE("inject: level k goes after decoder layer k; options switch levels off") {
    VisionFeatures f;
    f.tokens = 1;
    f.embeds = {1, 2};
    f.deepstack = {{3, 4}, {5, 6}, {7, 8}};
    VisualEmbedding all = fuse_inject(f);
    CHECK(all.embeds == std::vector<float>{1, 2});
    REQUIRE(all.levels.size() == 3);
    for (int k = 0; k < 3; ++k) {
        CHECK(all.levels[size_t(k)].layer == k);
        CHECK_FALSE(all.levels[size_t(k)].before);
    }
    CHECK(all.levels[2].rows == std::vector<float>{7, 8});

    FusionOptions only_1;
    only_1.levels = {1};
    VisualEmbedding one = fuse_inject(f, only_1);
    REQUIRE(one.levels.size() == 1);
    CHECK(one.levels[0].layer == 1);
    CHECK(one.levels[0].rows == std::vector<float>{5, 6});

    FusionOptions off;
    off.deepstack = false;
    CHECK(fuse_inject(f, off).levels.empty());
}

TEST_CASE("gated: softmax gate over the mean of the levels, weighted sum, LayerNorm") {
    // Two tokens, D = 2, levels G0 = DeepStack level 0, G1 = final merger.
    VisionFeatures f;
    f.tokens = 2;
    f.deepstack = {{1, 3, 0, 2}};  // G0: token0 (1, 3), token1 (0, 2)
    f.embeds = {3, 1, 4, 0};       // G1: token0 (3, 1), token1 (4, 0)
    // gate_proj [2 levels, D = 2]: logit_l = w_l . mean + b_l
    std::vector<float> gate_w = {1, 0, 0, 1}, gate_b = {0, 0.5f};
    GatedFusionWeights W;
    W.gate_proj = {f32_matrix(gate_w, 2, 2), gate_b};
    W.norm = {{2, 1}, {0, 10}};  // LayerNorm weight and bias
    const float eps = 1e-6f;
    VisualEmbedding out = fuse_gated(f, W, eps, 2);
    REQUIRE(out.embeds.size() == 4);
    CHECK(out.levels.empty());
    for (int n = 0; n < 2; ++n) {
        const float g0[2] = {f.deepstack[0][size_t(2 * n)], f.deepstack[0][size_t(2 * n + 1)]};
        const float g1[2] = {f.embeds[size_t(2 * n)], f.embeds[size_t(2 * n + 1)]};
        const double mean[2] = {(g0[0] + g1[0]) / 2.0, (g0[1] + g1[1]) / 2.0};
        const double l0 = mean[0], l1 = mean[1] + 0.5;  // rows of gate_w, plus bias
        const double e0 = std::exp(l0), e1 = std::exp(l1), p0 = e0 / (e0 + e1), p1 = e1 / (e0 + e1);
        const double mixed[2] = {p0 * g0[0] + p1 * g1[0], p0 * g0[1] + p1 * g1[1]};
        const double mu = (mixed[0] + mixed[1]) / 2, var = ((mixed[0] - mu) * (mixed[0] - mu) + (mixed[1] - mu) * (mixed[1] - mu)) / 2;
        const double inv = 1 / std::sqrt(var + eps);
        CHECK(out.embeds[size_t(2 * n)] == doctest::Approx((mixed[0] - mu) * inv * 2 + 0).epsilon(1e-5));
        CHECK(out.embeds[size_t(2 * n + 1)] == doctest::Approx((mixed[1] - mu) * inv * 1 + 10).epsilon(1e-5));
    }
}

TEST_CASE("stack: 2-D neighbour groups of the high-resolution grid, into layer inputs on schedule") {
    // Global grid 1 x 2 merged tokens (one item, t = 1), r = 2: high-res grid 2 x 4, D = 1.
    // High-res token (y, x) holds value 10*y + x.
    VisionFeatures global;
    global.tokens = 2;
    global.embeds = {100, 200};
    std::vector<float> highres;
    for (int y = 0; y < 2; ++y)
        for (int x = 0; x < 4; ++x) highres.push_back(float(10 * y + x));
    FusionConfig cfg;
    cfg.type = FusionConfig::Type::Stack;
    cfg.scale = 2;
    cfg.layer_start = 1;
    cfg.layer_interval = 2;
    VisualEmbedding out = fuse_stack(global, highres, {{1, 1, 2}}, cfg, 1);
    CHECK(out.embeds == std::vector<float>{100, 200});
    REQUIRE(out.levels.size() == 4);
    // Stack q = dy*2 + dx holds high-res (2i+dy, 2j+dx) for global token (i=0, j): j=0 -> x 0..1, j=1 -> x 2..3.
    const std::vector<std::vector<float>> expected = {{0, 2}, {1, 3}, {10, 12}, {11, 13}};
    for (int q = 0; q < 4; ++q) {
        CHECK(out.levels[size_t(q)].rows == expected[size_t(q)]);
        CHECK(out.levels[size_t(q)].before);
        CHECK(out.levels[size_t(q)].layer == 1 + 2 * q);
    }
    // A high-res stream of the wrong size is refused.
    highres.pop_back();
    CHECK_THROWS_AS(fuse_stack(global, highres, {{1, 1, 2}}, cfg, 1), Error);
}
