// deepstack-golden on broken copies of the tiny-image fixture: whatever is wrong, the program must
// print one "error: <file>: <problem>" on stderr and exit with status 1 (no crash, no hang, no
// other exit code).
#include <doctest/doctest.h>

#include "test_util.hpp"
#include <deepstack.hpp>

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>

using namespace deepstack;
using namespace deepstack::detail;
namespace fs = std::filesystem;
using json = nlohmann::json;


namespace {


std::string shell_quote(const std::string& s) {
    std::string out = "'";
    for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
}

// A writable copy of the tiny-image fixture in a temp dir.
struct BrokenFixture {
    fs::path root, dir;
    BrokenFixture() {
        std::string tmpl = (fs::temp_directory_path() / "deepstack-golden-XXXXXX").string();
        REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
        root = tmpl;
        dir = root / "tiny-image";
        copy_tree(kTinyImage, dir);
    }
    ~BrokenFixture() {
        std::error_code ec;
        fs::remove_all(root, ec);
    }
    fs::path operator/(const std::string& rel) const { return dir / rel; }

    void edit_json(const std::string& rel, const std::function<void(json&)>& fn) const {
        std::ifstream in(dir / rel);
        json j = json::parse(in);
        in.close();
        fn(j);
        write_text(dir / rel, j.dump(1));
    }
    void edit_header(const std::string& rel, const std::function<void(json&)>& fn) const {
        const auto b = read_bytes(dir / rel);
        uint64_t n = 0;
        for (int i = 7; i >= 0; --i) n = n << 8 | b[size_t(i)];
        json h = json::parse(b.begin() + 8, b.begin() + 8 + int64_t(n));
        fn(h);
        const std::string hs = h.dump();
        std::vector<uint8_t> out(8);
        for (int i = 0; i < 8; ++i) out[size_t(i)] = uint8_t(uint64_t(hs.size()) >> (8 * i));
        out.insert(out.end(), hs.begin(), hs.end());
        out.insert(out.end(), b.begin() + 8 + int64_t(n), b.end());
        write_bytes(dir / rel, out);
    }

    struct Outcome {
        int exit_code = -1;
        std::string err;
    };
    // Runs deepstack-golden on the broken copy (stdout discarded, stderr captured); `flags` are
    // appended to the command line as they are.
    Outcome run(const std::string& flags = "") const {
        const fs::path err_file = root / "stderr.txt";
        const std::string cmd = shell_quote(kBin + "/deepstack-golden") + " " + shell_quote(dir.string()) + " " + flags + " >/dev/null 2>" +
                                shell_quote(err_file.string());
        const int status = std::system(cmd.c_str());
        Outcome o;
        REQUIRE(status != -1);
        o.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        const auto e = read_bytes(err_file);
        o.err.assign(e.begin(), e.end());
        return o;
    }
};

// deepstack-golden must exit 1 with "error: " first on stderr and `expect` in the message.
void expect_error(const BrokenFixture& f, const std::string& expect) {
    const auto o = f.run();
    CAPTURE(o.err);
    CHECK(o.exit_code == 1);
    CHECK(o.err.rfind("error: ", 0) == 0);
    CHECK(o.err.find(expect) != std::string::npos);
    CHECK(std::count(o.err.begin(), o.err.end(), '\n') >= 1);
}

}  // namespace

TEST_CASE("golden: the intact copy passes (exit 0)") {
    BrokenFixture f;
    const auto o = f.run();
    CAPTURE(o.err);
    CHECK(o.exit_code == 0);
    CHECK(o.err.empty());
}

TEST_CASE("golden: flags out of range are refused before the run") {
    BrokenFixture f;
    for (auto [flags, expect] : {std::pair{"--threads -5", "error: --threads: '-5' is not a whole number from 1 to 1024"},
                                 std::pair{"--threads 1073741824", "error: --threads: '1073741824' is not a whole number from 1 to 1024"},
                                 std::pair{"--rel-tol inf", "error: --rel-tol: 'inf' is not a number in (0, 1]"},
                                 std::pair{"--rel-tol nan", "error: --rel-tol: 'nan' is not a number in (0, 1]"}}) {
        CAPTURE(flags);
        const auto o = f.run(flags);
        CHECK(o.exit_code == 1);
        CHECK(o.err.rfind(expect, 0) == 0);
    }
}

TEST_CASE("golden: fixture folder missing") {
    BrokenFixture f;
    fs::remove_all(f.dir);
    expect_error(f, "manifest.json: cannot open");
}

TEST_CASE("golden: manifest.json is not JSON") {
    BrokenFixture f;
    write_text(f / "manifest.json", "{\"images\": [");
    expect_error(f, "manifest.json: not valid JSON");
}

TEST_CASE("golden: manifest image entry without path") {
    BrokenFixture f;
    f.edit_json("manifest.json", [](json& m) { m["images"][0].erase("path"); });
    expect_error(f, "manifest.json: malformed ([json.exception.out_of_range.403] key 'path' not found)");
}

