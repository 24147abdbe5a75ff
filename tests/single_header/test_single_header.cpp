// Built with only build/single_include on the include path: the amalgamated header must be
// self-contained and give the same results as the modules.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <deepstack.hpp>

#include <cstring>

static const std::string kFixture = std::string(DEEPSTACK_TEST_DATA) + "/fixtures/tiny-image";

TEST_CASE("single header: the tiny-image fixture's last logits match the golden data") {
    auto model = deepstack::Model::load(kFixture + "/model");
    deepstack::WeightStore golden;
    golden.add_file(kFixture + "/golden.safetensors");
    const auto* ids_t = golden.find("input_ids");
    const auto* last_t = golden.find("last_logits");
    REQUIRE(ids_t);
    REQUIRE(last_t);
    std::vector<int> ids;
    for (int64_t i = 0; i < ids_t->numel(); ++i) {
        int64_t v;
        std::memcpy(&v, ids_t->data + 8 * i, 8);
        ids.push_back(int(v));
    }
    deepstack::Session session(model);
    auto image = deepstack::prepare_image(*model, deepstack::load_image(kFixture + "/inputs/image0_80x56.png"));
    auto logits = session.prefill(ids, {image});
    REQUIRE(int64_t(logits.size()) == last_t->numel());
    const float* golden_logits = reinterpret_cast<const float*>(last_t->data);
    float max_err = 0, max_mag = 0;
    for (size_t i = 0; i < logits.size(); ++i) {
        max_err = std::max(max_err, std::fabs(logits[i] - golden_logits[i]));
        max_mag = std::max(max_mag, std::fabs(golden_logits[i]));
    }
    CHECK(max_err <= 1e-3f * max_mag);
}
