// Image decoding and preprocessing against the golden fixtures (HF slow processor, Pillow resize)
// and against Pillow reference data in tests/data/image (made by make_image_data.py there).
#include <doctest/doctest.h>
#include <deepstack/image.hpp>
#include <deepstack/safetensors.hpp>

#include <deepstack/stb.hpp>

#include <cstdio>
#include <fstream>
#include <iterator>
#include "test_util.hpp"

using namespace deepstack;
using namespace deepstack::detail;
static const std::string kImageData = kData + "/data/image/";

static std::vector<uint8_t> read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE_MESSAGE(in, "cannot open " << path);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Max |a - b| over a golden F32 tensor of shape [rows, cols].
static float max_abs_diff(const VisualPatches& p, const TensorInfo& golden) {
    REQUIRE(golden.dtype == DType::F32);
    REQUIRE(golden.shape.size() == 2);
    const int64_t dim = int64_t(3) * 2 * 16 * 16;
    REQUIRE(golden.shape[1] == dim);
    REQUIRE(int64_t(p.pixels.size()) == golden.numel());
    const float* g = reinterpret_cast<const float*>(golden.data);
    float m = 0;
    for (size_t i = 0; i < p.pixels.size(); ++i) m = std::max(m, std::fabs(p.pixels[i] - g[i]));
    return m;
}

static std::array<int, 3> golden_grid(const WeightStore& ws, const std::string& name) {
    const TensorInfo* t = ws.find(name);
    REQUIRE_MESSAGE(t, "missing " << name);
    REQUIRE(t->dtype == DType::I64);
    REQUIRE(t->numel() == 3);
    const int64_t* v = reinterpret_cast<const int64_t*>(t->data);
    return {int(v[0]), int(v[1]), int(v[2])};
}

static const float kOneLevel = 1.0f / 127.5f + 1e-6f;  // one 8-bit level after normalisation

TEST_CASE("tiny-image: pixel_values and grid match the golden (bit-exact Pillow bicubic)") {
    const std::string dir = kFixtures + "tiny-image/";
    WeightStore ws;
    ws.add_file(dir + "golden.safetensors");
    const PreprocessConfig cfg = load_preprocess_config(dir + "model/preprocessor_config.json", false);
    const Image img = load_image(dir + "inputs/image0_80x56.png");
    CHECK(img.width == 80);
    CHECK(img.height == 56);
    const VisualPatches p = preprocess_image(img, cfg);
    CHECK(p.height == 224);
    CHECK(p.width == 320);
    CHECK(p.grid_thw == golden_grid(ws, "image_grid_thw"));
    const float d = max_abs_diff(p, *ws.find("pixel_values"));
    MESSAGE("tiny-image pixel_values max abs diff: " << d);
    CHECK(d <= kOneLevel);
    CHECK(d == 0.0f);
}

TEST_CASE("tiny-stack: global and high-resolution streams match the golden") {
    const std::string dir = kFixtures + "tiny-stack/";
    WeightStore ws;
    ws.add_file(dir + "golden.safetensors");
    const PreprocessConfig cfg = load_preprocess_config(dir + "model/preprocessor_config.json", false);
    const Image img = load_image(dir + "inputs/image0_80x56.png");

    const VisualPatches p = preprocess_image(img, cfg);
    CHECK(p.grid_thw == golden_grid(ws, "image_grid_thw"));
    const float d = max_abs_diff(p, *ws.find("pixel_values"));
    MESSAGE("tiny-stack pixel_values max abs diff: " << d);
    CHECK(d == 0.0f);

    const int r = 2;  // config.json deepstack_fusion.scale
    const VisualPatches hi = preprocess_image_at(img, r * p.height, r * p.width, cfg);
    CHECK(hi.height == 256);
    CHECK(hi.width == 320);
    CHECK(hi.grid_thw == golden_grid(ws, "image_grid_thw_highres"));
    const float dh = max_abs_diff(hi, *ws.find("pixel_values_highres"));
    MESSAGE("tiny-stack pixel_values_highres max abs diff: " << dh);
    CHECK(dh <= kOneLevel);
    CHECK(dh == 0.0f);
}

