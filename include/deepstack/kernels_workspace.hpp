// deepstack/kernels_workspace.hpp - named scratch memory of the kernels and the layer functions.
// A stage (a GEMM's packing, attention, a vision block, a decoder layer) keeps its buffers in a
// struct of named Workspace members; thread_workspace<Stage>() is the calling thread's instance,
// kept between calls so that steady-state calls allocate nothing.
#pragma once
#include "common.hpp"

#include <algorithm>
#include <cstddef>
#include <string>

namespace deepstack::detail {

// A grow-only, 64-byte aligned buffer in big_alloc memory (large ones in 2 MiB pages). Contents are
// undefined after get(); a pointer stays valid until the next larger get() of the same buffer.
class Workspace {
public:
    Workspace() = default;
    Workspace(const Workspace&) = delete;
    Workspace& operator=(const Workspace&) = delete;
    ~Workspace() { big_free(p_, bytes_); }

    // Room for n values of T.
    template <class T = float>
    T* get(size_t n) {
        const size_t bytes = std::max<size_t>(64, (n * sizeof(T) + 63) / 64 * 64);
        if (bytes_ < bytes) {
            big_free(p_, bytes_);
            p_ = nullptr;
            bytes_ = 0;
            p_ = big_alloc(bytes);
            if (!p_) throw Error("out of memory for a " + std::to_string(bytes) + "-byte kernel workspace");
            bytes_ = bytes;
        }
        return static_cast<T*>(p_);
    }

private:
    void* p_ = nullptr;
    size_t bytes_ = 0;
};

// The calling thread's workspace of a stage.
template <class Stage>
Stage& thread_workspace() {
    static thread_local Stage stage;
    return stage;
}

// The packed operands of the matrix products (every SIMD level's GEMMs and GEMVs). The activation
// panels are packed once per call by the calling thread and read by all threads; the weight panels
// are each thread's own.
struct GemmWorkspace {
    Workspace a_panels;       // activations packed for the GEMM (fp32, bf16 pairs or int8 quads)
    Workspace a_scales;       // int8 GEMM: the activation panels' group scales
    Workspace x_rounded;      // the activations rounded to bf16 (bf16 GEMV, fast mode without VNNI)
    Workspace x_int8;         // activations quantized to int8 per group of 32
    Workspace x_int8_scales;  // their scales
    Workspace x_line_order;   // quantized GEMVs: the activations in the block layout's line order
    Workspace x_neg_sums;     // int8 GEMV: -128 x each group's activation sum
    Workspace x_tail_steps;   // int8 GEMV: the activations of the groups after the last whole block
    Workspace x_gemv;         // fp32 GEMV: activations paired or copied for the row kernel
    Workspace b_panel;        // this thread's weight panel (fp32, bf16 pairs, int8 quads)
    Workspace b_scales;       // int8 GEMM: the weight panel's group scales
    Workspace b_sums;         // int8 GEMM: the weight panel's group sums (unsigned correction)
    Workspace b_rows;         // weight rows gathered row-major before packing
    Workspace b_row_f32;      // one weight row dequantized to fp32 (AMX Q8 / Q4 packing)
    Workspace c_blocks;       // AMX: the output blocks held between depth blocks
};

// Attention's packed keys and values and per-task buffers.
struct AttentionWorkspace {
    Workspace keys;         // keys packed per (kv head, key block)
    Workspace values;       // values packed per (kv head, key block)
    Workspace key_rows;     // bf16: one key block's rows as pairs before the transpose
    Workspace task;         // one task's queries, scores, probabilities and outputs
    Workspace partials;     // one query: the key chunks' partial outputs and softmax sums
    Workspace scores;       // one query: a key chunk's scores, then probabilities
    Workspace keys_f32;     // a bf16 cache's keys widened to fp32 (a few queries)
    Workspace values_f32;   // a bf16 cache's values widened to fp32
};

}  // namespace deepstack::detail
