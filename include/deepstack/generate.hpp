// deepstack/generate.hpp - chat prompts, sampling and streaming generation for Qwen3-VL:
// the chat template with images and videos expanded into pad tokens, a seeded
// sampler (greedy, temperature, top-k, top-p, min-p, repetition and presence penalties), the
// decode loop with end tokens and a text callback, and a Conversation that keeps the KV cache across turns.
#pragma once
#include "decode_batcher.hpp"
#include "model.hpp"
#include "request.hpp"
#include "tokenizer.hpp"

#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <random>
#include <unordered_set>

namespace deepstack::detail {

// ---- chat messages ---------------------------------------------------------------------------------

// One piece of a message: text, or an image / a video given by its index in the visual inputs
// handed with the messages. Visuals must be used once each, in index order.
struct ContentPart {
    enum class Kind { Text, Image, Video };
    Kind kind = Kind::Text;
    std::string text;  // Kind::Text
    int visual = -1;   // Kind::Image / Kind::Video: index into the visual inputs
};

inline ContentPart text_part(std::string text) { return {ContentPart::Kind::Text, std::move(text), -1}; }
inline ContentPart image_part(int visual) { return {ContentPart::Kind::Image, {}, visual}; }
inline ContentPart video_part(int visual) { return {ContentPart::Kind::Video, {}, visual}; }

struct Message {
    std::string role;  // "system", "user" or "assistant"
    std::vector<ContentPart> parts;
};


// The text of a special token the tokenizer must know as a single id.
inline std::string special_token(const Tokenizer& tok, int id, const char* field) {
    const std::string text = tok.token_text(id);
    if (tok.token_id(text) != id)
        throw Error(std::string("the tokenizer does not map '") + text + "' back to " + field + " " + std::to_string(id));
    return text;
}

inline void require_token(const Tokenizer& tok, const char* token) {
    if (tok.token_id(token) < 0) throw Error(std::string("the tokenizer has no ") + token + " token (not a Qwen chat tokenizer)");
}

inline void append_repeated(std::string& s, const std::string& token, int64_t n) {
    s.reserve(s.size() + token.size() * size_t(n));
    for (int64_t i = 0; i < n; ++i) s += token;
}

// The Qwen3-VL chat template (chat_template.json) with the processor's placeholder expansion
// applied: every message is "<|im_start|>role\n" + content + "<|im_end|>\n"; an image
// becomes <|vision_start|> + <|image_pad|> x t*h*w/merge^2 + <|vision_end|>; a video becomes, per
// temporal patch, its "<T seconds>" + <|vision_start|> + <|video_pad|> x h*w/merge^2 + <|vision_end|>.
// No system message is added when none is given.
inline std::string render_chat(const Tokenizer& tok, const ModelConfig& c, const std::vector<Message>& messages,
                               const std::vector<VisualInput>& visuals, bool add_generation_prompt) {
    require_token(tok, "<|im_start|>");
    require_token(tok, "<|im_end|>");
    const std::string start = special_token(tok, c.vision_start_token_id, "vision_start_token_id");
    const std::string end = special_token(tok, c.vision_end_token_id, "vision_end_token_id");
    const int64_t merge2 = int64_t(c.vision.spatial_merge_size) * c.vision.spatial_merge_size;
    size_t used = 0;  // visuals rendered so far
    std::string s;
    for (const Message& m : messages) {
        if (m.role != "system" && m.role != "user" && m.role != "assistant")
            throw Error("chat message role '" + m.role + "' is not system, user or assistant");
        s += "<|im_start|>" + m.role + "\n";
        for (const ContentPart& p : m.parts) {
            if (p.kind == ContentPart::Kind::Text) {
                s += p.text;
                continue;
            }
            const bool video = p.kind == ContentPart::Kind::Video;
            const char* what = video ? "video" : "image";
            if (m.role != "user") throw Error(std::string("a ") + what + " is in a " + m.role + " message; only user messages take images and videos");
            if (p.visual != int(used))
                throw Error(std::string("chat ") + what + " part refers to visual input " + std::to_string(p.visual) + " where input " +
                            std::to_string(used) + " comes next (use each visual input once, in order)");
            if (used >= visuals.size())
                throw Error("chat messages refer to visual input " + std::to_string(used) + " but only " + std::to_string(visuals.size()) + " are given");
            const VisualInput& v = visuals[used++];
            if (v.is_video != video)
                throw Error("visual input " + std::to_string(p.visual) + " is " + (v.is_video ? "a video" : "an image") + " but the message uses it as " +
                            (video ? "a video" : "an image"));
            const auto& g = v.patches.grid_thw;
            const int64_t per_patch = int64_t(g[1]) * g[2] / merge2;  // merged tokens of one temporal patch
            if (!video) {
                s += start;
                append_repeated(s, tok.token_text(c.image_token_id), g[0] * per_patch);
                s += end;
                continue;
            }
            if (v.timestamps.size() != size_t(g[0]))
                throw Error("video input " + std::to_string(p.visual) + " has " + std::to_string(v.timestamps.size()) + " timestamps for " +
                            std::to_string(g[0]) + " temporal patches");
            for (double seconds : v.timestamps) {
                s += timestamp_text(seconds) + start;
                append_repeated(s, tok.token_text(c.video_token_id), per_patch);
                s += end;
            }
        }
        s += "<|im_end|>\n";
    }
    if (used != visuals.size())
        throw Error(std::to_string(visuals.size()) + " visual inputs given but the chat messages use " + std::to_string(used));
    if (add_generation_prompt) s += "<|im_start|>assistant\n";
    return s;
}

// Token ids of a chat: the rendered template tokenised as one text, as the Hugging Face
// processor does. visuals: the prepared images/videos the messages' parts refer to, in order; hand
// the same list to Session::prefill or generate(). add_generation_prompt appends
// "<|im_start|>assistant\n" so the model writes the reply next.
inline std::vector<int> build_prompt_ids(const Tokenizer& tok, const ModelConfig& config, const std::vector<Message>& messages,
                                         const std::vector<VisualInput>& visuals, bool add_generation_prompt) {
    return tok.encode(detail::render_chat(tok, config, messages, visuals, add_generation_prompt));
}

// ---- sampling --------------------------------------------------------------------------------------

// How the next token is chosen, and when the reply ends. The defaults are greedy decoding.
// Order as in Hugging Face generate: penalties, then temperature, top-k, top-p, min-p.
struct SamplingParams {
    float temperature = 0;          // 0: greedy (the most likely token after penalties); negative is refused
    int top_k = 0;                  // keep the k most likely tokens; 0 keeps all
    float top_p = 1;                // keep the most likely tokens until their probability reaches top_p; 1 keeps all
    float min_p = 0;                // drop tokens less likely than min_p times the most likely one; 0 keeps all
    float repetition_penalty = 1;   // tokens of the prompt or the reply: logit / p if positive, * p if negative; 1 is off
    float presence_penalty = 0;     // subtracted once from the logit of every token already in the reply; 0 is off
    uint64_t seed = 0;              // seeds the sampler's std::mt19937_64: same seed, same reply
    int max_new_tokens = 1024;      // the reply ends after this many tokens, or when the context is full
    int min_new_tokens = 0;         // end tokens are not picked before the reply has this many
    bool ignore_eos = false;        // end tokens are never picked: the reply runs to max_new_tokens
    std::vector<int> stop_token_ids;  // end tokens besides <|im_end|>, <|endoftext|> and config.json's eos_token_id
};

// Upper bounds of the sampling settings (far above any useful value; they keep the arithmetic finite).
constexpr float kMaxTemperature = 100;
constexpr float kMaxPenalty = 100;

// Sampling defaults from `dir`/generation_config.json (Hugging Face GenerationConfig fields
// do_sample, temperature, top_k, top_p, min_p, repetition_penalty, eos_token_id as an int or a
// list, max_new_tokens; also presence_penalty when present). With do_sample false (the
// transformers default) decoding is greedy; with do_sample true an absent temperature is 1, top_k
// 50 and top_p 1 (the transformers defaults). Without the file: SamplingParams{} (greedy,
// 1024 new tokens, the model's own end tokens).
inline SamplingParams load_generation_config(const std::string& dir) {
    SamplingParams p;
    const std::string path = dir + "/generation_config.json";
    if (!detail::path_exists(path)) return p;
    const nlohmann::json j = detail::read_json_file(path);
    if (!j.is_object()) throw Error(path + ": top level must be a JSON object");
    detail::JsonReader r{j, path};
    if (r.boolean("do_sample", false)) {
        p.temperature = float(r.number_in("temperature", 1.0, 0, kMaxTemperature));
        p.top_k = r.nonneg_int("top_k", 50);
        p.top_p = float(r.number_in("top_p", 1.0, 0, 1, true));
        p.min_p = float(r.number_in("min_p", 0.0, 0, 1));
    }
    p.repetition_penalty = float(r.number_in("repetition_penalty", 1.0, 0, kMaxPenalty, true));
    p.presence_penalty = float(r.number_in("presence_penalty", 0.0, -kMaxPenalty, kMaxPenalty));
    p.max_new_tokens = r.nonneg_int("max_new_tokens", p.max_new_tokens);
    p.stop_token_ids = r.int_list("eos_token_id");
    return p;
}

// Refuses settings outside their ranges, naming the field: temperature in [0, kMaxTemperature],
// top_k >= 0, top_p in (0, 1], min_p in [0, 1], repetition_penalty in (0, kMaxPenalty],
// presence_penalty in [-kMaxPenalty, kMaxPenalty], max_new_tokens >= 0 (NaN is outside every range).
inline void check_sampling_params(const SamplingParams& p) {
    auto range = [](const char* field, float v, const char* allowed) {
        return Error(std::string("sampling: ") + field + " = " + detail::JsonReader::number_text(v) + " is outside " + allowed);
    };
    if (!(p.temperature >= 0 && p.temperature <= kMaxTemperature)) throw range("temperature", p.temperature, "[0, 100] (0 is greedy)");
    if (p.top_k < 0) throw Error("sampling: top_k = " + std::to_string(p.top_k) + " must be >= 0 (0 keeps all tokens)");
    if (!(p.top_p > 0 && p.top_p <= 1)) throw range("top_p", p.top_p, "(0, 1]");
    if (!(p.min_p >= 0 && p.min_p <= 1)) throw range("min_p", p.min_p, "[0, 1]");
    if (!(p.repetition_penalty > 0 && p.repetition_penalty <= kMaxPenalty)) throw range("repetition_penalty", p.repetition_penalty, "(0, 100]");
    if (!(p.presence_penalty >= -kMaxPenalty && p.presence_penalty <= kMaxPenalty))
        throw range("presence_penalty", p.presence_penalty, "[-100, 100]");
    if (p.max_new_tokens < 0) throw Error("sampling: max_new_tokens = " + std::to_string(p.max_new_tokens) + " must be >= 0");
    if (p.min_new_tokens < 0) throw Error("sampling: min_new_tokens = " + std::to_string(p.min_new_tokens) + " must be >= 0");
}

// Picks tokens from logits by SamplingParams; deterministic for a given seed. Remembers the
// prompt (for the repetition penalty) and every token it picked (both penalties).
class Sampler {
public:
    explicit Sampler(const SamplingParams& params) : p_(params), rng_(params.seed) {
        check_sampling_params(p_);
    }

