// Grounding answers -> boxes in pixels, and the PNG with the boxes drawn.
#include <doctest/doctest.h>
#include <deepstack/grounding.hpp>

#include <filesystem>
#include <unistd.h>

using namespace deepstack;
using namespace deepstack::detail;
namespace fs = std::filesystem;

namespace {

void check_box(const Box& b, const std::string& label, double x1, double y1, double x2, double y2) {
    CHECK(b.label == label);
    CHECK(b.x1 == doctest::Approx(x1));
    CHECK(b.y1 == doctest::Approx(y1));
    CHECK(b.x2 == doctest::Approx(x2));
    CHECK(b.y2 == doctest::Approx(y2));
}

std::array<uint8_t, 3> pixel(const Image& img, int x, int y) {
    const uint8_t* p = &img.rgb[(size_t(y) * size_t(img.width) + size_t(x)) * 3];
    return {p[0], p[1], p[2]};
}

}  // namespace

TEST_CASE("parse_boxes: a fenced JSON list, 0..1000 mapped to the original image's pixels") {
    const std::string answer =
        "```json\n[\n  {\"bbox_2d\": [100, 200, 500, 800], \"label\": \"cat\"},\n"
        "  {\"bbox_2d\": [0, 0, 1000, 1000], \"label\": \"everything\"}\n]\n```";
    const auto boxes = parse_boxes(answer, 640, 480);
    REQUIRE(boxes.size() == 2);
    check_box(boxes[0], "cat", 64, 96, 320, 384);
    check_box(boxes[1], "everything", 0, 0, 640, 480);
}

TEST_CASE("parse_boxes: lenient about the shape of the answer") {
    SUBCASE("a single object followed by text") {
        const auto boxes = parse_boxes("{\"bbox_2d\": [250, 250, 750, 750], \"label\": \"dog\"} That is the dog.", 640, 480);
        REQUIRE(boxes.size() == 1);
        check_box(boxes[0], "dog", 160, 120, 480, 360);
    }
    SUBCASE("corners in any order, out of range values clamped, fractions kept") {
        const auto boxes = parse_boxes("[{\"label\": \"x\", \"bbox_2d\": [900, 1200, -50, 100.5]}]", 640, 480);
        REQUIRE(boxes.size() == 1);
        check_box(boxes[0], "x", 0, 48.24, 576, 480);
    }
    SUBCASE("points") {
        const auto boxes = parse_boxes("[{\"point_2d\": [500, 250], \"label\": \"eye\"}]", 640, 480);
        REQUIRE(boxes.size() == 1);
        check_box(boxes[0], "eye", 320, 120, 320, 120);
    }
    SUBCASE("an answer cut off mid-list keeps its complete objects") {
        const auto boxes = parse_boxes("```json\n[{\"bbox_2d\": [10, 20, 30, 40], \"label\": \"a\"}, {\"bbox_2d\": [5, 6", 1000, 1000);
        REQUIRE(boxes.size() == 1);
        check_box(boxes[0], "a", 10, 20, 30, 40);
    }
    SUBCASE("prose with braces, a missing label, braces inside a label, nested lists") {
        const std::string answer =
            "Here {is} what I found: {\"bbox_2d\": [0, 0, 100, 100]} and "
            "{\"objects\": [{\"bbox_2d\": [100, 100, 200, 200], \"label\": \"a {weird} \\\"label\\\"\"}]}";
        const auto boxes = parse_boxes(answer, 1000, 500);
        REQUIRE(boxes.size() == 2);
        check_box(boxes[0], "", 0, 0, 100, 50);
        check_box(boxes[1], "a {weird} \"label\"", 100, 50, 200, 100);
    }
    SUBCASE("malformed coordinates are skipped") {
        CHECK(parse_boxes("[{\"bbox_2d\": [1, 2, 3], \"label\": \"short\"}, {\"bbox_2d\": [\"1\", 2, 3, 4]}]", 100, 100).empty());
    }
    SUBCASE("no boxes") {
        CHECK(parse_boxes("I cannot see a cat in this picture.", 100, 100).empty());
        CHECK(parse_boxes("", 100, 100).empty());
    }
    CHECK_THROWS_WITH_AS(parse_boxes("[]", 0, 100), doctest::Contains("must be positive"), Error);
}

TEST_CASE("draw_boxes: rectangles in distinct colours with labels, written as PNG") {
    Image img;
    img.width = 200;
    img.height = 100;
    img.rgb.assign(200 * 100 * 3, 128);
    const auto boxes = parse_boxes(
        "[{\"bbox_2d\": [100, 100, 600, 800], \"label\": \"cat\"}, {\"bbox_2d\": [750, 500, 950, 900]},"
        " {\"point_2d\": [50, 900], \"label\": \"p\"}]",
        img.width, img.height);
    REQUIRE(boxes.size() == 3);  // (20, 10)-(120, 80), (150, 50)-(190, 90), point (10, 90)
    const std::string path = (fs::temp_directory_path() / ("deepstack-boxes-" + std::to_string(getpid()) + ".png")).string();
    draw_boxes(img, boxes, path);
    const Image out = load_image(path);
    fs::remove(path);
    REQUIRE(out.width == 200);
    REQUIRE(out.height == 100);

    const std::array<uint8_t, 3> red{230, 25, 75}, green{60, 180, 75}, blue{0, 130, 200}, grey{128, 128, 128};
    // Box 0: 2 px lines on its edges, the inside untouched.
    for (auto [x, y] : {std::pair{20, 50}, {21, 50}, {120, 50}, {119, 50}, {70, 10}, {70, 11}, {70, 80}, {70, 79}}) {
        CAPTURE(x);
        CAPTURE(y);
        CHECK(pixel(out, x, y) == red);
    }
    CHECK(pixel(out, 22, 50) == grey);
    CHECK(pixel(out, 70, 40) == grey);
    CHECK(pixel(out, 121, 50) == grey);
    // Box 1 in the second colour, no label.
    CHECK(pixel(out, 150, 70) == green);
    CHECK(pixel(out, 190, 70) == green);
    CHECK(pixel(out, 170, 90) == green);
    CHECK(pixel(out, 170, 70) == grey);
    // The point: a small square in the third colour.
    CHECK(pixel(out, 10, 90) == blue);
    CHECK(pixel(out, 12, 88) == blue);
    // Box 0's label: a red tab above the box (rows 1..9) with white glyphs on it.
    int tab = 0, ink = 0;
    for (int y = 1; y < 10; ++y)
        for (int x = 20; x < 40; ++x) {
            tab += pixel(out, x, y) == red;
            ink += pixel(out, x, y) == std::array<uint8_t, 3>{255, 255, 255};
        }
    CHECK(tab > 60);
    CHECK(ink > 15);
    CHECK(pixel(out, 70, 5) == grey);  // the tab is only as wide as "cat"

    CHECK_THROWS_WITH_AS(draw_boxes(img, boxes, "/nonexistent-dir/x.png"), doctest::Contains("/nonexistent-dir/x.png: cannot open for writing"), Error);
    // A full disk is an error too (stb_image_write alone ignores failed writes).
    CHECK_THROWS_WITH_AS(draw_boxes(img, boxes, "/dev/full"), "/dev/full: write failed (No space left on device)", Error);
    CHECK_THROWS_AS(draw_boxes(Image{}, boxes, path), Error);
}
