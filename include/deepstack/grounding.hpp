// deepstack/grounding.hpp - boxes from a grounding answer and a picture of them.
// Qwen3-VL answers "locate ..." prompts with JSON such as
//   ```json
//   [{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}, {"point_2d": [x, y], "label": "dog"}]
//   ```
// with coordinates relative to the picture it was given, on a 0..1000 scale on both axes.
#pragma once
#include "image.hpp"
#include "json.hpp"

#include "stb.hpp"

#include <nlohmann/json.hpp>

namespace deepstack {

// A box in pixels of the original image (x to the right, y down); a point has x1 == x2, y1 == y2.
struct Box {
    std::string label;
    double x1 = 0, y1 = 0, x2 = 0, y2 = 0;
};

namespace detail {

// Numbers of a coordinate array, or an empty vector when `v` is not an array of `n` numbers.
inline std::vector<double> coords(const nlohmann::json& v, size_t n) {
    std::vector<double> out;
    if (!v.is_array() || v.size() != n) return {};
    for (const auto& x : v) {
        if (!x.is_number()) return {};
        out.push_back(x.get<double>());
    }
    return out;
}

// Adds the boxes of a parsed JSON value: objects with "bbox_2d" or "point_2d", searched in
// arrays and nested objects too.
inline void collect_boxes(const nlohmann::json& v, int width, int height, std::vector<Box>& out) {
    if (v.is_array()) {
        for (const auto& e : v) collect_boxes(e, width, height, out);
        return;
    }
    if (!v.is_object()) return;
    auto px = [](double rel, int size) { return std::clamp(rel / 1000.0 * size, 0.0, double(size)); };
    const auto label = v.find("label");
    Box b;
    if (label != v.end() && label->is_string()) b.label = label->get<std::string>();
    const auto bbox = v.find("bbox_2d"), point = v.find("point_2d");
    if (const auto c = coords(bbox != v.end() ? *bbox : nlohmann::json(), 4); !c.empty()) {
        b.x1 = px(std::min(c[0], c[2]), width), b.x2 = px(std::max(c[0], c[2]), width);
        b.y1 = px(std::min(c[1], c[3]), height), b.y2 = px(std::max(c[1], c[3]), height);
        out.push_back(b);
    } else if (const auto p = coords(point != v.end() ? *point : nlohmann::json(), 2); !p.empty()) {
        b.x1 = b.x2 = px(p[0], width);
        b.y1 = b.y2 = px(p[1], height);
        out.push_back(b);
    } else {
        for (const auto& [key, e] : v.items()) collect_boxes(e, width, height, out);
    }
}

// 5x7 ASCII font, characters 32..126: five columns each, bit r (0 = top) set where row r is ink.
constexpr uint8_t kFont5x7[95][5] = {
    {0x00, 0x00, 0x00, 0x00, 0x00}, {0x00, 0x00, 0x5F, 0x00, 0x00}, {0x00, 0x07, 0x00, 0x07, 0x00}, {0x14, 0x7F, 0x14, 0x7F, 0x14},
    {0x24, 0x2A, 0x7F, 0x2A, 0x12}, {0x23, 0x13, 0x08, 0x64, 0x62}, {0x36, 0x49, 0x55, 0x22, 0x50}, {0x00, 0x05, 0x03, 0x00, 0x00},
    {0x00, 0x1C, 0x22, 0x41, 0x00}, {0x00, 0x41, 0x22, 0x1C, 0x00}, {0x08, 0x2A, 0x1C, 0x2A, 0x08}, {0x08, 0x08, 0x3E, 0x08, 0x08},
    {0x00, 0x50, 0x30, 0x00, 0x00}, {0x08, 0x08, 0x08, 0x08, 0x08}, {0x00, 0x60, 0x60, 0x00, 0x00}, {0x20, 0x10, 0x08, 0x04, 0x02},
    {0x3E, 0x51, 0x49, 0x45, 0x3E}, {0x00, 0x42, 0x7F, 0x40, 0x00}, {0x42, 0x61, 0x51, 0x49, 0x46}, {0x21, 0x41, 0x45, 0x4B, 0x31},
    {0x18, 0x14, 0x12, 0x7F, 0x10}, {0x27, 0x45, 0x45, 0x45, 0x39}, {0x3C, 0x4A, 0x49, 0x49, 0x30}, {0x01, 0x71, 0x09, 0x05, 0x03},
    {0x36, 0x49, 0x49, 0x49, 0x36}, {0x06, 0x49, 0x49, 0x29, 0x1E}, {0x00, 0x36, 0x36, 0x00, 0x00}, {0x00, 0x56, 0x36, 0x00, 0x00},
    {0x08, 0x14, 0x22, 0x41, 0x00}, {0x14, 0x14, 0x14, 0x14, 0x14}, {0x00, 0x41, 0x22, 0x14, 0x08}, {0x02, 0x01, 0x51, 0x09, 0x06},
    {0x32, 0x49, 0x79, 0x41, 0x3E}, {0x7E, 0x11, 0x11, 0x11, 0x7E}, {0x7F, 0x49, 0x49, 0x49, 0x36}, {0x3E, 0x41, 0x41, 0x41, 0x22},
    {0x7F, 0x41, 0x41, 0x22, 0x1C}, {0x7F, 0x49, 0x49, 0x49, 0x41}, {0x7F, 0x09, 0x09, 0x09, 0x01}, {0x3E, 0x41, 0x49, 0x49, 0x7A},
    {0x7F, 0x08, 0x08, 0x08, 0x7F}, {0x00, 0x41, 0x7F, 0x41, 0x00}, {0x20, 0x40, 0x41, 0x3F, 0x01}, {0x7F, 0x08, 0x14, 0x22, 0x41},
    {0x7F, 0x40, 0x40, 0x40, 0x40}, {0x7F, 0x02, 0x0C, 0x02, 0x7F}, {0x7F, 0x04, 0x08, 0x10, 0x7F}, {0x3E, 0x41, 0x41, 0x41, 0x3E},
    {0x7F, 0x09, 0x09, 0x09, 0x06}, {0x3E, 0x41, 0x51, 0x21, 0x5E}, {0x7F, 0x09, 0x19, 0x29, 0x46}, {0x46, 0x49, 0x49, 0x49, 0x31},
    {0x01, 0x01, 0x7F, 0x01, 0x01}, {0x3F, 0x40, 0x40, 0x40, 0x3F}, {0x1F, 0x20, 0x40, 0x20, 0x1F}, {0x3F, 0x40, 0x38, 0x40, 0x3F},
    {0x63, 0x14, 0x08, 0x14, 0x63}, {0x07, 0x08, 0x70, 0x08, 0x07}, {0x61, 0x51, 0x49, 0x45, 0x43}, {0x00, 0x7F, 0x41, 0x41, 0x00},
    {0x02, 0x04, 0x08, 0x10, 0x20}, {0x00, 0x41, 0x41, 0x7F, 0x00}, {0x04, 0x02, 0x01, 0x02, 0x04}, {0x40, 0x40, 0x40, 0x40, 0x40},
    {0x00, 0x01, 0x02, 0x04, 0x00}, {0x20, 0x54, 0x54, 0x54, 0x78}, {0x7F, 0x48, 0x44, 0x44, 0x38}, {0x38, 0x44, 0x44, 0x44, 0x20},
    {0x38, 0x44, 0x44, 0x48, 0x7F}, {0x38, 0x54, 0x54, 0x54, 0x18}, {0x08, 0x7E, 0x09, 0x01, 0x02}, {0x0C, 0x52, 0x52, 0x52, 0x3E},
    {0x7F, 0x08, 0x04, 0x04, 0x78}, {0x00, 0x44, 0x7D, 0x40, 0x00}, {0x20, 0x40, 0x44, 0x3D, 0x00}, {0x7F, 0x10, 0x28, 0x44, 0x00},
    {0x00, 0x41, 0x7F, 0x40, 0x00}, {0x7C, 0x04, 0x18, 0x04, 0x78}, {0x7C, 0x08, 0x04, 0x04, 0x78}, {0x38, 0x44, 0x44, 0x44, 0x38},
    {0x7C, 0x14, 0x14, 0x14, 0x08}, {0x08, 0x14, 0x14, 0x18, 0x7C}, {0x7C, 0x08, 0x04, 0x04, 0x08}, {0x48, 0x54, 0x54, 0x54, 0x20},
    {0x04, 0x3F, 0x44, 0x40, 0x20}, {0x3C, 0x40, 0x40, 0x20, 0x7C}, {0x1C, 0x20, 0x40, 0x20, 0x1C}, {0x3C, 0x40, 0x30, 0x40, 0x3C},
    {0x44, 0x28, 0x10, 0x28, 0x44}, {0x0C, 0x50, 0x50, 0x50, 0x3C}, {0x44, 0x64, 0x54, 0x4C, 0x44}, {0x00, 0x08, 0x36, 0x41, 0x00},
    {0x00, 0x00, 0x7F, 0x00, 0x00}, {0x00, 0x41, 0x36, 0x08, 0x00}, {0x10, 0x08, 0x08, 0x10, 0x08},
};

// Box colours in order, chosen to stay apart from each other.
constexpr uint8_t kBoxColours[8][3] = {{230, 25, 75},  {60, 180, 75},  {0, 130, 200}, {245, 130, 48},
                                       {145, 30, 180}, {70, 240, 240}, {240, 50, 230}, {255, 225, 25}};

// Fills [x0, x1) x [y0, y1), clipped to the image.
inline void fill_rect(Image& img, int x0, int y0, int x1, int y1, const uint8_t* rgb) {
    x0 = std::max(x0, 0), y0 = std::max(y0, 0), x1 = std::min(x1, img.width), y1 = std::min(y1, img.height);
    for (int y = y0; y < y1; ++y)
        for (int x = x0; x < x1; ++x) std::copy(rgb, rgb + 3, &img.rgb[(size_t(y) * size_t(img.width) + size_t(x)) * 3]);
}

// Text at (x, y) (top left) with glyphs scaled by `scale`; bytes outside ASCII 32..126 draw as '?'
// (one per UTF-8 character).
inline void draw_text(Image& img, int x, int y, const std::string& text, int scale, const uint8_t* rgb) {
    for (unsigned char ch : text) {
        if ((ch & 0xC0) == 0x80) continue;  // UTF-8 continuation byte
        const uint8_t* glyph = kFont5x7[(ch >= 32 && ch <= 126 ? ch : '?') - 32];
        for (int c = 0; c < 5; ++c)
            for (int r = 0; r < 7; ++r)
                if (glyph[c] >> r & 1) fill_rect(img, x + c * scale, y + r * scale, x + (c + 1) * scale, y + (r + 1) * scale, rgb);
        x += 6 * scale;
    }
}

}  // namespace detail

// Boxes of a grounding answer in pixels of the image the question was about (its ORIGINAL size:
// the 0..1000 scale is relative, so the processor's resize does not matter). Lenient: the JSON may
// sit in a ```json fence or among other text, be one object or a list, be cut off after some
// complete objects; every object with a 4-number "bbox_2d" (corners in any order) or a 2-number
// "point_2d" becomes a Box, in order, with its "label" (empty when absent). Coordinates are
// clamped to [0, width] x [0, height]. Text without boxes gives an empty list. An object nested
// deeper than kMaxJsonDepth is skipped whole.
inline std::vector<Box> parse_boxes(const std::string& model_text, int image_width, int image_height) {
    if (image_width <= 0 || image_height <= 0)
        throw Error("parse_boxes: image size " + detail::dims_str(image_width, image_height) + " (WxH) must be positive");
    std::vector<Box> boxes;
    for (size_t i = model_text.find('{'); i != std::string::npos; i = model_text.find('{', i)) {
        const size_t end = detail::json_object_end(model_text, i);
        if (end == std::string::npos) break;  // unclosed: a cut-off answer
        if (detail::json_nesting_depth(std::string_view(model_text).substr(i, end - i)) > kMaxJsonDepth) {
            i = end;  // nested too deep to hold boxes (and to walk recursively): skipped whole
            continue;
        }
        const nlohmann::json v = nlohmann::json::parse(model_text.begin() + long(i), model_text.begin() + long(end), nullptr, false);
        if (v.is_discarded()) {
            ++i;  // not JSON: look inside it
            continue;
        }
        detail::collect_boxes(v, image_width, image_height, boxes);
        i = end;
    }
    return boxes;
}

// Writes `img` with the boxes drawn on it to a PNG: each box a rectangle 2 px wide (3 px on
// pictures of 600 px and more) in its own colour, its label on a tab of that colour above the box
// (inside it when there is no room); points are drawn as small squares.
inline void draw_boxes(const Image& img, const std::vector<Box>& boxes, const std::string& png_path) {
    detail::check_image(img, "draw_boxes");
    Image out = img;
    const int thick = std::min(img.width, img.height) >= 600 ? 3 : 2;
    const int scale = std::max(1, std::min(img.width, img.height) / 400);  // font scale: 7 px glyphs up to 800 px pictures
    auto px = [](double v, int size) { return std::clamp(int(std::floor(v)), 0, size - 1); };
    for (size_t i = 0; i < boxes.size(); ++i) {
        const Box& b = boxes[i];
        const uint8_t* colour = detail::kBoxColours[i % 8];
        int x0 = px(b.x1, img.width), y0 = px(b.y1, img.height), x1 = px(b.x2, img.width), y1 = px(b.y2, img.height);
        if (x0 == x1 && y0 == y1) {  // a point
            x0 -= 2 * thick, y0 -= 2 * thick, x1 += 2 * thick, y1 += 2 * thick;
            detail::fill_rect(out, x0, y0, x1 + 1, y1 + 1, colour);
        } else {
            detail::fill_rect(out, x0, y0, x1 + 1, y0 + thick, colour);  // top
            detail::fill_rect(out, x0, y1 + 1 - thick, x1 + 1, y1 + 1, colour);  // bottom
            detail::fill_rect(out, x0, y0, x0 + thick, y1 + 1, colour);  // left
            detail::fill_rect(out, x1 + 1 - thick, y0, x1 + 1, y1 + 1, colour);  // right
        }
        if (b.label.empty()) continue;
        int chars = 0;
        for (unsigned char ch : b.label) chars += (ch & 0xC0) != 0x80;
        const int tab_w = chars * 6 * scale + 3 * scale, tab_h = 9 * scale;
        const int tx = std::min(std::max(x0, 0), std::max(0, img.width - tab_w));
        const int ty = y0 >= tab_h ? y0 - tab_h : std::max(0, std::min(y0 + thick, img.height - tab_h));
        detail::fill_rect(out, tx, ty, tx + tab_w, ty + tab_h, colour);
        const bool light = colour[0] * 299 + colour[1] * 587 + colour[2] * 114 > 150000;  // dark text on light tabs
        const uint8_t ink[3] = {uint8_t(light ? 0 : 255), uint8_t(light ? 0 : 255), uint8_t(light ? 0 : 255)};
        detail::draw_text(out, tx + 2 * scale, ty + scale, b.label, scale, ink);
    }
    std::vector<uint8_t> png;
    auto append = [](void* to, void* bytes, int n) {
        auto* v = static_cast<std::vector<uint8_t>*>(to);
        v->insert(v->end(), static_cast<const uint8_t*>(bytes), static_cast<const uint8_t*>(bytes) + n);
    };
    if (!detail::stb::write_png_to_func(append, &png, out.width, out.height, 3, out.rgb.data(), out.width * 3))
        throw Error(png_path + ": cannot encode the PNG");
    detail::write_file(png_path, png.data(), png.size());
}

}  // namespace deepstack
