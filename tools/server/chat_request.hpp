// tools/server/chat_request.hpp - the body of POST /v1/chat/completions (OpenAI's chat completion
// request) parsed and checked into a deepstack::Request plus what the server does with the reply
// (streaming, stop strings). Every refusal is an ApiError naming the field.
#pragma once
#include "api_error.hpp"
#include "media.hpp"

#include <deepstack/json.hpp>
#include <deepstack/request.hpp>

#include <cmath>
#include <cstdio>
#include <cstdint>
#include <string>
#include <vector>

namespace deepstack::server {

// Limits a request is checked against.
struct RequestLimits {
    int max_context = 32768;  // tokens of a reply's context: max_tokens above it is refused
    int max_images = 16;      // images in one request, all messages together
    int max_stop = 4;         // stop strings
    MediaPolicy media;
};

struct ChatRequest {
    Request request;                 // system, history, images, video, prompt and sampling
    bool stream = false;             // answer with server-sent events
    bool include_usage = false;      // stream_options.include_usage: a last chunk with the usage
    std::vector<std::string> stop;   // the reply ends before the first of these
};

namespace detail_request {

using nlohmann::json;

inline const char* type_name(const json& v) {
    switch (v.type()) {
        case json::value_t::null: return "null";
        case json::value_t::boolean: return "a boolean";
        case json::value_t::string: return "a string";
        case json::value_t::array: return "an array";
        case json::value_t::object: return "an object";
        default: return "a number";
    }
}

inline std::string number_text(double x) {
    char text[32];
    std::snprintf(text, sizeof text, "%g", x);
    return text;
}

inline ApiError wrong_type(const std::string& field, const char* expected, const json& v) {
    return bad_request("'" + field + "' must be " + expected + ", not " + type_name(v), field);
}

// A number field in [lo, hi]; `open_lo` excludes lo.
inline double number_in(const json& v, const std::string& field, double lo, double hi, bool open_lo = false) {
    if (!v.is_number()) throw wrong_type(field, "a number", v);
    const double x = v.get<double>();
    if (!std::isfinite(x) || x < lo || x > hi || (open_lo && x == lo))
        throw bad_request("'" + field + "' = " + v.dump() + " is outside " + (open_lo ? "(" : "[") + number_text(lo) + ", " +
                              number_text(hi) + "]",
                          field);
    return x;
}

inline int64_t integer_in(const json& v, const std::string& field, int64_t lo, int64_t hi) {
    if (!v.is_number_integer()) throw wrong_type(field, "an integer", v);
    const bool too_large = v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX);
    const int64_t x = too_large ? INT64_MAX : v.get<int64_t>();
    if (too_large || x < lo || x > hi)
        throw bad_request("'" + field + "' = " + v.dump() + " is outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]", field);
    return x;
}

inline bool boolean(const json& v, const std::string& field) {
    if (!v.is_boolean()) throw wrong_type(field, "a boolean", v);
    return v.get<bool>();
}

inline const std::string& string(const json& v, const std::string& field) {
    if (!v.is_string()) throw wrong_type(field, "a string", v);
    return v.get_ref<const std::string&>();
}

// One message with its text parts joined by newlines and its images and video in order.
struct ParsedMessage {
    std::string role;
    std::string text;
    std::vector<Image> images;
    std::string video;  // a file path; empty: none
};

inline ParsedMessage parse_message(const json& m, const std::string& field, const RequestLimits& limits, int& images_so_far) {
    if (!m.is_object()) throw wrong_type(field, "an object", m);
    ParsedMessage out;
    if (!m.contains("role")) throw bad_request("'" + field + ".role' is missing", field + ".role");
    out.role = string(m.at("role"), field + ".role");
    if (out.role == "developer") out.role = "system";
    if (out.role != "system" && out.role != "user" && out.role != "assistant")
        throw bad_request("'" + field + ".role' = '" + out.role + "' is not supported (system, developer, user or assistant)", field + ".role");
    const auto content = m.find("content");
    if (content == m.end() || content->is_null()) {
        if (out.role != "assistant") throw bad_request("'" + field + ".content' is missing", field + ".content");
        return out;
    }
    if (content->is_string()) {
        out.text = content->get<std::string>();
        return out;
    }
    if (!content->is_array()) throw wrong_type(field + ".content", "a string or an array of content parts", *content);
    bool first_text = true;
    for (size_t i = 0; i < content->size(); ++i) {
        const std::string pf = field + ".content[" + std::to_string(i) + "]";
        const json& part = (*content)[i];
        if (!part.is_object()) throw wrong_type(pf, "an object", part);
        if (!part.contains("type")) throw bad_request("'" + pf + ".type' is missing", pf + ".type");
        const std::string& type = string(part.at("type"), pf + ".type");
        if (type == "text") {
            if (!part.contains("text")) throw bad_request("'" + pf + ".text' is missing", pf + ".text");
            if (!first_text) out.text += "\n";
            out.text += string(part.at("text"), pf + ".text");
            first_text = false;
            continue;
        }
        if (type != "image_url" && type != "video_url")
            throw bad_request("'" + pf + ".type' = '" + type + "' is not supported (text, image_url or video_url)", pf + ".type");
        if (out.role != "user") throw bad_request("only user messages may hold images and videos, not " + out.role + " messages", pf);
        const auto holder = part.find(type);
        if (holder == part.end()) throw bad_request("'" + pf + "." + type + "' is missing", pf + "." + type);
        const json* url = &*holder;  // {"url": "..."} or the URL itself
        if (holder->is_object()) {
            if (!holder->contains("url")) throw bad_request("'" + pf + "." + type + ".url' is missing", pf + "." + type + ".url");
            url = &holder->at("url");
        }
        const std::string& text = string(*url, pf + "." + type + ".url");
        if (type == "image_url") {
            if (++images_so_far > limits.max_images)
                throw bad_request("more than " + std::to_string(limits.max_images) + " images in one request", pf, "too_many_images");
            out.images.push_back(image_from_url(text, limits.media, pf));
        } else {
            if (!out.video.empty()) throw bad_request("a message may hold one video", pf);
            out.video = video_path_from_url(text, limits.media, pf);
        }
    }
    return out;
}

inline void parse_sampling(const json& body, const RequestLimits& limits, Sampling& s) {
    auto field = [&](const char* name) -> const json* {
        const auto it = body.find(name);
        return it == body.end() || it->is_null() ? nullptr : &*it;
    };
    for (const char* name : {"max_tokens", "max_completion_tokens"})  // the newer name wins
        if (const json* v = field(name)) s.max_new_tokens = int(integer_in(*v, name, 1, limits.max_context));
    if (const json* v = field("temperature")) s.temperature = float(number_in(*v, "temperature", 0, 2));
    if (const json* v = field("top_p")) s.top_p = float(number_in(*v, "top_p", 0, 1, true));
    if (const json* v = field("top_k")) {
        const int64_t k = integer_in(*v, "top_k", -1, INT32_MAX);
        s.top_k = int(k < 0 ? 0 : k);  // -1 (as vLLM takes it) and 0 keep every token
    }
    if (const json* v = field("min_p")) s.min_p = float(number_in(*v, "min_p", 0, 1));
    if (const json* v = field("seed")) s.seed = uint64_t(integer_in(*v, "seed", INT64_MIN, INT64_MAX));
    if (const json* v = field("presence_penalty")) s.presence_penalty = float(number_in(*v, "presence_penalty", -2, 2));
    if (const json* v = field("repetition_penalty")) s.repetition_penalty = float(number_in(*v, "repetition_penalty", 0, 100, true));
    if (const json* v = field("frequency_penalty"); v && number_in(*v, "frequency_penalty", -2, 2) != 0)
        throw bad_request("'frequency_penalty' is not supported (use presence_penalty or repetition_penalty)", "frequency_penalty");
    if (const json* v = field("ignore_eos")) s.ignore_eos = boolean(*v, "ignore_eos");
    if (const json* v = field("min_tokens")) {
        s.min_new_tokens = int(integer_in(*v, "min_tokens", 0, limits.max_context));
        if (s.max_new_tokens && *s.min_new_tokens > *s.max_new_tokens)
            throw bad_request("'min_tokens' = " + std::to_string(*s.min_new_tokens) + " is above max_tokens = " +
                                  std::to_string(*s.max_new_tokens),
                              "min_tokens");
    }
}

inline std::vector<std::string> parse_stop(const json& body, const RequestLimits& limits) {
    const auto it = body.find("stop");
    if (it == body.end() || it->is_null()) return {};
    std::vector<std::string> stop;
    if (it->is_string()) {
        stop.push_back(it->get<std::string>());
    } else if (it->is_array()) {
        if (int(it->size()) > limits.max_stop)
            throw bad_request("'stop' holds " + std::to_string(it->size()) + " strings; at most " + std::to_string(limits.max_stop), "stop");
        for (size_t i = 0; i < it->size(); ++i) stop.push_back(string((*it)[i], "stop[" + std::to_string(i) + "]"));
    } else {
        throw wrong_type("stop", "a string or an array of strings", *it);
    }
    for (const std::string& s : stop)
        if (s.empty()) throw bad_request("'stop' strings must not be empty", "stop");
    return stop;
}

// Fields OpenAI defines that this server does not implement: refused unless at their neutral value.
inline void refuse_unsupported(const json& body) {
    auto given = [&](const char* name) {
        const auto it = body.find(name);
        return it != body.end() && !it->is_null();
    };
    if (given("n") && !(body.at("n").is_number_integer() && body.at("n").get<int64_t>() == 1))
        throw bad_request("'n' must be 1: one choice per request", "n");
    if (given("logprobs") && !(body.at("logprobs").is_boolean() && !body.at("logprobs").get<bool>()))
        throw bad_request("'logprobs' is not supported", "logprobs");
    if (given("tools") && !(body.at("tools").is_array() && body.at("tools").empty()))
        throw bad_request("'tools' (function calling) is not supported", "tools");
    if (given("response_format") &&
        !(body.at("response_format").is_object() && body.at("response_format").value("type", json()) == json("text")))
        throw bad_request("'response_format' other than {\"type\": \"text\"} is not supported", "response_format");
}

}  // namespace detail_request

