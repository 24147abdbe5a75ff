// deepstack/image.hpp - image decoding (stb_image) and the Qwen3-VL image / video preprocessing:
// smart_resize, Pillow-exact bicubic resize, normalisation and patchify.
//
// Parity target: the Hugging Face slow image processor (Qwen2VLImageProcessor, Pillow resize) for
// images and Qwen3VLVideoProcessor (torchvision) for videos. Decoding lossless formats (PNG, BMP,
// TGA, PNM, GIF) gives the same pixels as Pillow; JPEG goes through stb_image's own IDCT and chroma
// upsampling, a few levels away from libjpeg; 16-bit PNGs keep their high byte (as Pillow does for
// colour, while Pillow clips 16-bit grey to 255). EXIF orientation is not applied (HF does not
// apply it either when handed a PIL image).
#pragma once
#include "common.hpp"
#include "config.hpp"
#include "safetensors.hpp"
#include "stb.hpp"

#include <algorithm>
#include <cctype>
#include <array>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace deepstack {

// 8-bit RGB, row-major HWC: pixel (x, y) channel c is rgb[(y * width + x) * 3 + c].
struct Image {
    int width = 0, height = 0;
    std::vector<uint8_t> rgb;
};

// Decoder limits, checked on the header before any pixel buffer exists. The pixel limit is
// Pillow's DecompressionBombError threshold (2 * Image.MAX_IMAGE_PIXELS), so anything Pillow opens
// without error fits; the side limit keeps every later size computation comfortably in int.
constexpr int kMaxImageSide = 1 << 16;
constexpr int64_t kMaxImagePixels = 2 * int64_t(89478485);

namespace detail {

// Patches of one image or video as the vision encoder takes them.
struct VisualPatches {
    std::vector<float> pixels;      // [grid_t*grid_h*grid_w, 3*temporal*patch*patch], rows in merge-window order
    std::array<int, 3> grid_thw{};  // (t, h, w) in patch units
    int height = 0, width = 0;      // resized size in pixels
};

// The sampled frames of a video and where they came from (load_video); prepare_video(model, clip)
// turns it into a visual input with its timestamps. The frames are resized as they are decoded, to
// the processor's size for the sampled frame count (smart_resize_video), so only small frames are
// ever held; source_width x source_height is their size in the video.
struct VideoClip {
    std::vector<Image> frames;       // the sampled frames, in order, all one size
    std::vector<int> frame_indices;  // index of each sampled frame in the source
    double fps = 0;                  // source frame rate the timestamps use (index / fps seconds)
    int total_frames = 0;            // frames in the source
    int source_width = 0, source_height = 0;  // frame size in the source
};

// Python round(): half to even, independent of the floating-point environment.
inline double round_half_even(double x) {
    double r = std::round(x);  // half away from zero
    if (std::fabs(x - std::trunc(x)) == 0.5) r = 2.0 * std::round(x / 2.0);
    return r;
}

inline std::string dims_str(int width, int height) { return std::to_string(width) + "x" + std::to_string(height); }

inline int checked_side(double v, const char* what) {
    if (!(v >= 1 && v <= double(INT_MAX))) throw Error(std::string("smart_resize: ") + what + " out of range");
    return int(v);
}

// ---- Pillow ImagingResample, BICUBIC, 8 bits per channel (src/libImaging/Resample.c) ----

constexpr int kResamplePrecisionBits = 32 - 8 - 2;  // fixed-point coefficient bits

// Keys cubic convolution kernel with a = -0.5, support 2.
inline double bicubic_weight(double x) {
    constexpr double a = -0.5;
    x = std::fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
    return 0.0;
}

// Per output index: the first input index, how many inputs it reads, and their fixed-point weights.
struct ResampleCoeffs {
    int ksize = 0;                  // weights stored per output index
    std::vector<int> first, count;  // [out]
    std::vector<int32_t> k;         // [out, ksize]
};

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for the box (0, in_size): the support grows
// with the downscale factor (antialiasing), weights are normalised in double, then rounded half
// away from zero to PRECISION_BITS fixed point.
inline ResampleCoeffs resample_coeffs(int in_size, int out_size) {
    const double scale = double(float(in_size)) / out_size;
    const double filterscale = std::max(scale, 1.0);
    const double support = 2.0 * filterscale;
    ResampleCoeffs c;
    c.ksize = int(std::ceil(support)) * 2 + 1;
    c.first.resize(size_t(out_size));
    c.count.resize(size_t(out_size));
    c.k.assign(size_t(out_size) * size_t(c.ksize), 0);
    std::vector<double> w(size_t(c.ksize));
    for (int xx = 0; xx < out_size; ++xx) {
        const double center = (xx + 0.5) * scale;
        const double ss = 1.0 / filterscale;
        const int xmin = std::max(int(center - support + 0.5), 0);
        const int xmax = std::min(int(center + support + 0.5), in_size) - xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; ++x) {
            w[size_t(x)] = bicubic_weight((x + xmin - center + 0.5) * ss);
            ww += w[size_t(x)];
        }
        int32_t* k = &c.k[size_t(xx) * size_t(c.ksize)];
        for (int x = 0; x < xmax; ++x) {
            const double v = ww != 0.0 ? w[size_t(x)] / ww : w[size_t(x)];
            k[x] = v < 0 ? int32_t(-0.5 + v * (1 << kResamplePrecisionBits)) : int32_t(0.5 + v * (1 << kResamplePrecisionBits));
        }
        c.first[size_t(xx)] = xmin;
        c.count[size_t(xx)] = xmax;
    }
    return c;
}

