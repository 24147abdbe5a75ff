// deepstack-caption: describes images with a Qwen3-VL model folder (the Hugging Face layout),
// streaming the reply to stdout; progress and timings go to stderr. --json prints one JSON object
// instead. Exit 0 on success, 1 on any error ("error: ..." on stderr).
#include <deepstack.hpp>

#include <nlohmann/json.hpp>
#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

using namespace deepstack;

namespace {

const char* kUsage = R"(usage: deepstack-caption --model DIR [options] IMAGE... [--video PATH]
Describes the images (and video) with a Qwen3-VL model: the text streams to stdout, progress and
timings go to stderr. Sampling defaults come from the model's generation_config.json (greedy
without it).

  --model DIR              Hugging Face model folder: config.json, tokenizer.json, model.safetensors
                           (get one: hf download Qwen/Qwen3-VL-2B-Instruct --local-dir models/Qwen3-VL-2B-Instruct)
  --prompt TEXT            the request after the images (default "Describe this image.")
  --prompt-file PATH       read the request from a file (- for stdin), for prompts longer than an argument
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

Request default_request() {
    Request r;
    r.prompt = "Describe this image.";
    return r;
}

struct Args {
    std::string model_dir, boxes_png;
    EngineOptions options;
    Request request = default_request();  // sampling flags override generation_config.json only when given
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

int parse_int(const std::string& flag, const std::string& text, int64_t max = int64_t(1) << 30) {
    const int64_t v = parse_count(flag, text);
    if (v > max) throw Error(flag + ": " + text + " is too large (at most " + std::to_string(max) + ")");
    return int(v);
}

// A range bound as a message shows it: 100, 0.5, 1e+30.
std::string number_text(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
}

// A number in [lo, hi] (in (lo, hi] when `above_lo`); `note` follows the range in the message.
double parse_in(const std::string& flag, const std::string& text, double lo, double hi, bool above_lo = false, const char* note = "") {
    const double v = parse_number(flag, text);
    if (!((above_lo ? v > lo : v >= lo) && v <= hi))
        throw Error(flag + ": " + text + " is outside " + (above_lo ? "(" : "[") + number_text(lo) + ", " +
                    number_text(hi) + "]" + note);
    return v;
}

// The prompt text of --prompt-file: a file (at most 16 MiB) or, for "-", standard input.
std::string read_prompt_file(const std::string& path) {
    if (path != "-") return advanced::read_small_file(path, kMaxConfigFileBytes, "a prompt file");
    std::string text;
    char buf[65536];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, stdin)) > 0;) {
        text.append(buf, n);
        if (int64_t(text.size()) > kMaxConfigFileBytes)
            throw Error("--prompt-file -: standard input holds more than " + std::to_string(kMaxConfigFileBytes) + " bytes");
    }
    if (std::ferror(stdin)) throw Error("--prompt-file -: cannot read standard input");
    return text;
}

// Fails when standard output could not take everything written to it (a full disk, a closed pipe).
void check_stdout() {
    if (std::fflush(stdout) != 0 || std::ferror(stdout)) throw Error(std::string("stdout: write failed (") + std::strerror(errno) + ")");
}

// The request's video, made on first use (--video and --fps may come in either order).
VideoInput& video(Args& a) {
    if (!a.request.video) a.request.video = VideoInput{};
    return *a.request.video;
}

