// deepstack/common.hpp - error type, dtypes, numeric conversions, small helpers.
#pragma once
#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <new>
#include <cstring>
#include <chrono>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace deepstack {

// Every failure the library reports (bad files, bad shapes, bad input) is a deepstack::Error whose
// message names the file or field and the problem. Programs print it as "error: <what>".
struct Error : std::runtime_error {
    explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {

// Storage dtypes of weights (as in safetensors) plus the quantized formats made at load time.
enum class DType { F32, BF16, F16, I64, I32, Q8, Q4 };

inline const char* dtype_name(DType t) {
    switch (t) {
        case DType::F32: return "F32";
        case DType::BF16: return "BF16";
        case DType::F16: return "F16";
        case DType::I64: return "I64";
        case DType::I32: return "I32";
        case DType::Q8: return "Q8";
        case DType::Q4: return "Q4";
    }
    return "?";
}

// Receives named intermediate tensors of a forward pass (golden comparisons, debugging):
// name as in the golden fixtures (e.g. "image.vision.block0"), shape, float data.
using Trace = std::function<void(const std::string& name, const std::vector<int64_t>& shape, const float* data)>;

inline float bf16_to_f32(uint16_t h) {
    uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Round to nearest even, NaN kept quiet (same as PyTorch's float -> bfloat16 cast).
inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else {  // subnormal: renormalise
            int e = -1;
            do { ++e; man <<= 1; } while (!(man & 0x400u));
            u = sign | uint32_t(127 - 15 - e) << 23 | (man & 0x3ffu) << 13;
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | man << 13;
    } else {
        u = sign | (exp + 127 - 15) << 23 | man << 13;
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

inline std::string shape_str(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

// Large buffers in private anonymous memory, 2 MiB aligned and advised for transparent huge
// pages: one page fault per 2 MiB instead of one per 4 KiB, and fewer TLB misses when the whole
// buffer streams through the cores (on a 2-core AMD EPYC VM a 4 KiB fault costs ~17 us, so a fresh
// 25 MB activation buffer costs ~100 ms in faults alone). Smaller requests use the heap.
constexpr size_t kHugePage = size_t(2) << 20;
inline bool huge_size(size_t bytes) { return bytes >= kHugePage / 2; }
inline size_t huge_round(size_t bytes) { return (bytes + kHugePage - 1) / kHugePage * kHugePage; }

// 64-byte aligned; large sizes are a fresh 2 MiB aligned mapping (zero-filled, each page committed
// only when first touched). nullptr when out of memory. reserve = false maps large sizes without
// reserving memory for them (MAP_NORESERVE: a region larger than the RAM, of which only parts are
// ever written at once). huge_pages = false leaves out the huge page advice, so a buffer written a
// little at a time commits 4 KiB at a time.
inline void* big_alloc(size_t bytes, bool reserve = true, bool huge_pages = true) {
    if (!huge_size(bytes)) return std::aligned_alloc(64, (bytes + 63) / 64 * 64 + (bytes == 0 ? 64 : 0));
    const size_t size = huge_round(bytes);
    void* p = ::mmap(nullptr, size + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | (reserve ? 0 : MAP_NORESERVE), -1, 0);
    if (p == MAP_FAILED) return nullptr;
    // Keep the 2 MiB aligned part only, so that big_free can give back exactly `size` bytes.
    const uintptr_t base = reinterpret_cast<uintptr_t>(p), aligned = (base + kHugePage - 1) & ~uintptr_t(kHugePage - 1);
    if (aligned > base) ::munmap(p, aligned - base);
    if (base + kHugePage > aligned) ::munmap(reinterpret_cast<void*>(aligned + size), base + kHugePage - aligned);
#ifdef MADV_HUGEPAGE
    if (huge_pages) ::madvise(reinterpret_cast<void*>(aligned), size, MADV_HUGEPAGE);  // advisory: 4 KiB pages still work
#endif
    return reinterpret_cast<void*>(aligned);
}
inline void big_free(void* p, size_t bytes) {
    if (!p) return;
    if (huge_size(bytes)) ::munmap(p, huge_round(bytes));
    else std::free(p);
}

// n elements of T in big_alloc memory, never resized, move-only: for a buffer reserved at its
// largest size up front whose pages should be committed only as they are written (the KV cache,
// which grows by one row per token: 4 KiB pages, as a 2 MiB one would commit a thousand rows at
// the first).
template <typename T>
class big_array {
public:
    big_array() = default;
    explicit big_array(size_t n) : p_(static_cast<T*>(big_alloc(n * sizeof(T), true, false))), n_(n) {
        if (!p_) throw std::bad_alloc();
    }
    big_array(big_array&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
    big_array& operator=(big_array&& o) noexcept {
        std::swap(p_, o.p_);
        std::swap(n_, o.n_);
        return *this;
    }
    big_array(const big_array&) = delete;
    big_array& operator=(const big_array&) = delete;
    ~big_array() { big_free(p_, n_ * sizeof(T)); }
    T* data() { return p_; }
    const T* data() const { return p_; }
    size_t size() const { return n_; }

private:
    T* p_ = nullptr;
    size_t n_ = 0;
};

// std::vector allocator over big_alloc (long-lived large arrays).
template <typename T>
struct BigAllocator {
    using value_type = T;
    BigAllocator() = default;
    template <typename U>
    BigAllocator(const BigAllocator<U>&) {}
    T* allocate(size_t n) {
        if (n > size_t(-1) / sizeof(T)) throw std::bad_alloc();
        void* p = big_alloc(n * sizeof(T));
        if (!p) throw std::bad_alloc();
        return static_cast<T*>(p);
    }
    void deallocate(T* p, size_t n) { big_free(p, n * sizeof(T)); }
    template <typename U>
    bool operator==(const BigAllocator<U>&) const { return true; }
    template <typename U>
    bool operator!=(const BigAllocator<U>&) const { return false; }
};
template <typename T>
using big_vector = std::vector<T, BigAllocator<T>>;

}  // namespace detail
}  // namespace deepstack
