// The Engine face (engine.hpp) on the golden fixtures' models, with the fixtures' toy tokenizer
// written as tokenizer.json: greedy replies against the golden continuations (image paths, decoded
// images, video frames and folders), one Engine on two threads, the process's OpenMP setting, the
// errors, the text and progress callbacks, model sampling defaults, history turns and chats against
// a fresh two-turn prompt, end tokens held back, a full context, and the caption example against
// deepstack-caption.
#include <doctest/doctest.h>

#include "test_util.hpp"
#include <deepstack.hpp>

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <thread>

using namespace deepstack;
namespace fs = std::filesystem;

namespace {

const std::string kFrames = kFixtures + "tiny-video-4raw/inputs";

// A scratch folder of this test program, removed at exit.
const fs::path& scratch() {
    static const struct Folder {
        fs::path path = fs::temp_directory_path() / ("deepstack_test_engine_" + std::to_string(::getpid()));
        ~Folder() { fs::remove_all(path); }
    } folder;
    return folder.path;
}

// A fixture's model folder with the toy tokenizer as tokenizer.json (and `extra` files).
std::string model_folder(const std::string& fixture, const std::string& name, const std::map<std::string, std::string>& extra = {}) {
    const fs::path dir = scratch() / name;
    copy_tree(kFixtures + fixture + "/model", dir);
    write_text(dir / "tokenizer.json", toy_tokenizer_json());
    for (const auto& [file, text] : extra) write_text(dir / file, text);
    return dir.string();
}

const Engine& image_engine() {
    static const Engine engine = Engine::open(model_folder("tiny-image", "tiny-image"));
    return engine;
}

const Engine& video_engine() {
    static const Engine engine = Engine::open(model_folder("tiny-video-4raw", "tiny-video-4raw"));
    return engine;
}

Request describe_image(int max_new_tokens) {
    Request r;
    r.images = {kImage};
    r.prompt = "Describe this image.";
    r.sampling.max_new_tokens = max_new_tokens;
    r.sampling.temperature = 0;
    return r;
}

std::vector<Image> fixture_frames() {
    std::vector<Image> frames;
    for (int i = 0; i < 4; ++i) frames.push_back(load_image(kFrames + "/frame0" + std::to_string(i) + "_256x128.png"));
    return frames;
}

Request what_happens(VideoInput video, int max_new_tokens) {
    Request r;
    r.video = std::move(video);
    r.prompt = "What happens?";
    r.sampling.max_new_tokens = max_new_tokens;
    r.sampling.temperature = 0;
    return r;
}

}  // namespace

TEST_CASE("Engine: greedy replies equal the golden continuations (image path, decoded image)") {
    const std::vector<int> golden = manifest_ids(kFixtures + "tiny-image", "generated_ids");
    std::string streamed;
    const Reply reply = image_engine().generate(describe_image(8), [&](std::string_view piece) {
        streamed += piece;
        return true;
    });
    CHECK(reply.tokens == golden);
    CHECK(reply.generated_tokens == 8);
    CHECK(reply.prompt_tokens == int(golden_input_ids(kFixtures + "tiny-image").size()));
    CHECK(reply.stop == StopReason::MaxTokens);
    CHECK(reply.text == std::string(8, '\n'));  // id 26 is '\n' in the toy vocabulary
    CHECK(streamed == reply.text);
    REQUIRE(reply.inputs.size() == 1);
    const InputInfo& in = reply.inputs[0];
    CHECK(!in.is_video);
    CHECK(in.path == kImage);
    CHECK((in.width == 80 && in.height == 56 && in.resized_width == 320 && in.resized_height == 224 && in.visual_tokens == 70));
    CHECK(reply.sampling.temperature == 0.f);
    CHECK(reply.sampling.max_new_tokens == 8);
    CHECK(reply.boxes.empty());
    for (double s : {reply.timings.preprocess_seconds, reply.timings.vision_seconds, reply.timings.prefill_seconds, reply.timings.decode_seconds})
        CHECK(s > 0);

    Request decoded = describe_image(8);
    decoded.images = {load_image(kImage)};
    const Reply from_pixels = image_engine().generate(decoded);
    CHECK(from_pixels.tokens == golden);
    CHECK(from_pixels.inputs.at(0).path.empty());
}

