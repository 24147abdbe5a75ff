// deepstack/config.hpp - model, preprocessor and generation configuration read from a Hugging Face
// model folder. Every size comes from the files; every field is checked with an error naming it.
#pragma once
#include "common.hpp"
#include "json.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

namespace deepstack::detail {

// How visual features enter the decoder (see fusion.hpp), and for StackVit also the vision
// encoder (see vision_stacks.hpp).
struct FusionConfig {
    enum class Type { Inject, Gated, Stack, StackVit };
    Type type = Type::Inject;
    float eps = 1e-6f;      // gated: LayerNorm eps
    int layer_start = 0;    // stack / stack_vit: first decoder layer / vision block whose input gets a stack
    int layer_interval = 1; // stack / stack_vit: layers / blocks between stacks
    int scale = 2;          // stack / stack_vit: high-resolution factor r (r*r stacks)

    bool has_highres_stream() const { return type == Type::Stack || type == Type::StackVit; }
    // The layer / block whose input gets stack q (q < scale*scale).
    int stack_target(int q) const { return layer_start + q * layer_interval; }
};

struct VisionConfig {
    int depth = 0, hidden_size = 0, num_heads = 0, intermediate_size = 0;
    int patch_size = 16, temporal_patch_size = 2, spatial_merge_size = 2, in_channels = 3;
    int num_position_embeddings = 0, out_hidden_size = 0;
    std::vector<int> deepstack_visual_indexes;
    FusionConfig fusion;

    int head_dim() const { return hidden_size / num_heads; }
    int patch_dim() const { return in_channels * temporal_patch_size * patch_size * patch_size; }
    int merged_dim() const { return hidden_size * spatial_merge_size * spatial_merge_size; }
};

struct TextConfig {
    int hidden_size = 0, num_hidden_layers = 0, num_attention_heads = 0, num_key_value_heads = 0;
    int head_dim = 0, intermediate_size = 0, vocab_size = 0;
    float rms_norm_eps = 1e-6f;
    double rope_theta = 5e6;
    std::array<int, 3> mrope_section{24, 20, 20};  // frequency slots for (t, h, w); sums to head_dim/2
    int64_t max_position_embeddings = 262144;

    // Mixture of experts (model_type qwen3_vl_moe); num_experts 0 = every layer dense. A sparse
    // layer's MLP is num_experts SwiGLU experts of moe_intermediate_size, num_experts_per_tok of
    // them chosen per token by a router.
    int num_experts = 0, num_experts_per_tok = 0, moe_intermediate_size = 0, decoder_sparse_step = 1;
    std::vector<int> mlp_only_layers;  // layers kept dense

    // Whether decoder layer `layer` has the mixture-of-experts MLP (else the dense one).
    bool sparse_layer(int layer) const {
        return num_experts > 0 && (layer + 1) % decoder_sparse_step == 0 &&
               std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) == mlp_only_layers.end();
    }
};

struct ModelConfig {
    TextConfig text;
    VisionConfig vision;
    bool tie_word_embeddings = false;
    int image_token_id = 151655, video_token_id = 151656;
    int vision_start_token_id = 151652, vision_end_token_id = 151653;
    std::vector<int> eos_token_ids;  // text_config.eos_token_id (int or list)
};

// Largest pixel count a preprocessor config or a host's budget may ask the processor for (4 times
// Qwen3-VL's own 2^24): a picture is scaled up to min_pixels and down to max_pixels, and each
// processed pixel costs 24 bytes of patch values (1.6 GB at this limit).
constexpr int64_t kMaxProcessorPixels = int64_t(1) << 26;

// preprocessor_config.json / video_preprocessor_config.json.
struct PreprocessConfig {
    int patch_size = 16, temporal_patch_size = 2, merge_size = 2;
    int64_t min_pixels = 65536, max_pixels = 16777216;
    std::array<float, 3> mean{0.5f, 0.5f, 0.5f}, std{0.5f, 0.5f, 0.5f};
    double rescale_factor = 1.0 / 255.0;
    // video only
    double fps = 2.0;
    int min_frames = 4, max_frames = 768;
};


