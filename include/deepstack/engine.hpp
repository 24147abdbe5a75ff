// deepstack/engine.hpp - the library's face. Engine::open loads a model folder once; generate()
// answers a Request (prompt, images, video, sampling) and may be called from many threads at once
// (overlapping calls decode together: one pass over the weights per step for all of them, see
// EngineOptions::max_batch); chat() starts a conversation whose later turns reuse the KV cache of
// the earlier ones.
#pragma once
#include "generate.hpp"
#include "request.hpp"
#include "video.hpp"

#include <cmath>
#include <memory>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace deepstack {

namespace detail {

// What an Engine shares between its calls and threads; immutable after open, but for the
// batcher's own synchronized state.
struct EngineState {
    EngineOptions options;
    std::shared_ptr<const Model> model;
    Tokenizer tokenizer;
    SamplingParams defaults;                // generation_config.json
    std::unique_ptr<DecodeBatcher> batcher;  // null when options.max_batch is 1
    std::shared_ptr<KVCachePool> kv_pool;     // the KV caches of ended replies, for the next ones
};

// Sets the OpenMP thread count of the calling thread for one call and restores it afterwards.
// OpenMP keeps this setting (the nthreads-var ICV) per thread, so other threads of the process,
// and this one after the call, keep theirs. 0 leaves it alone.
class ThreadCountScope {
public:
    explicit ThreadCountScope(int threads) {
        if (threads < 0 || threads > kMaxThreads)
            throw Error("EngineOptions::threads = " + std::to_string(threads) + " is outside 0.." + std::to_string(kMaxThreads) +
                        " (0 keeps the calling thread's OpenMP setting)");
#ifdef _OPENMP
        if (threads > 0) {
            saved_ = omp_get_max_threads();
            omp_set_num_threads(threads);
        }
#endif
    }
    ~ThreadCountScope() {
#ifdef _OPENMP
        if (saved_ > 0) omp_set_num_threads(saved_);
#endif
    }
    ThreadCountScope(const ThreadCountScope&) = delete;
    ThreadCountScope& operator=(const ThreadCountScope&) = delete;

private:
    int saved_ = 0;
};

inline void check_options(const EngineOptions& o) {
    if (o.threads < 0) throw Error("EngineOptions::threads must be >= 0 (0: the OpenMP default)");
    if (o.max_context <= 0) throw Error("EngineOptions::max_context must be positive");
    if (o.max_batch < 1 || o.max_batch > kGemvRows)
        throw Error("EngineOptions::max_batch = " + std::to_string(o.max_batch) + " is outside 1.." + std::to_string(kGemvRows));
    if (o.min_pixels < 0 || o.max_pixels < 0 || o.video_min_pixels < 0 || o.video_max_pixels < 0)
        throw Error("EngineOptions: pixel budgets must be >= 0 (0: the model's preprocessor config)");
}

// The request's sampling over the model's defaults.
inline SamplingParams sampling_params(const SamplingParams& defaults, const Sampling& s) {
    SamplingParams p = defaults;
    p.temperature = s.temperature.value_or(p.temperature);
    p.top_k = s.top_k.value_or(p.top_k);
    p.top_p = s.top_p.value_or(p.top_p);
    p.min_p = s.min_p.value_or(p.min_p);
    p.repetition_penalty = s.repetition_penalty.value_or(p.repetition_penalty);
    p.presence_penalty = s.presence_penalty.value_or(p.presence_penalty);
    p.seed = s.seed.value_or(p.seed);
    p.max_new_tokens = s.max_new_tokens.value_or(p.max_new_tokens);
    p.min_new_tokens = s.min_new_tokens.value_or(p.min_new_tokens);
    p.ignore_eos = s.ignore_eos.value_or(p.ignore_eos);
    p.stop_token_ids.insert(p.stop_token_ids.end(), s.stop_token_ids.begin(), s.stop_token_ids.end());
    return p;
}

inline Sampling sampling_of(const SamplingParams& p) {
    Sampling s;
    s.temperature = p.temperature, s.top_k = p.top_k, s.top_p = p.top_p, s.min_p = p.min_p;
    s.repetition_penalty = p.repetition_penalty, s.presence_penalty = p.presence_penalty;
    s.seed = p.seed, s.max_new_tokens = p.max_new_tokens, s.min_new_tokens = p.min_new_tokens, s.ignore_eos = p.ignore_eos;
    s.stop_token_ids = p.stop_token_ids;
    return s;
}

// The sampled frames of a request's video; frames read from a file are resized to the processor
// size for cfg as they are decoded, unless `resize` is false.
inline VideoClip video_clip(const VideoInput& v, const PreprocessConfig& cfg, bool resize) {
    if (!v.path.empty()) return load_video(v.path, v.fps, cfg, 0, resize);
    if (v.frames.empty()) throw Error("request video: no path and no frames given");
    if (v.fps < 0 || !std::isfinite(v.fps)) throw Error("request video: fps must be positive (0: " + std::to_string(kDefaultFolderFps) + ")");
    VideoClip clip;
    clip.fps = v.fps > 0 ? v.fps : kDefaultFolderFps;
    clip.total_frames = int(std::min(v.frames.size(), size_t(INT_MAX)));
    clip.frame_indices = sample_frame_indices(clip.total_frames, clip.fps, cfg);
    for (int i : clip.frame_indices) clip.frames.push_back(v.frames[size_t(i)]);
    clip.source_width = clip.frames.front().width, clip.source_height = clip.frames.front().height;
    return clip;
}

// What the model saw of one image or video: decoded size, resized size, visual tokens.
inline InputInfo input_info(const VisualInput& in, const std::string& path, const Image& decoded, const ModelConfig& c) {
    InputInfo info;
    info.is_video = in.is_video;
    info.path = path;
    info.width = decoded.width, info.height = decoded.height;
    info.resized_width = in.patches.width, info.resized_height = in.patches.height;
    const auto& g = in.patches.grid_thw;
    info.visual_tokens = g[0] * g[1] * g[2] / (c.vision.spatial_merge_size * c.vision.spatial_merge_size);
    return info;
}

// A request as chat messages with its prepared visual inputs (and reply.inputs filled); box_width
// and box_height: the size the grounding boxes refer to (the first image, else the video's frames).
struct PreparedTurn {
    std::vector<Message> messages;
    std::vector<VisualInput> visuals;
    int box_width = 0, box_height = 0;
};

// Adds `images` to the turn's visual inputs and their parts to `message` (and reply.inputs).
inline void add_images(const EngineState& e, const std::vector<ImageInput>& images, PreparedTurn& t, Message& message, Reply& reply) {
    const Model& m = *e.model;
    for (const ImageInput& image : images) {
        const Image decoded = image.path.empty() ? Image() : load_image(image.path);
        const Image& img = image.path.empty() ? image.pixels : decoded;
        t.visuals.push_back(prepare_image(m, img, {e.options.min_pixels, e.options.max_pixels}));
        reply.inputs.push_back(input_info(t.visuals.back(), image.path, img, m.config));
        if (t.visuals.size() == 1) t.box_width = img.width, t.box_height = img.height;
        message.parts.push_back(image_part(int(t.visuals.size()) - 1));
    }
}

inline PreparedTurn prepare_turn(const EngineState& e, const Request& request, Reply& reply) {
    const Model& m = *e.model;
    const EngineOptions& o = e.options;
    PreparedTurn t;
    if (!request.system.empty()) t.messages.push_back({"system", {text_part(request.system)}});
    for (size_t i = 0; i < request.history.size(); ++i) {
        const Turn& turn = request.history[i];
        const std::string where = "request history turn " + std::to_string(i) + ": ";
        if (turn.role != "user" && turn.role != "assistant" && turn.role != "system")
            throw Error(where + "role '" + turn.role + "' is not user, assistant or system");
        if (turn.role != "user" && !turn.images.empty()) throw Error(where + "only user turns take images, not " + turn.role + " turns");
        Message message{turn.role, {}};
        add_images(e, turn.images, t, message, reply);
        message.parts.push_back(text_part(turn.text));
        t.messages.push_back(std::move(message));
    }
    Message user{"user", {}};
    add_images(e, request.images, t, user, reply);
    if (request.video) {
        const PixelBudget budget{o.video_min_pixels, o.video_max_pixels};
        const bool resize = m.config.vision.fusion.type != FusionConfig::Type::StackVit;  // its high-resolution stream needs source frames
        const VideoClip clip = video_clip(*request.video, with_budget(m.video_config, budget), resize);
        t.visuals.push_back(prepare_video(m, clip, budget));
        Image source_size;  // the frames' size in the video (input_info reads width and height)
        source_size.width = clip.source_width, source_size.height = clip.source_height;
        InputInfo info = input_info(t.visuals.back(), request.video->path, source_size, m.config);
        info.fps = clip.fps, info.total_frames = clip.total_frames, info.frame_indices = clip.frame_indices;
        reply.inputs.push_back(std::move(info));
        if (t.visuals.size() == 1) t.box_width = clip.source_width, t.box_height = clip.source_height;
        user.parts.push_back(video_part(int(t.visuals.size()) - 1));
    }
    user.parts.push_back(text_part(request.prompt));
    t.messages.push_back(std::move(user));
    return t;
}

// Answers one request: prepares it, then `run(turn, params, on_text, on_stage)` generates the
// reply (on a fresh session or a conversation); reports each stage to on_progress.
template <typename Run>
Reply answer(const EngineState& e, const Request& request, const TextCallback& on_text, const ProgressCallback& on_progress, Run run) {
    // With a batcher, every product runs on its worker, and this thread's own parallel loops
    // (preparing images and video frames) run alone: a team of this thread would wake the
    // worker's threads at every region from then on (see open_engine).
    ThreadCountScope threads(e.batcher && !DecodeBatcher::inside() ? 1 : e.options.threads);
    const auto t0 = std::chrono::steady_clock::now();
    Reply reply;
    const SamplingParams params = sampling_params(e.defaults, request.sampling);
    reply.sampling = sampling_of(params);
    const PreparedTurn turn = prepare_turn(e, request, reply);
    reply.timings.preprocess_seconds = seconds_since(t0);
    if (on_progress) on_progress(Stage::Preprocess, reply);
    const StageCallback on_stage = [&](Stage stage, const GenerateResult& so_far) {
        reply.prompt_tokens = int(so_far.prompt_tokens);
        reply.timings.vision_seconds = so_far.vision_seconds;
        reply.timings.prefill_seconds = so_far.prefill_seconds;
        if (on_progress) on_progress(stage, reply);
    };
    GenerateResult r = run(turn, params, on_text, on_stage);
    reply.text = std::move(r.text);
    reply.tokens = std::move(r.tokens);
    reply.prompt_tokens = int(r.prompt_tokens);
    reply.generated_tokens = int(reply.tokens.size());
    reply.stop = r.stop;
    reply.timings.vision_seconds = r.vision_seconds;
    reply.timings.prefill_seconds = r.prefill_seconds;
    reply.timings.decode_seconds = r.decode_seconds;
    if (turn.box_width > 0) reply.boxes = parse_boxes(reply.text, turn.box_width, turn.box_height);
    if (on_progress) on_progress(Stage::Decode, reply);
    return reply;
}

inline Session::Options session_options(const EngineState& e) {
    Session::Options s;
    s.max_context = e.options.max_context;
    s.kv_pool = e.kv_pool;
    return s;
}

inline std::shared_ptr<const EngineState> open_engine(const std::string& model_dir, const EngineOptions& options) {
    check_options(options);
    ThreadCountScope threads(options.threads);
    LoadOptions load;
    load.weights = options.weights == deepstack::Weights::Int8 ? WeightFormat::Q8
                   : options.weights == deepstack::Weights::Q4 ? WeightFormat::Q4
                                                                : WeightFormat::Stored;
    load.bf16_compute = options.compute == deepstack::Compute::Fast;
    load.map_weights = options.map_weights;
    auto batcher = options.max_batch > 1 ? std::make_unique<DecodeBatcher>(options.max_batch, options.threads) : nullptr;
    // With a batcher the load runs on its worker too: an OpenMP team left on this thread would
    // outnumber the cores with the worker's, and libgomp then wakes sleeping threads at every
    // parallel region (a 2B q4 server on 2 cores: 30 000 -> 1 300 context switches in 5 s of one
    // stream, 4 streams 90 -> 99 tok/s).
    auto read_model = [&] { return Model::load(model_dir, load); };
    auto model = batcher ? batcher->exclusive(read_model) : read_model();
    Tokenizer tokenizer = Tokenizer::load(model_dir + "/tokenizer.json");
    SamplingParams defaults = load_generation_config(model_dir);
    // as many kept caches as replies decode together: a server's steady state faults no new pages
    auto kv_pool = std::make_shared<KVCachePool>(size_t(options.max_batch));
    return std::make_shared<const EngineState>(
        EngineState{options, std::move(model), std::move(tokenizer), std::move(defaults), std::move(batcher), std::move(kv_pool)});
}

// One reply on a fresh session.
inline GenerateResult generate_once(const EngineState& e, const PreparedTurn& turn, const SamplingParams& params, const TextCallback& on_text,
                                    const StageCallback& on_stage) {
    Session session(e.model, session_options(e));
    const std::vector<int> prompt = build_prompt_ids(e.tokenizer, e.model->config, turn.messages, turn.visuals, true);
    return generate(session, e.tokenizer, prompt, turn.visuals, params, on_text, on_stage, e.batcher.get());
}

}  // namespace detail