inline uint8_t clip8(int32_t v) {
    v >>= kResamplePrecisionBits;
    return uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
}

// dst [rows, out_w, 3] = horizontal resample of src rows [row0, row0 + rows).
inline void resample_horizontal(const Image& src, int row0, int rows, const ResampleCoeffs& c, Image& dst) {
    const int out_w = int(c.first.size());
    dst.width = out_w;
    dst.height = rows;
    dst.rgb.assign(size_t(out_w) * size_t(rows) * 3, 0);
#pragma omp parallel for schedule(static)
    for (int y = 0; y < rows; ++y) {
        const uint8_t* in = &src.rgb[size_t(row0 + y) * size_t(src.width) * 3];
        uint8_t* out = &dst.rgb[size_t(y) * size_t(out_w) * 3];
        for (int xx = 0; xx < out_w; ++xx) {
            const int32_t* k = &c.k[size_t(xx) * size_t(c.ksize)];
            const uint8_t* p = in + size_t(c.first[size_t(xx)]) * 3;
            int32_t s0 = 1 << (kResamplePrecisionBits - 1), s1 = s0, s2 = s0;
            for (int x = 0; x < c.count[size_t(xx)]; ++x) {
                s0 += p[x * 3 + 0] * k[x];
                s1 += p[x * 3 + 1] * k[x];
                s2 += p[x * 3 + 2] * k[x];
            }
            out[xx * 3 + 0] = clip8(s0);
            out[xx * 3 + 1] = clip8(s1);
            out[xx * 3 + 2] = clip8(s2);
        }
    }
}

// dst [out_h, src.width, 3] = vertical resample of src, whose row 0 is input row `row0`.
inline void resample_vertical(const Image& src, int row0, const ResampleCoeffs& c, Image& dst) {
    const int out_h = int(c.first.size()), w = src.width;
    dst.width = w;
    dst.height = out_h;
    dst.rgb.assign(size_t(w) * size_t(out_h) * 3, 0);
#pragma omp parallel for schedule(static)
    for (int yy = 0; yy < out_h; ++yy) {
        const int32_t* k = &c.k[size_t(yy) * size_t(c.ksize)];
        const uint8_t* in = &src.rgb[size_t(c.first[size_t(yy)] - row0) * size_t(w) * 3];
        uint8_t* out = &dst.rgb[size_t(yy) * size_t(w) * 3];
        for (int i = 0; i < w * 3; ++i) {
            int32_t s = 1 << (kResamplePrecisionBits - 1);
            for (int y = 0; y < c.count[size_t(yy)]; ++y) s += in[size_t(y) * size_t(w) * 3 + size_t(i)] * k[y];
            out[i] = clip8(s);
        }
    }
}

// ---- normalisation and patchify ----

// Normalised value of every 8-bit level per channel: lut[c * 256 + u].
// Image path (HF slow processor): float32(u * rescale_factor in double), then (x - mean) / std in
// float32. Video path (HF video processor, torchvision): rescale fused into mean and std,
// (float(u) - mean / rf) / (std / rf) in float32. The two differ by one ulp on about half the levels.
inline std::vector<float> normalize_lut(const PreprocessConfig& cfg, bool fused) {
    std::vector<float> lut(3 * 256);
    const float inv = float(1.0 / cfg.rescale_factor);
    for (int c = 0; c < 3; ++c) {
        for (int u = 0; u < 256; ++u) {
            lut[size_t(c * 256 + u)] = fused ? (float(u) - cfg.mean[size_t(c)] * inv) / (cfg.std[size_t(c)] * inv)
                                             : (float(double(u) * cfg.rescale_factor) - cfg.mean[size_t(c)]) / cfg.std[size_t(c)];
        }
    }
    return lut;
}

// Checks a resized size against the patch grid: both sides positive multiples of patch * merge.
inline void check_patch_grid(int height, int width, const PreprocessConfig& cfg, const char* what) {
    const int64_t factor = int64_t(cfg.patch_size) * cfg.merge_size;
    if (height <= 0 || width <= 0 || height % factor || width % factor)
        throw Error(std::string(what) + ": size " + dims_str(width, height) + " (WxH) must be positive multiples of patch_size*merge_size = " +
                    std::to_string(factor) + " so the patch grid splits into " + std::to_string(cfg.merge_size) + "x" +
                    std::to_string(cfg.merge_size) + " merge windows");
}

