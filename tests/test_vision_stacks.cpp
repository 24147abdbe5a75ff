// DeepStack-V (the stack_vit fusion scheme): the stack cut against a direct per-patch
// construction, the schedules and fields a load refuses, and checkpoints the golden fixture does
// not cover (several images, a video, BF16 weights, an untied head, later starts, longer
// intervals, scale 1 and 3). Those are built here from tiny-stackv's weights; their expected
// tensors come from a reference composed item by item from the tower's pieces (patch embedding,
// position embedding, rotary tables, vision blocks, mergers, decoder), with the stacks found by
// searching each high-resolution patch's coordinates, and deepstack-golden must reproduce them.
#include "test_util.hpp"

#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <stdlib.h>
#include <sys/wait.h>

using namespace deepstack;
using namespace deepstack::detail;
namespace fs = std::filesystem;
using json = nlohmann::json;

static const std::string kStackV = kData + "/fixtures/tiny-stackv";

namespace {

// A patch by its coordinates: item, temporal patch, row and column in its grid.
struct PatchId {
    int item, tt, row, col;
    bool operator==(const PatchId& o) const { return item == o.item && tt == o.tt && row == o.row && col == o.col; }
};

// The patches of a t x h x w grid in merge-window order, loop by loop: temporal patch, window
// row, window column, row in the window, column in the window.
std::vector<PatchId> window_order(int item, const std::array<int, 3>& g, int m) {
    std::vector<PatchId> out;
    for (int tt = 0; tt < g[0]; ++tt)
        for (int wy = 0; wy < g[1] / m; ++wy)
            for (int wx = 0; wx < g[2] / m; ++wx)
                for (int iy = 0; iy < m; ++iy)
                    for (int ix = 0; ix < m; ++ix) out.push_back({item, tt, wy * m + iy, wx * m + ix});
    return out;
}

std::array<int, 3> scaled(const std::array<int, 3>& g, int r) { return {g[0], r * g[1], r * g[2]}; }

// Row of `id` in `ids`, found by search.
int64_t find_row(const std::vector<PatchId>& ids, const PatchId& id) {
    for (size_t k = 0; k < ids.size(); ++k)
        if (ids[k] == id) return int64_t(k);
    FAIL("patch not found");
    return -1;
}

// Stacks [r*r, P, Dv] from a high-resolution hidden state, built patch by patch: for the
// processor-sized patch (item, tt, i, j), stack dy*r + dx takes the row of the high-resolution
// patch (item, tt, r*i + dy, r*j + dx), found by searching the high-resolution stream's order.
std::vector<float> stacks_by_search(const float* highres, const std::vector<std::array<int, 3>>& grids, int r, int m, int64_t Dv) {
    std::vector<PatchId> global, high;
    for (size_t i = 0; i < grids.size(); ++i) {
        for (const PatchId& p : window_order(int(i), grids[i], m)) global.push_back(p);
        for (const PatchId& p : window_order(int(i), scaled(grids[i], r), m)) high.push_back(p);
    }
    const int64_t P = int64_t(global.size());
    std::vector<float> out(size_t(r * r * P * Dv));
    for (int dy = 0; dy < r; ++dy)
        for (int dx = 0; dx < r; ++dx)
            for (int64_t p = 0; p < P; ++p) {
                const PatchId& g = global[size_t(p)];
                const int64_t src = find_row(high, {g.item, g.tt, r * g.row + dy, r * g.col + dx});
                std::copy(highres + src * Dv, highres + (src + 1) * Dv, out.begin() + ((dy * r + dx) * P + p) * Dv);
            }
    return out;
}

void check_cut(const std::vector<std::array<int, 3>>& grids, int r) {
    const int m = 2;
    const int64_t Dv = 4;
    std::vector<float> highres;  // each row names its own patch: (item, tt, row, col)
    for (size_t i = 0; i < grids.size(); ++i)
        for (const PatchId& p : window_order(int(i), scaled(grids[i], r), m))
            highres.insert(highres.end(), {float(p.item), float(p.tt), float(p.row), float(p.col)});
    const std::vector<float> got = detail::cut_stacks(highres.data(), int64_t(highres.size()) / Dv, grids, r, m, Dv);
    CHECK(got == stacks_by_search(highres.data(), grids, r, m, Dv));
    // and in words: stack q's row p is the high-res patch (r*i + dy, r*j + dx) of global patch p
    std::vector<PatchId> global;
    for (size_t i = 0; i < grids.size(); ++i)
        for (const PatchId& p : window_order(int(i), grids[i], m)) global.push_back(p);
    const int64_t P = int64_t(global.size());
    for (int q = 0; q < r * r; ++q)
        for (int64_t p = 0; p < P; ++p) {
            const float* row = got.data() + (q * P + p) * Dv;
            const PatchId& g = global[size_t(p)];
            REQUIRE(row[0] == float(g.item));
            REQUIRE(row[1] == float(g.tt));
            REQUIRE(row[2] == float(r * g.row + q / r));
            REQUIRE(row[3] == float(r * g.col + q % r));
        }
}

}  // namespace