    // Tokens the repetition penalty looks at besides the picked ones (the prompt).
    void add_context(const std::vector<int>& ids) { context_.insert(ids.begin(), ids.end()); }

    // Applies the repetition and presence penalties to logits [V] in place.
    void penalize(std::vector<float>& logits) const {
        const int V = int(logits.size());
        if (p_.repetition_penalty != 1)
            for (int id : context_)
                if (id >= 0 && id < V) {
                    float& l = logits[size_t(id)];
                    l = l < 0 ? l * p_.repetition_penalty : l / p_.repetition_penalty;
                }
        if (p_.presence_penalty != 0)
            for (int id : picked_)
                if (id >= 0 && id < V) logits[size_t(id)] -= p_.presence_penalty;
    }

    // The next token for logits [V]; it joins the context of later calls.
    int sample(std::vector<float> logits) {
        if (logits.empty()) throw Error("sampling: no logits");
        penalize(logits);
        const int id = p_.temperature <= 0 ? int(std::max_element(logits.begin(), logits.end()) - logits.begin()) : draw(logits);
        context_.insert(id);
        picked_.insert(id);
        return id;
    }

private:
    int draw(const std::vector<float>& logits) {
        // Candidates, most likely first: the top k, or all.
        const size_t n = logits.size(), k = p_.top_k > 0 ? std::min(size_t(p_.top_k), n) : n;
        std::vector<int> ids(n);
        std::iota(ids.begin(), ids.end(), 0);
        auto more_likely = [&](int a, int b) { return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b); };
        if (k < n) std::partial_sort(ids.begin(), ids.begin() + std::ptrdiff_t(k), ids.end(), more_likely);
        else std::sort(ids.begin(), ids.end(), more_likely);
        ids.resize(k);
        // Softmax at the temperature (in double: 150k terms).
        std::vector<double> prob(k);
        const double top = logits[size_t(ids[0])];
        double total = 0;
        for (size_t i = 0; i < k; ++i) total += prob[i] = std::exp((logits[size_t(ids[i])] - top) / p_.temperature);
        // top-p: the shortest prefix whose probability reaches top_p; min-p: relative to the top one.
        size_t keep = 0;
        double cumulative = 0;
        while (keep < k && (keep == 0 || cumulative < p_.top_p * total) && prob[keep] >= p_.min_p * prob[0]) cumulative += prob[keep++];
        // Inverse-CDF draw with 53 random bits (the same on every platform, unlike std::uniform_real_distribution).
        const double u = double(rng_() >> 11) * 0x1.0p-53 * cumulative;
        double acc = 0;
        for (size_t i = 0; i < keep; ++i)
            if (u < (acc += prob[i])) return ids[i];
        return ids[keep - 1];
    }

