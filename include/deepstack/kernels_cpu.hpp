// deepstack/kernels_cpu.hpp - what the CPU and the OS offer, and the SIMD level the kernels run at.
//
// One build holds the kernels of every level (kernels_levels.hpp) and picks one at run time: the
// highest level this CPU supports (CPUID, and XGETBV for the register state the OS saves), lowered
// by a cap that a host sets with set_max_isa() or the environment with DEEPSTACK_ISA=<name>.
// Levels, in order (each includes the ones before it on its architecture):
//   scalar      portable C++ (any CPU; x86-64 baseline)
//   neon        aarch64 Advanced SIMD
//   avx2        AVX2 + FMA + F16C
//   avx512      AVX-512 F / BW / VL / DQ
//   avx512bf16  + AVX-512 BF16 and VNNI (fast mode's bf16 and int8 dot products)
//   amx         + AMX-TILE / AMX-BF16 tiles, where Linux grants the tile state (arch_prctl)
// DEEPSTACK_AMX=0 is the older spelling of DEEPSTACK_ISA=avx512bf16.
#pragma once
#include "common.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace deepstack::detail {

// SIMD levels of the kernels (see kernels_cpu.hpp); later ones include the earlier ones of their
// architecture.
enum class Isa { Scalar, Neon, Avx2, Avx512, Avx512Bf16, Amx };

inline const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::Scalar: return "scalar";
        case Isa::Neon: return "neon";
        case Isa::Avx2: return "avx2";
        case Isa::Avx512: return "avx512";
        case Isa::Avx512Bf16: return "avx512bf16";
        case Isa::Amx: return "amx";
    }
    return "?";
}

// The level named `name` (isa_name's spelling); throws Error naming `what` for anything else.
inline Isa parse_isa(const std::string& name, const std::string& what) {
    for (Isa isa : {Isa::Scalar, Isa::Neon, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16, Isa::Amx})
        if (name == isa_name(isa)) return isa;
    throw Error(what + ": unknown SIMD level '" + name + "' (scalar, neon, avx2, avx512, avx512bf16, amx)");
}


#if defined(__x86_64__) || defined(__i386__)
// Extended control register 0: which register states the OS saves on a context switch.
inline uint64_t xcr0() {
    uint32_t lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (uint64_t(hi) << 32) | lo;
}

// Asks Linux for the AMX tile data state (process-wide; refused where the OS has not enabled it or
// a thread's alternate signal stack is too small for it).
inline bool request_amx_state() {
#if defined(__linux__) && defined(__x86_64__)
    constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
#else
    return false;
#endif
}
#endif

// The highest level this CPU and OS support, decided once.
inline Isa detect_isa() {
#if defined(__aarch64__)
    return Isa::Neon;
#elif defined(__x86_64__) || defined(__i386__)
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return Isa::Scalar;
    const bool fma = (c >> 12) & 1u, osxsave = (c >> 27) & 1u, avx = (c >> 28) & 1u, f16c = (c >> 29) & 1u;
    if (!osxsave || !avx || !fma || !f16c) return Isa::Scalar;
    const uint64_t xcr = xcr0();
    if ((xcr & 0x6u) != 0x6u) return Isa::Scalar;  // SSE and AVX state
    unsigned b7 = 0, c7 = 0, d7 = 0;
    if (!__get_cpuid_count(7, 0, &a, &b7, &c7, &d7)) return Isa::Scalar;
    if (!((b7 >> 5) & 1u)) return Isa::Scalar;  // AVX2
    const bool f = (b7 >> 16) & 1u, dq = (b7 >> 17) & 1u, bw = (b7 >> 30) & 1u, vl = (b7 >> 31) & 1u;
    if (!(f && dq && bw && vl) || (xcr & 0xE0u) != 0xE0u) return Isa::Avx2;  // + opmask and zmm state
    unsigned a71 = 0, b71 = 0, c71 = 0, d71 = 0;
    const bool bf16 = __get_cpuid_count(7, 1, &a71, &b71, &c71, &d71) && ((a71 >> 5) & 1u), vnni = (c7 >> 11) & 1u;
    if (!bf16 || !vnni) return Isa::Avx512;
    const bool amx_bf16 = (d7 >> 22) & 1u, amx_tile = (d7 >> 24) & 1u;
    if (!amx_bf16 || !amx_tile || !request_amx_state()) return Isa::Avx512Bf16;
    return Isa::Amx;
#else
    return Isa::Scalar;
#endif
}