TEST_CASE("Engine: a video as decoded frames or as a folder of frames gives the golden continuation") {
    const std::vector<int> golden = manifest_ids(kFixtures + "tiny-video-4raw", "generated_ids");
    VideoInput frames;
    frames.frames = fixture_frames();
    frames.fps = 2;
    const Reply a = video_engine().generate(what_happens(frames, 8));
    CHECK(a.tokens == golden);
    CHECK(a.prompt_tokens == int(golden_input_ids(kFixtures + "tiny-video-4raw").size()));
    REQUIRE(a.inputs.size() == 1);
    CHECK(a.inputs[0].is_video);
    CHECK(a.inputs[0].frame_indices == std::vector<int>{0, 1, 2, 3});
    CHECK(a.inputs[0].fps == 2);

    VideoInput folder;
    folder.path = kFrames;
    const Reply b = video_engine().generate(what_happens(folder, 8));
    CHECK(b.tokens == golden);
    CHECK(b.text == a.text);
}

TEST_CASE("Engine: two threads calling generate on one Engine get the same text as one thread") {
    const Engine& engine = video_engine();
    VideoInput video;
    video.frames = fixture_frames();
    Request request = what_happens(video, 8);
    request.sampling.temperature = 0.8f;  // sampled with a fixed seed: the same text, also from threads
    request.sampling.seed = 11;
    const Reply alone = engine.generate(request);
    Reply replies[2];
    std::string errors[2];
    std::thread threads[2];
    for (int t = 0; t < 2; ++t)
        threads[t] = std::thread([&, t] {
            try {
                replies[t] = engine.generate(request);
            } catch (const std::exception& e) {
                errors[t] = e.what();
            }
        });
    for (auto& t : threads) t.join();
    for (int t = 0; t < 2; ++t) {
        CHECK(errors[t] == "");
        CHECK(replies[t].text == alone.text);
        CHECK(replies[t].tokens == alone.tokens);
    }
}

TEST_CASE("Engine: EngineOptions::threads applies to the engine's calls only; the process's OpenMP setting is unchanged") {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(3);
    EngineOptions options;
    options.threads = 1;
    const Engine engine = Engine::open(model_folder("tiny-image", "threads"), options);
    CHECK(omp_get_max_threads() == 3);
    int during = 0;
    engine.generate(describe_image(2), [&](std::string_view) {
        during = omp_get_max_threads();
        return true;
    });
    CHECK(during == 1);
    CHECK(omp_get_max_threads() == 3);
    int other_thread = 0;  // a thread started now sees the process's setting too
    std::thread([&] { other_thread = omp_get_max_threads(); }).join();
    CHECK(other_thread == saved);
    omp_set_num_threads(saved);
}

TEST_CASE("Engine: errors name the missing folder, the missing file and the bad option") {
    const std::string missing = (scratch() / "no-such-model").string();
    CHECK_THROWS_WITH_AS(Engine::open(missing), doctest::Contains(missing.c_str()), Error);
    const fs::path no_tokenizer = scratch() / "no-tokenizer";
    copy_tree(kFixtures + "tiny-image/model", no_tokenizer);
    CHECK_THROWS_WITH_AS(Engine::open(no_tokenizer.string()), doctest::Contains((no_tokenizer / "tokenizer.json").c_str()), Error);
    EngineOptions bad;
    bad.threads = -1;
    CHECK_THROWS_WITH_AS(Engine::open(kFixtures + "tiny-image/model", bad), doctest::Contains("threads"), Error);

    Request no_file = describe_image(2);
    no_file.images = {kFixtures + "no-such-image.png"};
    CHECK_THROWS_WITH_AS(image_engine().generate(no_file), doctest::Contains("no-such-image.png"), Error);
    Request empty_video = what_happens(VideoInput{}, 2);
    CHECK_THROWS_WITH_AS(video_engine().generate(empty_video), doctest::Contains("no path and no frames"), Error);
}

TEST_CASE("Engine: the text callback returning false stops the reply") {
    int pieces = 0;
    const Reply reply = image_engine().generate(describe_image(8), [&](std::string_view) { return ++pieces < 3; });
    CHECK(pieces == 3);
    CHECK(reply.stop == StopReason::Callback);
    CHECK(reply.generated_tokens == 3);
    CHECK(reply.text == "\n\n\n");
}