TEST_CASE("stack cut: r*r neighbours of each patch, in the processor-sized patches' order") {
    SUBCASE("r = 1: the high-resolution stream itself") { check_cut({{1, 4, 6}}, 1); }
    SUBCASE("r = 2: non-square images and a video") { check_cut({{1, 2, 4}, {1, 6, 2}, {3, 4, 4}}, 2); }
    SUBCASE("r = 3: a video, then an image") { check_cut({{2, 2, 6}, {1, 4, 2}}, 3); }
    SUBCASE("a high-resolution stream of the wrong size is refused") {
        std::vector<float> highres(size_t(4 * 2 * 4 * 4 - 4));
        CHECK_THROWS_WITH_AS(detail::cut_stacks(highres.data(), int64_t(highres.size()) / 4, {{1, 2, 4}}, 2, 2, 4),
                             doctest::Contains("the high-resolution stream has 31 patches, expected 32"), Error);
    }
}

namespace {

json stackv_config() {
    std::ifstream in(kStackV + "/model/config.json");
    return json::parse(in);
}

ModelConfig with_fusion(const json& fusion, int depth = 5) {
    json c = stackv_config();
    c["vision_config"]["deepstack_fusion"] = fusion;
    c["vision_config"]["depth"] = depth;
    return parse_model_config(c, "config.json");
}

}  // namespace

TEST_CASE("stack_vit config: defaults, schedules that fit, and what a load refuses") {
    const ModelConfig defaults = with_fusion({{"type", "stack_vit"}});
    CHECK(defaults.vision.fusion.type == FusionConfig::Type::StackVit);
    CHECK(defaults.vision.fusion.layer_start == 0);
    CHECK(defaults.vision.fusion.layer_interval == 1);
    CHECK(defaults.vision.fusion.scale == 2);
    const ModelConfig last_fit = with_fusion({{"type", "stack_vit"}, {"layer_start", 1}, {"layer_interval", 1}, {"scale", 2}});
    CHECK(last_fit.vision.fusion.stack_target(3) == 4);
    CHECK(with_fusion({{"type", "stack_vit"}, {"layer_start", 4}, {"scale", 1}}).vision.fusion.stack_target(0) == 4);

    auto refused = [](const json& fusion, const std::string& message, int depth = 5) {
        CAPTURE(fusion.dump());
        CHECK_THROWS_WITH_AS(with_fusion(fusion, depth), doctest::Contains(message.c_str()), Error);
    };
    // the last stack would go into block 5 (or later) of a 5-block tower
    const std::string past = "config.json: vision_config.deepstack_fusion: 4 stacks from layer_start 2 every 1 blocks (scale 2) run past "
                             "the last vision block (4, vision_config.depth 5)";
    refused({{"type", "stack_vit"}, {"layer_start", 2}}, past);
    refused({{"type", "stack_vit"}, {"layer_interval", 2}}, "run past the last vision block");
    refused({{"type", "stack_vit"}, {"scale", 3}}, "9 stacks from layer_start 0");
    refused({{"type", "stack_vit"}, {"scale", 65536}}, "run past the last vision block");
    refused({{"type", "stack_vit"}, {"layer_start", 5}, {"scale", 1}}, "run past the last vision block");
    // the same schedule fits a deeper tower
    CHECK_NOTHROW(with_fusion({{"type", "stack_vit"}, {"layer_start", 2}}, 6));
    // fields
    const std::string where = "config.json.vision_config.deepstack_fusion: ";
    refused({{"layer_start", 0}}, where + "missing field 'type'");
    refused({{"type", 4}}, where + "field 'type' must be a string");
    refused({{"type", "stackvit"}}, where + "unknown type 'stackvit' (expected inject, gated, stack or stack_vit)");
    refused({{"type", "stack_vit"}, {"layer_start", 0.5}}, where + "field 'layer_start' must be a non-negative integer");
    refused({{"type", "stack_vit"}, {"layer_start", -1}}, where + "field 'layer_start' must be a non-negative integer");
    refused({{"type", "stack_vit"}, {"layer_interval", 1.0}}, where + "field 'layer_interval' must be an integer");
    refused({{"type", "stack_vit"}, {"layer_interval", 0}}, where + "field 'layer_interval' must be a positive size");
    refused({{"type", "stack_vit"}, {"scale", "2"}}, where + "field 'scale' must be an integer");
    refused({{"type", "stack_vit"}, {"scale", 0}}, where + "field 'scale' must be a positive size");
    refused(json::array({1}), "config.json.vision_config.deepstack_fusion: must be an object");
}