TEST_CASE("tiny-video-4raw: frame sampling, pixel_values_videos, grid and timestamps match the golden") {
    const std::string dir = kFixtures + "tiny-video-4raw/";
    WeightStore ws;
    ws.add_file(dir + "golden.safetensors");
    const PreprocessConfig cfg = load_preprocess_config(dir + "model/video_preprocessor_config.json", true);
    const std::vector<int> idx = sample_frame_indices(4, 2.0, cfg);
    CHECK(idx == std::vector<int>{0, 1, 2, 3});
    std::vector<Image> frames;
    for (int i : idx) frames.push_back(load_image(dir + "inputs/frame0" + std::to_string(i) + "_256x128.png"));

    const VisualPatches v = preprocess_video(frames, cfg);
    CHECK(v.height == 128);
    CHECK(v.width == 256);
    CHECK(v.grid_thw == golden_grid(ws, "video_grid_thw"));
    const float d = max_abs_diff(v, *ws.find("pixel_values_videos"));
    MESSAGE("tiny-video-4raw pixel_values_videos max abs diff: " << d);
    CHECK(d == 0.0f);

    const std::vector<double> ts = temporal_patch_timestamps(idx, cfg.fps, cfg.temporal_patch_size);
    REQUIRE(ts.size() == 2);
    CHECK(ts[0] == 0.25);
    CHECK(ts[1] == 1.25);
    CHECK(timestamp_text(ts[0]) == "<0.2 seconds>");
    CHECK(timestamp_text(ts[1]) == "<1.2 seconds>");
}

TEST_CASE("normalisation: image path is HF's slow arithmetic, video path the fused torchvision one") {
    PreprocessConfig cfg;
    cfg.min_pixels = 1024;
    cfg.rescale_factor = 0.00392156862745098;
    Image img{32, 32, std::vector<uint8_t>(32 * 32 * 3)};
    for (size_t i = 0; i < img.rgb.size(); ++i) img.rgb[i] = uint8_t(i * 7);
    img.rgb[5] = 188;  // a level where the two formulas differ by one ulp
    const VisualPatches p = preprocess_image_at(img, 32, 32, cfg);
    const VisualPatches v = preprocess_video({img, img}, cfg);
    REQUIRE(p.pixels.size() == v.pixels.size());
    // first patch row: pixel (0, 0) channel 0 is level 0; pixel (1, 0) channel 2 is level 188
    CHECK(p.pixels[0] == -1.0f);
    const float slow = (float(double(img.rgb[5]) * cfg.rescale_factor) - 0.5f) / 0.5f;
    const float fused = (float(img.rgb[5]) - 127.5f) / 127.5f;
    CHECK(p.pixels[2 * 512 + 1] == slow);
    CHECK(v.pixels[2 * 512 + 1] == fused);
    CHECK(slow != fused);
}

TEST_CASE("patch layout: rows in merge-window order, values [C][T][16][16], images duplicated in time") {
    // 64x96 image whose value encodes (x, y, c), no resize: grid 1 x 4 x 6.
    PreprocessConfig cfg;
    cfg.min_pixels = 1024;
    const int W = 96, H = 64;
    Image img{W, H, std::vector<uint8_t>(size_t(W) * H * 3)};
    for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x)
            for (int c = 0; c < 3; ++c) img.rgb[(size_t(y) * W + x) * 3 + c] = uint8_t((x + 3 * y + 50 * c) % 256);
    const VisualPatches p = preprocess_image(img, cfg);
    REQUIRE(p.grid_thw == std::array<int, 3>{1, 4, 6});
    REQUIRE(p.pixels.size() == size_t(24) * 1536);
    auto norm = [&](int u) { return (float(double(u) / 255.0) - 0.5f) / 0.5f; };
    int row = 0;
    for (int bh = 0; bh < 2; ++bh)
        for (int bw = 0; bw < 3; ++bw)
            for (int ih = 0; ih < 2; ++ih)
                for (int iw = 0; iw < 2; ++iw, ++row) {
                    const int r = 2 * bh + ih, col = 2 * bw + iw;
                    for (int c = 0; c < 3; ++c)
                        for (int t = 0; t < 2; ++t)
                            for (int py = 0; py < 16; ++py)
                                for (int px = 0; px < 16; ++px) {
                                    const int x = col * 16 + px, y = r * 16 + py;
                                    const float want = norm((x + 3 * y + 50 * c) % 256);
                                    const float got = p.pixels[size_t(row) * 1536 + c * 512 + t * 256 + py * 16 + px];
                                    if (got != want) {
                                        FAIL("row " << row << " c " << c << " t " << t << " py " << py << " px " << px << ": " << got
                                                    << " != " << want);
                                    }
                                }
                }
}

