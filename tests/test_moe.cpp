// Mixture-of-experts models (qwen3_vl_moe): routing, config fields, the fused expert layout and
// its refusals, the MoE block against a straightforward reference computed from the checkpoint's
// input-major tensors, and MoE checkpoints the golden runner has not seen: dense fixtures
// rewritten as MoE models whose experts all equal the dense MLP (so the golden data of the dense
// fixture still holds), with dense layers kept, BF16 weights, an untied head, a video, two images;
// and the fixture through the Engine face.
#include "test_util.hpp"

#include <unistd.h>

#include <random>

using namespace deepstack;
using namespace deepstack::detail;
namespace fs = std::filesystem;

namespace {

nlohmann::json tiny_moe_config() { return detail::read_json_file(kData + "/fixtures/tiny-moe/model/config.json"); }

std::string config_error(const nlohmann::json& j) {
    try {
        parse_model_config(j, "config.json");
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

std::vector<float> random_floats(size_t n, uint32_t seed, float scale) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}

TensorBlob f32_blob(const std::string& name, const std::vector<int64_t>& shape, const std::vector<float>& v) {
    return make_blob(name, shape, v.data());
}

// One sparse layer's tensors (prefix "m.mlp.") in a store held in memory.
struct MoeLayer {
    int64_t E, H, I;
    std::vector<float> router, gate_up, down;  // [E, H], [E, H, 2I], [E, I, H]
    TextConfig config() const {
        TextConfig t;
        t.hidden_size = int(H);
        t.num_experts = int(E);
        t.moe_intermediate_size = int(I);
        return t;
    }
    WeightStore store(bool bf16 = false) const {
        std::vector<TensorBlob> blobs{f32_blob("m.mlp.gate.weight", {E, H}, router), f32_blob("m.mlp.experts.gate_up_proj", {E, H, 2 * I}, gate_up),
                                      f32_blob("m.mlp.experts.down_proj", {E, I, H}, down)};
        if (bf16)
            for (auto& b : blobs) {
                std::vector<uint8_t> half(b.bytes.size() / 2);
                for (size_t i = 0; i < half.size() / 2; ++i) {
                    float f;
                    std::memcpy(&f, b.bytes.data() + 4 * i, 4);
                    const uint16_t h = detail::f32_to_bf16(f);
                    std::memcpy(half.data() + 2 * i, &h, 2);
                }
                b.bytes = half, b.dtype = DType::BF16;
            }
        WeightStore ws;
        ws.add_buffer(std::make_shared<const std::vector<uint8_t>>(serialize_safetensors(blobs)), "layer.safetensors");
        return ws;
    }
};

MoeLayer random_layer(int64_t E, int64_t H, int64_t I, uint32_t seed) {
    return {E, H, I, random_floats(size_t(E * H), seed, 0.3f), random_floats(size_t(E * H * 2 * I), seed + 1, 0.1f),
            random_floats(size_t(E * I * H), seed + 2, 0.1f)};
}

// The block computed the plain way from the fused input-major tensors (x @ W), per token:
// softmax over the router logits in double, the k largest (lower id first on ties), renormalised.
std::vector<float> reference_block(const MoeLayer& L, const std::vector<float>& x, int64_t T, int k, const std::vector<float>* weights_as_read) {
    const std::vector<float>& gu = weights_as_read ? weights_as_read[0] : L.gate_up;
    const std::vector<float>& dn = weights_as_read ? weights_as_read[1] : L.down;
    const int64_t E = L.E, H = L.H, I = L.I;
    std::vector<float> y(size_t(T * H), 0.f);
    for (int64_t t = 0; t < T; ++t) {
        const float* xt = x.data() + t * H;
        std::vector<double> p(static_cast<size_t>(E));
        double mx = -1e300, sum = 0;
        for (int64_t e = 0; e < E; ++e) {
            double l = 0;
            for (int64_t h = 0; h < H; ++h) l += double(L.router[size_t(e * H + h)]) * xt[h];
            p[size_t(e)] = l;
            mx = std::max(mx, l);
        }
        for (auto& v : p) sum += v = std::exp(v - mx);
        std::vector<int> order(static_cast<size_t>(E));
        for (int e = 0; e < int(E); ++e) order[size_t(e)] = e;
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[size_t(a)] > p[size_t(b)]; });
        double top = 0;
        for (int j = 0; j < k; ++j) top += p[size_t(order[size_t(j)])];
        for (int j = 0; j < k; ++j) {
            const int64_t e = order[size_t(j)];
            std::vector<double> act(static_cast<size_t>(I));
            for (int64_t i = 0; i < I; ++i) {
                double g = 0, u = 0;
                for (int64_t h = 0; h < H; ++h) {
                    g += double(xt[h]) * gu[size_t((e * H + h) * 2 * I + i)];
                    u += double(xt[h]) * gu[size_t((e * H + h) * 2 * I + I + i)];
                }
                act[size_t(i)] = g / (1 + std::exp(-g)) * u;
            }
            for (int64_t h = 0; h < H; ++h) {
                double o = 0;
                for (int64_t i = 0; i < I; ++i) o += act[size_t(i)] * dn[size_t((e * I + i) * H + h)];
                y[size_t(t * H + h)] += float(p[size_t(e)] / top * o);
            }
        }
    }
    return y;
}