class Engine;

// A conversation with one Engine: each send() adds a user turn (its images, video and prompt) and
// generates the assistant's reply; later turns prefill only their new tokens. A system message is
// taken from the first turn's request only. One Chat is used by one thread at a time; it keeps
// its Engine's model alive. Its replies decode in the engine's shared steps like generate()'s.
class Chat {
public:
    Reply send(const Request& request, const TextCallback& on_text = {}, const ProgressCallback& on_progress = {}) {
        if (!request.system.empty() && !conversation_.ids().empty())
            throw Error("chat: a system message can only open the chat, not a later turn");
        return detail::answer(*engine_, request, on_text, on_progress,
                              [&](const detail::PreparedTurn& turn, const detail::SamplingParams& params, const TextCallback& text,
                                  const detail::StageCallback& stage) {
                                  return conversation_.send(turn.messages, turn.visuals, params, text, stage, engine_->batcher.get());
                              });
    }

    // Tokens of the conversation so far (prompts and replies).
    int tokens() const { return int(conversation_.ids().size()); }

private:
    friend class Engine;
    explicit Chat(std::shared_ptr<const detail::EngineState> engine)
        : engine_(std::move(engine)), conversation_(engine_->model, engine_->tokenizer, detail::session_options(*engine_)) {}

    std::shared_ptr<const detail::EngineState> engine_;
    detail::Conversation conversation_;
};