TEST_CASE("video: odd frame count pads by repeating the last frame; frames of different sizes refused") {
    PreprocessConfig cfg = load_preprocess_config(kFixtures + "tiny-video-4raw/model/video_preprocessor_config.json", true);
    std::vector<Image> frames;
    for (int i = 0; i < 3; ++i) frames.push_back(load_image(kFixtures + "tiny-video-4raw/inputs/frame0" + std::to_string(i) + "_256x128.png"));
    const VisualPatches v = preprocess_video(frames, cfg);
    // smart_resize_video(3, 128, 256): t_bar = round(1.5)*2 = 4, 4*128*256 = 131072 is not below min -> no resize
    CHECK(v.grid_thw == std::array<int, 3>{2, 8, 16});
    // temporal patch 1 holds frames 2 and 2: tau 0 and tau 1 halves equal
    const size_t dim = 1536, per_t = 8 * 16;
    for (size_t row = per_t; row < 2 * per_t; ++row)
        for (int c = 0; c < 3; ++c)
            for (int i = 0; i < 256; ++i)
                REQUIRE(v.pixels[row * dim + c * 512 + i] == v.pixels[row * dim + c * 512 + 256 + i]);
    frames.push_back(Image{128, 64, std::vector<uint8_t>(128 * 64 * 3)});
    CHECK_THROWS_WITH_AS(preprocess_video(frames, cfg), doctest::Contains("frame 3 is 128x64 but frame 0 is 256x128"), Error);
    CHECK_THROWS_WITH_AS(preprocess_video({frames[0]}, cfg), doctest::Contains("at least temporal_patch_size = 2"), Error);
    CHECK_THROWS_WITH_AS(preprocess_video({}, cfg), doctest::Contains("no frames"), Error);
}

TEST_CASE("resize_bicubic matches Pillow's Image.resize(BICUBIC) exactly") {
    const Image noise = load_image(kImageData + "noise_61x47.png");
    const Image frame = load_image(kFixtures + "tiny-video-4raw/inputs/frame00_256x128.png");
    const Image photo = load_image(kFixtures + "tiny-image/inputs/image0_80x56.png");
    struct Case { const char* name; const Image* src; int w, h; };
    const Case cases[] = {
        {"noise", &noise, 23, 19}, {"noise", &noise, 150, 90}, {"noise", &noise, 61, 13}, {"noise", &noise, 7, 47},
        {"noise", &noise, 5, 3},   {"noise", &noise, 200, 1},  {"frame", &frame, 100, 37}, {"frame", &frame, 64, 64},
        {"frame", &frame, 300, 50}, {"frame", &frame, 256, 61}, {"frame", &frame, 97, 128}, {"frame", &frame, 301, 163},
        {"photo", &photo, 33, 200}, {"photo", &photo, 320, 224}, {"photo", &photo, 161, 111},
    };
    for (const Case& c : cases) {
        const std::string file = "resize_" + std::string(c.name) + "_to_" + std::to_string(c.w) + "x" + std::to_string(c.h) + ".png";
        CAPTURE(file);
        const Image want = load_image(kImageData + file);
        const Image got = resize_bicubic(*c.src, c.w, c.h);
        REQUIRE(got.width == c.w);
        REQUIRE(got.height == c.h);
        int max_diff = 0;
        for (size_t i = 0; i < got.rgb.size(); ++i) max_diff = std::max(max_diff, std::abs(int(got.rgb[i]) - int(want.rgb[i])));
        CHECK(max_diff == 0);
    }
    const Image same = resize_bicubic(noise, noise.width, noise.height);
    CHECK(same.rgb == noise.rgb);
    CHECK_THROWS_WITH_AS(resize_bicubic(noise, 0, 10), doctest::Contains("target size 0x10 is out of range"), Error);
}

TEST_CASE("decode: grey, grey+alpha, RGBA and palette PNGs become RGB as Pillow's convert(\"RGB\")") {
    for (const char* mode : {"L", "LA", "RGBA", "P"}) {
        CAPTURE(mode);
        const Image got = load_image(kImageData + "mode_" + mode + ".png");
        const Image want = load_image(kImageData + "mode_" + mode + "_rgb.png");
        CHECK(got.width == 9);
        CHECK(got.height == 7);
        CHECK(got.rgb == want.rgb);
    }
}

