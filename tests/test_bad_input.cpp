// Bad input: every way a model folder, an image, a tokenizer.json or a prompt can be wrong must end
// in a deepstack::Error that names the file (or the input) and the problem - never a crash, a hang,
// an out-of-bounds read or an allocation driven by a size the input merely declares.
// One TEST_CASE per row of the README's "Bad input" tables.
#include <doctest/doctest.h>

#include "test_util.hpp"
#include <deepstack.hpp>
#include <deepstack/tokenizer.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <thread>

using namespace deepstack;
using namespace deepstack::detail;
namespace fs = std::filesystem;
using json = nlohmann::json;


namespace {


// A fresh temporary folder, removed at the end of the test case.

// A copy of the tiny-image model folder in a temp dir, to break one thing in.
struct BrokenModel : TempDir {
    std::string model;
    BrokenModel() {
        model = str("model");
        copy_tree(kTinyImage + "/model", model);
    }
    std::string file(const std::string& name) const { return model + "/" + name; }

    json read_json(const std::string& name) const {
        std::ifstream in(file(name));
        return json::parse(in);
    }
    void write_json(const std::string& name, const json& j) const { write_text(file(name), j.dump(1)); }
    void edit_config(const std::function<void(json&)>& fn) const {
        json j = read_json("config.json");
        fn(j);
        write_json("config.json", j);
    }

    // The safetensors header and data area of model.safetensors.
    std::pair<json, std::vector<uint8_t>> read_safetensors() const {
        const std::vector<uint8_t> b = read_bytes(file("model.safetensors"));
        uint64_t n = 0;
        for (int i = 7; i >= 0; --i) n = n << 8 | b[size_t(i)];
        json h = json::parse(b.begin() + 8, b.begin() + 8 + int64_t(n));
        return {h, std::vector<uint8_t>(b.begin() + 8 + int64_t(n), b.end())};
    }
    void write_safetensors(const std::string& header, const std::vector<uint8_t>& data) const {
        std::vector<uint8_t> out(8);
        for (int i = 0; i < 8; ++i) out[size_t(i)] = uint8_t(uint64_t(header.size()) >> (8 * i));
        out.insert(out.end(), header.begin(), header.end());
        out.insert(out.end(), data.begin(), data.end());
        write_bytes(file("model.safetensors"), out);
    }
    // Rewrites the header of model.safetensors, keeping its data area.
    void edit_header(const std::function<void(json&)>& fn) const {
        auto [h, data] = read_safetensors();
        fn(h);
        write_safetensors(h.dump(), data);
    }

    std::shared_ptr<const Model> load() const { return Model::load(model); }
};

const char* kEmbed = "model.language_model.embed_tokens.weight";  // F32 [512, 64], bytes [0, 131072)
const char* kNorm = "model.language_model.norm.weight";            // F32 [64]

// ---- a small byte-level BPE tokenizer.json, written by the tests --------------------------------

json small_tokenizer_json() {
    json vocab = json::object();
    for (int b = 0; b < 256; ++b) vocab[detail::byte_level_encode(std::string(1, char(b)))] = b;
    vocab["he"] = 256;
    vocab["ll"] = 257;
    vocab["hell"] = 258;
    vocab["hello"] = 259;
    json added = json::array();
    const char* specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"};
    for (int k = 0; k < 6; ++k)
        added.push_back({{"id", 300 + k}, {"content", specials[k]}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                         {"normalized", false}, {"special", true}});
    return {{"version", "1.0"},
            {"truncation", nullptr},
            {"padding", nullptr},
            {"added_tokens", added},
            {"normalizer", {{"type", "NFC"}}},
            {"pre_tokenizer",
             {{"type", "Sequence"},
              {"pretokenizers",
               {{{"type", "Split"}, {"pattern", {{"Regex", "\\p{N}"}}}, {"behavior", "Isolated"}, {"invert", false}},
                {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", true}}}}}},
            {"post_processor", nullptr},
            {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
            {"model",
             {{"type", "BPE"},
              {"dropout", nullptr},
              {"unk_token", nullptr},
              {"continuing_subword_prefix", ""},
              {"end_of_word_suffix", ""},
              {"fuse_unk", false},
              {"byte_fallback", false},
              {"ignore_merges", false},
              {"vocab", vocab},
              {"merges", {"h e", "l l", "he ll", "hell o"}}}}};
}

// ---- images ------------------------------------------------------------------------------------

std::vector<uint8_t> fixture_png() { return read_bytes(kTinyImage + "/inputs/image0_80x56.png"); }

void put_be32(std::vector<uint8_t>& b, size_t at, uint32_t v) {
    for (int i = 0; i < 4; ++i) b[at + size_t(i)] = uint8_t(v >> (24 - 8 * i));
}
void put_le(std::vector<uint8_t>& b, size_t at, uint32_t v, int n) {
    for (int i = 0; i < n; ++i) b[at + size_t(i)] = uint8_t(v >> (8 * i));
}

// The fixture PNG with its IHDR width and height replaced (the CRC is left stale).
std::vector<uint8_t> png_with_size(uint32_t w, uint32_t h) {
    auto b = fixture_png();
    put_be32(b, 16, w);
    put_be32(b, 20, h);
    return b;
}

Image solid_image(int w, int h) {
    Image img;
    img.width = w;
    img.height = h;
    img.rgb.assign(size_t(w) * size_t(h) * 3, 128);
    return img;
}


std::shared_ptr<const Model> tiny_model() {
    static std::shared_ptr<const Model> m = Model::load(kTinyImage + "/model");
    return m;
}

}  // namespace

// =================================== model folder ================================================

TEST_CASE("model folder: folder does not exist") {
    CHECK_THROWS_WITH_AS(Model::load("/nonexistent/deepstack-model"), doctest::Contains("/nonexistent/deepstack-model: model folder not found"),
                         Error);
}

TEST_CASE("model folder: config.json missing") {
    BrokenModel m;
    fs::remove(m.file("config.json"));
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("config.json: cannot open"), Error);
}

TEST_CASE("model folder: model.safetensors missing") {
    BrokenModel m;
    fs::remove(m.file("model.safetensors"));
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("no model.safetensors or model.safetensors.index.json"), Error);
}

TEST_CASE("model folder: model.safetensors is a directory") {
    BrokenModel m;
    fs::remove(m.file("model.safetensors"));
    fs::create_directory(m.file("model.safetensors"));
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("model.safetensors: is a directory, not a regular file"), Error);
}

// ---- safetensors, byte level --------------------------------------------------------------------

TEST_CASE("safetensors: empty file") {
    BrokenModel m;
    write_bytes(m.file("model.safetensors"), {});
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("model.safetensors: truncated safetensors file (0 bytes, no header length)"), Error);
}

TEST_CASE("safetensors: shorter than the header length field") {
    BrokenModel m;
    write_bytes(m.file("model.safetensors"), {1, 2, 3});
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("model.safetensors: truncated safetensors file (3 bytes"), Error);
}

TEST_CASE("safetensors: truncated in the data area") {
    BrokenModel m;
    auto b = read_bytes(m.file("model.safetensors"));
    b.resize(b.size() / 2);
    write_bytes(m.file("model.safetensors"), b);
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("is past the end of the data"), Error);
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("file truncated?"), Error);
}