TEST_CASE("golden: manifest images of the wrong type") {
    BrokenFixture f;
    f.edit_json("manifest.json", [](json& m) { m["images"] = {{{1, 2}}}; });
    expect_error(f, "manifest.json: malformed (");
}

TEST_CASE("golden: golden.safetensors missing") {
    BrokenFixture f;
    fs::remove(f / "golden.safetensors");
    expect_error(f, "golden.safetensors: cannot open");
}

TEST_CASE("golden: golden.safetensors truncated") {
    BrokenFixture f;
    auto b = read_bytes(f / "golden.safetensors");
    b.resize(b.size() / 3);
    write_bytes(f / "golden.safetensors", b);
    expect_error(f, "golden.safetensors: tensor '");
}

TEST_CASE("golden: golden input_ids missing") {
    BrokenFixture f;
    f.edit_header("golden.safetensors", [](json& h) { h.erase("input_ids"); });
    expect_error(f, "golden.safetensors: missing tensor 'input_ids'");
}

TEST_CASE("golden: golden input_ids stored as floats") {
    BrokenFixture f;
    f.edit_header("golden.safetensors", [](json& h) {
        auto& t = h["input_ids"];
        t["dtype"] = "F32";
        t["shape"] = {t["shape"][0].get<int64_t>() * 2};
    });
    expect_error(f, "golden tensor 'input_ids' must be I64");
}

TEST_CASE("golden: golden input_ids outside the vocabulary") {
    BrokenFixture f;
    auto b = read_bytes(f / "golden.safetensors");
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = n << 8 | b[size_t(i)];
    json h = json::parse(b.begin() + 8, b.begin() + 8 + int64_t(n));
    const uint64_t off = 8 + n + h["input_ids"]["data_offsets"][0].get<uint64_t>() + 8 * 3;  // 4th id
    const int64_t bad = 1 << 20;
    std::memcpy(&b[size_t(off)], &bad, 8);
    write_bytes(f / "golden.safetensors", b);
    expect_error(f, "token id 1048576 is outside the vocabulary");
}

TEST_CASE("golden: model folder missing") {
    BrokenFixture f;
    fs::remove_all(f / "model");
    expect_error(f, "model: model folder not found");
}

TEST_CASE("golden: model.safetensors missing") {
    BrokenFixture f;
    fs::remove(f / "model/model.safetensors");
    expect_error(f, "no model.safetensors or model.safetensors.index.json");
}

TEST_CASE("golden: model.safetensors empty") {
    BrokenFixture f;
    write_bytes(f / "model/model.safetensors", {});
    expect_error(f, "model.safetensors: truncated safetensors file (0 bytes");
}

TEST_CASE("golden: model.safetensors truncated") {
    BrokenFixture f;
    auto b = read_bytes(f / "model/model.safetensors");
    b.resize(b.size() - 1000);
    write_bytes(f / "model/model.safetensors", b);
    expect_error(f, "is past the end of the data");
}

TEST_CASE("golden: model.safetensors header length beyond the file") {
    BrokenFixture f;
    auto b = read_bytes(f / "model/model.safetensors");
    b[5] = 0x7f;
    write_bytes(f / "model/model.safetensors", b);
    expect_error(f, "runs past the end of the file");
}

TEST_CASE("golden: model.safetensors header not JSON") {
    BrokenFixture f;
    auto b = read_bytes(f / "model/model.safetensors");
    b[8] = '!';
    write_bytes(f / "model/model.safetensors", b);
    expect_error(f, "safetensors header is not valid JSON");
}

TEST_CASE("golden: model.safetensors offsets reversed") {
    BrokenFixture f;
    f.edit_header("model/model.safetensors", [](json& h) { h["model.language_model.embed_tokens.weight"]["data_offsets"] = {131072, 0}; });
    expect_error(f, "data_offsets are reversed");
}

TEST_CASE("golden: model.safetensors tensors overlap") {
    BrokenFixture f;
    f.edit_header("model/model.safetensors", [](json& h) { h["model.language_model.norm.weight"]["data_offsets"] = {0, 256}; });
    expect_error(f, "overlap");
}

TEST_CASE("golden: model.safetensors byte size does not match the shape") {
    BrokenFixture f;
    f.edit_header("model/model.safetensors", [](json& h) { h["model.language_model.norm.weight"]["shape"] = {32}; });
    expect_error(f, "holds 256 bytes but F32 [32] needs 128");
}

TEST_CASE("golden: model.safetensors unknown dtype") {
    BrokenFixture f;
    f.edit_header("model/model.safetensors", [](json& h) { h["model.language_model.norm.weight"]["dtype"] = "Q4_K"; });
    expect_error(f, "unsupported dtype Q4_K");
}

TEST_CASE("golden: model.safetensors tensor missing") {
    BrokenFixture f;
    f.edit_header("model/model.safetensors", [](json& h) { h.erase("model.visual.merger.linear_fc2.bias"); });
    expect_error(f, "missing tensor 'model.visual.merger.linear_fc2.bias'");
}