TEST_CASE("smart_resize: Python rounding, guards and limits (hand-checked against HF's formula)") {
    const int64_t kMin = 65536, kMax = 16777216;
    // ties round half to even: 80/32 = 2.5 -> 2, 112/32 = 3.5 -> 4
    CHECK(smart_resize(80, 96, 32, 1024, kMax) == std::pair<int, int>{64, 96});
    CHECK(smart_resize(80, 112, 32, 1024, kMax) == std::pair<int, int>{64, 128});
    // fixtures: 56x80 (HxW) upscaled to the pixel minimum
    CHECK(smart_resize(56, 80, 32, kMin, kMax) == std::pair<int, int>{224, 320});
    CHECK(smart_resize(56, 80, 32, 16384, kMax) == std::pair<int, int>{128, 160});
    // tiny images are upscaled, never given a zero side
    CHECK(smart_resize(8, 100, 32, kMin, kMax) == std::pair<int, int>{96, 928});
    CHECK(smart_resize(100, 8, 32, kMin, kMax) == std::pair<int, int>{928, 96});
    CHECK(smart_resize(9, 9, 32, kMin, kMax) == std::pair<int, int>{256, 256});
    CHECK(smart_resize(9, 9, 32, 1024, 4096) == std::pair<int, int>{32, 32});
    // extreme aspect with a small budget: the max(factor, ...) guard keeps the short side at 32
    CHECK(smart_resize(20, 3000, 32, 1024, 16384) == std::pair<int, int>{32, 1536});
    CHECK(smart_resize(3000, 20, 32, 1024, 16384) == std::pair<int, int>{1536, 32});
    CHECK(smart_resize(20, 3000, 32, 1024, 4096) == std::pair<int, int>{32, 768});
    // downscale to the pixel maximum
    CHECK(smart_resize(5000, 5000, 32, kMin, 1024 * 1024) == std::pair<int, int>{1024, 1024});
    CHECK(smart_resize(4000, 3000, 32, kMin, kMax) == std::pair<int, int>{4000, 3008});
    // aspect 200 is allowed, above is refused
    CHECK(smart_resize(10, 2000, 32, kMin, kMax) == std::pair<int, int>{32, 3648});
    CHECK_THROWS_WITH_AS(smart_resize(10, 2001, 32, kMin, kMax), doctest::Contains("above the limit of 200"), Error);
    CHECK_THROWS_WITH_AS(smart_resize(0, 10, 32, kMin, kMax), doctest::Contains("must be positive"), Error);
}

TEST_CASE("smart_resize_video: budget over all frames, tiny frames scaled up first") {
    const int64_t kMin = 131072, kMax = 786432;
    CHECK(smart_resize_video(4, 128, 256, 32, kMin, kMax) == std::pair<int, int>{128, 256});
    CHECK(smart_resize_video(4, 16, 64, 32, kMin, kMax) == std::pair<int, int>{96, 384});
    CHECK(smart_resize_video(3, 100, 100, 32, kMin, kMax) == std::pair<int, int>{224, 224});
    CHECK(smart_resize_video(8, 720, 1280, 32, kMin, kMax) == std::pair<int, int>{224, 416});
    CHECK(smart_resize_video(5, 1080, 1920, 32, kMin, kMax) == std::pair<int, int>{288, 512});
    CHECK(smart_resize_video(2, 10, 1000, 32, 4096, 1 << 20) == std::pair<int, int>{32, 3200});
    CHECK_THROWS_WITH_AS(smart_resize_video(1, 128, 128, 32, kMin, kMax), doctest::Contains("1 frame(s)"), Error);
}

TEST_CASE("frame sampling, timestamps and their text") {
    PreprocessConfig cfg;  // fps 2, min_frames 4, max_frames 768
    CHECK(sample_frame_indices(4, 2.0, cfg) == std::vector<int>{0, 1, 2, 3});
    // n = int(10 / 4 * 2) = 5; linspace(0, 9, 5) = 0, 2.25, 4.5, 6.75, 9 -> 4.5 rounds to 4
    CHECK(sample_frame_indices(10, 4.0, cfg) == std::vector<int>{0, 2, 4, 7, 9});
    // n = int(100 / 30 * 2) = 6; linspace(0, 99, 6) = 0, 19.8, 39.6, 59.4, 79.2, 99
    CHECK(sample_frame_indices(100, 30.0, cfg) == std::vector<int>{0, 20, 40, 59, 79, 99});
    // too few wanted -> min_frames, but never more than the video has
    CHECK(sample_frame_indices(30, 30.0, cfg) == std::vector<int>{0, 10, 19, 29});
    CHECK(sample_frame_indices(3, 30.0, cfg) == std::vector<int>{0, 1, 2});
    CHECK(sample_frame_indices(1, 30.0, cfg) == std::vector<int>{0});
    // unknown source fps is taken as 24: n = int(48 / 24 * 2) = 4
    CHECK(sample_frame_indices(48, 0.0, cfg) == std::vector<int>{0, 16, 31, 47});
    CHECK_THROWS_AS(sample_frame_indices(0, 30.0, cfg), Error);

    CHECK(temporal_patch_timestamps({0, 2, 4}, 1.0, 2) == std::vector<double>{1.0, 4.0});
    CHECK(timestamp_text(0.25) == "<0.2 seconds>");
    CHECK(timestamp_text(1.25) == "<1.2 seconds>");
    CHECK(timestamp_text(0.35) == "<0.3 seconds>");
    CHECK(timestamp_text(0.75) == "<0.8 seconds>");
    CHECK(timestamp_text(2.65) == "<2.6 seconds>");
    CHECK(timestamp_text(12.05) == "<12.1 seconds>");
}

