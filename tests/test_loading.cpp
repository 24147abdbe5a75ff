#include <doctest/doctest.h>
#include <deepstack.hpp>

using namespace deepstack;
static const std::string kData = DEEPSTACK_TEST_DATA;

TEST_CASE("config.json of the fixtures parses") {
    auto c = load_model_config(kData + "/fixtures/tiny-image/model/config.json");
    CHECK(c.text.hidden_size == 64);
    CHECK(c.text.head_dim == 32);
    CHECK(c.text.mrope_section == std::array<int, 3>{6, 5, 5});
    CHECK(c.vision.deepstack_visual_indexes == std::vector<int>{1, 2});
    CHECK(c.tie_word_embeddings);
    CHECK(c.image_token_id == 505);
    auto s = load_model_config(kData + "/fixtures/tiny-stack/model/config.json");
    CHECK(s.vision.fusion.type == FusionConfig::Type::Stack);
    CHECK(s.vision.fusion.scale == 2);
}

TEST_CASE("safetensors of the fixtures map and validate") {
    auto ws = WeightStore::open_folder(kData + "/fixtures/tiny-video-4raw/model");
    const auto& t = ws.get("model.visual.patch_embed.proj.weight", {32, 3, 2, 16, 16});
    CHECK(t.dtype == DType::BF16);
    CHECK_THROWS_WITH_AS(ws.get("model.visual.patch_embed.proj.weight", {32, 1536}),
                         doctest::Contains("has shape [32, 3, 2, 16, 16], expected [32, 1536]"), Error);
    CHECK_THROWS_WITH_AS(ws.get("nope", {1}), doctest::Contains("missing tensor 'nope'"), Error);
}
