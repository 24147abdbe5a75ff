// deepstack/model.hpp - the public face: load a model folder, turn images and videos into visual
// inputs, and run a Session (prefill a prompt with its visuals, decode one token at a time).
#pragma once
#include "fusion.hpp"
#include "kv_cache_pool.hpp"
#include "image.hpp"
#include "vision_stacks.hpp"

#include <memory>
#include <optional>
#include <sys/stat.h>

namespace deepstack::detail {

// Most OpenMP threads a host or a program flag may ask for (EngineOptions::threads, --threads).
constexpr int kMaxThreads = 1024;

struct LoadOptions {
    WeightFormat weights = WeightFormat::Stored;  // Q8 / Q4: quantize the large matrices at load
    bool bf16_compute = false;  // fast matmuls: bf16 activations for BF16 weights, int8 for Q8/Q4 prefill,
                                // and bf16 attention over 8+ queries (vision, prefill; not exact)
    // Stored weights: false (default) reads the safetensors files into memory backed by 2 MiB pages
    // (decode streams every weight per token; about 1.6x faster than over 4 KiB mapped pages here)
    // and re-orders the decoder's BF16 matrices there as row tiles (Matrix, tile_text_weights), in
    // the vision tower's as pair panels (panel_vision_weights) for the bf16 GEMMs that read them in
    // place: fast mode with AVX-512 BF16, exact mode on AMX tiles;
    // true maps them (instant load, pages shared with other processes, RSS grows as they are touched;
    // the choice for a model larger than the free RAM, which reading in cannot hold).
    // Q8 / Q4 always map: the stored bytes are read once to quantize, then released.
    bool map_weights = false;
};

// A loaded model: configuration and weight views into the checkpoint as read in or mapped
// (LoadOptions::map_weights), or quantized copies of the large matrices (LoadOptions::weights).
// Immutable after load, so one Model can serve many Sessions on many threads.
struct Model {
    std::string dir;
    ModelConfig config;
    PreprocessConfig image_config, video_config;
    WeightStore store;
    VisionWeights vision;
    TextWeights text;
    std::optional<GatedFusionWeights> gated;  // only for the gated fusion scheme

    static std::shared_ptr<const Model> load(const std::string& dir, const LoadOptions& opt = {}) {
        struct stat st {};
        if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) throw Error(dir + ": model folder not found");
        const FileAccess access = opt.weights == WeightFormat::Stored && !opt.map_weights ? FileAccess::Read : FileAccess::Map;
        return from_store(load_model_config(dir + "/config.json"), load_preprocess_config(dir + "/preprocessor_config.json", false),
                          load_preprocess_config(dir + "/video_preprocessor_config.json", true), WeightStore::open_folder(dir, access), dir,
                          opt);
    }

    // Builds a model from parsed configs and a weight store (e.g. one made in memory).
    static std::shared_ptr<const Model> from_store(ModelConfig config, PreprocessConfig image_config, PreprocessConfig video_config,
                                                   WeightStore store, const std::string& name = "(memory)",
                                                   const LoadOptions& opt = {}) {
        auto m = std::make_shared<Model>();
        m->dir = name;
        m->config = std::move(config);
        m->image_config = image_config;
        m->video_config = video_config;
        for (const PreprocessConfig* p : {&m->image_config, &m->video_config})
            if (p->patch_size != m->config.vision.patch_size || p->merge_size != m->config.vision.spatial_merge_size ||
                p->temporal_patch_size != m->config.vision.temporal_patch_size)
                throw Error(name + ": preprocessor patch_size/merge_size/temporal_patch_size disagree with config.json vision_config");
        m->store = std::move(store);
        m->vision = load_vision_weights(m->store, m->config.vision);
        m->text = load_text_weights(m->store, m->config.text, m->config.tie_word_embeddings);
        quantize_weights(m->vision, m->text, opt.weights, [&](const Matrix& stored, bool still_read) {
            m->store.release(stored.data, size_t(stored.rows * stored.cols) * detail::dtype_size(stored.dtype), still_read);
        });
        load_experts(m->text, m->store, m->config.text, opt.weights,
                     [&](const TensorInfo& fused) { m->store.release(fused.data, fused.nbytes); });
        tile_text_weights(m->text, m->store);
        if ((opt.bf16_compute && detail::has_bf16_dot_products()) || detail::exact_gemm_on_amx()) panel_vision_weights(m->vision, m->store);
        m->vision.compute = m->text.compute = opt.bf16_compute ? detail::Compute::Fast : detail::Compute::Exact;
        if (m->config.vision.fusion.type == FusionConfig::Type::Gated) m->gated = load_gated_fusion_weights(m->store, m->config);
        return m;
    }
};

