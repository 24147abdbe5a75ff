// Several images of different sizes in one prompt (tiny-image model): joint vs separate vision
// encoding, M-RoPE positions of a two-image prompt, Session logits vs the same computation done
// with the public pieces, and switching DeepStack off.
#include <doctest/doctest.h>
#include <deepstack.hpp>
#include "test_util.hpp"

using namespace deepstack;
using namespace deepstack::detail;
static const std::string kTiny = kData + "/fixtures/tiny-image/";

namespace {

// Toy tokenizer of the fixtures: character c is token ord(c) + 16.
void append_text(std::vector<int>& ids, const std::string& text) {
    for (unsigned char ch : text) ids.push_back(int(ch) + 16);
}

// A w x h crop of img at (x0, y0).
Image crop(const Image& img, int x0, int y0, int w, int h) {
    Image out;
    out.width = w;
    out.height = h;
    for (int y = y0; y < y0 + h; ++y) {
        const auto row = img.rgb.begin() + (long(y) * img.width + x0) * 3;
        out.rgb.insert(out.rgb.end(), row, row + long(w) * 3);
    }
    return out;
}


struct TwoImages {
    std::shared_ptr<const Model> model = Model::load(kTiny + "model");
    VisualInput a, b;
    std::vector<int> ids;

    TwoImages() {
        const Image img = load_image(kTiny + "inputs/image0_80x56.png");
        a = prepare_image(*model, img);                          // 80x56 -> 320x224, grid 1x14x20, 70 tokens
        b = prepare_image(*model, crop(img, 10, 8, 48, 40));     // 48x40 -> 288x256, grid 1x16x18, 72 tokens
        const ModelConfig& c = model->config;
        ids.push_back(501);  // <|im_start|>
        append_text(ids, "user\n");
        ids.push_back(c.vision_start_token_id);
        ids.insert(ids.end(), 70, c.image_token_id);
        ids.push_back(c.vision_end_token_id);
        append_text(ids, " vs ");
        ids.push_back(c.vision_start_token_id);
        ids.insert(ids.end(), 72, c.image_token_id);
        ids.push_back(c.vision_end_token_id);
        append_text(ids, "Compare.");
        ids.push_back(502);  // <|im_end|>
        append_text(ids, "\n");
        ids.push_back(501);
        append_text(ids, "assistant\n");
    }

    // The prompt's logits [L, V] computed with the public pieces: embed, encode each image on its
    // own, scatter the final-merger rows into the pad rows in prompt order, DeepStack level k added
    // after layer k (or zero rows when !deepstack), M-RoPE positions, decoder.
    std::vector<float> by_hand(bool deepstack) const {
        const ModelConfig& c = model->config;
        std::vector<float> h = embed_tokens(model->text, c.text, ids);  // [L, D]
        const int64_t D = c.text.hidden_size;
        std::vector<float> embeds;                                      // [142, D]
        std::vector<std::vector<float>> levels(c.vision.deepstack_visual_indexes.size());  // each [142, D]
        for (const VisualInput* v : {&a, &b}) {
            const VisionFeatures f = encode_vision(model->vision, c.vision, v->patches.pixels.data(), {v->patches.grid_thw});
            embeds.insert(embeds.end(), f.embeds.begin(), f.embeds.end());
            for (size_t k = 0; k < levels.size(); ++k) levels[k].insert(levels[k].end(), f.deepstack[k].begin(), f.deepstack[k].end());
        }
        std::vector<int64_t> rows;
        for (size_t i = 0; i < ids.size(); ++i)
            if (ids[i] == c.image_token_id) rows.push_back(int64_t(i));
        REQUIRE(int64_t(rows.size()) * D == int64_t(embeds.size()));
        for (size_t r = 0; r < rows.size(); ++r) std::copy_n(embeds.begin() + long(r) * D, D, h.begin() + rows[r] * D);
        std::vector<Injection> injections;
        for (size_t k = 0; k < levels.size(); ++k) {
            if (!deepstack) std::fill(levels[k].begin(), levels[k].end(), 0.f);
            injections.push_back({int(k), false, levels[k].data()});
        }
        const Positions pos = mrope_positions(ids, {{c.image_token_id, 7, 10}, {c.image_token_id, 8, 9}});
        KVCache cache;
        cache.max_tokens = 4096;
        return decode_tokens(model->text, c.text, cache, h, pos, 0, rows, injections, true);
    }
};

}  // namespace

TEST_CASE("two images of different sizes: encoded jointly or separately, the features agree") {
    TwoImages t;
    const VisionConfig& vc = t.model->config.vision;
    CHECK(t.a.patches.grid_thw == std::array<int, 3>{1, 14, 20});
    CHECK(t.b.patches.grid_thw == std::array<int, 3>{1, 16, 18});
    std::vector<float> pixels = t.a.patches.pixels;  // [280 + 288, 1536]
    pixels.insert(pixels.end(), t.b.patches.pixels.begin(), t.b.patches.pixels.end());
    const VisionFeatures joint = encode_vision(t.model->vision, vc, pixels.data(), {t.a.patches.grid_thw, t.b.patches.grid_thw});
    const VisionFeatures fa = encode_vision(t.model->vision, vc, t.a.patches.pixels.data(), {t.a.patches.grid_thw});
    const VisionFeatures fb = encode_vision(t.model->vision, vc, t.b.patches.pixels.data(), {t.b.patches.grid_thw});
    CHECK(joint.tokens == 142);
    CHECK(fa.tokens == 70);
    CHECK(fb.tokens == 72);
    auto concat = [](std::vector<float> x, const std::vector<float>& y) {
        x.insert(x.end(), y.begin(), y.end());
        return x;
    };
    CHECK(max_abs_diff(joint.embeds, concat(fa.embeds, fb.embeds)) <= 1e-5f);
    REQUIRE(joint.deepstack.size() == 2);
    for (size_t k = 0; k < joint.deepstack.size(); ++k) CHECK(max_abs_diff(joint.deepstack[k], concat(fa.deepstack[k], fb.deepstack[k])) <= 1e-5f);
    // The two images' features are really different (the check above could not pass by accident).
    CHECK(max_abs_diff(std::vector<float>(fa.embeds.begin(), fa.embeds.begin() + 64 * 70),
                       std::vector<float>(fb.embeds.begin(), fb.embeds.begin() + 64 * 70)) > 1e-2f);
}

