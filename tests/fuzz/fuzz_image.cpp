// libFuzzer target: image decoding (decode_image: PNG, JPEG, BMP, GIF, ...) and the Qwen3-VL
// preprocessing of what decodes (smart_resize, bicubic resize, patchify) under a small pixel
// budget. Must end in an Image or a deepstack::Error; declared sizes above the decoder limits, and
// files too short for their declared size, must be refused before any pixel buffer exists. The pixel
// limit is lowered to 16 M (as a host taking uploads would) so that a legitimately compressible
// image stays within libFuzzer's time per input under ASan.
#include "common.hpp"
#include <deepstack/image.hpp>

using namespace deepstack;
using namespace deepstack::detail;
static constexpr int64_t kFuzzMaxPixels = int64_t(1) << 24;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    Image img;
    try {
        img = decode_image(data, size, "fuzz-image", kFuzzMaxPixels);
    } catch (const Error&) {
        return 0;
    }
    FUZZ_CHECK(img.width > 0 && img.height > 0 && img.width <= kMaxImageSide && img.height <= kMaxImageSide);
    FUZZ_CHECK(int64_t(img.width) * img.height <= kFuzzMaxPixels);
    FUZZ_CHECK(img.rgb.size() == size_t(img.width) * size_t(img.height) * 3);
    PreprocessConfig cfg;
    cfg.min_pixels = 32 * 32;
    cfg.max_pixels = 128 * 128;
    try {
        const VisualPatches p = preprocess_image(img, cfg);
        FUZZ_CHECK(p.height % 32 == 0 && p.width % 32 == 0 && p.height > 0 && p.width > 0);
        FUZZ_CHECK(p.pixels.size() == size_t(p.grid_thw[0]) * size_t(p.grid_thw[1]) * size_t(p.grid_thw[2]) * 1536);
        // Above max_pixels only where HF's own smart_resize goes there: a side clamped up to one
        // factor (extreme aspect ratios, at most 200:1).
        FUZZ_CHECK(int64_t(p.height) * p.width <= cfg.max_pixels || p.height == 32 || p.width == 32);
    } catch (const Error&) {
    }
    return 0;
}