// frames: grid_t * temporal_patch_size images of one size (multiples of patch * merge).
// Output rows in (t, block row, block col, row in block, col in block) order; each row is
// [C=3][T][patch][patch].
inline VisualPatches patchify(const std::vector<const Image*>& frames, const PreprocessConfig& cfg, bool fused_normalize) {
    const int T = cfg.temporal_patch_size, P = cfg.patch_size, M = cfg.merge_size;
    const int H = frames[0]->height, W = frames[0]->width;
    VisualPatches out;
    out.height = H;
    out.width = W;
    out.grid_thw = {int(frames.size()) / T, H / P, W / P};
    const int gt = out.grid_thw[0], gh = out.grid_thw[1], gw = out.grid_thw[2];
    const size_t dim = size_t(3) * size_t(T) * size_t(P) * size_t(P);
    out.pixels.resize(size_t(gt) * size_t(gh) * size_t(gw) * dim);
    const std::vector<float> lut = normalize_lut(cfg, fused_normalize);
    const int64_t rows = int64_t(gt) * gh * gw;
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
        // row = ((tt * gh/M + bh) * gw/M + bw) * M*M + ih * M + iw
        const int in_window = int(row % (M * M));
        const int64_t window = row / (M * M);
        const int iw = in_window % M, ih = in_window / M;
        const int bw = int(window % (gw / M)), bh = int(window / (gw / M) % (gh / M)), tt = int(window / (gw / M) / (gh / M));
        const int py0 = (bh * M + ih) * P, px0 = (bw * M + iw) * P;
        float* dst = &out.pixels[size_t(row) * dim];
        for (int c = 0; c < 3; ++c) {
            const float* l = &lut[size_t(c) * 256];
            for (int tau = 0; tau < T; ++tau) {
                const std::vector<uint8_t>& rgb = frames[size_t(tt * T + tau)]->rgb;
                for (int py = 0; py < P; ++py) {
                    const uint8_t* src = &rgb[(size_t(py0 + py) * size_t(W) + size_t(px0)) * 3 + size_t(c)];
                    for (int px = 0; px < P; ++px) *dst++ = l[src[px * 3]];
                }
            }
        }
    }
    return out;
}

// Width and height from a PNG's IHDR chunk, when the data starts like a PNG. stb_image refuses
// oversized PNG headers itself but then reports only "unknown image type", so PNG sizes are read
// here to name the problem.
inline bool png_declared_size(const uint8_t* d, size_t size, int64_t& width, int64_t& height) {
    static const uint8_t sig[16] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R'};
    if (size < 24 || std::memcmp(d, sig, sizeof sig) != 0) return false;
    auto be32 = [&](size_t i) { return int64_t(d[i]) << 24 | int64_t(d[i + 1]) << 16 | int64_t(d[i + 2]) << 8 | int64_t(d[i + 3]); };
    width = be32(16);
    height = be32(20);
    return true;
}

// Header of a binary PGM (P5) or PPM (P6): "P6 <width> <height> <maxval>" separated by whitespace
// and # comments, one whitespace byte, then the samples. Numbers saturate at 2^40 (stb_image's own
// parser overflows int on ten digits, so these fields are checked here first).
struct PnmHeader {
    int64_t width = 0, height = 0, maxval = 0, channels = 0, data_offset = 0;
};
inline bool parse_pnm_header(const uint8_t* d, size_t size, PnmHeader& h) {
    if (size < 2 || d[0] != 'P' || (d[1] != '5' && d[1] != '6')) return false;
    size_t i = 2;
    int64_t* fields[3] = {&h.width, &h.height, &h.maxval};
    for (int64_t* field : fields) {
        for (;;) {
            while (i < size && std::isspace(d[i])) ++i;
            if (i >= size || d[i] != '#') break;
            while (i < size && d[i] != '\n' && d[i] != '\r') ++i;
        }
        for (; i < size && std::isdigit(d[i]); ++i) *field = std::min(*field * 10 + (d[i] - '0'), int64_t(1) << 40);
    }
    h.channels = d[1] == '6' ? 3 : 1;
    h.data_offset = int64_t(i) + 1;
    return true;
}

// Whether stb_image takes the bytes for a JPEG: its marker reader skips any run of 0xFF fill bytes,
// so FF FF D8 opens a JPEG as FF D8 does.
inline bool is_jpeg(const uint8_t* d, size_t size) {
    if (size < 2 || d[0] != 0xFF) return false;
    size_t i = 1;
    while (i < size && d[i] == 0xFF) ++i;
    return i < size && d[i] == 0xD8;
}

