// libFuzzer target: config.json (parse_model_config), preprocessor_config.json
// (load_preprocess_config) and generation_config.json (load_generation_config). The first byte
// picks the file: odd = a preprocessor config, 2 or 6 (mod 8) = a generation config, else config.json. A config that parses is then loaded
// against the tiny-image checkpoint (Model::from_store), so configs that disagree with the weights
// must fail on the shape checks, never allocate what they declare or read out of bounds.
#include "common.hpp"

#include <deepstack.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

using namespace deepstack;
using namespace deepstack::detail;

static const std::string kData = DEEPSTACK_TEST_DATA;

// A fresh store per model (WeightStore is move-only); mapping the tiny file is cheap.
static WeightStore tiny_store() { return WeightStore::open_folder(kData + "/fixtures/tiny-image/model"); }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    deepstack_fuzz::Reader in{data, size};
    const uint8_t mode = in.byte();
    const std::string text = in.rest();
    if ((mode & 1) == 0 && (mode & 3) == 2) {
        // generation_config.json in a folder of its own.
        static const std::string dir = "/tmp/deepstack-fuzz-generation-" + std::to_string(::getpid());
        ::mkdir(dir.c_str(), 0700);
        {
            std::ofstream out(dir + "/generation_config.json", std::ios::binary | std::ios::trunc);
            out.write(text.data(), std::streamsize(text.size()));
        }
        try {
            const detail::SamplingParams p = detail::load_generation_config(dir);
            detail::check_sampling_params(p);  // whatever loads is a valid setting
            FUZZ_CHECK(p.temperature >= 0 && p.top_p > 0 && p.top_p <= 1 && p.max_new_tokens >= 0);
        } catch (const Error&) {
        }
        return 0;
    }
    if (mode & 1) {
        // preprocessor_config.json from a file (the API reads paths).
        static const std::string path = "/tmp/deepstack-fuzz-preprocessor-" + std::to_string(::getpid()) + ".json";
        {
            std::ofstream out(path, std::ios::binary | std::ios::trunc);
            out.write(text.data(), std::streamsize(text.size()));
        }
        try {
            PreprocessConfig p = load_preprocess_config(path, mode & 2);
            FUZZ_CHECK(p.min_pixels > 0 && p.max_pixels >= p.min_pixels);
            FUZZ_CHECK(p.patch_size > 0 && p.merge_size > 0 && p.temporal_patch_size > 0);
            FUZZ_CHECK(p.fps > 0 && p.fps <= 1000 && p.min_frames > 0 && p.max_frames > 0);
            FUZZ_CHECK(p.rescale_factor > 0 && p.rescale_factor <= 1);
            for (int i = 0; i < 3; ++i) FUZZ_CHECK(p.std[size_t(i)] >= 1e-3f && std::isfinite(p.mean[size_t(i)]));
        } catch (const Error&) {
        }
        return 0;
    }
    ModelConfig c;
    try {
        c = parse_model_config(detail::parse_json(text, "config.json"), "config.json");
    } catch (const Error&) {
        return 0;
    }
    // What parse_model_config promises.
    FUZZ_CHECK(c.text.hidden_size > 0 && c.text.num_hidden_layers > 0 && c.text.vocab_size > 0);
    FUZZ_CHECK(c.text.head_dim > 0 && c.text.head_dim % 2 == 0);
    FUZZ_CHECK(c.text.num_attention_heads % c.text.num_key_value_heads == 0);
    FUZZ_CHECK(std::isfinite(c.text.rms_norm_eps) && c.text.rms_norm_eps > 0 && c.text.rms_norm_eps <= 1);
    FUZZ_CHECK(c.text.mrope_section[0] + c.text.mrope_section[1] + c.text.mrope_section[2] == c.text.head_dim / 2);
    FUZZ_CHECK(c.vision.head_dim() > 0 && c.vision.head_dim() % 4 == 0);
    for (int b : c.vision.deepstack_visual_indexes) FUZZ_CHECK(b >= 0 && b < c.vision.depth);
    if (c.vision.fusion.type == FusionConfig::Type::StackVit)
        FUZZ_CHECK(c.vision.fusion.stack_target(c.vision.fusion.scale * c.vision.fusion.scale - 1) < c.vision.depth);
    FUZZ_CHECK(c.image_token_id < c.text.vocab_size && c.video_token_id < c.text.vocab_size);
    try {
        PreprocessConfig pi, pv;
        pv.min_pixels = 128 * 32 * 32;
        pv.max_pixels = 768 * 32 * 32;
        for (PreprocessConfig* p : {&pi, &pv}) {
            p->patch_size = c.vision.patch_size;
            p->merge_size = c.vision.spatial_merge_size;
            p->temporal_patch_size = c.vision.temporal_patch_size;
        }
        auto model = Model::from_store(c, pi, pv, tiny_store(), "fuzz");
        // A config the tiny weights accept: run a few text tokens through it.
        Session::Options opt;
        opt.max_context = 8;
        Session s(model, opt);
        auto logits = s.prefill({1, 2, 3});
        FUZZ_CHECK(int64_t(logits.size()) == c.text.vocab_size);
    } catch (const Error&) {
    }
    return 0;
}