TEST_CASE("stack_vit encode: a high-resolution grid that is not r times the grid is refused") {
    auto model = Model::load(kStackV + "/model");
    const VisualInput in = prepare_image(*model, load_image(kStackV + "/inputs/image0_150x90.png"));
    CHECK(in.highres.grid_thw == std::array<int, 3>{1, 12, 20});
    std::array<int, 3> wrong = in.highres.grid_thw;
    wrong[2] -= 2;
    CHECK_THROWS_WITH_AS(detail::encode_vision_stacked(model->vision, model->config.vision, in.patches.pixels.data(), {in.patches.grid_thw},
                                                       in.highres.pixels.data(), {wrong}),
                         doctest::Contains("item 0 has the high-resolution grid (1, 12, 18), expected 2 times (1, 6, 10)"), Error);
}

namespace {

// A stack_vit checkpoint made from tiny-stackv's weights, with its inputs and prompt.
struct Variant {
    std::string name;
    int depth = 5, layer_start = 0, layer_interval = 1, scale = 2;
    bool bf16 = false, untied = false;
    std::vector<std::pair<int, int>> images;  // width x height of synthetic pictures
    int video_frames = 0, video_width = 0, video_height = 0;
    std::vector<std::string> golden_args;     // extra deepstack-golden arguments: non-exact modes
};

// A smooth RGB picture with some detail, different per seed.
Image synthetic_image(int w, int h, int seed) {
    Image img;
    img.width = w;
    img.height = h;
    img.rgb.resize(size_t(w) * size_t(h) * 3);
    uint32_t state = uint32_t(seed) * 2654435761u + 1;
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x)
            for (int c = 0; c < 3; ++c) {
                state = state * 1664525u + 1013904223u;
                const double v = 128 + 60 * std::sin(0.11 * x * (c + 1) + 0.07 * y + seed) + 40 * std::cos(0.05 * y * (c + 2)) +
                                 double(state >> 28);
                img.rgb[(size_t(y) * size_t(w) + size_t(x)) * 3 + size_t(c)] = uint8_t(std::clamp(v, 0.0, 255.0));
            }
    return img;
}

void write_ppm(const fs::path& path, const Image& img) {
    std::string bytes = "P6\n" + std::to_string(img.width) + " " + std::to_string(img.height) + "\n255\n";
    bytes.append(img.rgb.begin(), img.rgb.end());
    write_text(path, bytes);
}