// Typed field access with errors that name the file and the field.
struct JsonReader {
    const nlohmann::json& j;
    std::string where;  // "config.json: vision_config"

    const nlohmann::json* find(const char* key) const {
        auto it = j.find(key);
        return it == j.end() || it->is_null() ? nullptr : &*it;
    }
    int positive_int(const char* key) const {
        const auto* v = find(key);
        if (!v) throw Error(where + ": missing field '" + key + "'");
        if (!v->is_number_integer()) throw Error(where + ": field '" + key + "' must be an integer");
        int64_t x = v->get<int64_t>();
        if (x <= 0 || x > (int64_t(1) << 30)) throw Error(where + ": field '" + key + "' must be a positive size, got " + std::to_string(x));
        return int(x);
    }
    int positive_int(const char* key, int fallback) const { return find(key) ? positive_int(key) : fallback; }
    int nonneg_int(const char* key, int fallback) const {
        const auto* v = find(key);
        if (!v) return fallback;
        if (!v->is_number_integer() || v->get<int64_t>() < 0 || v->get<int64_t>() > (int64_t(1) << 30))
            throw Error(where + ": field '" + key + "' must be a non-negative integer");
        return int(v->get<int64_t>());
    }
    double number(const char* key, double fallback) const {
        const auto* v = find(key);
        if (!v) return fallback;
        if (!v->is_number()) throw Error(where + ": field '" + key + "' must be a number");
        return v->get<double>();
    }
    // A finite number in [lo, hi] (in (lo, hi] when `above_lo`), named in the error otherwise.
    double number_in(const char* key, double fallback, double lo, double hi, bool above_lo = false) const {
        const double x = number(key, fallback);
        if (!(std::isfinite(x) && (above_lo ? x > lo : x >= lo) && x <= hi))
            throw Error(where + ": field '" + key + "' = " + number_text(x) + " must be a finite number in " + (above_lo ? "(" : "[") +
                        number_text(lo) + ", " + number_text(hi) + "]");
        return x;
    }
    static std::string number_text(double x) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%g", x);
        return buf;
    }
    bool boolean(const char* key, bool fallback) const {
        const auto* v = find(key);
        if (!v) return fallback;
        if (!v->is_boolean()) throw Error(where + ": field '" + key + "' must be true or false");
        return v->get<bool>();
    }
    JsonReader object(const char* key) const {
        const auto* v = find(key);
        if (!v) throw Error(where + ": missing object '" + key + "'");
        if (!v->is_object()) throw Error(where + ": field '" + key + "' must be an object");
        return {*v, where + "." + key};
    }
    std::vector<int> int_list(const char* key) const {
        const auto* v = find(key);
        std::vector<int> out;
        if (!v) return out;
        auto fits = [](const nlohmann::json& e) {
            return e.is_number_unsigned() ? e.get<uint64_t>() <= uint64_t(INT32_MAX)
                                          : e.get<int64_t>() >= INT32_MIN && e.get<int64_t>() <= INT32_MAX;
        };
        if (v->is_number_integer()) {
            if (!fits(*v)) throw Error(where + ": field '" + key + "' must hold integers that fit in 32 bits");
            return {v->get<int>()};
        }
        if (!v->is_array()) throw Error(where + ": field '" + key + "' must be an integer or a list of integers");
        for (auto& e : *v) {
            if (!e.is_number_integer() || !fits(e)) throw Error(where + ": field '" + key + "' must hold integers that fit in 32 bits");
            out.push_back(e.get<int>());
        }
        return out;
    }
};