TEST_CASE("safetensors: truncated inside the header") {
    BrokenModel m;
    auto b = read_bytes(m.file("model.safetensors"));
    b.resize(100);
    write_bytes(m.file("model.safetensors"), b);
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("model.safetensors: safetensors header length 12648 runs past the end of the file (100 bytes)"),
                         Error);
}

TEST_CASE("safetensors: header length beyond the file") {
    BrokenModel m;
    auto b = read_bytes(m.file("model.safetensors"));
    for (int i = 0; i < 8; ++i) b[size_t(i)] = 0xff;  // 2^64 - 1
    write_bytes(m.file("model.safetensors"), b);
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("safetensors header length 18446744073709551615 runs past the end of the file"), Error);
}

TEST_CASE("safetensors: header is not JSON") {
    BrokenModel m;
    m.write_safetensors("{\"a\": [1, 2", {});
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("model.safetensors: safetensors header is not valid JSON"), Error);
}

TEST_CASE("safetensors: header is binary garbage") {
    BrokenModel m;
    std::string garbage(64, '\0');
    for (size_t i = 0; i < garbage.size(); ++i) garbage[i] = char(0x80 + i);
    m.write_safetensors(garbage, {});
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("model.safetensors: safetensors header is not valid JSON"), Error);
}

TEST_CASE("safetensors: header is JSON but not an object") {
    BrokenModel m;
    m.write_safetensors("[1, 2, 3]", {});
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("model.safetensors: safetensors header is not a JSON object"), Error);
}

TEST_CASE("safetensors: header entry without dtype") {
    BrokenModel m;
    m.edit_header([](json& h) { h[kNorm].erase("dtype"); });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("tensor 'model.language_model.norm.weight': header entry needs string dtype"), Error);
}

TEST_CASE("safetensors: data_offsets past the end of the file") {
    BrokenModel m;
    m.edit_header([](json& h) { h[kNorm]["data_offsets"] = {uint64_t(1) << 40, (uint64_t(1) << 40) + 256}; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("tensor 'model.language_model.norm.weight': data_offsets end 1099511628032 is past the end of the data"),
                         Error);
}

TEST_CASE("safetensors: data_offsets reversed") {
    BrokenModel m;
    m.edit_header([](json& h) { h[kEmbed]["data_offsets"] = {131072, 0}; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("data_offsets are reversed (131072 > 0)"), Error);
}

TEST_CASE("safetensors: data_offsets negative") {
    BrokenModel m;
    m.edit_header([](json& h) { h[kNorm]["data_offsets"] = {-256, 0}; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("data_offsets must be non-negative integers"), Error);
}

TEST_CASE("safetensors: two tensors overlap") {
    BrokenModel m;
    m.edit_header([](json& h) { h[kNorm]["data_offsets"] = {256, 512}; });  // inside embed_tokens
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("overlap"), Error);
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("model.safetensors: tensors '"), Error);
}

TEST_CASE("safetensors: byte size does not match dtype x shape") {
    BrokenModel m;
    m.edit_header([](json& h) { h[kNorm]["shape"] = {65}; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("tensor 'model.language_model.norm.weight': holds 256 bytes but F32 [65] needs 260"), Error);
}

TEST_CASE("safetensors: unknown dtype") {
    BrokenModel m;
    m.edit_header([](json& h) { h[kNorm]["dtype"] = "F8_E4M3"; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("tensor 'model.language_model.norm.weight': unsupported dtype F8_E4M3"), Error);
}

TEST_CASE("safetensors: negative shape entry") {
    BrokenModel m;
    m.edit_header([](json& h) { h[kNorm]["shape"] = {-64}; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("shape entries must be non-negative integers"), Error);
}

TEST_CASE("safetensors: shape whose element count overflows") {
    BrokenModel m;
    // 2^62 I64 elements are 2^65 bytes: must not wrap around to 0 and match empty offsets.
    m.edit_header([](json& h) {
        h["huge"] = {{"dtype", "I64"}, {"shape", {uint64_t(1) << 62}}, {"data_offsets", {0, 0}}};
    });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("tensor 'huge': shape is too large"), Error);
    m.edit_header([](json& h) {
        h["huge"] = {{"dtype", "F32"}, {"shape", {uint64_t(1) << 40, uint64_t(1) << 40}}, {"data_offsets", {0, 0}}};
    });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("tensor 'huge': shape is too large"), Error);
}

TEST_CASE("safetensors: unaligned header length still loads (tensors copied to aligned memory)") {
    BrokenModel m;
    m.edit_header([](json& h) {
        h["__metadata__"]["note"] = "x";
        if ((h.dump().size() % 4) == 0) h["__metadata__"]["note"] = "xy";
    });
    REQUIRE(read_bytes(m.file("model.safetensors"))[0] % 4 != 0);
    const auto model = m.load();
    Session a(model), b(tiny_model());
    const std::vector<float> la = a.prefill({501, 26, 27, 28}), lb = b.prefill({501, 26, 27, 28});
    REQUIRE(la.size() == lb.size());
    CHECK(std::memcmp(la.data(), lb.data(), la.size() * sizeof(float)) == 0);
}

TEST_CASE("safetensors: tensor missing") {
    BrokenModel m;
    m.edit_header([](json& h) { h.erase(kNorm); });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("missing tensor 'model.language_model.norm.weight'"), Error);
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("model.safetensors"), Error);
}

TEST_CASE("safetensors: tensor with the wrong shape for the architecture") {
    BrokenModel m;
    m.edit_header([](json& h) { h[kEmbed]["shape"] = {64, 512}; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("model.safetensors: tensor 'model.language_model.embed_tokens.weight' has shape [64, 512], expected [512, 64]"),
                         Error);
}

TEST_CASE("safetensors: weight stored as an integer dtype") {
    BrokenModel m;
    m.edit_header([](json& h) {
        h[kNorm]["dtype"] = "I32";  // same byte size as F32
    });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("tensor 'model.language_model.norm.weight' has dtype I32, expected F32, BF16 or F16"), Error);
}

TEST_CASE("safetensors: untied model without lm_head.weight") {
    BrokenModel m;
    m.edit_config([](json& c) {
        c["tie_word_embeddings"] = false;
        c["text_config"]["tie_word_embeddings"] = false;
    });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("missing tensor 'lm_head.weight' (config says tie_word_embeddings is false)"), Error);
}

