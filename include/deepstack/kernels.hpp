// deepstack/kernels.hpp - the numeric kernels the forward pass is written in: matrix products
// against weights in their stored dtype, norms, activations, attention. One build holds them for
// every SIMD level and runs the best one this CPU offers (kernels_cpu.hpp, set_max_isa,
// DEEPSTACK_ISA); OpenMP over the large dimension.
//
//   kernels_types.hpp      Matrix, QuantWeights, Compute
//   kernels_layout.hpp     reading and re-laying weights (row tiles, pair panels), quantize()
//   kernels_ref.hpp        the scalar references (*_ref) every kernel is tested against
//   kernels_cpu.hpp        CPU features, the SIMD levels and the cap
//   kernels_workspace.hpp  named per-thread scratch memory
//   kernels_levels.hpp     the level bodies (kernels_simd / gemm / quant / attention / bf16 / amx /
//                          attention_bf16 / elementwise / select / peaks) compiled per level
//   kernels_dispatch.hpp   the kernels by name, forwarded to the active level
#pragma once
#include "kernels_cpu.hpp"
#include "kernels_dispatch.hpp"
#include "kernels_layout.hpp"
#include "kernels_levels.hpp"
#include "kernels_ref.hpp"
#include "kernels_types.hpp"
#include "kernels_workspace.hpp"