// The tiny-stackv checkpoint rewritten for a variant: vision blocks past the fixture's five repeat
// its blocks (block b takes block b % 5's weights), BF16 stores every float rounded to bf16, an
// untied head is the embedding's rows reversed and scaled by 0.75.
void write_checkpoint(const Variant& v, const fs::path& dir) {
    fs::create_directories(dir);
    for (const char* f : {"preprocessor_config.json", "tokenizer_map.json"})
        fs::copy_file(kStackV + "/model/" + f, dir / f, fs::copy_options::overwrite_existing);
    {
        std::ifstream in(kStackV + "/model/video_preprocessor_config.json");
        json vp = json::parse(in);
        vp["size"]["shortest_edge"] = 4096;  // a small video stays small
        write_text(dir / "video_preprocessor_config.json", vp.dump(1));
    }
    json c = stackv_config();
    c["vision_config"]["depth"] = v.depth;
    c["vision_config"]["deepstack_fusion"] = {
        {"type", "stack_vit"}, {"layer_start", v.layer_start}, {"layer_interval", v.layer_interval}, {"scale", v.scale}};
    c["tie_word_embeddings"] = !v.untied;
    c["text_config"]["tie_word_embeddings"] = !v.untied;
    write_text(dir / "config.json", c.dump(1));

    const WeightStore src = WeightStore::open_folder(kStackV + "/model");
    auto floats = [&](const std::string& name) {
        const TensorInfo& t = *src.find(name);
        REQUIRE(t.dtype == DType::F32);
        std::vector<float> out(size_t(t.numel()));
        std::memcpy(out.data(), t.data, t.nbytes);
        return out;
    };
    std::vector<TensorBlob> blobs;
    auto add = [&](const std::string& name, const std::vector<int64_t>& shape, const std::vector<float>& values) {
        TensorBlob b = make_blob(name, shape, values.data());
        if (v.bf16) {
            b.dtype = DType::BF16;
            b.bytes.resize(values.size() * 2);
            for (size_t i = 0; i < values.size(); ++i) {
                const uint16_t h = detail::f32_to_bf16(values[i]);
                std::memcpy(b.bytes.data() + 2 * i, &h, 2);
            }
        }
        blobs.push_back(std::move(b));
    };
    const std::string block_prefix = "model.visual.blocks.";
    for (const auto& [name, t] : src.tensors()) {
        if (name.rfind(block_prefix, 0) == 0) {
            const size_t dot = name.find('.', block_prefix.size());
            const int b = std::stoi(name.substr(block_prefix.size(), dot - block_prefix.size()));
            for (int nb = b; nb < v.depth; nb += 5) add(block_prefix + std::to_string(nb) + name.substr(dot), t.shape, floats(name));
        } else {
            add(name, t.shape, floats(name));
        }
    }
    if (v.untied) {
        const TensorInfo& e = *src.find("model.language_model.embed_tokens.weight");
        const std::vector<float> embed = floats(e.name);
        const int64_t V = e.shape[0], D = e.shape[1];
        std::vector<float> head(embed.size());
        for (int64_t r = 0; r < V; ++r)
            for (int64_t d = 0; d < D; ++d) head[size_t(r * D + d)] = 0.75f * embed[size_t((V - 1 - r) * D + d)];
        add("lm_head.weight", {V, D}, head);
    }
    write_safetensors((dir / "model.safetensors").string(), std::move(blobs));
}

// What the reference computes for one processor-sized item.
struct ItemOutput {
    std::vector<float> highres_hidden, stacks, embeds;  // stacks [r*r, P_item, Dv]
    std::vector<std::vector<float>> highres_blocks, blocks, deepstack;
};

// The hidden state [S, Dv] after the tower's input path for one item of grid g (one attention
// segment per temporal patch), with its rotary tables.
struct ItemStream {
    std::vector<float> x, cos_t, sin_t;
    std::vector<std::pair<int64_t, int64_t>> segments;
    int64_t S = 0;
};

ItemStream item_input(const Model& m, const std::vector<float>& pixels, const std::array<int, 3>& g) {
    const VisionConfig& cfg = m.config.vision;
    const int64_t Dv = cfg.hidden_size, dh = cfg.head_dim();
    ItemStream s;
    s.S = int64_t(g[0]) * g[1] * g[2];
    REQUIRE(int64_t(pixels.size()) == s.S * cfg.patch_dim());
    s.x.resize(size_t(s.S * Dv));
    const Linear& pe = m.vision.patch_embed;
    detail::matmul(pixels.data(), s.S, pe.w, s.x.data(), pe.b.empty() ? nullptr : pe.b.data(), detail::Compute::Exact);
    std::vector<float> pos(size_t(s.S * Dv));
    detail::position_embedding(m.vision.pos_embed, g[0], g[1], g[2], cfg.spatial_merge_size, pos.data());
    for (size_t i = 0; i < pos.size(); ++i) s.x[i] += pos[i];
    s.cos_t.resize(size_t(s.S * dh / 2));
    s.sin_t.resize(size_t(s.S * dh / 2));
    vision_rope_tables(g[0], g[1], g[2], cfg.spatial_merge_size, int(dh), s.cos_t.data(), s.sin_t.data());
    for (int tt = 0; tt < g[0]; ++tt) s.segments.emplace_back(int64_t(tt) * g[1] * g[2], int64_t(tt + 1) * g[1] * g[2]);
    return s;
}

