// deepstack-server: an OpenAI-compatible HTTP server for a Qwen3-VL model folder.
// POST /v1/chat/completions (text, images, a video; streamed or not), GET /v1/models, GET /health.
// Up to --parallel requests generate at once; more wait in a bounded queue; past it: 503.
#include "api_error.hpp"
#include "chat_request.hpp"
#include "responses.hpp"
#include "scheduler.hpp"

#include <deepstack.hpp>
#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <pthread.h>
#include <random>

using namespace deepstack;
using namespace deepstack::server;

namespace {

const char* kUsage = R"(usage: deepstack-server --model DIR [options]
Serves a Qwen3-VL model folder over HTTP with OpenAI's chat completions API:
POST /v1/chat/completions, GET /v1/models, GET /health.

  --model DIR              Hugging Face model folder: config.json, tokenizer.json, model.safetensors
  --model-name NAME        the model's name in replies and /v1/models (default: the folder's name)
  --host ADDR              address to listen on (default 127.0.0.1: this machine only)
  --port N                 port (default 8080; 0 picks a free one, printed when listening)
  --parallel N             requests generating at once (default 4); the engine decodes up to 8 of them
                           together, one step for all
  --queue N                requests waiting for a free slot (default 16); more get 503 with Retry-After
  --api-key KEY            require "Authorization: Bearer KEY" (default: no key); also read from
                           the environment variable DEEPSTACK_API_KEY
  --weights F              stored (bf16 as in the checkpoint, default), int8 or q4
  --compute C              exact (fp32 activations, default) or fast (bf16 / int8 activations)
  --threads N              OpenMP threads of the prefills and decode steps (default: all cores)
  --max-context N          tokens of one request's context: prompt, images and reply (default 32768)
  --max-body-bytes N       largest request body (default 33554432, 32 MiB); larger ones get 413
  --max-image-pixels N     largest decoded image, width * height (default 16777216)
  --max-images N           images in one request (default 16)
  --allowed-media-dir DIR  accept file:// image and video URLs inside DIR (default: refused)
  --timeout S              seconds the server waits on a silent client, reading a request or writing a reply,
                           and the most a request's body may take to arrive (default 30)
  -h, --help               this help
The server never fetches http(s) URLs: images come inline as base64 data: URLs.
)";

struct Args {
    std::string model_dir, model_name, host = "127.0.0.1", api_key;
    int port = 8080, parallel = 4, queue = 16, timeout = 30;
    size_t max_body_bytes = size_t(32) << 20;
    EngineOptions options;
    RequestLimits limits;
};