// A JPEG Huffman table (DHT segment) with more than 256 codes, or the empty string. stb_image 2.27
// writes a table's code lengths and values into arrays of 257 and 256 entries without checking the
// count, so such a table would overwrite the decoder's memory (found by the sanitizers once stb_image
// was compiled with them). Every FF C4 in the file is checked (in entropy-coded data a 0xFF is always
// followed by 0 or a restart marker, so these are all the DHT markers the decoder can meet), and its
// tables are read as stb_image reads them: while the segment length has bytes left, even past its end.
// A segment spans at most 64 KiB, so capping the markers checked at 1024 plus one per 4 KiB keeps
// the work linear in the file (real files carry a few; metadata may hold stray FF C4 pairs).
inline std::string jpeg_huffman_problem(const uint8_t* d, size_t size) {
    auto at = [&](size_t i) { return i < size ? d[i] : uint8_t(0); };  // stb_image reads 0 past the end
    size_t markers = 0;
    for (size_t i = 0; i + 1 < size; ++i) {
        if (d[i] != 0xFF || d[i + 1] != 0xC4) continue;
        if (++markers > 1024 + size / 4096) return "corrupt JPEG (" + std::to_string(markers) + " Huffman table markers)";
        const size_t len = size_t(at(i + 2)) << 8 | at(i + 3);
        for (size_t t = i + 4; t < i + 2 + len && t < size;) {  // each table: class/id byte, 16 counts, the values
            size_t codes = 0;
            for (size_t k = 1; k <= 16; ++k) codes += at(t + k);
            if (codes > 256) return "corrupt JPEG (a Huffman table declares " + std::to_string(codes) + " codes, at most 256 exist)";
            t += 17 + codes;
        }
    }
    return {};
}

// What a file's own bytes say about its declared width x height, checked before decoding: stb_image
// reads zeros past the end of its buffer and allocates (and for GIF clears) the whole picture from
// the header, so a truncated or tiny file would otherwise cost the memory of any size it declares (a
// 66-byte TGA declaring 13648x13088 made 535 MB of pixels, a 51-byte GIF with a 13000x13000 screen
// 1.09 GB). `pnm`: the parsed header when the file is a PGM / PPM, else null.
// Returns an empty string when the file can hold its pixels, else the problem. Each format's bound
// holds for every valid file of that format:
//   uncompressed TGA, BMP, PNM  every pixel byte is in the file;
//   JPEG   ends its data (an EOI marker) and codes at least one bit per 8x8 block: at most 512
//          pixels per byte;
//   PNG    deflate expands at most 1032 times: the filtered rows fit in 1032 x the IDAT bytes;
//   GIF    an LZW code of at most 12 bits stands for at most 4096 pixels: at most 2731 pixels per
//          byte of the file;
//   RLE TGA  a packet of one count byte and at least one pixel value codes at most 128 pixels.
inline std::string payload_problem(const uint8_t* d, size_t size, int64_t w, int64_t h, const PnmHeader* pnm) {
    auto le16 = [&](size_t i) { return int64_t(d[i]) | int64_t(d[i + 1]) << 8; };
    auto le32 = [&](size_t i) { return le16(i) | le16(i + 2) << 16; };
    auto be32 = [&](size_t i) { return int64_t(d[i]) << 24 | int64_t(d[i + 1]) << 16 | int64_t(d[i + 2]) << 8 | int64_t(d[i + 3]); };
    auto truncated = [&](int64_t need, const char* format) {
        return int64_t(size) >= need ? std::string()
                                     : std::string("truncated ") + format + " (" + std::to_string(w) + "x" + std::to_string(h) + " needs " +
                                           std::to_string(need) + " bytes, the file has " + std::to_string(size) + ")";
    };
    auto too_many = [&](const char* format, int64_t coded_bytes, const char* bytes = "bytes") {
        return std::string(format) + " declares " + std::to_string(w) + "x" + std::to_string(h) + " pixels, more than its " +
               std::to_string(coded_bytes) + " " + bytes + " can code";
    };
    const int64_t pixels = w * h;
    if (is_jpeg(d, size)) {
        bool has_eoi = false;
        for (size_t i = size; i-- > 2 && !has_eoi;) has_eoi = d[i - 1] == 0xFF && d[i] == 0xD9;
        if (!has_eoi) return "truncated JPEG (no end-of-image marker)";
        if (pixels > 512 * int64_t(size)) return too_many("JPEG", int64_t(size));
        return {};
    }
    if (size >= 30 && d[0] == 'B' && d[1] == 'M') {  // BMP: BI_RGB or BI_BITFIELDS rows, 4-byte aligned
        const bool os2 = le32(14) == 12;
        const int64_t bits = os2 ? le16(24) : le16(28), compression = os2 ? 0 : (size >= 34 ? le32(30) : 0);
        if (compression != 0 && compression != 3) return {};  // RLE: stb_image refuses it
        return truncated(le32(10) + (w * bits + 31) / 32 * 4 * h, "BMP");
    }
    if (pnm) return truncated(pnm->data_offset + pixels * pnm->channels * (pnm->maxval > 255 ? 2 : 1), "PNM");
    if (size >= 29 && std::memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0) {
        static const int channels_of_type[7] = {1, 0, 3, 1, 2, 0, 4};
        const int type = d[25], channels = type < 7 ? channels_of_type[type] : 0;
        if (channels == 0) return {};  // stb_image names the bad colour type
        const int64_t row_bytes = 1 + (w * channels * d[24] + 7) / 8;  // filter byte + samples
        int64_t idat = 0;
        for (size_t i = 8; i + 12 <= size;) {
            const int64_t len = be32(i);
            if (std::memcmp(d + i + 4, "IDAT", 4) == 0) idat += std::min<int64_t>(len, int64_t(size - i - 12));
            if (len > int64_t(size - i - 12)) break;
            i += size_t(len) + 12;
        }
        if (row_bytes * h > 1032 * idat) return too_many("PNG", idat, "bytes of image data (IDAT)");
        return {};
    }
    if (size >= 6 && std::memcmp(d, "GIF8", 4) == 0) {
        if (pixels > 2731 * int64_t(size)) return too_many("GIF", int64_t(size));
        return {};
    }
    if (size >= 18 && (d[2] == 1 || d[2] == 2 || d[2] == 3)) {  // uncompressed TGA (no magic: stb tries it last)
        const int64_t colormap = d[1] ? le16(5) * ((d[7] + 7) / 8) : 0;
        return truncated(18 + d[0] + colormap + pixels * ((d[16] + 7) / 8), "TGA");
    }
    if (size >= 18 && (d[2] == 9 || d[2] == 10 || d[2] == 11)) {  // run-length coded TGA
        const int64_t colormap = d[1] ? le16(5) * ((d[7] + 7) / 8) : 0;
        const int64_t coded = int64_t(size) - 18 - d[0] - colormap, packet = 1 + (d[16] + 7) / 8;
        if (coded <= 0 || pixels > 128 * (coded / packet + 1)) return too_many("run-length TGA", std::max<int64_t>(coded, 0), "bytes of image data");
    }
    return {};
}

