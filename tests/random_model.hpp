// A small random Qwen3-VL model folder with the real Qwen3 vocabulary, for the tests that run the
// programs end to end (deepstack-caption, deepstack-server). Needs the tokenizer cached by
// tests/fetch_tokenizer.sh (qwen3_dir()).
#pragma once
#include "test_util.hpp"
#include <deepstack.hpp>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace fs = std::filesystem;

// A Qwen3-VL model folder with tiny dimensions, the real vocabulary size and token ids, and random
// BF16 matrices (F32 norms and biases); with `moe`, a mixture-of-experts model (qwen3_vl_moe: 4
// experts, top-2, layer 0 sparse, layer 1 dense). Removed when the test program ends.
struct RandomModel {
    fs::path dir;

    explicit RandomModel(bool moe = false) {
        using namespace deepstack::detail;
        dir = fs::temp_directory_path() / ("deepstack_random_qwen3vl_" + std::string(moe ? "moe_" : "") + std::to_string(::getpid()));
        fs::create_directories(dir);
        const int V = 151936, D = 64, layers = 2, heads = 4, kv_heads = 2, head_dim = 16, I = 128;
        const int Dv = 32, depth = 2, Iv = 64, P = 16, pos = 256, experts = 4, moe_I = 32;
        nlohmann::json config = {
            {"architectures", {"Qwen3VLForConditionalGeneration"}},
            {"model_type", "qwen3_vl"},
            {"image_token_id", 151655},
            {"video_token_id", 151656},
            {"vision_start_token_id", 151652},
            {"vision_end_token_id", 151653},
            {"tie_word_embeddings", true},
            {"text_config",
             {{"model_type", "qwen3_vl_text"}, {"bos_token_id", 151643}, {"eos_token_id", 151645}, {"head_dim", head_dim},
              {"hidden_size", D}, {"intermediate_size", I}, {"max_position_embeddings", 262144}, {"num_attention_heads", heads},
              {"num_hidden_layers", layers}, {"num_key_value_heads", kv_heads}, {"rms_norm_eps", 1e-6},
              {"rope_scaling", {{"mrope_interleaved", true}, {"mrope_section", {4, 2, 2}}, {"rope_type", "default"}}},
              {"rope_theta", 5000000.0}, {"vocab_size", V}}},
            {"vision_config",
             {{"model_type", "qwen3_vl"}, {"deepstack_visual_indexes", {1}}, {"depth", depth}, {"hidden_size", Dv},
              {"in_channels", 3}, {"intermediate_size", Iv}, {"num_heads", 2}, {"num_position_embeddings", pos},
              {"out_hidden_size", D}, {"patch_size", P}, {"spatial_merge_size", 2}, {"temporal_patch_size", 2}}}};
        if (moe) {
            config["model_type"] = "qwen3_vl_moe";
            config["architectures"] = {"Qwen3VLMoeForConditionalGeneration"};
            config["text_config"].update({{"model_type", "qwen3_vl_moe_text"}, {"num_experts", experts}, {"num_experts_per_tok", 2},
                                          {"moe_intermediate_size", moe_I}, {"decoder_sparse_step", 1}, {"mlp_only_layers", {1}},
                                          {"norm_topk_prob", true}});
        }
        std::ofstream(dir / "config.json") << config.dump(2);
        std::ofstream(dir / "generation_config.json")
            << R"({"do_sample": true, "temperature": 0.7, "top_k": 20, "top_p": 0.8, "eos_token_id": [151645, 151643]})";
        fs::copy_file(qwen3_dir() + "/tokenizer.json", dir / "tokenizer.json", fs::copy_options::overwrite_existing);

        std::mt19937 rng(1234);
        std::normal_distribution<float> normal(0.0f, 1.0f);
        std::vector<TensorBlob> blobs;
        auto random = [&](const std::string& name, std::vector<int64_t> shape, float mean, float spread, DType dtype) {
            int64_t n = 1;
            for (int64_t d : shape) n *= d;
            std::vector<float> v(static_cast<size_t>(n));
            for (float& x : v) x = mean + spread * normal(rng);
            if (dtype == DType::F32) return blobs.push_back(make_blob(name, shape, v.data()));
            TensorBlob b{name, DType::BF16, shape, std::vector<uint8_t>(size_t(n) * 2)};
            for (size_t i = 0; i < v.size(); ++i) {
                const uint16_t h = f32_to_bf16(v[i]);
                std::memcpy(&b.bytes[i * 2], &h, 2);
            }
            blobs.push_back(std::move(b));
        };
        auto matrix = [&](const std::string& name, std::vector<int64_t> shape) { random(name, std::move(shape), 0.0f, 0.05f, DType::BF16); };
        auto norm = [&](const std::string& name, int64_t n) { random(name, {n}, 1.0f, 0.05f, DType::F32); };
        auto bias = [&](const std::string& name, int64_t n) { random(name, {n}, 0.0f, 0.02f, DType::F32); };
        auto linear = [&](const std::string& name, int64_t out, int64_t in) {
            matrix(name + ".weight", {out, in});
            bias(name + ".bias", out);
        };
        auto layer_norm = [&](const std::string& name, int64_t n) {
            norm(name + ".weight", n);
            bias(name + ".bias", n);
        };

        const std::string v = "model.visual.";
        matrix(v + "patch_embed.proj.weight", {Dv, 3, 2, P, P});
        bias(v + "patch_embed.proj.bias", Dv);
        matrix(v + "pos_embed.weight", {pos, Dv});
        for (int b = 0; b < depth; ++b) {
            const std::string p = v + "blocks." + std::to_string(b) + ".";
            layer_norm(p + "norm1", Dv);
            layer_norm(p + "norm2", Dv);
            linear(p + "attn.qkv", 3 * Dv, Dv);
            linear(p + "attn.proj", Dv, Dv);
            linear(p + "mlp.linear_fc1", Iv, Dv);
            linear(p + "mlp.linear_fc2", Dv, Iv);
        }
        for (const std::string& m : {v + "merger", v + "deepstack_merger_list.0"}) {
            layer_norm(m + ".norm", m == v + "merger" ? Dv : 4 * Dv);
            linear(m + ".linear_fc1", 4 * Dv, 4 * Dv);
            linear(m + ".linear_fc2", D, 4 * Dv);
        }
        const std::string t = "model.language_model.";
        matrix(t + "embed_tokens.weight", {V, D});
        for (int l = 0; l < layers; ++l) {
            const std::string p = t + "layers." + std::to_string(l) + ".";
            norm(p + "input_layernorm.weight", D);
            norm(p + "post_attention_layernorm.weight", D);
            norm(p + "self_attn.q_norm.weight", head_dim);
            norm(p + "self_attn.k_norm.weight", head_dim);
            matrix(p + "self_attn.q_proj.weight", {heads * head_dim, D});
            matrix(p + "self_attn.k_proj.weight", {kv_heads * head_dim, D});
            matrix(p + "self_attn.v_proj.weight", {kv_heads * head_dim, D});
            matrix(p + "self_attn.o_proj.weight", {D, heads * head_dim});
            if (moe && l == 0) {  // router and fused input-major experts
                matrix(p + "mlp.gate.weight", {experts, D});
                matrix(p + "mlp.experts.gate_up_proj", {experts, D, 2 * moe_I});
                matrix(p + "mlp.experts.down_proj", {experts, moe_I, D});
                continue;
            }
            matrix(p + "mlp.gate_proj.weight", {I, D});
            matrix(p + "mlp.up_proj.weight", {I, D});
            matrix(p + "mlp.down_proj.weight", {D, I});
        }
        norm(t + "norm.weight", D);
        write_safetensors((dir / "model.safetensors").string(), std::move(blobs));
    }
    ~RandomModel() { fs::remove_all(dir); }
};