TEST_CASE("golden: model.safetensors tensor of the wrong shape") {
    BrokenFixture f;
    f.edit_header("model/model.safetensors", [](json& h) { h["model.language_model.embed_tokens.weight"]["shape"] = {256, 128}; });
    expect_error(f, "has shape [256, 128], expected [512, 64]");
}

TEST_CASE("golden: config.json not JSON") {
    BrokenFixture f;
    write_text(f / "model/config.json", "not json at all");
    expect_error(f, "config.json: not valid JSON");
}

TEST_CASE("golden: config.json field missing") {
    BrokenFixture f;
    f.edit_json("model/config.json", [](json& c) { c["vision_config"].erase("depth"); });
    expect_error(f, "config.json.vision_config: missing field 'depth'");
}

TEST_CASE("golden: config.json field of the wrong type") {
    BrokenFixture f;
    f.edit_json("model/config.json", [](json& c) { c["text_config"]["vocab_size"] = "512"; });
    expect_error(f, "field 'vocab_size' must be an integer");
}

TEST_CASE("golden: config.json zero size") {
    BrokenFixture f;
    f.edit_json("model/config.json", [](json& c) { c["text_config"]["hidden_size"] = 0; });
    expect_error(f, "field 'hidden_size' must be a positive size, got 0");
}

TEST_CASE("golden: config.json negative size") {
    BrokenFixture f;
    f.edit_json("model/config.json", [](json& c) { c["text_config"]["intermediate_size"] = -1; });
    expect_error(f, "field 'intermediate_size' must be a positive size, got -1");
}

TEST_CASE("golden: config.json DeepStack tap past the vision depth") {
    BrokenFixture f;
    f.edit_json("model/config.json", [](json& c) { c["vision_config"]["deepstack_visual_indexes"] = {1, 7}; });
    expect_error(f, "deepstack_visual_indexes[1] = 7 is outside the vision depth 4");
}

TEST_CASE("golden: config.json another model type") {
    BrokenFixture f;
    f.edit_json("model/config.json", [](json& c) { c["model_type"] = "qwen2_5_vl"; });
    expect_error(f, "model_type 'qwen2_5_vl' is not supported");
}

TEST_CASE("golden: config.json sizes that do not match the checkpoint") {
    BrokenFixture f;
    f.edit_json("model/config.json", [](json& c) { c["text_config"]["intermediate_size"] = 1 << 30; });
    expect_error(f, "expected [1073741824, 64]");
}

TEST_CASE("golden: preprocessor_config.json not JSON") {
    BrokenFixture f;
    write_text(f / "model/preprocessor_config.json", "{");
    expect_error(f, "preprocessor_config.json: not valid JSON");
}

TEST_CASE("golden: input image missing") {
    BrokenFixture f;
    fs::remove(f / "inputs/image0_80x56.png");
    expect_error(f, "image0_80x56.png: cannot open");
}

TEST_CASE("golden: input image empty") {
    BrokenFixture f;
    write_bytes(f / "inputs/image0_80x56.png", {});
    expect_error(f, "image0_80x56.png: empty file, not an image");
}

TEST_CASE("golden: input image truncated") {
    BrokenFixture f;
    auto b = read_bytes(f / "inputs/image0_80x56.png");
    b.resize(b.size() / 2);
    write_bytes(f / "inputs/image0_80x56.png", b);
    expect_error(f, "image0_80x56.png: not a decodable image");
}

TEST_CASE("golden: input image corrupt") {
    BrokenFixture f;
    auto b = read_bytes(f / "inputs/image0_80x56.png");
    for (size_t i = 50; i < b.size() - 12; i += 5) b[i] = uint8_t(b[i] * 31 + 7);
    write_bytes(f / "inputs/image0_80x56.png", b);
    expect_error(f, "image0_80x56.png: not a decodable image");
}

TEST_CASE("golden: input is not an image") {
    BrokenFixture f;
    write_text(f / "inputs/image0_80x56.png", "GIF? no: plain text\n");
    expect_error(f, "image0_80x56.png: not a decodable image");
}

TEST_CASE("golden: input image with huge declared dimensions") {
    BrokenFixture f;
    auto b = read_bytes(f / "inputs/image0_80x56.png");
    for (size_t at : {size_t(16), size_t(20)}) {
        b[at] = 0;
        b[at + 1] = 0x01;  // 100000-ish: 0x000186a0
        b[at + 2] = 0x86;
        b[at + 3] = 0xa0;
    }
    write_bytes(f / "inputs/image0_80x56.png", b);
    expect_error(f, "image declares 100000x100000 pixels, above the decoder limit");
}

TEST_CASE("golden: input image with a zero dimension") {
    BrokenFixture f;
    auto b = read_bytes(f / "inputs/image0_80x56.png");
    b[16] = b[17] = b[18] = b[19] = 0;
    write_bytes(f / "inputs/image0_80x56.png", b);
    expect_error(f, "image has a zero side (0x56)");
}

TEST_CASE("golden: unknown command-line argument") {
    BrokenFixture f;
    const std::string cmd = shell_quote(kBin + "/deepstack-golden") + " --bogus >/dev/null 2>/dev/null";
    const int status = std::system(cmd.c_str());
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 1);
}
