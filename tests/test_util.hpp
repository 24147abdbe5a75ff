// Helpers shared by the test programs.
#pragma once
#include <doctest/doctest.h>
#include <deepstack.hpp>

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

// The tests' folder (fixtures, data) and the folder of the built programs.
inline const std::string kData = DEEPSTACK_TEST_DATA;
inline const std::string kFixtures = kData + "/fixtures/";
inline const std::string kTinyImage = kData + "/fixtures/tiny-image";
inline const std::string kImage = kData + "/fixtures/tiny-image/inputs/image0_80x56.png";  // 80x56 RGB
inline const std::string kBin = DEEPSTACK_BIN_DIR;

// Where tests/fetch_tokenizer.sh caches the real Qwen3 tokenizer (tokenizer.json,
// tokenizer_config.json): $DEEPSTACK_CACHE/tokenizer-qwen3, default ~/.cache/deepstack.
inline std::string qwen3_dir() {
    const char* cache = std::getenv("DEEPSTACK_CACHE");
    const char* home = std::getenv("HOME");
    return (cache && *cache ? std::string(cache) : std::string(home ? home : "/tmp") + "/.cache/deepstack") + "/tokenizer-qwen3";
}

// Whether tests/fetch_tokenizer.sh has fetched it (tests that need it are skipped without).
inline bool have_qwen3() { return bool(std::ifstream(qwen3_dir() + "/tokenizer.json")); }

inline float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
    REQUIRE(a.size() == b.size());
    float m = 0;
    for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
    return m;
}

// A fresh temporary folder, removed with everything in it at the end of the scope.
struct TempDir {
    std::filesystem::path path;
    explicit TempDir(const std::string& tag = "test") {
        std::string tmpl = (std::filesystem::temp_directory_path() / ("deepstack-" + tag + "-XXXXXX")).string();
        REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
        path = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    std::string str(const std::string& rel = "") const { return rel.empty() ? path.string() : (path / rel).string(); }
    std::string operator/(const std::string& rel) const { return (path / rel).string(); }
};


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
    deepstack::detail::WeightStore g;
    g.add_file(fixture_dir + "/golden.safetensors");
    const deepstack::detail::TensorInfo* t = g.find("input_ids");
    REQUIRE(t);
    REQUIRE(t->dtype == deepstack::detail::DType::I64);
    std::vector<int> ids;
    for (int64_t i = 0; i < t->numel(); ++i) {
        int64_t v;
        std::memcpy(&v, t->data + 8 * i, 8);
        ids.push_back(int(v));
    }
    return ids;
}

// A list of ids (`key`) of a fixture's manifest.json.
inline std::vector<int> manifest_ids(const std::string& fixture_dir, const char* key) {
    return deepstack::detail::read_json_file(fixture_dir + "/manifest.json").at(key).get<std::vector<int>>();
}

// The fixtures' toy tokenizer as a byte-level BPE tokenizer.json: byte b is id b + 16 (so ASCII
// character c is ord(c) + 16, as tokenizer_map.json says), no merges, the special tokens at
// 500..506, and placeholder tokens "[tN]" for every other id below 512.
inline std::string toy_tokenizer_json() {
    nlohmann::json vocab = nlohmann::json::object();
    std::vector<bool> used(512, false);
    for (int b = 0; b < 256; ++b) {
        vocab[deepstack::detail::byte_level_encode(std::string(1, char(b)))] = b + 16;
        used[size_t(b + 16)] = true;
    }
    const char* specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"};
    nlohmann::json added = nlohmann::json::array();
    for (int k = 0; k < 7; ++k) {
        added.push_back({{"id", 500 + k}, {"content", specials[k]}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                         {"normalized", false}, {"special", true}});
        used[size_t(500 + k)] = true;
    }
    for (int id = 0; id < 512; ++id)
        if (!used[size_t(id)]) vocab["[t" + std::to_string(id) + "]"] = id;
    nlohmann::json j = {{"version", "1.0"},
                        {"added_tokens", added},
                        {"normalizer", nullptr},
                        {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", true}}},
                        {"decoder", {{"type", "ByteLevel"}}},
                        {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
    return j.dump();
}

// Standard base64 with padding (the data: URLs of the server tests).
inline std::string base64_encode(const std::vector<uint8_t>& bytes) {
    static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    for (size_t i = 0; i < bytes.size(); i += 3) {
        const uint32_t n = uint32_t(bytes[i]) << 16 | uint32_t(i + 1 < bytes.size() ? bytes[i + 1] : 0) << 8 | (i + 2 < bytes.size() ? bytes[i + 2] : 0);
        out += alphabet[n >> 18 & 63];
        out += alphabet[n >> 12 & 63];
        out += i + 1 < bytes.size() ? alphabet[n >> 6 & 63] : '=';
        out += i + 2 < bytes.size() ? alphabet[n & 63] : '=';
    }
    return out;
}

// `s` quoted for the shell.
inline std::string quote(const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
}

struct Run {
    int status = -1;  // exit code
    std::string out, err;
};

// Runs a shell command (its arguments already quoted), capturing stdout and stderr.
inline Run run_command(const std::string& command) {
    const std::string err_file = (std::filesystem::temp_directory_path() / ("deepstack_test_err_" + std::to_string(::getpid()))).string();
    Run r;
    FILE* p = ::popen((command + " 2>" + quote(err_file)).c_str(), "r");
    REQUIRE(p);
    char buf[4096];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) r.out.append(buf, n);
    const int st = ::pclose(p);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    std::ifstream e(err_file);
    r.err.assign(std::istreambuf_iterator<char>(e), std::istreambuf_iterator<char>());
    std::filesystem::remove(err_file);
    return r;
}

// deepstack-golden on a fixture folder, with extra arguments (quoted for the shell where needed);
// its report is printed when it fails.
inline Run run_golden(const std::filesystem::path& fixture, const std::string& args = "") {
    Run r = run_command(quote(kBin + "/deepstack-golden") + " " + quote(fixture.string()) + " " + args);
    if (r.status != 0) MESSAGE((r.out + r.err));
    return r;
}
