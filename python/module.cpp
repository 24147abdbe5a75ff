// The deepstack Python extension (deepstack._core): the library's face (Engine, Chat, Reply and
// what they carry) bound with pybind11. Requests are keyword arguments; images are paths, PIL
// images or H x W x 3 uint8 arrays. The GIL is released while the engine works and taken back
// only to call a Python callback, so Python threads can share one Engine. Library errors become
// deepstack.Error with the library's message. The package (deepstack/__init__.py) adds stream().
#include <deepstack.hpp>

#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;
using namespace deepstack;

namespace {

// ---- arguments ---------------------------------------------------------------------------------

std::string fspath(const py::handle& path) { return py::module_::import("os").attr("fspath")(path).cast<std::string>(); }

bool is_path(const py::handle& obj) { return py::isinstance<py::str>(obj) || py::hasattr(obj, "__fspath__"); }

// A PIL image (duck-typed: anything with convert() and a size, so PIL is never imported here).
bool is_pil_image(const py::handle& obj) { return py::hasattr(obj, "convert") && py::hasattr(obj, "size") && py::hasattr(obj, "mode"); }

// Pixels from an H x W x 3 uint8 array or a PIL image (converted to RGB); `what` names it in errors.
Image decoded_image(const py::handle& obj, const std::string& what) {
    py::object source = py::reinterpret_borrow<py::object>(obj);
    if (is_pil_image(obj)) source = py::module_::import("numpy").attr("asarray")(obj.attr("convert")("RGB"));
    if (!py::isinstance<py::array>(source))
        throw py::type_error(what + ": expected a path, a PIL image or an H x W x 3 uint8 numpy array, got " +
                             py::str(py::type::handle_of(obj).attr("__name__")).cast<std::string>());
    const py::array array = source.cast<py::array>();
    if (!array.dtype().is(py::dtype::of<uint8_t>()))
        throw py::value_error(what + ": the array's dtype is " + py::str(array.dtype()).cast<std::string>() + ", expected uint8");
    if (array.ndim() != 3 || array.shape(2) != 3)
        throw py::value_error(what + ": the array's shape is " + py::str(source.attr("shape")).cast<std::string>() +
                              ", expected (height, width, 3)");
    if (array.shape(0) <= 0 || array.shape(1) <= 0 || array.shape(0) > kMaxImageSide || array.shape(1) > kMaxImageSide)
        throw py::value_error(what + ": " + std::to_string(array.shape(1)) + "x" + std::to_string(array.shape(0)) +
                              " pixels; each side must be 1.." + std::to_string(kMaxImageSide));
    const auto packed = py::array_t<uint8_t, py::array::c_style>::ensure(array);  // a copy only when strided
    Image image;
    image.height = int(array.shape(0));
    image.width = int(array.shape(1));
    image.rgb.assign(packed.data(), packed.data() + packed.size());
    return image;
}

ImageInput image_input(const py::handle& obj, const std::string& what) {
    if (is_path(obj)) return ImageInput(fspath(obj));
    return ImageInput(decoded_image(obj, what));
}

// One image or a sequence of them (a lone path, array or PIL image is one image, not a sequence).
std::vector<ImageInput> image_inputs(const py::object& images) {
    std::vector<ImageInput> inputs;
    if (images.is_none()) return inputs;
    if (is_path(images) || py::isinstance<py::array>(images) || is_pil_image(images)) {
        inputs.push_back(image_input(images, "images[0]"));
        return inputs;
    }
    size_t i = 0;
    for (const py::handle item : py::iter(images)) {
        inputs.push_back(image_input(item, "images[" + std::to_string(i) + "]"));
        ++i;
    }
    return inputs;
}

// Earlier turns: a sequence of dicts {"role": "user" | "assistant" | "system", "text": str,
// "images": images (user turns)}. The library checks the roles.
std::vector<Turn> history_turns(const py::object& history) {
    std::vector<Turn> turns;
    if (history.is_none()) return turns;
    size_t i = 0;
    for (const py::handle item : py::iter(history)) {
        const std::string where = "history[" + std::to_string(i++) + "]";
        if (!py::isinstance<py::dict>(item)) throw py::type_error(where + ": expected a dict with 'role' and 'text', got " + py::repr(item).cast<std::string>());
        const py::dict d = py::reinterpret_borrow<py::dict>(item);
        for (const auto& [key, value] : d) {
            const std::string k = py::str(key).cast<std::string>();
            if (k != "role" && k != "text" && k != "images") throw py::value_error(where + ": unknown key '" + k + "' (role, text, images)");
        }
        if (!d.contains("role") || !py::isinstance<py::str>(d["role"])) throw py::type_error(where + ": 'role' must be a str");
        if (!d.contains("text") || !py::isinstance<py::str>(d["text"])) throw py::type_error(where + ": 'text' must be a str");
        Turn turn;
        turn.role = d["role"].cast<std::string>();
        turn.text = d["text"].cast<std::string>();
        if (d.contains("images")) turn.images = image_inputs(py::reinterpret_borrow<py::object>(d["images"]));
        turns.push_back(std::move(turn));
    }
    return turns;
}

// A video file, folder or frame list (a path), or its decoded frames (a sequence of images).
std::optional<VideoInput> video_input(const py::object& video, double fps) {
    if (video.is_none()) return std::nullopt;
    VideoInput v;
    v.fps = fps;
    if (is_path(video)) {
        v.path = fspath(video);
        return v;
    }
    size_t i = 0;
    for (const py::handle frame : py::iter(video)) {
        v.frames.push_back(decoded_image(frame, "video frame " + std::to_string(i)));
        ++i;
    }
    return v;
}

Weights weights_named(const std::string& name) {
    if (name == "stored") return Weights::Stored;
    if (name == "int8") return Weights::Int8;
    if (name == "q4") return Weights::Q4;
    throw py::value_error("weights: '" + name + "' is not one of stored, int8, q4");
}

Compute compute_named(const std::string& name) {
    if (name == "exact") return Compute::Exact;
    if (name == "fast") return Compute::Fast;
    throw py::value_error("compute: '" + name + "' is not one of exact, fast");
}

const char* weights_name(Weights w) { return w == Weights::Int8 ? "int8" : w == Weights::Q4 ? "q4" : "stored"; }
const char* compute_name(Compute c) { return c == Compute::Fast ? "fast" : "exact"; }

const char* stage_name(Stage s) {
    switch (s) {
        case Stage::Preprocess: return "preprocess";
        case Stage::Vision: return "vision";
        case Stage::Prefill: return "prefill";
        case Stage::Decode: return "decode";
    }
    return "?";
}

// ---- calls ---------------------------------------------------------------------------------------

// Runs `answer(on_text, on_progress)` without the GIL. The Python callbacks run with the GIL; an
// exception they raise stops the reply and is raised again here.
template <typename Answer>
Reply call_engine(const py::object& on_text, const py::object& on_progress, Answer answer) {
    std::exception_ptr raised;
    TextCallback text;
    if (!on_text.is_none())
        text = [&](std::string_view piece) {
            py::gil_scoped_acquire gil;
            if (raised) return false;
            try {
                const py::object keep = on_text(py::str(piece.data(), piece.size()));
                return keep.is_none() || keep.cast<bool>();  // None (no return value) keeps going
            } catch (...) {
                raised = std::current_exception();
                return false;
            }
        };
    ProgressCallback progress;
    if (!on_progress.is_none())
        progress = [&](Stage stage, const Reply& so_far) {
            py::gil_scoped_acquire gil;
            if (raised) return;
            try {
                on_progress(stage_name(stage), so_far);
            } catch (...) {
                raised = std::current_exception();
            }
        };
    Reply reply;
    {
        py::gil_scoped_release nogil;
        reply = answer(text, progress);
    }
    if (raised) std::rethrow_exception(raised);
    return reply;
}

// A Chat used from Python: one turn at a time (a second thread is told so instead of racing).
struct PyChat {
    explicit PyChat(Chat c) : chat(std::move(c)) {}
    Chat chat;
    std::mutex busy;
};

// Defines cls.name(prompt, *, images, video, ...) (generate() and send()): builds the Request from
// the keyword arguments, then returns answer(self, request, on_text, on_progress) run by call_engine.
template <typename Self, typename Class, typename Answer>
void def_request_method(Class& cls, const char* name, Answer answer, const char* doc) {
    cls.def(
        name,
        [answer](Self& self, const std::string& prompt, const py::object& images, const py::object& video, double fps,
                 const std::optional<std::string>& system, const py::object& history, std::optional<int> max_new_tokens,
                 std::optional<int> min_new_tokens, std::optional<bool> ignore_eos, std::optional<float> temperature,
                 std::optional<float> top_p, std::optional<int> top_k, std::optional<float> min_p, std::optional<float> repetition_penalty,
                 std::optional<float> presence_penalty, std::optional<uint64_t> seed, std::vector<int> stop_token_ids,
                 const py::object& on_text, const py::object& on_progress) {
            Request r;
            r.prompt = prompt;
            r.system = system.value_or("");
            r.history = history_turns(history);
            r.images = image_inputs(images);
            r.video = video_input(video, fps);
            Sampling& s = r.sampling;
            s.max_new_tokens = max_new_tokens, s.min_new_tokens = min_new_tokens, s.ignore_eos = ignore_eos;
            s.temperature = temperature, s.top_p = top_p, s.top_k = top_k, s.min_p = min_p;
            s.repetition_penalty = repetition_penalty, s.presence_penalty = presence_penalty, s.seed = seed;
            s.stop_token_ids = std::move(stop_token_ids);
            return call_engine(on_text, on_progress, [&](const TextCallback& text, const ProgressCallback& progress) {
                return answer(self, r, text, progress);
            });
        },
        py::arg("prompt") = "", py::kw_only(), py::arg("images") = py::none(), py::arg("video") = py::none(), py::arg("fps") = 0.0,
        py::arg("system") = py::none(), py::arg("history") = py::none(), py::arg("max_new_tokens") = py::none(),
        py::arg("min_new_tokens") = py::none(), py::arg("ignore_eos") = py::none(), py::arg("temperature") = py::none(),
        py::arg("top_p") = py::none(), py::arg("top_k") = py::none(), py::arg("min_p") = py::none(),
        py::arg("repetition_penalty") = py::none(), py::arg("presence_penalty") = py::none(), py::arg("seed") = py::none(),
        py::arg("stop_token_ids") = std::vector<int>(), py::arg("on_text") = py::none(), py::arg("on_progress") = py::none(), doc);
}

const char* kRequestDoc = R"(Answers one request and returns a Reply.

prompt: the request after the images and the video.
images: one image or a list: paths, PIL images or H x W x 3 uint8 numpy arrays.
video: a video file, a folder of frames, a .txt list of frame files, or a list of frames (as
    images, all of one size); fps: the source's frame rate (0: the file's own, 2 for frames).