inline FusionConfig parse_fusion(const JsonReader& vision) {
    FusionConfig f;
    const auto* v = vision.find("deepstack_fusion");
    if (!v) return f;
    const std::string where = vision.where + ".deepstack_fusion";
    if (!v->is_object()) throw Error(where + ": must be an object");
    JsonReader r{*v, where};
    const auto* type = r.find("type");
    if (!type) throw Error(where + ": missing field 'type' (one of inject, gated, stack, stack_vit)");
    if (!type->is_string()) throw Error(where + ": field 'type' must be a string");
    const std::string t = type->get<std::string>();
    if (t == "inject") {
        f.type = FusionConfig::Type::Inject;
    } else if (t == "gated") {
        f.type = FusionConfig::Type::Gated;
        f.eps = float(r.number_in("eps", 1e-6, 1e-30, 1, true));
    } else if (t == "stack" || t == "stack_vit") {
        f.type = t == "stack" ? FusionConfig::Type::Stack : FusionConfig::Type::StackVit;
        f.layer_start = r.nonneg_int("layer_start", 0);
        f.layer_interval = r.positive_int("layer_interval", 1);
        f.scale = r.positive_int("scale", 2);
    } else {
        throw Error(where + ": unknown type '" + t + "' (expected inject, gated, stack or stack_vit)");
    }
    return f;
}

// The mixture-of-experts fields of text_config (as transformers 4.57 and 5.x save them).
inline void parse_moe(const JsonReader& tc, TextConfig& t) {
    t.num_experts = tc.positive_int("num_experts");
    t.num_experts_per_tok = tc.positive_int("num_experts_per_tok");
    t.moe_intermediate_size = tc.positive_int("moe_intermediate_size");
    t.decoder_sparse_step = tc.positive_int("decoder_sparse_step", 1);
    t.mlp_only_layers = tc.int_list("mlp_only_layers");
    // Stored by the checkpoints; the chosen experts' weights are renormalised to sum 1 either way
    // (the released models' code does so whatever it says), so it is only checked for its type.
    tc.boolean("norm_topk_prob", true);
    if (t.num_experts_per_tok > t.num_experts)
        throw Error(tc.where + ": num_experts_per_tok (" + std::to_string(t.num_experts_per_tok) + ") exceeds num_experts (" +
                    std::to_string(t.num_experts) + ")");
    for (size_t i = 0; i < t.mlp_only_layers.size(); ++i)
        if (t.mlp_only_layers[i] < 0 || t.mlp_only_layers[i] >= t.num_hidden_layers)
            throw Error(tc.where + ": mlp_only_layers[" + std::to_string(i) + "] = " + std::to_string(t.mlp_only_layers[i]) +
                        " is not a decoder layer (0.." + std::to_string(t.num_hidden_layers - 1) + ")");
}