// Parses a chat completion request body. Media are decoded here (data: URLs) or resolved inside
// the allowed folder (file:// URLs), so a bad image is refused before the request waits for a slot.
inline ChatRequest parse_chat_request(std::string_view body, const RequestLimits& limits) {
    using namespace detail_request;
    json j;
    try {
        j = deepstack::detail::parse_json(body, "request body");
    } catch (const Error& e) {
        throw bad_request(e.what(), "", "invalid_json");
    }
    if (!j.is_object()) throw bad_request(std::string("the request body must be a JSON object, not ") + type_name(j));
    ChatRequest out;
    refuse_unsupported(j);
    if (j.contains("model") && !j.at("model").is_null()) string(j.at("model"), "model");
    if (j.contains("stream") && !j.at("stream").is_null()) out.stream = boolean(j.at("stream"), "stream");
    if (j.contains("stream_options") && !j.at("stream_options").is_null()) {
        const json& o = j.at("stream_options");
        if (!o.is_object()) throw wrong_type("stream_options", "an object", o);
        if (o.contains("include_usage") && !o.at("include_usage").is_null())
            out.include_usage = boolean(o.at("include_usage"), "stream_options.include_usage");
    }
    parse_sampling(j, limits, out.request.sampling);
    out.stop = parse_stop(j, limits);

    if (!j.contains("messages")) throw bad_request("'messages' is missing", "messages");
    const json& messages = j.at("messages");
    if (!messages.is_array()) throw wrong_type("messages", "an array", messages);
    if (messages.empty()) throw bad_request("'messages' is empty", "messages");
    int images = 0;
    Request& r = out.request;
    for (size_t i = 0; i < messages.size(); ++i) {
        const std::string field = "messages[" + std::to_string(i) + "]";
        ParsedMessage m = parse_message(messages[i], field, limits, images);
        const bool last = i + 1 == messages.size();
        if (!m.video.empty() && !last) throw bad_request("only the last message may hold a video", field);
        if (last) {
            if (m.role != "user") throw bad_request("the last message must be a user message, not " + m.role, field + ".role");
            for (Image& image : m.images) r.images.emplace_back(std::move(image));
            if (!m.video.empty()) r.video = VideoInput{m.video, {}, 0};
            r.prompt = std::move(m.text);
        } else if (i == 0 && m.role == "system") {
            r.system = std::move(m.text);
        } else {
            Turn turn{m.role, {}, std::move(m.text)};
            for (Image& image : m.images) turn.images.emplace_back(std::move(image));
            r.history.push_back(std::move(turn));
        }
    }
    return out;
}

}  // namespace deepstack::server