    SamplingParams p_;
    std::mt19937_64 rng_;
    std::unordered_set<int> context_, picked_;
};

// ---- generation ------------------------------------------------------------------------------------

struct GenerateResult {
    std::string text;          // the reply, special tokens left out
    std::vector<int> tokens;   // the reply's ids, without the end token
    int64_t prompt_tokens = 0; // tokens prefilled for this reply
    StopReason stop = StopReason::MaxTokens;
    int end_token = -1;        // the end token picked, when stop == EndToken
    double vision_seconds = 0;   // encoding the visual inputs (part of the prefill call)
    double prefill_seconds = 0;  // the prompt through the decoder, after vision encoding
    double decode_seconds = 0;   // picking and decoding the reply's tokens
};

// Told when the vision encoder (Stage::Vision) or the prefill (Stage::Prefill) ends, with the
// result so far (prompt_tokens and the stage's seconds set).
using StageCallback = std::function<void(Stage stage, const GenerateResult& so_far)>;

// The model's end tokens: the sampling params', config.json's eos_token_id, <|im_end|>, <|endoftext|>.
inline std::unordered_set<int> end_tokens(const Tokenizer& tok, const ModelConfig& c, const SamplingParams& p) {
    std::unordered_set<int> ids(p.stop_token_ids.begin(), p.stop_token_ids.end());
    ids.insert(c.eos_token_ids.begin(), c.eos_token_ids.end());
    for (const char* t : {"<|im_end|>", "<|endoftext|>"})
        if (tok.token_id(t) >= 0) ids.insert(tok.token_id(t));
    return ids;
}

