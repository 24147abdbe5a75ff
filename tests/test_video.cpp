// load_video: folders and lists of frames (and video files when built with FFmpeg), frame
// sampling as the Hugging Face video processor does it, and the tiny-video-4raw golden through it.
#include <doctest/doctest.h>
#include <deepstack.hpp>
#include <deepstack/video.hpp>

#include <deepstack/stb.hpp>

#include <fstream>
#include <unistd.h>
#include "test_util.hpp"

using namespace deepstack;
using namespace deepstack::detail;
namespace fs = std::filesystem;
static const std::string kVideo = kData + "/fixtures/tiny-video-4raw/";

namespace {

// A fresh folder under the system temp dir, removed with its contents at the end of the scope.

// Frame i of a synthetic clip: one flat colour that tells the frames apart.
Image colour_frame(int i, int width = 64, int height = 32) {
    Image img;
    img.width = width;
    img.height = height;
    img.rgb.resize(size_t(width) * size_t(height) * 3);
    for (size_t p = 0; p < img.rgb.size(); p += 3) {
        img.rgb[p] = uint8_t(i * 8);
        img.rgb[p + 1] = uint8_t(255 - i * 8);
        img.rgb[p + 2] = 100;
    }
    return img;
}

void write_png(const std::string& path, const Image& img) {
    std::vector<uint8_t> png;
    auto append = [](void* to, void* bytes, int n) {
        auto* v = static_cast<std::vector<uint8_t>*>(to);
        v->insert(v->end(), static_cast<uint8_t*>(bytes), static_cast<uint8_t*>(bytes) + n);
    };
    REQUIRE(detail::stb::write_png_to_func(append, &png, img.width, img.height, 3, img.rgb.data(), img.width * 3));
    detail::write_file(path, png.data(), png.size());
}

// Which synthetic frame an image is (by its first pixel).
int frame_number(const Image& img) { return img.rgb.at(0) / 8; }

std::vector<int> frame_numbers(const VideoClip& clip) {
    std::vector<int> out;
    for (const auto& f : clip.frames) out.push_back(frame_number(f));
    return out;
}

void copy_fixture_frames(const fs::path& dir) {
    fs::create_directories(dir);
    for (int i = 0; i < 4; ++i) {
        const std::string name = "frame0" + std::to_string(i) + "_256x128.png";
        fs::copy_file(kVideo + "inputs/" + name, dir / name);
    }
}

// The clip through prepare_video matches the golden pixel_values_videos exactly and gives the
// fixture's timestamps.
void check_golden(const VideoClip& clip) {
    auto model = Model::load(kVideo + "model");
    CHECK(clip.total_frames == 4);
    CHECK(clip.fps == 2.0);
    CHECK(clip.frame_indices == std::vector<int>{0, 1, 2, 3});
    const VisualInput v = prepare_video(*model, clip);
    CHECK(v.patches.grid_thw == std::array<int, 3>{2, 8, 16});
    WeightStore golden;
    golden.add_file(kVideo + "golden.safetensors");
    const TensorInfo& g = golden.get("pixel_values_videos", {256, 1536});
    REQUIRE(int64_t(v.patches.pixels.size()) == g.numel());
    CHECK(std::memcmp(v.patches.pixels.data(), g.data, g.nbytes) == 0);
    REQUIRE(v.timestamps.size() == 2);
    CHECK(timestamp_text(v.timestamps[0]) == "<0.2 seconds>");
    CHECK(timestamp_text(v.timestamps[1]) == "<1.2 seconds>");
}

}  // namespace

TEST_CASE("frame sampling follows the video processor's fps rule (hand-computed)") {
    PreprocessConfig cfg;  // fps 2, min_frames 4, max_frames 768
    // 30 frames at 30 fps: n = int(30/30*2) = 2 -> raised to min_frames 4; linspace(0, 29, 4) =
    // 0, 9.67, 19.33, 29.
    CHECK(sample_frame_indices(30, 30, cfg) == std::vector<int>{0, 10, 19, 29});
    // 10 frames at 4 fps: n = int(10/4*2) = 5; linspace(0, 9, 5) = 0, 2.25, 4.5 (half to even: 4), 6.75, 9.
    CHECK(sample_frame_indices(10, 4, cfg) == std::vector<int>{0, 2, 4, 7, 9});
    // 3 frames: min_frames is capped by the frame count.
    CHECK(sample_frame_indices(3, 30, cfg) == std::vector<int>{0, 1, 2});
    // 600 frames at 1 fps would be 1200 samples: capped at 600 (all frames).
    CHECK(sample_frame_indices(600, 1, cfg).size() == 600);
}