// Returns false when --help was asked for.
bool parse_args(int argc, char** argv, Args& a) {
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw Error(flag + " needs a value (see --help)");
            return argv[++i];
        };
        Sampling& sampling = a.request.sampling;
        if (flag == "-h" || flag == "--help") return false;
        else if (flag == "--model") a.model_dir = value();
        else if (flag == "--prompt") a.request.prompt = value();
        else if (flag == "--prompt-file") a.request.prompt = read_prompt_file(value());
        else if (flag == "--system") a.request.system = value();
        else if (flag == "--max-new-tokens") sampling.max_new_tokens = parse_int(flag, value());
        else if (flag == "--temperature") sampling.temperature = float(parse_in(flag, value(), 0, advanced::kMaxTemperature, false, " (0 is greedy)"));
        else if (flag == "--top-k") sampling.top_k = parse_int(flag, value());
        else if (flag == "--top-p") sampling.top_p = float(parse_in(flag, value(), 0, 1, true));
        else if (flag == "--min-p") sampling.min_p = float(parse_in(flag, value(), 0, 1));
        else if (flag == "--repetition-penalty") sampling.repetition_penalty = float(parse_in(flag, value(), 0, advanced::kMaxPenalty, true));
        else if (flag == "--presence-penalty") sampling.presence_penalty = float(parse_in(flag, value(), -advanced::kMaxPenalty, advanced::kMaxPenalty));
        else if (flag == "--seed") sampling.seed = uint64_t(parse_count(flag, value()));
        else if (flag == "--threads") a.options.threads = parse_int(flag, value(), advanced::kMaxThreads);
        else if (flag == "--weights") {
            const std::string w = value();
            if (w != "bf16" && w != "int8" && w != "q4") throw Error("--weights: '" + w + "' is not one of bf16, int8, q4");
            a.options.weights = w == "int8" ? Weights::Int8 : w == "q4" ? Weights::Q4 : Weights::Stored;
        } else if (flag == "--compute") {
            const std::string c = value();
            if (c != "f32" && c != "bf16") throw Error("--compute: '" + c + "' is not one of f32, bf16");
            a.options.compute = c == "bf16" ? Compute::Fast : Compute::Exact;
        } else if (flag == "--map-weights")
            a.options.map_weights = true;
        else if (flag == "--min-pixels") a.options.min_pixels = parse_int(flag, value(), advanced::kMaxProcessorPixels);
        else if (flag == "--max-pixels") a.options.max_pixels = parse_int(flag, value(), advanced::kMaxProcessorPixels);
        else if (flag == "--json") a.json = true;
        else if (flag == "--video") video(a).path = value();
        else if (flag == "--fps") video(a).fps = parse_in(flag, value(), 0, 1000, true);
        else if (flag == "--boxes") a.boxes_png = value();
        else if (flag.size() > 1 && flag[0] == '-') throw Error("unknown flag '" + flag + "' (see --help)");
        else a.request.images.push_back(flag);
    }
    if (a.model_dir.empty()) throw Error(std::string("--model DIR is required; ") + kGetModel);
    const std::optional<VideoInput>& video = a.request.video;
    if (a.request.images.empty() && (!video || video->path.empty())) throw Error("no IMAGE or --video given (see --help)");
    if (!a.boxes_png.empty() && a.request.images.empty()) throw Error("--boxes draws on the first IMAGE; give one");
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

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

nlohmann::json input_json(const InputInfo& in) {
    nlohmann::json j = {{"path", in.path}, {"width", in.width}, {"height", in.height}, {"resized_width", in.resized_width},
                        {"resized_height", in.resized_height}, {"visual_tokens", in.visual_tokens}};
    if (in.is_video) j.update({{"fps", in.fps}, {"total_frames", in.total_frames}, {"frame_indices", in.frame_indices}});
    return j;
}

const char* stop_text(StopReason r) {
    return r == StopReason::EndToken ? "end token" : r == StopReason::MaxTokens ? "max new tokens" : "by the caller";
}

