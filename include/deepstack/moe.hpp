// deepstack/moe.hpp - the mixture-of-experts MLP of qwen3_vl_moe decoder layers: the experts'
// weights re-laid at load for the kernels, the router, and the block's forward pass.
//
// Checkpoint layout of a sparse layer (stored dtype, no ".weight" on the experts):
//   mlp.gate.weight              [E, H]   router, a Linear weight ([out, in])
//   mlp.experts.gate_up_proj     [E, H, 2I] input-major (used as x @ W): gate = columns [0, I), up = [I, 2I)
//   mlp.experts.down_proj        [E, I, H]  input-major
// At load every expert becomes three [out, in] matrices (gate, up [I, H], down [H, I]), stored
// dtype or quantized, so a token reads only the rows of the experts it chose.
#pragma once
#include "config.hpp"
#include "kernels.hpp"
#include "safetensors.hpp"

#include <algorithm>
#include <cmath>
#include <exception>
#include <functional>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

namespace deepstack::detail {

// One expert's SwiGLU in [out, in] layout: gate, up [I, H], down [H, I].
struct ExpertWeights {
    Matrix gate, up, down;
};

struct MoeWeights {
    Matrix router;                       // [E, H] as stored: routing stays fp32 in every weight format
    std::vector<ExpertWeights> experts;  // [E], filled by lay_out_experts
    std::string gate_up_name, down_name;  // the checkpoint's fused tensors, read by lay_out_experts
};

// Checks a sparse layer's tensors (prefix "model.language_model.layers.{i}.mlp.") and takes the
// router. The fused expert tensors are only checked here (present, float, input-major shape);
// lay_out_experts reads them.
inline MoeWeights moe_weights(const WeightStore& ws, const std::string& prefix, const TextConfig& t) {
    const int64_t E = t.num_experts, H = t.hidden_size, I = t.moe_intermediate_size;
    MoeWeights w;
    const TensorInfo& router = ws.get(prefix + "gate.weight", {E, H});
    w.router = Matrix{router.dtype, router.data, E, H, {}};
    w.gate_up_name = prefix + "experts.gate_up_proj";
    w.down_name = prefix + "experts.down_proj";
    auto check = [&](const std::string& name, std::vector<int64_t> shape, std::vector<int64_t> transposed) {
        const TensorInfo* t = ws.find(name);
        if (!t) {
            if (ws.find(prefix + "experts.0.gate_proj.weight"))
                throw Error("tensor '" + name + "' is missing: this checkpoint stores each expert separately (" + prefix +
                            "experts.0.gate_proj.weight); expected the fused expert tensors");
            throw Error("missing tensor '" + name + "'");
        }
        if (t->dtype != DType::F32 && t->dtype != DType::BF16 && t->dtype != DType::F16)
            throw Error(t->file + ": tensor '" + name + "' has dtype " + dtype_name(t->dtype) + ", expected F32, BF16 or F16");
        if (t->shape == transposed && transposed != shape)
            throw Error(t->file + ": tensor '" + name + "' has shape " + shape_str(t->shape) + ", the transposed layout; expected " +
                        shape_str(shape) + " (input-major, as the published checkpoints store it)");
        if (t->shape != shape)
            throw Error(t->file + ": tensor '" + name + "' has shape " + shape_str(t->shape) + ", expected " + shape_str(shape));
    };
    check(w.gate_up_name, {E, H, 2 * I}, {E, 2 * I, H});
    check(w.down_name, {E, I, H}, {E, H, I});
    return w;
}

// dst [cols, rows] = transpose of the rows x cols block at src with row stride ld (elements of T).
template <typename T>
inline void transpose_block(const T* src, int64_t rows, int64_t cols, int64_t ld, T* dst) {
    constexpr int64_t B = 32;  // a block's 32 source rows and 32 destination rows stay in L1
    for (int64_t c0 = 0; c0 < cols; c0 += B)
        for (int64_t r0 = 0; r0 < rows; r0 += B)
            for (int64_t c = c0; c < std::min(cols, c0 + B); ++c)
                for (int64_t r = r0; r < std::min(rows, r0 + B); ++r) dst[c * rows + r] = src[r * ld + c];
}

inline void transpose_elements(const uint8_t* src, int64_t rows, int64_t cols, int64_t ld, size_t elem, uint8_t* dst) {
    if (elem == 4)
        transpose_block(reinterpret_cast<const uint32_t*>(src), rows, cols, ld, reinterpret_cast<uint32_t*>(dst));
    else
        transpose_block(reinterpret_cast<const uint16_t*>(src), rows, cols, ld, reinterpret_cast<uint16_t*>(dst));
}

// Lays out the experts of one sparse layer from its fused tensors: per expert gate, up [I, H]
// and down [H, I], quantized to `quantize_to` (Q8 / Q4) or kept in the stored dtype (then BF16
// matrices in row tiles for the GEMV, see Matrix). The experts are shared by the threads, each
// transposing and quantizing whole matrices. `release` is told each fused tensor once its bytes are
// read no more (the loader gives their pages back).
inline void lay_out_experts(MoeWeights& w, const WeightStore& ws, const TextConfig& t, std::optional<DType> quantize_to,
                            const std::function<void(const TensorInfo&)>& release) {
    const int64_t E = t.num_experts, H = t.hidden_size, I = t.moe_intermediate_size;
    const TensorInfo& gu = ws.get(w.gate_up_name, {E, H, 2 * I});
    const TensorInfo& dn = ws.get(w.down_name, {E, I, H});
    if (gu.dtype != dn.dtype)
        throw Error(gu.file + ": tensors '" + gu.name + "' (" + dtype_name(gu.dtype) + ") and '" + dn.name + "' (" + dtype_name(dn.dtype) +
                    ") must have one dtype");
    const DType dt = gu.dtype;
    const size_t es = dtype_size(dt), mat = size_t(I * H) * es;  // bytes of one [I, H] / [H, I] matrix
    w.experts.assign(size_t(E), {});
    // All experts of the layer in one buffer of 2 MiB pages, [E][gate, up, down] (a token's
    // experts then stream without a TLB miss per 4 KiB): the stored dtype, or each matrix's
    // quantized values and scales (64-byte aligned); quantizing, each thread transposes one matrix
    // at a time into a buffer of its own.
    auto line = [](size_t bytes) { return (bytes + 63) / 64 * 64; };
    size_t q_line[2] = {mat, mat}, part_bytes = mat;  // q_line: bytes before the scales, [I, H] and [H, I]
    if (quantize_to) {
        part_bytes = 0;
        const std::pair<size_t, size_t> bytes[2] = {quant_bytes(*quantize_to, I, H), quant_bytes(*quantize_to, H, I)};
        for (int i = 0; i < 2; ++i) {
            q_line[i] = line(bytes[i].first);
            part_bytes = std::max(part_bytes, q_line[i] + line(bytes[i].second));
        }
    }
    const auto owned = std::make_shared<big_vector<uint8_t>>(3 * part_bytes * size_t(E));
    std::exception_ptr failure;
#pragma omp parallel
    {
        big_vector<uint8_t> scratch(quantize_to ? mat : 0);
#pragma omp for schedule(dynamic, 1)
        for (int64_t e = 0; e < E; ++e) {
            try {
                ExpertWeights& x = w.experts[size_t(e)];
                const uint8_t* gu_e = gu.data + size_t(e * H * 2 * I) * es;  // [H, 2I]
                const uint8_t* dn_e = dn.data + size_t(e * I * H) * es;      // [I, H]
                struct Part {
                    Matrix* m;
                    const uint8_t* src;
                    int64_t rows, cols, ld;  // the source block [rows, cols], row stride ld
                } parts[] = {{&x.gate, gu_e, H, I, 2 * I}, {&x.up, gu_e + size_t(I) * es, H, I, 2 * I}, {&x.down, dn_e, I, H, H}};
                for (size_t p = 0; p < 3; ++p) {
                    uint8_t* place = owned->data() + (size_t(e) * 3 + p) * part_bytes;
                    uint8_t* dst = quantize_to ? scratch.data() : place;
                    transpose_elements(parts[p].src, parts[p].rows, parts[p].cols, parts[p].ld, es, dst);
                    Matrix& m = *parts[p].m;
                    m = Matrix{dt, dst, parts[p].cols, parts[p].rows, {}};
                    if (quantize_to) {
                        m = quantize(m, *quantize_to, false,
                                     {reinterpret_cast<int8_t*>(place), reinterpret_cast<uint16_t*>(place + q_line[p / 2]), owned});
                    } else {
                        m.storage = owned;
                        if (tileable(m)) tile_bf16_rows(m, reinterpret_cast<uint16_t*>(dst));
                    }
                }
            } catch (...) {
#pragma omp critical(deepstack_lay_out_experts)
                if (!failure) failure = std::current_exception();
            }
        }
    }
    if (failure) std::rethrow_exception(failure);
    if (release) release(gu), release(dn);
}

// Router choice for T tokens: per token the k experts of highest softmax probability (fp32; ties
// to the lower expert id), in descending probability, with their probabilities renormalised to
// sum 1. logits [T, E]; ids, weights [T, k].
inline void route(const float* logits, int64_t T, int E, int k, int* ids, float* weights) {
    std::vector<float> p(static_cast<size_t>(E));
    std::vector<int> order(static_cast<size_t>(E));
    for (int64_t t = 0; t < T; ++t) {
        const float* l = logits + t * E;
        const float mx = *std::max_element(l, l + E);
        float sum = 0.f;
        for (int e = 0; e < E; ++e) sum += p[size_t(e)] = std::exp(l[e] - mx);
        for (int e = 0; e < E; ++e) p[size_t(e)] /= sum;
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + k, order.end(),
                          [&](int a, int b) { return p[size_t(a)] > p[size_t(b)] || (p[size_t(a)] == p[size_t(b)] && a < b); });
        float top = 0.f;
        for (int j = 0; j < k; ++j) top += p[size_t(order[size_t(j)])];
        for (int j = 0; j < k; ++j) {
            ids[t * k + j] = order[size_t(j)];
            weights[t * k + j] = p[size_t(order[size_t(j)])] / top;
        }
    }
}

