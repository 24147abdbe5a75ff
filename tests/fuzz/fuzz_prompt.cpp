// libFuzzer target: the chat prompt builder (build_prompt_ids: chat template + image/video
// placeholder expansion + tokenizer) and what follows it - mrope_positions and Session::prefill on
// the tiny-image model with synthetic visual inputs. The input chooses the visuals (images or
// videos, their grids, timestamps, pixel buffers right or wrong), the messages (roles, text, which
// visual each part refers to - right or wrong), extra raw token ids and the context size. Text may
// itself contain special tokens such as <|image_pad|>. Every inconsistency must be a
// deepstack::Error; nothing may read outside a buffer.
#include "common.hpp"

#include <deepstack.hpp>

using namespace deepstack;
using namespace deepstack::detail;

static const std::string kData = DEEPSTACK_TEST_DATA;

static std::shared_ptr<const Model> tiny_model() {
    static std::shared_ptr<const Model> m = Model::load(kData + "/fixtures/tiny-image/model");
    return m;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    deepstack_fuzz::Reader in{data, size};
    const auto model = tiny_model();
    const ModelConfig& c = model->config;
    const Tokenizer& tok = deepstack_fuzz::small_tokenizer();

    // Visual inputs: tiny grids so the vision encoder stays cheap.
    std::vector<VisualInput> visuals;
    const int n_visuals = in.byte() % 4;
    for (int i = 0; i < n_visuals; ++i) {
        const uint8_t a = in.byte(), b = in.byte();
        VisualInput v;
        v.is_video = a & 1;
        const int t = v.is_video ? 1 + (a >> 1) % 2 : 1;
        const int gh = 2 * (1 + (b & 1)), gw = 2 * (1 + ((b >> 1) & 1));
        v.patches.grid_thw = {t, gh, gw};
        v.patches.height = gh * 16;
        v.patches.width = gw * 16;
        size_t n = size_t(t) * size_t(gh) * size_t(gw) * 1536;
        if (b & 0x10) n -= 1536;  // pixels that do not match the grid
        if (b & 0x20) v.patches.grid_thw[1] = 3;  // h not a multiple of the merge size
        v.patches.pixels.assign(n, float(b) / 255.f - 0.5f);
        if (v.is_video) {
            for (int k = 0; k < t; ++k) v.timestamps.push_back(0.5 * k + a / 64.0);
            if (b & 0x40) v.timestamps.pop_back();  // fewer timestamps than temporal patches
        }
        visuals.push_back(std::move(v));
    }

    // Messages: each part is text (length-prefixed) or a reference to a visual.
    std::vector<Message> messages;
    const int n_messages = 1 + in.byte() % 3;
    int next_visual = 0;
    for (int m = 0; m < n_messages; ++m) {
        const uint8_t r = in.byte();
        static const char* roles[] = {"user", "user", "assistant", "system", "tool"};
        Message msg{roles[r % 5], {}};
        const int n_parts = 1 + (r >> 3) % 4;
        for (int p = 0; p < n_parts; ++p) {
            const uint8_t k = in.byte();
            if (k % 4 == 0 && next_visual <= n_visuals) {
                int idx = (k & 0x80) ? int(k >> 4) % 5 : next_visual;  // sometimes out of order or out of range
                const bool video = idx < n_visuals ? visuals[size_t(idx)].is_video != bool(k & 0x40) : bool(k & 0x40);
                msg.parts.push_back(video ? video_part(idx) : image_part(idx));
                ++next_visual;
            } else {
                msg.parts.push_back(text_part(in.bytes(k % 48)));
            }
        }
        messages.push_back(std::move(msg));
    }
    const bool add_generation_prompt = in.byte() & 1;
    const int64_t max_context = 1 + in.byte() % 256;
    const std::string raw = in.bytes(16);
    SamplingParams sp;  // sometimes invalid: an Error from the Sampler
    sp.temperature = float(int(in.byte()) - 16) / 64.f;
    sp.top_k = int(in.byte()) - 4;
    sp.top_p = float(in.byte()) / 200.f;
    sp.min_p = float(in.byte()) / 200.f;
    sp.repetition_penalty = float(in.byte()) / 100.f;
    sp.presence_penalty = float(int(in.byte()) - 128) / 32.f;
    sp.seed = in.byte();

    std::vector<int> ids;
    try {
        ids = build_prompt_ids(tok, c, messages, visuals, add_generation_prompt);
    } catch (const Error&) {
        return 0;
    }
    for (int id : ids) FUZZ_CHECK(id >= 0 && id < tok.vocab_size() && id < c.text.vocab_size);
    for (size_t i = 0; i + 1 < raw.size(); i += 2)  // extra ids, also negative and beyond the vocabulary
        ids.push_back(int(uint8_t(raw[i]) | uint8_t(raw[i + 1]) << 8) - 1024);

    std::vector<VisualBlock> blocks;
    for (const auto& v : visuals)
        for (int tt = 0; tt < (v.is_video ? v.patches.grid_thw[0] : 1); ++tt)
            blocks.push_back({v.is_video ? c.video_token_id : c.image_token_id, v.patches.grid_thw[1] / 2, v.patches.grid_thw[2] / 2});
    try {
        const Positions pos = mrope_positions(ids, blocks);
        FUZZ_CHECK(pos.size() == ids.size());
        for (size_t i = 0; i < ids.size(); ++i)
            for (int a = 0; a < 3; ++a) FUZZ_CHECK(pos.pos[size_t(a)][i] >= 0 && pos.pos[size_t(a)][i] < pos.next);
    } catch (const Error&) {
    }

    Session::Options opt;
    opt.max_context = max_context;
    Session s(model, opt);
    std::vector<float> logits;
    try {
        logits = s.prefill(ids, visuals);
    } catch (const Error&) {
        FUZZ_CHECK(s.length() == 0);
        return 0;
    }
    FUZZ_CHECK(int64_t(logits.size()) == c.text.vocab_size);
    FUZZ_CHECK(s.length() == int64_t(ids.size()) && s.length() <= max_context);
    int next = 0;
    try {
        Sampler sampler(sp);
        sampler.add_context(ids);
        next = sampler.sample(logits);
        FUZZ_CHECK(next >= 0 && next < c.text.vocab_size);
    } catch (const Error&) {
        return 0;  // invalid sampling parameters
    }
    try {
        s.decode(next);
    } catch (const Error&) {
        FUZZ_CHECK(s.length() == max_context);
    }
    return 0;
}
