// libFuzzer target: parse_boxes on arbitrary model output (a grounding answer is text the model
// wrote, so anything goes: cut-off JSON, deep nesting, huge numbers). The first four bytes give the
// image size. Must return boxes inside the image, corners ordered, and never recurse without bound.
#include "common.hpp"

#include <deepstack/grounding.hpp>

using namespace deepstack;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    deepstack_fuzz::Reader in{data, size};
    const int width = int(in.u16() % 4096) + 1, height = int(in.u16() % 4096) + 1;
    const std::string text = in.rest();
    const std::vector<Box> boxes = parse_boxes(text, width, height);
    for (const Box& b : boxes) {
        FUZZ_CHECK(b.x1 >= 0 && b.x1 <= b.x2 && b.x2 <= width);
        FUZZ_CHECK(b.y1 >= 0 && b.y1 <= b.y2 && b.y2 <= height);
    }
    return 0;
}