TEST_CASE("Engine: the progress callback reports preprocess, vision, prefill and decode in order") {
    std::vector<Stage> stages;
    Reply at_preprocess, at_prefill;
    const Reply reply = image_engine().generate(describe_image(4), {}, [&](Stage stage, const Reply& so_far) {
        stages.push_back(stage);
        if (stage == Stage::Preprocess) at_preprocess = so_far;
        if (stage == Stage::Prefill) at_prefill = so_far;
    });
    CHECK(stages == std::vector<Stage>{Stage::Preprocess, Stage::Vision, Stage::Prefill, Stage::Decode});
    CHECK(at_preprocess.inputs.size() == 1);
    CHECK(at_preprocess.timings.preprocess_seconds > 0);
    CHECK(at_prefill.prompt_tokens == reply.prompt_tokens);
    CHECK(at_prefill.timings.prefill_seconds > 0);
    CHECK(at_prefill.generated_tokens == 0);

    stages.clear();
    Request text_only;
    text_only.prompt = "Hi";
    text_only.sampling.max_new_tokens = 2;
    image_engine().generate(text_only, {}, [&](Stage stage, const Reply&) { stages.push_back(stage); });
    CHECK(stages == std::vector<Stage>{Stage::Preprocess, Stage::Prefill, Stage::Decode});
}

TEST_CASE("Engine: unset sampling fields take generation_config.json, set ones override it") {
    const Engine engine = Engine::open(model_folder(
        "tiny-image", "sampling", {{"generation_config.json", R"({"do_sample": true, "temperature": 0.7, "top_k": 20, "max_new_tokens": 3})"}}));
    const Sampling defaults = engine.default_sampling();
    CHECK(*defaults.temperature == 0.7f);
    CHECK(*defaults.top_k == 20);
    CHECK(*defaults.max_new_tokens == 3);
    Request request = describe_image(8);
    request.sampling.max_new_tokens.reset();
    const Reply greedy = engine.generate(request);
    CHECK(*greedy.sampling.temperature == 0.f);
    CHECK(*greedy.sampling.top_k == 20);
    CHECK(greedy.generated_tokens == 3);
    CHECK(greedy.tokens == std::vector<int>(3, 26));
}

TEST_CASE("Chat: a second turn on the reused cache gives the text of a fresh two-turn prompt") {
    const Engine& engine = video_engine();
    VideoInput video;
    video.frames = fixture_frames();
    Chat chat = engine.chat();
    const Reply first = chat.send(what_happens(video, 4));
    Request next;
    next.prompt = "And then?";
    next.sampling.max_new_tokens = 6;
    next.sampling.temperature = 0;
    const Reply second = chat.send(next);
    REQUIRE(second.generated_tokens > 0);
    CHECK(chat.tokens() == int(golden_input_ids(kFixtures + "tiny-video-4raw").size()) + first.generated_tokens + second.prompt_tokens - 1 +
                               second.generated_tokens);
    Request late_system = next;
    late_system.system = "Be brief.";
    CHECK_THROWS_WITH_AS(chat.send(late_system), doctest::Contains("system message"), Error);

    // The same conversation as one prompt: first turn, its reply, the second turn.
    using namespace deepstack::detail;
    const auto model = Model::load(kFixtures + "tiny-video-4raw/model");
    const Tokenizer toy = Tokenizer::parse(toy_tokenizer_json(), "toy");
    const std::vector<VisualInput> visuals = {prepare_video(*model, fixture_frames(), {0, 1, 2, 3}, 2.0)};
    std::vector<int> prompt = build_prompt_ids(toy, model->config, {{"user", {video_part(0), text_part("What happens?")}}}, visuals, true);
    prompt.insert(prompt.end(), first.tokens.begin(), first.tokens.end());
    for (int id : toy.encode("<|im_end|>\n<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n")) prompt.push_back(id);
    SamplingParams greedy;
    greedy.max_new_tokens = 6;
    Session fresh(model);
    const GenerateResult once = generate(fresh, toy, prompt, visuals, greedy);
    CHECK(once.tokens == second.tokens);
    CHECK(once.text == second.text);
}

