// Helpers shared by the test programs.
#pragma once
#include <cstdlib>
#include <string>

// Where tests/fetch_tokenizer.sh caches the real Qwen3 tokenizer (tokenizer.json,
// tokenizer_config.json): $DEEPSTACK_CACHE/tokenizer-qwen3, default ~/.cache/deepstack.
inline std::string qwen3_dir() {
    const char* cache = std::getenv("DEEPSTACK_CACHE");
    const char* home = std::getenv("HOME");
    return (cache && *cache ? std::string(cache) : std::string(home ? home : "/tmp") + "/.cache/deepstack") + "/tokenizer-qwen3";
}