TEST_CASE("preprocess_image_at refuses sizes that do not split into merge windows") {
    const PreprocessConfig cfg;
    const Image img{40, 40, std::vector<uint8_t>(40 * 40 * 3)};
    CHECK_THROWS_WITH_AS(preprocess_image_at(img, 48, 64, cfg), doctest::Contains("multiples of patch_size*merge_size = 32"), Error);
    CHECK_THROWS_WITH_AS(preprocess_image_at(img, 0, 64, cfg), doctest::Contains("multiples"), Error);
    const Image broken{40, 40, std::vector<uint8_t>(10)};
    CHECK_THROWS_WITH_AS(preprocess_image(broken, cfg), doctest::Contains("expected width*height*3"), Error);
}

// Big-endian 32-bit value into a byte vector.
static void put32(std::vector<uint8_t>& b, uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(uint8_t(v >> s));
}

// A PNG signature + IHDR chunk (RGB8) declaring width x height, then an IEND chunk; no pixel data.
static std::vector<uint8_t> png_header_only(uint32_t width, uint32_t height) {
    std::vector<uint8_t> b = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    put32(b, 13);
    const size_t chunk = b.size();
    for (char c : std::string("IHDR")) b.push_back(uint8_t(c));
    put32(b, width);
    put32(b, height);
    for (uint8_t v : {8, 2, 0, 0, 0}) b.push_back(v);  // depth 8, colour type RGB, deflate, filter 0, no interlace
    uint32_t crc = 0xffffffffu;  // CRC-32 over type and data, as PNG defines it
    for (size_t i = chunk; i < b.size(); ++i) {
        crc ^= b[i];
        for (int k = 0; k < 8; ++k) crc = crc >> 1 ^ (0xedb88320u & (0u - (crc & 1u)));
    }
    put32(b, crc ^ 0xffffffffu);
    put32(b, 0);
    for (char c : std::string("IEND")) b.push_back(uint8_t(c));
    put32(b, 0xae426082u);
    return b;
}

TEST_CASE("decode: bad inputs are refused with the name and the problem") {
    const std::vector<uint8_t> png = read_bytes(kFixtures + "tiny-image/inputs/image0_80x56.png");
    CHECK_THROWS_WITH_AS(decode_image(png.data(), 0, "photo.png"), "photo.png: empty file, not an image", Error);
    CHECK_THROWS_WITH_AS(decode_image(png.data(), png.size() / 2, "photo.png"), doctest::Contains("photo.png: not a decodable image ("), Error);
    CHECK_THROWS_WITH_AS(decode_image(png.data(), 20, "photo.png"), doctest::Contains("photo.png: not a decodable image ("), Error);

    std::vector<uint8_t> noise(4096);
    uint32_t s = 12345;
    for (auto& v : noise) v = uint8_t((s = s * 1664525u + 1013904223u) >> 24);
    CHECK_THROWS_WITH_AS(decode_image(noise.data(), noise.size(), "noise.bin"), doctest::Contains("noise.bin: not a decodable image ("), Error);

    // A header declaring 100000x100000 (30 GB of RGB) is refused from the header alone.
    const std::vector<uint8_t> huge = png_header_only(100000, 100000);
    CHECK_THROWS_WITH_AS(decode_image(huge.data(), huge.size(), "huge.png"), doctest::Contains("huge.png: image declares 100000x100000 pixels, above the decoder limit"), Error);
    // Within stb_image's own limit but above ours: refused by our header check, before decoding.
    const std::vector<uint8_t> big = png_header_only(20000, 10000);
    CHECK_THROWS_WITH_AS(decode_image(big.data(), big.size(), "big.png"),
                         doctest::Contains("big.png: image declares 20000x10000 pixels, above the decoder limit"), Error);
    const std::vector<uint8_t> wide = png_header_only(70000, 10);
    CHECK_THROWS_WITH_AS(decode_image(wide.data(), wide.size(), "wide.png"), doctest::Contains("wide.png: image declares 70000x10 pixels"), Error);
    // A well-formed header with no image data behind it.
    const std::vector<uint8_t> empty_png = png_header_only(16, 16);
    CHECK_THROWS_WITH_AS(decode_image(empty_png.data(), empty_png.size(), "nodata.png"),
                         "nodata.png: PNG declares 16x16 pixels, more than its 0 bytes of image data (IDAT) can code", Error);
    const std::vector<uint8_t> zero = png_header_only(0, 16);
    CHECK_THROWS_WITH_AS(decode_image(zero.data(), zero.size(), "zero.png"), "zero.png: image has a zero side (0x16)",
                         Error);

    // A host may lower the pixel limit (a decompression-bomb guard for untrusted uploads).
    CHECK_THROWS_WITH_AS(decode_image(png.data(), png.size(), "photo.png", 80 * 56 - 1),
                         doctest::Contains("photo.png: image declares 80x56 pixels, above the decoder limit (sides up to 65536, at most 4479 pixels)"), Error);
    CHECK(decode_image(png.data(), png.size(), "photo.png", 80 * 56).width == 80);

    CHECK_THROWS_WITH_AS(load_image(kData + "/no/such/file.png"), doctest::Contains("no/such/file.png: cannot open"), Error);
    // A decodable file after all that: the fixture itself.
    const Image ok = decode_image(png.data(), png.size(), "photo.png");
    CHECK(ok.width == 80);
    CHECK(ok.height == 56);
}