// Per-thread buffers of the expert products (grow-only).
struct ExpertWorkspace {
    std::vector<float> x, gate, up;  // [n, H], [n, I], [n, I]
};
inline ExpertWorkspace& expert_workspace() {
    static thread_local ExpertWorkspace ws;
    return ws;
}

// y [n, H] = down(silu(gate(x)) * up(x)) for one expert on the rows x [n, H].
inline void expert_swiglu(const float* x, int64_t n, const ExpertWeights& w, float* y, Compute mode) {
    ExpertWorkspace& ws = expert_workspace();
    const size_t hidden = size_t(n * w.gate.rows);
    if (ws.gate.size() < hidden) ws.gate.resize(hidden), ws.up.resize(hidden);
    const Matrix* gate_up_w[] = {&w.gate, &w.up};
    float* gate_up_out[] = {ws.gate.data(), ws.up.data()};
    matmul_shared_input(x, n, gate_up_w, gate_up_out, 2, mode);
    silu_mul(ws.gate.data(), ws.up.data(), ws.gate.data(), int64_t(hidden));
    matmul(ws.gate.data(), n, w.down, y, nullptr, mode);
}

// The mixture-of-experts MLP: y [T, H] = sum over each token's chosen experts e_j of
// w_j * expert_e_j(x) for x [T, H] (the post-attention-normed hidden states). The tokens are
// grouped by expert, so each chosen expert's weights are read once per call: the experts run side
// by side on the threads (each product on one) when there are enough of them, else one after the
// other with every product on all threads. `trace` (optional) receives prefix + ".input",
// ".router_logits", ".topk_ids", ".topk_weights", ".output".
inline void moe_block(const float* x, int64_t T, const MoeWeights& w, const TextConfig& c, Compute mode, float* y,
                      const Trace& trace = {}, const std::string& prefix = {}) {
    const int E = c.num_experts, k = c.num_experts_per_tok;
    const int64_t H = c.hidden_size;
    std::vector<float> logits(size_t(T * E)), weights(size_t(T * k));
    std::vector<int> ids(size_t(T * k));
    matmul(x, T, w.router, logits.data());
    route(logits.data(), T, E, k, ids.data(), weights.data());

    // Assignments (token t, slot j) grouped by expert: row r of `outputs` holds expert
    // ids[order[r]] applied to token order[r] / k; first[e] .. first[e + 1] are expert e's rows.
    std::vector<int64_t> first(size_t(E) + 1, 0), order(size_t(T * k)), row_of(size_t(T * k));
    for (int id : ids) ++first[size_t(id) + 1];
    for (int e = 0; e < E; ++e) first[size_t(e) + 1] += first[size_t(e)];
    {
        std::vector<int64_t> next(first.begin(), first.end() - 1);
        for (int64_t a = 0; a < T * k; ++a) {
            const int64_t r = next[size_t(ids[size_t(a)])]++;
            order[size_t(r)] = a;
            row_of[size_t(a)] = r;
        }
    }
    std::vector<int> active;
    int64_t most_rows = 0;
    for (int e = 0; e < E; ++e)
        if (first[size_t(e) + 1] > first[size_t(e)]) {
            active.push_back(e);
            most_rows = std::max(most_rows, first[size_t(e) + 1] - first[size_t(e)]);
        }
    std::vector<float> outputs(size_t(T * k * H));  // [T*k, H] in expert order
    auto run_expert = [&](int e) {
        const int64_t r0 = first[size_t(e)], n = first[size_t(e) + 1] - r0;
        ExpertWorkspace& ws = expert_workspace();
        if (ws.x.size() < size_t(n * H)) ws.x.resize(size_t(n * H));
        for (int64_t r = 0; r < n; ++r) std::copy_n(x + order[size_t(r0 + r)] / k * H, H, ws.x.data() + r * H);
        expert_swiglu(ws.x.data(), n, w.experts[size_t(e)], outputs.data() + r0 * H, mode);
    };
    const int threads = omp_threads(), n_active = int(active.size());
    if (threads > 1 && (n_active >= 2 * threads || (most_rows <= 4 && n_active >= threads))) {
#pragma omp parallel for schedule(dynamic, 1)
        for (int i = 0; i < n_active; ++i) run_expert(active[size_t(i)]);
    } else {
        for (int e : active) run_expert(e);
    }
    for (int64_t t = 0; t < T; ++t) {
        float* yt = y + t * H;
        std::fill(yt, yt + H, 0.f);
        for (int j = 0; j < k; ++j) {
            const float wj = weights[size_t(t * k + j)];
            const float* o = outputs.data() + row_of[size_t(t * k + j)] * H;
            for (int64_t i = 0; i < H; ++i) yt[i] += wj * o[i];
        }
    }
    if (trace) {
        std::vector<float> id_values(ids.begin(), ids.end());
        trace(prefix + ".input", {T, H}, x);
        trace(prefix + ".router_logits", {T, int64_t(E)}, logits.data());
        trace(prefix + ".topk_ids", {T, int64_t(k)}, id_values.data());
        trace(prefix + ".topk_weights", {T, int64_t(k)}, weights.data());
        trace(prefix + ".output", {T, H}, y);
    }
}

}  // namespace deepstack::detail
