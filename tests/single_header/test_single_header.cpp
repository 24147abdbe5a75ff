// Built with only build/single_include on the include path: the amalgamated header must be
// self-contained and give the same results as the modules.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <deepstack.hpp>

#include "../test_util.hpp"

#include <unistd.h>

#include <cstring>
#include <filesystem>

static const std::string kFixture = std::string(DEEPSTACK_TEST_DATA) + "/fixtures/tiny-image";

TEST_CASE("single header: the Engine's greedy reply on the tiny-image fixture is its golden continuation") {
    const std::filesystem::path dir = std::filesystem::temp_directory_path() / ("deepstack_single_header_" + std::to_string(::getpid()));
    copy_tree(kFixture + "/model", dir);
    write_text(dir / "tokenizer.json", toy_tokenizer_json());
    deepstack::Request request;
    request.images = {kFixture + "/inputs/image0_80x56.png"};
    request.prompt = "Describe this image.";
    request.sampling.max_new_tokens = 8;
    request.sampling.temperature = 0;
    const deepstack::Reply reply = deepstack::Engine::open(dir.string()).generate(request);
    std::filesystem::remove_all(dir);
    CHECK(reply.tokens == manifest_ids(kFixture, "generated_ids"));
    CHECK(reply.prompt_tokens == int(golden_input_ids(kFixture).size()));
}

TEST_CASE("single header: the tiny-image fixture's last logits match the golden data") {
    using namespace deepstack;
    using namespace deepstack::detail;
    auto model = Model::load(kFixture + "/model");
    WeightStore golden;
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
    Session session(model);
    auto image = prepare_image(*model, deepstack::load_image(kFixture + "/inputs/image0_80x56.png"));
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
