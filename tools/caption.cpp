// deepstack-caption: describes images with a Qwen3-VL model folder (the Hugging Face layout),
// streaming the reply to stdout; progress and timings go to stderr. --json prints one JSON object
// instead. Exit 0 on success, 1 on any error ("error: ..." on stderr).
#include <deepstack.hpp>
#include <deepstack/grounding.hpp>
#include <deepstack/video.hpp>

#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <optional>

using namespace deepstack;

namespace {

const char* kUsage = R"(usage: deepstack-caption --model DIR [options] IMAGE... [--video PATH]
Describes the images (and video) with a Qwen3-VL model: the text streams to stdout, progress and
timings go to stderr. Sampling defaults come from the model's generation_config.json (greedy
without it).

  --model DIR              Hugging Face model folder: config.json, tokenizer.json, model.safetensors
                           (get one: hf download Qwen/Qwen3-VL-2B-Instruct --local-dir models/Qwen3-VL-2B-Instruct)
  --prompt TEXT            the request after the images (default "Describe this image.")
  --system TEXT            a system message before the request (default: none)
  --max-new-tokens N       stop the reply after N tokens (default 1024)
  --temperature T          sampling temperature; 0 is greedy (always the most likely token)
  --top-k K                sample among the K most likely tokens; 0 = all
  --top-p P                sample among the most likely tokens up to total probability P; 1 = all
  --min-p P                drop tokens less likely than P times the most likely one; 0 = off
  --repetition-penalty R   penalise tokens of the prompt and reply (logit / R, or * R if negative); 1 = off
  --presence-penalty X     subtract X from tokens already in the reply (model card: 1.5); 0 = off
  --seed S                 sampler seed (default 0: the same reply on every run)
  --threads N              OpenMP threads (default: all cores)
  --weights F              bf16 (as stored, default), int8 or q4: quantize the large matrices at load
                           (smaller and faster to decode, not exact)
  --compute C              f32 (exact, default) or bf16: bf16 activations in the matrix products (faster, not exact)
  --map-weights            map the weight files instead of reading them into memory (instant load,
                           shared page cache; decode is slower on 4 KiB pages)
  --min-pixels N           smallest image area after resizing (default: preprocessor_config.json)
  --max-pixels N           largest image area after resizing; fewer pixels, fewer tokens, faster
  --video PATH             a video after the images: a folder of frames (sorted by name), a .txt list
                           of frame files, or a video file (when built with FFmpeg); sampled at 2 fps
  --fps F                  frame rate of the --video source (default: the video file's; 2 for frames)
  --boxes OUT.png          draw the boxes of a grounding reply ("bbox_2d" JSON) on the first image
  --json                   print one JSON object (text, token counts, timings) instead of streaming
  -h, --help               this help
)";

const char* kGetModel =
    "get Qwen3-VL-2B-Instruct with\n"
    "  hf download Qwen/Qwen3-VL-2B-Instruct --local-dir models/Qwen3-VL-2B-Instruct\n"
    "or\n"
    "  git lfs install && git clone https://huggingface.co/Qwen/Qwen3-VL-2B-Instruct models/Qwen3-VL-2B-Instruct\n"
    "and pass --model models/Qwen3-VL-2B-Instruct";

struct Args {
    std::string model_dir, prompt = "Describe this image.", system;
    std::vector<std::string> images;
    std::string video, boxes_png;
    double video_fps = 0;  // 0: the file's own rate, 2 for folders and lists
    // Sampling flags override generation_config.json only when given.
    std::optional<float> temperature, top_p, min_p, repetition_penalty, presence_penalty;
    std::optional<int> top_k, max_new_tokens;
    std::optional<uint64_t> seed;
    int threads = 0;
    LoadOptions load;
    PixelBudget budget;
    bool json = false;
};

double parse_number(const std::string& flag, const std::string& text) {
    char* end = nullptr;
    const double v = std::strtod(text.c_str(), &end);
    if (text.empty() || *end || !std::isfinite(v)) throw Error(flag + ": '" + text + "' is not a number");
    return v;
}