// Hand-made uncompressed files: header + pixel bytes for a 3x2 image.
static std::vector<uint8_t> tga_3x2() {
    std::vector<uint8_t> b(18, 0);
    b[2] = 2;  // uncompressed true colour
    b[12] = 3;
    b[14] = 2;
    b[16] = 24;
    for (int i = 0; i < 3 * 2 * 3; ++i) b.push_back(uint8_t(10 * i));
    return b;
}
static std::vector<uint8_t> bmp_3x2() {
    std::vector<uint8_t> b = {'B', 'M'};
    auto put = [&](uint32_t v, int bytes) {
        for (int i = 0; i < bytes; ++i) b.push_back(uint8_t(v >> (8 * i)));
    };
    const uint32_t stride = 12;  // 3 pixels * 3 bytes = 9, padded to 4
    put(54 + stride * 2, 4), put(0, 4), put(54, 4);              // file size, reserved, pixel offset
    put(40, 4), put(3, 4), put(2, 4), put(1, 2), put(24, 2);     // BITMAPINFOHEADER: 3x2, 1 plane, 24 bits
    put(0, 4), put(stride * 2, 4), put(2835, 4), put(2835, 4), put(0, 4), put(0, 4);  // BI_RGB
    for (uint32_t i = 0; i < stride * 2; ++i) b.push_back(uint8_t(7 * i));
    return b;
}
static std::vector<uint8_t> ppm_3x2() {
    const std::string header = "P6\n# comment\n3 2\n255\n";
    std::vector<uint8_t> b(header.begin(), header.end());
    for (int i = 0; i < 3 * 2 * 3; ++i) b.push_back(uint8_t(13 * i));
    return b;
}