int run(const Args& a) {
    check_model_folder(a.model_dir);
    const auto t0 = std::chrono::steady_clock::now();
    progress("loading %s", a.model_dir.c_str());
    const Engine engine = Engine::open(a.model_dir, a.options);
    const double load_seconds = seconds_since(t0);
    const char* simd = advanced::isa_name(advanced::active_isa());  // the SIMD level the kernels run at
    progress("loaded in %.2f s (simd %s)", load_seconds, simd);

    auto stream = [&](std::string_view piece) {
        if (!a.json) {
            std::fwrite(piece.data(), 1, piece.size(), stdout);
            check_stdout();
        }
        return true;
    };
    auto stage_done = [&](Stage stage, const Reply& r) {
        const Timings& t = r.timings;
        if (stage == Stage::Preprocess) {
            for (const InputInfo& in : r.inputs) {
                if (in.is_video)
                    progress("%s: %zu of %d frames at %.3g fps, %dx%d -> %dx%d, %d visual tokens", in.path.c_str(), in.frame_indices.size(),
                             in.total_frames, in.fps, in.width, in.height, in.resized_width, in.resized_height, in.visual_tokens);
                else
                    progress("%s: %dx%d -> %dx%d, %d visual tokens", in.path.c_str(), in.width, in.height, in.resized_width, in.resized_height,
                             in.visual_tokens);
            }
            progress("preprocessed %zu input%s in %.2f s", r.inputs.size(), r.inputs.size() == 1 ? "" : "s", t.preprocess_seconds);
        } else if (stage == Stage::Vision) {
            progress("vision encoding: %.2f s (simd %s)", t.vision_seconds, simd);
        } else if (stage == Stage::Prefill) {
            progress("prefill: %d tokens in %.2f s (%.1f tokens/s, simd %s)", r.prompt_tokens, t.prefill_seconds, r.prompt_tokens / t.prefill_seconds, simd);
        }
    };
    const Reply r = engine.generate(a.request, stream, stage_done);
    const double tokens_per_second = r.timings.decode_seconds > 0 ? r.generated_tokens / r.timings.decode_seconds : 0.0;
    if (!a.json) std::fputc('\n', stdout);
    check_stdout();
    progress("generated %d tokens in %.2f s (%.1f tokens/s, simd %s); stopped: %s", r.generated_tokens, r.timings.decode_seconds, tokens_per_second, simd,
             stop_text(r.stop));
    nlohmann::json boxes = nlohmann::json::array();
    if (!a.boxes_png.empty()) {
        draw_boxes(load_image(a.request.images.front().path), r.boxes, a.boxes_png);
        for (const Box& b : r.boxes) boxes.push_back({{"label", b.label}, {"box", {b.x1, b.y1, b.x2, b.y2}}});
        progress("%zu box%s found in the reply, drawn on %s", r.boxes.size(), r.boxes.size() == 1 ? "" : "es", a.boxes_png.c_str());
    }

    if (a.json) {
        nlohmann::json images = nlohmann::json::array(), video;
        for (const InputInfo& in : r.inputs) (in.is_video ? video : images.emplace_back()) = input_json(in);
        const Sampling& s = r.sampling;
        const nlohmann::json out = {
            {"model", a.model_dir},
            {"images", images},
            {"video", video},
            {"boxes", boxes},
            {"prompt", a.request.prompt},
            {"text", r.text},
            {"prompt_tokens", r.prompt_tokens},
            {"generated_tokens", r.generated_tokens},
            {"stop_reason", stop_reason_name(r.stop)},
            {"sampling", {{"temperature", decimal(*s.temperature)}, {"top_k", *s.top_k}, {"top_p", decimal(*s.top_p)},
                          {"min_p", decimal(*s.min_p)}, {"repetition_penalty", decimal(*s.repetition_penalty)},
                          {"presence_penalty", decimal(*s.presence_penalty)}, {"seed", *s.seed}, {"max_new_tokens", *s.max_new_tokens}}},
            {"timings", {{"load_seconds", load_seconds}, {"preprocess_seconds", r.timings.preprocess_seconds},
                         {"vision_seconds", r.timings.vision_seconds}, {"prefill_seconds", r.timings.prefill_seconds},
                         {"decode_seconds", r.timings.decode_seconds}, {"decode_tokens_per_second", tokens_per_second}}}};
        // Paths and texts that are not UTF-8 (file names are bytes) print with U+FFFD in their place.
        std::puts(out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
        check_stdout();
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
    } catch (const std::bad_alloc&) {
        std::fflush(stdout);
        std::fprintf(stderr, "error: out of memory (lower --max-pixels, --max-new-tokens or the number of inputs)\n");
        return 1;
    } catch (const std::exception& e) {
        std::fflush(stdout);
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