inline Isa cpu_isa_once() {
    static const Isa isa = detect_isa();
    return isa;
}

// The cap: set_max_isa(), first taken from DEEPSTACK_ISA (or DEEPSTACK_AMX=0); Amx = no cap.
inline std::atomic<int>& isa_cap() {
    static std::atomic<int> cap{[] {
        if (const char* env = std::getenv("DEEPSTACK_ISA"); env && *env) return int(parse_isa(env, "DEEPSTACK_ISA"));
        if (const char* env = std::getenv("DEEPSTACK_AMX"); env && std::strcmp(env, "0") == 0) return int(Isa::Avx512Bf16);
        return int(Isa::Amx);
    }()};
    return cap;
}


// The highest SIMD level this CPU and OS support.
inline Isa cpu_isa() { return detail::cpu_isa_once(); }

// Runs the kernels at `level` at most (a lower level of the CPU's own architecture; a level above
// what the CPU has changes nothing). For tests and A/B measurements; not while a forward pass runs.
inline void set_max_isa(Isa level) { detail::isa_cap().store(int(level), std::memory_order_relaxed); }

// The level the kernels run at: the CPU's, capped by set_max_isa / DEEPSTACK_ISA. On aarch64 any
// cap above neon means neon.
inline Isa active_isa() {
    const Isa cpu = cpu_isa();
    const int cap = detail::isa_cap().load(std::memory_order_relaxed);
#if defined(__aarch64__)
    return cap == int(Isa::Scalar) ? Isa::Scalar : cpu;
#else
    return Isa(std::min(int(cpu), cap == int(Isa::Neon) ? int(Isa::Scalar) : cap));
#endif
}


// Whether the AMX tile kernels run now (the active level is amx).
inline bool amx_active() { return active_isa() == Isa::Amx; }

// Where the decode GEMVs prefetch their weight lines: non-temporal on AMD, into L2 on Intel (the
// hint that kept most lines in flight on each); DEEPSTACK_PREFETCH=nta|l2 overrides the choice.
enum class WeightPrefetch { NonTemporal, L2 };

inline WeightPrefetch weight_prefetch() {
    static const WeightPrefetch where = [] {
        if (const char* env = std::getenv("DEEPSTACK_PREFETCH")) {
            if (std::strcmp(env, "l2") == 0) return WeightPrefetch::L2;
            if (std::strcmp(env, "nta") == 0) return WeightPrefetch::NonTemporal;
        }
#if defined(__x86_64__) || defined(__i386__)
        unsigned a = 0, b = 0, c = 0, d = 0;
        // vendor "GenuineIntel" in ebx, edx, ecx
        if (__get_cpuid(0, &a, &b, &c, &d) && b == 0x756e6547u && d == 0x49656e69u && c == 0x6c65746eu) return WeightPrefetch::L2;
#endif
        return WeightPrefetch::NonTemporal;
    }();
    return where;
}

// Threads a kernel may use: all of OpenMP's, or 1 inside a parallel region.
inline int omp_threads() {
#ifdef _OPENMP
    return omp_in_parallel() ? 1 : omp_get_max_threads();
#else
    return 1;
#endif
}
// Threads for a job of `work` multiply-adds: 1 below ~1M (a parallel region costs microseconds, and
// much more when the cores are oversubscribed), else all of them.
inline int omp_threads_for(double work) { return work < double(1 << 20) ? 1 : omp_threads(); }

// Rows of a [M, n] elementwise/norm job spread over threads when there is enough work.
inline bool worth_threads(int64_t elems) { return elems >= (int64_t(1) << 16) && omp_threads() > 1; }

}  // namespace deepstack::detail