int64_t parse_int(const std::string& flag, const std::string& text, int64_t lo, int64_t hi) {
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(text.c_str(), &end, 10);
    if (text.empty() || *end || errno) throw Error(flag + ": '" + text + "' is not an integer");
    if (v < lo || v > hi) throw Error(flag + ": " + text + " is outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return v;
}

// Parses the flags; false after --help.
bool parse_args(int argc, char** argv, Args& a) {
    if (const char* key = std::getenv("DEEPSTACK_API_KEY")) a.api_key = key;
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        if (flag == "-h" || flag == "--help") return false;
        if (i + 1 >= argc) throw Error(flag + (flag.rfind("--", 0) == 0 ? " needs a value" : ": unknown argument") + " (see --help)");
        const std::string value = argv[++i];
        if (flag == "--model") a.model_dir = value;
        else if (flag == "--model-name") a.model_name = value;
        else if (flag == "--host") a.host = value;
        else if (flag == "--port") a.port = int(parse_int(flag, value, 0, 65535));
        else if (flag == "--parallel") a.parallel = int(parse_int(flag, value, 1, 256));
        else if (flag == "--queue") a.queue = int(parse_int(flag, value, 0, 4096));
        else if (flag == "--api-key") a.api_key = value;
        else if (flag == "--threads") a.options.threads = int(parse_int(flag, value, 0, advanced::kMaxThreads));
        else if (flag == "--max-context") a.options.max_context = a.limits.max_context = int(parse_int(flag, value, 16, 1 << 24));
        else if (flag == "--max-body-bytes") a.max_body_bytes = size_t(parse_int(flag, value, 1024, int64_t(1) << 32));
        else if (flag == "--max-image-pixels") a.limits.media.max_image_pixels = parse_int(flag, value, 1, kMaxImagePixels);
        else if (flag == "--max-images") a.limits.max_images = int(parse_int(flag, value, 0, 1024));
        else if (flag == "--timeout") a.timeout = int(parse_int(flag, value, 1, 3600));
        else if (flag == "--allowed-media-dir") {
            char resolved[PATH_MAX];
            if (!::realpath(value.c_str(), resolved)) throw Error(flag + ": " + value + ": no such folder");
            a.limits.media.allowed_dir = resolved;
            if (a.limits.media.allowed_dir == "/") throw Error(flag + ": the root folder would allow every file; name a folder of media");
        } else if (flag == "--weights") {
            if (value == "stored" || value == "bf16") a.options.weights = Weights::Stored;
            else if (value == "int8") a.options.weights = Weights::Int8;
            else if (value == "q4") a.options.weights = Weights::Q4;
            else throw Error(flag + ": '" + value + "' is not one of stored, int8, q4");
        } else if (flag == "--compute") {
            if (value == "exact" || value == "f32") a.options.compute = Compute::Exact;
            else if (value == "fast" || value == "bf16") a.options.compute = Compute::Fast;
            else throw Error(flag + ": '" + value + "' is not one of exact, fast");
        } else {
            throw Error("unknown flag " + flag + " (see --help)");
        }
    }
    if (a.model_dir.empty()) throw Error("--model DIR is required (see --help)");
    a.options.max_batch = std::min(a.parallel, 8);  // the engine decodes up to 8 concurrent replies in one step
    if (a.model_name.empty()) {
        std::string dir = a.model_dir;
        while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
        a.model_name = dir.substr(dir.find_last_of('/') == std::string::npos ? 0 : dir.find_last_of('/') + 1);
    }
    return true;
}

void send_error(httplib::Response& res, const ApiError& e) {
    res.status = e.status;
    res.set_content(json_text(error_json(e)), "application/json");
}

// Equal strings in a time that does not depend on where they differ.
bool same_key(const std::string& given, const std::string& key) {
    unsigned diff = unsigned(given.size() ^ key.size());
    for (size_t i = 0; i < given.size(); ++i) diff |= unsigned(uint8_t(given[i]) ^ uint8_t(key[i % (key.empty() ? 1 : key.size())]));
    return diff == 0 && !key.empty();
}

std::string completion_id() {
    static thread_local std::mt19937_64 rng(std::random_device{}());
    char id[40];
    std::snprintf(id, sizeof id, "chatcmpl-%016llx%08llx", (unsigned long long)rng(), (unsigned long long)(rng() & 0xffffffff));
    return id;
}

const char* finish_reason(const Job& job) {
    return job.reply.stop == StopReason::MaxTokens && !job.stop_string ? "length" : "stop";
}

Usage usage_of(const Reply& r) { return {r.prompt_tokens, r.generated_tokens}; }

// How long an HTTP thread waits for its job before writing a keep-alive (which notices a client
// that has gone away).
constexpr std::chrono::seconds kKeepAlive{2};

// The answer of a streamed request: server-sent events from the first chunk to [DONE].
void stream_reply(httplib::Response& res, const std::shared_ptr<Job>& job, const CompletionHead& head) {
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    auto first = std::make_shared<bool>(true);
    res.set_chunked_content_provider(
        "text/event-stream",
        [job, head, first](size_t, httplib::DataSink& sink) {
            auto send = [&](const std::string& event) {
                if (sink.write(event.data(), event.size())) return true;
                job->cancelled = true;
                return false;
            };
            if (*first) {
                *first = false;
                return send(sse_event(chunk_json(head, {{"role", "assistant"}, {"content", ""}}, nullptr)));
            }
            std::unique_lock<std::mutex> lock(job->mutex);
            if (!job->changed.wait_for(lock, kKeepAlive, [&] { return !job->pending.empty() || job->finished; }))
                return send(": keep-alive\n\n");
            std::string text;
            text.swap(job->pending);
            const bool finished = job->finished;
            lock.unlock();
            if (!text.empty() && !send(sse_event(chunk_json(head, {{"content", text}}, nullptr)))) return false;
            if (!finished) return true;
            std::string tail;
            if (job->error) {
                tail = sse_event(error_json(*job->error));
            } else {
                tail = sse_event(chunk_json(head, json::object(), finish_reason(*job)));
                if (job->chat.include_usage) tail += sse_event(usage_chunk_json(head, usage_of(job->reply)));
            }
            tail += "data: [DONE]\n\n";
            if (!send(tail)) return false;
            sink.done();
            return true;
        },
        [job](bool success) {
            if (!success) job->cancelled = true;
        });
}