// Prefills `prompt_ids` (with their visuals) and generates the reply. `context_ids`: every token
// of the conversation including the prompt, for the repetition penalty. The last reply token is
// not fed to the session (nothing needs its logits): the cache ends one token before the reply.
// With a batcher, the prefill runs between its steps and each token is decoded in a step shared
// with the other replies seated there (a thread already inside a batcher decodes on its own).
inline GenerateResult generate_reply(Session& session, const Tokenizer& tok, const std::vector<int>& prompt_ids,
                                     const std::vector<int>& context_ids, const std::vector<VisualInput>& visuals,
                                     const SamplingParams& params, const TextCallback& on_text, const StageCallback& on_stage,
                                     DecodeBatcher* batcher = nullptr) {
    if (DecodeBatcher::inside()) batcher = nullptr;
    Sampler sampler(params);
    sampler.add_context(context_ids);
    const std::unordered_set<int> ends = end_tokens(tok, session.model().config, params);
    GenerateResult r;
    r.prompt_tokens = int64_t(prompt_ids.size());

    auto t0 = std::chrono::steady_clock::now();
    Trace vision_done;  // "text.inputs_embeds" is traced once the visual features are in place
    if (!visuals.empty())
        vision_done = [&](const std::string& name, const std::vector<int64_t>&, const float*) {
            if (name != "text.inputs_embeds") return;
            r.vision_seconds = seconds_since(t0);
            if (on_stage) on_stage(Stage::Vision, r);
        };
    auto prefill = [&] { return session.prefill(prompt_ids, visuals, false, vision_done); };
    std::vector<float> logits = batcher ? batcher->exclusive(prefill) : prefill();
    r.prefill_seconds = seconds_since(t0) - r.vision_seconds;
    if (on_stage) on_stage(Stage::Prefill, r);

    t0 = std::chrono::steady_clock::now();
    // Ids past the tokenizer's vocabulary (the embedding's padding rows) are never picked.
    const size_t vocab = std::min(logits.size(), size_t(tok.vocab_size()));
    StreamDecoder decoder(tok, true);
    auto emit = [&](const std::string& piece) {
        if (piece.empty()) return true;
        r.text += piece;
        return !on_text || on_text(piece);
    };
    std::optional<DecodeBatcher::Seat> seat;
    if (batcher) seat.emplace(*batcher);
    while (int(r.tokens.size()) < params.max_new_tokens) {
        if (!r.tokens.empty()) {
            if (session.length() >= session.capacity()) break;  // the context is full: the reply ends as at max_new_tokens
            logits = seat ? seat->decode(session, r.tokens.back()) : session.decode(r.tokens.back());
        }
        logits.resize(vocab);
        if (params.ignore_eos || int(r.tokens.size()) < params.min_new_tokens)
            for (int end : ends)
                if (end >= 0 && size_t(end) < logits.size()) logits[size_t(end)] = -std::numeric_limits<float>::infinity();
        const int id = sampler.sample(std::move(logits));
        if (ends.count(id)) {
            r.stop = StopReason::EndToken;
            r.end_token = id;
            break;
        }
        r.tokens.push_back(id);
        if (!emit(decoder.push(id))) {
            r.stop = StopReason::Callback;
            break;
        }
    }
    seat.reset();  // the other replies' steps wait for this one no more
    if (r.stop != StopReason::Callback) emit(decoder.flush());  // an unfinished character, as U+FFFD
    r.decode_seconds = seconds_since(t0);
    return r;
}