float max_abs(const std::vector<float>& v) {
    float m = 0;
    for (float x : v) m = std::max(m, std::fabs(x));
    return m;
}

}  // namespace

TEST_CASE("routing: top-k by probability, ties to the lower expert id, weights renormalised") {
    // token 0: experts 1 and 3 tie for first, 0 and 2 tie for third; token 1: all equal
    const std::vector<float> logits{0.5f, 2.f, 0.5f, 2.f, -1.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    std::vector<int> ids(6);
    std::vector<float> w(6);
    detail::route(logits.data(), 2, 5, 3, ids.data(), w.data());
    CHECK(ids == std::vector<int>{1, 3, 0, 0, 1, 2});
    const double e2 = std::exp(2.0), e05 = std::exp(0.5);
    CHECK(w[0] == doctest::Approx(e2 / (2 * e2 + e05)).epsilon(1e-6));
    CHECK(w[1] == w[0]);
    CHECK(w[2] == doctest::Approx(e05 / (2 * e2 + e05)).epsilon(1e-6));
    for (int j = 3; j < 6; ++j) CHECK(w[size_t(j)] == doctest::Approx(1.0 / 3).epsilon(1e-6));

    SUBCASE("k = E: every expert, in descending probability, weights = the softmax") {
        const std::vector<float> l{0.1f, -0.4f, 0.9f, 0.3f};
        std::vector<int> all(4);
        std::vector<float> aw(4);
        detail::route(l.data(), 1, 4, 4, all.data(), aw.data());
        CHECK(all == std::vector<int>{2, 3, 0, 1});
        double sum = 0;
        for (float v : l) sum += std::exp(double(v));
        for (int j = 0; j < 4; ++j) CHECK(aw[size_t(j)] == doctest::Approx(std::exp(double(l[size_t(all[size_t(j)])])) / sum).epsilon(1e-6));
    }
}

TEST_CASE("config: MoE fields, sparse layers, refusals naming the field") {
    nlohmann::json j = tiny_moe_config();
    ModelConfig c = parse_model_config(j, "config.json");
    CHECK(c.text.num_experts == 8);
    CHECK(c.text.num_experts_per_tok == 2);
    CHECK(c.text.moe_intermediate_size == 48);
    for (int i = 0; i < 4; ++i) CHECK(c.text.sparse_layer(i));

    SUBCASE("decoder_sparse_step and mlp_only_layers choose the sparse layers") {
        j["text_config"]["decoder_sparse_step"] = 2;
        j["text_config"]["mlp_only_layers"] = {3};
        c = parse_model_config(j, "config.json");
        CHECK(!c.text.sparse_layer(0));
        CHECK(c.text.sparse_layer(1));
        CHECK(!c.text.sparse_layer(2));
        CHECK(!c.text.sparse_layer(3));
        j["text_config"].erase("intermediate_size");  // dense layers need their width
        CHECK(config_error(j).find("intermediate_size") != std::string::npos);
    }
    SUBCASE("every layer sparse: intermediate_size may be left out; mlp_only_layers null is empty") {
        j["text_config"].erase("intermediate_size");
        j["text_config"]["mlp_only_layers"] = nullptr;
        CHECK(config_error(j) == "");
    }
    SUBCASE("transformers 5.x layout: rope_parameters, dtype, the vision model_type renamed") {
        auto& t = j["text_config"];
        t["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 5000000.0}, {"mrope_section", {6, 5, 5}}, {"mrope_interleaved", true}};
        t.erase("rope_scaling");
        t.erase("rope_theta");
        j["vision_config"]["model_type"] = "qwen3_vl_moe_vision";
        j["dtype"] = "float32";
        j.erase("torch_dtype");
        c = parse_model_config(j, "config.json");
        CHECK(c.text.rope_theta == 5e6);
        CHECK(c.text.num_experts == 8);
    }
    SUBCASE("refusals") {
        auto refused = [&](const char* key, nlohmann::json value, const std::string& needle) {
            nlohmann::json bad = j;
            if (value.is_null()) bad["text_config"].erase(key);
            else bad["text_config"][key] = value;
            const std::string err = config_error(bad);
            CHECK_MESSAGE(err.find(needle) != std::string::npos, key << ": " << err);
        };
        refused("num_experts_per_tok", 9, "num_experts_per_tok (9) exceeds num_experts (8)");
        refused("num_experts_per_tok", 0, "num_experts_per_tok");
        refused("num_experts", nullptr, "num_experts");
        refused("moe_intermediate_size", nullptr, "moe_intermediate_size");
        refused("decoder_sparse_step", 0, "decoder_sparse_step");
        refused("mlp_only_layers", {1, 4}, "mlp_only_layers[1] = 4");
        refused("norm_topk_prob", "yes", "norm_topk_prob");
    }
}

TEST_CASE("fused expert layout: gate = first half of gate_up_proj's last dim, all transposed to [out, in]") {
    const MoeLayer L = random_layer(3, 64, 40, 7);
    const TextConfig t = L.config();
    for (bool bf16 : {false, true}) {
        CAPTURE(bf16);
        const WeightStore ws = L.store(bf16);
        detail::MoeWeights w = detail::moe_weights(ws, "m.mlp.", t);
        detail::lay_out_experts(w, ws, t, std::nullopt, {});
        REQUIRE(w.experts.size() == 3);
        auto stored = [&](float v) { return bf16 ? detail::bf16_to_f32(detail::f32_to_bf16(v)) : v; };
        for (int64_t e = 0; e < 3; ++e) {
            const auto& x = w.experts[size_t(e)];
            REQUIRE(x.gate.rows == 40);
            REQUIRE(x.gate.cols == 64);
            REQUIRE(x.down.rows == 64);
            REQUIRE(x.down.cols == 40);
            for (int64_t i = 0; i < 40; ++i)
                for (int64_t h = 0; h < 64; ++h) {
                    CHECK(detail::weight_at(x.gate, i, h) == stored(L.gate_up[size_t((e * 64 + h) * 80 + i)]));
                    CHECK(detail::weight_at(x.up, i, h) == stored(L.gate_up[size_t((e * 64 + h) * 80 + 40 + i)]));
                    CHECK(detail::weight_at(x.down, h, i) == stored(L.down[size_t((e * 40 + i) * 64 + h)]));
                }
        }
    }
    SUBCASE("quantized experts hold the same weights up to the format's step") {
        const WeightStore ws = L.store();
        detail::MoeWeights w = detail::moe_weights(ws, "m.mlp.", t);
        detail::lay_out_experts(w, ws, t, DType::Q8, {});
        const auto& x = w.experts[2];
        CHECK(x.gate.dtype == DType::Q8);
        for (int64_t i = 0; i < 40; i += 7)
            for (int64_t h = 0; h < 64; h += 5)
                CHECK(detail::weight_at(x.up, i, h) == doctest::Approx(L.gate_up[size_t((2 * 64 + h) * 80 + 40 + i)]).epsilon(0.02).scale(0.5));
    }
}

TEST_CASE("expert tensors: missing, transposed or per-expert are refused naming the tensor") {
    const MoeLayer L = random_layer(4, 64, 40, 3);
    const TextConfig t = L.config();
    auto error_of = [&](std::vector<TensorBlob> blobs) {
        WeightStore ws;
        ws.add_buffer(std::make_shared<const std::vector<uint8_t>>(serialize_safetensors(std::move(blobs))), "layer.safetensors");
        try {
            detail::moe_weights(ws, "m.mlp.", t);
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string();
    };
    const TensorBlob router = f32_blob("m.mlp.gate.weight", {4, 64}, L.router), gate_up = f32_blob("m.mlp.experts.gate_up_proj", {4, 64, 80}, L.gate_up),
                     down = f32_blob("m.mlp.experts.down_proj", {4, 40, 64}, L.down);
    CHECK(error_of({router, gate_up, down}) == "");
    CHECK(error_of({router, f32_blob("m.mlp.experts.gate_up_proj", {4, 80, 64}, L.gate_up), down})
              .find("'m.mlp.experts.gate_up_proj' has shape [4, 80, 64], the transposed layout; expected [4, 64, 80]") != std::string::npos);
    CHECK(error_of({router, gate_up, f32_blob("m.mlp.experts.down_proj", {4, 64, 40}, L.down)})
              .find("'m.mlp.experts.down_proj' has shape [4, 64, 40], the transposed layout") != std::string::npos);
    CHECK(error_of({router, gate_up}).find("missing tensor 'm.mlp.experts.down_proj'") != std::string::npos);
    CHECK(error_of({gate_up, down}).find("m.mlp.gate.weight") != std::string::npos);
    CHECK(error_of({router, down, f32_blob("m.mlp.experts.0.gate_proj.weight", {40, 64}, std::vector<float>(40 * 64))})
              .find("stores each expert separately") != std::string::npos);
    CHECK(error_of({router, f32_blob("m.mlp.experts.gate_up_proj", {4, 64, 81}, std::vector<float>(4 * 64 * 81)), down})
              .find("expected [4, 64, 80]") != std::string::npos);
}

TEST_CASE("MoE block equals the straightforward reference (decode and prefill sizes, every weight format)") {
    const MoeLayer L = random_layer(6, 64, 40, 11);
    TextConfig t = L.config();
    t.num_experts_per_tok = 3;
    for (int64_t T : {1, 3, 29}) {
        CAPTURE(T);
        const std::vector<float> x = random_floats(size_t(T * 64), 100 + uint32_t(T), 1.f);
        const std::vector<float> want = reference_block(L, x, T, 3, nullptr);
        struct Mode {
            const char* name;
            std::optional<DType> quantize;
            detail::Compute compute;
            float tol;  // relative to the output's largest magnitude
        } modes[] = {{"stored f32, exact", std::nullopt, detail::Compute::Exact, 1e-5f},
                     {"stored f32, fast", std::nullopt, detail::Compute::Fast, 1e-5f},
                     {"int8, exact", DType::Q8, detail::Compute::Exact, 0.02f},
                     {"int8, fast", DType::Q8, detail::Compute::Fast, 0.03f},
                     {"q4, exact", DType::Q4, detail::Compute::Exact, 0.25f}};
        for (const Mode& m : modes) {
            CAPTURE(m.name);
            const WeightStore ws = L.store();
            detail::MoeWeights w = detail::moe_weights(ws, "m.mlp.", t);
            detail::lay_out_experts(w, ws, t, m.quantize, {});
            std::vector<float> got(size_t(T * 64));
            detail::moe_block(x.data(), T, w, t, m.compute, got.data());
            CHECK(max_abs_diff(got, want) <= m.tol * max_abs(want));
        }
        SUBCASE("bf16 weights: the reference on the same rounded weights") {
            std::vector<float> rounded[2] = {L.gate_up, L.down};
            for (auto& v : rounded)
                for (float& f : v) f = detail::bf16_to_f32(detail::f32_to_bf16(f));
            MoeLayer Lb = L;
            for (float& f : Lb.router) f = detail::bf16_to_f32(detail::f32_to_bf16(f));
            const WeightStore ws = L.store(true);
            detail::MoeWeights w = detail::moe_weights(ws, "m.mlp.", t);
            detail::lay_out_experts(w, ws, t, std::nullopt, {});
            std::vector<float> got(size_t(T * 64));
            detail::moe_block(x.data(), T, w, t, detail::Compute::Exact, got.data());
            const std::vector<float> want_bf16 = reference_block(Lb, x, T, 3, rounded);
            CHECK(max_abs_diff(got, want_bf16) <= 1e-5f * max_abs(want_bf16));
        }
    }
}

namespace {

// Rewrites a dense fixture as a MoE checkpoint: the layers `sparse` lists get a random router of
// E experts (top-k) whose experts all equal the layer's dense MLP, stored in the fused input-major
// layout in the fixture's dtype; their dense tensors are dropped. The routing weights sum to 1, so
// the model computes what the dense one does.
void write_moe_variant(const std::string& fixture, const fs::path& dst, int E, int k, int sparse_step, const std::vector<int>& mlp_only) {
    fs::remove_all(dst);
    copy_tree(kData + "/fixtures/" + fixture, dst);
    nlohmann::json cfg = detail::read_json_file((dst / "model/config.json").string());
    cfg["model_type"] = "qwen3_vl_moe";
    cfg["architectures"] = {"Qwen3VLMoeForConditionalGeneration"};
    auto& tc = cfg["text_config"];
    tc["model_type"] = "qwen3_vl_moe_text";
    tc["num_experts"] = E;
    tc["num_experts_per_tok"] = k;
    tc["moe_intermediate_size"] = tc["intermediate_size"];
    tc["decoder_sparse_step"] = sparse_step;
    tc["mlp_only_layers"] = mlp_only;
    tc["norm_topk_prob"] = true;
    cfg["vision_config"]["model_type"] = "qwen3_vl_moe";
    write_text(dst / "model/config.json", cfg.dump(2));
    const TextConfig t = parse_model_config(cfg, "config.json").text;

    WeightStore ws = WeightStore::open_folder((dst / "model").string());
    std::vector<TensorBlob> blobs;
    const int64_t H = t.hidden_size, I = t.intermediate_size;
    std::mt19937 rng(uint32_t(E * 31 + k));
    std::normal_distribution<float> router_value(0.f, 0.5f);
    for (const auto& [name, info] : ws.tensors()) {
        TensorBlob b{name, info.dtype, info.shape, std::vector<uint8_t>(info.data, info.data + info.nbytes)};
        const std::string p = "model.language_model.layers.";
        if (name.rfind(p, 0) == 0 && name.find(".mlp.") != std::string::npos) {
            const int layer = std::stoi(name.substr(p.size()));
            if (!t.sparse_layer(layer)) {
                blobs.push_back(std::move(b));
                continue;
            }
            if (name.find("mlp.gate_proj") == std::string::npos) continue;  // written with the gate below
            const std::string l = p + std::to_string(layer) + ".mlp.";
            const size_t es = detail::dtype_size(info.dtype);
            const TensorInfo& gate = *ws.find(l + "gate_proj.weight");  // [I, H]
            const TensorInfo& up = *ws.find(l + "up_proj.weight");      // [I, H]
            const TensorInfo& down = *ws.find(l + "down_proj.weight");  // [H, I]
            TensorBlob gu{l + "experts.gate_up_proj", info.dtype, {E, H, 2 * I}, std::vector<uint8_t>(size_t(E * H * 2 * I) * es)};
            TensorBlob dn{l + "experts.down_proj", info.dtype, {E, I, H}, std::vector<uint8_t>(size_t(E * I * H) * es)};
            for (int64_t e = 0; e < E; ++e)
                for (int64_t i = 0; i < I; ++i)
                    for (int64_t h = 0; h < H; ++h) {
                        std::memcpy(&gu.bytes[size_t((e * H + h) * 2 * I + i) * es], gate.data + size_t(i * H + h) * es, es);
                        std::memcpy(&gu.bytes[size_t((e * H + h) * 2 * I + I + i) * es], up.data + size_t(i * H + h) * es, es);
                        std::memcpy(&dn.bytes[size_t((e * I + i) * H + h) * es], down.data + size_t(h * I + i) * es, es);
                    }
            std::vector<float> router(size_t(E * H));
            for (auto& v : router) v = router_value(rng);
            TensorBlob r = make_blob(l + "gate.weight", {E, H}, router.data());
            if (info.dtype == DType::BF16) {
                std::vector<uint8_t> half(router.size() * 2);
                for (size_t i = 0; i < router.size(); ++i) {
                    const uint16_t hb = detail::f32_to_bf16(router[i]);
                    std::memcpy(&half[2 * i], &hb, 2);
                }
                r.bytes = half, r.dtype = DType::BF16;
            }
            blobs.push_back(std::move(gu));
            blobs.push_back(std::move(dn));
            blobs.push_back(std::move(r));
            continue;
        }
        blobs.push_back(std::move(b));
    }
    const std::vector<uint8_t> bytes = serialize_safetensors(std::move(blobs));
    ws = WeightStore();  // unmap before overwriting
    write_bytes(dst / "model/model.safetensors", bytes);
}

}  // namespace

TEST_CASE("unseen MoE checkpoints: deepstack-golden reproduces dense fixtures rewritten as MoE models") {
    const fs::path tmp = fs::temp_directory_path() / ("deepstack-moe-" + std::to_string(::getpid()));
    SUBCASE("F32, tied, an image; layers 0 and 2 kept dense (mlp_only_layers)") {
        write_moe_variant("tiny-image", tmp / "image", 4, 2, 1, {0, 2});
        CHECK(run_golden(tmp / "image").status == 0);
    }
    SUBCASE("BF16, untied head, a video; every second layer sparse (decoder_sparse_step 2), top-3 of 5") {
        write_moe_variant("tiny-video-4raw", tmp / "video", 5, 3, 2, {});
        CHECK(run_golden(tmp / "video").status == 0);
        CHECK(run_golden(tmp / "video", "--weights int8 --rel-tol 0.03").status == 0);
    }
    SUBCASE("every layer sparse with one expert (k = E = 1)") {
        write_moe_variant("tiny-image", tmp / "single", 1, 1, 1, {});
        CHECK(run_golden(tmp / "single").status == 0);
    }
    fs::remove_all(tmp);
}

TEST_CASE("two images in one prompt: the MoE rewrite of tiny-image gives the dense model's logits") {
    const fs::path tmp = fs::temp_directory_path() / ("deepstack-moe2-" + std::to_string(::getpid()));
    write_moe_variant("tiny-image", tmp, 8, 2, 1, {1});
    const std::string dense_dir = kData + "/fixtures/tiny-image/model";
    auto dense = Model::load(dense_dir), moe = Model::load((tmp / "model").string());
    const Image img = load_image(kData + "/fixtures/tiny-image/inputs/image0_80x56.png");
    Image small;  // the top-left 48x40 of the picture
    small.width = 48, small.height = 40;
    for (int y = 0; y < 40; ++y) small.rgb.insert(small.rgb.end(), img.rgb.begin() + long(y) * 80 * 3, img.rgb.begin() + (long(y) * 80 + 48) * 3);
    auto logits = [&](const std::shared_ptr<const Model>& m) {
        const std::vector<VisualInput> visuals{prepare_image(*m, img), prepare_image(*m, small)};
        std::vector<int> ids{501, 503};
        ids.insert(ids.end(), size_t(visual_blocks(m->config, visuals)[0].gh * visual_blocks(m->config, visuals)[0].gw), 505);
        ids.insert(ids.end(), {504, 503});
        ids.insert(ids.end(), size_t(visual_blocks(m->config, visuals)[1].gh * visual_blocks(m->config, visuals)[1].gw), 505);
        ids.insert(ids.end(), {504, 502, 501});
        Session s(m);
        std::vector<float> out = s.prefill(ids, visuals, true);
        for (int step = 0; step < 3; ++step) {
            const std::vector<float> l = s.decode(40 + step);
            out.insert(out.end(), l.begin(), l.end());
        }
        return out;
    };
    const std::vector<float> want = logits(dense), got = logits(moe);
    CHECK(max_abs_diff(got, want) <= 1e-5f * max_abs(want));
    fs::remove_all(tmp);
}

TEST_CASE("Engine: the MoE fixture answers through the public face with the golden continuation") {
    const fs::path dir = fs::temp_directory_path() / ("deepstack-moe-engine-" + std::to_string(::getpid()));
    copy_tree(kData + "/fixtures/tiny-moe/model", dir);
    write_text(dir / "tokenizer.json", toy_tokenizer_json());
    const Engine engine = Engine::open(dir.string());
    Request r;
    r.images = {kData + "/fixtures/tiny-moe/inputs/image0_80x56.png"};
    r.prompt = "Describe this image.";
    r.sampling.max_new_tokens = 8;
    r.sampling.temperature = 0;
    const Reply reply = engine.generate(r);
    CHECK(reply.prompt_tokens == int(golden_input_ids(kData + "/fixtures/tiny-moe").size()));
    CHECK(reply.tokens == manifest_ids(kData + "/fixtures/tiny-moe", "generated_ids"));
    fs::remove_all(dir);
}