void item_block(const Model& m, ItemStream& s, int b) {
    detail::vision_block(s.x.data(), s.S, m.vision.blocks[size_t(b)], m.config.vision, s.segments, s.cos_t.data(), s.sin_t.data(),
                         detail::Compute::Exact);
}

// One item alone through DeepStack-V, written out from the scheme's definition.
ItemOutput reference_item(const Model& m, const VisualInput& in) {
    const VisionConfig& cfg = m.config.vision;
    const FusionConfig& f = cfg.fusion;
    const int r = f.scale, mm = cfg.spatial_merge_size;
    const int64_t Dv = cfg.hidden_size;
    const std::array<int, 3> g = in.patches.grid_thw;
    REQUIRE(in.highres.grid_thw == scaled(g, r));
    REQUIRE(in.highres.height == r * in.patches.height);
    REQUIRE(in.highres.width == r * in.patches.width);
    ItemOutput out;
    ItemStream high = item_input(m, in.highres.pixels, in.highres.grid_thw);
    for (int b = 0; b < f.layer_start; ++b) {
        item_block(m, high, b);
        out.highres_blocks.push_back(high.x);
    }
    out.highres_hidden = high.x;
    out.stacks = stacks_by_search(high.x.data(), {g}, r, mm, Dv);

    ItemStream x = item_input(m, in.patches.pixels, g);
    out.deepstack.resize(cfg.deepstack_visual_indexes.size());
    for (int b = 0; b < cfg.depth; ++b) {
        if (b >= f.layer_start && (b - f.layer_start) % f.layer_interval == 0 && (b - f.layer_start) / f.layer_interval < r * r) {
            const float* stack = out.stacks.data() + int64_t((b - f.layer_start) / f.layer_interval) * x.S * Dv;
            for (int64_t i = 0; i < x.S * Dv; ++i) x.x[size_t(i)] += stack[i];
        }
        item_block(m, x, b);
        out.blocks.push_back(x.x);
        for (size_t k = 0; k < cfg.deepstack_visual_indexes.size(); ++k)
            if (cfg.deepstack_visual_indexes[k] == b)
                out.deepstack[k] = detail::merge_patches(x.x.data(), x.S, m.vision.deepstack_mergers[k], cfg, detail::Compute::Exact);
    }
    out.embeds = detail::merge_patches(x.x.data(), x.S, m.vision.merger, cfg, detail::Compute::Exact);
    return out;
}

// Concatenates per-item [rows_i, width] tensors (or per-item [groups, rows_i, width] ones, by group).
std::vector<float> concat(const std::vector<const std::vector<float>*>& parts, int64_t groups = 1) {
    std::vector<float> out;
    for (int64_t q = 0; q < groups; ++q)
        for (const auto* p : parts) {
            const size_t n = p->size() / size_t(groups);
            out.insert(out.end(), p->begin() + int64_t(q * n), p->begin() + int64_t((q + 1) * n));
        }
    return out;
}

int argmax(const std::vector<float>& v, size_t begin, size_t n) {
    return int(std::max_element(v.begin() + int64_t(begin), v.begin() + int64_t(begin + n)) - v.begin() - int64_t(begin));
}