// One image or one video, preprocessed for the model.
struct VisualInput {
    bool is_video = false;
    VisualPatches patches;  // the processor-sized stream
    VisualPatches highres;  // stack schemes only: the same input at `scale` times the height and width
    std::vector<double> timestamps;  // video: seconds of each temporal patch
};

// Preprocessing limits a host may override (0 = the model's preprocessor config).
struct PixelBudget {
    int64_t min_pixels = 0, max_pixels = 0;
};

// A preprocessor config with a host's budget applied (load_video takes the result for videos).
inline PreprocessConfig with_budget(PreprocessConfig p, const PixelBudget& b) {
    if (b.min_pixels < 0 || b.max_pixels < 0 || b.min_pixels > kMaxProcessorPixels || b.max_pixels > kMaxProcessorPixels)
        throw Error("pixel budget: min_pixels (" + std::to_string(b.min_pixels) + ") and max_pixels (" + std::to_string(b.max_pixels) +
                    ") must be between 0 (the model's default) and " + std::to_string(kMaxProcessorPixels));
    if (b.min_pixels > 0) p.min_pixels = b.min_pixels;
    if (b.max_pixels > 0) p.max_pixels = b.max_pixels;
    if (p.min_pixels > p.max_pixels) throw Error("min_pixels (" + std::to_string(p.min_pixels) + ") exceeds max_pixels (" + std::to_string(p.max_pixels) + ")");
    return p;
}

inline VisualInput prepare_image(const Model& m, const Image& img, const PixelBudget& budget = {}) {
    VisualInput in;
    const PreprocessConfig cfg = with_budget(m.image_config, budget);
    in.patches = preprocess_image(img, cfg);
    if (m.config.vision.fusion.has_highres_stream()) {
        const int r = m.config.vision.fusion.scale;
        in.highres = preprocess_image_at(img, in.patches.height * r, in.patches.width * r, cfg);
    }
    return in;
}

// frames: the sampled frames in order; frame_indices/fps: where they came from (timestamps).
// source_height x source_width: see preprocess_video (0: the frames are at their source size).
inline VisualInput prepare_video(const Model& m, const std::vector<Image>& frames, const std::vector<int>& frame_indices,
                                 double fps, const PixelBudget& budget = {}, int source_height = 0, int source_width = 0) {
    if (m.config.vision.fusion.type == FusionConfig::Type::Stack)
        throw Error("videos are not supported with the DeepStack-L (stack) fusion scheme");
    VisualInput in;
    in.is_video = true;
    const PreprocessConfig cfg = with_budget(m.video_config, budget);
    in.patches = preprocess_video(frames, cfg, source_height, source_width);
    if (m.config.vision.fusion.type == FusionConfig::Type::StackVit) {
        if (source_height > 0 && (frames[0].height != source_height || frames[0].width != source_width))
            throw Error("this model's high-resolution video stream needs the frames at their source size (load_video with resize_frames false)");
        const int r = m.config.vision.fusion.scale;
        in.highres = preprocess_video_at(frames, in.patches.height * r, in.patches.width * r, cfg);
    }
    in.timestamps = temporal_patch_timestamps(frame_indices, fps, m.config.vision.temporal_patch_size);
    return in;
}

// A clip from load_video. Give load_video with_budget(m.video_config, budget) for the same budget:
// its frames then arrive at the processor size and are used as they are.
inline VisualInput prepare_video(const Model& m, const VideoClip& clip, const PixelBudget& budget = {}) {
    return prepare_video(m, clip.frames, clip.frame_indices, clip.fps, budget, clip.source_height, clip.source_width);
}