int64_t parse_count(const std::string& flag, const std::string& text) {
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(text.c_str(), &end, 10);
    if (text.empty() || *end || errno || v < 0) throw Error(flag + ": '" + text + "' is not a non-negative integer");
    return v;
}

int parse_int(const std::string& flag, const std::string& text) {
    const int64_t v = parse_count(flag, text);
    if (v > (int64_t(1) << 30)) throw Error(flag + ": " + text + " is too large");
    return int(v);
}

// Returns false when --help was asked for.
bool parse_args(int argc, char** argv, Args& a) {
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw Error(flag + " needs a value (see --help)");
            return argv[++i];
        };
        if (flag == "-h" || flag == "--help") return false;
        else if (flag == "--model") a.model_dir = value();
        else if (flag == "--prompt") a.prompt = value();
        else if (flag == "--system") a.system = value();
        else if (flag == "--max-new-tokens") a.max_new_tokens = parse_int(flag, value());
        else if (flag == "--temperature") a.temperature = float(parse_number(flag, value()));
        else if (flag == "--top-k") a.top_k = parse_int(flag, value());
        else if (flag == "--top-p") a.top_p = float(parse_number(flag, value()));
        else if (flag == "--min-p") a.min_p = float(parse_number(flag, value()));
        else if (flag == "--repetition-penalty") a.repetition_penalty = float(parse_number(flag, value()));
        else if (flag == "--presence-penalty") a.presence_penalty = float(parse_number(flag, value()));
        else if (flag == "--seed") a.seed = uint64_t(parse_count(flag, value()));
        else if (flag == "--threads") a.threads = parse_int(flag, value());
        else if (flag == "--weights") {
            const std::string w = value();
            if (w != "bf16" && w != "int8" && w != "q4") throw Error("--weights: '" + w + "' is not one of bf16, int8, q4");
            a.load.weights = w == "int8" ? WeightFormat::Q8 : w == "q4" ? WeightFormat::Q4 : WeightFormat::Stored;
        } else if (flag == "--compute") {
            const std::string c = value();
            if (c != "f32" && c != "bf16") throw Error("--compute: '" + c + "' is not one of f32, bf16");
            a.load.bf16_compute = c == "bf16";
        } else if (flag == "--map-weights")
            a.load.map_weights = true;
        else if (flag == "--min-pixels") a.budget.min_pixels = parse_count(flag, value());
        else if (flag == "--max-pixels") a.budget.max_pixels = parse_count(flag, value());
        else if (flag == "--json") a.json = true;
        else if (flag == "--video") a.video = value();
        else if (flag == "--fps") a.video_fps = parse_number(flag, value());
        else if (flag == "--boxes") a.boxes_png = value();
        else if (flag.size() > 1 && flag[0] == '-') throw Error("unknown flag '" + flag + "' (see --help)");
        else a.images.push_back(flag);
    }
    if (a.model_dir.empty()) throw Error(std::string("--model DIR is required; ") + kGetModel);
    if (a.images.empty() && a.video.empty()) throw Error("no IMAGE or --video given (see --help)");
    if (!a.boxes_png.empty() && a.images.empty()) throw Error("--boxes draws on the first IMAGE; give one");
    if (a.video_fps < 0) throw Error("--fps must be positive");
    return true;
}

bool is_file(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Checks the model folder up front so a missing download gets advice rather than a parse error.
void check_model_folder(const std::string& dir) {
    struct stat st {};
    std::string problem;
    if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) problem = "no such model folder";
    else if (!is_file(dir + "/config.json")) problem = "the model folder has no config.json";
    else if (!is_file(dir + "/tokenizer.json")) problem = "the model folder has no tokenizer.json";
    else if (!is_file(dir + "/model.safetensors") && !is_file(dir + "/model.safetensors.index.json"))
        problem = "the model folder has no model.safetensors (or model.safetensors.index.json); is the download incomplete?";
    if (!problem.empty()) throw Error(dir + ": " + problem + "\n" + kGetModel);
}

