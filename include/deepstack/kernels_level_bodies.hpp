// deepstack/kernels_level_bodies.hpp - the kernel bodies of one SIMD level, in dependency order:
// the vector layer, the fp32 products, the quantized ones, attention, the bf16 products, AMX, bf16
// attention, the row-wise kernels, the choice of kernel per product, the machine-limit loops.
// Included only by kernels_levels.hpp, once per level (with DEEPSTACK_KERNEL_LEVEL and the level's
// DEEPSTACK_SIMD_* / DEEPSTACK_HAVE_* defined): like Highway's foreach_target, this per-level
// expansion is the one place where headers are included more than once.
// Included on its own it brings in the whole kernel layer.
#ifndef DEEPSTACK_KERNEL_LEVEL
#include "kernels.hpp"
#else
#include "kernels_simd.hpp"
#include "kernels_gemm.hpp"
#include "kernels_quant.hpp"
#include "kernels_attention.hpp"
#include "kernels_bf16.hpp"
#include "kernels_amx.hpp"
#include "kernels_attention_bf16.hpp"
#include "kernels_elementwise.hpp"
#include "kernels_select.hpp"
#include "kernels_peaks.hpp"
#endif  // DEEPSTACK_KERNEL_LEVEL
