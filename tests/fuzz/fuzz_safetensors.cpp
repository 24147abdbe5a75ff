// libFuzzer target: a safetensors file (8-byte header length, JSON header, data area) parsed by
// detail::parse_safetensors. Must end in a result or deepstack::Error; every tensor it returns must
// lie inside the buffer with nbytes == numel * dtype size, and no two may overlap.
#include "common.hpp"

#include <deepstack/safetensors.hpp>

using namespace deepstack;
using namespace deepstack::detail;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::vector<TensorInfo> tensors;
    try {
        tensors = detail::parse_safetensors(data, size, "fuzz.safetensors");
    } catch (const Error&) {
        return 0;
    }
    std::vector<std::pair<const uint8_t*, size_t>> ranges;
    volatile uint8_t sink = 0;
    for (const TensorInfo& t : tensors) {
        FUZZ_CHECK(t.data >= data && t.data + t.nbytes <= data + size);
        int64_t numel = t.numel();
        FUZZ_CHECK(numel >= 0);
        for (int64_t d : t.shape) FUZZ_CHECK(d >= 0);
        FUZZ_CHECK(uint64_t(numel) * detail::dtype_size(t.dtype) == t.nbytes);
        if (t.nbytes) sink = sink + t.data[0] + t.data[t.nbytes - 1];  // ASan checks the ends
        ranges.push_back({t.data, t.nbytes});
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i) FUZZ_CHECK(ranges[i - 1].first + ranges[i - 1].second <= ranges[i].first);
    // The same bytes through WeightStore (owning copy), plus lookups.
    try {
        WeightStore ws;
        ws.add_buffer(std::make_shared<const std::vector<uint8_t>>(data, data + size), "fuzz.safetensors");
        for (const auto& [name, t] : ws.tensors()) {
            try {
                (void)ws.get(name, t.shape);
            } catch (const Error&) {
                FUZZ_CHECK(t.dtype != DType::F32 && t.dtype != DType::BF16 && t.dtype != DType::F16);
            }
        }
    } catch (const Error&) {
        FUZZ_CHECK(false && "the same bytes parsed once and failed the second time");
    }
    return 0;
}