void progress(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void progress(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::fputs("deepstack-caption: ", stderr);
    std::vfprintf(stderr, fmt, ap);
    std::fputc('\n', stderr);
    va_end(ap);
}

// A float setting as the decimal it was written as (0.7, not 0.699999988), for the JSON report.
double decimal(float x) { return std::round(double(x) * 1e6) / 1e6; }

int run(const Args& a) {
    check_model_folder(a.model_dir);
    auto t0 = std::chrono::steady_clock::now();
    progress("loading %s", a.model_dir.c_str());
    LoadOptions load_options = a.load;
    load_options.threads = a.threads;
    const auto model = Model::load(a.model_dir, load_options);
    const Tokenizer tokenizer = Tokenizer::load(a.model_dir + "/tokenizer.json");
    SamplingParams params = load_generation_config(a.model_dir);
    const double load_seconds = detail::seconds_since(t0);
    const ModelConfig& c = model->config;
    progress("loaded in %.2f s (decoder %d layers x %d, vision %d blocks x %d)", load_seconds, c.text.num_hidden_layers,
             c.text.hidden_size, c.vision.depth, c.vision.hidden_size);

    if (a.temperature) params.temperature = *a.temperature;
    if (a.top_k) params.top_k = *a.top_k;
    if (a.top_p) params.top_p = *a.top_p;
    if (a.min_p) params.min_p = *a.min_p;
    if (a.repetition_penalty) params.repetition_penalty = *a.repetition_penalty;
    if (a.presence_penalty) params.presence_penalty = *a.presence_penalty;
    if (a.seed) params.seed = *a.seed;
    if (a.max_new_tokens) params.max_new_tokens = *a.max_new_tokens;

    t0 = std::chrono::steady_clock::now();
    const int merge2 = c.vision.spatial_merge_size * c.vision.spatial_merge_size;
    std::vector<VisualInput> visuals;
    std::vector<Message> messages;
    if (!a.system.empty()) messages.push_back({"system", {text_part(a.system)}});
    Message request{"user", {}};
    nlohmann::json images = nlohmann::json::array(), video;
    Image first_image;  // --boxes draws on it
    for (const std::string& path : a.images) {
        const Image img = load_image(path);
        if (visuals.empty()) first_image = img;
        visuals.push_back(prepare_image(*model, img, a.budget));
        const VisualPatches& p = visuals.back().patches;
        const int tokens = p.grid_thw[0] * p.grid_thw[1] * p.grid_thw[2] / merge2;
        progress("%s: %dx%d -> %dx%d, %d visual tokens", path.c_str(), img.width, img.height, p.width, p.height, tokens);
        images.push_back({{"path", path}, {"width", img.width}, {"height", img.height}, {"resized_width", p.width},
                          {"resized_height", p.height}, {"visual_tokens", tokens}});
        request.parts.push_back(image_part(int(visuals.size()) - 1));
    }
    if (!a.video.empty()) {
        const VideoClip clip = load_video(a.video, a.video_fps, model->video_config);
        visuals.push_back(prepare_video(*model, clip.frames, clip.frame_indices, clip.fps));
        const VisualPatches& p = visuals.back().patches;
        const int tokens = p.grid_thw[0] * p.grid_thw[1] * p.grid_thw[2] / merge2;
        progress("%s: %zu of %d frames at %.3g fps, %dx%d -> %dx%d, %d temporal patches, %d visual tokens", a.video.c_str(),
                 clip.frames.size(), clip.total_frames, clip.fps, clip.frames[0].width, clip.frames[0].height, p.width, p.height,
                 p.grid_thw[0], tokens);
        video = {{"path", a.video}, {"fps", clip.fps}, {"total_frames", clip.total_frames}, {"frame_indices", clip.frame_indices},
                 {"width", clip.frames[0].width}, {"height", clip.frames[0].height}, {"resized_width", p.width},
                 {"resized_height", p.height}, {"visual_tokens", tokens}};
        request.parts.push_back(video_part(int(visuals.size()) - 1));
    }
    request.parts.push_back(text_part(a.prompt));
    messages.push_back(std::move(request));
    const std::vector<int> prompt = build_prompt_ids(tokenizer, c, messages, visuals, true);
    const VisualCost cost = estimate_visual_cost(c, visuals);
    const int64_t kv_bytes = int64_t(prompt.size() + size_t(params.max_new_tokens)) * c.text.num_hidden_layers * 2 *
                             c.text.num_key_value_heads * c.text.head_dim * int64_t(sizeof(float));
    progress("estimate: %lld visual tokens, %.2f GB for vision encoding, %.2f GB KV cache for %zu + %d tokens",
             (long long)cost.visual_tokens, cost.vision_bytes / 1e9, kv_bytes / 1e9, prompt.size(), params.max_new_tokens);
    const double preprocess_seconds = detail::seconds_since(t0);
    progress("preprocessed %zu input%s in %.2f s; prompt of %zu tokens", visuals.size(), visuals.size() == 1 ? "" : "s",
             preprocess_seconds, prompt.size());

    Session session(model);
    auto stream = [&](const std::string& piece) {
        if (!a.json) {
            std::fwrite(piece.data(), 1, piece.size(), stdout);
            std::fflush(stdout);
        }
        return true;
    };
    auto stage_done = [&](const std::string& stage, double seconds) {
        if (stage == "prefill") progress("prefill: %zu tokens in %.2f s (%.1f tokens/s)", prompt.size(), seconds, prompt.size() / seconds);
        else progress("%s: %.2f s", stage.c_str(), seconds);
    };
    const GenerateResult r = generate(session, tokenizer, prompt, visuals, params, stream, stage_done);
    const double tokens_per_second = r.decode_seconds > 0 ? double(r.tokens.size()) / r.decode_seconds : 0.0;
    if (!a.json) std::fputc('\n', stdout);
    std::fflush(stdout);
    progress("generated %zu tokens in %.2f s (%.1f tokens/s); stopped: %s", r.tokens.size(), r.decode_seconds, tokens_per_second,
             r.stop == StopReason::EndToken ? "end token" : r.stop == StopReason::MaxTokens ? "max new tokens" : "by the caller");
    nlohmann::json boxes = nlohmann::json::array();
    if (!a.boxes_png.empty()) {
        const std::vector<Box> found = parse_boxes(r.text, first_image.width, first_image.height);
        draw_boxes(first_image, found, a.boxes_png);
        for (const Box& b : found) boxes.push_back({{"label", b.label}, {"box", {b.x1, b.y1, b.x2, b.y2}}});
        progress("%zu box%s found in the reply, drawn on %s", found.size(), found.size() == 1 ? "" : "es", a.boxes_png.c_str());
    }

    if (a.json) {
        const nlohmann::json out = {
            {"model", a.model_dir},
            {"images", images},
            {"video", video},
            {"boxes", boxes},
            {"prompt", a.prompt},
            {"text", r.text},
            {"prompt_tokens", r.prompt_tokens},
            {"generated_tokens", r.tokens.size()},
            {"stop_reason", stop_reason_name(r.stop)},
            {"sampling", {{"temperature", decimal(params.temperature)}, {"top_k", params.top_k}, {"top_p", decimal(params.top_p)},
                          {"min_p", decimal(params.min_p)}, {"repetition_penalty", decimal(params.repetition_penalty)},
                          {"presence_penalty", decimal(params.presence_penalty)},
                          {"seed", params.seed}, {"max_new_tokens", params.max_new_tokens}}},
            {"timings", {{"load_seconds", load_seconds}, {"preprocess_seconds", preprocess_seconds}, {"vision_seconds", r.vision_seconds},
                         {"prefill_seconds", r.prefill_seconds}, {"decode_seconds", r.decode_seconds},
                         {"decode_tokens_per_second", tokens_per_second}}}};
        std::puts(out.dump(2).c_str());
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        Args args;
        if (!parse_args(argc, argv, args)) {
            std::fputs(kUsage, stdout);
            return 0;
        }
        return run(args);
    } catch (const std::exception& e) {
        std::fflush(stdout);
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
