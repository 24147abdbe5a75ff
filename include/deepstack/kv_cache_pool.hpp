// deepstack/kv_cache_pool.hpp - the KV cache arrays of ended sessions, kept for the next ones.
// A session's cache reserves its whole context per layer up front and commits pages as tokens
// are written: a fresh session faults in a page per layer for keys and for values every few
// tokens, and where fresh memory is slow to fault (a VM whose host backs guest memory lazily:
// ~17 us per 4 KiB page here) that costs more than a short prefill. An Engine answers request
// after request, so its sessions take the arrays an ended session left here, pages committed.
#pragma once
#include "common.hpp"

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include <sys/mman.h>

namespace deepstack::detail {

// A KV cache's arrays, one per layer for keys and one for values: fp32 or bf16.
struct KVArrays {
    std::vector<big_array<float>> k, v;
    std::vector<big_array<uint16_t>> k16, v16;
    bool empty() const { return k.empty() && k16.empty(); }
    bool bf16() const { return !k16.empty(); }
    size_t layers() const { return bf16() ? k16.size() : k.size(); }
    size_t elements() const { return bf16() ? k16[0].size() : k[0].size(); }
};

class KVCachePool {
public:
    // Keeps the arrays of up to max_kept ended sessions; of each array, the pages of its first
    // kKeptBytes stay committed, those after are given back to the system.
    explicit KVCachePool(size_t max_kept) : max_kept_(max_kept) {}
    KVCachePool(const KVCachePool&) = delete;
    KVCachePool& operator=(const KVCachePool&) = delete;

    // Arrays of `layers` x `elements` values (bf16 or fp32) left by an ended session, or empty ones.
    KVArrays take(size_t layers, size_t elements, bool bf16) {
        std::lock_guard<std::mutex> guard(mutex_);
        for (size_t i = 0; i < kept_.size(); ++i)
            if (kept_[i].bf16() == bf16 && kept_[i].layers() == layers && kept_[i].elements() == elements) {
                KVArrays a = std::move(kept_[i]);
                kept_.erase(kept_.begin() + std::ptrdiff_t(i));
                return a;
            }
        return {};
    }

    // The arrays of an ended session that wrote the first `used` values of each.
    void give(KVArrays&& arrays, size_t used) {
        if (arrays.empty()) return;
        release_after_kept(arrays.k, used), release_after_kept(arrays.v, used);
        release_after_kept(arrays.k16, used), release_after_kept(arrays.v16, used);
        std::lock_guard<std::mutex> guard(mutex_);
        if (kept_.size() < max_kept_) kept_.push_back(std::move(arrays));
    }

private:
    static constexpr size_t kKeptBytes = kHugePage;  // 2 MiB: a layer's bf16 keys of 1024 tokens in the 2B

    // Gives back the committed pages past kKeptBytes of each array (2 MiB aligned: big_alloc).
    template <typename T>
    void release_after_kept(std::vector<big_array<T>>& layers, size_t used) const {
        for (big_array<T>& a : layers) {
            const size_t bytes = a.size() * sizeof(T), written = huge_round(used * sizeof(T)), from = kKeptBytes;
            if (!huge_size(bytes) || written <= from) continue;
            ::madvise(reinterpret_cast<char*>(a.data()) + from, std::min(written, huge_round(bytes)) - from, MADV_DONTNEED);
        }
    }

    const size_t max_kept_;
    std::mutex mutex_;
    std::vector<KVArrays> kept_;
};

}  // namespace deepstack::detail
