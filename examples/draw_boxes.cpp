// example-draw_boxes: draws the boxes of a Qwen3-VL grounding answer on the image it was about.
// usage: example-draw_boxes IMAGE ANSWER_TEXT OUT.png
//   e.g. example-draw_boxes photo.png '[{"bbox_2d": [194, 245, 453, 571], "label": "red square"}]' out.png
#include <deepstack/grounding.hpp>

#include <cstdio>

int main(int argc, char** argv) {
    if (argc != 4) {
        std::fputs("usage: example-draw_boxes IMAGE ANSWER_TEXT OUT.png\n", stderr);
        return 2;
    }
    try {
        const deepstack::Image img = deepstack::load_image(argv[1]);
        const std::vector<deepstack::Box> boxes = deepstack::parse_boxes(argv[2], img.width, img.height);
        for (const auto& b : boxes) std::printf("%-16s (%.0f, %.0f) - (%.0f, %.0f)\n", b.label.c_str(), b.x1, b.y1, b.x2, b.y2);
        deepstack::draw_boxes(img, boxes, argv[3]);
        std::printf("%zu box(es) drawn to %s\n", boxes.size(), argv[3]);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