// A loaded model with its tokenizer and sampling defaults. Immutable and thread-safe: any number
// of threads may call generate() at once (each call has its own KV cache); calls that overlap
// decode together, their tokens of each step in one pass over the weights (EngineOptions::
// max_batch), with the replies they would get alone. Copies and moves share the loaded model.
class Engine {
public:
    // Loads a Hugging Face model folder: config.json, tokenizer.json, model.safetensors (or its
    // index and shards), the preprocessor configs and generation_config.json (when present).
    // Throws deepstack::Error naming the folder or file and the problem.
    static Engine open(const std::string& model_dir, const EngineOptions& options = {}) {
        return Engine(detail::open_engine(model_dir, options));
    }

    // Answers one request; on_text receives the reply as it is produced and may stop it,
    // on_progress is told as each stage ends.
    Reply generate(const Request& request, const TextCallback& on_text = {}, const ProgressCallback& on_progress = {}) const {
        return detail::answer(*state_, request, on_text, on_progress,
                              [&](const detail::PreparedTurn& turn, const detail::SamplingParams& params, const TextCallback& text,
                                  const detail::StageCallback& stage) { return detail::generate_once(*state_, turn, params, text, stage); });
    }

    // A new conversation with this engine's model.
    Chat chat() const { return Chat(state_); }

    const EngineOptions& options() const { return state_->options; }
    // The model's sampling defaults (generation_config.json), every field set.
    Sampling default_sampling() const { return detail::sampling_of(state_->defaults); }

private:
    explicit Engine(std::shared_ptr<const detail::EngineState> state) : state_(std::move(state)) {}

    std::shared_ptr<const detail::EngineState> state_;
};

}  // namespace deepstack