TEST_CASE("safetensors: sharded index is not JSON") {
    BrokenModel m;
    fs::remove(m.file("model.safetensors"));
    write_text(m.file("model.safetensors.index.json"), "{\"weight_map\": ");
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("model.safetensors.index.json: not valid JSON"), Error);
}

TEST_CASE("safetensors: sharded index without weight_map") {
    BrokenModel m;
    fs::remove(m.file("model.safetensors"));
    write_text(m.file("model.safetensors.index.json"), "{\"metadata\": {}}");
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("model.safetensors.index.json: missing object 'weight_map'"), Error);
}

TEST_CASE("safetensors: shard listed by the index is missing") {
    BrokenModel m;
    fs::rename(m.file("model.safetensors"), m.file("model-00001-of-00002.safetensors"));
    write_text(m.file("model.safetensors.index.json"),
               R"({"weight_map": {"model.language_model.norm.weight": "model-00001-of-00002.safetensors",
                                   "lm_head.weight": "model-00002-of-00002.safetensors"}})");
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("model-00002-of-00002.safetensors: cannot open"), Error);
}

TEST_CASE("safetensors: shard name escapes the folder") {
    BrokenModel m;
    fs::remove(m.file("model.safetensors"));
    write_text(m.file("model.safetensors.index.json"), R"({"weight_map": {"x": "../../etc/passwd"}})");
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("shard name '../../etc/passwd' must be a plain file name"), Error);
}

TEST_CASE("safetensors: tensor listed by the index is not in its shard") {
    BrokenModel m;
    fs::rename(m.file("model.safetensors"), m.file("shard.safetensors"));
    write_text(m.file("model.safetensors.index.json"), R"({"weight_map": {"not.there": "shard.safetensors"}})");
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("tensor 'not.there' is listed but not found in shard.safetensors"), Error);
}

TEST_CASE("safetensors: the same tensor in two shards") {
    BrokenModel m;
    fs::copy_file(m.file("model.safetensors"), m.file("b.safetensors"));
    fs::rename(m.file("model.safetensors"), m.file("a.safetensors"));
    write_text(m.file("model.safetensors.index.json"), R"({"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}})");
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("b.safetensors: tensor 'model.language_model.embed_tokens.weight' also appears in"), Error);
}

// ---- config.json ---------------------------------------------------------------------------------

TEST_CASE("config.json: not JSON") {
    BrokenModel m;
    write_text(m.file("config.json"), "{\"model_type\": \"qwen3_vl\",");
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("config.json: not valid JSON"), Error);
}

TEST_CASE("config.json: empty file") {
    BrokenModel m;
    write_text(m.file("config.json"), "");
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("config.json: not valid JSON"), Error);
}

TEST_CASE("config.json: top level is not an object") {
    BrokenModel m;
    write_text(m.file("config.json"), "[\"qwen3_vl\"]");
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("config.json: top level must be a JSON object"), Error);
}

TEST_CASE("config.json: another model type") {
    BrokenModel m;
    m.edit_config([](json& c) { c["model_type"] = "llava"; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("config.json: model_type 'llava' is not supported (expected qwen3_vl or qwen3_vl_moe)"), Error);
}

TEST_CASE("config.json: model_type missing") {
    BrokenModel m;
    m.edit_config([](json& c) { c.erase("model_type"); });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("config.json: missing field 'model_type'"), Error);
}

TEST_CASE("config.json: text_config missing") {
    BrokenModel m;
    m.edit_config([](json& c) { c.erase("text_config"); });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("config.json: missing object 'text_config'"), Error);
}

TEST_CASE("config.json: vision_config is not an object") {
    BrokenModel m;
    m.edit_config([](json& c) { c["vision_config"] = 7; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("config.json: field 'vision_config' must be an object"), Error);
}

TEST_CASE("config.json: required field missing") {
    BrokenModel m;
    m.edit_config([](json& c) { c["text_config"].erase("hidden_size"); });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("config.json.text_config: missing field 'hidden_size'"), Error);
}