// Builds the variant folder (model, inputs, manifest, golden tensors from the reference).
void write_variant(const Variant& v, const fs::path& root) {
    write_checkpoint(v, root / "model");
    fs::create_directories(root / "inputs");
    auto model = Model::load((root / "model").string());
    const ModelConfig& c = model->config;
    const int r = v.scale;

    json manifest = {{"images", json::array()}, {"video", nullptr}};
    std::vector<VisualInput> visuals;
    for (size_t i = 0; i < v.images.size(); ++i) {
        const std::string rel = "inputs/image" + std::to_string(i) + ".ppm";
        const Image img = synthetic_image(v.images[i].first, v.images[i].second, int(i) + 1);
        write_ppm(root / rel, img);
        manifest["images"].push_back({{"path", rel}});
        visuals.push_back(prepare_image(*model, load_image((root / rel).string())));
    }
    if (v.video_frames > 0) {
        std::vector<Image> frames;
        std::vector<std::string> paths;
        std::vector<int> indices;
        for (int f = 0; f < v.video_frames; ++f) {
            const std::string rel = "inputs/frame" + std::to_string(f) + ".ppm";
            write_ppm(root / rel, synthetic_image(v.video_width, v.video_height, 100 + f));
            frames.push_back(load_image((root / rel).string()));
            paths.push_back(rel);
            indices.push_back(f);
        }
        manifest["video"] = {{"frames", paths}, {"frames_indices", indices}, {"fps", 2.0}};
        visuals.push_back(prepare_video(*model, frames, indices, 2.0));
        CHECK(visuals.back().highres.grid_thw == scaled(visuals.back().patches.grid_thw, r));
    }
    write_text(root / "manifest.json", manifest.dump(1));

    // Prompt: each image, then each temporal patch of the video, as its own vision_start/end run.
    auto text = [](const std::string& s, std::vector<int>& ids) {
        for (char ch : s) ids.push_back(int(uint8_t(ch)) + 16);
    };
    std::vector<int> ids{501};
    text("user\n", ids);
    const int merge2 = c.vision.spatial_merge_size * c.vision.spatial_merge_size;
    for (const VisualInput& in : visuals) {
        const auto& g = in.patches.grid_thw;
        for (int tt = 0; tt < (in.is_video ? g[0] : 1); ++tt) {
            ids.push_back(c.vision_start_token_id);
            for (int k = 0; k < g[1] * g[2] / merge2; ++k)
                ids.push_back(in.is_video ? c.video_token_id : c.image_token_id);
            ids.push_back(c.vision_end_token_id);
        }
    }
    text("Describe.", ids);
    ids.push_back(502);
    text("\n", ids);
    ids.push_back(501);
    text("assistant\n", ids);

    // Vision, item by item.
    std::vector<ItemOutput> items;
    for (const VisualInput& in : visuals) items.push_back(reference_item(*model, in));
    const bool any_video = v.video_frames > 0, any_image = !v.images.empty();
    const std::string prefix = any_image && any_video ? "visual" : any_video ? "video" : "image";
    const int64_t Dv = c.vision.hidden_size, D = c.text.hidden_size;
    std::vector<TensorBlob> golden;
    auto put = [&](const std::string& name, std::vector<int64_t> shape, const std::vector<float>& values) {
        int64_t n = 1;
        for (int64_t d : shape) n *= d;
        REQUIRE(n == int64_t(values.size()));
        golden.push_back(make_blob(name, shape, values.data()));
    };
    auto gather = [&](const std::function<const std::vector<float>*(const ItemOutput&)>& field) {
        std::vector<const std::vector<float>*> parts;
        for (const auto& it : items) parts.push_back(field(it));
        return parts;
    };
    const std::vector<float> embeds = concat(gather([](const ItemOutput& o) { return &o.embeds; }));
    const int64_t N = int64_t(embeds.size()) / D, P = N * merge2;
    put(prefix + ".embeds", {N, D}, embeds);
    std::vector<std::vector<float>> deepstack;
    for (size_t k = 0; k < c.vision.deepstack_visual_indexes.size(); ++k) {
        deepstack.push_back(concat(gather([k](const ItemOutput& o) { return &o.deepstack[k]; })));
        put(prefix + ".deepstack" + std::to_string(k), {N, D}, deepstack.back());
    }
    for (int b = 0; b < c.vision.depth; ++b)
        put(prefix + ".vision.block" + std::to_string(b), {P, Dv}, concat(gather([b](const ItemOutput& o) { return &o.blocks[size_t(b)]; })));
    for (int b = 0; b < v.layer_start; ++b)
        put(prefix + ".vision.highres_block" + std::to_string(b), {r * r * P, Dv},
            concat(gather([b](const ItemOutput& o) { return &o.highres_blocks[size_t(b)]; })));
    put(prefix + ".vision.highres_hidden", {r * r * P, Dv}, concat(gather([](const ItemOutput& o) { return &o.highres_hidden; })));
    put(prefix + ".stacks", {r * r, P, Dv}, concat(gather([](const ItemOutput& o) { return &o.stacks; }), r * r));
    if (any_image) {
        std::vector<int64_t> grids;
        for (const VisualInput& in : visuals)
            if (!in.is_video)
                for (int d : scaled(in.patches.grid_thw, r)) grids.push_back(d);
        golden.push_back(make_blob("image_grid_thw_highres", {int64_t(grids.size()) / 3, 3}, grids.data()));
    }

    // Decoder: final-merger rows at the pad positions, tap k added after layer k; then greedy
    // steps through the cache.
    std::vector<int64_t> visual_rows;
    for (size_t i = 0; i < ids.size(); ++i)
        if (ids[i] == c.image_token_id || ids[i] == c.video_token_id) visual_rows.push_back(int64_t(i));
    REQUIRE(int64_t(visual_rows.size()) == N);
    std::vector<float> h = embed_tokens(model->text, c.text, ids);
    for (size_t i = 0; i < visual_rows.size(); ++i)
        std::copy(embeds.begin() + int64_t(i) * D, embeds.begin() + int64_t(i + 1) * D, h.begin() + visual_rows[i] * D);
    std::vector<Injection> taps;
    for (size_t k = 0; k < deepstack.size(); ++k) taps.push_back({int(k), false, deepstack[k].data()});
    KVCache cache;
    cache.max_tokens = 4096;
    Positions pos = mrope_positions(ids, visual_blocks(c, visuals));
    const std::vector<float> logits = decode_tokens(model->text, c.text, cache, h, pos, 0, visual_rows, taps, true);
    const int64_t L = int64_t(ids.size()), V = c.text.vocab_size;
    put("logits", {L, V}, logits);
    std::vector<float> steps(logits.end() - V, logits.end());
    std::vector<int64_t> generated{argmax(steps, 0, size_t(V))};
    int64_t next = pos.next;
    for (int s = 1; s < 8; ++s) {
        const int token = int(generated.back());
        std::vector<float> hs = embed_tokens(model->text, c.text, {token});
        const Positions p = mrope_positions({token}, {}, next);
        next = p.next;
        const std::vector<float> l = decode_tokens(model->text, c.text, cache, hs, p, 0, {}, {}, false);
        steps.insert(steps.end(), l.begin(), l.end());
        generated.push_back(argmax(l, 0, size_t(V)));
    }
    put("step_logits", {8, V}, steps);
    golden.push_back(make_blob("generated_ids", {8}, generated.data()));
    const std::vector<int64_t> ids64(ids.begin(), ids.end());
    golden.push_back(make_blob("input_ids", {L}, ids64.data()));
    write_safetensors((root / "golden.safetensors").string(), std::move(golden));
}


}  // namespace