// The pad-token blocks the visuals occupy in a prompt, in order: one per image, one per temporal
// patch of a video, each with its merged grid.
inline std::vector<VisualBlock> visual_blocks(const ModelConfig& c, const std::vector<VisualInput>& visuals) {
    const int merge = c.vision.spatial_merge_size;
    std::vector<VisualBlock> blocks;
    for (const auto& v : visuals) {
        const auto& g = v.patches.grid_thw;
        for (int tt = 0; tt < (v.is_video ? g[0] : 1); ++tt)
            blocks.push_back({v.is_video ? c.video_token_id : c.image_token_id, g[1] / merge, g[2] / merge});
    }
    return blocks;
}

// What a prompt's visuals will cost, known from their grids before any encoding: the pad tokens
// they need and the vision encoder's working memory (activations of all patches at once, fp32).
struct VisualCost {
    int64_t visual_tokens = 0;
    int64_t vision_bytes = 0;
};

inline VisualCost estimate_visual_cost(const ModelConfig& c, const std::vector<VisualInput>& visuals) {
    const VisionConfig& v = c.vision;
    int64_t patches = 0;
    for (const auto& in : visuals)
        for (const VisualPatches* p : {&in.patches, &in.highres}) patches += int64_t(p->grid_thw[0]) * p->grid_thw[1] * p->grid_thw[2];
    const int64_t merged = patches / (v.spatial_merge_size * v.spatial_merge_size);
    VisualCost cost;
    for (const auto& in : visuals) {
        const auto& g = in.patches.grid_thw;
        cost.visual_tokens += int64_t(g[0]) * g[1] * g[2] / (v.spatial_merge_size * v.spatial_merge_size);
    }
    // Per patch: pixels, ~11 hidden-width buffers (x, position, qkv, q, k, v, attention, residual),
    // the MLP hidden layer and the rotary tables; per merged token: the final and DeepStack outputs.
    // The high-resolution stream counts as patches of its own (DeepStack-V: its first layer_start
    // blocks, then its stacks, held while the processor-sized stream runs).
    cost.vision_bytes = 4 * (patches * (v.patch_dim() + 11 * int64_t(v.hidden_size) + v.intermediate_size + v.head_dim()) +
                             merged * int64_t(v.out_hidden_size) * int64_t(v.deepstack_visual_indexes.size() + 2));
    if (v.fusion.type == FusionConfig::Type::StackVit)
        for (const auto& in : visuals)
            cost.vision_bytes += 4 * int64_t(in.highres.grid_thw[0]) * in.highres.grid_thw[1] * in.highres.grid_thw[2] * v.hidden_size;
    return cost;
}