TEST_CASE("decode: uncompressed files must hold every declared pixel; JPEGs must end and be able to code their size") {
    struct Case {
        const char* name;
        std::vector<uint8_t> bytes;
        const char* format;
        size_t need;
    };
    const Case cases[] = {{"a.tga", tga_3x2(), "TGA", 18 + 18}, {"a.bmp", bmp_3x2(), "BMP", 54 + 24}, {"a.ppm", ppm_3x2(), "PNM", 21 + 18}};
    for (const Case& c : cases) {
        CAPTURE(c.name);
        REQUIRE(c.bytes.size() == c.need);
        const Image img = decode_image(c.bytes.data(), c.bytes.size(), c.name);
        CHECK(img.width == 3);
        CHECK(img.height == 2);
        const std::string want = std::string(c.name) + ": truncated " + c.format + " (3x2 needs " + std::to_string(c.need) + " bytes, the file has " +
                                 std::to_string(c.need - 1) + ")";
        CHECK_THROWS_WITH_AS(decode_image(c.bytes.data(), c.bytes.size() - 1, c.name), want.c_str(), Error);
    }
    // A zero-length IDAT chunk right after IHDR (valid PNG; stb_image would memcpy to a null
    // buffer, a fuzzer find) decodes to the same pixels as the file without it.
    const std::vector<uint8_t> png_ok = read_bytes(kFixtures + "tiny-image/inputs/image0_80x56.png");
    std::vector<uint8_t> with_empty(png_ok.begin(), png_ok.begin() + 33);  // signature + IHDR chunk
    const uint8_t empty_idat[] = {0, 0, 0, 0, 'I', 'D', 'A', 'T', 0x35, 0xaf, 0x06, 0x1e};  // length 0, type, CRC-32
    with_empty.insert(with_empty.end(), std::begin(empty_idat), std::end(empty_idat));
    with_empty.insert(with_empty.end(), png_ok.begin() + 33, png_ok.end());
    CHECK(decode_image(with_empty.data(), with_empty.size(), "e.png").rgb == decode_image(png_ok.data(), png_ok.size(), "ok.png").rgb);

    // PNM header numbers are read here before stb_image (whose parser overflows int on ten digits).
    const std::string long_width = "P5  99999999999999 2 255\n";
    CHECK_THROWS_WITH_AS(decode_image(reinterpret_cast<const uint8_t*>(long_width.data()), long_width.size(), "w.pgm"),
                         doctest::Contains("w.pgm: image declares 1099511627776x2 pixels, above the decoder limit"), Error);
    const std::string deep = "P6 3 2 70000\n";
    CHECK_THROWS_WITH_AS(decode_image(reinterpret_cast<const uint8_t*>(deep.data()), deep.size(), "d.ppm"),
                         "d.ppm: PNM maximum sample value 70000 is outside 1..65535", Error);
    // The fuzzer's find: 66 bytes of TGA header declaring 13648x13088 (stb_image would have
    // decoded 535 MB of zeros).
    std::vector<uint8_t> bomb = tga_3x2();
    bomb.resize(66);
    bomb[12] = 0x50, bomb[13] = 0x35, bomb[14] = 0x20, bomb[15] = 0x33;
    CHECK_THROWS_WITH_AS(decode_image(bomb.data(), bomb.size(), "bomb.tga"),
                         "bomb.tga: truncated TGA (13648x13088 needs 535875090 bytes, the file has 66)", Error);

    // JPEG: a noise image encoded by stb_image_write is complete; cut before its EOI it is refused;
    // its header rewritten to claim 34464x1000 in a few kilobytes is refused before decoding.
    const Image noise = load_image(kImageData + "noise_61x47.png");
    std::vector<uint8_t> jpeg;
    auto append = [](void* out, void* bytes, int n) {
        auto* v = static_cast<std::vector<uint8_t>*>(out);
        v->insert(v->end(), static_cast<uint8_t*>(bytes), static_cast<uint8_t*>(bytes) + n);
    };
    REQUIRE(detail::stb::write_jpg_to_func(append, &jpeg, noise.width, noise.height, 3, noise.rgb.data(), 90));
    REQUIRE(jpeg.size() > 4);
    CHECK(decode_image(jpeg.data(), jpeg.size(), "n.jpg").width == 61);
    CHECK_THROWS_WITH_AS(decode_image(jpeg.data(), jpeg.size() - 2, "n.jpg"), "n.jpg: truncated JPEG (no end-of-image marker)", Error);
    std::vector<uint8_t> wide = jpeg;
    size_t sof = 2;  // find the SOF0 marker and rewrite its size fields (height, width big-endian)
    while (sof + 9 < wide.size() && !(wide[sof] == 0xFF && (wide[sof + 1] == 0xC0 || wide[sof + 1] == 0xC2))) ++sof;
    REQUIRE(sof + 9 < wide.size());
    wide[sof + 5] = 1000 >> 8, wide[sof + 6] = 1000 & 255, wide[sof + 7] = 100000 >> 8 & 255, wide[sof + 8] = 100000 & 255;
    const int declared_w = (100000 >> 8 & 255) << 8 | (100000 & 255);
    CHECK_THROWS_WITH_AS(decode_image(wide.data(), wide.size(), "w.jpg"),
                         ("w.jpg: JPEG declares " + std::to_string(declared_w) + "x1000 pixels, more than its " + std::to_string(wide.size()) +
                          " bytes can code")
                             .c_str(),
                         Error);
}

namespace {
std::vector<uint8_t> bytes_of(const std::string& s) { return {s.begin(), s.end()}; }
void put_le16(std::vector<uint8_t>& v, size_t at, int x) { v[at] = uint8_t(x & 255), v[at + 1] = uint8_t(x >> 8 & 255); }
void append_bytes(void* out, void* bytes, int n) {
    auto* v = static_cast<std::vector<uint8_t>*>(out);
    v->insert(v->end(), static_cast<uint8_t*>(bytes), static_cast<uint8_t*>(bytes) + n);
}
}  // namespace