// A PNG's bytes without its zero-length IDAT chunks (they carry no data; stb_image 2.27 passes a
// null buffer to memcpy for a leading one, undefined behaviour found by tests/fuzz/fuzz_image), or
// an empty vector when the file has none. Chunks: 4-byte big-endian length, type, data, CRC.
inline std::vector<uint8_t> png_without_empty_idat(const uint8_t* d, size_t size) {
    if (size < 8 || std::memcmp(d, "\x89PNG\r\n\x1a\n", 8) != 0) return {};
    std::vector<std::pair<size_t, size_t>> drop;  // [begin, end) of each empty IDAT chunk
    for (size_t i = 8; i + 12 <= size;) {
        const uint64_t len = uint64_t(d[i]) << 24 | uint64_t(d[i + 1]) << 16 | uint64_t(d[i + 2]) << 8 | d[i + 3];
        if (len == 0 && std::memcmp(d + i + 4, "IDAT", 4) == 0) drop.emplace_back(i, i + 12);
        if (len > size - i - 12) break;
        i += size_t(len) + 12;
    }
    if (drop.empty()) return {};
    std::vector<uint8_t> out;
    out.reserve(size);
    size_t from = 0;
    for (auto [b, e] : drop) {
        out.insert(out.end(), d + from, d + b);
        from = e;
    }
    out.insert(out.end(), d + from, d + size);
    return out;
}

inline void check_image(const Image& img, const char* what) {
    if (img.width <= 0 || img.height <= 0 || img.rgb.size() != size_t(img.width) * size_t(img.height) * 3)
        throw Error(std::string(what) + ": image of " + dims_str(img.width, img.height) + " holds " + std::to_string(img.rgb.size()) +
                    " bytes, expected width*height*3");
}

}  // namespace detail

