// deepstack/kernels_levels.hpp - the kernels compiled once per SIMD level, each time in a namespace
// of its own (detail::kern_scalar, kern_avx2, kern_avx512, kern_avx512bf16 on x86-64; kern_scalar,
// kern_neon on aarch64) and, on x86, inside a target region that lets the compiler use that level's
// instructions in those functions only: no translation unit needs -m flags, and the dispatch
// (kernels_dispatch.hpp) calls a level only where the CPU has it. The bodies test the level macros
// defined here (DEEPSTACK_SIMD_* for the vector width, DEEPSTACK_HAVE_* for the extras), never the
// compiler's __AVX512F__ etc. (GCC updates those under a target pragma, clang does not). Every
// standard or intrinsic header comes before the first target region.
//
// clang 14 does not carry a target attribute into the functions it outlines for OpenMP regions, so
// under clang an x86 level is compiled only where the unit's own flags already enable it
// (DEEPSTACK_ARCH=avx2 / avx512 / native); without flags a clang build has the scalar level.
//
// The GEMV kernels keep their sums in small arrays of vectors indexed by fixed-count loops; those
// arrays stay in registers only once the loops are unrolled, which GCC does by itself at -O3 but not
// at -O2 (a host's RelWithDebInfo build, say: the Q4 decode GEMV ran 2.5x slower). Such loops carry
// DEEPSTACK_UNROLL (#pragma GCC unroll), so the kernels run at full speed whatever optimisation
// level the host uses. Sanitizer builds leave them rolled: unrolled, their instrumented code took a
// quarter longer to compile, and unrolling changes no result.
//
// A build pinned to one level (DEEPSTACK_ARCH=avx2 / avx512 / native: -m flags on every unit) still
// holds every level; the flags then also let the compiler use those instructions outside the kernels.
#pragma once
#include "common.hpp"
#include "kernels_cpu.hpp"
#include "kernels_layout.hpp"
#include "kernels_ref.hpp"
#include "kernels_types.hpp"
#include "kernels_workspace.hpp"

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

// GCC 12's AVX-512 intrinsic headers trip -W(maybe-)uninitialized (_mm512_undefined_* inside the
// intrinsics) once inlined at -O3, and -Wpsabi notes that a vector type changes the ABI of functions
// built without the level's flags (all of them are inline, in the level's namespace): silenced for the
// kernel bodies only.
#if defined(__SANITIZE_ADDRESS__)
#define DEEPSTACK_UNROLL
#else
#define DEEPSTACK_UNROLL _Pragma("GCC unroll 8")
#endif

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

// ---- scalar: portable C++, every architecture ----
#define DEEPSTACK_KERNEL_LEVEL kern_scalar
#define DEEPSTACK_SIMD_SCALAR 1
#include "kernels_level_bodies.hpp"
#undef DEEPSTACK_SIMD_SCALAR
#undef DEEPSTACK_KERNEL_LEVEL

#if defined(__aarch64__)
// ---- neon: aarch64's baseline ----
#define DEEPSTACK_KERNEL_LEVEL kern_neon
#define DEEPSTACK_SIMD_NEON 1
#include "kernels_level_bodies.hpp"
#undef DEEPSTACK_SIMD_NEON
#undef DEEPSTACK_KERNEL_LEVEL
#endif

#if defined(__x86_64__) && (!defined(__clang__) || (defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)))
#define DEEPSTACK_LEVEL_AVX2 1
#endif
#if defined(__x86_64__) && (!defined(__clang__) || (defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)))
#define DEEPSTACK_LEVEL_AVX512 1
#endif
#if defined(__x86_64__) && (!defined(__clang__) || (defined(DEEPSTACK_LEVEL_AVX512) && defined(__AVX512BF16__) && defined(__AVX512VNNI__)))
#define DEEPSTACK_LEVEL_AVX512BF16 1
#endif

#if defined(DEEPSTACK_LEVEL_AVX2)
// ---- avx2: AVX2 + FMA + F16C ----
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
#define DEEPSTACK_KERNEL_LEVEL kern_avx2
#define DEEPSTACK_SIMD_AVX2 1
#define DEEPSTACK_HAVE_F16C 1
#include "kernels_level_bodies.hpp"
#undef DEEPSTACK_HAVE_F16C
#undef DEEPSTACK_SIMD_AVX2
#undef DEEPSTACK_KERNEL_LEVEL
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

#if defined(DEEPSTACK_LEVEL_AVX512)
// ---- avx512: AVX-512 F / BW / VL / DQ ----
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")
#endif
#define DEEPSTACK_KERNEL_LEVEL kern_avx512
#define DEEPSTACK_SIMD_AVX512 1
#define DEEPSTACK_HAVE_F16C 1
#include "kernels_level_bodies.hpp"
#undef DEEPSTACK_HAVE_F16C
#undef DEEPSTACK_SIMD_AVX512
#undef DEEPSTACK_KERNEL_LEVEL
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

#if defined(DEEPSTACK_LEVEL_AVX512BF16)
// ---- avx512bf16: + AVX-512 BF16 and VNNI; the AMX kernels (run only where amx_active()) ----
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vnni,amx-tile,amx-bf16"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vnni,amx-tile,amx-bf16")
#endif
#define DEEPSTACK_KERNEL_LEVEL kern_avx512bf16
#define DEEPSTACK_SIMD_AVX512 1
#define DEEPSTACK_HAVE_F16C 1
#define DEEPSTACK_HAVE_DPBF16 1
#define DEEPSTACK_HAVE_VNNI 1
#if defined(__linux__) && (!defined(__clang__) || (defined(__AMX_TILE__) && defined(__AMX_BF16__)))
#define DEEPSTACK_HAVE_AMX 1
#endif
#include "kernels_level_bodies.hpp"
#undef DEEPSTACK_HAVE_AMX
#undef DEEPSTACK_HAVE_VNNI
#undef DEEPSTACK_HAVE_DPBF16
#undef DEEPSTACK_HAVE_F16C
#undef DEEPSTACK_SIMD_AVX512
#undef DEEPSTACK_KERNEL_LEVEL
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

#undef DEEPSTACK_UNROLL

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
