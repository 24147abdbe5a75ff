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

#include <doctest/doctest.h>
#include <deepstack.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

inline std::vector<uint8_t> read_bytes(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE_MESSAGE(in, "cannot open " << path);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_bytes(const std::filesystem::path& path, const std::vector<uint8_t>& bytes) {
    std::filesystem::remove(path);
    std::ofstream out(path, std::ios::binary);
    REQUIRE_MESSAGE(out, "cannot write " << path);
    out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

inline void write_text(const std::filesystem::path& path, const std::string& text) {
    write_bytes(path, std::vector<uint8_t>(text.begin(), text.end()));
}

// Copies a folder tree; the copies are writable (the fixtures may be read-only).
inline void copy_tree(const std::filesystem::path& from, const std::filesystem::path& to) {
    namespace fs = std::filesystem;
    fs::create_directories(to);
    for (const auto& e : fs::directory_iterator(from)) {
        const fs::path dst = to / e.path().filename();
        if (e.is_directory()) {
            copy_tree(e.path(), dst);
        } else {
            fs::copy_file(e.path(), dst, fs::copy_options::overwrite_existing);
            fs::permissions(dst, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::add);
        }
    }
}

// The golden prompt ids (`input_ids`, I64) of a fixture folder.
inline std::vector<int> golden_input_ids(const std::string& fixture_dir) {
    deepstack::WeightStore g;
    g.add_file(fixture_dir + "/golden.safetensors");
    const deepstack::TensorInfo* t = g.find("input_ids");
    REQUIRE(t);
    REQUIRE(t->dtype == deepstack::DType::I64);
    std::vector<int> ids;
    for (int64_t i = 0; i < t->numel(); ++i) {
        int64_t v;
        std::memcpy(&v, t->data + 8 * i, 8);
        ids.push_back(int(v));
    }
    return ids;
}
