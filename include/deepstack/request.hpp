// deepstack/request.hpp - the public types of the Engine: how it loads a model (EngineOptions),
// what a host asks (Request: prompt, images, video, sampling) and what it gets back (Reply), and
// the callbacks that stream the text and report progress.
#pragma once
#include "grounding.hpp"
#include "image.hpp"

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace deepstack {

// How the large weight matrices are held: as stored in the checkpoint (bf16 or f32), or quantized
// at load to 8 bits or 4 bits per weight (smaller and faster to decode, not exact).
enum class Weights { Stored, Int8, Q4 };

// Exact: fp32 activations, the reference results. Fast: bf16 activations in the matrix products
// and the attention of vision and prefill, int8 activations with quantized weights (not exact).
enum class Compute { Exact, Fast };

struct EngineOptions {
    // OpenMP threads of this engine's work; 0 takes the calling thread's OpenMP setting. Applied to
    // the calling thread for the duration of each call and restored afterwards: the process's
    // OpenMP setting is left alone.
    int threads = 0;
    Weights weights = Weights::Stored;
    Compute compute = Compute::Exact;
    // Stored weights are read into memory by default; true maps the safetensors files instead
    // (instant load, pages shared with other processes; decode is slower on 4 KiB pages).
    bool map_weights = false;
    // Pixel budgets after resizing, 0 = the model's preprocessor configs: an image's area, and the
    // area of all of a video's frames together. Fewer pixels, fewer visual tokens, faster.
    int64_t min_pixels = 0, max_pixels = 0;
    int64_t video_min_pixels = 0, video_max_pixels = 0;
    // Tokens one reply (or one chat) may hold: prompt, visual tokens and reply.
    int max_context = 32768;
    // Replies of this engine generated at the same time (generate() and Chat::send() on several
    // threads) decode together: each step runs the next token of up to max_batch of them in one
    // pass over the weights, which costs little more than one token; a new reply's prefill runs
    // between two steps. Results are the same as alone. The prefills and steps run on a thread
    // the engine starts for them (with `threads` OpenMP threads, 0: the setting of the thread
    // that opens the engine); the stage callbacks of the vision stage run there too. 1..8; 1: each
    // reply runs on its caller's thread on its own (in parallel with the others, each with its
    // own OpenMP threads).
    int max_batch = 8;
};

// How the reply's tokens are picked. Every unset field takes the model's default from its
// generation_config.json (greedy without that file); set temperature = 0 for greedy decoding.
struct Sampling {
    std::optional<float> temperature;         // 0: greedy (the most likely token)
    std::optional<int> top_k;                 // sample among the k most likely tokens; 0 keeps all
    std::optional<float> top_p;               // ... among the most likely up to total probability p; 1 keeps all
    std::optional<float> min_p;               // drop tokens less likely than min_p times the most likely; 0 keeps all
    std::optional<float> repetition_penalty;  // tokens of the prompt and reply: logit / r (* r if negative); 1 is off
    std::optional<float> presence_penalty;    // subtracted from tokens already in the reply; 0 is off
    std::optional<uint64_t> seed;             // the sampler's seed: same seed, same reply
    std::optional<int> max_new_tokens;        // the reply ends after this many tokens (or when the context is full)
    std::optional<int> min_new_tokens;        // end tokens are not picked before the reply has this many; 0 is off
    std::optional<bool> ignore_eos;           // true: end tokens are never picked (the reply runs to max_new_tokens)
    std::vector<int> stop_token_ids;          // end tokens besides the model's own
};

// An image of a request: a file to decode (PNG, JPEG, BMP, GIF, TGA, PNM, ...) or decoded pixels.
struct ImageInput {
    ImageInput(std::string file) : path(std::move(file)) {}
    ImageInput(const char* file) : path(file) {}
    ImageInput(Image decoded) : pixels(std::move(decoded)) {}

    std::string path;  // empty when the pixels are given
    Image pixels;
};

// A video of a request, sampled at the model's frame rate (usually 2 per second).
struct VideoInput {
    std::string path;           // a video file (FFmpeg builds), a folder of frames sorted by name, or a .txt list of frame files
    std::vector<Image> frames;  // or the decoded frames in order, all of one size (when path is empty)
    double fps = 0;             // the source's frame rate; 0: the file's own, 2 for frames and folders
};

// An earlier turn of a conversation, rendered before the request's own turn: a user turn (its
// images shown before its text) or the assistant's reply to it, or a later system message.
struct Turn {
    std::string role;                 // "user", "assistant" or "system"
    std::vector<ImageInput> images;   // user turns only
    std::string text;
};

struct Request {
    std::string system;               // a system message before the request; empty: none
    std::vector<Turn> history;        // earlier turns after the system message, oldest first
    std::vector<ImageInput> images;   // shown before the prompt, in order
    std::optional<VideoInput> video;  // shown after the images
    std::string prompt;
    Sampling sampling;
};

// MaxTokens: max_new_tokens reached, or the context full.
enum class StopReason { EndToken, MaxTokens, Callback };

inline const char* stop_reason_name(StopReason r) {
    switch (r) {
        case StopReason::EndToken: return "end_token";
        case StopReason::MaxTokens: return "max_tokens";
        case StopReason::Callback: return "callback";
    }
    return "?";
}

// One image or the video of a request as the model saw it.
struct InputInfo {
    bool is_video = false;
    std::string path;                           // empty for decoded pixels
    int width = 0, height = 0;                  // as decoded (a video: its frames)
    int resized_width = 0, resized_height = 0;  // as the vision encoder took it
    int visual_tokens = 0;                      // pad tokens in the prompt
    double fps = 0;                             // video: the source's frame rate
    int total_frames = 0;                       // video: frames in the source
    std::vector<int> frame_indices;             // video: the sampled frames
};

struct Timings {
    double preprocess_seconds = 0;  // decoding and resizing the images and video, building the prompt
    double vision_seconds = 0;      // the vision encoder
    double prefill_seconds = 0;     // the prompt through the decoder, after the vision encoder
    double decode_seconds = 0;      // picking and decoding the reply's tokens
};

struct Reply {
    std::string text;             // the reply, special tokens left out
    std::vector<int> tokens;      // its token ids, without the end token
    int prompt_tokens = 0;        // tokens prefilled for this reply
    int generated_tokens = 0;     // tokens.size()
    StopReason stop = StopReason::MaxTokens;
    Timings timings;
    std::vector<InputInfo> inputs;  // the images of the history's turns, then the request's images, then its video
    Sampling sampling;              // the settings used, every field set
    // Grounding boxes ("bbox_2d" / "point_2d" JSON) in the text, in pixels of the first image of
    // `inputs` (of the video's frames without images); empty without visual inputs.
    std::vector<Box> boxes;
};

// Receives the reply piece by piece (whole UTF-8 characters) as it is produced; return false to
// stop generating.
using TextCallback = std::function<bool(std::string_view piece)>;

// The stages of a reply, in the order they end.
enum class Stage { Preprocess, Vision, Prefill, Decode };

// Called as each stage ends (Vision only with images or a video) with the reply so far: after
// Preprocess its inputs and prompt_tokens are set, each stage adds its timing, after Decode it is
// complete.
using ProgressCallback = std::function<void(Stage stage, const Reply& so_far)>;

}  // namespace deepstack