TEST_CASE("decode: every kept format decodes; tiny files declaring huge pictures are refused before any pixel buffer") {
    const Image noise = load_image(kImageData + "noise_61x47.png");
    // Run-length TGA (stb_image_write's default) and GIF decode to the same pixels.
    std::vector<uint8_t> tga;
    REQUIRE(detail::stb::write_tga_to_func(append_bytes, &tga, noise.width, noise.height, 3, noise.rgb.data()));
    REQUIRE(tga[2] == 10);
    CHECK(decode_image(tga.data(), tga.size(), "n.tga").rgb == noise.rgb);
    // A 22-byte run-length TGA declaring 10000x10000: one packet cannot code that.
    std::vector<uint8_t> rle(22, 0);
    rle[2] = 10, rle[16] = 24;
    put_le16(rle, 12, 10000), put_le16(rle, 14, 10000);
    rle[18] = 0xFF, rle[19] = 1, rle[20] = 2, rle[21] = 3;
    CHECK_THROWS_WITH_AS(decode_image(rle.data(), rle.size(), "rle.tga"),
                         "rle.tga: run-length TGA declares 10000x10000 pixels, more than its 4 bytes of image data can code", Error);

    // A 35-byte GIF with a 13000x13000 screen (stb_image would clear 9 bytes per screen pixel).
    std::vector<uint8_t> gif = bytes_of(std::string("GIF89a") + std::string(7, '\0') + std::string(6, '\0') + "," + std::string(9, '\0') +
                                        "\x02\x02\x44\x01" + std::string(1, '\0') + ";");
    put_le16(gif, 6, 13000), put_le16(gif, 8, 13000);
    gif[10] = 0x80;  // global colour table of 2 entries
    put_le16(gif, 24, 13000), put_le16(gif, 26, 13000);
    CHECK_THROWS_WITH_AS(decode_image(gif.data(), gif.size(), "big.gif"),
                         ("big.gif: GIF declares 13000x13000 pixels, more than its " + std::to_string(gif.size()) + " bytes can code").c_str(), Error);
    const std::vector<uint8_t> gif_ok = read_bytes(kData + "/fuzz/corpus/image/gif_1x1.gif");
    CHECK(decode_image(gif_ok.data(), gif_ok.size(), "ok.gif").width == 1);

    // PSD, Radiance HDR and Softimage PIC are not decoded at all (a 46-byte PSD made 1.25 GB, a
    // 108-byte PIC crashed stb_image's loader).
    for (auto [magic, format] : {std::pair{std::string("8BPS\x00\x01"), "PSD"}, std::pair{std::string("#?RADIANCE\n"), "Radiance HDR"},
                                 std::pair{std::string("#?RGBE\n"), "Radiance HDR"}, std::pair{std::string("\x53\x80\xF6\x34"), "Softimage PIC"}}) {
        std::vector<uint8_t> file = bytes_of(magic);
        file.resize(108, 0);
        CHECK_THROWS_WITH_AS(decode_image(file.data(), file.size(), "x"),
                             (std::string("x: ") + format + " images are not supported (JPEG, PNG, BMP, GIF, TGA, PGM and PPM are)").c_str(), Error);
    }

    // A JPEG Huffman table declaring more than 256 codes (stb_image would write past its tables).
    std::vector<uint8_t> jpeg;
    REQUIRE(detail::stb::write_jpg_to_func(append_bytes, &jpeg, noise.width, noise.height, 3, noise.rgb.data(), 90));
    size_t dht = 2;
    while (dht + 21 < jpeg.size() && !(jpeg[dht] == 0xFF && jpeg[dht + 1] == 0xC4)) ++dht;
    REQUIRE(dht + 21 < jpeg.size());
    for (size_t k = 0; k < 16; ++k) jpeg[dht + 5 + k] = 0xFF;
    CHECK_THROWS_WITH_AS(decode_image(jpeg.data(), jpeg.size(), "h.jpg"), "h.jpg: corrupt JPEG (a Huffman table declares 4080 codes, at most 256 exist)",
                         Error);
    // The fuzzer's find once stb_image was instrumented: a table read past its segment's end.
    const std::vector<uint8_t> past = read_bytes(kData + "/fuzz/corpus/image/jpeg_dht_past_segment");
    CHECK_THROWS_WITH_AS(decode_image(past.data(), past.size(), "p.jpg"), doctest::Contains("p.jpg: corrupt JPEG (a Huffman table declares"), Error);
    // stb_image skips 0xFF fill bytes before the start marker, so FF FF D8 is a JPEG too: its tables
    // are checked, and a valid file with a fill byte decodes as without it.
    const std::vector<uint8_t> fill = read_bytes(kData + "/fuzz/corpus/image/jpeg_fill_bytes_before_soi");
    REQUIRE((fill.size() > 3 && fill[0] == 0xFF && fill[1] == 0xFF && fill[2] == 0xD8));
    CHECK_THROWS_WITH_AS(decode_image(fill.data(), fill.size(), "f.jpg"), doctest::Contains("f.jpg: corrupt JPEG (a Huffman table declares"), Error);
    // A scan naming a Huffman table the file never defined: an error, not a read of stb_image's
    // uninitialized tables.
    const std::vector<uint8_t> undefined = read_bytes(kData + "/fuzz/corpus/image/jpeg_scan_undefined_huffman_table");
    CHECK_THROWS_WITH_AS(decode_image(undefined.data(), undefined.size(), "u.jpg"), "u.jpg: not a decodable image (bad huffman code)", Error);
    std::vector<uint8_t> good;
    REQUIRE(detail::stb::write_jpg_to_func(append_bytes, &good, noise.width, noise.height, 3, noise.rgb.data(), 90));
    std::vector<uint8_t> good_fill = good;
    good_fill.insert(good_fill.begin(), 0xFF);
    CHECK(decode_image(good_fill.data(), good_fill.size(), "g.jpg").rgb == decode_image(good.data(), good.size(), "g.jpg").rgb);
}
