// tools/server/responses.hpp - the JSON the server answers with, in OpenAI's shapes: errors, chat
// completions, streamed chunks, the model list.
#pragma once
#include "api_error.hpp"

#include <deepstack/grounding.hpp>
#include <deepstack/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace deepstack::server {

using nlohmann::json;

// JSON text; any invalid UTF-8 (a file name in an error message) becomes U+FFFD.
inline std::string json_text(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

inline json error_json(const ApiError& e) {
    auto or_null = [](const std::string& s) { return s.empty() ? json() : json(s); };
    return {{"error", {{"message", e.what()}, {"type", e.type}, {"param", or_null(e.param)}, {"code", or_null(e.code)}}}};
}

struct Usage {
    int prompt_tokens = 0, completion_tokens = 0;
};

inline json usage_json(const Usage& u) {
    return {{"prompt_tokens", u.prompt_tokens}, {"completion_tokens", u.completion_tokens},
            {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

// What every completion and chunk of one request shares.
struct CompletionHead {
    std::string id;     // "chatcmpl-..."
    int64_t created;    // Unix seconds
    std::string model;  // the served model's name
};

inline json head_json(const CompletionHead& h, const char* object) {
    return {{"id", h.id}, {"object", object}, {"created", h.created}, {"model", h.model}, {"system_fingerprint", nullptr}};
}

// Grounding boxes as the extension field "boxes" of a message.
inline json boxes_json(const std::vector<Box>& boxes) {
    json out = json::array();
    for (const Box& b : boxes) {
        out.push_back({{"label", b.label}, {"x1", b.x1}, {"y1", b.y1}, {"x2", b.x2}, {"y2", b.y2}});
    }
    return out;
}

inline json completion_json(const CompletionHead& h, const std::string& text, const char* finish_reason, const Usage& usage,
                            const std::vector<Box>& boxes) {
    json message = {{"role", "assistant"}, {"content", text}};
    if (!boxes.empty()) message["boxes"] = boxes_json(boxes);
    json j = head_json(h, "chat.completion");
    j["choices"] = json::array({{{"index", 0}, {"message", std::move(message)}, {"logprobs", nullptr}, {"finish_reason", finish_reason}}});
    j["usage"] = usage_json(usage);
    return j;
}

// One chunk of a streamed completion: `delta` for the choice, `finish_reason` when it ends.
inline json chunk_json(const CompletionHead& h, json delta, const char* finish_reason) {
    json j = head_json(h, "chat.completion.chunk");
    j["choices"] = json::array({{{"index", 0}, {"delta", std::move(delta)}, {"logprobs", nullptr},
                                 {"finish_reason", finish_reason ? json(finish_reason) : json()}}});
    return j;
}

// The last chunk when stream_options.include_usage: no choices, the usage.
inline json usage_chunk_json(const CompletionHead& h, const Usage& usage) {
    json j = head_json(h, "chat.completion.chunk");
    j["choices"] = json::array();
    j["usage"] = usage_json(usage);
    return j;
}

inline std::string sse_event(const json& j) { return "data: " + json_text(j) + "\n\n"; }

inline json models_json(const std::string& model, int64_t created) {
    return {{"object", "list"},
            {"data", json::array({{{"id", model}, {"object", "model"}, {"created", created}, {"owned_by", "deepstack"}}})}};
}

}  // namespace deepstack::server
