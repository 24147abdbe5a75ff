// deepstack/json.hpp - parsing JSON text from files and from model output with bounded nesting.
#pragma once
#include "common.hpp"
#include "files.hpp"

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

namespace deepstack {

// Deepest nesting of arrays and objects accepted in any JSON text (configuration files, the
// tokenizer, a grounding answer); the files deepstack reads nest fewer than ten levels.
constexpr int kMaxJsonDepth = 128;

namespace detail {

// Deepest nesting of [ and { in `text` outside strings, counted up to `limit` + 1.
inline int json_nesting_depth(std::string_view text, int limit = kMaxJsonDepth) {
    int depth = 0, deepest = 0;
    bool in_string = false;
    for (size_t i = 0; i < text.size(); ++i) {
        const char ch = text[i];
        if (in_string) {
            if (ch == '\\') ++i;
            else if (ch == '"') in_string = false;
        } else if (ch == '"') {
            in_string = true;
        } else if (ch == '[' || ch == '{') {
            if (++depth > deepest && (deepest = depth) > limit) return deepest;
        } else if (ch == ']' || ch == '}') {
            --depth;
        }
    }
    return deepest;
}

// Parses `text`; `name` (the file) starts every error message, followed by `part` when the text is
// a part of that file ("safetensors header"). Nesting deeper than kMaxJsonDepth is refused before
// parsing (the JSON library's copies and comparisons recurse per level).
inline nlohmann::json parse_json(std::string_view text, const std::string& name, const std::string& part = "") {
    const std::string subject = name + ": " + (part.empty() ? "" : part + " is ");
    if (json_nesting_depth(text) > kMaxJsonDepth)
        throw Error(subject + "JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    try {
        return nlohmann::json::parse(text);
    } catch (const std::exception& e) {
        throw Error(subject + "not valid JSON (" + e.what() + ")");
    }
}

// Reads and parses a JSON configuration file of at most `max_bytes` bytes.
inline nlohmann::json read_json_file(const std::string& path, int64_t max_bytes = kMaxConfigFileBytes) {
    return parse_json(read_small_file(path, max_bytes, "a JSON file"), path);
}

}  // namespace detail
}  // namespace deepstack