// Decodes an encoded image (JPEG, PNG, BMP, GIF first frame, TGA, binary PGM / PPM) to 8-bit RGB:
// grey is replicated, alpha dropped (Pillow's convert("RGB")). The header is read first and sizes
// above kMaxImageSide / `max_pixels` (a host may lower it), and files too small for what they declare
// (see detail::payload_problem), are refused before any pixel memory is allocated; so decoding costs
// at most about 10 bytes per allowed pixel whatever the file says. PSD, HDR and Softimage PIC files
// are refused by name (their cost cannot be bounded from the header).
// `name` (usually the path) starts every error message.
inline Image decode_image(const uint8_t* data, size_t size, const std::string& name, int64_t max_pixels = kMaxImagePixels) {
    if (size == 0) throw Error(name + ": empty file, not an image");
    if (size > size_t(INT_MAX)) throw Error(name + ": " + std::to_string(size) + " bytes is too large for the image decoder (limit 2 GiB)");
    auto check_size = [&](int64_t w, int64_t h) {
        if (w <= 0 || h <= 0) throw Error(name + ": image has a zero side (" + std::to_string(w) + "x" + std::to_string(h) + ")");
        if (w > kMaxImageSide || h > kMaxImageSide || w * h > max_pixels)
            throw Error(name + ": image declares " + std::to_string(w) + "x" + std::to_string(h) + " pixels, above the decoder limit (sides up to " +
                        std::to_string(kMaxImageSide) + ", at most " + std::to_string(max_pixels) + " pixels)");
    };
    auto undecodable = [&] {
        const char* why = detail::stb::failure_reason();
        return Error(name + ": not a decodable image (" + (why ? why : "unknown error") + ")");
    };
    static const std::pair<const char*, const char*> refused[] = {
        {"8BPS", "PSD"}, {"#?RADIANCE", "Radiance HDR"}, {"#?RGBE", "Radiance HDR"}, {"\x53\x80\xF6\x34", "Softimage PIC"}};
    for (const auto& [magic, format] : refused)
        if (size >= std::strlen(magic) && std::memcmp(data, magic, std::strlen(magic)) == 0)
            throw Error(name + ": " + format + " images are not supported (JPEG, PNG, BMP, GIF, TGA, PGM and PPM are)");
    if (detail::is_jpeg(data, size)) {  // before stb_image reads any table (its header scan builds them too)
        const std::string problem = detail::jpeg_huffman_problem(data, size);
        if (!problem.empty()) throw Error(name + ": " + problem);
    }
    int64_t png_w = 0, png_h = 0;
    if (detail::png_declared_size(data, size, png_w, png_h)) check_size(png_w, png_h);
    detail::PnmHeader pnm;
    const bool is_pnm = detail::parse_pnm_header(data, size, pnm);
    if (is_pnm) {
        check_size(pnm.width, pnm.height);
        if (pnm.maxval <= 0 || pnm.maxval > 65535) throw Error(name + ": PNM maximum sample value " + std::to_string(pnm.maxval) + " is outside 1..65535");
    }
    int w = 0, h = 0, comp = 0;
    if (!detail::stb::info_from_memory(data, int(size), &w, &h, &comp)) throw undecodable();
    check_size(w, h);
    const std::string payload = detail::payload_problem(data, size, w, h, is_pnm ? &pnm : nullptr);
    if (!payload.empty()) throw Error(name + ": " + payload);
    // stb_image 2.27 converts 16-bit PGM (P5, maxval > 255) to RGB with its 8-bit converter, then
    // reads the result as 16-bit: a heap over-read (found by tests/fuzz/fuzz_image). Refused here.
    if (is_pnm && pnm.channels == 1 && pnm.maxval > 255) throw Error(name + ": 16-bit greyscale PGM is not supported");
    const std::vector<uint8_t> cleaned = detail::png_without_empty_idat(data, size);
    if (!cleaned.empty()) data = cleaned.data(), size = cleaned.size();
    int dw = 0, dh = 0;
    std::unique_ptr<uint8_t, void (*)(void*)> pixels(detail::stb::load_from_memory(data, int(size), &dw, &dh, &comp, 3), detail::stb::image_free);
    if (!pixels) throw undecodable();
    if (dw != w || dh != h)
        throw Error(name + ": decoded size " + detail::dims_str(dw, dh) + " differs from the header's " + detail::dims_str(w, h));
    Image img;
    img.width = w;
    img.height = h;
    img.rgb.assign(pixels.get(), pixels.get() + size_t(w) * size_t(h) * 3);
    return img;
}

inline Image load_image(const std::string& path, int64_t max_pixels = kMaxImagePixels) {
    detail::MappedFile f(path);
    return decode_image(f.data(), f.size(), path, max_pixels);
}