// The visual part of a prompt: the vision encoder on all visuals at once, then the checkpoint's
// fusion scheme. Traced names start with "image", "video", or "visual" for a mix.
inline VisualEmbedding encode_visuals(const Model& m, const std::vector<VisualInput>& visuals, const FusionOptions& opt,
                                      const Trace& trace = {}) {
    const ModelConfig& c = m.config;
    const FusionConfig& fusion = c.vision.fusion;
    const int64_t D = c.text.hidden_size;
    const int64_t patch_dim = c.vision.patch_dim();
    auto check_pixels = [&](const VisualPatches& p, size_t i, const char* what) {
        const auto& g = p.grid_thw;
        const int64_t need = int64_t(g[0]) * g[1] * g[2] * patch_dim;
        if (g[0] <= 0 || g[1] <= 0 || g[2] <= 0 || int64_t(p.pixels.size()) != need)
            throw Error(std::string("visual input ") + std::to_string(i) + what + " holds " + std::to_string(p.pixels.size()) +
                        " pixel values but its grid (" + std::to_string(g[0]) + ", " + std::to_string(g[1]) + ", " +
                        std::to_string(g[2]) + ") needs " + std::to_string(need) + " (prepared for another model?)");
    };
    std::vector<std::array<int, 3>> grids, hr_grids;
    std::vector<float> pixels, hr_pixels;
    bool any_image = false, any_video = false;
    for (size_t i = 0; i < visuals.size(); ++i) {
        const VisualInput& v = visuals[i];
        check_pixels(v.patches, i, "");
        grids.push_back(v.patches.grid_thw);
        pixels.insert(pixels.end(), v.patches.pixels.begin(), v.patches.pixels.end());
        if (fusion.has_highres_stream()) {
            check_pixels(v.highres, i, " (high-resolution stream)");
            hr_grids.push_back(v.highres.grid_thw);
            hr_pixels.insert(hr_pixels.end(), v.highres.pixels.begin(), v.highres.pixels.end());
        }
        (v.is_video ? any_video : any_image) = true;
    }
    const std::string prefix = any_image && any_video ? "visual" : any_video ? "video" : "image";
    switch (fusion.type) {
        case FusionConfig::Type::Inject:
            return fuse_inject(encode_vision(m.vision, c.vision, pixels.data(), grids, trace, prefix), opt);
        case FusionConfig::Type::Gated:
            return fuse_gated(encode_vision(m.vision, c.vision, pixels.data(), grids, trace, prefix), *m.gated, fusion.eps, D, trace,
                              prefix);
        case FusionConfig::Type::Stack: {
            VisionFeatures f = encode_vision(m.vision, c.vision, pixels.data(), grids, trace, prefix);
            std::vector<std::array<int, 3>> merged;
            for (const auto& g : grids) merged.push_back({g[0], g[1] / c.vision.spatial_merge_size, g[2] / c.vision.spatial_merge_size});
            VisionFeatures hr = encode_vision(m.vision, c.vision, hr_pixels.data(), hr_grids);
            if (trace) trace(prefix + ".highres_embeds", {hr.tokens, D}, hr.embeds.data());
            return fuse_stack(std::move(f), hr.embeds, merged, fusion, D, opt, trace, prefix);
        }
        case FusionConfig::Type::StackVit:
            return fuse_inject(encode_vision_stacked(m.vision, c.vision, pixels.data(), grids, hr_pixels.data(), hr_grids, trace, prefix),
                               opt);
    }
    throw Error("unknown fusion scheme");
}

// Per-conversation state: the KV cache and the position counter. Not thread-safe itself; use one
// Session per thread (they may share one Model).
class Session {
public:
    struct Options {
        int64_t max_context = 32768;  // tokens the KV cache may hold
        FusionOptions fusion;
        std::shared_ptr<KVCachePool> kv_pool;  // KV cache arrays kept between sessions (an Engine's); may be null
    };

    explicit Session(std::shared_ptr<const Model> model) : Session(std::move(model), Options{}) {}
    Session(std::shared_ptr<const Model> model, Options opt) : model_(std::move(model)), opt_(std::move(opt)) {
        cache_.max_tokens = std::min<int64_t>(opt_.max_context, model_->config.text.max_position_embeddings);
        cache_.pool = opt_.kv_pool;
    }

    const Model& model() const { return *model_; }
    int64_t length() const { return cache_.length; }          // tokens in the cache
    int64_t capacity() const { return cache_.max_tokens; }    // tokens the cache may hold
    int64_t next_position() const { return next_pos_; }       // M-RoPE position of the next token
    const KVCache& cache() const { return cache_; }
    void reset() { cache_.length = 0; next_pos_ = 0; }

