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

// Walks text[begin..) outside string literals and calls on_bracket(i, ch) at every [ ] { };
// stops where on_bracket returns false and returns that position, npos when the text ends first.
template <typename OnBracket>
inline size_t scan_json_brackets(std::string_view text, size_t begin, OnBracket on_bracket) {
    bool in_string = false;
    for (size_t i = begin; i < text.size(); ++i) {
        const char ch = text[i];
        if (in_string) {
            if (ch == '\\') ++i;
            else if (ch == '"') in_string = false;
        } else if (ch == '"') {
            in_string = true;
        } else if ((ch == '[' || ch == '{' || ch == ']' || ch == '}') && !on_bracket(i, ch)) {
            return i;
        }
    }
    return std::string_view::npos;
}

// Deepest nesting of [ and { in `text` outside strings, counted up to `limit` + 1.
inline int json_nesting_depth(std::string_view text, int limit = kMaxJsonDepth) {
    int depth = 0, deepest = 0;
    scan_json_brackets(text, 0, [&](size_t, char ch) {
        if (ch == ']' || ch == '}') return --depth, true;
        if (++depth > deepest) deepest = depth;
        return deepest <= limit;
    });
    return deepest;
}

// End (one past the closing brace) of the JSON object starting at text[begin] == '{', or npos
// when it is not closed; braces inside strings do not count.
inline size_t json_object_end(std::string_view text, size_t begin) {
    int depth = 0;
    const size_t close = scan_json_brackets(text, begin, [&](size_t, char ch) {
        if (ch == '{') ++depth;
        else if (ch == '}') --depth;
        return depth != 0;
    });
    return close == std::string_view::npos ? close : close + 1;
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