// Parses config.json (already read). `file` is used in messages.
inline ModelConfig parse_model_config(const nlohmann::json& j, const std::string& file) {
    if (!j.is_object()) throw Error(file + ": top level must be a JSON object");
    detail::JsonReader top{j, file};
    const auto* mt = top.find("model_type");
    if (!mt || !mt->is_string()) throw Error(file + ": missing field 'model_type'");
    const std::string model_type = mt->get<std::string>();
    if (model_type != "qwen3_vl" && model_type != "qwen3_vl_moe")
        throw Error(file + ": model_type '" + model_type + "' is not supported (expected qwen3_vl or qwen3_vl_moe)");

    ModelConfig c;
    auto tc = top.object("text_config");
    auto vc = top.object("vision_config");
    TextConfig& t = c.text;
    t.hidden_size = tc.positive_int("hidden_size");
    t.num_hidden_layers = tc.positive_int("num_hidden_layers");
    t.num_attention_heads = tc.positive_int("num_attention_heads");
    t.num_key_value_heads = tc.positive_int("num_key_value_heads", t.num_attention_heads);
    t.head_dim = tc.positive_int("head_dim", t.hidden_size / t.num_attention_heads);
    if (model_type == "qwen3_vl_moe") detail::parse_moe(tc, t);
    bool any_dense = false;
    for (int i = 0; i < t.num_hidden_layers; ++i) any_dense = any_dense || !t.sparse_layer(i);
    // (a model whose every layer is sparse may leave the dense width out)
    t.intermediate_size = any_dense ? tc.positive_int("intermediate_size") : tc.positive_int("intermediate_size", 0);
    t.vocab_size = tc.positive_int("vocab_size");
    t.rms_norm_eps = float(tc.number_in("rms_norm_eps", 1e-6, 1e-30, 1, true));
    t.max_position_embeddings = tc.positive_int("max_position_embeddings", 262144);
    if (t.num_attention_heads % t.num_key_value_heads)
        throw Error(file + ": text_config.num_attention_heads (" + std::to_string(t.num_attention_heads) +
                    ") must be a multiple of num_key_value_heads (" + std::to_string(t.num_key_value_heads) + ")");
    if (t.head_dim <= 0 || t.head_dim % 2)
        throw Error(file + ": text_config.head_dim must be positive and even (got " + std::to_string(t.head_dim) +
                    "; without head_dim it is hidden_size / num_attention_heads)");

    // Rope settings: transformers 4.57 (rope_theta + rope_scaling) or 5.x (rope_parameters).
    t.rope_theta = tc.number_in("rope_theta", 0, 0, 1e12);
    const char* rope_key = tc.find("rope_parameters") ? "rope_parameters" : tc.find("rope_scaling") ? "rope_scaling" : nullptr;
    std::vector<int> section;
    if (rope_key) {
        auto rp = tc.object(rope_key);
        if (t.rope_theta == 0) t.rope_theta = rp.number_in("rope_theta", 0, 0, 1e12);
        section = rp.int_list("mrope_section");
        if (!rp.boolean("mrope_interleaved", true))
            throw Error(file + ": text_config." + rope_key + ".mrope_interleaved false (chunked M-RoPE) is not supported");
        if (const auto* rt = rp.find("rope_type"); rt && (!rt->is_string() || rt->get<std::string>() != "default"))
            throw Error(file + ": text_config." + rope_key + ".rope_type must be 'default'");
    }
    if (t.rope_theta == 0) t.rope_theta = 5e6;
    if (!(t.rope_theta > 1)) throw Error(file + ": text_config.rope_theta must be greater than 1");
    if (section.empty()) {
        // HF default: [24, 20, 20] for head_dim 128; scale the same split to other head sizes.
        const int half = t.head_dim / 2, hw = half * 20 / 64;
        section = {half - 2 * hw, hw, hw};
    }
    if (section.size() != 3 || section[0] < 0 || section[1] < 0 || section[2] < 0 ||
        int64_t(section[0]) + section[1] + section[2] != t.head_dim / 2)
        throw Error(file + ": text_config mrope_section must be three non-negative numbers summing to head_dim/2 (" +
                    std::to_string(t.head_dim / 2) + ")");
    t.mrope_section = {section[0], section[1], section[2]};

    VisionConfig& v = c.vision;
    v.depth = vc.positive_int("depth");
    v.hidden_size = vc.positive_int("hidden_size");
    v.num_heads = vc.positive_int("num_heads");
    v.intermediate_size = vc.positive_int("intermediate_size");
    v.patch_size = vc.positive_int("patch_size", 16);
    v.temporal_patch_size = vc.positive_int("temporal_patch_size", 2);
    v.spatial_merge_size = vc.positive_int("spatial_merge_size", 2);
    v.in_channels = vc.positive_int("in_channels", 3);
    v.num_position_embeddings = vc.positive_int("num_position_embeddings");
    v.out_hidden_size = vc.positive_int("out_hidden_size");
    v.deepstack_visual_indexes = vc.int_list("deepstack_visual_indexes");
    v.fusion = detail::parse_fusion(vc);
    if (v.hidden_size % v.num_heads) throw Error(file + ": vision_config.hidden_size must be a multiple of num_heads");
    if (v.head_dim() % 4) throw Error(file + ": vision head size (hidden_size/num_heads) must be a multiple of 4 for 2D rotary");
    if (v.in_channels != 3) throw Error(file + ": vision_config.in_channels must be 3 (RGB)");
    // Products used as int sizes downstream (patch vector, merged width, projection widths).
    auto check_product = [&](int64_t value, const char* what) {
        if (value > (int64_t(1) << 30)) throw Error(file + ": " + what + " = " + std::to_string(value) + " is too large");
    };
    check_product(int64_t(v.in_channels) * v.temporal_patch_size * v.patch_size * v.patch_size,
                  "vision_config in_channels*temporal_patch_size*patch_size^2");
    check_product(int64_t(v.patch_size) * v.spatial_merge_size, "vision_config patch_size*spatial_merge_size");
    check_product(int64_t(v.hidden_size) * v.spatial_merge_size * v.spatial_merge_size, "vision_config hidden_size*spatial_merge_size^2");
    check_product(int64_t(v.hidden_size) * 3, "vision_config 3*hidden_size");
    check_product(int64_t(t.num_attention_heads) * t.head_dim, "text_config num_attention_heads*head_dim");
    const int side = int(std::lround(std::sqrt(double(v.num_position_embeddings))));
    if (side * side != v.num_position_embeddings)
        throw Error(file + ": vision_config.num_position_embeddings (" + std::to_string(v.num_position_embeddings) + ") must be a square");
    for (size_t i = 0; i < v.deepstack_visual_indexes.size(); ++i) {
        int b = v.deepstack_visual_indexes[i];
        if (b < 0 || b >= v.depth)
            throw Error(file + ": vision_config.deepstack_visual_indexes[" + std::to_string(i) + "] = " + std::to_string(b) +
                        " is outside the vision depth " + std::to_string(v.depth));
    }
    if (v.out_hidden_size != t.hidden_size)
        throw Error(file + ": vision_config.out_hidden_size (" + std::to_string(v.out_hidden_size) +
                    ") must equal text_config.hidden_size (" + std::to_string(t.hidden_size) + ")");
    if ((v.fusion.type == FusionConfig::Type::Inject || v.fusion.type == FusionConfig::Type::StackVit) &&
        int(v.deepstack_visual_indexes.size()) > t.num_hidden_layers)
        throw Error(file + ": more deepstack_visual_indexes than decoder layers");
    if (v.fusion.type == FusionConfig::Type::Stack) {
        const int64_t stacks = int64_t(v.fusion.scale) * v.fusion.scale;
        const int64_t last_layer = int64_t(v.fusion.layer_start) + (stacks - 1) * v.fusion.layer_interval;
        if (last_layer >= t.num_hidden_layers)
            throw Error(file + ": vision_config.deepstack_fusion: " + std::to_string(stacks) + " stacks from layer_start " +
                        std::to_string(v.fusion.layer_start) + " every " + std::to_string(v.fusion.layer_interval) +
                        " layers run past the last decoder layer (" + std::to_string(t.num_hidden_layers - 1) + ")");
    }
    if (v.fusion.type == FusionConfig::Type::StackVit) {
        const int64_t stacks = int64_t(v.fusion.scale) * v.fusion.scale;
        const int64_t last_block = int64_t(v.fusion.layer_start) + (stacks - 1) * v.fusion.layer_interval;
        if (last_block >= v.depth)
            throw Error(file + ": vision_config.deepstack_fusion: " + std::to_string(stacks) + " stacks from layer_start " +
                        std::to_string(v.fusion.layer_start) + " every " + std::to_string(v.fusion.layer_interval) +
                        " blocks (scale " + std::to_string(v.fusion.scale) + ") run past the last vision block (" +
                        std::to_string(v.depth - 1) + ", vision_config.depth " + std::to_string(v.depth) + ")");
    }

    c.tie_word_embeddings = top.boolean("tie_word_embeddings", tc.boolean("tie_word_embeddings", false));
    auto token_id = [&](const char* key, int fallback) {
        int id = top.nonneg_int(key, fallback);
        if (id >= t.vocab_size) throw Error(file + ": " + key + " " + std::to_string(id) + " is outside the vocabulary");
        return id;
    };
    c.image_token_id = token_id("image_token_id", 151655);
    c.video_token_id = token_id("video_token_id", 151656);
    c.vision_start_token_id = token_id("vision_start_token_id", 151652);
    c.vision_end_token_id = token_id("vision_end_token_id", 151653);
    c.eos_token_ids = tc.int_list("eos_token_id");
    return c;
}

