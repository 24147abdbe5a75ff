// deepstack/video.hpp - reading a video for the model: a folder of frames, a list of frame files,
// or (when built with FFmpeg) a video file; the frames are sampled as the Hugging Face
// Qwen3VLVideoProcessor samples them and only the sampled frames are decoded or kept.
#pragma once
#include "image.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <sstream>

#ifdef DEEPSTACK_WITH_FFMPEG
extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/imgutils.h>
#include <libswscale/swscale.h>
}
#endif

namespace deepstack::detail {

// Source frame rate of a folder or list of frames when the caller gives none: such folders are
// usually extracted at the model's default sampling rate, so 2 frames per second.
constexpr double kDefaultFolderFps = 2.0;


inline bool has_image_extension(const std::filesystem::path& p) {
    std::string ext = p.extension().string();
    for (char& ch : ext) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    for (const char* e : {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tga", ".ppm", ".pgm", ".pnm"})
        if (ext == e) return true;
    return false;
}

// Image files of a folder (not recursive), sorted by name (byte order: zero-pad frame numbers).
inline std::vector<std::string> folder_frames(const std::string& dir) {
    std::vector<std::string> files;
    for (const auto& e : std::filesystem::directory_iterator(dir))
        if (e.is_regular_file() && has_image_extension(e.path())) files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
    if (files.empty()) throw Error(dir + ": no image files (.png, .jpg, ...) in this folder of video frames");
    return files;
}

// One frame path per line, relative to the list file's folder; blank lines and lines starting
// with '#' are skipped, surrounding whitespace (and a CR) is ignored.
inline std::vector<std::string> listed_frames(const std::string& list_path) {
    std::istringstream in(read_small_file(list_path, kMaxConfigFileBytes, "a frame list"));
    const std::filesystem::path base = std::filesystem::path(list_path).parent_path();
    std::vector<std::string> files;
    for (std::string line; std::getline(in, line);) {
        const size_t b = line.find_first_not_of(" \t\r"), e = line.find_last_not_of(" \t\r");
        if (b == std::string::npos || line[b] == '#') continue;
        const std::filesystem::path p = line.substr(b, e - b + 1);
        files.push_back((p.is_absolute() ? p : base / p).string());
    }
    if (files.empty()) throw Error(list_path + ": the frame list names no files");
    return files;
}

inline bool is_frame_list(const std::string& path) {
    std::string ext = std::filesystem::path(path).extension().string();
    for (char& ch : ext) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    return ext == ".txt" || ext == ".lst";
}

inline PreprocessConfig with_target_fps(PreprocessConfig cfg, double target_fps) {
    if (target_fps < 0) throw Error("load_video: target fps must be positive (0 = the preprocessor's fps)");
    if (target_fps > 0) cfg.fps = target_fps;
    return cfg;
}

// Adds the next sampled frame (decoded at its source size) to the clip, resized to the processor
// size of the clip's sampled frame count when `resize` (only frames of that size are kept). The
// first frame sets the source size; every later one must have it.
inline void add_frame(VideoClip& clip, Image frame, const PreprocessConfig& cfg, const std::string& name, bool resize) {
    const size_t i = clip.frames.size();
    if (i == 0) {
        clip.source_width = frame.width;
        clip.source_height = frame.height;
    } else if (frame.width != clip.source_width || frame.height != clip.source_height) {
        throw Error(name + ": frame " + std::to_string(clip.frame_indices[i]) + " is " + dims_str(frame.width, frame.height) + " but frame " +
                    std::to_string(clip.frame_indices.front()) + " is " + dims_str(clip.source_width, clip.source_height) +
                    "; all frames of a video must have one size");
    }
    if (!resize) return clip.frames.push_back(std::move(frame));
    const auto [h, w] = video_frame_size(int(clip.frame_indices.size()), clip.source_height, clip.source_width, cfg);
    clip.frames.push_back(resize_bicubic(frame, w, h));
}

inline VideoClip load_frame_files(const std::vector<std::string>& files, double fps, const PreprocessConfig& cfg, bool resize) {
    VideoClip clip;
    clip.fps = fps;
    clip.total_frames = int(std::min(files.size(), size_t(INT_MAX)));
    clip.frame_indices = sample_frame_indices(clip.total_frames, fps, cfg);
    for (int idx : clip.frame_indices) add_frame(clip, load_image(files[size_t(idx)]), cfg, files[size_t(idx)], resize);
    return clip;
}

#ifdef DEEPSTACK_WITH_FFMPEG

inline std::string av_error(int err) {
    char buf[AV_ERROR_MAX_STRING_SIZE] = {};
    av_strerror(err, buf, sizeof buf);
    return buf;
}

struct AvInput {
    AVFormatContext* fmt = nullptr;
    AVCodecContext* codec = nullptr;
    AVPacket* packet = av_packet_alloc();
    AVFrame* frame = av_frame_alloc();
    SwsContext* sws = nullptr;
    int stream = -1;

    ~AvInput() {
        sws_freeContext(sws);
        av_frame_free(&frame);
        av_packet_free(&packet);
        avcodec_free_context(&codec);
        avformat_close_input(&fmt);
    }
};

// Containers FFmpeg may open: single-file video formats. Playlists (hls, dash), concat lists,
// image sequences and other demuxers that open further files or URLs named inside the input are
// not among them, and only the "file" protocol is allowed, so a video reads nothing but itself.
constexpr const char* kVideoDemuxers = "mov,mp4,matroska,webm,avi,flv,mpegts,mpeg,ogg,asf,nut,ivf,yuv4mpegpipe,gif,h264,hevc,m4v,mjpeg";

// Opens `path` (a regular file) and its best video stream; the decoder is set up only when `decode`.
inline void av_open(AvInput& in, const std::string& path, bool decode) {
    if (!in.packet || !in.frame) throw Error(path + ": out of memory");
    { const InputFile regular(path); }  // a FIFO, device or folder is refused before FFmpeg opens it
    AVDictionary* options = nullptr;
    av_dict_set(&options, "protocol_whitelist", "file", 0);
    av_dict_set(&options, "format_whitelist", kVideoDemuxers, 0);
    int err = avformat_open_input(&in.fmt, ("file:" + path).c_str(), nullptr, &options);
    av_dict_free(&options);
    if (err < 0) throw Error(path + ": cannot open as a video (" + av_error(err) + ")");
    if ((err = avformat_find_stream_info(in.fmt, nullptr)) < 0) throw Error(path + ": cannot read stream info (" + av_error(err) + ")");
    const AVCodec* dec = nullptr;
    in.stream = av_find_best_stream(in.fmt, AVMEDIA_TYPE_VIDEO, -1, -1, &dec, 0);
    if (in.stream < 0) throw Error(path + ": no decodable video stream (" + av_error(in.stream) + ")");
    if (!decode) return;
    in.codec = avcodec_alloc_context3(dec);
    if (!in.codec) throw Error(path + ": out of memory");
    if ((err = avcodec_parameters_to_context(in.codec, in.fmt->streams[in.stream]->codecpar)) < 0 ||
        (err = avcodec_open2(in.codec, dec, nullptr)) < 0)
        throw Error(path + ": cannot open the " + dec->name + " decoder (" + av_error(err) + ")");
}

// Frames in the container's index, or, when it does not say (e.g. Matroska), the count of
// video packets found by reading the file once without decoding.
inline int av_count_frames(const std::string& path) {
    AvInput in;
    av_open(in, path, false);
    const int64_t declared = in.fmt->streams[in.stream]->nb_frames;
    if (declared > 0) return int(std::min<int64_t>(declared, INT_MAX));
    int64_t n = 0;
    while (av_read_frame(in.fmt, in.packet) >= 0) {
        n += in.packet->stream_index == in.stream;
        av_packet_unref(in.packet);
    }
    return int(std::min<int64_t>(n, INT_MAX));
}

inline Image av_to_rgb(AvInput& in, const std::string& path) {
    const AVFrame* f = in.frame;
    if (f->width <= 0 || f->height <= 0 || f->width > kMaxImageSide || f->height > kMaxImageSide ||
        int64_t(f->width) * f->height > kMaxImagePixels)
        throw Error(path + ": video frames of " + dims_str(f->width, f->height) + " are outside the decoder limit (sides up to " +
                    std::to_string(kMaxImageSide) + ", at most " + std::to_string(kMaxImagePixels) + " pixels)");
    in.sws = sws_getCachedContext(in.sws, f->width, f->height, AVPixelFormat(f->format), f->width, f->height, AV_PIX_FMT_RGB24,
                                  SWS_BICUBIC, nullptr, nullptr, nullptr);
    if (!in.sws) throw Error(path + ": cannot convert frames of pixel format " + std::to_string(f->format) + " to RGB");
    Image img;
    img.width = f->width;
    img.height = f->height;
    img.rgb.resize(size_t(f->width) * size_t(f->height) * 3);
    uint8_t* dst[4] = {img.rgb.data(), nullptr, nullptr, nullptr};
    const int dst_stride[4] = {f->width * 3, 0, 0, 0};
    sws_scale(in.sws, f->data, f->linesize, 0, f->height, dst, dst_stride);
    return img;
}

// Decodes the stream in presentation order up to the last sampled frame and keeps (as RGB) only
// the sampled frames. Damaged packets are skipped; a stream that yields fewer frames than its
// container declared repeats its last decoded frame for the missing samples.
inline VideoClip load_video_file(const std::string& path, double source_fps, const PreprocessConfig& cfg, bool resize) {
    VideoClip clip;
    clip.total_frames = av_count_frames(path);
    if (clip.total_frames <= 0) throw Error(path + ": the video stream has no frames");
    AvInput in;
    av_open(in, path, true);
    if (source_fps <= 0) {
        const AVStream* s = in.fmt->streams[in.stream];
        const AVRational r = s->avg_frame_rate.num > 0 && s->avg_frame_rate.den > 0 ? s->avg_frame_rate : s->r_frame_rate;
        source_fps = r.num > 0 && r.den > 0 ? av_q2d(r) : 24.0;  // unknown: 24, as Hugging Face assumes
    }
    clip.fps = source_fps;
    clip.frame_indices = sample_frame_indices(clip.total_frames, clip.fps, cfg);
    size_t next = 0;  // next sampled index to fill
    int index = 0;    // index of the frame the decoder returns next
    auto drain = [&] {
        int err;
        while ((err = avcodec_receive_frame(in.codec, in.frame)) >= 0) {
            if (next < clip.frame_indices.size() && clip.frame_indices[next] == index) {  // sampled indices are distinct
                add_frame(clip, av_to_rgb(in, path), cfg, path, resize);
                ++next;
            }
            ++index;
            av_frame_unref(in.frame);
        }
        if (err != AVERROR(EAGAIN) && err != AVERROR_EOF) throw Error(path + ": decoding failed (" + av_error(err) + ")");
    };
    while (next < clip.frame_indices.size() && av_read_frame(in.fmt, in.packet) >= 0) {
        if (in.packet->stream_index == in.stream) {
            const int err = avcodec_send_packet(in.codec, in.packet);  // never EAGAIN: drained after each packet
            av_packet_unref(in.packet);
            if (err < 0 && err != AVERROR_INVALIDDATA) throw Error(path + ": decoding failed (" + av_error(err) + ")");  // damaged packets are skipped
            drain();
        } else {
            av_packet_unref(in.packet);
        }
    }
    if (next < clip.frame_indices.size()) {
        avcodec_send_packet(in.codec, nullptr);  // flush the decoder's delayed frames
        drain();
    }
    if (clip.frames.empty()) throw Error(path + ": no frame could be decoded");
    for (; next < clip.frame_indices.size(); ++next) {
        clip.frame_indices[next] = clip.frame_indices[next - 1];
        clip.frames.push_back(clip.frames.back());
    }
    return clip;
}

#endif  // DEEPSTACK_WITH_FFMPEG


// Reads a video and samples its frames as Qwen3VLVideoProcessor does (via
// sample_frame_indices): n = int(total_frames / source_fps * target_fps), clamped to
// [cfg.min_frames, cfg.max_frames] and to total_frames, at round-half-even(linspace(0, total-1, n)).
// `path` is
//   - a folder: its image files sorted by name are the frames;
//   - a .txt or .lst file: frame paths one per line, relative to the list's folder;
//   - anything else: a video file decoded with FFmpeg (when built with DEEPSTACK_WITH_FFMPEG).
// source_fps: frame rate of the source; 0 takes the video file's average frame rate (24 when it
// has none, as Hugging Face assumes) and kDefaultFolderFps (2) for folders and lists.
// target_fps: sampling rate; 0 takes cfg.fps (the model's video_preprocessor_config, usually 2).
// Only the sampled frames are decoded and kept, each resized as it arrives to the processor size
// for cfg (video smart_resize over the sampled frames): pass the config the clip will be prepared
// with (with_budget(model.video_config, budget) for a host's budget); resize_frames false keeps them
// at their source size (a model with a high-resolution video stream needs them so). Inputs are regular files only
// (a FIFO, device or socket is refused without being read); a video file is opened with FFmpeg's
// "file" protocol and single-file containers only (detail::kVideoDemuxers), never playlists.
inline VideoClip load_video(const std::string& path, double source_fps, const PreprocessConfig& cfg, double target_fps = 0,
                            bool resize_frames = true) {
    if (source_fps < 0 || !std::isfinite(source_fps)) throw Error("load_video: source fps must be positive (0 = from the file)");
    const PreprocessConfig sampling = detail::with_target_fps(cfg, target_fps);
    std::error_code ec;
    const auto status = std::filesystem::status(path, ec);
    if (ec || !std::filesystem::exists(status)) throw Error(path + ": no such file or folder");
    const double folder_fps = source_fps > 0 ? source_fps : kDefaultFolderFps;
    if (std::filesystem::is_directory(status)) return detail::load_frame_files(detail::folder_frames(path), folder_fps, sampling, resize_frames);
    if (!std::filesystem::is_regular_file(status)) detail::InputFile{path};  // throws, naming what it is
    if (detail::is_frame_list(path)) return detail::load_frame_files(detail::listed_frames(path), folder_fps, sampling, resize_frames);
#ifdef DEEPSTACK_WITH_FFMPEG
    return detail::load_video_file(path, source_fps, sampling, resize_frames);
#else
    throw Error(path + ": reading video files needs FFmpeg and deepstack was built without FFmpeg; pass a folder of frames or install "
                       "libavformat-dev libavcodec-dev libswscale-dev and reconfigure");
#endif
}

}  // namespace deepstack::detail