TEST_CASE("load_video: a folder of frames, sorted by name, only the sampled ones decoded") {
    TempDir tmp("video-folder");
    for (int i = 0; i < 10; ++i) {
        char name[32];
        std::snprintf(name, sizeof name, "f%02d.png", i);
        if (i == 1) {
            std::ofstream(tmp / name) << "not a PNG";  // never sampled at 4 fps
        } else {
            write_png(tmp / name, colour_frame(i));
        }
    }
    std::ofstream(tmp / "notes.md") << "not a frame";
    PreprocessConfig cfg;

    const VideoClip clip = load_video(tmp.path.string(), 4, cfg);
    CHECK(clip.total_frames == 10);
    CHECK(clip.fps == 4);
    CHECK(clip.frame_indices == std::vector<int>{0, 2, 4, 7, 9});
    CHECK(frame_numbers(clip) == clip.frame_indices);
    // Kept at the processor size of 5 frames of 64x32 (scaled up to the 65536-pixel minimum).
    CHECK(clip.source_width == 64);
    CHECK(clip.source_height == 32);
    CHECK(clip.frames[0].width == 192);
    CHECK(clip.frames[0].height == 96);
    CHECK(video_frame_size(5, 32, 64, cfg) == std::pair{96, 192});

    // A lower target rate: n = int(10/4*1) = 2 -> 4 frames at linspace(0, 9, 4) = 0, 3, 6, 9.
    const VideoClip slow = load_video(tmp.path.string(), 4, cfg, 1.0);
    CHECK(slow.frame_indices == std::vector<int>{0, 3, 6, 9});
    CHECK(frame_numbers(slow) == slow.frame_indices);

    // Default source rate for folders is 2 fps: every frame is sampled, so the broken one is read.
    CHECK_THROWS_WITH_AS(load_video(tmp.path.string(), 0, cfg), doctest::Contains("f01.png: not a decodable image"), Error);

    write_png(tmp / "f01.png", colour_frame(1, 32, 32));
    CHECK_THROWS_WITH_AS(load_video(tmp.path.string(), 0, cfg), doctest::Contains("all frames of a video must have one size"), Error);
    write_png(tmp / "f01.png", colour_frame(1));
    const VideoClip all = load_video(tmp.path.string(), 0, cfg);
    CHECK(all.fps == kDefaultFolderFps);
    CHECK(frame_numbers(all) == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
}

TEST_CASE("load_video: a list of frame paths, relative to the list file") {
    TempDir tmp("video-list");
    fs::create_directories(tmp.path / "frames");
    for (int i = 0; i < 5; ++i) write_png(tmp / ("frames/" + std::to_string(i) + ".png"), colour_frame(i));
    std::ofstream(tmp / "clip.txt") << "# frames in order\n"
                                    << "frames/4.png\r\n"
                                    << "\n"
                                    << "  frames/3.png  \n"
                                    << tmp / "frames/2.png" << "\n"
                                    << "frames/1.png\n"
                                    << "frames/0.png";
    const VideoClip clip = load_video(tmp / "clip.txt", 0, PreprocessConfig{});
    CHECK(clip.total_frames == 5);
    CHECK(frame_numbers(clip) == std::vector<int>{4, 3, 2, 1, 0});  // list order, not name order
    CHECK(clip.frame_indices == std::vector<int>{0, 1, 2, 3, 4});

    std::ofstream(tmp / "missing.txt") << "frames/0.png\nframes/nope.png\n";
    CHECK_THROWS_WITH_AS(load_video(tmp / "missing.txt", 0, PreprocessConfig{}), doctest::Contains("nope.png"), Error);
    std::ofstream(tmp / "empty.lst") << "# nothing\n\n";
    CHECK_THROWS_WITH_AS(load_video(tmp / "empty.lst", 0, PreprocessConfig{}), doctest::Contains("names no files"), Error);
}

TEST_CASE("load_video: bad inputs are errors") {
    TempDir tmp("video-bad");
    PreprocessConfig cfg;
    CHECK_THROWS_WITH_AS(load_video(tmp / "nothing-here", 0, cfg), doctest::Contains("no such file or folder"), Error);
    CHECK_THROWS_WITH_AS(load_video(tmp.path.string(), 0, cfg), doctest::Contains("no image files"), Error);
    CHECK_THROWS_WITH_AS(load_video(tmp.path.string(), -1, cfg), doctest::Contains("source fps must be positive"), Error);
    CHECK_THROWS_WITH_AS(load_video(tmp.path.string(), 2, cfg, -1), doctest::Contains("target fps must be positive"), Error);
}

TEST_CASE("tiny-video-4raw golden through load_video: folder and list of its frames at 2 fps") {
    TempDir tmp("video-golden");
    copy_fixture_frames(tmp.path / "frames");
    auto model = Model::load(kVideo + "model");
    SUBCASE("folder") { check_golden(load_video(tmp / "frames", 2, model->video_config)); }
    SUBCASE("list") {
        std::ofstream(tmp / "clip.lst") << "frames/frame00_256x128.png\nframes/frame01_256x128.png\n"
                                        << "frames/frame02_256x128.png\nframes/frame03_256x128.png\n";
        check_golden(load_video(tmp / "clip.lst", 0, model->video_config));
    }
}

#ifdef DEEPSTACK_WITH_FFMPEG

namespace {

// Writes frames (one size, even sides) as a lossless PNG-coded video at `fps` frames per second.
void write_video(const std::string& path, const char* container, const std::vector<Image>& frames, int fps) {
    AVFormatContext* fmt = nullptr;
    REQUIRE(avformat_alloc_output_context2(&fmt, nullptr, container, path.c_str()) >= 0);
    const AVCodec* codec = avcodec_find_encoder(AV_CODEC_ID_PNG);
    REQUIRE(codec);
    AVStream* st = avformat_new_stream(fmt, nullptr);
    AVCodecContext* enc = avcodec_alloc_context3(codec);
    REQUIRE((st && enc));
    enc->width = frames[0].width;
    enc->height = frames[0].height;
    enc->pix_fmt = AV_PIX_FMT_RGB24;
    enc->time_base = {1, fps};
    enc->framerate = {fps, 1};
    if (fmt->oformat->flags & AVFMT_GLOBALHEADER) enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
    REQUIRE(avcodec_open2(enc, codec, nullptr) >= 0);
    REQUIRE(avcodec_parameters_from_context(st->codecpar, enc) >= 0);
    st->time_base = enc->time_base;
    st->avg_frame_rate = enc->framerate;
    REQUIRE(avio_open(&fmt->pb, path.c_str(), AVIO_FLAG_WRITE) >= 0);
    REQUIRE(avformat_write_header(fmt, nullptr) >= 0);
    AVFrame* f = av_frame_alloc();
    AVPacket* pkt = av_packet_alloc();
    f->format = AV_PIX_FMT_RGB24;
    f->width = enc->width;
    f->height = enc->height;
    REQUIRE(av_frame_get_buffer(f, 0) >= 0);
    auto write_packets = [&] {
        while (avcodec_receive_packet(enc, pkt) >= 0) {
            av_packet_rescale_ts(pkt, enc->time_base, st->time_base);
            pkt->stream_index = st->index;
            REQUIRE(av_interleaved_write_frame(fmt, pkt) >= 0);
        }
    };
    for (size_t i = 0; i < frames.size(); ++i) {
        REQUIRE(av_frame_make_writable(f) >= 0);
        for (int y = 0; y < f->height; ++y)
            std::memcpy(f->data[0] + y * f->linesize[0], &frames[i].rgb[size_t(y) * size_t(f->width) * 3], size_t(f->width) * 3);
        f->pts = int64_t(i);
        REQUIRE(avcodec_send_frame(enc, f) >= 0);
        write_packets();
    }
    REQUIRE(avcodec_send_frame(enc, nullptr) >= 0);
    write_packets();
    REQUIRE(av_write_trailer(fmt) >= 0);
    avio_closep(&fmt->pb);
    av_packet_free(&pkt);
    av_frame_free(&f);
    avcodec_free_context(&enc);
    avformat_free_context(fmt);
}

}  // namespace

TEST_CASE("load_video (FFmpeg): 30 frames at 30 fps, frame count from the index (AVI) or by reading (Matroska)") {
    TempDir tmp("video-ffmpeg");
    std::vector<Image> frames;
    for (int i = 0; i < 30; ++i) frames.push_back(colour_frame(i));
    for (auto [file, container] : {std::pair{"clip.avi", "avi"}, std::pair{"clip.mkv", "matroska"}}) {
        CAPTURE(container);
        write_video(tmp / file, container, frames, 30);
        const VideoClip clip = load_video(tmp / file, 0, PreprocessConfig{});
        CHECK(clip.total_frames == 30);
        CHECK(clip.fps == doctest::Approx(30.0));
        CHECK(clip.frame_indices == std::vector<int>{0, 10, 19, 29});
        CHECK(frame_numbers(clip) == clip.frame_indices);
        const auto [h, w] = video_frame_size(4, 32, 64, PreprocessConfig{});
        for (size_t k = 0; k < clip.frames.size(); ++k) CHECK(clip.frames[k].rgb == resize_bicubic(frames[size_t(clip.frame_indices[k])], w, h).rgb);
        // A given source rate overrides the file's: 30 frames "at 10 fps" -> n = 6.
        CHECK(load_video(tmp / file, 10, PreprocessConfig{}).frame_indices == std::vector<int>{0, 6, 12, 17, 23, 29});
    }
    std::ofstream(tmp / "junk.mp4") << "not a video";
    CHECK_THROWS_WITH_AS(load_video(tmp / "junk.mp4", 0, PreprocessConfig{}), doctest::Contains("cannot open as a video"), Error);
}

TEST_CASE("load_video (FFmpeg): playlists and concat lists that would open other files are refused") {
    TempDir tmp("video-ffmpeg-playlist");
    std::vector<Image> frames;
    for (int i = 0; i < 8; ++i) frames.push_back(colour_frame(i));
    write_video(tmp / "other.avi", "avi", frames, 8);
    REQUIRE(load_video(tmp / "other.avi", 0, PreprocessConfig{}).total_frames == 8);
    // An HLS playlist named .mp4 naming a local file (relative and absolute), and an ffconcat list.
    std::ofstream(tmp / "playlist.mp4") << "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nother.avi\n#EXTINF:1,\n" << tmp / "other.avi"
                                        << "\n#EXT-X-ENDLIST\n";
    std::ofstream(tmp / "concat.mp4") << "ffconcat version 1.0\nfile other.avi\n";
    for (const char* name : {"playlist.mp4", "concat.mp4"}) {
        CAPTURE(name);
        CHECK_THROWS_WITH_AS(load_video(tmp / name, 0, PreprocessConfig{}), doctest::Contains((tmp / name + ": cannot open as a video").c_str()), Error);
    }
}

TEST_CASE("load_video (FFmpeg): only the sampled frames are kept, at the processor size") {
    TempDir tmp("video-ffmpeg-large");
    std::vector<Image> frames;
    for (int i = 0; i < 16; ++i) frames.push_back(colour_frame(i, 1280, 720));
    write_video(tmp / "large.avi", "avi", frames, 8);
    PreprocessConfig cfg;
    cfg.min_pixels = 128 * 32 * 32;
    cfg.max_pixels = 768 * 32 * 32;
    const VideoClip clip = load_video(tmp / "large.avi", 0, cfg);
    REQUIRE(clip.frames.size() == 4);
    CHECK(clip.source_width == 1280);
    CHECK(clip.source_height == 720);
    const auto [h, w] = video_frame_size(4, 720, 1280, cfg);
    CHECK(int64_t(h) * w * 4 <= cfg.max_pixels);
    for (const Image& f : clip.frames) CHECK((f.width == w && f.height == h));
    CHECK(frame_numbers(clip) == clip.frame_indices);
}

TEST_CASE("tiny-video-4raw golden through load_video: a lossless video file of its frames at 2 fps") {
    TempDir tmp("video-ffmpeg-golden");
    std::vector<Image> frames;
    for (int i = 0; i < 4; ++i) frames.push_back(load_image(kVideo + "inputs/frame0" + std::to_string(i) + "_256x128.png"));
    write_video(tmp / "clip.avi", "avi", frames, 2);
    auto model = Model::load(kVideo + "model");
    check_golden(load_video(tmp / "clip.avi", 0, model->video_config));
}

#else

TEST_CASE("load_video: a video file without FFmpeg is a clear error") {
    TempDir tmp("video-noffmpeg");
    std::ofstream(tmp / "clip.mp4") << "whatever";
    CHECK_THROWS_WITH_AS(load_video(tmp / "clip.mp4", 0, PreprocessConfig{}),
                         doctest::Contains("built without FFmpeg; pass a folder of frames or install libavformat-dev"), Error);
}

#endif