// The answer of a request that is not streamed: one JSON object, preceded by spaces (which JSON
// ignores) while the reply is produced, so a client that goes away is noticed.
void whole_reply(httplib::Response& res, const std::shared_ptr<Job>& job, const CompletionHead& head) {
    std::string text;
    res.set_chunked_content_provider(
        "application/json",
        [job, head, text](size_t, httplib::DataSink& sink) mutable {
            std::unique_lock<std::mutex> lock(job->mutex);
            const bool finished = job->changed.wait_for(lock, kKeepAlive, [&] { return job->finished; });
            text += job->pending;
            job->pending.clear();
            lock.unlock();
            const std::string out =
                !finished ? std::string(" ")
                : job->error ? json_text(error_json(*job->error))
                             : json_text(completion_json(head, text, finish_reason(*job), usage_of(job->reply), job->reply.boxes));
            if (!sink.write(out.data(), out.size())) {
                job->cancelled = true;
                return false;
            }
            if (finished) sink.done();
            return true;
        },
        [job](bool success) {
            if (!success) job->cancelled = true;
        });
}

ApiError body_too_large() {
    return ApiError(413, "invalid_request_error", "request body larger than the server's limit (--max-body-bytes)", "", "body_too_large");
}

class Server {
public:
    Server(Args args, Engine engine)
        : args_(std::move(args)), engine_(std::move(engine)), scheduler_(engine_, args_.parallel, args_.queue), created_(std::time(nullptr)) {}

    // Binds, prints the address, serves until stop().
    bool run() {
        // Each request holds an HTTP thread while it waits or streams: enough for every admitted
        // request plus a few for /health, /v1/models and refusals.
        const size_t threads = size_t(args_.parallel + args_.queue + 8);
        http_.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
        http_.set_payload_max_length(args_.max_body_bytes);
        http_.set_read_timeout(args_.timeout, 0);
        http_.set_write_timeout(args_.timeout, 0);
        http_.set_keep_alive_timeout(5);
        routes();
        const int port = args_.port == 0 ? http_.bind_to_any_port(args_.host) : (http_.bind_to_port(args_.host, args_.port) ? args_.port : -1);
        if (port < 0) throw Error("cannot listen on " + args_.host + ":" + std::to_string(args_.port) + " (in use, or not an address of this machine)");
        std::printf("deepstack-server: listening on http://%s:%d (model %s, %d parallel, queue %d)\n", args_.host.c_str(), port,
                    args_.model_name.c_str(), args_.parallel, args_.queue);
        std::fflush(stdout);
        return http_.listen_after_bind();
    }

    void stop() { http_.stop(); }

private:
    bool authorized(const httplib::Request& req, httplib::Response& res) const {
        if (args_.api_key.empty()) return true;
        const std::string header = req.get_header_value("Authorization");
        const std::string bearer = "Bearer ";
        if (header.rfind(bearer, 0) == 0 && same_key(header.substr(bearer.size()), args_.api_key)) return true;
        send_error(res, ApiError(401, "invalid_request_error",
                                 header.empty() ? "missing API key: send the header Authorization: Bearer <key>" : "incorrect API key", "",
                                 "invalid_api_key"));
        return false;
    }