inline ModelConfig load_model_config(const std::string& path) { return parse_model_config(detail::read_json_file(path), path); }

// Reads a preprocessor config; a missing file gives the Qwen3-VL defaults (with `video` choosing
// the video processor's defaults).
inline PreprocessConfig load_preprocess_config(const std::string& path, bool video) {
    PreprocessConfig p;
    if (video) { p.min_pixels = 128 * 32 * 32; p.max_pixels = 768 * 32 * 32; }
    if (!detail::path_exists(path)) return p;
    nlohmann::json j = detail::read_json_file(path);
    if (!j.is_object()) throw Error(path + ": top level must be a JSON object");
    detail::JsonReader r{j, path};
    p.patch_size = r.positive_int("patch_size", p.patch_size);
    p.temporal_patch_size = r.positive_int("temporal_patch_size", p.temporal_patch_size);
    p.merge_size = r.positive_int("merge_size", p.merge_size);
    // Pixel counts as doubles, checked before the conversion to int64 (1e300 must not wrap).
    auto pixels = [&](const detail::JsonReader& rd, const char* key, int64_t fallback) {
        const double x = rd.number(key, double(fallback));
        if (!(x >= 0 && x <= double(kMaxProcessorPixels)))
            throw Error(rd.where + ": field '" + key + "' (a pixel count) must be between 0 and " + std::to_string(kMaxProcessorPixels));
        return int64_t(x);
    };
    if (r.find("size")) {
        auto s = r.object("size");
        p.min_pixels = pixels(s, "shortest_edge", p.min_pixels);
        p.max_pixels = pixels(s, "longest_edge", p.max_pixels);
    }
    p.min_pixels = pixels(r, "min_pixels", p.min_pixels);
    p.max_pixels = pixels(r, "max_pixels", p.max_pixels);
    if (p.min_pixels <= 0 || p.max_pixels < p.min_pixels)
        throw Error(path + ": size needs 0 < shortest_edge (min pixels) <= longest_edge (max pixels)");
    for (const char* key : {"image_mean", "image_std"}) {
        const auto* v = r.find(key);
        if (!v) continue;
        if (!v->is_array() || v->size() != 3) throw Error(path + ": field '" + key + "' must be a list of 3 numbers");
        auto& dst = std::string(key) == "image_mean" ? p.mean : p.std;
        // Normalised values (level * rescale_factor - mean) / std stay within about +-1e6.
        const bool mean = std::string(key) == "image_mean";
        const double lo = mean ? -1e3 : 1e-3, hi = 1e3;
        for (int i = 0; i < 3; ++i) {
            if (!(*v)[i].is_number()) throw Error(path + ": field '" + key + "' must be a list of 3 numbers");
            const double x = (*v)[i].get<double>();
            if (!(std::isfinite(x) && x >= lo && x <= hi))
                throw Error(path + ": field '" + key + "'[" + std::to_string(i) + "] = " + detail::JsonReader::number_text(x) +
                            " must be a finite number in [" + detail::JsonReader::number_text(lo) + ", " + detail::JsonReader::number_text(hi) + "]");
            dst[size_t(i)] = float(x);
        }
    }
    p.rescale_factor = r.number_in("rescale_factor", p.rescale_factor, 0, 1, true);
    p.fps = r.number_in("fps", p.fps, 0, 1000, true);
    p.min_frames = r.positive_int("min_frames", p.min_frames);
    p.max_frames = r.positive_int("max_frames", p.max_frames);
    if (p.max_frames > 100000) throw Error(path + ": field 'max_frames' = " + std::to_string(p.max_frames) + " is above the limit of 100000");
    return p;
}

}  // namespace deepstack::detail