TEST_CASE("two-image prompt: M-RoPE positions (hand-computed)") {
    TwoImages t;
    const int img = t.model->config.image_token_id;
    REQUIRE(t.ids.size() == 177);
    const Positions p = mrope_positions(t.ids, {{img, 7, 10}, {img, 8, 9}});
    auto at = [&](size_t i) { return std::array<int64_t, 3>{p.pos[0][i], p.pos[1][i], p.pos[2][i]}; };
    using P = std::array<int64_t, 3>;
    CHECK(at(0) == P{0, 0, 0});      // <|im_start|>
    CHECK(at(6) == P{6, 6, 6});      // <|vision_start|>
    CHECK(at(7) == P{7, 7, 7});      // image 1, token (0, 0)
    CHECK(at(16) == P{7, 7, 16});    // (0, 9): end of the first row of 10
    CHECK(at(17) == P{7, 8, 7});     // (1, 0)
    CHECK(at(76) == P{7, 13, 16});   // (6, 9): last token of the 7x10 grid
    CHECK(at(77) == P{17, 17, 17});  // <|vision_end|>: 7 + max(7, 10)
    CHECK(at(81) == P{21, 21, 21});  // last char of " vs "
    CHECK(at(82) == P{22, 22, 22});  // <|vision_start|>
    CHECK(at(83) == P{23, 23, 23});  // image 2, token (0, 0)
    CHECK(at(91) == P{23, 23, 31});  // (0, 8): end of the first row of 9
    CHECK(at(92) == P{23, 24, 23});  // (1, 0)
    CHECK(at(154) == P{23, 30, 31}); // (7, 8): last token of the 8x9 grid
    CHECK(at(155) == P{32, 32, 32}); // <|vision_end|>: 23 + max(8, 9)
    CHECK(at(176) == P{53, 53, 53}); // last "\n"
    CHECK(p.next == 54);

    Session s(t.model);
    s.prefill(t.ids, {t.a, t.b});
    CHECK(s.length() == 177);
    CHECK(s.next_position() == 54);
    // The images in the wrong order do not fit the pad runs.
    Session wrong(t.model);
    CHECK_THROWS_AS(wrong.prefill(t.ids, {t.b, t.a}), Error);
}

TEST_CASE("two-image prompt: Session logits equal the computation by hand; causal prefix agrees") {
    TwoImages t;
    Session s(t.model);
    const std::vector<float> logits = s.prefill(t.ids, {t.a, t.b}, true);  // [177, V]
    const std::vector<float> manual = t.by_hand(true);
    const float d = max_abs_diff(logits, manual);
    MESSAGE("session vs by hand, max abs diff: " << d);
    CHECK(d <= 1e-5f);

    // The tokens up to " vs " only see the first image: a prompt that stops there, with only that
    // image, gives the same logits for them.
    const int64_t V = t.model->config.text.vocab_size;
    const std::vector<int> prefix(t.ids.begin(), t.ids.begin() + 82);
    Session s1(t.model);
    const std::vector<float> part = s1.prefill(prefix, {t.a}, true);  // [82, V]
    CHECK(max_abs_diff(part, std::vector<float>(logits.begin(), logits.begin() + 82 * V)) <= 1e-5f);
    // A different second image changes the logits only from the second image on.
    VisualInput black = t.b;
    black.patches.pixels.assign(black.patches.pixels.size(), 0.f);
    Session s2(t.model);
    const std::vector<float> other = s2.prefill(t.ids, {t.a, black}, true);
    CHECK(max_abs_diff(std::vector<float>(other.begin(), other.begin() + 82 * V), std::vector<float>(logits.begin(), logits.begin() + 82 * V)) <= 1e-5f);
    CHECK(max_abs_diff(other, logits) > 1e-3f);
}

TEST_CASE("DeepStack off: different logits, equal to adding zero DeepStack rows") {
    TwoImages t;
    Session on(t.model);
    const std::vector<float> with = on.prefill(t.ids, {t.a, t.b}, true);
    Session::Options opt;
    opt.fusion.deepstack = false;
    Session off(t.model, opt);
    const std::vector<float> without = off.prefill(t.ids, {t.a, t.b}, true);
    const float change = max_abs_diff(with, without);
    MESSAGE("DeepStack on vs off, max abs logit change: " << change);
    CHECK(change > 1e-3f);
    CHECK(max_abs_diff(without, t.by_hand(false)) <= 1e-5f);
    // Text before the first image cannot see any visual token: identical either way.
    const int64_t V = t.model->config.text.vocab_size;
    CHECK(max_abs_diff(std::vector<float>(with.begin(), with.begin() + 7 * V), std::vector<float>(without.begin(), without.begin() + 7 * V)) == 0.f);
}