TEST_CASE("Engine: a request's history turns are rendered before its own turn, images included") {
    const Engine& engine = image_engine();
    const Reply first = engine.generate(describe_image(3));
    Request next;
    next.history = {{"user", {kImage}, "Describe this image."}, {"assistant", {}, first.text}};
    next.prompt = "And then?";
    next.sampling.max_new_tokens = 5;
    next.sampling.temperature = 0;
    const Reply second = engine.generate(next);
    REQUIRE(second.inputs.size() == 1);
    CHECK(second.inputs[0].path == kImage);

    // The same conversation as chat messages on a fresh session.
    using namespace deepstack::detail;
    const auto model = Model::load(kFixtures + "tiny-image/model");
    const Tokenizer toy = Tokenizer::parse(toy_tokenizer_json(), "toy");
    const std::vector<VisualInput> visuals = {prepare_image(*model, load_image(kImage))};
    const std::vector<Message> messages = {{"user", {image_part(0), text_part("Describe this image.")}},
                                           {"assistant", {text_part(first.text)}},
                                           {"user", {text_part("And then?")}}};
    const std::vector<int> prompt = build_prompt_ids(toy, model->config, messages, visuals, true);
    SamplingParams greedy;
    greedy.max_new_tokens = 5;
    Session fresh(model);
    const GenerateResult once = generate(fresh, toy, prompt, visuals, greedy);
    CHECK(second.prompt_tokens == int(prompt.size()));
    CHECK(once.tokens == second.tokens);

    Request bad = next;
    bad.history[1].images = {kImage};
    CHECK_THROWS_WITH_AS(engine.generate(bad), doctest::Contains("history turn 1: only user turns take images"), Error);
    bad = next;
    bad.history[0].role = "tool";
    CHECK_THROWS_WITH_AS(engine.generate(bad), doctest::Contains("history turn 0: role 'tool' is not user, assistant or system"), Error);
}

TEST_CASE("Engine: min_new_tokens and ignore_eos hold the end tokens back") {
    // The tiny model's greedy reply repeats token 26: as an end token it ends the reply at once.
    Request request = describe_image(8);
    request.sampling.stop_token_ids = {26};
    const Reply ended = image_engine().generate(request);
    CHECK(ended.stop == StopReason::EndToken);
    CHECK(ended.generated_tokens == 0);

    request.sampling.min_new_tokens = 3;
    const Reply at_least = image_engine().generate(request);
    CHECK(at_least.generated_tokens >= 3);
    for (size_t i = 0; i < 3 && i < at_least.tokens.size(); ++i) CHECK(at_least.tokens[i] != 26);
    CHECK(*at_least.sampling.min_new_tokens == 3);

    request.sampling.min_new_tokens.reset();
    request.sampling.ignore_eos = true;
    const Reply ignoring = image_engine().generate(request);
    CHECK(ignoring.stop == StopReason::MaxTokens);
    CHECK(ignoring.generated_tokens == 8);
    CHECK(std::count(ignoring.tokens.begin(), ignoring.tokens.end(), 26) == 0);

    request.sampling.ignore_eos.reset();
    request.sampling.min_new_tokens = -1;
    CHECK_THROWS_WITH_AS(image_engine().generate(request), doctest::Contains("min_new_tokens = -1 must be >= 0"), Error);
}

TEST_CASE("Engine: a reply ends when the context is full") {
    const int prompt_tokens = image_engine().generate(describe_image(1)).prompt_tokens;
    EngineOptions options;
    options.max_context = prompt_tokens + 2;
    const Engine engine = Engine::open(model_folder("tiny-image", "short-context"), options);
    // The cache holds the prompt and every reply token but the last: prompt + 2 fit 3 reply tokens.
    const Reply reply = engine.generate(describe_image(8));
    CHECK(reply.stop == StopReason::MaxTokens);
    CHECK(reply.generated_tokens == 3);
}

TEST_CASE("example-caption prints the greedy text of deepstack-caption --temperature 0 --max-new-tokens 12") {
    const std::string dir = model_folder("tiny-video-4raw", "example");
    const std::string bin = std::string(DEEPSTACK_BIN_DIR);
    const Run example = run_command(quote(bin + "/example-caption") + " " + quote(dir) + " " + quote(kImage));
    const Run cli = run_command(quote(bin + "/deepstack-caption") + " --temperature 0 --max-new-tokens 12 --model " + quote(dir) + " " + quote(kImage));
    INFO("example stderr: " << example.err);
    INFO("caption stderr: " << cli.err);
    REQUIRE(example.status == 0);
    REQUIRE(cli.status == 0);
    const Reply reply = Engine::open(dir).generate(describe_image(12));
    CHECK(cli.out == reply.text + "\n");
    CHECK(example.out == reply.text + "\n" + std::to_string(reply.prompt_tokens) + " prompt tokens, " +
                              std::to_string(reply.generated_tokens) + " generated\n");
}
