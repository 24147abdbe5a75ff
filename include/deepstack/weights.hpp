// deepstack/weights.hpp - the model's tensors, looked up by their Hugging Face names and checked
// for presence, dtype and shape. Large matrices stay views into the mapped file in their stored
// dtype; only small vectors (norm weights, biases) are converted to float.
#pragma once
#include "config.hpp"
#include "kernels.hpp"
#include "moe.hpp"
#include "safetensors.hpp"

#include <functional>

namespace deepstack::detail {

struct Linear {
    Matrix w;              // [out, in]
    std::vector<float> b;  // [out] or empty
};

struct LayerNormWeights {
    std::vector<float> w, b;  // [n]
};

struct VisionBlockWeights {
    LayerNormWeights norm1, norm2;
    Linear qkv;   // [3*Dv, Dv]: rows q, then k, then v
    Linear proj;  // [Dv, Dv]
    Linear fc1;   // [Iv, Dv]
    Linear fc2;   // [Dv, Iv]
};

// Patch merger: 2x2 window -> one text-width token.
// postshuffle=false (final merger): LayerNorm(Dv) per patch, then concat.
// postshuffle=true (DeepStack mergers): concat, then LayerNorm(4*Dv).
struct MergerWeights {
    bool postshuffle = false;
    LayerNormWeights norm;
    Linear fc1;  // [4Dv, 4Dv]
    Linear fc2;  // [D, 4Dv]
};

struct VisionWeights {
    Linear patch_embed;  // [Dv, 3*2*16*16] (Conv3d kernel flattened in (c, t, y, x) order)
    Matrix pos_embed;    // [num_position_embeddings, Dv], row = y*side + x
    std::vector<VisionBlockWeights> blocks;
    MergerWeights merger;
    std::vector<MergerWeights> deepstack_mergers;  // one per deepstack_visual_indexes entry
    detail::Compute compute = detail::Compute::Exact;  // mode of every matmul and attention (LoadOptions::bf16_compute)
};

struct TextLayerWeights {
    std::vector<float> input_norm, post_norm;  // [D]
    std::vector<float> q_norm, k_norm;         // [head_dim]
    Matrix q, k, v, o;                         // [Hq*hd, D], [Hkv*hd, D], [Hkv*hd, D], [D, Hq*hd]
    Matrix gate, up, down;                     // [I, D], [I, D], [D, I]: dense layers
    std::optional<detail::MoeWeights> moe;     // sparse layers (TextConfig::sparse_layer): their experts
};

struct TextWeights {
    Matrix embed;  // [V, D]
    std::vector<TextLayerWeights> layers;
    std::vector<float> norm;  // [D]
    Matrix lm_head;           // [V, D] (the embedding matrix when tied)
    detail::Compute compute = detail::Compute::Exact;  // mode of every matmul and prefill attention (LoadOptions::bf16_compute)
};

// Format of the large matrices at run time (LoadOptions::weights): as stored in the checkpoint
// (views into the mapped file), or quantized at load to Q8 / Q4 (kernels_quant.hpp).
enum class WeightFormat { Stored, Q8, Q4 };

// Gated fusion module (see fusion.hpp).
struct GatedFusionWeights {
    Linear gate_proj;        // [levels, D]
    LayerNormWeights norm;   // [D]
};


inline Matrix matrix(const WeightStore& ws, const std::string& name, int64_t rows, int64_t cols) {
    const TensorInfo& t = ws.get(name, {rows, cols});
    return Matrix{t.dtype, t.data, rows, cols, {}};
}

inline std::vector<float> vec(const WeightStore& ws, const std::string& name, int64_t n) {
    const TensorInfo& t = ws.get(name, {n});
    Matrix m{t.dtype, t.data, 1, n, {}};
    std::vector<float> out(static_cast<size_t>(n));
    weight_row(m, 0, out.data());
    return out;
}

inline Linear linear(const WeightStore& ws, const std::string& prefix, int64_t out, int64_t in, bool bias) {
    Linear l{matrix(ws, prefix + ".weight", out, in), {}};
    if (bias) l.b = vec(ws, prefix + ".bias", out);
    return l;
}

inline LayerNormWeights layer_norm(const WeightStore& ws, const std::string& prefix, int64_t n) {
    return {vec(ws, prefix + ".weight", n), vec(ws, prefix + ".bias", n)};
}

inline MergerWeights merger(const WeightStore& ws, const std::string& prefix, const VisionConfig& v, bool postshuffle) {
    const int64_t merged = v.merged_dim();
    MergerWeights m;
    m.postshuffle = postshuffle;
    m.norm = layer_norm(ws, prefix + ".norm", postshuffle ? merged : v.hidden_size);
    m.fc1 = linear(ws, prefix + ".linear_fc1", merged, merged, true);
    m.fc2 = linear(ws, prefix + ".linear_fc2", v.out_hidden_size, merged, true);
    return m;
}


inline VisionWeights load_vision_weights(const WeightStore& ws, const VisionConfig& v) {
    using namespace detail;
    const std::string p = "model.visual.";
    VisionWeights w;
    // The Conv3d kernel [Dv, C, T, P, P] is read as the matrix [Dv, C*T*P*P].
    const TensorInfo& pe = ws.get(p + "patch_embed.proj.weight",
                                  {v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size});
    w.patch_embed.w = Matrix{pe.dtype, pe.data, v.hidden_size, v.patch_dim(), {}};
    w.patch_embed.b = vec(ws, p + "patch_embed.proj.bias", v.hidden_size);
    w.pos_embed = matrix(ws, p + "pos_embed.weight", v.num_position_embeddings, v.hidden_size);
    for (int i = 0; i < v.depth; ++i) {
        const std::string b = p + "blocks." + std::to_string(i) + ".";
        VisionBlockWeights blk;
        blk.norm1 = layer_norm(ws, b + "norm1", v.hidden_size);
        blk.norm2 = layer_norm(ws, b + "norm2", v.hidden_size);
        blk.qkv = linear(ws, b + "attn.qkv", 3 * int64_t(v.hidden_size), v.hidden_size, true);
        blk.proj = linear(ws, b + "attn.proj", v.hidden_size, v.hidden_size, true);
        blk.fc1 = linear(ws, b + "mlp.linear_fc1", v.intermediate_size, v.hidden_size, true);
        blk.fc2 = linear(ws, b + "mlp.linear_fc2", v.hidden_size, v.intermediate_size, true);
        w.blocks.push_back(std::move(blk));
    }
    w.merger = merger(ws, p + "merger", v, false);
    for (size_t k = 0; k < v.deepstack_visual_indexes.size(); ++k)
        w.deepstack_mergers.push_back(merger(ws, p + "deepstack_merger_list." + std::to_string(k), v, true));
    return w;
}

inline TextWeights load_text_weights(const WeightStore& ws, const TextConfig& t, bool tie_word_embeddings) {
    using namespace detail;
    const std::string p = "model.language_model.";
    const int64_t D = t.hidden_size, q_out = int64_t(t.num_attention_heads) * t.head_dim,
                  kv_out = int64_t(t.num_key_value_heads) * t.head_dim, I = t.intermediate_size;
    TextWeights w;
    w.embed = matrix(ws, p + "embed_tokens.weight", t.vocab_size, D);
    for (int i = 0; i < t.num_hidden_layers; ++i) {
        const std::string l = p + "layers." + std::to_string(i) + ".";
        TextLayerWeights L;
        L.input_norm = vec(ws, l + "input_layernorm.weight", D);
        L.post_norm = vec(ws, l + "post_attention_layernorm.weight", D);
        L.q_norm = vec(ws, l + "self_attn.q_norm.weight", t.head_dim);
        L.k_norm = vec(ws, l + "self_attn.k_norm.weight", t.head_dim);
        L.q = matrix(ws, l + "self_attn.q_proj.weight", q_out, D);
        L.k = matrix(ws, l + "self_attn.k_proj.weight", kv_out, D);
        L.v = matrix(ws, l + "self_attn.v_proj.weight", kv_out, D);
        L.o = matrix(ws, l + "self_attn.o_proj.weight", D, q_out);
        if (t.sparse_layer(i)) {
            L.moe = moe_weights(ws, l + "mlp.", t);
        } else {
            L.gate = matrix(ws, l + "mlp.gate_proj.weight", I, D);
            L.up = matrix(ws, l + "mlp.up_proj.weight", I, D);
            L.down = matrix(ws, l + "mlp.down_proj.weight", D, I);
        }
        w.layers.push_back(std::move(L));
    }
    w.norm = vec(ws, p + "norm.weight", D);
    if (ws.find("lm_head.weight"))
        w.lm_head = matrix(ws, "lm_head.weight", t.vocab_size, D);
    else if (tie_word_embeddings)
        w.lm_head = w.embed;
    else
        throw Error("missing tensor 'lm_head.weight' (config says tie_word_embeddings is false)");
    return w;
}

// Replaces the large matrices - vision attention/MLP and merger projections, decoder q/k/v/o and
// gate/up/down, lm_head - by quantized copies, so the stored bytes are no longer read at run time
// (file pages of a mapped checkpoint become reclaimable). The token embedding stays as stored (its
// rows are read one by one); with tied embeddings lm_head becomes its own quantized matrix. The
// patch embedding and position table are small and stay as stored. `replaced` (optional) is told
// each stored matrix once its quantized copy exists, with still_read = true for a tied lm_head (the
// embedding reads those bytes, a row per token); Model uses it to give their pages back.
inline void quantize_weights(VisionWeights& v, TextWeights& t, WeightFormat format,
                             const std::function<void(const Matrix& stored, bool still_read)>& replaced = {}) {
    if (format == WeightFormat::Stored) return;
    const DType target = format == WeightFormat::Q8 ? DType::Q8 : DType::Q4;
    auto q = [&](Matrix& m) {
        if (!m.data) return;  // a sparse layer's dense MLP
        const Matrix stored = m;
        m = quantize(stored, target);
        if (replaced) replaced(stored, stored.data == t.embed.data);
    };
    for (auto& b : v.blocks)
        for (Linear* l : {&b.qkv, &b.proj, &b.fc1, &b.fc2}) q(l->w);
    q(v.merger.fc1.w);
    q(v.merger.fc2.w);
    for (auto& m : v.deepstack_mergers) q(m.fc1.w), q(m.fc2.w);
    for (auto& L : t.layers)
        for (Matrix* m : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) q(*m);
    q(t.lm_head);
}

// Lays out the experts of every sparse decoder layer (detail::lay_out_experts) in `format`,
// layer by layer: each layer's fused expert tensors are read, re-laid or quantized, and handed to
// `release`, so a quantized load holds one layer's stored experts at a time. The router stays as
// stored.
inline void load_experts(TextWeights& t, const WeightStore& ws, const TextConfig& c, WeightFormat format,
                         const std::function<void(const TensorInfo&)>& release = {}) {
    std::optional<DType> target;
    if (format != WeightFormat::Stored) target = format == WeightFormat::Q8 ? DType::Q8 : DType::Q4;
    for (auto& L : t.layers)
        if (L.moe) detail::lay_out_experts(*L.moe, ws, c, target, release);
}

// Returns the function that re-lays a matrix in place with relay(m, bytes) when fits(m) and the
// store owns its bytes (read in, not mapped; the store must be writable meanwhile).
template <class Fits, class Relay>
inline auto relay_owned(WeightStore& ws, Fits fits, Relay relay) {
    return [&ws, fits, relay](Matrix& m) {
        if (!fits(m)) return;
        uint8_t* bytes = ws.owned_bytes(m.data, size_t(m.rows * m.cols) * sizeof(uint16_t));
        if (bytes) relay(m, reinterpret_cast<uint16_t*>(bytes));
    };
}

// Rewrites the decoder's BF16 matrices - q/k/v/o, gate/up/down, lm_head - as row tiles (see
// Matrix) where the store owns their bytes (read in, not mapped): each decode step streams them
// all through the GEMV. A tied embedding follows its lm_head (its rows are read by weight_row).
inline void tile_text_weights(TextWeights& t, WeightStore& ws) {
    const auto tile = detail::relay_owned(ws, detail::tileable, detail::tile_bf16_rows);
    ws.set_writable(true);
    for (auto& L : t.layers)
        for (Matrix* m : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) tile(*m);
    tile(t.lm_head);
    ws.set_writable(false);
    if (t.embed.data == t.lm_head.data) t.embed.tile_rows = t.lm_head.tile_rows;
}

// Rewrites the vision tower's BF16 matrices - patch embedding, attention/MLP, mergers - as pair
// panels (see Matrix) where the store owns their bytes: in fast mode (and in exact mode on AMX
// tiles) every vision call runs them through a bf16 GEMM, which then reads them in place instead
// of repacking them per call.
inline void panel_vision_weights(VisionWeights& v, WeightStore& ws) {
    const auto panel = detail::relay_owned(ws, detail::panelable, detail::panel_bf16_rows);
    ws.set_writable(true);
    panel(v.patch_embed.w);
    for (auto& b : v.blocks)
        for (Linear* l : {&b.qkv, &b.proj, &b.fc1, &b.fc2}) panel(l->w);
    panel(v.merger.fc1.w), panel(v.merger.fc2.w);
    for (auto& m : v.deepstack_mergers) panel(m.fc1.w), panel(m.fc2.w);
    ws.set_writable(false);
}

inline GatedFusionWeights load_gated_fusion_weights(const WeightStore& ws, const ModelConfig& c) {
    const std::string p = "model.visual.deepstack_fusion.";
    const int64_t levels = int64_t(c.vision.deepstack_visual_indexes.size()) + 1, D = c.text.hidden_size;
    GatedFusionWeights g;
    g.gate_proj = detail::linear(ws, p + "gate_proj", levels, D, true);
    g.norm = detail::layer_norm(ws, p + "norm", D);
    return g;
}

}  // namespace deepstack::detail