// Prefills `prompt_ids` (e.g. from build_prompt_ids) with their visual inputs, then picks and
// decodes reply tokens until an end token (none before params.min_new_tokens, none with
// params.ignore_eos), params.max_new_tokens, a full context, or on_text returning false.
// on_text receives the reply's text piece by piece (whole UTF-8 characters, special tokens left
// out). The session afterwards holds the prompt and the reply except its last token. batcher:
// see generate_reply.
inline GenerateResult generate(Session& session, const Tokenizer& tok, const std::vector<int>& prompt_ids,
                               const std::vector<VisualInput>& visuals, const SamplingParams& params, const TextCallback& on_text = {},
                               const StageCallback& on_stage = {}, DecodeBatcher* batcher = nullptr) {
    return detail::generate_reply(session, tok, prompt_ids, prompt_ids, visuals, params, on_text, on_stage, batcher);
}

// A chat over one Session: each send() appends messages (a system message first if
// wanted, then user turns) and generates the assistant's reply. Later turns prefill only their
// new tokens: the end of the previous reply, "<|im_end|>\n", and the new messages. The tokenizer
// must outlive the Conversation.
class Conversation {
public:
    Conversation(std::shared_ptr<const Model> model, const Tokenizer& tok, Session::Options options = {})
        : tok_(&tok), session_(std::move(model), std::move(options)) {}

    // visuals: the images/videos the new messages refer to (indices count from 0 in each send).
    // batcher: see generate_reply.
    GenerateResult send(const std::vector<Message>& messages, const std::vector<VisualInput>& visuals, const SamplingParams& params,
                        const TextCallback& on_text = {}, const StageCallback& on_stage = {}, DecodeBatcher* batcher = nullptr) {
        if (session_.length() > int64_t(ids_.size()))
            throw Error("this chat's session holds tokens its conversation does not (an earlier send failed); start a new chat");
        const std::string turn = (ids_.empty() ? "" : "<|im_end|>\n") +
                                 detail::render_chat(*tok_, session_.model().config, messages, visuals, true);
        std::vector<int> conversation = ids_;
        for (int id : tok_->encode(turn)) conversation.push_back(id);
        const std::vector<int> unfed(conversation.begin() + session_.length(), conversation.end());
        GenerateResult r = detail::generate_reply(session_, *tok_, unfed, conversation, visuals, params, on_text, on_stage, batcher);
        conversation.insert(conversation.end(), r.tokens.begin(), r.tokens.end());
        ids_ = std::move(conversation);
        return r;
    }

    // Every token of the conversation so far; the session's cache holds the first session().length().
    const std::vector<int>& ids() const { return ids_; }
    const Session& session() const { return session_; }

private:
    const Tokenizer* tok_;
    Session session_;
    std::vector<int> ids_;
};

}  // namespace deepstack::detail