TEST_CASE("config.json: field of the wrong type") {
    BrokenModel m;
    m.edit_config([](json& c) { c["vision_config"]["depth"] = "4"; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("config.json.vision_config: field 'depth' must be an integer"), Error);
}

TEST_CASE("config.json: fractional size") {
    BrokenModel m;
    m.edit_config([](json& c) { c["text_config"]["num_hidden_layers"] = 4.5; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("config.json.text_config: field 'num_hidden_layers' must be an integer"), Error);
}

TEST_CASE("config.json: zero size") {
    BrokenModel m;
    m.edit_config([](json& c) { c["text_config"]["num_attention_heads"] = 0; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("config.json.text_config: field 'num_attention_heads' must be a positive size, got 0"), Error);
}

TEST_CASE("config.json: negative size") {
    BrokenModel m;
    m.edit_config([](json& c) { c["vision_config"]["hidden_size"] = -32; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("config.json.vision_config: field 'hidden_size' must be a positive size, got -32"), Error);
}

TEST_CASE("config.json: size beyond 2^30") {
    BrokenModel m;
    m.edit_config([](json& c) { c["text_config"]["vocab_size"] = uint64_t(1) << 40; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("field 'vocab_size' must be a positive size, got 1099511627776"), Error);
}

TEST_CASE("config.json: zero head_dim from too many heads") {
    BrokenModel m;  // head_dim defaults to hidden_size / num_attention_heads = 64 / 128 = 0
    m.edit_config([](json& c) {
        c["text_config"].erase("head_dim");
        c["text_config"]["num_attention_heads"] = 128;
        c["text_config"]["num_key_value_heads"] = 128;
    });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("config.json: text_config.head_dim must be"), Error);
}

TEST_CASE("config.json: DeepStack tap past the vision depth") {
    BrokenModel m;
    m.edit_config([](json& c) { c["vision_config"]["deepstack_visual_indexes"] = {1, 4}; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("config.json: vision_config.deepstack_visual_indexes[1] = 4 is outside the vision depth 4"),
                         Error);
}

TEST_CASE("config.json: negative DeepStack tap") {
    BrokenModel m;
    m.edit_config([](json& c) { c["vision_config"]["deepstack_visual_indexes"] = {-1}; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("deepstack_visual_indexes[0] = -1 is outside the vision depth"), Error);
}

TEST_CASE("config.json: DeepStack tap that does not fit an int") {
    BrokenModel m;
    m.edit_config([](json& c) { c["vision_config"]["deepstack_visual_indexes"] = {int64_t(1) << 32 | 1}; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("config.json.vision_config: field 'deepstack_visual_indexes' must hold integers"), Error);
}

TEST_CASE("config.json: more DeepStack taps than decoder layers") {
    BrokenModel m;
    m.edit_config([](json& c) { c["vision_config"]["deepstack_visual_indexes"] = {0, 1, 2, 3, 3}; c["vision_config"]["depth"] = 4; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("config.json: more deepstack_visual_indexes than decoder layers"), Error);
}

TEST_CASE("config.json: vision out_hidden_size differs from the text hidden size") {
    BrokenModel m;
    m.edit_config([](json& c) { c["vision_config"]["out_hidden_size"] = 32; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("vision_config.out_hidden_size (32) must equal text_config.hidden_size (64)"), Error);
}

TEST_CASE("config.json: attention heads not a multiple of KV heads") {
    BrokenModel m;
    m.edit_config([](json& c) { c["text_config"]["num_key_value_heads"] = 3; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("num_attention_heads (4) must be a multiple of num_key_value_heads (3)"), Error);
}

TEST_CASE("config.json: mrope_section does not sum to head_dim/2") {
    BrokenModel m;
    m.edit_config([](json& c) { c["text_config"]["rope_scaling"]["mrope_section"] = {8, 5, 5}; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("mrope_section must be three non-negative numbers summing to head_dim/2 (16)"), Error);
}

TEST_CASE("config.json: mrope_section that overflows an int") {
    BrokenModel m;
    m.edit_config([](json& c) { c["text_config"]["rope_scaling"]["mrope_section"] = {2147483647, 2147483647, 4}; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("mrope_section must be three non-negative numbers summing to head_dim/2"), Error);
}

TEST_CASE("config.json: special token id outside the vocabulary") {
    BrokenModel m;
    m.edit_config([](json& c) { c["image_token_id"] = 151655; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("config.json: image_token_id 151655 is outside the vocabulary"), Error);
}

TEST_CASE("config.json: unknown fusion scheme") {
    BrokenModel m;
    m.edit_config([](json& c) { c["vision_config"]["deepstack_fusion"] = {{"type", "concat"}}; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("vision_config.deepstack_fusion: unknown type 'concat'"), Error);
}

TEST_CASE("config.json: stack fusion with a scale that overflows") {
    BrokenModel m;
    m.edit_config([](json& c) { c["vision_config"]["deepstack_fusion"] = {{"type", "stack"}, {"scale", 65536}}; });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("run past the last decoder layer"), Error);
}

TEST_CASE("config.json: patch sizes whose products overflow") {
    BrokenModel m;
    m.edit_config([](json& c) {
        c["vision_config"]["patch_size"] = 1 << 20;
        c["vision_config"]["temporal_patch_size"] = 1 << 20;
    });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("config.json: vision_config"), Error);
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("too large"), Error);
}

TEST_CASE("config.json: giant sizes with a tiny checkpoint fail on shapes, not on allocation") {
    BrokenModel m;
    m.edit_config([](json& c) {
        c["text_config"]["vocab_size"] = 1 << 30;
        c["text_config"]["intermediate_size"] = 1 << 30;
        c["text_config"]["num_hidden_layers"] = 1 << 30;
        c["text_config"]["max_position_embeddings"] = 1 << 30;
        c["vision_config"]["intermediate_size"] = 1 << 30;
        c["vision_config"]["depth"] = 1 << 30;
    });
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("has shape"), Error);
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("expected [1073741824, 32]"), Error);
}

TEST_CASE("preprocessor_config.json: not JSON") {
    BrokenModel m;
    write_text(m.file("preprocessor_config.json"), "size: 5");
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("preprocessor_config.json: not valid JSON"), Error);
}

TEST_CASE("preprocessor_config.json: min_pixels above max_pixels") {
    BrokenModel m;
    json p = m.read_json("preprocessor_config.json");
    p["size"] = {{"shortest_edge", 100000}, {"longest_edge", 1000}};
    m.write_json("preprocessor_config.json", p);
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("preprocessor_config.json: size needs 0 < shortest_edge"), Error);
}

TEST_CASE("preprocessor_config.json: pixel limit beyond int64") {
    BrokenModel m;
    json p = m.read_json("preprocessor_config.json");
    p["size"] = {{"shortest_edge", 1e300}, {"longest_edge", 1e300}};
    m.write_json("preprocessor_config.json", p);
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("preprocessor_config.json.size: field 'shortest_edge' (a pixel count) must be between 0 and 67108864"), Error);
}

TEST_CASE("preprocessor_config.json: patch size disagrees with config.json") {
    BrokenModel m;
    json p = m.read_json("preprocessor_config.json");
    p["patch_size"] = 14;
    m.write_json("preprocessor_config.json", p);
    CHECK_THROWS_WITH_AS(m.load(), doctest::Contains("preprocessor patch_size/merge_size/temporal_patch_size disagree with config.json"), Error);
}

// ---- tokenizer.json ------------------------------------------------------------------------------

TEST_CASE("tokenizer.json: the small test tokenizer works") {
    const Tokenizer t = Tokenizer::parse(small_tokenizer_json().dump(), "tokenizer.json");
    CHECK(t.encode("hello") == std::vector<int>{259});
    CHECK(t.encode("<|im_start|>hello7") == std::vector<int>{301, 259, '7'});
}

TEST_CASE("tokenizer.json: file missing") {
    CHECK_THROWS_WITH_AS(Tokenizer::load("/nonexistent/tokenizer.json"), doctest::Contains("/nonexistent/tokenizer.json: cannot open"), Error);
}

TEST_CASE("tokenizer.json: not JSON") {
    CHECK_THROWS_WITH_AS(Tokenizer::parse("{\"model\": {", "tokenizer.json"), doctest::Contains("tokenizer.json: not valid JSON"), Error);
}

TEST_CASE("tokenizer.json: top level is not an object") {
    CHECK_THROWS_WITH_AS(Tokenizer::parse("\"BPE\"", "tokenizer.json"), doctest::Contains("tokenizer.json: top level must be a JSON object"), Error);
}

TEST_CASE("tokenizer.json: model missing") {
    json j = small_tokenizer_json();
    j.erase("model");
    CHECK_THROWS_WITH_AS(Tokenizer::parse(j.dump(), "tokenizer.json"), doctest::Contains("tokenizer.json: missing field 'model'"), Error);
}

TEST_CASE("tokenizer.json: model type other than BPE") {
    json j = small_tokenizer_json();
    j["model"]["type"] = "WordPiece";
    CHECK_THROWS_WITH_AS(Tokenizer::parse(j.dump(), "tokenizer.json"), doctest::Contains("tokenizer.json: model.type 'WordPiece' is not supported"), Error);
}

TEST_CASE("tokenizer.json: vocab id out of range") {
    json j = small_tokenizer_json();
    j["model"]["vocab"]["zz"] = -5;
    CHECK_THROWS_WITH_AS(Tokenizer::parse(j.dump(), "tokenizer.json"), doctest::Contains("tokenizer.json: model.vocab['zz']: id must be an integer"), Error);
}

TEST_CASE("tokenizer.json: huge vocab id does not allocate") {
    json j = small_tokenizer_json();
    j["model"]["vocab"]["zz"] = int64_t(1) << 40;
    CHECK_THROWS_WITH_AS(Tokenizer::parse(j.dump(), "tokenizer.json"), doctest::Contains("id must be an integer in [0, 16777216)"), Error);
}

TEST_CASE("tokenizer.json: vocab lacks a byte symbol") {
    json j = small_tokenizer_json();
    j["model"]["vocab"].erase("a");
    CHECK_THROWS_WITH_AS(Tokenizer::parse(j.dump(), "tokenizer.json"), doctest::Contains("lacks the byte-level symbol 'a' of byte 97"), Error);
}

TEST_CASE("tokenizer.json: merge of unknown tokens") {
    json j = small_tokenizer_json();
    j["model"]["merges"].push_back("x yz");
    CHECK_THROWS_WITH_AS(Tokenizer::parse(j.dump(), "tokenizer.json"), doctest::Contains("model.merges[4]: token 'yz' is not in model.vocab"), Error);
}

TEST_CASE("tokenizer.json: malformed merge") {
    json j = small_tokenizer_json();
    j["model"]["merges"].push_back(42);
    CHECK_THROWS_WITH_AS(Tokenizer::parse(j.dump(), "tokenizer.json"), doctest::Contains("model.merges[4]: must be a string"), Error);
}

TEST_CASE("tokenizer.json: pre-tokenizer regex does not compile") {
    json j = small_tokenizer_json();
    j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(\\p{L";
    CHECK_THROWS_WITH_AS(Tokenizer::parse(j.dump(), "tokenizer.json"), doctest::Contains("regex does not compile"), Error);
}

TEST_CASE("tokenizer.json: added token with an empty content") {
    json j = small_tokenizer_json();
    j["added_tokens"][0]["content"] = "";
    CHECK_THROWS_WITH_AS(Tokenizer::parse(j.dump(), "tokenizer.json"), doctest::Contains("added_tokens[0].content: must be a non-empty string"), Error);
}

// ---- images --------------------------------------------------------------------------------------

TEST_CASE("image: file missing") {
    CHECK_THROWS_WITH_AS(load_image("/nonexistent/picture.png"), doctest::Contains("/nonexistent/picture.png: cannot open"), Error);
}

TEST_CASE("image: empty file") {
    TempDir d;
    write_bytes(d.str("empty.png"), {});
    CHECK_THROWS_WITH_AS(load_image(d.str("empty.png")), doctest::Contains("empty.png: empty file, not an image"), Error);
}

TEST_CASE("image: truncated PNG") {
    auto b = fixture_png();
    b.resize(200);
    CHECK_THROWS_WITH_AS(decode_image(b.data(), b.size(), "cut.png"), doctest::Contains("cut.png: not a decodable image"), Error);
}

TEST_CASE("image: PNG cut inside its header") {
    auto b = fixture_png();
    b.resize(20);
    CHECK_THROWS_WITH_AS(decode_image(b.data(), b.size(), "cut.png"), doctest::Contains("cut.png: not a decodable image"), Error);
}

TEST_CASE("image: PNG with corrupt compressed data") {
    auto b = fixture_png();
    for (size_t i = 60; i < b.size() - 20; i += 7) b[i] ^= 0x5a;
    CHECK_THROWS_WITH_AS(decode_image(b.data(), b.size(), "corrupt.png"), doctest::Contains("corrupt.png: not a decodable image"), Error);
}

TEST_CASE("image: not an image") {
    const std::string text = "this is a text file, not a picture\n";
    CHECK_THROWS_WITH_AS(decode_image(reinterpret_cast<const uint8_t*>(text.data()), text.size(), "notes.txt"),
                         doctest::Contains("notes.txt: not a decodable image"), Error);
}

TEST_CASE("image: a directory") {
    TempDir d;
    CHECK_THROWS_WITH_AS(load_image(d.str()), doctest::Contains("not a regular file"), Error);
}

TEST_CASE("image: zero width") {
    auto b = png_with_size(0, 56);
    CHECK_THROWS_WITH_AS(decode_image(b.data(), b.size(), "zero.png"), doctest::Contains("zero.png: image has a zero side (0x56)"), Error);
}

TEST_CASE("image: zero height") {
    auto b = png_with_size(80, 0);
    CHECK_THROWS_WITH_AS(decode_image(b.data(), b.size(), "zero.png"), doctest::Contains("zero.png: image has a zero side (80x0)"), Error);
}

TEST_CASE("image: huge declared PNG dimensions are refused from the header") {
    auto b = png_with_size(100000, 100000);
    CHECK_THROWS_WITH_AS(decode_image(b.data(), b.size(), "bomb.png"),
                         doctest::Contains("bomb.png: image declares 100000x100000 pixels, above the decoder limit"), Error);
    auto c = png_with_size(0x7fffffff, 0x7fffffff);
    CHECK_THROWS_WITH_AS(decode_image(c.data(), c.size(), "bomb.png"), doctest::Contains("above the decoder limit"), Error);
    auto d = png_with_size(20000, 20000);  // sides within limits, 4e8 pixels above the pixel limit
    CHECK_THROWS_WITH_AS(decode_image(d.data(), d.size(), "bomb.png"), doctest::Contains("image declares 20000x20000 pixels"), Error);
}

TEST_CASE("image: huge declared GIF dimensions are refused from the header") {
    std::vector<uint8_t> b = {'G', 'I', 'F', '8', '9', 'a', 0, 0, 0, 0, 0, 0, 0};
    put_le(b, 6, 65535, 2);
    put_le(b, 8, 65535, 2);
    b.insert(b.end(), {',', 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 2, 2, 0x4c, 0x01, 0, ';'});
    CHECK_THROWS_WITH_AS(decode_image(b.data(), b.size(), "bomb.gif"), doctest::Contains("bomb.gif: image declares 65535x65535 pixels, above the decoder limit"),
                         Error);
}

TEST_CASE("image: huge declared BMP dimensions are refused from the header") {
    std::vector<uint8_t> b(54, 0);
    b[0] = 'B';
    b[1] = 'M';
    put_le(b, 2, 54 + 12, 4);
    put_le(b, 10, 54, 4);
    put_le(b, 14, 40, 4);
    put_le(b, 18, 60000, 4);  // width
    put_le(b, 22, 60000, 4);  // height
    put_le(b, 26, 1, 2);
    put_le(b, 28, 24, 2);
    b.resize(66, 0x80);
    CHECK_THROWS_WITH_AS(decode_image(b.data(), b.size(), "bomb.bmp"), doctest::Contains("bomb.bmp: image declares 60000x60000 pixels, above the decoder limit"),
                         Error);
}

TEST_CASE("image: unsupported format") {
    // A little-endian TIFF header and a WebP header: neither is decoded.
    std::vector<uint8_t> tiff = {'I', 'I', 42, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    CHECK_THROWS_WITH_AS(decode_image(tiff.data(), tiff.size(), "scan.tiff"), doctest::Contains("scan.tiff: not a decodable image"), Error);
    std::vector<uint8_t> webp = {'R', 'I', 'F', 'F', 26, 0, 0, 0, 'W', 'E', 'B', 'P', 'V', 'P', '8', 'L', 14, 0, 0, 0,
                                 0x2f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    CHECK_THROWS_WITH_AS(decode_image(webp.data(), webp.size(), "photo.webp"), doctest::Contains("photo.webp: not a decodable image"), Error);
}

TEST_CASE("image: 16-bit greyscale PGM (stb_image 2.27 over-reads converting it)") {
    std::string pgm = "P5 3 2 65535\n";
    pgm += std::string(12, '\x7f');
    CHECK_THROWS_WITH_AS(decode_image(reinterpret_cast<const uint8_t*>(pgm.data()), pgm.size(), "deep.pgm"),
                         doctest::Contains("deep.pgm: 16-bit greyscale PGM is not supported"), Error);
}

TEST_CASE("image: aspect ratio above 200") {
    const Image img = solid_image(402, 2);
    CHECK_THROWS_WITH_AS(prepare_image(*tiny_model(), img), doctest::Contains("image of 402x2 (WxH) has aspect ratio 201"), Error);
}

TEST_CASE("image: inconsistent Image struct") {
    Image img = solid_image(80, 56);
    img.rgb.resize(100);
    CHECK_THROWS_WITH_AS(prepare_image(*tiny_model(), img), doctest::Contains("image of 80x56 holds 100 bytes, expected width*height*3"), Error);
}

TEST_CASE("image: large image is resized within max_pixels") {
    const Image img = solid_image(1500, 1000);
    PixelBudget b;
    b.max_pixels = 200000;
    const VisualInput v = prepare_image(*tiny_model(), img, b);
    CHECK(int64_t(v.patches.height) * v.patches.width <= b.max_pixels);
    CHECK(v.patches.pixels.size() == size_t(v.patches.grid_thw[0]) * v.patches.grid_thw[1] * v.patches.grid_thw[2] * 1536);
}

TEST_CASE("image: pixel budget with min_pixels above max_pixels") {
    PixelBudget b;
    b.min_pixels = 1 << 20;
    b.max_pixels = 1 << 16;
    CHECK_THROWS_WITH_AS(prepare_image(*tiny_model(), solid_image(64, 64), b), doctest::Contains("min_pixels (1048576) exceeds max_pixels (65536)"),
                         Error);
}

// ---- text and prompts ----------------------------------------------------------------------------

TEST_CASE("text: invalid UTF-8 to the tokenizer") {
    const Tokenizer t = Tokenizer::parse(small_tokenizer_json().dump(), "tokenizer.json");
    CHECK_THROWS_WITH_AS(t.encode("hello \xff world"), doctest::Contains("tokenizer.json: cannot encode text that is not valid UTF-8 (byte 6)"), Error);
    CHECK_THROWS_WITH_AS(t.encode("caf\xc3"), doctest::Contains("not valid UTF-8 (byte 3)"), Error);           // cut character
    CHECK_THROWS_WITH_AS(t.encode("\xed\xa0\x80"), doctest::Contains("not valid UTF-8 (byte 0)"), Error);      // surrogate
    CHECK_THROWS_WITH_AS(t.encode("\xc0\xaf"), doctest::Contains("not valid UTF-8 (byte 0)"), Error);          // overlong
}

TEST_CASE("text: token id outside the vocabulary") {
    Session s(tiny_model());
    CHECK_THROWS_WITH_AS(s.prefill({501, 512}), doctest::Contains("token id 512 is outside the vocabulary (512)"), Error);
    CHECK_THROWS_WITH_AS(s.prefill({-1}), doctest::Contains("token id -1 is outside the vocabulary"), Error);
}

TEST_CASE("text: empty prompt") {
    Session s(tiny_model());
    CHECK_THROWS_WITH_AS(s.prefill({}), doctest::Contains("prefill: empty token list"), Error);
}

TEST_CASE("text: prompt longer than the context") {
    Session::Options opt;
    opt.max_context = 50;
    Session s(tiny_model(), opt);
    const std::vector<int> ids = golden_input_ids(kTinyImage);
    CHECK_THROWS_WITH_AS(s.prefill(ids), doctest::Contains("prompt of 111 tokens does not fit: the context holds 50 tokens and 0 are used"), Error);
    CHECK(s.length() == 0);
}

TEST_CASE("text: decoding past the context") {
    Session::Options opt;
    opt.max_context = 4;
    Session s(tiny_model(), opt);
    s.prefill({501, 26, 27, 28});
    CHECK_THROWS_WITH_AS(s.decode(29), doctest::Contains("does not fit: the context holds 4 tokens and 4 are used"), Error);
    CHECK(s.length() == 4);
}

TEST_CASE("text: more image pad tokens than the visuals make") {
    const auto m = tiny_model();
    const VisualInput img = prepare_image(*m, load_image(kTinyImage + "/inputs/image0_80x56.png"));
    std::vector<int> ids = golden_input_ids(kTinyImage);  // 70 pad tokens for this image
    ids.insert(ids.end() - 3, 505);       // one more, in the text after the image
    Session s(m);
    CHECK_THROWS_WITH_AS(s.prefill(ids, {img}), doctest::Contains("prompt has 71 image/video pad tokens but the visual inputs make 70 tokens"), Error);
}

TEST_CASE("text: image pad tokens but no visuals") {
    Session s(tiny_model());
    CHECK_THROWS_WITH_AS(s.prefill(golden_input_ids(kTinyImage)), doctest::Contains("prompt has 70 image/video pad tokens but the visual inputs make 0 tokens"), Error);
}

TEST_CASE("text: fewer image pad tokens than the image needs") {
    const auto m = tiny_model();
    const VisualInput img = prepare_image(*m, load_image(kTinyImage + "/inputs/image0_80x56.png"));
    std::vector<int> ids = golden_input_ids(kTinyImage);
    auto first_pad = std::find(ids.begin(), ids.end(), 505);
    ids.erase(first_pad);
    Session s(m);
    CHECK_THROWS_WITH_AS(s.prefill(ids, {img}), doctest::Contains("visual placeholder run is shorter than its grid (7x10 tokens)"), Error);
}

TEST_CASE("text: more images than pad-token blocks") {
    const auto m = tiny_model();
    const VisualInput img = prepare_image(*m, load_image(kTinyImage + "/inputs/image0_80x56.png"));
    Session s(m);
    CHECK_THROWS_WITH_AS(s.prefill(golden_input_ids(kTinyImage), {img, img}),
                         doctest::Contains("prompt has 1 visual placeholder blocks but 2 visual inputs were given"), Error);
}

TEST_CASE("text: visual input whose pixels do not match its grid") {
    const auto m = tiny_model();
    VisualInput img = prepare_image(*m, load_image(kTinyImage + "/inputs/image0_80x56.png"));
    img.patches.pixels.resize(img.patches.pixels.size() / 2);
    Session s(m);
    CHECK_THROWS_WITH_AS(s.prefill(golden_input_ids(kTinyImage), {img}), doctest::Contains("visual input 0 holds 215040 pixel values but its grid (1, 14, 20) needs 430080"),
                         Error);
}

// =================================== files that are not regular files, size caps ===================

namespace {

// A FIFO at `path`. Should a reader block on it (the failure these tests guard against), a
// watchdog opens the write end after 20 s so the read ends and the test fails instead of hanging.
struct Fifo {
    std::string path;
    std::atomic<bool> done{false};
    std::thread watchdog;
    explicit Fifo(std::string p) : path(std::move(p)) {
        REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
        watchdog = std::thread([this] {
            for (int i = 0; i < 200 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
            while (!done) {
                const int fd = ::open(path.c_str(), O_WRONLY | O_NONBLOCK);
                if (fd >= 0) ::close(fd);
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
            }
        });
    }
    ~Fifo() {
        done = true;
        watchdog.join();
    }
};

}  // namespace

TEST_CASE("inputs: a FIFO anywhere an input file is read is refused at once") {
    BrokenModel b;
    const std::string fifo_error = "is a FIFO (named pipe), not a regular file";
    {
        Fifo f(b.str("picture.png"));
        CHECK_THROWS_WITH_AS(load_image(f.path), (f.path + ": " + fifo_error).c_str(), Error);
        CHECK_THROWS_WITH_AS(load_video(f.path, 0, PreprocessConfig{}), (f.path + ": " + fifo_error).c_str(), Error);
    }
    {
        Fifo f(b.str("clip.txt"));
        CHECK_THROWS_WITH_AS(load_video(f.path, 0, PreprocessConfig{}), (f.path + ": " + fifo_error).c_str(), Error);
    }
    {
        Fifo f(b.str("frame.png"));
        write_text(b.str("list.txt"), "frame.png\nframe.png\n");
        CHECK_THROWS_WITH_AS(load_video(b.str("list.txt"), 0, PreprocessConfig{}), (f.path + ": " + fifo_error).c_str(), Error);
    }
    for (const char* name : {"generation_config.json", "preprocessor_config.json", "video_preprocessor_config.json", "config.json"}) {
        CAPTURE(name);
        fs::remove(b.file(name));
        Fifo f(b.file(name));
        if (std::string(name) == "generation_config.json") {
            CHECK_THROWS_WITH_AS(detail::load_generation_config(b.model), (f.path + ": " + fifo_error).c_str(), Error);
        } else {
            CHECK_THROWS_WITH_AS(b.load(), (f.path + ": " + fifo_error).c_str(), Error);
        }
        fs::remove(f.path);
        if (fs::exists(kTinyImage + "/model/" + name)) fs::copy_file(kTinyImage + "/model/" + name, b.file(name));
    }
    {
        Fifo f(b.str("tokenizer.json"));
        CHECK_THROWS_WITH_AS(Tokenizer::load(f.path), (f.path + ": " + fifo_error).c_str(), Error);
    }
    CHECK_THROWS_WITH_AS(load_image("/dev/zero"), "/dev/zero: is a character device, not a regular file", Error);
    CHECK_THROWS_WITH_AS(Tokenizer::load(b.str()), (b.str() + ": is a directory, not a regular file").c_str(), Error);
}

TEST_CASE("inputs: JSON files above their size cap are refused before they are read") {
    BrokenModel b;
    fs::resize_file(b.file("config.json"), uintmax_t(2) << 30);  // sparse: 2 GiB that take no disk space
    CHECK_THROWS_WITH_AS(b.load(), (b.file("config.json") + ": 2147483648 bytes is too large for a JSON file (limit 16777216 bytes)").c_str(), Error);
    write_text(b.str("tokenizer.json"), "{}");
    fs::resize_file(b.str("tokenizer.json"), uintmax_t(2) << 30);
    CHECK_THROWS_WITH_AS(Tokenizer::load(b.str("tokenizer.json")),
                         (b.str("tokenizer.json") + ": 2147483648 bytes is too large for a tokenizer.json (limit 268435456 bytes)").c_str(), Error);
}

TEST_CASE("inputs: JSON nested deeper than the limit is refused (configs, safetensors index)") {
    BrokenModel b;
    const std::string deep = std::string(20000, '[') + std::string(20000, ']');
    write_text(b.file("config.json"), "{\"model_type\": \"qwen3_vl\", \"x\": " + deep + "}");
    CHECK_THROWS_WITH_AS(b.load(), (b.file("config.json") + ": JSON nested deeper than 128 levels").c_str(), Error);
    fs::rename(b.file("model.safetensors"), b.file("model-00001-of-00001.safetensors"));
    write_text(b.file("model.safetensors.index.json"), "{\"weight_map\": " + deep + "}");
    CHECK_THROWS_WITH_AS(WeightStore::open_folder(b.model), (b.file("model.safetensors.index.json") + ": JSON nested deeper than 128 levels").c_str(), Error);
}

TEST_CASE("safetensors: bytes after the last tensor are refused, before a read-in copy is made") {
    BrokenModel b;
    auto [h, data] = b.read_safetensors();
    const size_t used = data.size();
    data.resize(used + 5);
    b.write_safetensors(h.dump(), data);
    CHECK_THROWS_WITH_AS(b.load(), doctest::Contains("model.safetensors: 5 bytes after the last tensor's data that no tensor uses"), Error);
    fs::resize_file(b.file("model.safetensors"), fs::file_size(b.file("model.safetensors")) + (uintmax_t(5) << 30));  // 5 GiB sparse
    CHECK_THROWS_WITH_AS(WeightStore::open_folder(b.model, FileAccess::Read), doctest::Contains("5368709125 bytes after the last tensor's data"), Error);
}

TEST_CASE("safetensors: writing to a full disk is an error") {
    CHECK_THROWS_WITH_AS(write_safetensors("/dev/full", {TensorBlob{"x", DType::F32, {1}, std::vector<uint8_t>(4)}}),
                         "/dev/full: write failed (No space left on device)", Error);
}

TEST_CASE("safetensors: a shard name holding a NUL byte") {
    BrokenModel b;
    fs::rename(b.file("model.safetensors"), b.file("model-00001-of-00001.safetensors"));
    json idx = {{"weight_map", {{kNorm, std::string("model\0.safetensors", 18)}}}};
    b.write_json("model.safetensors.index.json", idx);
    CHECK_THROWS_WITH_AS(WeightStore::open_folder(b.model),
                         (b.file("model.safetensors.index.json") + ": a shard name holds a NUL byte (must be a plain file name)").c_str(), Error);
}

// =================================== numeric fields ==============================================

TEST_CASE("config.json: rms_norm_eps must be finite, positive and at most 1") {
    for (double eps : {-1.0, 0.0, 1e300}) {
        CAPTURE(eps);
        BrokenModel b;
        b.edit_config([&](json& j) { j["text_config"]["rms_norm_eps"] = eps; });
        CHECK_THROWS_WITH_AS(b.load(), doctest::Contains("config.json.text_config: field 'rms_norm_eps' = "), Error);
        CHECK_THROWS_WITH_AS(b.load(), doctest::Contains("must be a finite number in (1e-30, 1]"), Error);
    }
}

TEST_CASE("preprocessor_config.json: image_std, image_mean, rescale_factor and fps within bounds") {
    struct Case {
        const char* key;
        json value;
        const char* message;
    };
    const Case cases[] = {
        {"image_std", {0.5, 1e-45, 0.5}, "field 'image_std'[1] = 1e-45 must be a finite number in [0.001, 1000]"},
        {"image_mean", {0.5, 0.5, -1e9}, "field 'image_mean'[2] = -1e+09 must be a finite number in [-1000, 1000]"},
        {"rescale_factor", 1e308, "field 'rescale_factor' = 1e+308 must be a finite number in (0, 1]"},
        {"rescale_factor", 0, "field 'rescale_factor' = 0 must be a finite number in (0, 1]"},
        {"fps", 1e308, "field 'fps' = 1e+308 must be a finite number in (0, 1000]"},
        {"max_frames", 1 << 30, "field 'max_frames' = 1073741824 is above the limit of 100000"},
    };
    for (const Case& c : cases) {
        CAPTURE(c.key);
        BrokenModel b;
        json j = b.read_json("video_preprocessor_config.json");
        j[c.key] = c.value;
        b.write_json("video_preprocessor_config.json", j);
        CHECK_THROWS_WITH_AS(b.load(), doctest::Contains(c.message), Error);
    }
}

TEST_CASE("generation_config.json and sampling settings: settings outside their ranges are refused, naming the field") {
    const std::pair<json, const char*> cases[] = {
        {{{"do_sample", true}, {"temperature", -1}}, "field 'temperature' = -1 must be a finite number in [0, 100]"},
        {{{"do_sample", true}, {"top_p", 0}}, "field 'top_p' = 0 must be a finite number in (0, 1]"},
        {{{"do_sample", true}, {"top_p", 1.5}}, "field 'top_p' = 1.5 must be a finite number in (0, 1]"},
        {{{"do_sample", true}, {"min_p", -0.1}}, "field 'min_p' = -0.1 must be a finite number in [0, 1]"},
        {{{"repetition_penalty", 0}}, "field 'repetition_penalty' = 0 must be a finite number in (0, 100]"},
        {{{"presence_penalty", 1e300}}, "field 'presence_penalty' = 1e+300 must be a finite number in [-100, 100]"},
    };
    for (const auto& [fields, message] : cases) {
        CAPTURE(fields.dump());
        BrokenModel b;
        b.write_json("generation_config.json", fields);
        CHECK_THROWS_WITH_AS(detail::load_generation_config(b.model), doctest::Contains(message), Error);
    }
    detail::SamplingParams p;
    p.temperature = -1;
    CHECK_THROWS_WITH_AS(detail::check_sampling_params(p), "sampling: temperature = -1 is outside [0, 100] (0 is greedy)", Error);
    CHECK_THROWS_WITH_AS(detail::Sampler{p}, "sampling: temperature = -1 is outside [0, 100] (0 is greedy)", Error);
    p.temperature = std::nanf("");
    CHECK_THROWS_WITH_AS(detail::check_sampling_params(p), doctest::Contains("sampling: temperature = nan is outside"), Error);
    p = detail::SamplingParams{};
    p.top_p = 0;
    CHECK_THROWS_WITH_AS(detail::check_sampling_params(p), "sampling: top_p = 0 is outside (0, 1]", Error);
    p = detail::SamplingParams{};
    p.top_k = -3;
    CHECK_THROWS_WITH_AS(detail::check_sampling_params(p), "sampling: top_k = -3 must be >= 0 (0 keeps all tokens)", Error);
}

// =================================== text the library parses =====================================

TEST_CASE("grounding: parse_boxes on JSON nested 20000 deep skips it without recursing") {
    std::string text;
    for (int i = 0; i < 20000; ++i) text += "{\"a\":";
    text += "1";
    text += std::string(20000, '}');
    text += R"( [{"bbox_2d": [0, 0, 500, 500], "label": "cat"}])";
    const std::vector<Box> boxes = parse_boxes(text, 100, 100);
    REQUIRE(boxes.size() == 1);
    CHECK(boxes[0].label == "cat");
    CHECK(boxes[0].x2 == 50);
    CHECK(parse_boxes(std::string(30000, '['), 100, 100).empty());
}

TEST_CASE("tokenizer: a 10 MB run of spaces is split with Qwen's pre-tokenizer regex (no match-limit error)") {
    json j = small_tokenizer_json();
    j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] =
        R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    const Tokenizer tok = Tokenizer::parse(j.dump(), "tokenizer.json");
    const std::vector<int> ids = tok.encode(std::string(10 << 20, ' '));
    CHECK(ids.size() == size_t(10) << 20);  // no merges of spaces in this vocabulary: one id per byte
}

// Last in the file: a stack overflow here would end the test program.
TEST_CASE("tokenizer.json: deeply nested value in an unsupported field") {
    json j = small_tokenizer_json();
    std::string nested(100000, '[');
    nested += std::string(100000, ']');
    std::string text = j.dump();
    text.replace(text.find("\"truncation\":null"), 17, "\"truncation\":" + nested);
    CHECK_THROWS_WITH_AS(Tokenizer::parse(text, "tokenizer.json"), "tokenizer.json: JSON nested deeper than 128 levels", Error);
}