    void routes() {
        http_.Get("/health", [](const httplib::Request&, httplib::Response& res) { res.set_content(R"({"status":"ok"})", "application/json"); });
        http_.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
            if (authorized(req, res)) res.set_content(json_text(models_json(args_.model_name, created_)), "application/json");
        });
        http_.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& read) {
            std::string body;
            if (receive_body(read, res, body)) chat(req, body, res);
        });
        // Known paths with another method: 405; any other path: 404.
        const auto other = [](const httplib::Request& req, httplib::Response& res) {
            const bool known = req.path == "/health" || req.path == "/v1/models" || req.path == "/v1/chat/completions";
            if (known) {
                res.set_header("Allow", req.path == "/v1/chat/completions" ? "POST" : "GET, HEAD");
                send_error(res, ApiError(405, "invalid_request_error", req.method + " is not allowed on " + req.path, "", "method_not_allowed"));
            } else {
                send_error(res, ApiError(404, "invalid_request_error", "no such route: " + req.method + " " + req.path, "", "not_found"));
            }
        };
        http_.Get(".*", other).Post(".*", other).Put(".*", other).Patch(".*", other).Delete(".*", other).Options(".*", other);
        // The HTTP library's own refusals (a body over the limit: 413, a malformed request: 400).
        http_.set_error_handler([](const httplib::Request&, httplib::Response& res) {
            if (!res.body.empty()) return;
            send_error(res, res.status == 413 ? body_too_large()
                                              : ApiError(res.status, "invalid_request_error",
                                                         "the request could not be read (HTTP status " + std::to_string(res.status) + ")"));
        });
        http_.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
            send_error(res, ApiError(500, "server_error", "internal error while answering the request"));
        });
        http_.set_logger([](const httplib::Request& req, const httplib::Response& res) {
            std::fprintf(stderr, "%s %s %s -> %d\n", req.remote_addr.c_str(), req.method.c_str(), req.path.c_str(), res.status);
        });
    }

    // The request's body into `body`, or false with the error sent. A client that stays silent
    // fails one read (--timeout); one that trickles bytes would not, so the whole body must also
    // arrive within --timeout seconds. Either gets 408, and the connection is closed.
    bool receive_body(const httplib::ContentReader& read, httplib::Response& res, std::string& body) const {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(args_.timeout);
        const bool whole = read([&](const char* data, size_t size) {
            body.append(data, size);
            return std::chrono::steady_clock::now() <= deadline;
        });
        if (whole) return true;
        res.set_header("Connection", "close");
        send_error(res, res.status == 413 ? body_too_large()
                                          : ApiError(408, "invalid_request_error",
                                                     "the request body did not arrive within " + std::to_string(args_.timeout) + " s (--timeout)",
                                                     "", "request_timeout"));
        return false;
    }

    void chat(const httplib::Request& req, const std::string& body, httplib::Response& res) {
        try {
            if (!authorized(req, res)) return;
            auto job = std::make_shared<Job>(parse_chat_request(body, args_.limits));
            if (!scheduler_.submit(job)) {
                res.set_header("Retry-After", "1");
                throw ApiError(503, "server_error", "the server is busy: every slot is in use and the queue is full; retry later", "",
                               "server_busy");
            }
            {
                std::unique_lock<std::mutex> lock(job->mutex);
                job->changed.wait(lock, [&] { return job->started; });
                if (job->error) throw *job->error;
            }
            const CompletionHead head{completion_id(), int64_t(std::time(nullptr)), args_.model_name};
            if (job->chat.stream) stream_reply(res, job, head);
            else whole_reply(res, job, head);
        } catch (const ApiError& e) {
            send_error(res, e);
        } catch (const std::exception& e) {
            send_error(res, ApiError(500, "server_error", std::string("internal error: ") + e.what()));
        }
    }

    const Args args_;
    const Engine engine_;
    Scheduler scheduler_;
    const int64_t created_;
    httplib::Server http_;
};

}  // namespace

int main(int argc, char** argv) {
    Args args;
    try {
        if (!parse_args(argc, argv, args)) {
            std::fputs(kUsage, stdout);
            return 0;
        }
    } catch (const Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    // SIGINT / SIGTERM end the server from a thread of their own; a client gone mid-write is an
    // error of that write, not a signal.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
    std::signal(SIGPIPE, SIG_IGN);
    try {
        std::fprintf(stderr, "deepstack-server: loading %s\n", args.model_dir.c_str());
        Engine engine = Engine::open(args.model_dir, args.options);
        Server server(args, std::move(engine));
        std::thread stopper([&] {
            int signal = 0;
            sigwait(&stop_signals, &signal);
            std::fprintf(stderr, "deepstack-server: stopping (signal %d)\n", signal);
            server.stop();
        });
        stopper.detach();
        if (!server.run()) throw Error("the server stopped with an error");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