    // Appends `ids` to the conversation. Their image/video pad tokens take the `visuals` in order
    // (an image one block of pad tokens, a video one block per temporal patch). Returns the
    // logits of the last token [V], or of every token [T, V] when all_logits.
    std::vector<float> prefill(const std::vector<int>& ids, const std::vector<VisualInput>& visuals = {}, bool all_logits = false,
                               const Trace& trace = {}) {
        const Model& m = *model_;
        const ModelConfig& c = m.config;
        if (ids.empty()) throw Error("prefill: empty token list");
        if (cache_.length + int64_t(ids.size()) > cache_.max_tokens)
            throw Error("prompt of " + std::to_string(ids.size()) + " tokens does not fit: the context holds " +
                        std::to_string(cache_.max_tokens) + " tokens and " + std::to_string(cache_.length) + " are used");
        const Positions pos = mrope_positions(ids, visual_blocks(c, visuals), next_pos_);
        std::vector<float> h = embed_tokens(m.text, c.text, ids);
        std::vector<int64_t> visual_rows;
        for (size_t i = 0; i < ids.size(); ++i)
            if (ids[i] == c.image_token_id || ids[i] == c.video_token_id) visual_rows.push_back(int64_t(i));
        // A pad token without visuals is only accepted from decode() (a generated token).
        if (visuals.empty() && !visual_rows.empty())
            throw Error("prompt has " + std::to_string(visual_rows.size()) +
                        " image/video pad tokens but the visual inputs make 0 tokens (no images or videos were given)");

        VisualEmbedding vis;
        if (!visuals.empty()) {
            vis = detail::encode_visuals(m, visuals, opt_.fusion, trace);
            if (int64_t(visual_rows.size()) != vis.tokens)
                throw Error("prompt has " + std::to_string(visual_rows.size()) + " image/video pad tokens but the visual inputs make " +
                            std::to_string(vis.tokens) + " tokens");
            const int64_t D = c.text.hidden_size;
            for (size_t i = 0; i < visual_rows.size(); ++i)
                std::copy(vis.embeds.begin() + int64_t(i) * D, vis.embeds.begin() + int64_t(i + 1) * D, h.begin() + visual_rows[i] * D);
        }
        if (trace) trace("text.inputs_embeds", {int64_t(ids.size()), c.text.hidden_size}, h.data());
        auto logits = decode_tokens(m.text, c.text, cache_, h, pos, 0, visual_rows, vis.injections(), all_logits, trace);
        next_pos_ = pos.next;
        return logits;
    }

    // Appends one token (a generated one: an image or video pad token is taken as text); returns
    // its logits [V].
    std::vector<float> decode(int token) { return decode_batch({this}, {token}); }

    // Appends tokens[b] to sessions[b] (distinct sessions of one model), as decode() does for
    // each, in one decoder pass per kGemvRows sessions: the weights are read once for all of them.
    // Returns their logits [B, V], row b the bits sessions[b]->decode(tokens[b]) gives. A session
    // whose context is full, or a token outside the vocabulary, throws before any session changes.
    static std::vector<float> decode_batch(const std::vector<Session*>& sessions, const std::vector<int>& tokens) {
        if (sessions.empty() || sessions.size() != tokens.size()) throw Error("decode_batch: one token per session, at least one");
        const Model& m = *sessions[0]->model_;
        for (size_t b = 0; b < sessions.size(); ++b) {
            if (sessions[b]->model_.get() != &m) throw Error("decode_batch: the sessions must share one model");
            for (size_t j = 0; j < b; ++j)
                if (sessions[j] == sessions[b]) throw Error("decode_batch: a session is given twice");
            if (sessions[b]->cache_.length >= sessions[b]->cache_.max_tokens)
                throw Error("the next token does not fit: the context holds " + std::to_string(sessions[b]->cache_.max_tokens) +
                            " tokens and " + std::to_string(sessions[b]->cache_.length) + " are used");
        }
        const int64_t V = m.config.text.vocab_size;
        std::vector<float> logits(sessions.size() * size_t(V));
        for (size_t b0 = 0; b0 < sessions.size(); b0 += kGemvRows) {
            const size_t b1 = std::min(sessions.size(), b0 + kGemvRows);
            std::vector<KVCache*> caches;
            std::vector<int64_t> positions;
            for (size_t b = b0; b < b1; ++b) caches.push_back(&sessions[b]->cache_), positions.push_back(sessions[b]->next_pos_);
            const std::vector<int> step_tokens(tokens.begin() + std::ptrdiff_t(b0), tokens.begin() + std::ptrdiff_t(b1));
            const std::vector<float> l = decode_step(m.text, m.config.text, caches, step_tokens, positions);
            std::copy(l.begin(), l.end(), logits.begin() + std::ptrdiff_t(b0 * size_t(V)));
            for (size_t b = b0; b < b1; ++b) ++sessions[b]->next_pos_;
        }
        return logits;
    }

private:
    std::shared_ptr<const Model> model_;
    Options opt_;
    KVCache cache_;
    int64_t next_pos_ = 0;
};

}  // namespace deepstack::detail