namespace detail {

// HF smart_resize: {height, width} as multiples of `factor` with area in
// [min_pixels, max_pixels], in float64 with Python's half-to-even round. Tiny and extreme images
// are resized (never a zero side); an aspect ratio above 200 is refused.
inline std::pair<int, int> smart_resize(int height, int width, int factor, int64_t min_pixels, int64_t max_pixels) {
    if (height <= 0 || width <= 0) throw Error("smart_resize: image size " + detail::dims_str(width, height) + " (WxH) must be positive");
    if (factor <= 0 || min_pixels <= 0 || max_pixels < min_pixels)
        throw Error("smart_resize: needs factor > 0 and 0 < min_pixels <= max_pixels");
    const double aspect = double(std::max(height, width)) / double(std::min(height, width));
    if (aspect > 200)
        throw Error("image of " + detail::dims_str(width, height) + " (WxH) has aspect ratio " + std::to_string(aspect) +
                    ", above the limit of 200 of the Qwen3-VL processor");
    const double f = factor, h = height, w = width, area = double(int64_t(height) * width);
    double h_bar = detail::round_half_even(h / f) * f, w_bar = detail::round_half_even(w / f) * f;
    if (h_bar * w_bar > double(max_pixels)) {
        const double beta = std::sqrt(area / double(max_pixels));
        h_bar = std::max(f, std::floor(h / beta / f) * f);
        w_bar = std::max(f, std::floor(w / beta / f) * f);
    } else if (h_bar * w_bar < double(min_pixels)) {
        const double beta = std::sqrt(double(min_pixels) / area);
        h_bar = std::ceil(h * beta / f) * f;
        w_bar = std::ceil(w * beta / f) * f;
    }
    return {detail::checked_side(h_bar, "height"), detail::checked_side(w_bar, "width")};
}

// Video smart_resize (HF Qwen3VLVideoProcessor): the pixel budget counts all
// `num_frames` frames (before padding to a multiple of temporal_factor); frames with a side below
// `factor` are first scaled up so that side is `factor`. The optional per-frame cap
// (`cap_pixels_per_frame`, off by default in HF) is not applied.
inline std::pair<int, int> smart_resize_video(int num_frames, int height, int width, int factor, int64_t min_pixels, int64_t max_pixels,
                                              int temporal_factor = 2) {
    if (num_frames < temporal_factor)
        throw Error("video has " + std::to_string(num_frames) + " frame(s); at least temporal_patch_size = " + std::to_string(temporal_factor) +
                    " are needed");
    if (height <= 0 || width <= 0) throw Error("smart_resize: frame size " + detail::dims_str(width, height) + " (WxH) must be positive");
    if (factor <= 0 || min_pixels <= 0 || max_pixels < min_pixels)
        throw Error("smart_resize: needs factor > 0 and 0 < min_pixels <= max_pixels");
    if (height < factor || width < factor) {
        const double scale = std::max(double(factor) / height, double(factor) / width);
        height = detail::checked_side(std::trunc(height * scale), "height");
        width = detail::checked_side(std::trunc(width * scale), "width");
    }
    const double aspect = double(std::max(height, width)) / double(std::min(height, width));
    if (aspect > 200)
        throw Error("video frames of " + detail::dims_str(width, height) + " (WxH) have aspect ratio " + std::to_string(aspect) +
                    ", above the limit of 200 of the Qwen3-VL processor");
    const double f = factor, h = height, w = width, volume = double(int64_t(num_frames) * height * width);
    double h_bar = detail::round_half_even(h / f) * f, w_bar = detail::round_half_even(w / f) * f;
    const double t_bar = detail::round_half_even(double(num_frames) / temporal_factor) * temporal_factor;
    if (t_bar * h_bar * w_bar > double(max_pixels)) {
        const double beta = std::sqrt(volume / double(max_pixels));
        h_bar = std::max(f, std::floor(h / beta / f) * f);
        w_bar = std::max(f, std::floor(w / beta / f) * f);
    } else if (t_bar * h_bar * w_bar < double(min_pixels)) {
        const double beta = std::sqrt(double(min_pixels) / volume);
        h_bar = std::ceil(h * beta / f) * f;
        w_bar = std::ceil(w * beta / f) * f;
    }
    return {detail::checked_side(h_bar, "height"), detail::checked_side(w_bar, "width")};
}

// The processor size {height, width} of `num_frames` sampled frames of height x width (video
// smart_resize with the config's factor, budget and temporal patch), checked against the patch grid.
inline std::pair<int, int> video_frame_size(int num_frames, int height, int width, const PreprocessConfig& cfg) {
    const auto hw = smart_resize_video(num_frames, height, width, cfg.patch_size * cfg.merge_size, cfg.min_pixels, cfg.max_pixels,
                                       cfg.temporal_patch_size);
    detail::check_patch_grid(hw.first, hw.second, cfg, "preprocess_video");
    return hw;
}

// Pillow Image.resize(..., BICUBIC) on 8-bit RGB, bit-exact: separable, horizontal pass first
// (only over the rows the vertical pass reads), each pass clipped to uint8; a pass whose size does
// not change is skipped, and so is the whole resize.
inline Image resize_bicubic(const Image& src, int out_width, int out_height) {
    detail::check_image(src, "resize_bicubic");
    if (out_width <= 0 || out_height <= 0 || out_width > kMaxImageSide * 4 || out_height > kMaxImageSide * 4)
        throw Error("resize_bicubic: target size " + detail::dims_str(out_width, out_height) + " is out of range");
    if (out_width == src.width && out_height == src.height) return src;
    const detail::ResampleCoeffs vert = detail::resample_coeffs(src.height, out_height);
    const int row0 = vert.first.front(), row1 = vert.first.back() + vert.count.back();  // input rows the vertical pass reads
    Image horiz;
    const Image* cur = &src;
    int cur_row0 = 0;
    if (out_width != src.width) {
        detail::resample_horizontal(src, row0, row1 - row0, detail::resample_coeffs(src.width, out_width), horiz);
        cur = &horiz;
        cur_row0 = row0;
    }
    if (out_height == src.height) return horiz;
    Image out;
    detail::resample_vertical(*cur, cur_row0, vert, out);
    return out;
}

// A still image at a given resized size (multiples of patch*merge): bicubic resize, normalise,
// temporal_patch_size identical frames, patchify. Used directly by the high-resolution stream of
// the stack schemes (the ORIGINAL image resized to exactly r x the processor size).
inline VisualPatches preprocess_image_at(const Image& img, int height, int width, const PreprocessConfig& cfg) {
    detail::check_image(img, "preprocess_image");
    detail::check_patch_grid(height, width, cfg, "preprocess_image");
    const Image resized = resize_bicubic(img, width, height);
    const std::vector<const Image*> frames(size_t(cfg.temporal_patch_size), &resized);
    return detail::patchify(frames, cfg, false);
}

// A still image as the HF processor prepares it: smart_resize, then preprocess_image_at.
inline VisualPatches preprocess_image(const Image& img, const PreprocessConfig& cfg) {
    detail::check_image(img, "preprocess_image");
    const auto [h, w] = smart_resize(img.height, img.width, cfg.patch_size * cfg.merge_size, cfg.min_pixels, cfg.max_pixels);
    return preprocess_image_at(img, h, w, cfg);
}

// Already sampled video frames (all the same size) at a given resized size (multiples of
// patch*merge): bicubic resize of each, pad to a multiple of temporal_patch_size by repeating the
// last frame, normalise (video processor arithmetic), patchify; consecutive frames form a temporal
// patch. Used directly by the high-resolution stream of the stack schemes.
inline VisualPatches preprocess_video_at(const std::vector<Image>& frames, int height, int width, const PreprocessConfig& cfg) {
    if (frames.empty()) throw Error("preprocess_video: no frames");
    for (size_t i = 0; i < frames.size(); ++i) {
        detail::check_image(frames[i], "preprocess_video");
        if (frames[i].width != frames[0].width || frames[i].height != frames[0].height)
            throw Error("preprocess_video: frame " + std::to_string(i) + " is " + detail::dims_str(frames[i].width, frames[i].height) +
                        " but frame 0 is " + detail::dims_str(frames[0].width, frames[0].height) + "; all frames must have one size");
    }
    detail::check_patch_grid(height, width, cfg, "preprocess_video");
    const bool at_size = frames[0].height == height && frames[0].width == width;  // resized as they were decoded (load_video)
    std::vector<Image> resized(at_size ? 0 : frames.size());
    for (size_t i = 0; i < resized.size(); ++i) resized[i] = resize_bicubic(frames[i], width, height);
    std::vector<const Image*> ptrs;
    for (const Image& f : at_size ? frames : resized) ptrs.push_back(&f);
    while (ptrs.size() % size_t(cfg.temporal_patch_size)) ptrs.push_back(ptrs.back());
    return detail::patchify(ptrs, cfg, true);
}

// A video from its already sampled frames as the HF processor prepares it: video smart_resize
// over all frames, then preprocess_video_at.
// HF resizes video frames with torchvision's antialiased bicubic, which is close to but not
// bit-exact with the Pillow resize used here; frames that need no resize match exactly.
// source_height x source_width: the frames' size in the video when they were resized already as
// they were decoded (VideoClip); the processor size is computed from it, and frames already at that
// size are used as they are. 0 (the default) means the frames are at their source size.
inline VisualPatches preprocess_video(const std::vector<Image>& frames, const PreprocessConfig& cfg, int source_height = 0,
                                      int source_width = 0) {
    if (frames.empty()) throw Error("preprocess_video: no frames");
    detail::check_image(frames[0], "preprocess_video");
    const auto [h, w] = video_frame_size(int(frames.size()), source_height > 0 ? source_height : frames[0].height,
                                         source_width > 0 ? source_width : frames[0].width, cfg);
    return preprocess_video_at(frames, h, w, cfg);
}

// Frame sampling in fps mode (HF Qwen3VLVideoProcessor.sample_frames):
// n = int(total / video_fps * cfg.fps) clamped to [min_frames, max_frames] and to total; indices
// = round-half-even(linspace(0, total - 1, n)). video_fps <= 0 means unknown and is taken as 24,
// as HF does.
inline std::vector<int> sample_frame_indices(int total_frames, double video_fps, const PreprocessConfig& cfg) {
    if (total_frames <= 0) throw Error("sample_frame_indices: the video has no frames");
    if (!(video_fps > 0)) video_fps = 24.0;
    const double wanted = double(total_frames) / video_fps * cfg.fps;
    int n = wanted >= double(INT_MAX) ? INT_MAX : int(wanted);
    n = std::min({std::max(n, cfg.min_frames), cfg.max_frames, total_frames});
    std::vector<int> idx(size_t(n), 0);
    if (n > 1) {
        const double step = double(total_frames - 1) / double(n - 1);
        for (int i = 0; i < n - 1; ++i) idx[size_t(i)] = int(detail::round_half_even(i * step));
        idx[size_t(n - 1)] = total_frames - 1;  // numpy sets the endpoint exactly
    }
    return idx;
}

// Seconds of each temporal patch (HF Qwen3VLProcessor._calculate_timestamps): the
// index list is padded to a multiple of temporal_patch_size by repeating the last index, each
// index becomes idx / video_fps, and patch j gets the mean of its first and last frame times.
inline std::vector<double> temporal_patch_timestamps(const std::vector<int>& frame_indices, double video_fps, int temporal_patch_size) {
    if (!(video_fps > 0)) throw Error("temporal_patch_timestamps: video_fps must be positive");
    if (temporal_patch_size <= 0) throw Error("temporal_patch_timestamps: temporal_patch_size must be positive");
    std::vector<int> idx = frame_indices;
    while (!idx.empty() && idx.size() % size_t(temporal_patch_size)) idx.push_back(idx.back());
    std::vector<double> out;
    for (size_t j = 0; j < idx.size(); j += size_t(temporal_patch_size))
        out.push_back((idx[j] / video_fps + idx[j + size_t(temporal_patch_size) - 1] / video_fps) / 2);
    return out;
}

// "<T seconds>" with T as Python format(T, ".1f") (correctly rounded, ties to even on the exact
// binary value, as glibc printf does).
inline std::string timestamp_text(double seconds) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "<%.1f seconds>", seconds);
    return buf;
}

}  // namespace detail
}  // namespace deepstack