TEST_CASE("stack_vit checkpoints the golden fixture does not cover: deepstack-golden against a per-item reference") {
    std::vector<Variant> variants;
    {
        Variant v;
        v.name = "two images, BF16, untied head, start 1";
        v.layer_start = 1;
        v.bf16 = v.untied = true;
        v.images = {{150, 90}, {70, 110}};
        v.golden_args = {"", "--compute bf16 --rel-tol 0.02"};
        variants.push_back(v);
    }
    {
        Variant v;
        v.name = "later start, longer interval (blocks 2, 4, 6, 8)";
        v.depth = 9;
        v.layer_start = 2;
        v.layer_interval = 2;
        v.images = {{90, 70}};
        v.golden_args = {"", "--weights int8 --rel-tol 0.03"};
        variants.push_back(v);
    }
    {
        Variant v;
        v.name = "scale 3: an image and a video (blocks 1-9)";
        v.depth = 10;
        v.layer_start = 1;
        v.scale = 3;
        v.images = {{60, 40}};
        v.video_frames = 3;
        v.video_width = 64;
        v.video_height = 48;
        v.golden_args = {""};
        variants.push_back(v);
    }
    {
        Variant v;
        v.name = "scale 1, a video alone, BF16 (block 4)";
        v.layer_start = 4;
        v.scale = 1;
        v.bf16 = true;
        v.video_frames = 4;
        v.video_width = 96;
        v.video_height = 64;
        v.golden_args = {""};
        variants.push_back(v);
    }
    for (const Variant& v : variants) {
        CAPTURE(v.name);
        TempDir dir;
        write_variant(v, dir.path);
        for (const std::string& args : v.golden_args) {
            CAPTURE(args);
            const Run golden = run_golden(dir.path, args);
            const std::string report = golden.out + golden.err;
            INFO(report);
            CHECK(golden.status == 0);
            CHECK(report.find("outside tolerance") != std::string::npos);
            CHECK(report.find("not computed") == std::string::npos);
            CHECK(report.find(".stacks") != std::string::npos);
        }
    }
}