system: a system message before the request (None: none).
history: earlier turns after the system message, oldest first: dicts {"role": "user",
    "assistant" or "system", "text": str, "images": images (user turns only)}.
max_new_tokens, min_new_tokens (no end token before this many), ignore_eos (True: the reply
    runs to max_new_tokens), temperature (0: greedy), top_p, top_k, min_p, repetition_penalty,
    presence_penalty, seed, stop_token_ids: sampling; None takes the model's
    generation_config.json.
on_text(piece): called with the reply as it is produced; returning False stops it.
on_progress(stage, reply_so_far): called as "preprocess", "vision", "prefill" and "decode" end.
Raises deepstack.Error when the library fails (the message says what and where).)";

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "deepstack: Qwen3-VL vision-language models on the CPU (the C++ library's Python binding)";
    py::register_exception<Error>(m, "Error", PyExc_RuntimeError);

    py::class_<Box>(m, "Box", "A grounding box (or point: x1 == x2, y1 == y2) in pixels of the image.")
        .def_readonly("label", &Box::label)
        .def_readonly("x1", &Box::x1)
        .def_readonly("y1", &Box::y1)
        .def_readonly("x2", &Box::x2)
        .def_readonly("y2", &Box::y2)
        .def("__repr__", [](const Box& b) {
            return "Box(label=" + py::repr(py::str(b.label)).cast<std::string>() + ", x1=" + std::to_string(b.x1) +
                   ", y1=" + std::to_string(b.y1) + ", x2=" + std::to_string(b.x2) + ", y2=" + std::to_string(b.y2) + ")";
        });

    py::class_<Timings>(m, "Timings", "Seconds of each stage of a reply.")
        .def_readonly("preprocess_seconds", &Timings::preprocess_seconds)
        .def_readonly("vision_seconds", &Timings::vision_seconds)
        .def_readonly("prefill_seconds", &Timings::prefill_seconds)
        .def_readonly("decode_seconds", &Timings::decode_seconds);

    py::class_<InputInfo>(m, "InputInfo", "An image or the video of a request as the model saw it.")
        .def_readonly("is_video", &InputInfo::is_video)
        .def_readonly("path", &InputInfo::path)
        .def_readonly("width", &InputInfo::width)
        .def_readonly("height", &InputInfo::height)
        .def_readonly("resized_width", &InputInfo::resized_width)
        .def_readonly("resized_height", &InputInfo::resized_height)
        .def_readonly("visual_tokens", &InputInfo::visual_tokens)
        .def_readonly("fps", &InputInfo::fps)
        .def_readonly("total_frames", &InputInfo::total_frames)
        .def_readonly("frame_indices", &InputInfo::frame_indices);

    py::class_<Sampling>(m, "Sampling", "Sampling settings; in a Reply every field is set.")
        .def_readonly("temperature", &Sampling::temperature)
        .def_readonly("top_k", &Sampling::top_k)
        .def_readonly("top_p", &Sampling::top_p)
        .def_readonly("min_p", &Sampling::min_p)
        .def_readonly("repetition_penalty", &Sampling::repetition_penalty)
        .def_readonly("presence_penalty", &Sampling::presence_penalty)
        .def_readonly("seed", &Sampling::seed)
        .def_readonly("max_new_tokens", &Sampling::max_new_tokens)
        .def_readonly("stop_token_ids", &Sampling::stop_token_ids);

    py::class_<Reply>(m, "Reply", "The answer to a request.")
        .def_readonly("text", &Reply::text)
        .def_readonly("tokens", &Reply::tokens)
        .def_readonly("prompt_tokens", &Reply::prompt_tokens)
        .def_readonly("generated_tokens", &Reply::generated_tokens)
        .def_property_readonly("stop_reason", [](const Reply& r) { return stop_reason_name(r.stop); })
        .def_readonly("timings", &Reply::timings)
        .def_readonly("inputs", &Reply::inputs)
        .def_readonly("sampling", &Reply::sampling)
        .def_readonly("boxes", &Reply::boxes)
        .def("__repr__", [](const Reply& r) {
            return "Reply(text=" + py::repr(py::str(r.text)).cast<std::string>() + ", prompt_tokens=" + std::to_string(r.prompt_tokens) +
                   ", generated_tokens=" + std::to_string(r.generated_tokens) + ", stop_reason='" + stop_reason_name(r.stop) + "')";
        });

    py::class_<EngineOptions>(m, "EngineOptions", "How an Engine loaded its model.")
        .def_readonly("threads", &EngineOptions::threads)
        .def_property_readonly("weights", [](const EngineOptions& o) { return weights_name(o.weights); })
        .def_property_readonly("compute", [](const EngineOptions& o) { return compute_name(o.compute); })
        .def_readonly("map_weights", &EngineOptions::map_weights)
        .def_readonly("min_pixels", &EngineOptions::min_pixels)
        .def_readonly("max_pixels", &EngineOptions::max_pixels)
        .def_readonly("video_min_pixels", &EngineOptions::video_min_pixels)
        .def_readonly("video_max_pixels", &EngineOptions::video_max_pixels)
        .def_readonly("max_context", &EngineOptions::max_context);

    py::class_<PyChat> chat(m, "Chat",
                            "A conversation with one Engine: each send() adds a user turn and returns the reply; later turns reuse the "
                            "cache of the earlier ones. One turn at a time.");
    def_request_method<PyChat>(
        chat, "send",
        [](PyChat& c, const Request& request, const TextCallback& text, const ProgressCallback& progress) {
            std::unique_lock<std::mutex> lock(c.busy, std::try_to_lock);
            if (!lock.owns_lock()) throw Error("chat: a turn is already running in another thread; a Chat takes one turn at a time");
            return c.chat.send(request, text, progress);
        },
        kRequestDoc);
    chat.def_property_readonly("tokens", [](const PyChat& c) { return c.chat.tokens(); }, "Tokens of the conversation so far.");

    py::class_<Engine> engine(m, "Engine",
                              "A loaded model with its tokenizer and sampling defaults; any number of threads may call "
                              "generate() at once.");
    engine.def(py::init([](const py::object& model_dir, std::optional<int> threads, const std::string& weights, const std::string& compute,
                           bool map_weights, int64_t min_pixels, int64_t max_pixels, int64_t video_min_pixels, int64_t video_max_pixels,
                           int max_context) {
                   EngineOptions o;
                   o.threads = threads.value_or(0);
                   o.weights = weights_named(weights);
                   o.compute = compute_named(compute);
                   o.map_weights = map_weights;
                   o.min_pixels = min_pixels, o.max_pixels = max_pixels;
                   o.video_min_pixels = video_min_pixels, o.video_max_pixels = video_max_pixels;
                   o.max_context = max_context;
                   const std::string dir = fspath(model_dir);
                   py::gil_scoped_release nogil;
                   return Engine::open(dir, o);
               }),
               py::arg("model_dir"), py::kw_only(), py::arg("threads") = py::none(), py::arg("weights") = "stored",
               py::arg("compute") = "exact", py::arg("map_weights") = false, py::arg("min_pixels") = 0, py::arg("max_pixels") = 0,
               py::arg("video_min_pixels") = 0, py::arg("video_max_pixels") = 0, py::arg("max_context") = EngineOptions().max_context,
               R"(Loads a Hugging Face Qwen3-VL model folder (config.json, tokenizer.json, model.safetensors...).

threads: OpenMP threads of this engine's calls (None: the OpenMP default, all cores).
weights: "stored" (as in the checkpoint), "int8" or "q4" (quantized at load: smaller, faster, not exact).
compute: "exact" (fp32 activations) or "fast" (bf16 / int8 activations: faster, not exact).
map_weights: map the weight files instead of reading them into memory.
min_pixels, max_pixels, video_min_pixels, video_max_pixels: pixel budgets after resizing (0: the
    model's preprocessor configs). max_context: tokens one reply or one chat may hold.
Raises deepstack.Error naming the folder or file and the problem.)");
    def_request_method<const Engine>(
        engine, "generate",
        [](const Engine& e, const Request& request, const TextCallback& text, const ProgressCallback& progress) {
            return e.generate(request, text, progress);
        },
        kRequestDoc);
    engine.def("chat", [](const Engine& e) { return std::make_unique<PyChat>(e.chat()); }, "A new conversation with this engine's model.")
        .def_property_readonly("options", &Engine::options)
        .def_property_readonly("default_sampling", &Engine::default_sampling,
                               "The model's sampling defaults (generation_config.json), every field set.");
}
