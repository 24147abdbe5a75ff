// Shared helpers of the libFuzzer targets (tests/fuzz/fuzz_*.cpp).
#pragma once
#include <deepstack/common.hpp>
#include <deepstack/tokenizer.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace deepstack_fuzz {

// Aborts (a libFuzzer finding) when an invariant the library promises does not hold.
#define FUZZ_CHECK(cond)                                                                      \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            std::fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
            std::abort();                                                                     \
        }                                                                                     \
    } while (0)

// Reads the fuzz input front to back; past the end every read gives 0 / empty.
struct Reader {
    const uint8_t* p;
    size_t n;
    uint8_t byte() {
        if (!n) return 0;
        --n;
        return *p++;
    }
    uint32_t u16() { return uint32_t(byte()) | uint32_t(byte()) << 8; }
    std::string bytes(size_t k) {
        k = std::min(k, n);
        std::string s(reinterpret_cast<const char*>(p), k);
        p += k;
        n -= k;
        return s;
    }
    std::string rest() { return bytes(n); }
};

// A small byte-level BPE tokenizer.json with the Qwen chat special tokens at the tiny fixtures' ids
// (<|endoftext|> 500, <|im_start|> 501, <|im_end|> 502, <|vision_start|> 503, <|vision_end|> 504,
// <|image_pad|> 505, <|video_pad|> 506) and one normalised single-word token " word" (507).
inline const char* small_tokenizer_extra() {
    return R"(
      "added_tokens": [
        {"id": 500, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
        {"id": 501, "content": "<|im_start|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
        {"id": 502, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
        {"id": 503, "content": "<|vision_start|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
        {"id": 504, "content": "<|vision_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
        {"id": 505, "content": "<|image_pad|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
        {"id": 506, "content": "<|video_pad|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
        {"id": 507, "content": " word", "single_word": true, "lstrip": false, "rstrip": false, "normalized": true, "special": false}
      ],
      "normalizer": {"type": "NFC"},
      "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]},
      "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
      "truncation": null, "padding": null, "post_processor": null
    )";
}

inline std::string small_tokenizer_json() {
    std::string vocab;
    for (int b = 0; b < 256; ++b) {
        nlohmann::json key = deepstack::detail::byte_level_encode(std::string(1, char(b)));
        vocab += key.dump() + ": " + std::to_string(b) + ", ";
    }
    vocab += "\"he\": 256, \"ll\": 257, \"hell\": 258, \"hello\": 259, \"\\u0120w\": 260, \"\\u0120wo\": 261, \"or\": 262";
    return std::string("{\"version\": \"1.0\", ") + small_tokenizer_extra() +
           ", \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, \"continuing_subword_prefix\": \"\", "
           "\"end_of_word_suffix\": \"\", \"fuse_unk\": false, \"byte_fallback\": false, \"ignore_merges\": false, \"vocab\": {" +
           vocab + "}, \"merges\": [\"h e\", \"l l\", \"he ll\", \"hell o\", \"\\u0120 w\", \"\\u0120w o\", \"o r\"]}}";
}

inline const deepstack::detail::Tokenizer& small_tokenizer() {
    static const deepstack::detail::Tokenizer t = deepstack::detail::Tokenizer::parse(small_tokenizer_json(), "small-tokenizer.json");
    return t;
}

}  // namespace deepstack_fuzz
